"""Scoring candidate post-processing parameters image by image (the morphology steps, keep-largest, minimum area
after morphology): each image's staged masks are shared by candidates with the same prefix, and each staged mask is
labelled into components once, so a min-area or largest-component variant costs a table look-up."""

from __future__ import annotations

from typing import Callable, Optional

import numpy as np

from segkit.components import component_overlaps, components_in
from segkit.metrics import CompetitionMetric, ObjectOverlaps
from segkit.postprocess.masks import (
    MASK_STEPS,
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
        self.overlaps: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}
        self.empty: dict[tuple, bool] = {}
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
                before = p.replace(morphology=tuple(head))
                mask = self.staged(before)
                # most staged masks of a big competition are empty: a step that keeps them so is skipped
                if not (MASK_STEPS.get(op, key="morphology").keeps_empty and self.is_empty(before)):
                    mask = morph(mask, op, radius)
            else:
                mask = stage_mask(self.prob, p)
            self.masks[key] = mask
        return mask

    def is_empty(self, p: ClassParams) -> bool:
        key = self._key(p)
        if key not in self.empty:
            self.empty[key] = not self.staged(p).any()
        return self.empty[key]

    def _components(self, p: ClassParams):
        key = self._key(p)
        if key not in self.parts:
            self.parts[key] = components_in(self.staged(p), self.truth)[1:]
        return self.parts[key]

    def _overlaps(self, p: ClassParams) -> tuple[np.ndarray, np.ndarray]:
        """(areas, truth overlaps) of the staged mask's components, in some order: what counting after a minimum
        area needs, without a label image."""
        key = self._key(p)
        if key in self.parts:
            return self.parts[key][1:]
        if key not in self.overlaps:
            self.overlaps[key] = component_overlaps(self.staged(p), self.truth)
        return self.overlaps[key]

    def counts(self, p: ClassParams) -> tuple[int, int]:
        """(true positives, predicted pixels) of the final mask."""
        mask = self.staged(p)
        if self.is_empty(p):
            return 0, 0
        if not (p.min_area > 1 or p.keep_largest):
            return (int(np.count_nonzero(mask.view(bool) & self.truth)) if self.truth_px else 0,
                    int(np.count_nonzero(mask)))
        # keep_largest breaks ties by label number: the whole image's labelling, as submission labels it
        areas, inters = self._components(p)[1:] if p.keep_largest else self._overlaps(p)
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
    """scores[i, k, c]: image i, class k under candidates[k][c] (the same number of candidates per class); one
    pass, spread over the stream's workers."""
    K, n_cand = len(candidates), len(candidates[0])
    stats = metric.stats

    def one(_, probs: np.ndarray, truth: np.ndarray) -> np.ndarray:
        if source.exclusive:
            probs = restrict_to_argmax(probs)
        counts = np.zeros((4, K, n_cand), dtype=np.int64)  # tp, predicted, true, pixels
        out = np.zeros((K, n_cand))
        for k in range(K):
            image = Staged(probs[k], truth[k], metric.objects_of)
            for c, params in enumerate(candidates[k]):
                if stats is not None:
                    counts[:2, k, c] = image.counts(params)
                    counts[2:, k, c] = image.truth_px, probs[k].size
                elif metric.objects:
                    out[k, c] = image.object_score(params)
                else:
                    out[k, c] = metric.per_image(image.mask(params)[None], truth[k][None])
        return counts if stats is not None else out

    n = len(source)
    counts = np.zeros((4, n, K, n_cand), dtype=np.int64) if stats is not None else None
    out = np.zeros((n, K, n_cand))
    for i, scored in enumerate(source.map(one, "tune: candidates")):
        if counts is not None:
            counts[:, i] = scored
        else:
            out[i] = scored
    return stats(*counts).astype(np.float64) if counts is not None else out


__all__ = ["Staged", "score_params"]
