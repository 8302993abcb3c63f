"""Greedy non-maximum suppression in numba, for ``segkit.models.maskrcnn.greedy_nms`` (torchvision's compiled NMS
is missing where its extension does not load)."""

from __future__ import annotations

import numba
import numpy as np


@numba.njit(cache=True)
def greedy(boxes: np.ndarray, threshold: float) -> np.ndarray:
    """Positions of the kept rows of ``boxes`` (N, 4: x0, y0, x1, y1), sorted by decreasing score."""
    n = boxes.shape[0]
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    dropped = np.zeros(n, dtype=np.bool_)
    kept = np.empty(n, dtype=np.int64)
    count = 0
    for i in range(n):
        if dropped[i]:
            continue
        kept[count] = i
        count += 1
        for j in range(i + 1, n):
            if dropped[j]:
                continue
            w = min(boxes[i, 2], boxes[j, 2]) - max(boxes[i, 0], boxes[j, 0])
            h = min(boxes[i, 3], boxes[j, 3]) - max(boxes[i, 1], boxes[j, 1])
            if w <= 0 or h <= 0:
                continue
            inter = w * h
            if inter / (areas[i] + areas[j] - inter) > threshold:
                dropped[j] = True
    return kept[:count]
