"""The post-processing search: greedy, in a fixed order, one step at a time; a step's choice is kept only if it raises
the CV score by more than ``tune.min_gain`` over what the previous steps gave (see ``segkit.tune``)."""

from __future__ import annotations

import time
from typing import Callable

import numpy as np

from segkit.errors import DataError
from segkit.metrics import CompetitionMetric
from segkit.postprocess import ClassParams, describe, postprocess
from segkit.tune.candidates import score_params
from segkit.tune.stream import OOFStream
from segkit.tune.tables import Tables, summarize

MORPH_STEPS = ("fill_holes", "opening", "closing", "dilation", "erosion")


class Greedy:
    """Current per-class parameters and scores; ``offer`` keeps a class's best candidate only if it improves."""

    def __init__(self, classes: list[str], metric: CompetitionMetric, min_gain: float):
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
        s = self.metric.sign
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


def search_tables(tables: Tables, metric: CompetitionMetric, greedy: Greedy, tcfg) -> dict:
    """Threshold, min-area and empty-rule steps on the summary tables; returns the curves for plotting."""
    s = metric.sign
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


def search_morphology(source: OOFStream, metric: CompetitionMetric, greedy: Greedy, tcfg) -> None:
    """Morphology, min area again, largest component: one pass over the images per step."""
    s = metric.sign
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


def _refit_min_area(source: OOFStream, metric: CompetitionMetric, greedy: Greedy, tcfg) -> None:
    areas = sorted(set([0] + [int(m) for m in tcfg.min_areas]))
    candidates = [[p.replace(min_area=m) for m in areas] for p in greedy.params]
    scores = score_params(source, metric, candidates).mean(0)
    best = []
    for k in range(len(greedy.classes)):
        c = _best(scores[k], metric.sign)
        best.append((candidates[k][c], float(scores[k, c]), f"min area {areas[c]}"))
    greedy.offer("min_area_after_morphology", best)


def final_scores(source: OOFStream, metric: CompetitionMetric, params: list[ClassParams],
                 exclusive: bool) -> dict:
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


def tune(source: OOFStream, classes: list[str], metric: CompetitionMetric, tcfg) -> dict:
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


__all__ = ["Greedy", "MORPH_STEPS", "final_scores", "search_morphology", "search_tables", "tune"]
