"""Majority voting of binarised masks.

Each model is binarised (p > t, the pipeline's rule) at its own threshold per class, tuned on OOF (the one that
maximises that model's own metric), fold-aware like every learnt parameter here: fold k's OOF uses thresholds tuned
without fold k. The output is the share of models voting for a pixel, stored as round(255 * votes / M), except that
a tie (exactly half the models, possible for an even M) is stored as 127: just below 0.5, so that 0.5 means a strict
majority and a tuned threshold below it means "at least half".
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from segkit.ensemble.base import METHODS, FitSample, Method
from segkit.metrics import CompetitionMetric
from segkit.threshold import binarize

THRESHOLDS = np.round(np.arange(0.1, 0.91, 0.05), 2)


def vote_share(masks: list[np.ndarray]) -> np.ndarray:
    """uint8 (K, H, W) from M boolean masks (see the module note on ties)."""
    m = len(masks)
    votes = np.zeros(masks[0].shape, dtype=np.int32)
    for mask in masks:
        votes += mask
    q = np.rint(votes * (255.0 / m)).astype(np.uint8)
    if m % 2 == 0:
        q[2 * votes == m] = 127
    return q


def fit_thresholds(metric: CompetitionMetric, images, model: int, n_classes: int) -> tuple[np.ndarray, float]:
    """Per-class thresholds (``p > t``) for one model; returns (thresholds, signed sample score).

    One class: every threshold scored in one batched pass. Several: one class at a time, the others held."""
    t = np.full(n_classes, 0.5)
    if not images:
        return t, float("nan")
    probs = [s.probs[model] for s in images]
    truths = [s.truth for s in images]
    if n_classes == 1:
        gains = metric.sign * metric.score_above(probs, truths, THRESHOLDS).mean(1)
        best = int(np.argmax(gains))  # first of equal scores: the lowest threshold
        return np.array([THRESHOLDS[best]]), float(gains[best])
    best = -np.inf
    for k in range(n_classes):
        best_t, best = t[k], -np.inf
        for cand in THRESHOLDS:
            trial = t.copy()
            trial[k] = cand
            s = metric.gain([binarize(q, trial).view(bool) for q in probs], truths)
            if s > best + 1e-12:
                best_t, best = cand, s
        t[k] = best_t
    return t, float(best)


@METHODS.register("vote")
class MajorityVote(Method):
    uses_sample = True

    def __init__(self, setup):
        super().__init__(setup)
        self.thresholds: dict[Optional[int], np.ndarray] = {}  # fold -> (M, K)

    def fit(self, sample: FitSample):
        k_count = len(self.setup.classes)
        for fold in [*self.setup.folds, None]:
            images = sample.without(fold)
            self.thresholds[fold] = np.stack([
                fit_thresholds(self.setup.metric, images, m, k_count)[0] for m in range(len(self.setup.models))
            ])

    def combine(self, probs, image_id, fold):
        t = self.thresholds[fold]
        return vote_share([binarize(q, t[m]).view(bool) for m, q in enumerate(probs)])

    def params(self):
        t = self.thresholds[None]
        return {
            "thresholds": {m: [float(v) for v in t[i]] for i, m in enumerate(self.setup.models)},
            "fold_thresholds": {str(k): self.thresholds[k].tolist() for k in self.setup.folds},
        }

    def state(self):
        return {"thresholds": self.thresholds[None].tolist()}

    def load_state(self, state):
        self.thresholds[None] = np.asarray(state["thresholds"], np.float64)
