"""The summary tables of the first three search steps (threshold, minimum area, empty-mask rule), from one streamed
pass over the OOF images.

Where the metric is a function of the confusion counts of an (image, class) pair (dice, IoU, TGS, pixel accuracy:
the metrics with a counts path), the pass keeps, per image, class and threshold, the predicted pixel count and the
true-positive count for every minimum area, from one component labelling per threshold: the areas of the
components and their overlaps with the truth give both for any minimum area, and ``_threshold_sweep`` gets every
threshold's components in one union-find pass. A metric scored from objects (object AP) is scored from the overlaps
of predicted and true components (``CompetitionMetric.objects_of``), so a minimum area costs no relabelling either.
The empty rule then needs only each image's count of pixels above each top threshold.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from numba import njit

from segkit.components import components
from segkit.errors import DataError
from segkit.metrics import CompetitionMetric
from segkit.postprocess.masks import restrict_to_argmax
from segkit.progress import bar
from segkit.stages.tune.stream import OOFStream
from segkit.threshold import uint8_cut


@dataclass
class Tables:
    """Per image i, class k: score[i, k, j, m] at threshold j and min area m; empty[i, k] the score of an empty
    prediction; above[i, k, j] the pixels with p > thresholds[j]."""

    thresholds: list[float]
    min_areas: list[int]
    score: np.ndarray
    empty: np.ndarray
    above: np.ndarray

    def take(self, rows: np.ndarray) -> "Tables":
        """The tables of a subset of the images (a search that decides on some folds only)."""
        return Tables(self.thresholds, self.min_areas, self.score[rows], self.empty[rows], self.above[rows])


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


def summarize(source: OOFStream, metric: CompetitionMetric, thresholds: Sequence[float],
              min_areas: Sequence[int]) -> Tables:
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
    for i, (image_id, probs, truth) in enumerate(bar(source, "tune: summary tables", total=n_img)):
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
            objects = metric.objects_of(t) if metric.objects else None
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


__all__ = ["Tables", "summarize"]
