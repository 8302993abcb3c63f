"""A competition's fingerprint: the facts about its data that a recipe is planned from (``fingerprint.json``).

``segkit check`` reads every labelled image once and feeds each to a ``Fingerprint``; the result says how large the
images are and how they vary, what their channels hold, how often a mask is empty, how much of an image its
objects cover, how many objects an image has and how large they are (connected components of each class,
8-connected, so touching instances count as one: a lower bound on the count), how thick its shapes are (a
membrane's width, not the size of its network: ``stroke_width``), how often each class appears, how
many groups the folds keep together, and, for volumes, the voxel spacing and shape of the cases and their
anisotropy. Every figure is of the training images (and the holdout), at native size.

This module writes the file (through the check stage) and reads it (``read``) for whoever plans from it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import numpy as np
from scipy import ndimage

from segkit.artifacts import atomic
from segkit.errors import DataError

VERSION = 3  # 2: each class's stroke width; 3: the images' areas
PIXEL_SAMPLE = 512  # pixels drawn from each image for the intensity percentiles (seeded: the same file each time)
EIGHT = np.ones((3, 3), bool)
# A distance transform of every mask doubled the check's time on Kvasir (1000 masks of ~620 px): the stroke width is
# a median, and the first images where a class appears give it
STROKE_IMAGES = 200


def _spread(values, digits: int = 1) -> dict:
    """min, percentiles and max of ``values`` (an empty list: zeros and n 0)."""
    values = np.asarray(values, np.float64)
    if not values.size:
        return {"n": 0}
    q = np.percentile(values, [5, 25, 50, 75, 95])
    out = {"n": int(values.size), "min": values.min(), "p5": q[0], "p25": q[1], "median": q[2], "p75": q[3],
           "p95": q[4], "max": values.max(), "mean": values.mean()}
    return {k: (v if k == "n" else round(float(v), digits)) for k, v in out.items()}


class Fingerprint:
    """Accumulates images and masks; ``result()`` gives the fingerprint as a dict (what ``fingerprint.json`` holds)."""

    def __init__(self, classes: list[str], seed: int = 0):
        self.classes = list(classes)
        self.rng = np.random.default_rng(seed)
        self.heights: list[int] = []
        self.widths: list[int] = []
        self.channels: Optional[int] = None
        self.samples: list[np.ndarray] = []
        self.empty = 0
        self.coverage: list[float] = []  # of images with a mask
        self.per_class = {c: {"present": 0, "pixels": 0, "objects": [], "sizes": [], "strokes": []}
                          for c in self.classes}

    def add(self, image: np.ndarray, mask: np.ndarray) -> None:
        """``image`` (H, W, C) as read; ``mask`` (K, H, W) of 0/1."""
        h, w = image.shape[:2]
        self.heights.append(h)
        self.widths.append(w)
        self.channels = image.shape[2]
        flat = image.reshape(-1, image.shape[2])
        self.samples.append(flat[self.rng.integers(0, len(flat), min(PIXEL_SAMPLE, len(flat)))].astype(np.float32))
        any_class = mask.any(axis=0)
        self.empty += int(not any_class.any())
        if any_class.any():
            self.coverage.append(float(any_class.mean()))
        for k, name in enumerate(self.classes):
            stats = self.per_class[name]
            labels, n = ndimage.label(mask[k] > 0, structure=EIGHT)
            stats["objects"].append(n)
            if n:
                stats["present"] += 1
                stats["pixels"] += int((labels > 0).sum())
                stats["sizes"].extend(np.bincount(labels.ravel())[1:].tolist())
                if len(stats["strokes"]) < STROKE_IMAGES:
                    stats["strokes"].append(stroke_width(mask[k] > 0))

    def result(self, groups: Optional[list[str]] = None, volumes=None) -> dict:
        n = len(self.heights)
        if not n:
            raise DataError("fingerprint: no labelled images to read")
        pixels = np.concatenate(self.samples)
        total = float(sum(h * w for h, w in zip(self.heights, self.widths)))
        classes = {}
        for name, s in self.per_class.items():
            sizes = np.asarray(s["sizes"], np.float64)
            classes[name] = {
                "image_share": round(s["present"] / n, 4),  # images where the class appears
                "pixel_share": round(s["pixels"] / total, 6),
                "objects_per_image": _spread(s["objects"], 2),
                "objects_per_image_with_any": _spread([o for o in s["objects"] if o], 2),
                "object_pixels": _spread(sizes),
                "object_diameter": _spread(np.sqrt(4 * sizes / np.pi)),  # of a disc of the object's area, pixels
                "stroke_width": _spread(s["strokes"]),  # of the first STROKE_IMAGES where it appears, pixels
            }
        out = {
            "version": VERSION,
            "images": n,
            "height": _spread(self.heights, 0),
            "width": _spread(self.widths, 0),
            "aspect": _spread(np.asarray(self.widths) / np.asarray(self.heights), 3),
            # pixels per image: what predicting native sizes costs is their mean, which a few large images lift far
            # above the median's (DSB: 154 000 against 65 536)
            "area": _spread(np.asarray(self.heights, np.float64) * np.asarray(self.widths), 0),
            "sizes": len(set(zip(self.heights, self.widths))),  # distinct image sizes
            "channels": self.channels,
            "intensity": {f"channel{c}": {k: round(float(v), 4) for k, v in zip(
                ("p1", "p50", "p99", "mean", "std"),
                [*np.percentile(pixels[:, c], [1, 50, 99]), pixels[:, c].mean(), pixels[:, c].std()])}
                for c in range(pixels.shape[1])},
            "empty_share": round(self.empty / n, 4),
            "coverage_when_not_empty": _spread(self.coverage, 4),
            "classes": classes,
            "groups": len(set(groups)) if groups else None,
        }
        if volumes is not None:
            out["volumes"] = volume_facts(volumes)
        return out


def stroke_width(mask: np.ndarray) -> float:
    """How thick a mask's shapes typically are, in pixels: the median, along their ridges (the pixels farthest from
    the background in their neighbourhood), of twice the distance to the background, less one. A disc gives its
    diameter and a line its width (within a pixel: an even width reads one less), whatever its length: membranes and
    vessels, whose equal-area disc would be large, are as thin as they look."""
    distance = ndimage.distance_transform_edt(mask)
    ridge = mask & (distance == ndimage.maximum_filter(distance, size=3))
    return float(2 * np.median(distance[ridge]) - 1)


def volume_facts(volumes) -> dict:
    """Spacing (mm), shape (voxels) and anisotropy (largest spacing over the smallest) of a ``VolumeSet``'s cases."""
    spacings = np.asarray([volumes.spacing(c) for c in volumes.cases], np.float64)
    shapes = np.asarray([volumes.shape(c)[:3] for c in volumes.cases], np.float64)
    return {"cases": len(volumes.cases),
            "spacing": {f"axis{a}": _spread(spacings[:, a], 3) for a in range(spacings.shape[1])},
            "shape": {f"axis{a}": _spread(shapes[:, a], 0) for a in range(shapes.shape[1])},
            "anisotropy": _spread(spacings.max(1) / spacings.min(1), 2)}


def write(path: Path, fingerprint: dict) -> None:
    atomic.write_json(path, fingerprint)


def read(path: Path) -> dict:
    """A fingerprint written by ``segkit check``; an error naming the file if it is missing or of another version."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: missing; run `segkit check` first")
    data = json.loads(path.read_text())
    if data.get("version") != VERSION:
        raise DataError(f"{path}: fingerprint version {data.get('version')}, this segkit reads {VERSION}; run "
                        f"`segkit check` again")
    return data


__all__ = ["Fingerprint", "read", "volume_facts", "write"]
