"""The competitions' own scores, by name, plus fast paths for scoring many images and thresholds at once.

Every metric is a per-image function ``f(pred, truth) -> float`` on (K, H, W) bool masks (K classes of one
image); a data set scores the mean over its images. Registered in ``COMPETITION_METRICS``:

* ``tgs`` (alias ``map_iou``; TGS Salt 2018): mean over IoU thresholds t = 0.50, 0.55, ..., 0.95 of a hit:
  both masks empty -> 1, exactly one empty -> 0, else 1 if IoU > t. One object per image and class; K > 1
  averages the classes. IoU > t is compared exactly in integers (20 * intersection > 20t * union), so an IoU
  of exactly 0.6 does not pass t = 0.6 whatever floating-point rounding would say.
* ``dice`` (Severstal 2019, SIIM-ACR 2019, Understanding Clouds 2019): Dice per class, both empty -> 1,
  averaged over the K classes (so a data set scores the mean over all (image, class) pairs).
* ``iou``: the same with IoU (Jaccard).
* ``object_ap`` (Data Science Bowl 2018): objects are the connected components of each class's mask (full
  connectivity, 8-neighbour in 2-D, as ``skimage.measure.label``); per threshold t in 0.50:0.05:0.95 a true
  object matched by a predicted one with IoU > t is a TP (IoU > 0.5 makes matches unique), unmatched
  predictions are FP, unmatched truths FN, and precision(t) = TP / (TP + FP + FN); the mean over t is the
  image's score. Both empty -> 1. ``object_ap_labels`` takes instance label maps instead.
* ``pixel_accuracy``: share of pixels labelled right, averaged over classes.
* The toolbox's scores, each the mean over the image's classes of a per-class value whose empty-mask convention is
  finite (:mod:`segkit.metrics.image_scores` states them): ``mean_pixel_accuracy``, ``sensitivity`` (alias
  ``recall``), ``specificity``, ``roc_auc`` (of the hard mask: (sensitivity + specificity) / 2), higher is better;
  ``voe`` (1 - IoU, alias ``volume_overlap_error``), ``abs_rvd`` (|relative volume difference| capped at 1, alias
  ``abs_relative_volume_difference``), and the surface distances in pixels ``assd``, ``hd`` (alias ``hausdorff``),
  ``hd95``, lower is better. The signed relative volume difference (``rvd``) is refused: errors of opposite sign
  cancel in its mean, so it cannot rank predictions (``segkit evaluate`` shows it as a bias).

Each entry is a :class:`CompetitionMetric` that knows whether higher is better. Tuning scores thousands of
images at dozens of thresholds: ``score_many`` scores a batch from per-image intersection and areas counted
once in numpy, and ``counts_at_thresholds`` gets those counts for every threshold from one histogram pass over
the probabilities (a pixel is predicted at threshold t when p >= t, smp's convention; uint8 values q count as
``segkit.artifacts.probs.dequantize(q) >= np.float32(t)``), after which ``OverlapCounts.with_min_area`` applies a
min-area rule for free and ``score_counts`` turns counts into per-image scores. ``score_above`` sweeps with the
pipeline's own rule, p > t (``segkit.threshold``). Object AP has its own fast path for tuners
(``segkit.metrics.objects``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
from scipy import ndimage as ndi

from segkit.artifacts.probs import dequantize
from segkit.errors import ConfigError, DataError
from segkit.metrics.counts import OverlapCounts, as_batch, counts_at_thresholds, overlap_counts
from segkit.metrics.image_scores import class_mean, surface_metric
from segkit.metrics.inputs import as_mask, check_same_shape
from segkit.metrics.objects import AP_TWENTIETHS, ObjectOverlaps
from segkit.registry import Registry
from segkit.threshold import sweep_level

# ----------------------------------------------------------------------------------------- scores from counts


def _per_class_ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den, and 1 where den is 0 (both masks empty: the competitions' rule)."""
    num = num.astype(np.float64)
    den = den.astype(np.float64)
    return np.divide(num, den, out=np.ones(np.broadcast(num, den).shape), where=den != 0)


def _dice_counts(c: OverlapCounts) -> np.ndarray:
    return _per_class_ratio(2 * c.inter, c.pred_area + c.truth_area).mean(axis=-1)


