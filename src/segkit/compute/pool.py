"""Per-image work spread over processes: the passes of the stages after training (ensemble, tune, evaluate) handle
one image at a time and each image alone, so k processes on k cores do a pass about k times faster.

``map_indices(fn, n, workers)`` returns ``[fn(0), ..., fn(n - 1)]`` in order (``imap_indices`` yields them). With
more than one worker the items go in chunks to forked processes: a fork inherits the caller's objects (the store,
the truth reader, the metric), so nothing but the indices and the small per-image results is pickled, and ``fn`` may
be a closure. A worker holds one image at a time; results come back chunk by chunk, in order. Below ``MIN_ITEMS``
items, or where the platform cannot fork, the work stays in this process: starting a pool costs more than it saves.

``workers("auto")`` is the cores this process may use (``segkit.compute.sizing.usable_cores``); the config's
``cpu_workers`` sets it. Several machines are the distributed launcher's job (README: On GPUs), not this pool's.
"""

from __future__ import annotations

import multiprocessing
from typing import Any, Callable, Iterator, Optional, TypeVar, Union

from segkit.compute.sizing import usable_cores
from segkit.progress import bar

T = TypeVar("T")
MIN_ITEMS = 32
CHUNKS_PER_WORKER = 8  # small enough chunks that the workers finish together, big enough to pay their messages

_TASK: Optional[Callable[[int], Any]] = None  # what a forked worker runs: set before the fork, inherited


def workers(setting: Union[int, str, None]) -> int:
    """Processes for a ``cpu_workers`` setting: ``auto`` (the usable cores) or a number (0 and 1: this one)."""
    if setting in (None, "auto"):
        return usable_cores()
    return max(1, int(setting))


def _single_threaded() -> None:
    """A worker's libraries run on one thread: the workers are the parallelism, and OpenCV's own threads on top of
    them would only fight over the same cores."""
    import cv2  # here: in the forked worker only

    cv2.setNumThreads(1)


def _run_chunk(bounds: tuple[int, int]) -> list:
    start, stop = bounds
    return [_TASK(i) for i in range(start, stop)]


def map_indices(fn: Callable[[int], T], n: int, n_workers: int, desc: str = "") -> list[T]:
    """``[fn(i) for i in range(n)]``, spread over ``n_workers`` forked processes when that pays."""
    return list(imap_indices(fn, n, n_workers, desc))


def imap_indices(fn: Callable[[int], T], n: int, n_workers: int, desc: str = "") -> Iterator[T]:
    """``map_indices`` one result at a time, in order: a caller that folds the results into arrays as they come
    never holds them all as objects."""
    global _TASK
    if n_workers <= 1 or n < MIN_ITEMS or "fork" not in multiprocessing.get_all_start_methods():
        yield from (fn(i) for i in bar(range(n), desc, total=n))
        return
    if _TASK is not None:
        raise RuntimeError("map_indices does not nest")
    size = max(1, n // (n_workers * CHUNKS_PER_WORKER))
    bounds = [(s, min(s + size, n)) for s in range(0, n, size)]
    _TASK = fn
    try:
        with multiprocessing.get_context("fork").Pool(n_workers, initializer=_single_threaded) as pool:
            for part in bar(pool.imap(_run_chunk, bounds), desc, total=len(bounds), unit="chunk"):
                yield from part
    finally:
        _TASK = None


__all__ = ["MIN_ITEMS", "imap_indices", "map_indices", "workers"]
