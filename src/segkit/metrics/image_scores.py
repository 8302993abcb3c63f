"""The toolbox's overlap and surface scores per image and class, under conventions that are finite everywhere, so
that each can be a competition metric (``metric:``, ``segkit score --metric``, training, tuning) and a row of the
evaluation table (``segkit evaluate``).

A competition metric scores an image as the mean of these per-class values over its K classes, and a data set as
the mean over its images; a single infinite or undefined value would make that mean useless, so every score here
has a finite value on every mask pair:

* **Ratios of confusion counts** (pixel accuracy, mean pixel accuracy, IoU, Dice, sensitivity, specificity, VOE)
  are those of :mod:`segkit.metrics.overlap` with its empty rule at ``empty="best"``: a ratio whose denominator is 0
  scores its best value when the prediction is right (no false positive, no false negative) and its worst when it
  is wrong. Sensitivity on an empty truth: 1 if the prediction is empty too, else 0. Specificity on a truth that
  fills the image: 1 if the prediction fills it too, else 0. VOE (1 - IoU): 0 when both are empty. Mean pixel
  accuracy averages recall and specificity over the labels present in the truth, so it is never undefined.
* **|RVD|** (``abs_rvd``) is ``min(|pred - truth| / truth, 1)``: the relative volume error capped at 1, the value
  of an empty prediction. 1 reads "as far off as predicting nothing, or farther"; a prediction on an empty truth is
  infinitely far off relative to it and scores 1, an empty prediction on an empty truth 0. Without the cap one
  image with a tiny truth and a big prediction (|RVD| 100) would outweigh a hundred good ones in a mean.
* **Signed RVD** (``rvd``: ``(pred - truth) / truth``) is not capped (its sign and size are the point: the mean over
  images shows whether the pipeline over- or under-segments) and so has no finite value on an empty truth with a
  non-empty prediction: NaN there, 0 when both are empty. It is not a metric (over- and under-segmented images
  cancel in its mean); ``abs_rvd`` is.
* **ROC-AUC of a mask** (``roc_auc`` as a metric): a hard mask has two score levels, and the AUC of a two-level
  score is ``(sensitivity + specificity) / 2`` (a foreground pixel beats a background one when it is predicted and
  the other is not, ties count half), with the two conventions above; on a truth with both labels it equals the
  mean pixel accuracy. The evaluation table computes the real AUC from the probabilities instead.
* **Surface distances** (``assd``, ``hd``, ``hd95``) in pixels (spacing 1), face-connected surfaces, HD95 by
  MONAI's convention (:mod:`segkit.metrics.surface`): both masks empty -> 0, exactly one empty -> the image
  diagonal (``empty_fill="diagonal"``), the largest distance two pixels of the image can have.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from segkit.errors import DataError
from segkit.metrics.counts import OverlapCounts
from segkit.metrics.inputs import as_mask, check_same_shape
from segkit.metrics.overlap import Confusion, score_confusion
from segkit.metrics.surface import SurfaceDistances, surface_distances


def confusion_of(c: OverlapCounts) -> Confusion:
    """tp, fp, fn, tn shaped like ``c.inter`` (..., N, K) from intersection and areas."""
    fp = c.pred_area - c.inter
    fn = c.truth_area - c.inter
    tn = np.asarray(c.pixels)[:, None] - c.inter - fp - fn  # pixels (N,) against every class of its image
    return Confusion(c.inter, fp, fn, tn)


def _ratio(name: str) -> Callable[[OverlapCounts], np.ndarray]:
    return lambda c: score_confusion(name, confusion_of(c))


def _abs_rvd(c: OverlapCounts) -> np.ndarray:
    # The toolbox's |RVD| is +inf on an empty truth with a prediction; the cap makes that the worst value, 1.
    return np.minimum(score_confusion("abs_relative_volume_difference", confusion_of(c)), 1.0)


def _rvd(c: OverlapCounts) -> np.ndarray:
    signed = score_confusion("relative_volume_difference", confusion_of(c))
    return np.where(np.isinf(signed), np.nan, signed)


def _mask_auc(c: OverlapCounts) -> np.ndarray:
    conf = confusion_of(c)
    return 0.5 * (score_confusion("recall", conf) + score_confusion("specificity", conf))


# Per-(image, class) values (..., N, K) from overlap counts (..., N, K), by the names the metrics and the table use.
COUNT_SCORES: dict[str, Callable[[OverlapCounts], np.ndarray]] = {
    "pixel_accuracy": _ratio("pixel_accuracy"),
    "mean_pixel_accuracy": _ratio("mean_pixel_accuracy"),
    "iou": _ratio("iou"),
    "dice": _ratio("dice"),
    "sensitivity": _ratio("recall"),
    "specificity": _ratio("specificity"),
    "voe": _ratio("volume_overlap_error"),
    "rvd": _rvd,
    "abs_rvd": _abs_rvd,
    "roc_auc": _mask_auc,
}

# Per-class surface scores from one mask pair's distances, in pixels, with the finite empty rule above.
SURFACE_SCORES: dict[str, Callable[[SurfaceDistances], float]] = {
    "assd": lambda d: d.assd(empty_fill="diagonal"),
    "hd": lambda d: d.hausdorff(100.0, empty_fill="diagonal"),
    "hd95": lambda d: d.hd95(empty_fill="diagonal"),
}


def class_mean(name: str) -> Callable[[OverlapCounts], np.ndarray]:
    """A metric's ``from_counts``: the per-class values of ``name`` averaged over the classes, (..., N)."""
    per_class = COUNT_SCORES[name]
    return lambda c: per_class(c).mean(axis=-1)


def _one_image(pred, truth) -> tuple[np.ndarray, np.ndarray]:
    pred = as_mask(pred, "pred")
    truth = as_mask(truth, "truth")
    check_same_shape(pred, truth)
    if not 2 <= pred.ndim <= 4:
        raise DataError(f"expected one image's masks shaped (K, *spatial) with 1 to 3 spatial axes, got {pred.shape}")
    return pred, truth


def surface_class_scores(pred, truth, names=tuple(SURFACE_SCORES)) -> dict[str, np.ndarray]:
    """{name: (K,) values} of one image's masks (K, *spatial), each class's distances computed once."""
    pred, truth = _one_image(pred, truth)
    out = {name: np.empty(pred.shape[0]) for name in names}
    for k in range(pred.shape[0]):
        dist = surface_distances(pred[k], truth[k])
        for name in names:
            out[name][k] = SURFACE_SCORES[name](dist)
    return out


def surface_metric(name: str) -> Callable[[np.ndarray, np.ndarray], float]:
    """A metric's ``per_image``: surface score ``name`` of (K, *spatial) masks, averaged over the classes."""

    def per_image(pred, truth) -> float:
        return float(surface_class_scores(pred, truth, (name,))[name].mean())

    per_image.__name__ = name
    return per_image


__all__ = ["COUNT_SCORES", "SURFACE_SCORES", "class_mean", "confusion_of", "surface_class_scores", "surface_metric"]