def _iou_counts(c: OverlapCounts) -> np.ndarray:
    return _per_class_ratio(c.inter, c.pred_area + c.truth_area - c.inter).mean(axis=-1)


def _tgs_counts(c: OverlapCounts) -> np.ndarray:
    union = c.pred_area + c.truth_area - c.inter
    # One mask empty: intersection 0, so no threshold is passed; both empty: union 0, scored 1 below.
    hits = (20 * c.inter[..., None] > AP_TWENTIETHS * union[..., None]).mean(axis=-1)
    return np.where(union == 0, 1.0, hits).mean(axis=-1)


def _pixel_accuracy_counts(c: OverlapCounts) -> np.ndarray:
    wrong = c.pred_area + c.truth_area - 2 * c.inter
    return (1.0 - wrong / c.pixels[:, None]).mean(axis=-1)


# ----------------------------------------------------------------------------------------------- object AP


def _consecutive(labels: np.ndarray) -> tuple[np.ndarray, int]:
    """Relabel 1..n in order of the original ids (0 stays background). Label maps usually are 0..n already
    (decoders number their objects so, instance maps mostly do): then a count of the ids is all it costs."""
    flat = labels.ravel()
    if flat.size and flat.min() >= 0 and flat.max() <= 4 * flat.size:
        present = np.flatnonzero(np.bincount(flat))
        objects = present[present > 0]
        if len(objects) == 0 or objects[-1] == len(objects):
            return labels, len(objects)
        lookup = np.zeros(int(objects[-1]) + 1, np.int64)
        lookup[objects] = np.arange(1, len(objects) + 1)
        return lookup[labels], len(objects)
    ids, inverse = np.unique(labels, return_inverse=True)
    if ids[0] != 0:
        return inverse.reshape(labels.shape) + 1, len(ids)
    return inverse.reshape(labels.shape), len(ids) - 1


def object_ap_labels(pred_labels: np.ndarray, truth_labels: np.ndarray) -> float:
    """DSB 2018 object AP of two instance label maps (0 = background, other ids = one object each)."""
    pred_labels = np.asarray(pred_labels)
    truth_labels = np.asarray(truth_labels)
    check_same_shape(pred_labels, truth_labels)
    if (
        pred_labels.dtype == np.bool_
        or truth_labels.dtype == np.bool_
        or not (
            np.issubdtype(pred_labels.dtype, np.integer) and np.issubdtype(truth_labels.dtype, np.integer)
        )
    ):
        raise DataError("object_ap_labels takes integer instance label maps; use object_ap for binary masks")
    return float(_matched(pred_labels, truth_labels)[2].mean())


def _matched(pred_labels: np.ndarray, truth_labels: np.ndarray):
    """(true objects, predicted objects, precision TP / (TP + FP + FN) at each IoU threshold (1 where neither side
    has an object, 0 where one side has none), and the (n_true, n_pred) pixel overlaps with the objects' areas, or
    None where either side has no object)."""
    p, n_pred = _consecutive(pred_labels)
    t, n_true = _consecutive(truth_labels)
    if n_pred == 0 or n_true == 0:
        value = 1.0 if n_pred == n_true else 0.0
        return n_true, n_pred, np.full(len(AP_TWENTIETHS), value), None
    joint = np.bincount(t.ravel().astype(np.int64) * (n_pred + 1) + p.ravel(), minlength=(n_true + 1) * (n_pred + 1))
    joint = joint.reshape(n_true + 1, n_pred + 1)
    inter = joint[1:, 1:]
    true_area = joint[1:, :].sum(axis=1)
    pred_area = joint[:, 1:].sum(axis=0)
    union = true_area[:, None] + pred_area[None, :] - inter
    # (T, n_true, n_pred) matches; above IoU 0.5 each object has at most one partner, so counting is matching.
    match = 20 * inter[None] > AP_TWENTIETHS[:, None, None] * union[None]
    tp = match.any(axis=2).sum(axis=1)
    fp = n_pred - match.any(axis=1).sum(axis=1)
    fn = n_true - tp
    return n_true, n_pred, tp / (tp + fp + fn), (inter, true_area, pred_area)


