"""Pixel-level ROC-AUC of probabilities against binary masks, batched over (N, K, *spatial).

The AUC is the probability that a random foreground pixel scores above a random background pixel, ties
counting one half (the Mann-Whitney statistic; equal to the area under the ROC curve with ties interpolated,
as ``sklearn.metrics.roc_auc_score`` gives). It is undefined (NaN) when the truth holds only one label (all
foreground or all background); reductions skip NaN. Reductions are those of :mod:`segkit.metrics.overlap`:
"none", "image", "class", "mean" average per (image, class) AUCs; "micro" pools every pixel, "class_pooled"
pools each class's pixels over the images, "macro" averages "class_pooled".

uint8 probabilities (the stores' p * 255) go through 256-bin histograms, one pass and no sort; floats are
ranked.
"""

from __future__ import annotations

import numpy as np

from segkit.errors import ConfigError, DataError
from segkit.metrics.inputs import as_mask, check_batch
from segkit.metrics.overlap import REDUCTIONS, nanmean, reduce_items


def _auc_from_hist(hist: np.ndarray) -> np.ndarray:
    """hist (R, 256, 2): per row, value, label counts -> AUC per row."""
    neg = hist[..., 0].astype(np.float64)
    pos = hist[..., 1].astype(np.float64)
    below = np.cumsum(neg, axis=-1) - neg  # background pixels strictly below each value
    wins = (pos * (below + 0.5 * neg)).sum(axis=-1)
    n_pos, n_neg = pos.sum(axis=-1), neg.sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where((n_pos > 0) & (n_neg > 0), wins / (n_pos * n_neg), np.nan)


def _hist(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    rows = scores.shape[0]
    codes = (np.arange(rows, dtype=np.int64)[:, None] * 512 + scores.astype(np.int64) * 2 + labels).ravel()
    return np.bincount(codes, minlength=rows * 512).reshape(rows, 256, 2)


def _auc_rows(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """AUC of each row of scores (R, M) against bool labels (R, M)."""
    if scores.dtype == np.uint8:
        return _auc_from_hist(_hist(scores, labels))
    from scipy.stats import rankdata  # scipy.stats takes seconds to import: only pay it when ranking

    ranks = rankdata(scores, axis=1, method="average")
    n_pos = labels.sum(axis=1).astype(np.float64)
    n_neg = labels.shape[1] - n_pos
    wins = np.where(labels, ranks, 0.0).sum(axis=1) - n_pos * (n_pos + 1) / 2
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where((n_pos > 0) & (n_neg > 0), wins / (n_pos * n_neg), np.nan)


def roc_auc(probs, truth, *, reduction: str = "none"):
    """ROC-AUC of probabilities (N, K, *spatial; float or uint8 p*255) against masks of the same shape."""
    probs = np.asarray(probs)
    if not (probs.dtype == np.uint8 or np.issubdtype(probs.dtype, np.floating)):
        raise DataError(f"probabilities must be float or uint8 (p * 255), got dtype {probs.dtype}")
    truth = as_mask(truth, "truth")
    check_batch(probs, truth)
    n, k = probs.shape[:2]
    if reduction in ("micro", "class_pooled", "macro"):
        if reduction == "micro":
            return float(_auc_rows(probs.reshape(1, -1), truth.reshape(1, -1))[0])
        per_class = _auc_rows(
            np.moveaxis(probs, 1, 0).reshape(k, -1), np.moveaxis(truth, 1, 0).reshape(k, -1)
        )
        return per_class if reduction == "class_pooled" else nanmean(per_class)
    if reduction not in REDUCTIONS:
        raise ConfigError(f"unknown reduction {reduction!r}; known: {', '.join(REDUCTIONS)}")
    per_item = _auc_rows(probs.reshape(n * k, -1), truth.reshape(n * k, -1)).reshape(n, k)
    return reduce_items(per_item, reduction)
