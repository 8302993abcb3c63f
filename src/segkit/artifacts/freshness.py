"""Whether a unit of work is already done: one rule for every stage.

Each stage splits its work into units — a model's fold, a model's test store (and each fold's own, when a pseudo
round follows), one fold's OOF re-prediction, the ensemble, a pseudo-label round, the tuning, the submission, the
evaluation, the report — and each unit declares

- its **outputs**: the files it writes (for a probability store, its manifest);
- its **inputs**: a JSON-able mapping of everything that decides those outputs: the config values the unit reads
  and, for every artifact it reads, ``fingerprint(path)`` of that artifact's completion marker (path,
  modification time and size, so an input made again changes the mapping).

Its **stamp** records the inputs, their digest and whether the work finished. A unit is *fresh* when every
output exists and its stamp says the work finished from inputs with today's digest; reruns skip fresh units and
print one line saying so. Otherwise it is

- *missing*: an output is absent, or the work was begun and not finished (killed, failed) — the unit runs;
- *stale*: the outputs were made from other inputs (``Unit.changes`` says which) — derived outputs are made
  again; a finished training fold is never overwritten silently (``segkit.stages.train`` stops and names the change);
- *unstamped*: the outputs exist but no stamp does (made by an older segkit, or by hand) — derived outputs are
  made again; a training fold is kept, since nothing says it is wrong and retraining costs hours.

The protocol, the same in every stage (``Unit.skip`` and ``with Unit.writing()`` spell it): ``Unit.begin()`` before the
first output is written (it stamps the new inputs as *begun*, so from then on the unit counts as unfinished whatever
the outputs on disk), and ``Unit.done()`` once the work is complete (or just before the one file whose existence
completes it, such as a store's manifest). A kill at any moment therefore leaves the unit missing or stale, never fresh
with a mix of old and new outputs, while the earlier outputs stay on disk until each is replaced (a submission is never
deleted before its successor is in place). Work begun under the same inputs may resume from what it left
(``Unit.resumable``: a store filled image by image, a fold trained epoch by epoch). ``marker``, when given, is a
file that must stop counting as complete the moment the unit begins (the manifest of a store that several units
fill). A unit without a stamp path (the fold file, which is committed and reused as long as it exists) is fresh
when its outputs exist.
"""

from __future__ import annotations

import hashlib
import json
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Optional, Sequence

from segkit.artifacts import atomic

FRESH, MISSING, STALE, UNSTAMPED = "fresh", "missing", "stale", "unstamped"


def fingerprint(path: str | Path) -> Optional[list]:
    """An input artifact's fingerprint: [path, mtime_ns, size] of its completion marker, None if it is absent."""
    path = Path(path)
    try:
        st = path.stat()
    except OSError:
        return None
    return [str(path), st.st_mtime_ns, st.st_size]


def fingerprints(paths: Iterable[str | Path]) -> list:
    return [fingerprint(p) for p in paths]


def canonical(obj: Any) -> Any:
    """``obj`` as plain JSON values (tuples become lists, paths strings), so a record compares equal to itself
    after a round trip through a stamp file."""
    return json.loads(json.dumps(obj, sort_keys=True, default=str))


def digest(obj: Any) -> str:
    return hashlib.sha1(json.dumps(canonical(obj), sort_keys=True).encode()).hexdigest()


def differences(saved: Any, current: Any, prefix: str = "", ignore: frozenset[str] = frozenset()) -> list[str]:
    """``key: old -> new`` for every leaf that differs between two records (keys in ``ignore`` skipped)."""
    if isinstance(saved, dict) and isinstance(current, dict):
        out = []
        for key in sorted(set(saved) | set(current)):
            if key in ignore:
                continue
            out += differences(saved.get(key), current.get(key), f"{prefix}{key}.", ignore)
        return out
    return [] if saved == current else [f"{prefix[:-1] or 'value'}: {saved!r} -> {current!r}"]


