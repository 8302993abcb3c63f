"""The post-processing search: greedy, in a fixed order, one step at a time; a step's choice is kept only if the
keep rule (``tune.min_gain``) says its gain over what the previous steps gave is real (see ``segkit.stages.tune``).

One search decides on a set of OOF images (its *rows*). ``tune`` runs it on every image, which gives the
submission's parameters, and once per fold k on the other folds' images, whose choice is then scored on fold k:
the nested estimate (``cv_nested``), honest because no image is scored with parameters chosen on it. The searches
share the one-pass summary tables and a cache of candidate scores, so a nested search whose path agrees with the
full one costs table look-ups only.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable, Optional, Sequence, Union

import numpy as np

from segkit.errors import ConfigError, DataError
from segkit.metrics import CompetitionMetric
from segkit.postprocess.masks import MASK_STEPS, ClassParams, describe, postprocess
from segkit.postprocess.tuned import SearchResult
from segkit.stages.tune.candidates import score_params
from segkit.stages.tune.stream import OOFStream
from segkit.stages.tune.tables import Tables, summarize

KEEP_RULES = ("most_folds", "fold_se")  # the rule names tune.min_gain takes besides a number
EPS = 1e-12  # float noise never counts as an improvement


@dataclass(frozen=True)
class KeepRule:
    """When a step's best candidate replaces the current choice of a class, from its gain per image (signed so
    that positive is better) and the folds of those images:

    - a number g: the mean gain exceeds g (nnU-Net's rule with a margin);
    - ``most_folds``: the mean gain is positive and so is the gain on more than half of the folds;
    - ``fold_se``: the mean gain exceeds the standard error of the per-fold gains (their spread / sqrt(folds)).

    Without folds (or with one) the two named rules reduce to "the mean gain is positive"."""

    min_gain: Union[float, str] = 0.0

    def __post_init__(self):
        if isinstance(self.min_gain, str) and self.min_gain not in KEEP_RULES:
            raise ConfigError(f"tune.min_gain: {self.min_gain!r} is neither a number nor one of {KEEP_RULES}")

    def keeps(self, gain: np.ndarray, folds: np.ndarray) -> bool:
        mean = float(gain.mean()) if len(gain) else 0.0
        if not isinstance(self.min_gain, str):
            return mean > max(float(self.min_gain), EPS)
        if mean <= EPS:
            return False
        by_fold = fold_means(gain, folds)
        if len(by_fold) < 2:
            return True
        if self.min_gain == "most_folds":
            return 2 * int((by_fold > EPS).sum()) > len(by_fold)
        return mean > float(by_fold.std(ddof=1)) / math.sqrt(len(by_fold))

    def __str__(self) -> str:
        return self.min_gain if isinstance(self.min_gain, str) else f"mean gain > {self.min_gain:g}"


def fold_means(values: np.ndarray, folds: np.ndarray) -> np.ndarray:
    """The mean of ``values`` over each fold's rows, folds in ascending order."""
    labels, inverse = np.unique(folds, return_inverse=True)
    return np.bincount(inverse, weights=values, minlength=len(labels)) / np.bincount(inverse, minlength=len(labels))


class Greedy:
    """The current per-class parameters and per-image scores of one search; ``offer`` keeps a class's best candidate
    of a step only where the keep rule accepts its gain."""

    def __init__(self, classes: list[str], metric: CompetitionMetric, rule: KeepRule,
                 folds: Optional[np.ndarray] = None, record: bool = True):
        self.classes = classes
        self.metric = metric
        self.rule = rule
        self.folds = folds
        self.record = record  # the nested searches keep no step log
        self.params = [ClassParams() for _ in classes]
        self.per_image = np.zeros((0, len(classes)))
        self.steps: list[dict] = []

    @property
    def scores(self) -> np.ndarray:
        """(K,) the current mean score of each class."""
        return self.per_image.mean(0)

    def cv(self) -> float:
        return float(self.scores.mean())

    def start(self, per_image: np.ndarray) -> None:
        """(N, K) per-image scores of the untuned baseline (p > 0.5)."""
        self.per_image = np.array(per_image, dtype=np.float64)
        if self.folds is None:
            self.folds = np.zeros(len(self.per_image), dtype=np.int64)
        if self.record:
            self.steps.append({"step": "baseline", "cv": self.cv(), "params": "p>0.50",
                               "class_scores": dict(zip(self.classes, map(float, self.scores)))})

    def offer(self, step: str, best: list[tuple[ClassParams, np.ndarray, str]]) -> None:
        """``best[k]``: class k's best candidate of this step, its per-image scores (N,) and a short description."""
        record = {"step": step, "cv_before": self.cv(), "classes": {}}
        s = self.metric.sign
        for k, (params, scores, what) in enumerate(best):
            scores = np.asarray(scores, dtype=np.float64)
            gain = s * (scores - self.per_image[:, k])
            kept = self.rule.keeps(gain, self.folds)
            if self.record:
                record["classes"][self.classes[k]] = {
                    "choice": what, "score": float(scores.mean()), "score_before": float(self.per_image[:, k].mean()),
                    "fold_gains": [round(float(g), 6) for g in fold_means(gain, self.folds)], "kept": kept}
            if kept:
                self.params[k] = params
                self.per_image[:, k] = scores
        if self.record:
            record["cv"] = self.cv()
            record["kept"] = any(c["kept"] for c in record["classes"].values())
            self.steps.append(record)


def _best(values: np.ndarray, sign: float) -> int:
    """Index of the best value; ties go to the first listed option."""
    return int(np.argmax(sign * values))


def search_tables(tables: Tables, metric: CompetitionMetric, greedy: Greedy, tcfg) -> dict:
    """Threshold, min-area and empty-rule steps on the summary tables (of the search's rows); returns the curves
    for plotting."""
    s = metric.sign
    th, mins = tables.thresholds, tables.min_areas
    j_half, m_zero = th.index(0.5), mins.index(0)
    K = tables.score.shape[1]
    greedy.start(tables.score[:, :, j_half, m_zero])
    curves: dict[str, dict] = {c: {} for c in greedy.classes}

    # threshold
    best = []
    for k in range(K):
        curve = tables.score[:, k, :, m_zero].mean(0)
        j = _best(curve, s)
        curves[greedy.classes[k]]["threshold"] = {"x": th, "score": curve.tolist(), "min_area": 0}
        best.append((greedy.params[k].replace(threshold=th[j]), tables.score[:, k, j, m_zero],
                     f"threshold {th[j]:.2f}"))
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
        best.append((greedy.params[k].replace(min_area=mins[m]), tables.score[:, k, j, m], f"min area {mins[m]}"))
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
                    top_best = (s * grid[p, b], (a, int(pixels[p]), b))
            a, n_px, b = top_best[1]
            per_image = np.where(tables.above[:, k, a] >= n_px, S[:, b], E)
            params = greedy.params[k].replace(threshold=th[b], empty_top=th[a], empty_pixels=n_px)
            best.append((params, per_image, f"empty if <{n_px} px >{th[a]:.2f}, else p>{th[b]:.2f}"))
        greedy.offer("empty_rule", best)
    return curves


class CandidateScores:
    """Per-image scores of (class, parameters) pairs on every image of a source, each pair scored once: the
    searches of the nested estimate ask for the same candidates as the full search wherever their paths agree."""

    def __init__(self, source: OOFStream, metric: CompetitionMetric):
        self.source = source
        self.metric = metric
        self.cache: dict[tuple[int, ClassParams], np.ndarray] = {}

    def get(self, candidates: list[list[ClassParams]]) -> np.ndarray:
        """scores[i, k, c] of every image i for class k under candidates[k][c]."""
        self._fill(candidates)
        return np.stack([np.stack([self.cache[(k, p)] for p in cands], axis=1)
                         for k, cands in enumerate(candidates)], axis=1)

    def prefetch(self, candidate_sets: list[list[list[ClassParams]]]) -> None:
        """Score the candidates of several searches (each a per-class list) in one pass over the images."""
        self._fill([[p for cands in candidate_sets for p in cands[k]] for k in range(len(candidate_sets[0]))])

    def _fill(self, candidates: list[list[ClassParams]]) -> None:
        """Score, in one pass, the candidates (a list per class) not yet in the cache."""
        missing = [[p for p in dict.fromkeys(cands) if (k, p) not in self.cache] for k, cands in enumerate(candidates)]
        width = max(len(m) for m in missing)
        if width:
            # score_params scores the same number of candidates per class: pad with a class's first candidate
            padded = [m + [m[0] if m else candidates[k][0]] * (width - len(m)) for k, m in enumerate(missing)]
            scores = score_params(self.source, self.metric, padded)
            for k, m in enumerate(missing):
                for c, p in enumerate(m):
                    self.cache[(k, p)] = scores[:, k, c]


Search = tuple[np.ndarray, Greedy]  # a search's rows (the images it decides on) and its state


def morphology_steps(tcfg) -> list[tuple[str, list[tuple[str, Callable[[ClassParams], ClassParams]]]]]:
    """The morphology steps in order, each with its named variants of a class's current parameters."""
    steps = []
    if tcfg.morphology:
        radii = sorted(set(r for r in tcfg.morph_radii if r > 0))
        for op in tcfg.morph_steps:  # in the order listed; a step without a radius is one candidate
            sizes = radii if MASK_STEPS.get(op, key="tune.morph_steps").radius else [0]
            steps.append((op, [(f"{op}({r})" if r else op,
                                lambda p, op=op, r=r: p.replace(morphology=p.morphology + ((op, r),)))
                               for r in sizes]))
    if tcfg.keep_largest:
        steps.append(("keep_largest", [("largest only", lambda p: p.replace(keep_largest=True))]))
    return [(step, variants) for step, variants in steps if variants]


def search_morphology(scorer: CandidateScores, searches: list[Search], metric: CompetitionMetric, tcfg) -> None:
    """Morphology, min area again, largest component: each step's candidates scored on each search's rows.

    The searches (the full one and the nested ones) take the steps side by side, so one pass over the images
    scores a step's candidates for all of them; one after the other, a nested search whose path leaves the full
    one's cost a pass of its own per step (40 passes instead of 7 on 5 folds with the default steps, each reading
    every image again). Each search still decides on its own rows and state alone."""
    def with_morphology() -> list[Search]:
        return [(rows, greedy) for rows, greedy in searches if any(p.morphology for p in greedy.params)]

    for step, variants in morphology_steps(tcfg):
        if step == "keep_largest":
            _refit_min_area(scorer, with_morphology(), metric, tcfg)
        candidates = [[[make(p) for _, make in variants] for p in greedy.params] for _, greedy in searches]
        scorer.prefetch(candidates)
        for (rows, greedy), cands in zip(searches, candidates):
            _offer_best(step, scorer.get(cands)[rows], cands, [v[0] for v in variants], metric.sign, greedy)
    if not tcfg.keep_largest:
        _refit_min_area(scorer, with_morphology(), metric, tcfg)


def _offer_best(step: str, scores: np.ndarray, candidates: list[list[ClassParams]], names: list[str], sign: float,
                greedy: Greedy) -> None:
    """scores (N, K, C) of the search's rows: offer each class's best candidate by mean score."""
    means = scores.mean(0)
    best = []
    for k in range(len(greedy.classes)):
        c = _best(means[k], sign)
        best.append((candidates[k][c], scores[:, k, c], names[c]))
    greedy.offer(step, best)


def _refit_min_area(scorer: CandidateScores, searches: list[Search], metric: CompetitionMetric, tcfg) -> None:
    if not searches:
        return
    areas = sorted(set([0] + [int(m) for m in tcfg.min_areas]))
    candidates = [[[p.replace(min_area=m) for m in areas] for p in greedy.params] for _, greedy in searches]
    scorer.prefetch(candidates)
    for (rows, greedy), cands in zip(searches, candidates):
        _offer_best("min_area_after_morphology", scorer.get(cands)[rows], cands, [f"min area {a}" for a in areas],
                    metric.sign, greedy)


def final_scores(source: OOFStream, metric: CompetitionMetric, params: list[ClassParams], exclusive: bool,
                 nested: Optional[Sequence[list[ClassParams]]] = None) -> dict:
    """Exact per-image metric on whole (K, H, W) masks, tuned and baseline (p > 0.5), plus per-class scores and
    pixel counts (what the report needs to pick telling examples). ``nested[i]``: the parameters image i is scored
    with for the nested estimate (chosen without its fold)."""
    base = [ClassParams() for _ in params]
    own_of = dict(zip(source.ids, nested)) if nested is not None else {}

    def one(image_id: str, probs: np.ndarray, truth: np.ndarray) -> dict:
        masks = postprocess(probs, params, exclusive=exclusive).view(bool)
        row = {"score": metric.per_image(masks, truth),
               "baseline": metric.per_image(postprocess(probs, base, exclusive=exclusive).view(bool), truth),
               "truth_px": int(np.count_nonzero(truth)), "pred_px": int(np.count_nonzero(masks))}
        if nested is not None:
            own = own_of[image_id]
            row["nested"] = row["score"] if own == params else metric.per_image(
                postprocess(probs, own, exclusive=exclusive).view(bool), truth)
        row["per_class"] = [row["score"]] if len(params) == 1 else [
            metric.per_image(masks[k:k + 1], truth[k:k + 1]) for k in range(len(params))]
        return row

    rows = list(source.map(one, "tune: final scores"))
    keys = ["score", "baseline", "per_class", "truth_px", "pred_px"] + (["nested"] if nested is not None else [])
    result = {k: np.asarray([r[k] for r in rows], dtype=float) for k in keys}
    result["ids"] = list(source.ids)
    return result


def _start(tables: Tables, rows: np.ndarray, folds: Optional[np.ndarray], classes: list[str],
           metric: CompetitionMetric, tcfg, record: bool) -> tuple[Greedy, dict]:
    """A greedy search deciding on ``rows``, through the steps the summary tables answer; returns it and its
    curves. ``search_morphology`` takes it on."""
    greedy = Greedy(classes, metric, KeepRule(tcfg.min_gain), None if folds is None else folds[rows], record)
    return greedy, search_tables(tables.take(rows), metric, greedy, tcfg)


def tune(source: OOFStream, classes: list[str], metric: CompetitionMetric, tcfg,
         folds: Optional[Sequence[int]] = None) -> SearchResult:
    """The whole search on one OOF source; returns what tune.json records (without file bookkeeping) and the
    per-image scores. ``folds[i]``: the fold of the source's image i; with two folds or more the nested estimate
    is made too: each fold scored with what a search on the other folds chose."""
    start = time.perf_counter()
    thresholds = sorted(set([0.5] + [round(float(t), 6) for t in tcfg.thresholds]))
    min_areas = sorted(set([0] + [int(m) for m in tcfg.min_areas]))
    tables = summarize(source, metric, thresholds, min_areas)
    if tables.score.shape[1] != len(classes):
        raise DataError(f"OOF probabilities have {tables.score.shape[1]} classes; data.classes lists {len(classes)}")
    fold_of = None if folds is None else np.asarray(folds, dtype=np.int64)
    if fold_of is not None and len(fold_of) != len(source):
        raise DataError(f"{len(fold_of)} fold labels for {len(source)} OOF images")
    t_tables = time.perf_counter() - start
    scorer = CandidateScores(source, metric)
    every = np.arange(len(source))
    greedy, curves = _start(tables, every, fold_of, classes, metric, tcfg, record=True)
    labels = np.unique(fold_of).tolist() if fold_of is not None else []
    inner = {f: np.flatnonzero(fold_of != f) for f in (labels if len(labels) >= 2 else [])}
    nested_searches = {f: _start(tables, rows, fold_of, classes, metric, tcfg, record=False)[0]
                       for f, rows in inner.items()}
    search_morphology(scorer, [(every, greedy)] + [(inner[f], g) for f, g in nested_searches.items()], metric, tcfg)
    for name, params in zip(classes, greedy.params):
        curves[name]["chosen"] = {"threshold": params.threshold, "min_area": params.min_area}
    chosen: dict[int, list[ClassParams]] = {f: g.params for f, g in nested_searches.items()}
    nested = [chosen[f] for f in fold_of.tolist()] if chosen else None
    per_image = final_scores(source, metric, greedy.params, source.exclusive, nested)
    result = {
        "metric": metric.name,
        "higher_is_better": metric.higher_is_better,
        "scoring": "confusion counts" if metric.stats is not None else "metric per mask",
        "n_images": len(source),
        "keep_rule": str(KeepRule(tcfg.min_gain)),
        "classes": {c: p.to_dict() for c, p in zip(classes, greedy.params)},
        "summary": {c: describe(p) for c, p in zip(classes, greedy.params)},
        "cv_nested": float(per_image["nested"].mean()) if nested else None,
        "cv": float(per_image["score"].mean()),
        "cv_baseline": float(per_image["baseline"].mean()),
        "nested": _nested_summary(chosen, fold_of, per_image, classes) if nested else None,
        "steps": greedy.steps,
        "curves": curves,
        "seconds": {"tables": round(t_tables, 2), "total": round(time.perf_counter() - start, 2)},
    }
    return SearchResult(result, per_image, nested)


def _nested_summary(chosen: dict[int, list[ClassParams]], folds: np.ndarray, per_image: dict,
                    classes: list[str]) -> dict:
    """Per fold: what the search on the other folds chose, and its score on the fold beside the in-sample one."""
    out = {}
    for f, params in chosen.items():
        rows = folds == f
        out[str(f)] = {"images": int(rows.sum()), "cv_nested": float(per_image["nested"][rows].mean()),
                       "cv": float(per_image["score"][rows].mean()),
                       "summary": {c: describe(p) for c, p in zip(classes, params)},
                       "classes": {c: p.to_dict() for c, p in zip(classes, params)}}
    return out


__all__ = ["CandidateScores", "Greedy", "KEEP_RULES", "KeepRule", "final_scores", "fold_means",
           "search_morphology", "search_tables", "tune"]
