"""Connected components of binary masks (8-connectivity) and their areas: what min-area rules, keep-largest,
object-level metrics and the tuner's candidate scoring count on.

OpenCV's labelling without its statistics plus one compiled counting loop is ~3x faster than
connectedComponentsWithStats, whose bounding boxes and centroids nothing here needs.
"""

from __future__ import annotations

import cv2
import numpy as np
from numba import njit


@njit(cache=True, nogil=True)
def _label_areas(labels, n):  # pragma: no cover - compiled
    areas = np.zeros(n, np.int64)
    for v in labels.ravel():
        areas[v] += 1
    return areas


@njit(cache=True, nogil=True)
def _label_overlaps(labels, truth, n):  # pragma: no cover - compiled
    """Pixels per label, and pixels per label inside ``truth``, in one pass without temporaries."""
    areas = np.zeros(n, np.int64)
    inters = np.zeros(n, np.int64)
    flat = labels.ravel()
    t = truth.ravel()
    for i in range(flat.size):
        areas[flat[i]] += 1
        inters[flat[i]] += t[i]
    return areas, inters


def label_counts(labels: np.ndarray, n: int) -> np.ndarray:
    """Voxels (pixels) per label of an integer label array of any shape, labels 0..n-1: ``np.bincount`` without
    its int64 copy of the labels (2 GB more for a 1024 x 1024 x 512 slab's int32 labels)."""
    return _label_areas(np.ascontiguousarray(labels), n)


def _labels(mask: np.ndarray) -> tuple[int, np.ndarray]:
    return cv2.connectedComponents(np.ascontiguousarray(mask, dtype=np.uint8), connectivity=8, ltype=cv2.CV_32S)


def components(mask: np.ndarray) -> tuple[int, np.ndarray, np.ndarray]:
    """(n labels incl. background, label image int32, areas per label with areas[0] the background)."""
    n, labels = _labels(mask)
    return n, labels, _label_areas(labels, n)


def components_in(mask: np.ndarray, truth: np.ndarray) -> tuple[int, np.ndarray, np.ndarray, np.ndarray]:
    """``components`` plus, per label, how many of its pixels lie inside the (H, W) ``truth`` mask."""
    n, labels = _labels(mask)
    areas, inters = _label_overlaps(labels, np.ascontiguousarray(truth).view(np.uint8), n)
    return n, labels, areas, inters


def bounding_box(mask: np.ndarray, margin: int = 0) -> tuple[slice, ...] | None:
    """The smallest box holding a mask's foreground (any number of dimensions), grown by ``margin`` on every side
    and clipped to the array; None when the mask is empty."""
    mask = np.asarray(mask)
    if mask.ndim == 2 and mask.dtype in (np.uint8, np.bool_):
        x, y, w, h = cv2.boundingRect(np.ascontiguousarray(mask).view(np.uint8))  # one scan, in OpenCV
        if w == 0:
            return None
        ends = [(y, y + h), (x, x + w)]
    else:
        ends = []
        rest = mask
        while rest.ndim:
            # Axis 0 first: reducing contiguous rows, then OR-ing whole slices together, each reads memory in
            # order, several times faster than .any() over the other axes at once.
            hit = np.flatnonzero(rest.reshape(rest.shape[0], -1).any(axis=1))
            if hit.size == 0:
                return None
            ends.append((int(hit[0]), int(hit[-1]) + 1))
            rest = rest.any(axis=0)
    return tuple(slice(max(a - margin, 0), min(b + margin, size)) for (a, b), size in zip(ends, mask.shape))


def component_overlaps(mask: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``components_in``'s areas and overlaps without its label image, labelled on the foreground's bounding box
    only, at a fraction of the cost on a big image holding a few small objects. The same components and the same
    background (the pixels outside the box are added to it), but OpenCV may number the components in another
    order inside a box: for rules that do not depend on the order (a minimum area), not for a tie between two
    largest components."""
    mask = np.ascontiguousarray(mask, dtype=np.uint8)
    t = np.ascontiguousarray(truth).view(np.uint8)
    box = bounding_box(mask)
    if box is None:
        return np.array([mask.size], np.int64), np.array([np.count_nonzero(t)], np.int64)
    n, labels = _labels(mask[box])
    t_box = np.ascontiguousarray(t[box])
    areas, inters = _label_overlaps(labels, t_box, n)
    areas[0] += mask.size - labels.size
    inters[0] += np.count_nonzero(t) - np.count_nonzero(t_box)
    return areas, inters


__all__ = ["bounding_box", "component_overlaps", "components", "components_in", "label_counts"]
