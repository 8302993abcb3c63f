"""Scores of whole volumes, per class, in physical units: what medical segmentation challenges report (MSD: Dice
and normalised surface Dice; BraTS and others: HD95 in mm). A volume competition's CV is the mean over volumes of
these, not over slices: a slice-wise mean weighs a volume by its number of slices and scores the empty slices at
its ends as perfect.

``VOLUME_METRICS``: dice, iou, rvd (signed relative volume difference), hd95 and assd in mm (the voxel spacing
of the volume's header), nsd (normalised surface Dice at ``tolerance`` mm). Empty rules: both masks empty gives
dice = iou = nsd = 1 and distances 0; one empty gives dice = iou = nsd = 0 and distances inf (reported, and left
out of the means as NaN would be: ``segkit evaluate`` counts them).
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from segkit.metrics.surface import surface_distances

VOLUME_METRICS = ("dice", "iou", "rvd", "hd95", "assd", "nsd")


def overlap(pred: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per class (K,) Dice and IoU of bool (K, ...) masks; 1 where both are empty."""
    p = np.asarray(pred, bool).reshape(len(pred), -1)
    t = np.asarray(truth, bool).reshape(len(truth), -1)
    inter = (p & t).sum(1).astype(np.float64)
    total = (p.sum(1) + t.sum(1)).astype(np.float64)
    union = total - inter
    dice = np.where(total == 0, 1.0, 2 * inter / np.maximum(total, 1))
    iou = np.where(union == 0, 1.0, inter / np.maximum(union, 1))
    return dice, iou


def volume_scores(pred: np.ndarray, truth: np.ndarray, spacing: Sequence[float], tolerance: float = 1.0
                  ) -> dict[str, np.ndarray]:
    """Per class (K,): every VOLUME_METRICS score of bool (K, X, Y, Z) masks."""
    pred, truth = np.asarray(pred, bool), np.asarray(truth, bool)
    k = pred.shape[0]
    out = {name: np.empty(k, np.float64) for name in VOLUME_METRICS}
    out["dice"], out["iou"] = overlap(pred, truth)
    for c in range(k):
        p, t = pred[c], truth[c]
        ps, ts = float(p.sum()), float(t.sum())
        out["rvd"][c] = (ps - ts) / ts if ts else (0.0 if ps == 0 else math.inf)
        dist = surface_distances(p, t, tuple(spacing))
        out["hd95"][c] = dist.hd95()
        out["assd"][c] = dist.assd()
        out["nsd"][c] = dist.nsd(tolerance)
    return out