def object_scores(pred_labels: np.ndarray, truth_labels: np.ndarray) -> dict:
    """What went right and wrong with one image's objects: object AP, the precision at each IoU threshold
    (``ap50`` .. ``ap95``), the objects true and predicted, and two kinds of error: ``split`` (true objects of which
    two or more predicted objects lie mostly inside: over-segmentation) and ``merged`` (predicted objects holding
    two or more true objects mostly inside: under-segmentation, touching objects not separated)."""
    n_true, n_pred, precisions, pairs = _matched(np.asarray(pred_labels), np.asarray(truth_labels))
    out = {"true_objects": n_true, "pred_objects": n_pred, "ap": float(precisions.mean())}
    out.update({f"ap{5 * int(t)}": float(v) for t, v in zip(AP_TWENTIETHS, precisions)})
    split = merged = 0
    if pairs is not None:
        inter, true_area, pred_area = pairs
        split = int(((2 * inter > pred_area[None, :]).sum(axis=1) >= 2).sum())
        merged = int(((2 * inter > true_area[:, None]).sum(axis=0) >= 2).sum())
    out.update(split=split, merged=merged)
    return out


def object_ap(pred, truth, *, connectivity: int | None = None) -> float:
    """DSB 2018 object AP of binary masks (K, *spatial): objects are connected components, classes averaged.

    connectivity: 1 .. ndim of one mask (default ndim: 8-neighbour in 2-D).
    """
    pred = as_mask(pred, "pred")
    truth = as_mask(truth, "truth")
    check_same_shape(pred, truth)
    if pred.ndim < 3:
        raise DataError(f"object_ap takes one image's masks shaped (K, H, W), got {pred.shape}")
    spatial = pred.ndim - 1
    structure = ndi.generate_binary_structure(spatial, connectivity or spatial)
    scores = [
        object_ap_labels(ndi.label(p, structure=structure)[0], ndi.label(t, structure=structure)[0])
        for p, t in zip(pred, truth)
    ]
    return float(np.mean(scores))


# ------------------------------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class CompetitionMetric:
    """A competition's per-image score, and every way the pipeline asks for it: one image, a batch, many
    thresholds at once, per-(image, class) scores from confusion counts, and object AP from component overlaps.
    A data set scores the mean over its images. Training validation, the ensemble, tuning, submission, the report,
    ``segkit score`` and the ablation all use this one object (``get_metric``)."""

    name: str
    per_image: Callable[[np.ndarray, np.ndarray], float]  # (pred bool (K, H, W), truth bool (K, H, W)) -> score
    higher_is_better: bool = True
    description: str = ""
    # Per-image scores (..., N) from OverlapCounts shaped (..., N, K), classes averaged; None when the metric
    # needs the masks themselves.
    from_counts: Callable[[OverlapCounts], np.ndarray] | None = None
    # For metrics scored from objects (object AP): truth (H, W) -> an ObjectOverlaps that scores any subset of a
    # labelling's predicted components, so a tuner rates a candidate without relabelling.
    objects_of: Callable[[np.ndarray], ObjectOverlaps] | None = None

    def __call__(self, pred, truth) -> float:
        return self.per_image(pred, truth)

    @property
    def sign(self) -> float:
        """+1 when higher is better, else -1: ``sign * score`` is what every search maximises."""
        return 1.0 if self.higher_is_better else -1.0

    @property
    def has_fast_sweep(self) -> bool:
        """Whether scoring many thresholds costs about one pass (a function of overlap counts)."""
        return self.from_counts is not None

    @property
    def objects(self) -> bool:
        """Whether the metric scores objects (connected components), so a tuner should use ``objects_of``."""
        return self.objects_of is not None

    @property
    def stats(self) -> Callable | None:
        """Per-(image, class) scores from confusion-count arrays (tp, predicted, true, pixels), each with the image
        axis first; None for metrics without a counts path."""
        return _per_pair(self.from_counts) if self.from_counts is not None else None

    def score_many(self, preds, truths) -> np.ndarray:
        """Per-image scores (N,) of an array (N, K, *spatial) or sequences of (K, *spatial) masks."""
        if self.from_counts is not None:
            return self.from_counts(overlap_counts(preds, truths))
        preds, truths = as_batch(preds, truths, "predictions")
        return np.array([self.per_image(p, np.asarray(t).astype(bool)) for p, t in zip(preds, truths)],
                        dtype=np.float64)

    def score(self, preds, truths) -> float:
        """The data set's score: mean of the per-image scores."""
        return float(np.mean(self.score_many(preds, truths)))

    def gain(self, preds, truths) -> float:
        """The mean score signed so that higher is better (nan for no images): what fits of weights and
        thresholds maximise."""
        if not len(preds):
            return float("nan")
        return self.sign * float(self.score_many(preds, truths).mean())

    def score_thresholds(self, probs, truths, thresholds: Sequence[float], min_area=0) -> np.ndarray:
        """Per-image scores (T, N) of ``probs >= t`` per threshold t (smp's convention), predictions under
        min_area emptied."""
        if self.from_counts is not None:
            return self.from_counts(counts_at_thresholds(probs, truths, thresholds).with_min_area(min_area))
        probs, truths = as_batch(probs, truths, "probability maps")
        rows = []
        for thr in thresholds:
            masks = [_threshold_one(np.asarray(p), thr, min_area) for p in probs]
            rows.append(self.score_many(masks, list(truths)))
        return np.stack(rows)

    def score_above(self, probs, truths, thresholds: Sequence[float]) -> np.ndarray:
        """Per-image scores (T, N) of uint8 probability maps binarised by the pipeline's rule, p > t
        (``segkit.threshold``), every class at the same t."""
        return self.score_thresholds(probs, truths, [sweep_level(t) for t in thresholds])


