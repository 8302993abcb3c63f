"""Object AP (DSB 2018) of one image and class for many candidate masks at once.

``segkit.metrics.object_ap`` labels the prediction and the truth and scores their match. A tuner asks the same
question of dozens of candidates per image (every threshold x minimum area, morphology, keep-largest), and most
candidates differ only in which predicted components survive. ``ObjectOverlaps(truth)`` labels the truth once;
``pairs`` counts the overlaps of every (true, predicted) component pair of one labelling; ``score`` then rates any
subset of those predicted components without touching the pixels again. Components are 8-connected, as
``object_ap`` labels them, and the result equals ``object_ap`` on the surviving components (tests check it).
"""

from __future__ import annotations

import numpy as np

from segkit.components import components

# IoU thresholds 0.50, 0.55, ..., 0.95 as k / 20, so "IoU > t" is the exact integer test 20 * I > k * U.
AP_TWENTIETHS = np.arange(10, 20)
AP_THRESHOLDS = AP_TWENTIETHS / 20


class ObjectOverlaps:
    """The true components of one (H, W) mask, ready to score predicted components against."""

    def __init__(self, truth: np.ndarray):
        self.n_true, self.truth_labels, self.true_areas = components(np.asarray(truth).view(np.uint8))

    def pairs(self, labels: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(true id, predicted id, overlap) of every overlapping pair; ``labels`` a labelling with n labels."""
        both = (labels > 0) & (self.truth_labels > 0)
        codes = self.truth_labels[both].astype(np.int64) * n + labels[both]
        if self.n_true * n <= 1 << 22:
            inter = np.bincount(codes, minlength=self.n_true * n)
            uniq = np.flatnonzero(inter)
            inter = inter[uniq]
        else:
            uniq, inter = np.unique(codes, return_counts=True)
        return uniq // n, uniq % n, inter

    def score(self, pairs, areas: np.ndarray, keep: np.ndarray) -> float:
        """Object AP of the predicted components with ``keep[label]`` true (``areas[label]`` their sizes)."""
        n_pred, n_true = int(np.count_nonzero(keep)), self.n_true - 1
        if n_pred == 0 or n_true == 0:
            return float(n_pred == n_true)
        ti, pj, inter = pairs
        kept = keep[pj]
        ti, pj, inter = ti[kept], pj[kept], inter[kept]
        union = self.true_areas[ti] + areas[pj] - inter
        # Above IoU 0.5 a true object has at most one partner, so matched pairs count true positives.
        tp = (20 * inter[None, :] > AP_TWENTIETHS[:, None] * union[None, :]).sum(axis=1)
        return float((tp / (n_pred + n_true - tp)).mean())


__all__ = ["AP_THRESHOLDS", "AP_TWENTIETHS", "ObjectOverlaps"]
