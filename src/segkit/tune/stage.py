"""The tune stage's input and output: the final ensemble's OOF store in, ``tune.json`` and ``tune/`` out.

``tune.json`` holds the chosen parameters per class, every step's CV, the curves, the plain-pipeline baseline and
the time taken; ``tune/oof_scores.csv`` the tuned and baseline score of every OOF image; ``tune/*.png`` the curves.
The tuning is one unit of work (``segkit.freshness``): skipped while the ensemble OOF, the truth and the search
settings are those it was made from.
"""

from __future__ import annotations

import json
from typing import Callable

import numpy as np
import pandas as pd

from segkit import atomic
from segkit.config import Config
from segkit.data import Competition
from segkit.data.folds import fold_numbers, load_folds
from segkit.errors import DataError, SegkitError
from segkit.freshness import Unit, fingerprint, fingerprints
from segkit.metrics import CompetitionMetric, get_metric
from segkit.oof import fold_oof, score_frame
from segkit.probs import ProbStore, manifest
from segkit.stages import final_ensemble_maker
from segkit.tune.plots import plot_curves
from segkit.tune.search import tune
from segkit.tune.stream import OOFStream


def plain_score(cfg: Config, metric: CompetitionMetric, truth: Callable[[str], np.ndarray],
                folds: pd.DataFrame) -> tuple[str, float] | None:
    """The first model's raw training OOF at p > 0.5 over every fold of the fold file: the pipeline without TTA,
    ensembling or tuning. None when its fold stores are not all there."""
    if not cfg.models:
        return None
    model = cfg.models[0].name
    numbers = fold_numbers(folds)
    if not all(ProbStore.is_complete(cfg.layout.fold(model, k).oof) for k in numbers):
        return None
    view = fold_oof(cfg.layout, model, numbers, list(folds["id"]))
    scores = score_frame(view, truth, metric, exclusive=cfg.data.mode == "multiclass")["score"]
    return (model, float(scores.mean())) if len(scores) else None


def tune_unit(cfg: Config, plain_folds: list[int]) -> Unit:
    """The tuning as a unit of work: tune.json and the per-image scores, decided by the search settings, the
    metric, the truth and the ensemble OOF (and the first model's fold OOF, for the plain baseline)."""
    layout = cfg.layout
    paths = layout.tune
    plain = [manifest(layout.fold(cfg.models[0].name, k).oof) for k in plain_folds] if cfg.models else []
    inputs = {"tune": cfg.tune.model_dump(), "metric": cfg.metric, "mode": cfg.data.mode,
              "classes": cfg.data.classes, "root": str(cfg.data.root),
              "ensemble_oof": fingerprint(manifest(layout.final_ensemble.oof)), "plain": fingerprints(plain)}
    return Unit(f"tune: {paths.json}", paths.stamp, [paths.scores, paths.json], inputs)


def run(cfg: Config) -> int:
    layout = cfg.layout
    store_dir = layout.final_ensemble.oof
    if not ProbStore.is_complete(store_dir):
        raise SegkitError(f"{store_dir}: no complete ensemble OOF store; run `segkit {final_ensemble_maker(layout)}` "
                          f"first")
    store = ProbStore(store_dir)
    if list(store.classes) != list(cfg.data.classes):
        raise DataError(f"{store_dir}: classes {store.classes} differ from data.classes {cfg.data.classes}")
    comp = Competition(cfg.data, seed=cfg.seed)
    folds = load_folds(cfg, comp) if layout.folds_file.exists() else None
    unit = tune_unit(cfg, fold_numbers(folds) if folds is not None else [])
    paths = layout.tune
    if unit.fresh():
        print(unit.kept(f"CV {json.loads(paths.json.read_text())['cv']:.4f}"))
        return 0
    metric = get_metric(cfg.metric, key="metric")
    exclusive = cfg.data.mode == "multiclass"
    result = tune(OOFStream(store, comp.read_mask, exclusive), list(cfg.data.classes), metric, cfg.tune)
    per_image = result.pop("_per_image")
    plain = plain_score(cfg, metric, comp.read_mask, folds) if folds is not None else None
    result["baseline"] = {"ensemble_oof_p>0.5": result["cv_baseline"],
                          "plain_pipeline": plain[1] if plain else None,
                          "plain_model": plain[0] if plain else None}
    unit.begin()
    write_per_image(paths.scores, per_image, list(cfg.data.classes))
    result["plots"] = [str(p) for p in plot_curves(result["curves"], paths, metric.name)]
    atomic.write_json(paths.json, result)
    unit.done()

    for step in result["steps"]:
        kept = "" if step["step"] == "baseline" else ("  kept" if step["kept"] else "  rejected")
        print(f"tune: {step['step']:<28} CV {step['cv']:.4f}{kept}")
    for name, text in result["summary"].items():
        print(f"tune: {name}: {text}")
    if plain:
        print(f"tune: plain pipeline ({plain[0]}, raw OOF p>0.5): {plain[1]:.4f}")
    print(f"tune: {metric.name} CV {result['cv']:.4f} (ensemble OOF p>0.5: {result['cv_baseline']:.4f}) "
          f"on {result['n_images']} images in {result['seconds']['total']:.1f} s -> {paths.json}")
    return 0


def write_per_image(path, per_image: dict, classes: list[str]) -> None:
    """oof_scores.csv: id, tuned and baseline score, truth and predicted pixels[, per-class scores]."""
    frame = pd.DataFrame({"id": per_image["ids"], "score": per_image["score"], "baseline": per_image["baseline"],
                          "truth_px": per_image["truth_px"].astype(np.int64),
                          "pred_px": per_image["pred_px"].astype(np.int64)})
    if len(classes) > 1:
        for k, name in enumerate(classes):
            frame[f"score_{name}"] = per_image["per_class"][:, k]
    atomic.write_csv(path, frame)


__all__ = ["plain_score", "run", "tune_unit", "write_per_image"]
