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
    masks p > cut are nested, so each threshold's components are the union-find state at that point. Only pixels
    above the lowest cut are ever sorted or touched (most of a big image is background far below it): the per-pixel
    arrays are left uninitialised except the one byte that says whether a pixel has joined.
    """
    h, w = q.shape
    n = h * w
    flat_q = q.ravel()
    flat_t = truth.ravel()
    lowest = cuts_desc[cuts_desc.size - 1]
    count = np.zeros(256, np.int64)
    for i in range(n):
        count[flat_q[i]] += 1
    slot = np.zeros(256, np.int64)  # counting sort of the pixels above the lowest cut, brightest first
    acc = 0
    for v in range(255, lowest, -1):
        slot[v] = acc
        acc += count[v]
    order = np.empty(acc, np.int32)
    for i in range(n):
        v = flat_q[i]
        if v > lowest:
            order[slot[v]] = i
            slot[v] += 1
    joined = np.zeros(n, np.uint8)
    parent = np.empty(n, np.int32)
    area = np.empty(n, np.int64)
    inter = np.empty(n, np.int64)
    where = np.empty(n, np.int32)
    roots = np.empty(max(acc, 1), np.int32)  # live component roots, with each root's position in this list
    n_roots = 0
    pp = np.zeros((cuts_desc.size, mins.size), np.int64)
    tp = np.zeros((cuts_desc.size, mins.size), np.int64)
    k = 0
    for j in range(cuts_desc.size):
        while k < acc and flat_q[order[k]] > cuts_desc[j]:
            p = order[k]
            k += 1
            joined[p] = 1
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
                    if not joined[nb]:
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


def _image_tables(probs: np.ndarray, truth: np.ndarray, exclusive: bool, metric: CompetitionMetric,
                  cuts: list[int], mins: np.ndarray) -> dict:
    """One image's rows of the tables: per class, the pixels above every cut, the true pixels, and either the
    (tp, predicted) counts or the scores at every cut and min area."""
    if exclusive:
        probs = restrict_to_argmax(probs)
    K, J, M = probs.shape[0], len(cuts), len(mins)
    counting = metric.stats is not None
    needs_components = not counting or bool((mins > 1).any())
    cuts_desc = np.asarray(cuts[::-1], dtype=np.int64)
    out = {"classes": K, "pixels": probs[0].size, "above": np.zeros((K, J), np.int64),
           "truth_px": np.zeros(K, np.int64)}
    if counting:
        out["tp"], out["pp"] = np.zeros((K, J, M), np.int64), np.zeros((K, J, M), np.int64)
    else:
        out["score"], out["empty"] = np.zeros((K, J, M)), np.zeros(K)
    for k in range(K):
        q, t = probs[k], truth[k]
        above_cut = q.size - np.cumsum(np.bincount(q.ravel(), minlength=256))  # [c]: pixels with q > c
        out["above"][k] = above_cut[cuts]
        out["truth_px"][k] = np.count_nonzero(t)
        if counting:
            if not needs_components:  # no min area: counts at every threshold from two histograms
                tp_cut = out["truth_px"][k] - np.cumsum(np.bincount(q[t], minlength=256))
                out["pp"][k] = above_cut[cuts][:, None]
                out["tp"][k] = tp_cut[cuts][:, None]
            elif above_cut[cuts[0]] > 0:  # else nothing is predicted at any threshold: counts stay 0
                pp, tp = _threshold_sweep(np.ascontiguousarray(q), np.ascontiguousarray(t).view(np.uint8),
                                          cuts_desc, mins)
                out["pp"][k], out["tp"][k] = pp[::-1], tp[::-1]
            continue
        # metrics without a counts path: score every candidate mask (object AP from component overlaps)
        score = out["score"]
        objects = metric.objects_of(t) if metric.objects else None
        out["empty"][k] = metric.per_image(np.zeros_like(t)[None], t[None])
        score[k] = out["empty"][k]
        for j, cut in enumerate(cuts):
            if above_cut[cut] == 0:
                continue  # nothing predicted: scores stay the empty score
            if j and above_cut[cut] == above_cut[cuts[j - 1]]:
                score[k, j] = score[k, j - 1]  # nested masks with equal counts are equal masks
                continue
            n, labels, areas = components((q > cut).view(np.uint8))
            pairs = objects.pairs(labels, n) if objects else None
            for m in range(M):
                keep = areas >= max(int(mins[m]), 1)
                keep[0] = False
                if objects:
                    score[k, j, m] = objects.score(pairs, areas, keep)
                else:
                    score[k, j, m] = metric.per_image(keep[labels][None], t[None])
    return out


def summarize(source: OOFStream, metric: CompetitionMetric, thresholds: Sequence[float],
              min_areas: Sequence[int]) -> Tables:
    """One pass over the images (spread over the stream's workers): everything the threshold, min-area and
    empty-rule searches need."""
    cuts = [uint8_cut(t) for t in thresholds]
    mins = np.asarray(min_areas, dtype=np.int64)
    if sorted(cuts) != cuts:
        raise ValueError("thresholds must be ascending")
    n, J, M = len(source), len(cuts), len(mins)
    counting = metric.stats is not None
    rows = source.map(lambda _, probs, truth: _image_tables(probs, truth, source.exclusive, metric, cuts, mins),
                      "tune: summary tables")
    K = None
    for i, (image_id, row) in enumerate(zip(source.ids, rows)):  # folded into the tables as the rows come
        if K is None:
            K = row["classes"]
            above, truth_px, pixels = np.zeros((n, K, J), np.int64), np.zeros((n, K), np.int64), np.zeros(n, np.int64)
            parts = {"tp": np.zeros((n, K, J, M), np.int64), "pp": np.zeros((n, K, J, M), np.int64)} if counting \
                else {"score": np.zeros((n, K, J, M)), "empty": np.zeros((n, K))}
        elif row["classes"] != K:
            raise DataError(f"{source.store.folder}: {image_id!r} has {row['classes']} classes, others have {K}")
        above[i], truth_px[i], pixels[i] = row["above"], row["truth_px"], row["pixels"]
        for key, table in parts.items():
            table[i] = row[key]
    if K is None:
        raise DataError(f"{source.store.folder}: no images to tune on")
    if counting:
        score = np.empty((n, K, J, M))
        for i in range(0, n, 1024):  # the metric's temporaries a block of images at a time
            rows_i = slice(i, i + 1024)
            score[rows_i] = metric.stats(parts["tp"][rows_i], parts["pp"][rows_i], truth_px[rows_i, :, None, None],
                                         pixels[rows_i, None, None, None])
        del parts
        zeros = np.zeros_like(truth_px)
        empty = metric.stats(zeros, zeros, truth_px, pixels[:, None]).astype(np.float64)
    else:
        score, empty = parts["score"], parts["empty"]
    return Tables(list(thresholds), [int(m) for m in mins], score, empty, above)


__all__ = ["Tables", "summarize"]
