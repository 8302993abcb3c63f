"""Segmentation metrics: overlap scores, surface distances and the competitions' own scores.

* :mod:`segkit.metrics.overlap` — confusion-count scores (IoU, Dice, precision, ...) batched over (N, K,
  *spatial), with a stated empty-mask rule and per-image / per-class / micro / macro reductions.
* :mod:`segkit.metrics.auc` — pixel-level ROC-AUC of probabilities.
* :mod:`segkit.metrics.surface` — exact Hausdorff, HD95, ASD, ASSD in 1-3 D with voxel spacing, medpy or MONAI
  conventions.
* :mod:`segkit.metrics.competition` — the competition metric object by name (``get_metric``): per image, in
  batches, over many thresholds, from confusion counts; the one object every stage scores with.
* :mod:`segkit.metrics.objects` — object AP of many candidate masks from one labelling (the tuner's fast path).
* :mod:`segkit.metrics.image_scores` — the toolbox's scores per image and class under finite empty conventions:
  what the metrics ``sensitivity``, ``voe``, ``abs_rvd``, ``hd95``, ... and ``segkit evaluate``'s table compute.
"""

from segkit.metrics.auc import roc_auc
from segkit.metrics.competition import (
    COMPETITION_METRICS,
    CompetitionMetric,
    get_metric,
    metric_names,
    object_ap,
    object_ap_labels,
    score_counts,
    score_dataset,
    score_many,
    score_thresholds,
)
from segkit.metrics.counts import OverlapCounts, counts_at_thresholds, overlap_counts
from segkit.metrics.objects import AP_THRESHOLDS, ObjectOverlaps
from segkit.metrics.overlap import (
    OVERLAP_SCORES,
    REDUCTIONS,
    Confusion,
    abs_relative_volume_difference,
    confusion,
    dice,
    f1,
    iou,
    jaccard,
    mean_pixel_accuracy,
    overlap_score,
    overlap_scores,
    pixel_accuracy,
    precision,
    recall,
    relative_volume_difference,
    score_confusion,
    sensitivity,
    specificity,
    volume_overlap_error,
)
from segkit.metrics.surface import (
    CONVENTIONS,
    DEFAULT_CONVENTION,
    SURFACE_SCORES,
    SurfaceDistances,
    assd,
    average_surface_distance,
    hausdorff,
    hd95,
    mask_surface,
    surface_distances,
    surface_scores,
)

__all__ = [
    "AP_THRESHOLDS",
    "COMPETITION_METRICS",
    "CONVENTIONS",
    "CompetitionMetric",
    "Confusion",
    "DEFAULT_CONVENTION",
    "OVERLAP_SCORES",
    "ObjectOverlaps",
    "OverlapCounts",
    "REDUCTIONS",
    "SURFACE_SCORES",
    "SurfaceDistances",
    "abs_relative_volume_difference",
    "assd",
    "average_surface_distance",
    "confusion",
    "counts_at_thresholds",
    "dice",
    "f1",
    "get_metric",
    "hausdorff",
    "hd95",
    "iou",
    "jaccard",
    "mask_surface",
    "mean_pixel_accuracy",
    "metric_names",
    "object_ap",
    "object_ap_labels",
    "overlap_counts",
    "overlap_score",
    "overlap_scores",
    "pixel_accuracy",
    "precision",
    "recall",
    "relative_volume_difference",
    "roc_auc",
    "score_confusion",
    "score_counts",
    "score_dataset",
    "score_many",
    "score_thresholds",
    "sensitivity",
    "specificity",
    "surface_distances",
    "surface_scores",
    "volume_overlap_error",
]
