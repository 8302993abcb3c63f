"""``segkit tune``: choose each class's post-processing on the ensemble's out-of-fold probabilities.

Greedy, in a fixed order, one step at a time; a step's choice is kept only if it raises the CV score (by more than
``tune.min_gain``) over what the previous steps gave — nnU-Net's rule, so a clean-up that does not help on OOF is
never applied to the test set:

    baseline      p > 0.5, nothing else (the raw ensemble)
    threshold     best of tune.thresholds
    min_area      best of tune.min_areas: components smaller than that are removed
    empty_rule    best (top threshold, N, bottom threshold): the class is empty if fewer than N pixels exceed top,
                  else it is binarised at bottom (the SIIM winners' triplet)
    fill_holes, opening, closing, dilation, erosion   (radius from tune.morph_radii)
    min_area_after_morphology   min_area searched again now that morphology changed the components
    keep_largest  only the largest component survives

Speed. The first three steps need no second look at the images: one streamed pass keeps, per image, class and
threshold, what the score depends on. Where the metric is a function of the confusion counts of an (image, class)
pair (dice, IoU, TGS, pixel accuracy: the metrics with a ``from_counts`` path in segkit.metrics), that is the
predicted pixel count and the true-positive count for every minimum area, from one component labelling per
threshold (the areas of the components and their overlaps with the truth give both for any minimum area). Object AP
is scored from the overlaps of predicted and true components, so a minimum area costs no relabelling either. The
empty rule then needs only each image's count of pixels above each top threshold, and the whole (top, N, bottom)
grid is a few matrix products. Morphology steps stream the images once per step, sharing each image's staged masks
and labellings among the candidates. Truth masks and probabilities stay in RAM between passes while they fit in a
fixed budget (CACHE_BYTES); beyond it they are streamed from disk again.

The CV score is the mean over images of the mean over classes of the per-(image, class) score — the Kaggle rule of
TGS, Severstal, SIIM and Clouds. The final parameters and the baseline are also scored exactly with the metric on
whole (K, H, W) images; those two numbers are ``cv`` and ``cv_baseline`` in tune.json.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
from numba import njit

from segkit import atomic
from segkit.config import Config
from segkit.errors import DataError, SegkitError
from segkit.postprocess import (ClassParams, component_filter, components, components_in, describe, has_empty_rule,
                                morph, postprocess, restrict_to_argmax, stage_mask, uint8_cut)
from segkit.probs import ProbStore

CACHE_BYTES = 512 * 2**20  # probabilities + truth kept in RAM across passes up to this size
MORPH_STEPS = ("fill_holes", "opening", "closing", "dilation", "erosion")


# ------------------------------------------------------------------------------------------------------- metric


@dataclass
class Metric:
    """The competition metric as the searches use it."""

    name: str
    per_image: Callable[[np.ndarray, np.ndarray], float]  # (pred bool (K,H,W), truth bool (K,H,W)) -> float
    higher_is_better: bool
    # Per-(image, class) scores from confusion counts (tp, predicted, true, pixels), arrays with the image axis
    # first; None when the metric needs the masks themselves (object AP).
    stats: Callable | None
    objects: bool = False  # DSB object AP: scored from component overlaps (see _Objects)
    many: Callable | None = None  # per-image scores (N,) of a batch (N, K, H, W) of masks

    def score_many(self, preds: np.ndarray, truths: np.ndarray) -> np.ndarray:
        if self.many is not None:
            return np.asarray(self.many(preds, truths), dtype=np.float64)
        return np.array([self.per_image(p, t) for p, t in zip(preds, truths)], dtype=np.float64)

    def sign(self) -> float:
        return 1.0 if self.higher_is_better else -1.0


def _counts_formula(from_counts: Callable) -> Callable:
    """Adapt a metric's ``from_counts`` (OverlapCounts shaped (..., N, K), classes averaged) to per-(image, class)
    scores of count arrays shaped (N, ...): the image axis goes last and each entry becomes a one-class image."""
    from segkit.metrics import OverlapCounts

    def stats(tp, pp, tt, n):
        tp, pp, tt, n = np.broadcast_arrays(*(np.asarray(x, dtype=np.int64) for x in (tp, pp, tt, n)))
        if tp.ndim == 0:
            return stats(tp[None], pp[None], tt[None], n[None])[0]
        last = [np.moveaxis(x, 0, -1)[..., None] for x in (tp, pp, tt)]
        pixels = n.reshape(n.shape[0], -1)[:, 0]
        return np.moveaxis(from_counts(OverlapCounts(*last, pixels)), -1, 0)

    return stats


def resolve_metric(name: str) -> Metric:
    """The registered competition metric (segkit.metrics), with its confusion-count path when it has one."""
    from segkit.metrics import get_metric

    entry = get_metric(name, key="metric")
    stats = _counts_formula(entry.from_counts) if entry.from_counts is not None else None
    return Metric(name, entry.per_image, bool(entry.higher_is_better), stats, objects=entry.name == "object_ap",
                  many=entry.score_many)


# ------------------------------------------------------------------------------------------------------- inputs


class OOFSource:
    """Streams (id, probabilities uint8 (K,H,W), truth bool (K,H,W)) from a store and a truth reader, keeping what
    fits in ``budget`` bytes in RAM so later passes skip the disk and the mask decoding.

    ``exclusive`` (multiclass) is applied by the consumers: the searches see argmax-restricted probabilities, the
    final scoring passes the raw ones to ``postprocess`` exactly as submission does."""

    def __init__(self, store: ProbStore, truth: Callable[[str], np.ndarray], exclusive: bool = False,
                 ids: Sequence[str] | None = None, budget: int = CACHE_BYTES):
        self.store = store
        self.truth = truth
        self.exclusive = exclusive
        self.ids = list(ids if ids is not None else store.ids)
        self.budget = budget
        self._cache: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self._used = 0

    def __len__(self) -> int:
        return len(self.ids)

    def __iter__(self) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
        for image_id in self.ids:
            hit = self._cache.get(image_id)
            if hit is None:
                hit = self._load(image_id)
                size = hit[0].nbytes + hit[1].nbytes
                if self._used + size <= self.budget:
                    self._cache[image_id] = hit
                    self._used += size
            yield image_id, hit[0], hit[1]

    def _load(self, image_id: str) -> tuple[np.ndarray, np.ndarray]:
        probs = np.array(self.store[image_id])  # a RAM copy: a cached memmap would hold a file open
        truth = np.asarray(self.truth(image_id)).astype(bool)
        if probs.shape != truth.shape:
            raise DataError(f"{self.store.folder}: probabilities of {image_id!r} are {probs.shape}, its mask is "
                            f"{truth.shape}")
        return probs, truth


# ------------------------------------------------------------------------------------------------ summary tables


@dataclass
class Tables:
    """Per image i, class k: score[i, k, j, m] at threshold j and min area m; empty[i, k] the score of an empty
    prediction; above[i, k, j] the pixels with p > thresholds[j]."""

    thresholds: list[float]
    min_areas: list[int]
    score: np.ndarray
    empty: np.ndarray
    above: np.ndarray


@njit(cache=True, nogil=True, inline="always")
def _find(parent, x):  # pragma: no cover - compiled
    root = x
    while parent[root] != root:
        root = parent[root]
    while parent[x] != root:  # path compression
        nxt = parent[x]
        parent[x] = root
        x = nxt
    return root


@njit(cache=True, nogil=True)
def _threshold_sweep(q, truth, cuts_desc, mins):  # pragma: no cover - compiled
    """For every cut (descending) and minimum area: the pixels with q > cut that lie in 8-connected components of at
    least that area, and how many of them are in ``truth`` -> (pp, tp), each (len(cuts_desc), len(mins)).

    One pass instead of one labelling per threshold: pixels join in order of decreasing q, a union-find grows the
    components (area and truth overlap kept at each root), and after each cut the live components are summed. The
    masks p > cut are nested, so each threshold's components are the union-find state at that point.
    """
    h, w = q.shape
    n = h * w
    flat_q = q.ravel()
    flat_t = truth.ravel()
    count = np.zeros(256, np.int64)
    for i in range(n):
        count[flat_q[i]] += 1
    slot = np.empty(256, np.int64)  # counting sort, brightest first
    acc = 0
    for v in range(255, -1, -1):
        slot[v] = acc
        acc += count[v]
    order = np.empty(n, np.int64)
    for i in range(n):
        order[slot[flat_q[i]]] = i
        slot[flat_q[i]] += 1
    parent = np.full(n, -1, np.int64)  # -1: not (yet) above the cut
    area = np.zeros(n, np.int64)
    inter = np.zeros(n, np.int64)
    roots = np.empty(n, np.int64)  # live component roots, with each root's position in this list
    where = np.empty(n, np.int64)
    n_roots = 0
    pp = np.zeros((cuts_desc.size, mins.size), np.int64)
    tp = np.zeros((cuts_desc.size, mins.size), np.int64)
    k = 0
    for j in range(cuts_desc.size):
        while k < n and flat_q[order[k]] > cuts_desc[j]:
            p = order[k]
            k += 1
            parent[p] = p
            area[p] = 1
            inter[p] = flat_t[p]
            roots[n_roots] = p
            where[p] = n_roots
            n_roots += 1
            row, col = p // w, p % w
            own = p  # root of p's component, kept current across the merges below
            for dr in range(-1, 2):
                rr = row + dr
                if rr < 0 or rr >= h:
                    continue
                for dc in range(-1, 2):
                    cc = col + dc
                    if cc < 0 or cc >= w:
                        continue
                    nb = rr * w + cc
                    if parent[nb] < 0:
                        continue
                    other = _find(parent, nb)
                    if other == own:
                        continue
                    if area[own] < area[other]:  # union by size: the smaller tree hangs below the larger
                        own, other = other, own
                    parent[other] = own
                    area[own] += area[other]
                    inter[own] += inter[other]
                    last = roots[n_roots - 1]  # `other` is no longer a root: swap-remove it from the live list
                    roots[where[other]] = last
                    where[last] = where[other]
                    n_roots -= 1
        for i in range(n_roots):
            r = roots[i]
            for m in range(mins.size):
                if area[r] >= mins[m]:
                    pp[j, m] += area[r]
                    tp[j, m] += inter[r]
    return pp, tp


class _Objects:
    """DSB 2018 object AP of one (image, class) for any subset of the predicted components, from one count of
    the overlaps between predicted and true components (8-connected, as segkit.metrics.object_ap labels them).
    The tests check it against segkit.metrics.object_ap."""

    def __init__(self, truth: np.ndarray):
        from segkit.metrics import AP_THRESHOLDS

        self.twentieths = np.rint(np.asarray(AP_THRESHOLDS) * 20).astype(np.int64)
        self.n_true, self.truth_labels, self.true_areas = components(truth.view(np.uint8))

    def pairs(self, labels: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(true id, predicted id, overlap) of every overlapping pair."""
        both = (labels > 0) & (self.truth_labels > 0)
        codes = self.truth_labels[both].astype(np.int64) * n + labels[both]
        if self.n_true * n <= 1 << 22:
            inter = np.bincount(codes, minlength=self.n_true * n)
            uniq = np.flatnonzero(inter)
            inter = inter[uniq]
        else:
            uniq, inter = np.unique(codes, return_counts=True)
        return uniq // n, uniq % n, inter

    def score(self, pairs, areas: np.ndarray, keep: np.ndarray) -> float:
        n_pred, n_true = int(np.count_nonzero(keep)), self.n_true - 1
        if n_pred == 0 or n_true == 0:
            return float(n_pred == n_true)
        ti, pj, inter = pairs
        kept = keep[pj]
        ti, pj, inter = ti[kept], pj[kept], inter[kept]
        union = self.true_areas[ti] + areas[pj] - inter
        # Above IoU 0.5 a true object has at most one partner, so matched pairs count true positives.
        tp = (20 * inter[None, :] > self.twentieths[:, None] * union[None, :]).sum(axis=1)
        return float((tp / (n_pred + n_true - tp)).mean())