def _per_pair(from_counts: Callable[[OverlapCounts], np.ndarray]) -> Callable:
    """Adapt ``from_counts`` (OverlapCounts shaped (..., N, K), classes averaged) to per-(image, class) scores of
    count arrays shaped (N, ...): the image axis goes last and each entry becomes a one-class image."""

    def stats(tp, pp, tt, n):
        tp, pp, tt, n = np.broadcast_arrays(*(np.asarray(x, dtype=np.int64) for x in (tp, pp, tt, n)))
        if tp.ndim == 0:
            return stats(tp[None], pp[None], tt[None], n[None])[0]
        last = [np.moveaxis(x, 0, -1)[..., None] for x in (tp, pp, tt)]
        pixels = n.reshape(n.shape[0], -1)[:, 0]
        return np.moveaxis(from_counts(OverlapCounts(*last, pixels)), -1, 0)

    return stats


def _threshold_one(probs: np.ndarray, threshold: float, min_area) -> np.ndarray:
    levels = dequantize(probs) if probs.dtype == np.uint8 else probs
    mask = levels >= levels.dtype.type(threshold)
    area = mask.reshape(mask.shape[0], -1).sum(axis=1)
    small = area < np.broadcast_to(np.asarray(min_area), area.shape)
    mask[small] = False
    return mask


def _per_image_from_counts(from_counts: Callable[[OverlapCounts], np.ndarray]):
    def per_image(pred, truth) -> float:
        pred = as_mask(pred, "pred")
        truth = as_mask(truth, "truth")
        check_same_shape(pred, truth)
        if pred.ndim < 3:
            raise DataError(f"expected one image's masks shaped (K, H, W), got {pred.shape}")
        return float(from_counts(overlap_counts(pred[None], truth[None]))[0])

    return per_image


COMPETITION_METRICS: Registry[CompetitionMetric] = Registry("metric")


def _add(metric: CompetitionMetric, *aliases: str) -> None:
    for name in (metric.name, *aliases):
        COMPETITION_METRICS.register(name)(metric)


_add(
    CompetitionMetric(
        "tgs",
        _per_image_from_counts(_tgs_counts),
        True,
        "TGS Salt: mean over IoU thresholds 0.50:0.05:0.95 of [IoU > t]; both empty 1, one empty 0",
        _tgs_counts,
    ),
    "map_iou",
)
_add(
    CompetitionMetric(
        "dice",
        _per_image_from_counts(_dice_counts),
        True,
        "mean over classes of Dice, both empty 1 (Severstal, SIIM-ACR, Clouds)",
        _dice_counts,
    )
)
_add(
    CompetitionMetric(
        "iou",
        _per_image_from_counts(_iou_counts),
        True,
        "mean over classes of IoU, both empty 1",
        _iou_counts,
    )
)
_add(
    CompetitionMetric(
        "object_ap",
        object_ap,
        True,
        "DSB 2018: object-level TP/(TP+FP+FN) averaged over IoU thresholds 0.50:0.05:0.95; both empty 1",
        objects_of=ObjectOverlaps,
    )
)
_add(
    CompetitionMetric(
        "pixel_accuracy",
        _per_image_from_counts(_pixel_accuracy_counts),
        True,
        "share of pixels labelled right, mean over classes",
        _pixel_accuracy_counts,
    )
)


