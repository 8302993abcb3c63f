"""Overlap scores from confusion counts of binary masks, batched over (N, K, *spatial).

Masks are bool (or 0/1 integer) arrays shaped (N images, K classes, *spatial) with 1 to 3 spatial axes; float
probabilities are binarized as ``p >= threshold``. Every score is a ratio of true/false positive/negative
pixel counts (tp, fp, fn, tn) per image and class, so they are computed once and shared:

==================================  ===================================  ======  ==========================
score (aliases)                     definition                           best    undefined when
==================================  ===================================  ======  ==========================
pixel_accuracy                      (tp + tn) / all                      1       never
mean_pixel_accuracy                 mean of recall and specificity       1       never (see below)
iou (jaccard)                       tp / (tp + fp + fn)                  1       both masks empty
dice (f1)                           2 tp / (2 tp + fp + fn)              1       both masks empty
precision                           tp / (tp + fp)                       1       prediction empty
recall (sensitivity)                tp / (tp + fn)                       1       truth empty
specificity                         tn / (tn + fp)                       1       truth fills the image
volume_overlap_error                1 - iou = (fp + fn) / (tp + fp + fn) 0       both masks empty
relative_volume_difference          (|pred| - |truth|) / |truth|         0       truth empty
abs_relative_volume_difference      | relative_volume_difference |      0       truth empty
==================================  ===================================  ======  ==========================

**The empty rule.** A ratio whose denominator is 0 scores ``empty`` when the prediction is right (no false
positive and no false negative: for Dice/IoU that is truth and prediction both empty), and the score's worst
value when it is wrong (0 for scores in [0, 1] where higher is better, ``+inf`` for the volume differences).
``empty`` is ``"best"`` (the default: 1 for Dice/IoU, 0 for the error scores — the rule of the Kaggle
competitions), ``"nan"`` (mark the item undefined; every reduction then skips it, and a reduction over nothing
but NaN is NaN), or a number. Mean pixel accuracy is the mean accuracy over the two labels of each mask
(foreground: recall, background: specificity), leaving out a label absent from the truth, as FCN's mean
accuracy leaves out absent classes; it is never undefined, so it ignores ``empty``. For a multiclass label
map, FCN's mean pixel accuracy is ``recall(onehot_with_background, ..., reduction="macro")``.

**Reductions.** ``"none"``: (N, K) per image and class. ``"image"``: (N,), mean over classes. ``"class"``:
(K,), mean over images. ``"mean"``: scalar, mean over all (image, class) pairs (what the competitions' Dice
does). ``"micro"``: scalar, counts summed over images and classes first. ``"class_pooled"``: (K,), counts
summed over images per class. ``"macro"``: scalar, mean of ``"class_pooled"``.

Counting is one pass over the masks (:func:`segkit.metrics.counts.row_counts`), 25x or more faster than
``smp.metrics.get_stats`` on the same masks (bench/metrics.py), which needs them as tensors and importing smp
costs seconds. Torch tensors (a training loop's) do go to ``smp.metrics.get_stats``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Union

import numpy as np

from segkit.errors import ConfigError, DataError
from segkit.metrics.counts import row_counts
from segkit.metrics.inputs import as_mask, check_batch

Empty = Union[str, float]
REDUCTIONS = ("none", "image", "class", "mean", "micro", "class_pooled", "macro")


@dataclass(frozen=True)
class Confusion:
    """Pixel counts per image and class, each int64 (N, K)."""

    tp: np.ndarray
    fp: np.ndarray
    fn: np.ndarray
    tn: np.ndarray

    def summed(self, axis) -> "Confusion":
        return Confusion(*(x.sum(axis=axis) for x in (self.tp, self.fp, self.fn, self.tn)))

    def score(self, name: str, reduction: str = "none", empty: Empty = "best"):
        return score_confusion(name, self, reduction=reduction, empty=empty)


def _is_torch(x) -> bool:
    return type(x).__module__.startswith("torch")


def confusion(pred, truth, *, threshold: float | None = None) -> Confusion:
    """tp, fp, fn, tn per image and class of masks (N, K, *spatial); floats binarized as ``>= threshold``."""
    if _is_torch(pred) or _is_torch(truth):
        return _confusion_torch(pred, truth, threshold)
    pred = as_mask(pred, "pred", threshold)
    truth = as_mask(truth, "truth")
    check_batch(pred, truth)
    n, k = pred.shape[:2]
    tp, pred_area, truth_area = row_counts(pred.reshape(n * k, -1), truth.reshape(n * k, -1))
    fp = pred_area - tp
    fn = truth_area - tp
    tn = math.prod(pred.shape[2:]) - tp - fp - fn
    return Confusion(*(x.reshape(n, k) for x in (tp, fp, fn, tn)))


def _confusion_torch(pred, truth, threshold: float | None) -> Confusion:
    import segmentation_models_pytorch as smp  # noqa: PLC0415 (seconds to import; only training loops pass tensors)

    pred = pred >= threshold if threshold is not None else pred != 0
    truth = truth != 0
    if pred.shape != truth.shape or pred.ndim < 3:
        raise DataError(
            f"expected pred and truth shaped (N, K, *spatial), got {tuple(pred.shape)}, {tuple(truth.shape)}"
        )
    stats = smp.metrics.get_stats(pred.long(), truth.long(), mode="multilabel")
    return Confusion(*(s.detach().cpu().numpy().astype(np.int64) for s in stats))


# ------------------------------------------------------------------------------------------------ score table


@dataclass(frozen=True)
class _Ratio:
    """A score as num / den of confusion counts, its best value, and its value when wrong but undefined."""

    ratio: Callable[[Confusion], tuple[np.ndarray, np.ndarray]]
    higher_is_better: bool
    best: float
    worst: float


_RATIOS: dict[str, _Ratio] = {
    "pixel_accuracy": _Ratio(lambda c: (c.tp + c.tn, c.tp + c.fp + c.fn + c.tn), True, 1.0, 0.0),
    "iou": _Ratio(lambda c: (c.tp, c.tp + c.fp + c.fn), True, 1.0, 0.0),
    "dice": _Ratio(lambda c: (2 * c.tp, 2 * c.tp + c.fp + c.fn), True, 1.0, 0.0),
    "precision": _Ratio(lambda c: (c.tp, c.tp + c.fp), True, 1.0, 0.0),
    "recall": _Ratio(lambda c: (c.tp, c.tp + c.fn), True, 1.0, 0.0),
    "specificity": _Ratio(lambda c: (c.tn, c.tn + c.fp), True, 1.0, 0.0),
    "volume_overlap_error": _Ratio(lambda c: (c.fp + c.fn, c.tp + c.fp + c.fn), False, 0.0, 1.0),
    "relative_volume_difference": _Ratio(lambda c: (c.fp - c.fn, c.tp + c.fn), False, 0.0, math.inf),
    "abs_relative_volume_difference": _Ratio(
        lambda c: (np.abs(c.fp - c.fn), c.tp + c.fn), False, 0.0, math.inf
    ),
}
ALIASES = {"jaccard": "iou", "f1": "dice", "sensitivity": "recall"}
OVERLAP_SCORES = tuple(sorted([*_RATIOS, "mean_pixel_accuracy", *ALIASES]))


def higher_is_better(name: str) -> bool:
    name = _canonical(name)
    return True if name == "mean_pixel_accuracy" else _RATIOS[name].higher_is_better


def _canonical(name: str) -> str:
    name = ALIASES.get(name, name)
    if name not in _RATIOS and name != "mean_pixel_accuracy":
        raise ConfigError(f"unknown overlap score {name!r}; known: {', '.join(OVERLAP_SCORES)}")
    return name


def _empty_value(empty: Empty, best: float) -> float:
    if isinstance(empty, str):
        if empty == "best":
            return best
        if empty == "nan":
            return math.nan
        raise ConfigError(f"empty must be 'best', 'nan' or a number, got {empty!r}")
    return float(empty)


def _divide(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    return np.divide(num, den, out=np.full(np.broadcast(num, den).shape, np.nan), where=den != 0)


def _raw(name: str, c: Confusion, empty: Empty) -> np.ndarray:
    """The score of each item of ``c`` (any shape), with the empty rule applied."""
    if name == "mean_pixel_accuracy":
        both = np.stack([_divide(c.tp, c.tp + c.fn), _divide(c.tn, c.tn + c.fp)])
        return nanmean(both, axis=0)
    spec = _RATIOS[name]
    num, den = spec.ratio(c)
    out = np.atleast_1d(_divide(num, den))
    undefined = np.atleast_1d(np.asarray(den) == 0)
    if undefined.any():
        right = np.atleast_1d((c.fp == 0) & (c.fn == 0))
        out[undefined & right] = _empty_value(empty, spec.best)
        out[undefined & ~right] = spec.worst
    return out.reshape(np.shape(num))


def nanmean(x: np.ndarray, axis=None):
    """Mean skipping NaN; NaN (without a warning) where nothing is left."""
    x = np.asarray(x, dtype=np.float64)
    valid = ~np.isnan(x)
    total = np.where(valid, x, 0.0).sum(axis=axis)
    count = valid.sum(axis=axis)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(count > 0, total / np.maximum(count, 1), np.nan)
    return float(out) if np.ndim(out) == 0 else out


def reduce_items(scores: np.ndarray, reduction: str):
    """Reduce per (image, class) scores (N, K) by an item-wise reduction (none, image, class, mean)."""
    if reduction == "none":
        return scores
    if reduction == "image":
        return nanmean(scores, axis=1)
    if reduction == "class":
        return nanmean(scores, axis=0)
    if reduction == "mean":
        return nanmean(scores)
    raise ConfigError(f"unknown reduction {reduction!r}; known: {', '.join(REDUCTIONS)}")


def score_confusion(name: str, c: Confusion, *, reduction: str = "none", empty: Empty = "best"):
    """Score ``name`` from confusion counts (N, K), reduced as the module doc describes."""
    name = _canonical(name)
    if reduction == "micro":
        return float(_raw(name, c.summed(axis=None), empty).reshape(()))
    if reduction in ("class_pooled", "macro"):
        per_class = _raw(name, c.summed(axis=0), empty)
        return per_class if reduction == "class_pooled" else nanmean(per_class)
    return reduce_items(_raw(name, c, empty), reduction)


def overlap_score(name: str, pred, truth, *, reduction: str = "none", empty: Empty = "best", threshold=None):
    """Overlap score ``name`` of masks (N, K, *spatial), as the module doc defines and reduces it."""
    return score_confusion(
        name, confusion(pred, truth, threshold=threshold), reduction=reduction, empty=empty
    )


def overlap_scores(
    pred, truth, names=None, *, reduction: str = "none", empty: Empty = "best", threshold=None
):
    """Several overlap scores from one pass over the masks: {name: result}."""
    c = confusion(pred, truth, threshold=threshold)
    names = names or [n for n in OVERLAP_SCORES if n not in ALIASES]
    return {n: score_confusion(n, c, reduction=reduction, empty=empty) for n in names}


def _named(name: str):
    def score(pred, truth, *, reduction: str = "none", empty: Empty = "best", threshold=None):
        return overlap_score(name, pred, truth, reduction=reduction, empty=empty, threshold=threshold)

    score.__name__ = name
    score.__doc__ = f"``overlap_score({name!r}, ...)``: see the segkit.metrics.overlap module doc."
    return score


pixel_accuracy = _named("pixel_accuracy")
mean_pixel_accuracy = _named("mean_pixel_accuracy")
iou = jaccard = _named("iou")
dice = f1 = _named("dice")
precision = _named("precision")
recall = sensitivity = _named("recall")
specificity = _named("specificity")
volume_overlap_error = _named("volume_overlap_error")
relative_volume_difference = _named("relative_volume_difference")
abs_relative_volume_difference = _named("abs_relative_volume_difference")
