"""Averages of the models' probabilities: mean, weighted mean (weights fitted on OOF), geometric mean, RMS, rank.

- ``mean``: the arithmetic mean. With one model it is that model, bit for bit.
- ``wmean``: a convex combination whose weights maximise the competition metric at threshold 0.5 on the OOF
  sample, found by coordinate search on the simplex (move weight from one model to another in shrinking steps,
  keep a move only if the score improves). Fold-aware: fold k's OOF uses weights fitted without fold k.
- ``gmean``: exp of the mean log probability; a model that is sure a pixel is background vetoes it more strongly
  than in the mean. In multiclass mode the implicit background channel (1 - sum of the K foreground channels) takes
  part and the result is renormalised, since a geometric mean of distributions sums to one only up to scale.
- ``rms``: root mean square; leans towards the more confident positive model.
- ``rank``: each model's probabilities are replaced by their rank (share of that model's OOF pixels below them,
  mid-ranks for ties), the ranks are averaged, and the average rank is mapped back to a probability through the
  pooled OOF distribution of all models. It removes differences in calibration between models (one model's 0.6 may
  be another's 0.9) while keeping the output on the probability scale the 0.5 yardstick and tuning expect. With
  uint8 stores a rank transform is a 256-entry lookup table per model and class, learnt from OOF histograms
  (labels play no part, so no fold-awareness is needed).
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from segkit.artifacts.probs import mean_uint8, quantize
from segkit.ensemble.base import METHODS, FitSample, Method, as_float
from segkit.metrics import CompetitionMetric
from segkit.threshold import binarize

# A stored 0 means p < 1/510: use half a quantisation step instead of log(0).
GMEAN_EPS = 1.0 / 510


@METHODS.register("mean")
class Mean(Method):
    subsettable = True

    def combine(self, probs, image_id, fold):
        return mean_uint8(probs)


@METHODS.register("gmean")
class GeometricMean(Method):
    subsettable = True

    def combine(self, probs, image_id, fold):
        p = as_float(probs)  # (M, K, H, W)
        if self.setup.mode == "multiclass":
            background = np.clip(1.0 - p.sum(1, keepdims=True), 0.0, 1.0)
            p = np.concatenate([background, p], axis=1)
        g = np.exp(np.log(np.maximum(p, GMEAN_EPS)).mean(0))
        if self.setup.mode == "multiclass":
            g = (g / g.sum(0, keepdims=True))[1:]
        return g


@METHODS.register("rms")
class RootMeanSquare(Method):
    subsettable = True

    def combine(self, probs, image_id, fold):
        p = as_float(probs)
        return np.sqrt((p * p).mean(0))


@METHODS.register("rank")
class RankMean(Method):
    def __init__(self, setup):
        super().__init__(setup)
        self.hist = np.zeros((len(setup.models), len(setup.classes), 256), dtype=np.int64)
        self.to_rank: Optional[np.ndarray] = None  # (M, K, 256) float32
        self.back: list[tuple[np.ndarray, np.ndarray]] = []  # per class: (pooled mid-ranks, probabilities)

    def observe(self, image_id, fold, probs, truth):
        for m, q in enumerate(probs):
            for k in range(q.shape[0]):
                self.hist[m, k] += np.bincount(np.asarray(q[k]).ravel(), minlength=256)

    @staticmethod
    def _mid_ranks(hist: np.ndarray) -> np.ndarray:
        total = max(int(hist.sum()), 1)
        below = np.cumsum(hist) - hist
        return (below + hist / 2.0) / total

    def fit(self, sample):
        m_count, k_count, _ = self.hist.shape
        self.to_rank = np.stack([[self._mid_ranks(self.hist[m, k]) for k in range(k_count)]
                                 for m in range(m_count)]).astype(np.float32)
        values = np.arange(256) / 255.0
        self.back = []
        for k in range(k_count):
            pooled = self.hist[:, k].sum(0)
            seen = pooled > 0
            if not seen.any():
                seen[:] = True
            self.back.append((self._mid_ranks(pooled)[seen], values[seen]))

    def combine(self, probs, image_id, fold):
        if self.to_rank is None:
            raise RuntimeError("rank: fit() first")
        k_count = probs[0].shape[0]
        out = np.empty(probs[0].shape, dtype=np.float32)
        for k in range(k_count):
            ranks = np.mean([self.to_rank[m, k][np.asarray(q[k])] for m, q in enumerate(probs)], axis=0)
            xp, fp = self.back[k]
            out[k] = np.interp(ranks, xp, fp)
        return out

    def params(self):
        return {"oof_pixels_per_model": int(self.hist[0].sum())}

    def state(self):
        return {"to_rank": self.to_rank.tolist(), "back": [[xp.tolist(), fp.tolist()] for xp, fp in self.back]}

    def load_state(self, state):
        self.to_rank = np.asarray(state["to_rank"], np.float32)
        self.back = [(np.asarray(xp, np.float64), np.asarray(fp, np.float64)) for xp, fp in state["back"]]


# --------------------------------------------------------------------------------------------- weighted mean


def weighted_sum(w: np.ndarray, probs: list[np.ndarray]) -> np.ndarray:
    """sum_m w_m * q_m on the 0..255 scale, float32."""
    out = np.zeros(probs[0].shape, dtype=np.float32)
    for wm, q in zip(w, probs):
        if wm:
            out += np.float32(wm) * q
    return out


def weighted_mean(w: np.ndarray, probs: list[np.ndarray]) -> np.ndarray:
    """The weighted mean as ``combine`` returns it: float32 probabilities."""
    return weighted_sum(w, probs) * np.float32(1.0 / 255)


def sample_score(metric: CompetitionMetric, images, w: np.ndarray) -> float:
    """The signed score of weights ``w`` on the sample, binarised as the stored output will be: quantised, then
    p > 0.5 (the pipeline's rule)."""
    preds = [binarize(quantize(weighted_mean(w, s.probs))).view(bool) for s in images]
    return metric.gain(preds, [s.truth for s in images])


def fit_weights(metric: CompetitionMetric, images, n_models: int, steps=(0.2, 0.1, 0.05, 0.025),
                max_moves: int = 200) -> tuple[np.ndarray, float]:
    """Coordinate search on the simplex, from equal weights; returns (weights, signed sample score)."""
    w = np.full(n_models, 1.0 / n_models)
    if n_models == 1 or not images:
        return w, (sample_score(metric, images, w) if images else float("nan"))
    cache: dict[tuple, float] = {}

    def score(v: np.ndarray) -> float:
        key = tuple(np.round(v, 6))
        if key not in cache:
            cache[key] = sample_score(metric, images, v)
        return cache[key]

    best = score(w)
    moves = 0
    for step in steps:
        improved = True
        while improved and moves < max_moves:
            improved = False
            for i in range(n_models):
                for j in range(n_models):
                    if i == j or w[j] <= 1e-12:
                        continue
                    d = min(step, w[j])
                    cand = w.copy()
                    cand[i] += d
                    cand[j] -= d
                    s = score(cand)
                    if s > best + 1e-9:
                        w, best, improved = cand, s, True
                        moves += 1
    return w, best


@METHODS.register("wmean")
class WeightedMean(Method):
    uses_sample = True
    subsettable = True  # its weights renormalised over the models kept

    def __init__(self, setup):
        super().__init__(setup)
        self.weights: dict[Optional[int], np.ndarray] = {}
        self.fit_scores: dict[Optional[int], float] = {}

    def fit(self, sample: FitSample):
        n = len(self.setup.models)
        for fold in [*self.setup.folds, None]:
            self.weights[fold], self.fit_scores[fold] = fit_weights(self.setup.metric, sample.without(fold), n)

    def combine(self, probs, image_id, fold):
        return weighted_mean(self.weights[fold], probs)

    def params(self):
        names = self.setup.models
        return {
            "weights": {m: round(float(v), 4) for m, v in zip(names, self.weights[None])},
            "fold_weights": {str(k): [round(float(v), 4) for v in self.weights[k]] for k in self.setup.folds},
        }

    def state(self):
        return {"weights": [float(v) for v in self.weights[None]]}

    def load_state(self, state):
        self.weights[None] = np.asarray(state["weights"], np.float64)

    def restrict(self, state, fitted, kept):
        weights = np.asarray([state["weights"][fitted.index(m)] for m in kept], np.float64)
        weights = weights / weights.sum() if weights.sum() > 0 else np.full(len(weights), 1 / len(weights))
        return {"weights": weights.tolist()}
