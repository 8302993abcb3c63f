"""Probability maps on disk: uint8-quantised, one memory-mapped file per image, never the whole set in RAM.

Layout of a store folder::

    <store>/
      <image id>.npy     uint8 array (K, H, W): round(p * 255) for each of the K classes, at the image's own size
      manifest.json      {"classes": [...], "ids": [...], "complete": true}, written last

Training writes OOF stores, prediction writes test stores, ensembling writes both. Writing one image at a time,
each atomically, lets a killed stage resume: images already on disk are skipped. The manifest is the completion
marker: a store without one is partial and readers refuse it unless asked to accept partial stores.

Quantisation error is at most 1/510 in probability, far below any threshold step anyone tunes.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from segkit.artifacts import atomic
from segkit.artifacts.layout import check_id
from segkit.errors import DataError, SegkitError

MANIFEST = "manifest.json"
SCALE = 255.0


def quantize(probs: np.ndarray) -> np.ndarray:
    """Float probabilities in [0, 1] -> uint8 (NaN becomes 0)."""
    p = np.nan_to_num(np.asarray(probs, dtype=np.float32), nan=0.0)
    return np.clip(np.rint(p * SCALE), 0, 255).astype(np.uint8)


def dequantize(q: np.ndarray) -> np.ndarray:
    return np.asarray(q, dtype=np.float32) * np.float32(1.0 / SCALE)


def mean_uint8(probs) -> np.ndarray:
    """The plain mean of several uint8 probability arrays, as a uint8 array."""
    if len(probs) == 1:
        return np.asarray(probs[0])
    # On the 0..255 scale, in float64: sum / M rounds exactly (ties to even), independent of float32 error.
    total = np.zeros(probs[0].shape, dtype=np.float64)
    for q in probs:
        total += q
    return np.rint(total / len(probs)).astype(np.uint8)


def image_file(folder: str | os.PathLike, image_id: str) -> Path:
    """Where a store keeps one image's probabilities."""
    return Path(folder) / f"{check_id(image_id, str(folder))}.npy"


def load_image(folder: str | os.PathLike, image_id: str) -> np.ndarray:
    """One image's probabilities from a store folder, complete or still being filled (a read-only memmap). Plain
    arrays only (``allow_pickle=False``): a file holding pickled objects, which could run code, is refused."""
    path = image_file(folder, image_id)
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError as err:
        raise DataError(f"{path}: not a probability array ({err}); a store file must be a plain .npy array") from None


def image_files(folder: str | os.PathLike) -> list[Path]:
    """The per-image files a store folder holds (complete or not)."""
    folder = Path(folder)
    return sorted(folder.glob("*.npy")) if folder.is_dir() else []


def manifest(folder: str | os.PathLike) -> Path:
    """A store's completion marker (the file its writer writes last)."""
    return Path(folder) / MANIFEST


class ProbWriter:
    """Writes a store image by image; ``finish`` marks it complete."""

    def __init__(self, folder: str | os.PathLike, classes: list[str]):
        self.folder = Path(folder)
        self.classes = list(classes)
        self.folder.mkdir(parents=True, exist_ok=True)

    def path(self, image_id: str) -> Path:
        return image_file(self.folder, image_id)

    def has(self, image_id: str) -> bool:
        return self.path(image_id).exists()

    def write(self, image_id: str, probs: np.ndarray) -> None:
        """``probs``: float (K, H, W) in [0, 1], or already-quantised uint8."""
        probs = np.asarray(probs)
        if probs.ndim != 3 or probs.shape[0] != len(self.classes):
            raise ValueError(f"{image_id}: expected ({len(self.classes)}, H, W) probabilities, got {probs.shape}")
        q = probs if probs.dtype == np.uint8 else quantize(probs)
        atomic.save_npy(self.path(image_id), q)

    def finish(self, ids: Iterable[str]) -> "ProbStore":
        ids = list(ids)
        missing = [i for i in ids if not self.has(i)]
        if missing:
            raise SegkitError(f"{self.folder}: {len(missing)} images have no probabilities, e.g. {missing[0]}")
        atomic.write_json(manifest(self.folder), {"classes": self.classes, "ids": ids, "complete": True})
        return ProbStore(self.folder)


class ProbStore:
    """Read access to a complete store. ``store[id]`` is a read-only uint8 memmap (K, H, W)."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        marker = manifest(self.folder)
        if not marker.exists():
            raise SegkitError(f"{self.folder}: probability store is missing or incomplete (no {MANIFEST})")
        meta = json.loads(marker.read_text())
        self.classes: list[str] = meta["classes"]
        self.ids: list[str] = meta["ids"]

    @staticmethod
    def is_complete(folder: str | os.PathLike) -> bool:
        return manifest(folder).exists()

    def require(self, ids: Iterable[str], what: str, remedy: str) -> None:
        """An error naming the store, how many of ``ids`` (``what``: e.g. "test images") it lacks and ``remedy``."""
        ids = list(ids)
        missing = [i for i in ids if i not in self]
        if missing:
            raise SegkitError(f"{self.folder}: no probabilities for {len(missing)} of {len(ids)} {what}, e.g. "
                              f"{missing[0]!r}; {remedy}")

    def __len__(self) -> int:
        return len(self.ids)

    def __contains__(self, image_id: str) -> bool:
        return image_file(self.folder, image_id).exists()

    def __getitem__(self, image_id: str) -> np.ndarray:
        return load_image(self.folder, image_id)

    def read_float(self, image_id: str) -> np.ndarray:
        return dequantize(self[image_id])

    def items(self) -> Iterator[tuple[str, np.ndarray]]:
        for image_id in self.ids:
            yield image_id, self[image_id]