def summarize(source: OOFSource, metric: Metric, thresholds: Sequence[float], min_areas: Sequence[int]) -> Tables:
    """One pass over the images: everything the threshold, min-area and empty-rule searches need."""
    cuts = [uint8_cut(t) for t in thresholds]
    mins = np.asarray(min_areas, dtype=np.int64)
    J, M = len(cuts), len(mins)
    n_img = len(source)
    K = None
    counting = metric.stats is not None
    needs_components = not counting or bool((mins > 1).any())
    if sorted(cuts) != cuts:
        raise ValueError("thresholds must be ascending")
    cuts_desc = np.asarray(cuts[::-1], dtype=np.int64)
    for i, (image_id, probs, truth) in enumerate(source):
        if source.exclusive:
            probs = restrict_to_argmax(probs)
        if K is None:
            K = probs.shape[0]
            above = np.zeros((n_img, K, J), dtype=np.int64)
            truth_px = np.zeros((n_img, K), dtype=np.int64)
            pixels = np.zeros(n_img, dtype=np.int64)
            if counting:
                tp_t = np.zeros((n_img, K, J, M), dtype=np.int64)
                pp_t = np.zeros((n_img, K, J, M), dtype=np.int64)
            else:
                score = np.zeros((n_img, K, J, M), dtype=np.float64)
                empty = np.zeros((n_img, K), dtype=np.float64)
        elif probs.shape[0] != K:
            raise DataError(f"{source.store.folder}: {image_id!r} has {probs.shape[0]} classes, others have {K}")
        pixels[i] = probs[0].size
        for k in range(K):
            q, t = probs[k], truth[k]
            above_cut = q.size - np.cumsum(np.bincount(q.ravel(), minlength=256))  # [c]: pixels with q > c
            above[i, k] = above_cut[cuts]
            truth_px[i, k] = np.count_nonzero(t)
            if counting:
                if not needs_components:  # no min area: counts at every threshold from two histograms
                    tp_cut = truth_px[i, k] - np.cumsum(np.bincount(q[t], minlength=256))
                    pp_t[i, k] = above_cut[cuts][:, None]
                    tp_t[i, k] = tp_cut[cuts][:, None]
                elif above_cut[cuts[0]] > 0:  # else nothing is predicted at any threshold: counts stay 0
                    pp, tp = _threshold_sweep(np.ascontiguousarray(q), np.ascontiguousarray(t).view(np.uint8),
                                              cuts_desc, mins)
                    pp_t[i, k], tp_t[i, k] = pp[::-1], tp[::-1]
                continue
            # metrics without a counts path: score every candidate mask (object AP from component overlaps)
            objects = _Objects(t) if metric.objects else None
            empty[i, k] = metric.per_image(np.zeros_like(t)[None], t[None])
            score[i, k] = empty[i, k]
            for j, cut in enumerate(cuts):
                if above_cut[cut] == 0:
                    continue  # nothing predicted: scores stay the empty score
                if j and above_cut[cut] == above_cut[cuts[j - 1]]:
                    score[i, k, j] = score[i, k, j - 1]  # nested masks with equal counts are equal masks
                    continue
                n, labels, areas = components((q > cut).view(np.uint8))
                pairs = objects.pairs(labels, n) if objects else None
                for m in range(M):
                    keep = areas >= max(int(mins[m]), 1)
                    keep[0] = False
                    if objects:
                        score[i, k, j, m] = objects.score(pairs, areas, keep)
                    else:
                        score[i, k, j, m] = metric.per_image(keep[labels][None], t[None])
    if K is None:
        raise DataError(f"{source.store.folder}: no images to tune on")
    if counting:
        score = metric.stats(tp_t, pp_t, truth_px[:, :, None, None], pixels[:, None, None, None]).astype(np.float64)
        zeros = np.zeros_like(truth_px)
        empty = metric.stats(zeros, zeros, truth_px, pixels[:, None]).astype(np.float64)
    return Tables(list(thresholds), [int(m) for m in mins], score, empty, above)


