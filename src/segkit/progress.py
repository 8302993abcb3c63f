"""Progress bars for the stages that take minutes on big sets (predict, OOF re-prediction, ensemble, tune's table
pass, evaluate).

A bar is drawn only on an interactive terminal (tqdm's ``disable=None``): a log written to a file or a pipe gets
no bar frames, only the one summary line each stage prints when it is done, so a non-interactive log stays one line
per stage. ``SEGKIT_PROGRESS=0`` turns bars off everywhere, ``=1`` forces them (e.g. a notebook).
"""

from __future__ import annotations

import os
from typing import Iterable, Optional, TypeVar

from tqdm import tqdm

T = TypeVar("T")


def _disable() -> Optional[bool]:
    """tqdm's ``disable``: None = only when the output is a terminal."""
    wanted = os.environ.get("SEGKIT_PROGRESS", "").strip().lower()
    if wanted in ("0", "false", "no", "off"):
        return True
    if wanted in ("1", "true", "yes", "on"):
        return False
    return None


def bar(iterable: Iterable[T], desc: str, total: Optional[int] = None, unit: str = "img") -> Iterable[T]:
    """``iterable`` wrapped in a bar that vanishes when done (``leave=False``): the stage's own line stays."""
    return tqdm(iterable, desc=desc, total=total, unit=unit, leave=False, dynamic_ncols=True, disable=_disable())


__all__ = ["bar"]