@dataclass
class Unit:
    """One unit of a stage's work (see the module docstring)."""

    what: str  # how messages name it, e.g. "models[unet] fold 0"
    stamp: Optional[Path]
    outputs: Sequence[Path]
    inputs: Mapping[str, Any] = field(default_factory=dict)
    marker: Optional[Path] = None  # a file that stops counting as complete when the unit begins (see above)

    def __post_init__(self):
        self.inputs = canonical(dict(self.inputs))

    @property
    def digest(self) -> str:
        return digest(self.inputs)

    def saved(self) -> Optional[dict]:
        """The stamp on disk, or None (absent or unreadable: either way nothing vouches for the outputs)."""
        if self.stamp is None or not Path(self.stamp).exists():
            return None
        try:
            record = json.loads(Path(self.stamp).read_text())
        except (OSError, ValueError):
            return None
        return record if isinstance(record, dict) else None

    def status(self) -> str:
        if not all(Path(p).exists() for p in self.outputs):
            return MISSING
        if self.stamp is None:
            return FRESH
        record = self.saved()
        if record is None:
            return UNSTAMPED
        if record.get("digest") != self.digest:
            return STALE
        return FRESH if record.get("done") else MISSING

    def fresh(self) -> bool:
        return self.status() == FRESH

    def changes(self, ignore: Iterable[str] = ()) -> list[str]:
        """What differs between the stamp's inputs and today's (empty without a stamp)."""
        record = self.saved() or {}
        return differences(record.get("inputs", {}), self.inputs, ignore=frozenset(ignore))

    def resumable(self) -> bool:
        """Whether partial outputs on disk were made from today's inputs (the stamp matches, finished or not), so
        work may go on from them instead of starting afresh."""
        record = self.saved()
        return record is not None and record.get("digest") == self.digest

    def begin(self) -> None:
        """Stamp today's inputs as begun (the unit counts as unfinished until ``done``); ``marker`` stops counting."""
        if self.marker is not None and Path(self.marker).is_file():
            Path(self.marker).unlink()
        self._write(done=False)

    def done(self, **facts: Any) -> None:
        """Stamp the work as finished from today's inputs; ``facts`` are recorded for the units that read the
        outputs (``recorded``), such as a digest of their content."""
        self._write(done=True, facts=facts)

    def _write(self, done: bool, facts: Optional[dict] = None) -> None:
        if self.stamp is not None:
            record = {"what": self.what, "digest": self.digest, "done": done, "inputs": self.inputs}
            if facts:
                record["facts"] = canonical(facts)
            atomic.write_json(self.stamp, record)

    def kept(self, detail: str = "") -> str:
        """The line a stage prints when it skips this unit."""
        return kept(self.what, detail)

    def skip(self, detail: str | Callable[[], str] = "") -> bool:
        """Whether the unit is fresh (nothing to do); if so, the line saying it is kept is printed. ``detail``: what
        to say of the kept outputs, or a function reading it from them (called only then)."""
        if not self.fresh():
            return False
        print(self.kept(detail() if callable(detail) else detail), flush=True)
        return True

    @contextmanager
    def writing(self) -> Iterator[dict]:
        """The block that writes the unit's outputs: stamped begun on entry, done on a clean exit with the facts the
        block put in the dict it is given (see ``done``). An error or a kill inside leaves the unit begun, so the
        next run does it again."""
        facts: dict = {}
        self.begin()
        yield facts
        self.done(**facts)


def recorded(stamp: Path, fact: str) -> Any:
    """A fact a finished unit recorded in its stamp (None when there is none)."""
    try:
        record = json.loads(Path(stamp).read_text())
    except (OSError, ValueError):
        return None
    return (record.get("facts") or {}).get(fact) if isinstance(record, dict) and record.get("done") else None


def kept(what: str, detail: str = "") -> str:
    """The one line every skipped piece of work prints."""
    return f"{what}: up to date and complete; keeping it{f' ({detail})' if detail else ''}"


__all__ = ["FRESH", "MISSING", "STALE", "UNSTAMPED", "Unit", "canonical", "differences", "digest", "fingerprint",
           "fingerprints", "kept", "recorded"]
