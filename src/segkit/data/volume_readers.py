"""The voxels of one case: decoded whole, or read slice by slice from the file when the volume is large.

A case that fits (``data.volumes.stream_above_mb``, the decoded float32 image) is decoded once and kept
(``DecodedCase``): training draws random slices of it, and a slice is then a view of an array in memory. A larger
one is never held whole (``StreamedCase``): nibabel's array proxy reads just the slice asked for from the file, two
passes over slabs at opening give the per-volume statistics and check the labels, and a few recent slices are
kept, so a 2.5D stack read slice after slice reads each slice once. A slice along the last voxel axis is one
contiguous block of a NIfTI file, a slice along another axis a strided read; a gzip file (``.nii.gz``) is
decompressed up to the slice on every read, so large volumes belong in plain ``.nii`` files.

Intensities are normalised per volume and modality the same way on both paths: clipped to ``data.clip_percentiles``
of the volume, then z-scored (``data.volumes.intensity``). A decoded volume's percentiles are exact; a streamed
volume's are those of an even sample of at most ``PERCENTILE_SAMPLE`` voxels (its mean and std are exact).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

import numpy as np

from segkit.config.schema import DataConfig
from segkit.errors import DataError

PERCENTILE_SAMPLE = 4_000_000
SLAB_BYTES = 64 * 2**20  # what one pass over a streamed volume reads at a time


def nibabel():
    import nibabel as nib  # here: only volume competitions need it (and it costs a second to import)

    return nib


@dataclass(frozen=True)
class Intensity:
    """How one modality of one volume is normalised: clip to [lo, hi] (None: no clip), then (x - mean) / std."""

    lo: Optional[float] = None
    hi: Optional[float] = None
    mean: float = 0.0
    std: float = 1.0

    def apply(self, x: np.ndarray) -> np.ndarray:
        if self.lo is not None:
            x = np.clip(x, self.lo, self.hi)
        return ((x - self.mean) / self.std).astype(np.float32, copy=False)


def cut(array: np.ndarray, axis: int, index: int) -> np.ndarray:
    """The slice ``index`` of ``array`` along ``axis``, as a view. (``np.take`` would copy a non-contiguous array
    whole first, for every slice: a volume decoded from a NIfTI file is Fortran-ordered.)"""
    return array[(slice(None),) * axis + (index,)]


def _bounds(cfg: DataConfig, sample: np.ndarray) -> tuple[Optional[float], Optional[float]]:
    if cfg.clip_percentiles is None:
        return None, None
    lo, hi = np.percentile(sample, cfg.clip_percentiles)
    return float(lo), float(hi)


def _finish(cfg: DataConfig, lo, hi, total: float, squares: float, n: int) -> Intensity:
    if cfg.volumes.intensity != "zscore":
        return Intensity(lo, hi)
    mean = total / n
    return Intensity(lo, hi, mean, max(float(np.sqrt(max(squares / n - mean * mean, 0.0))), 1e-6))


def check_label_header(path: Path, label, shape: tuple[int, ...], affine: np.ndarray, image: Path) -> None:
    if tuple(label.shape[:3]) != tuple(shape):
        raise DataError(f"{path}: label volume {tuple(label.shape)} and image {tuple(shape)} differ in shape")
    if not np.allclose(label.affine, affine, atol=1e-3):
        raise DataError(f"{path}: its affine differs from the image's ({image.name})")


def check_label_values(path: Path, data: np.ndarray, classes: int) -> None:
    values = np.unique(data)
    bad = [v for v in values if v != int(v) or not 0 <= v <= classes]
    if bad:
        raise DataError(f"{path}: label value {bad[0]} is not a class (0 = background, 1..{classes})")


def _modalities(cfg: DataConfig, images: tuple[Path, ...]) -> list[tuple[Path, object, Optional[int]]]:
    """(file, array proxy, index on its 4th axis or None) of every modality, in channel order, checked."""
    nib = nibabel()
    out, shapes = [], set()
    for path in images:
        image = nib.load(path)
        if image.ndim not in (3, 4):
            raise DataError(f"{path}: a {image.ndim}-D image; expected a 3D volume or 4D (modalities last)")
        shapes.add(tuple(image.shape[:3]))
        out += [(path, image.dataobj, None)] if image.ndim == 3 else \
            [(path, image.dataobj, m) for m in range(image.shape[3])]
    if len(shapes) != 1:
        raise DataError(f"{images[0]}: the modalities of this case differ in shape {sorted(shapes)}")
    if len(out) != cfg.channels:
        raise DataError(f"{images[0]}: {len(out)} modalities, data.channels is {cfg.channels}")
    return out


class DecodedCase:
    """A case decoded whole: float32 (X, Y, Z, modalities) normalised, and its uint8 label volume."""

    def __init__(self, cfg: DataConfig, images: tuple[Path, ...], label: Optional[Path], affine: np.ndarray,
                 classes: int):
        decoded: dict[Path, np.ndarray] = {}
        parts = []
        for path, proxy, m in _modalities(cfg, images):
            if path not in decoded:  # a 4D file once, whatever its modalities
                decoded[path] = np.asarray(proxy, dtype=np.float32)
            parts.append(decoded[path] if m is None else decoded[path][..., m])
        image = np.stack(parts, axis=3)
        del decoded, parts
        if not np.isfinite(image).all():
            raise DataError(f"{images[0]}: image contains NaN or infinite values")
        for m in range(image.shape[3]):
            channel = image[..., m]
            lo, hi = _bounds(cfg, channel)
            clipped = channel if lo is None else np.clip(channel, lo, hi)
            stats = Intensity(lo, hi)
            if cfg.volumes.intensity == "zscore":
                stats = Intensity(lo, hi, float(clipped.mean(dtype=np.float64)),
                                  max(float(clipped.std(dtype=np.float64)), 1e-6))
            image[..., m] = stats.apply(channel)
        self.image = image
        self.label = None
        if label is not None:
            nib = nibabel()
            source = nib.load(label)
            check_label_header(label, source, image.shape[:3], affine, images[0])
            data = np.asarray(source.dataobj)
            if data.ndim == 4 and data.shape[3] == 1:
                data = data[..., 0]
            check_label_values(label, data, classes)
            self.label = data.astype(np.uint8)

    def image_slice(self, axis: int, index: int) -> np.ndarray:
        return np.ascontiguousarray(cut(self.image, axis, index))

    def label_slice(self, axis: int, index: int) -> Optional[np.ndarray]:
        return None if self.label is None else np.ascontiguousarray(cut(self.label, axis, index))


def _slabs(proxy, m: Optional[int], depth: int, per_slice: int, dtype=np.float32) -> Iterator[tuple[int, np.ndarray]]:
    """(first index, block) over the last voxel axis, about SLAB_BYTES a block: contiguous reads of the file."""
    step = max(1, SLAB_BYTES // max(per_slice * 4, 1))
    for z in range(0, depth, step):
        key = (slice(None), slice(None), slice(z, min(z + step, depth))) + (() if m is None else (m,))
        yield z, np.asarray(proxy[key], dtype=dtype)


class StreamedCase:
    """A case read slice by slice: per-modality statistics and the label check from two passes over slabs at
    opening, then every slice read from the file when asked (the last ``kept`` slices remembered)."""

    def __init__(self, cfg: DataConfig, images: tuple[Path, ...], label: Optional[Path], affine: np.ndarray,
                 classes: int, shape: tuple[int, ...], kept: int):
        self.modalities = _modalities(cfg, images)
        self.stats = [self._intensity(cfg, path, proxy, m, shape) for path, proxy, m in self.modalities]
        self.label = None
        if label is not None:
            nib = nibabel()
            source = nib.load(label)
            check_label_header(label, source, shape, affine, images[0])
            self.label = source.dataobj
            self._label_tail = (0,) if len(source.shape) == 4 else ()  # (X, Y, Z, 1) label files exist
            for _, block in _slabs(self.label, None, shape[2], shape[0] * shape[1], dtype=None):  # as stored
                check_label_values(label, block, classes)
        self.kept = max(kept, 1)
        self._recent: OrderedDict[tuple, np.ndarray] = OrderedDict()

    @staticmethod
    def _intensity(cfg: DataConfig, path: Path, proxy, m: Optional[int], shape: tuple[int, ...]) -> Intensity:
        n = int(np.prod(shape[:3]))
        stride = max(1, n // PERCENTILE_SAMPLE)
        sample = []
        for z, block in _slabs(proxy, m, shape[2], shape[0] * shape[1]):
            if not np.isfinite(block).all():
                raise DataError(f"{path}: image contains NaN or infinite values (slices {z}.. along the last axis)")
            sample.append(block.ravel()[::stride].copy())
        lo, hi = _bounds(cfg, np.concatenate(sample))
        del sample
        total = squares = 0.0
        if cfg.volumes.intensity == "zscore":  # exact, of the clipped values: a second pass
            for _, block in _slabs(proxy, m, shape[2], shape[0] * shape[1]):
                if lo is not None:
                    np.clip(block, lo, hi, out=block)
                total += float(block.sum(dtype=np.float64))
                squares += float(np.square(block, dtype=np.float64).sum())
        return _finish(cfg, lo, hi, total, squares, n)

    def _read(self, what: str, axis: int, index: int) -> np.ndarray:
        key = (what, axis, index)
        if key in self._recent:
            self._recent.move_to_end(key)
            return self._recent[key]
        at = tuple(index if a == axis else slice(None) for a in range(3))
        if what == "label":
            out = np.asarray(self.label[at + self._label_tail]).astype(np.uint8)
        else:
            out = np.stack([stats.apply(np.asarray(proxy[at + (() if m is None else (m,))], dtype=np.float32))
                            for (_, proxy, m), stats in zip(self.modalities, self.stats)], axis=2)
        self._recent[key] = out
        while len(self._recent) > self.kept:
            self._recent.popitem(last=False)
        return out

    def image_slice(self, axis: int, index: int) -> np.ndarray:
        return self._read("image", axis, index)

    def label_slice(self, axis: int, index: int) -> Optional[np.ndarray]:
        return None if self.label is None else self._read("label", axis, index)
