"""The OOF images a search passes over again and again: (id, probabilities uint8 (K, H, W), truth bool (K, H, W))
from a store (or any store-like view) and a truth reader, keeping what fits in a fixed budget in RAM so that later
passes skip the disk and the mask decoding."""

from __future__ import annotations

from typing import Callable, Iterator, Sequence, TypeVar

import numpy as np

from segkit.compute import pool
from segkit.errors import DataError
from segkit.progress import bar

T = TypeVar("T")

CACHE_BYTES = 512 * 2**20  # probabilities + truth kept in RAM across passes up to this size


class OOFStream:
    """Streams (id, probabilities uint8 (K,H,W), truth bool (K,H,W)) from a store and a truth reader, keeping what
    fits in ``budget`` bytes in RAM so later passes skip the disk and the mask decoding.

    ``exclusive`` (multiclass) is applied by the consumers: the searches see argmax-restricted probabilities, the
    final scoring passes the raw ones to ``postprocess`` exactly as submission does."""

    def __init__(self, store, truth: Callable[[str], np.ndarray], exclusive: bool = False,
                 ids: Sequence[str] | None = None, budget: int = CACHE_BYTES, workers: int = 1):
        self.store = store
        self.truth = truth
        self.exclusive = exclusive
        self.ids = list(ids if ids is not None else store.ids)
        self.budget = budget
        self.workers = workers  # processes a pass is spread over (segkit.compute.pool)
        self._cache: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self._used = 0

    def __len__(self) -> int:
        return len(self.ids)

    def __iter__(self) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
        for image_id in self.ids:
            hit = self._cache.get(image_id)
            if hit is None:
                hit = self._load(image_id)
                size = hit[0].nbytes + hit[1].nbytes
                if self._used + size <= self.budget:
                    self._cache[image_id] = hit
                    self._used += size
            yield image_id, hit[0], hit[1]

    def map(self, fn: Callable[[str, np.ndarray, np.ndarray], T], desc: str) -> Iterator[T]:
        """``fn(id, probs, truth)`` of every image, yielded in order: a pass over the images, spread over the
        stream's workers when it has several (each worker reads its images itself; what the cache holds is used,
        and the cache grows only in a pass made here)."""
        if self.workers <= 1 or len(self) < pool.MIN_ITEMS:
            yield from (fn(*item) for item in bar(self, desc, total=len(self)))
            return

        def one(i: int) -> T:
            image_id = self.ids[i]
            hit = self._cache.get(image_id)
            return fn(image_id, *(hit if hit is not None else self._load(image_id)))

        yield from pool.imap_indices(one, len(self), self.workers, desc)

    def _load(self, image_id: str) -> tuple[np.ndarray, np.ndarray]:
        probs = np.array(self.store[image_id])  # a RAM copy: a cached memmap would hold a file open
        truth = np.asarray(self.truth(image_id)).astype(bool)
        if probs.shape != truth.shape:
            raise DataError(f"{self.store.folder}: probabilities of {image_id!r} are {probs.shape}, its mask is "
                            f"{truth.shape}")
        return probs, truth


__all__ = ["CACHE_BYTES", "OOFStream"]
