"""``choice.json`` and ``state.json``: what the ensemble stage chose, written and read here only.

- ``state.json``: the chosen method's exact test-time state (``Method.state``), with the method and the models it
  was fitted on; what an offline bundle restores the method from (``segkit.ensemble.restore``);
- ``choice.json``: the method, its OOF CV, the metric, the models and what the method learnt (``Method.params``),
  written last: its presence completes the ensemble's files.

The ensemble stage writes both (``write``); its skip line, the report, ``segkit package`` and the offline bundle
read them (``read``), which checks that the two files belong together.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from segkit.artifacts import atomic
from segkit.errors import DataError


@dataclass
class Chosen:
    """The ensemble's choice (``choice.json`` as written) and, where read with it, its test-time state."""

    choice: dict
    state: Optional[dict] = None

    @property
    def method(self) -> str:
        return self.choice["method"]

    @property
    def models(self) -> list[str]:
        return list(self.choice["models"])

    def summary(self) -> str:
        """The line a kept ensemble prints."""
        return f"method {self.method}, CV {self.choice['cv']:.5f}"


def write(choice_path: Path, state_path: Path, choice: dict, state: Any) -> None:
    """The state first, the choice last (its presence completes the ensemble's files)."""
    atomic.write_json(state_path, {"method": choice["method"], "models": choice["models"], "state": state})
    atomic.write_json(choice_path, choice)


def read(choice_path: Path, state_path: Optional[Path] = None, remedy: str = "run `segkit ensemble`") -> Chosen:
    """``choice.json`` (and ``state.json``, checked to hold the same method), or an error naming the file."""
    choice = atomic.read_json(choice_path, remedy)
    # what the method is, always; what it was fitted on, where it is to be restored
    missing = [k for k in ("method", "models")[:1 if state_path is None else 2] if k not in choice]
    if missing:
        raise DataError(f"{choice_path}: no {missing[0]!r}; {remedy} again")
    if state_path is None:
        return Chosen(choice)
    state = atomic.read_json(state_path, f"{remedy} (again: older runs did not write state.json)")
    if state.get("method") != choice["method"] or "state" not in state:
        raise DataError(f"{state_path}: holds method {state.get('method')!r}, {Path(choice_path).name} chose "
                        f"{choice['method']!r}; {remedy} again")
    return Chosen(choice, state)


__all__ = ["Chosen", "read", "write"]
