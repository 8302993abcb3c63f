"""Atomic artifact writes: write to a temporary name beside the target, then rename into place.

A crash (or SIGKILL) mid-write leaves at most a ``*.tmp`` file, never a half-written file under the final name, so
every stage can decide "done" by the mere existence of its outputs. ``os.replace`` is atomic on POSIX when source
and target are on the same filesystem, which holds because the temporary file sits in the target's folder.
``read_json`` reads a JSON artifact back with the one-line errors every reader gives.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from segkit.errors import DataError, SegkitError

TMP_SUFFIX = ".tmp"
_UMASK = os.umask(0)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path to write to; it is renamed to ``path`` only if the block finishes."""
    path = Path(path)
    fd, tmp = _guard(path, lambda: tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent))
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp makes owner-only (0600) files; artifacts get the permissions any other new file would.
        os.chmod(tmp_path, 0o666 & ~_UMASK)
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder; it replaces ``path`` only if the block finishes."""
    path = Path(path)
    tmp = Path(_guard(path, lambda: tempfile.mkdtemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent)))
    try:
        yield tmp
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def _guard(path: Path, make):
    """Create the target's folder and a temporary entry in it, or fail with one line naming the path."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return make()
    except OSError as err:
        raise SegkitError(f"cannot write {path}: {err.strerror or err}") from None


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def dumps(obj: Any) -> str:
    """JSON text as every artifact is written (NumPy scalars and arrays as numbers and lists)."""
    return json.dumps(obj, indent=2, sort_keys=False, default=_json_default)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, dumps(obj) + "\n")


def read_json(path: str | os.PathLike, remedy: str) -> dict:
    """A JSON object written by ``write_json``: a missing file says ``remedy``; one that is not a JSON object is a
    DataError naming it."""
    path = Path(path)
    if not path.exists():
        raise SegkitError(f"{path}: missing; {remedy}")
    try:
        record = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(record, dict):
        raise DataError(f"{path}: not a JSON object")
    return record


def write_csv(path: str | os.PathLike, frame) -> None:
    """Write a pandas DataFrame atomically (no index column)."""
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)


def save_npy(path: str | os.PathLike, array: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, array)


def save_torch(path: str | os.PathLike, obj: Any) -> None:
    import torch  # here: every stage writes through this module; only training pays torch's import for it

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def clean_tmp(folder: str | os.PathLike) -> int:
    """Remove temporary leftovers of killed writes under ``folder``; returns how many were removed."""
    n = 0
    folder = Path(folder)
    if not folder.exists():
        return 0
    # Only names this module makes (".<target>.<random>.tmp"), so a user's own *.tmp files are left alone.
    for p in folder.rglob(f".*{TMP_SUFFIX}"):
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
        n += 1
    return n


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