class _Staged:
    """One image and class under many candidate parameter sets: staged masks (empty rule, threshold, morphology)
    are shared by candidates with the same prefix, and each staged mask is labelled into components once, so a
    min-area or largest-component variant costs a table look-up, not another pass over the pixels."""

    def __init__(self, prob: np.ndarray, truth: np.ndarray):
        self.prob = prob
        self.truth = truth
        self.truth_px = int(np.count_nonzero(truth))
        self.masks: dict[tuple, np.ndarray] = {}
        self.parts: dict[tuple, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        self.pairs: dict[tuple, tuple] = {}
        self.objects: _Objects | None = None

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

    def object_ap(self, p: ClassParams) -> float:
        if self.objects is None:
            self.objects = _Objects(self.truth)
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


def score_params(source: OOFSource, metric: Metric, candidates: list[list[ClassParams]]) -> np.ndarray:
    """scores[i, k, c]: image i, class k under candidates[k][c] (the same number of candidates per class)."""
    n_img, K, n_cand = len(source), len(candidates), len(candidates[0])
    counts = np.zeros((4, n_img, K, n_cand), dtype=np.int64)  # tp, predicted, true, pixels
    out = np.zeros((n_img, K, n_cand))
    for i, (_, probs, truth) in enumerate(source):
        if source.exclusive:
            probs = restrict_to_argmax(probs)
        for k in range(K):
            image = _Staged(probs[k], truth[k])
            for c, params in enumerate(candidates[k]):
                if metric.stats is not None:
                    counts[:2, i, k, c] = image.counts(params)
                    counts[2:, i, k, c] = image.truth_px, probs[k].size
                elif metric.objects:
                    out[i, k, c] = image.object_ap(params)
                else:
                    out[i, k, c] = metric.per_image(image.mask(params)[None], truth[k][None])
    if metric.stats is not None:
        out = metric.stats(*counts).astype(np.float64)
    return out


# ------------------------------------------------------------------------------------------------------- search


class Greedy:
    """Current per-class parameters and scores; ``offer`` keeps a class's best candidate only if it improves."""

    def __init__(self, classes: list[str], metric: Metric, min_gain: float):
        self.classes = classes
        self.metric = metric
        self.min_gain = max(min_gain, 1e-12)  # float noise never counts as an improvement
        self.params = [ClassParams() for _ in classes]
        self.scores = np.zeros(len(classes))
        self.steps: list[dict] = []

    def cv(self) -> float:
        return float(self.scores.mean())

    def start(self, scores: np.ndarray) -> None:
        self.scores = np.asarray(scores, dtype=np.float64)
        self.steps.append({"step": "baseline", "cv": self.cv(), "params": "p>0.50",
                           "class_scores": dict(zip(self.classes, map(float, self.scores)))})

    def offer(self, step: str, best: list[tuple[ClassParams, float, str]]) -> None:
        """``best[k]``: class k's best candidate of this step, its score and a short description of the choice."""
        before = self.cv()
        record = {"step": step, "cv_before": before, "classes": {}}
        s = self.metric.sign()
        for k, (params, score, what) in enumerate(best):
            kept = bool(s * score > s * self.scores[k] + self.min_gain)
            record["classes"][self.classes[k]] = {"choice": what, "score": float(score),
                                                  "score_before": float(self.scores[k]), "kept": kept}
            if kept:
                self.params[k] = params
                self.scores[k] = score
        record["cv"] = self.cv()
        record["kept"] = any(c["kept"] for c in record["classes"].values())
        self.steps.append(record)


def _best(values: np.ndarray, sign: float) -> int:
    """Index of the best value; ties go to the first listed option."""
    return int(np.argmax(sign * values))


def search_tables(tables: Tables, metric: Metric, greedy: Greedy, tcfg) -> dict:
    """Threshold, min-area and empty-rule steps on the summary tables; returns the curves for plotting."""
    s = metric.sign()
    th, mins = tables.thresholds, tables.min_areas
    j_half, m_zero = th.index(0.5), mins.index(0)
    K = tables.score.shape[1]
    greedy.start(tables.score[:, :, j_half, m_zero].mean(0))
    curves: dict[str, dict] = {c: {} for c in greedy.classes}

    # threshold
    best = []
    for k in range(K):
        curve = tables.score[:, k, :, m_zero].mean(0)
        j = _best(curve, s)
        curves[greedy.classes[k]]["threshold"] = {"x": th, "score": curve.tolist(), "min_area": 0}
        best.append((greedy.params[k].replace(threshold=th[j]), float(curve[j]), f"threshold {th[j]:.2f}"))
    greedy.offer("threshold", best)

    # min area, at each class's current threshold
    best = []
    for k in range(K):
        j = th.index(greedy.params[k].threshold)
        curve = tables.score[:, k, j, :].mean(0)
        m = _best(curve, s)
        curves[greedy.classes[k]]["min_area"] = {"x": mins, "score": curve.tolist(), "threshold": th[j]}
        if m != m_zero:  # also plot the threshold curve at the chosen area
            curves[greedy.classes[k]]["threshold_at_min_area"] = {
                "x": th, "score": tables.score[:, k, :, m].mean(0).tolist(), "min_area": mins[m]}
        best.append((greedy.params[k].replace(min_area=mins[m]), float(curve[m]), f"min area {mins[m]}"))
    greedy.offer("min_area", best)

    # empty rule: (top, N, bottom) with top >= bottom, at each class's current min area
    if tcfg.empty_rule and tcfg.empty_pixels:
        pixels = np.asarray(sorted(set(int(n) for n in tcfg.empty_pixels if n > 0)))
        best = []
        for k in range(K):
            m = mins.index(greedy.params[k].min_area)
            S = tables.score[:, k, :, m]  # (N, J)
            E = tables.empty[:, k]  # (N,)
            n_img = S.shape[0]
            top_best = (-np.inf, None)
            for a in range(len(th)):
                keep = (tables.above[:, k, a][None, :] >= pixels[:, None]).astype(np.float64)  # (P, N)
                grid = (keep @ S + (1.0 - keep) @ E[:, None]) / n_img  # (P, J)
                grid[:, a + 1:] = -s * np.inf  # bottom must not exceed top
                p, b = np.unravel_index(_best(grid.ravel(), s), grid.shape)
                if s * grid[p, b] > top_best[0]:
                    top_best = (s * grid[p, b], (a, int(pixels[p]), b, float(grid[p, b])))
            a, n_px, b, value = top_best[1]
            params = greedy.params[k].replace(threshold=th[b], empty_top=th[a], empty_pixels=n_px)
            best.append((params, value, f"empty if <{n_px} px >{th[a]:.2f}, else p>{th[b]:.2f}"))
        greedy.offer("empty_rule", best)
    return curves


def search_morphology(source: OOFSource, metric: Metric, greedy: Greedy, tcfg) -> None:
    """Morphology, min area again, largest component: one pass over the images per step."""
    s = metric.sign()
    steps: list[tuple[str, list[tuple[str, Callable[[ClassParams], ClassParams]]]]] = []
    if tcfg.morphology:
        radii = sorted(set(r for r in tcfg.morph_radii if r > 0))
        fill = ("fill_holes", 0)
        steps.append(("fill_holes", [("fill_holes", lambda p: p.replace(morphology=p.morphology + (fill,)))]))
        for op in MORPH_STEPS[1:]:
            steps.append((op, [(f"{op}({r})", lambda p, op=op, r=r: p.replace(morphology=p.morphology + ((op, r),)))
                               for r in radii]))
    if tcfg.keep_largest:
        steps.append(("keep_largest", [("largest only", lambda p: p.replace(keep_largest=True))]))
    for step, variants in steps:
        if not variants:
            continue
        if step == "keep_largest" and any(p.morphology for p in greedy.params):
            _refit_min_area(source, metric, greedy, tcfg)
        candidates = [[make(p) for _, make in variants] for p in greedy.params]
        scores = score_params(source, metric, candidates).mean(0)  # (K, C)
        best = []
        for k in range(len(greedy.classes)):
            c = _best(scores[k], s)
            best.append((candidates[k][c], float(scores[k, c]), variants[c][0]))
        greedy.offer(step, best)
    if not tcfg.keep_largest and any(p.morphology for p in greedy.params):
        _refit_min_area(source, metric, greedy, tcfg)


def _refit_min_area(source: OOFSource, metric: Metric, greedy: Greedy, tcfg) -> None:
    areas = sorted(set([0] + [int(m) for m in tcfg.min_areas]))
    candidates = [[p.replace(min_area=m) for m in areas] for p in greedy.params]
    scores = score_params(source, metric, candidates).mean(0)
    best = []
    for k in range(len(greedy.classes)):
        c = _best(scores[k], metric.sign())
        best.append((candidates[k][c], float(scores[k, c]), f"min area {areas[c]}"))
    greedy.offer("min_area_after_morphology", best)


def final_scores(source: OOFSource, metric: Metric, params: list[ClassParams], exclusive: bool) -> dict:
    """Exact per-image metric on whole (K, H, W) masks, tuned and baseline (p > 0.5), plus per-class scores and
    pixel counts (what the report needs to pick telling examples)."""
    base = [ClassParams() for _ in params]
    out: dict[str, list] = {"score": [], "baseline": [], "per_class": [], "truth_px": [], "pred_px": []}
    for _, probs, truth in source:
        masks = postprocess(probs, params, exclusive=exclusive).view(bool)
        out["score"].append(metric.per_image(masks, truth))
        out["baseline"].append(metric.per_image(postprocess(probs, base, exclusive=exclusive).view(bool), truth))
        if len(params) == 1:
            out["per_class"].append(out["score"][-1:])
        else:
            out["per_class"].append([metric.per_image(masks[k:k + 1], truth[k:k + 1]) for k in range(len(params))])
        out["truth_px"].append(int(np.count_nonzero(truth)))
        out["pred_px"].append(int(np.count_nonzero(masks)))
    result = {k: np.asarray(v, dtype=float) for k, v in out.items()}
    result["ids"] = list(source.ids)
    return result


def tune(source: OOFSource, classes: list[str], metric: Metric, tcfg) -> dict:
    """The whole search on one OOF source; returns what tune.json holds (without file bookkeeping)."""
    start = time.perf_counter()
    thresholds = sorted(set([0.5] + [round(float(t), 6) for t in tcfg.thresholds]))
    min_areas = sorted(set([0] + [int(m) for m in tcfg.min_areas]))
    tables = summarize(source, metric, thresholds, min_areas)
    if tables.score.shape[1] != len(classes):
        raise DataError(f"OOF probabilities have {tables.score.shape[1]} classes; data.classes lists {len(classes)}")
    greedy = Greedy(classes, metric, tcfg.min_gain)
    curves = search_tables(tables, metric, greedy, tcfg)
    t_tables = time.perf_counter() - start
    search_morphology(source, metric, greedy, tcfg)
    for name, params in zip(classes, greedy.params):
        curves[name]["chosen"] = {"threshold": params.threshold, "min_area": params.min_area}
    per_image = final_scores(source, metric, greedy.params, source.exclusive)
    return {
        "metric": metric.name,
        "higher_is_better": metric.higher_is_better,
        "scoring": "confusion counts" if metric.stats is not None else "metric per mask",
        "n_images": len(source),
        "classes": {c: p.to_dict() for c, p in zip(classes, greedy.params)},
        "summary": {c: describe(p) for c, p in zip(classes, greedy.params)},
        "cv": float(per_image["score"].mean()),
        "cv_baseline": float(per_image["baseline"].mean()),
        "steps": greedy.steps,
        "curves": curves,
        "seconds": {"tables": round(t_tables, 2), "total": round(time.perf_counter() - start, 2)},
        "_per_image": per_image,
    }


# ---------------------------------------------------------------------------------------------------- the stage


def ensemble_dir(cfg: Config) -> Path:
    return cfg.run_dir / "ensemble"


def plain_score(cfg: Config, metric: Metric, truth: Callable[[str], np.ndarray]) -> tuple[str, float] | None:
    """The first model's raw training OOF at p > 0.5 over all folds: the pipeline without TTA, ensembling or
    tuning. None when its fold stores are not all there."""
    if not cfg.models:
        return None
    model = cfg.models[0].name
    folders = [cfg.run_dir / model / f"fold{k}" / "oof" for k in range(cfg.folds.n_splits)]
    if not all(ProbStore.is_complete(f) for f in folders):
        return None
    exclusive = cfg.data.mode == "multiclass"
    scores = []
    for folder in folders:
        store = ProbStore(folder)
        for image_id, probs, t in OOFSource(store, truth, exclusive, budget=0):
            masks = postprocess(probs, [ClassParams()] * probs.shape[0], exclusive=exclusive).view(bool)
            scores.append(metric.per_image(masks, t))
    return (model, float(np.mean(scores))) if scores else None


def _fingerprint(cfg: Config, store: ProbStore) -> str:
    manifest = (store.folder / "manifest.json").read_bytes()
    files = sorted(store.folder.glob("*.npy"))
    mtimes = max((p.stat().st_mtime_ns for p in files), default=0)
    key = json.dumps({"tune": cfg.tune.model_dump(), "metric": cfg.metric, "mode": cfg.data.mode,
                      "classes": cfg.data.classes, "manifest": manifest.decode(), "mtime": mtimes,
                      "root": str(cfg.data.root)}, sort_keys=True, default=str)
    return hashlib.sha1(key.encode()).hexdigest()


def load_tune(cfg: Config) -> dict:
    """tune.json of the experiment, checked against the config's classes."""
    path = cfg.run_dir / "tune.json"
    if not path.exists():
        raise SegkitError(f"{path}: missing; run `segkit tune --config {cfg.source or 'CFG'}` first")
    try:
        result = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(result, dict) or not isinstance(result.get("classes"), dict):
        raise DataError(f"{path}: no 'classes' mapping of post-processing parameters")
    return result


def run(cfg: Config) -> int:
    from segkit.data import Competition

    store_dir = ensemble_dir(cfg) / "oof"
    if not ProbStore.is_complete(store_dir):
        raise SegkitError(f"{store_dir}: no complete ensemble OOF store; run `segkit ensemble` first")
    store = ProbStore(store_dir)
    out_path = cfg.run_dir / "tune.json"
    fingerprint = _fingerprint(cfg, store)
    if out_path.exists():
        try:
            old = json.loads(out_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            old = {}
        if old.get("inputs") == fingerprint:
            print(f"tune: {out_path} is up to date (CV {old['cv']:.4f}); keeping it")
            return 0
    if list(store.classes) != list(cfg.data.classes):
        raise DataError(f"{store_dir}: classes {store.classes} differ from data.classes {cfg.data.classes}")
    comp = Competition(cfg.data, seed=cfg.seed)
    metric = resolve_metric(cfg.metric)
    exclusive = cfg.data.mode == "multiclass"
    source = OOFSource(store, comp.read_mask, exclusive)
    result = tune(source, list(cfg.data.classes), metric, cfg.tune)
    per_image = result.pop("_per_image")
    plain = plain_score(cfg, metric, comp.read_mask)
    result["baseline"] = {"ensemble_oof_p>0.5": result["cv_baseline"],
                          "plain_pipeline": plain[1] if plain else None,
                          "plain_model": plain[0] if plain else None}
    result["inputs"] = fingerprint

    out_dir = cfg.run_dir / "tune"
    write_per_image(out_dir / "oof_scores.csv", per_image, list(cfg.data.classes))
    result["plots"] = [str(p) for p in plot_curves(result["curves"], out_dir, metric.name)]
    atomic.write_json(out_path, result)

    for step in result["steps"]:
        kept = "" if step["step"] == "baseline" else ("  kept" if step["kept"] else "  rejected")
        print(f"tune: {step['step']:<28} CV {step['cv']:.4f}{kept}")
    for name, text in result["summary"].items():
        print(f"tune: {name}: {text}")
    if plain:
        print(f"tune: plain pipeline ({plain[0]}, raw OOF p>0.5): {plain[1]:.4f}")
    print(f"tune: {metric.name} CV {result['cv']:.4f} (ensemble OOF p>0.5: {result['cv_baseline']:.4f}) "
          f"on {result['n_images']} images in {result['seconds']['total']:.1f} s -> {out_path}")
    return 0


def write_per_image(path: Path, per_image: dict, classes: list[str]) -> None:
    """oof_scores.csv: id, tuned and baseline score, truth and predicted pixels[, per-class scores]."""
    import pandas as pd

    frame = pd.DataFrame({"id": per_image["ids"], "score": per_image["score"], "baseline": per_image["baseline"],
                          "truth_px": per_image["truth_px"].astype(np.int64),
                          "pred_px": per_image["pred_px"].astype(np.int64)})
    if len(classes) > 1:
        for k, name in enumerate(classes):
            frame[f"score_{name}"] = per_image["per_class"][:, k]
    atomic.write_csv(path, frame)


# -------------------------------------------------------------------------------------------------------- plots


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in name)


def plot_curves(curves: dict, out_dir: Path, metric_name: str) -> list[Path]:
    """score vs threshold and score vs min area, one PNG per class and search."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for cls, per in curves.items():
        if "threshold" in per:
            fig, ax = plt.subplots(figsize=(5, 3.2), dpi=100)
            ax.plot(per["threshold"]["x"], per["threshold"]["score"], marker="o", ms=3, label="min area 0")
            extra = per.get("threshold_at_min_area")
            if extra:
                ax.plot(extra["x"], extra["score"], marker="o", ms=3, label=f"min area {extra['min_area']}")
            chosen = per.get("chosen", {})
            if "threshold" in chosen:
                ax.axvline(chosen["threshold"], color="gray", ls=":", label=f"chosen {chosen['threshold']:.2f}")
            ax.set(xlabel="probability threshold", ylabel=f"OOF {metric_name}", title=f"{cls}: threshold")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
            written.append(_save(fig, out_dir / f"threshold_{_safe(cls)}.png"))
        if "min_area" in per:
            fig, ax = plt.subplots(figsize=(5, 3.2), dpi=100)
            xs = per["min_area"]["x"]
            ax.plot(range(len(xs)), per["min_area"]["score"], marker="o", ms=3)
            ax.set_xticks(range(len(xs)), [str(x) for x in xs])
            ax.set(xlabel="minimum component area (px)", ylabel=f"OOF {metric_name}",
                   title=f"{cls}: min area at p>{per['min_area']['threshold']:.2f}")
            ax.grid(alpha=0.3)
            written.append(_save(fig, out_dir / f"min_area_{_safe(cls)}.png"))
    return written


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    with atomic.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return path
