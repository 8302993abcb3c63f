"""Scoring candidate post-processing parameters image by image (the morphology steps, keep-largest, minimum area
after morphology): each image's staged masks are shared by candidates with the same prefix, and each staged mask is
labelled into components once, so a min-area or largest-component variant costs a table look-up."""

from __future__ import annotations

from typing import Callable, Optional

import numpy as np

from segkit.components import components_in
from segkit.metrics import CompetitionMetric, ObjectOverlaps
from segkit.postprocess.masks import (
    ClassParams,
    component_filter,
    has_empty_rule,
    morph,
    restrict_to_argmax,
    stage_mask,
)
from segkit.stages.tune.stream import OOFStream


class Staged:
    """One image and class under many candidate parameter sets: staged masks (empty rule, threshold, morphology)
    are shared by candidates with the same prefix, and each staged mask is labelled into components once, so a
    min-area or largest-component variant costs a table look-up, not another pass over the pixels."""

    def __init__(self, prob: np.ndarray, truth: np.ndarray,
                 objects_of: Optional[Callable[[np.ndarray], ObjectOverlaps]] = None):
        self.prob = prob
        self.truth = truth
        self.truth_px = int(np.count_nonzero(truth))
        self.masks: dict[tuple, np.ndarray] = {}
        self.parts: dict[tuple, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        self.pairs: dict[tuple, tuple] = {}
        self.objects_of = objects_of  # the metric's object scorer, for metrics that score components
        self.objects: ObjectOverlaps | None = None

    @staticmethod
    def _key(p: ClassParams) -> tuple:
        return (p.threshold, p.empty_top if has_empty_rule(p) else None, p.empty_pixels if has_empty_rule(p) else 0,
                p.morphology)

    def staged(self, p: ClassParams) -> np.ndarray:
        key = self._key(p)
        mask = self.masks.get(key)
        if mask is None:
            if p.morphology:
                *head, (op, radius) = p.morphology
                mask = morph(self.staged(p.replace(morphology=tuple(head))), op, radius)
            else:
                mask = stage_mask(self.prob, p)
            self.masks[key] = mask
        return mask

    def _components(self, p: ClassParams):
        key = self._key(p)
        if key not in self.parts:
            self.parts[key] = components_in(self.staged(p), self.truth)[1:]
        return self.parts[key]

    def counts(self, p: ClassParams) -> tuple[int, int]:
        """(true positives, predicted pixels) of the final mask."""
        mask = self.staged(p)
        if not mask.any():
            return 0, 0
        if not (p.min_area > 1 or p.keep_largest):
            return (int(np.count_nonzero(mask.view(bool) & self.truth)) if self.truth_px else 0,
                    int(np.count_nonzero(mask)))
        _, areas, inters = self._components(p)
        keep = component_filter(areas, p)
        return int(inters[keep].sum()), int(areas[keep].sum())

    def object_score(self, p: ClassParams) -> float:
        """The metric's score of the final mask's components (a metric that scores objects)."""
        if self.objects is None:
            self.objects = self.objects_of(self.truth)
        labels, areas, _ = self._components(p)
        key = self._key(p)
        if key not in self.pairs:
            self.pairs[key] = self.objects.pairs(labels, len(areas))
        return self.objects.score(self.pairs[key], areas, component_filter(areas, p))

    def mask(self, p: ClassParams) -> np.ndarray:
        mask = self.staged(p)
        if not (p.min_area > 1 or p.keep_largest):
            return mask.view(bool)
        labels, areas, _ = self._components(p)
        return component_filter(areas, p)[labels]


def score_params(source: OOFStream, metric: CompetitionMetric,
                 candidates: list[list[ClassParams]]) -> np.ndarray:
    """scores[i, k, c]: image i, class k under candidates[k][c] (the same number of candidates per class)."""
    n_img, K, n_cand = len(source), len(candidates), len(candidates[0])
    counts = np.zeros((4, n_img, K, n_cand), dtype=np.int64)  # tp, predicted, true, pixels
    out = np.zeros((n_img, K, n_cand))
    stats = metric.stats
    for i, (_, probs, truth) in enumerate(source):
        if source.exclusive:
            probs = restrict_to_argmax(probs)
        for k in range(K):
            image = Staged(probs[k], truth[k], metric.objects_of)
            for c, params in enumerate(candidates[k]):
                if stats is not None:
                    counts[:2, i, k, c] = image.counts(params)
                    counts[2:, i, k, c] = image.truth_px, probs[k].size
                elif metric.objects:
                    out[i, k, c] = image.object_score(params)
                else:
                    out[i, k, c] = metric.per_image(image.mask(params)[None], truth[k][None])
    if stats is not None:
        out = stats(*counts).astype(np.float64)
    return out


__all__ = ["Staged", "score_params"]