def _add_counted(name: str, higher_is_better: bool, description: str, *aliases: str) -> None:
    counts = class_mean(name)
    _add(CompetitionMetric(name, _per_image_from_counts(counts), higher_is_better, description, counts), *aliases)


_add_counted("mean_pixel_accuracy", True, "mean over classes of the mean of recall and specificity over the labels "
             "the truth holds")
_add_counted("sensitivity", True, "mean over classes of TP / (TP + FN); empty truth: 1 if the prediction is "
             "empty, else 0", "recall")
_add_counted("specificity", True, "mean over classes of TN / (TN + FP); truth filling the image: 1 if the "
             "prediction fills it, else 0")
_add_counted("voe", False, "volume overlap error, 1 - IoU, mean over classes; both empty 0",
             "volume_overlap_error")
_add_counted("abs_rvd", False, "mean over classes of min(|pred - truth| / truth, 1); empty truth: 0 if the "
             "prediction is empty, else 1", "abs_relative_volume_difference")
_add_counted("roc_auc", True, "ROC-AUC of the hard mask, (sensitivity + specificity) / 2, mean over classes")


def _add_surface(name: str, what: str, *aliases: str) -> None:
    # No counts path: a distance needs the masks themselves, so batches and sweeps score mask by mask.
    _add(CompetitionMetric(name, surface_metric(name), False,
                           f"{what} in pixels, mean over classes; both empty 0, one empty the image diagonal"),
         *aliases)


_add_surface("assd", "average symmetric surface distance")
_add_surface("hd", "Hausdorff distance", "hausdorff")
_add_surface("hd95", "95th percentile Hausdorff distance (MONAI's convention)")

# Names that look like metrics but cannot rank predictions, and what to use instead.
NOT_METRICS = {
    "rvd": "abs_rvd",
    "relative_volume_difference": "abs_rvd",
}


def get_metric(name: str, key: str | None = None) -> CompetitionMetric:
    """The competition metric called ``name``; ``key``: the config key that named it, for error messages."""
    instead = NOT_METRICS.get(name.lower())
    if instead is not None:
        where = f"{key}: " if key else ""
        raise ConfigError(f"{where}{name!r} (the signed relative volume difference) is not a metric: over- and "
                          f"under-segmented images cancel in its mean, so it cannot rank predictions; use "
                          f"{instead!r} (|RVD|, lower is better), or read the signed mean in `segkit evaluate`'s "
                          f"table")
    return COMPETITION_METRICS.get(name, key=key)


def score_many(name: str, preds, truths) -> np.ndarray:
    """Per-image scores (N,) of metric ``name``; see CompetitionMetric.score_many."""
    return get_metric(name).score_many(preds, truths)


def score_dataset(name: str, preds, truths) -> float:
    """Mean per-image score of metric ``name`` over a data set."""
    return get_metric(name).score(preds, truths)


def score_thresholds(name: str, probs, truths, thresholds: Sequence[float], min_area=0) -> np.ndarray:
    """Per-image scores (T, N) of metric ``name`` at each threshold (CompetitionMetric.score_thresholds)."""
    return get_metric(name).score_thresholds(probs, truths, thresholds, min_area=min_area)


def score_counts(name: str, counts: OverlapCounts) -> np.ndarray:
    """Per-image scores (..., N) from overlap counts, for the metrics that have a counts path."""
    metric = get_metric(name)
    if metric.from_counts is None:
        raise ConfigError(f"metric {name!r} needs the masks themselves, not overlap counts")
    return metric.from_counts(counts)


def metric_names() -> list[str]:
    return COMPETITION_METRICS.names()
