"""The tune stage's input and output: the final ensemble's OOF store in, ``tune.json`` and ``tune/`` out.

``tune.json`` holds the chosen parameters per class, every step's CV, the curves, the plain-pipeline baseline and
the time taken; ``tune/oof_scores.csv`` the tuned and baseline score of every OOF image; ``tune/*.png`` the curves.
The tuning is one unit of work (``segkit.artifacts.freshness``): skipped while the ensemble OOF, the truth and the
search settings are those it was made from.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import pandas as pd

from segkit.artifacts import atomic
from segkit.artifacts.freshness import Unit, fingerprint, fingerprints
from segkit.artifacts.probs import ProbStore, manifest
from segkit.commands import final_store
from segkit.compute import pool
from segkit.config import Config
from segkit.data import Competition
from segkit.data.folds import fold_numbers, fold_of, load_folds
from segkit.metrics import CompetitionMetric, get_metric
from segkit.oof import fold_oof, score_frame
from segkit.postprocess import tuned as tune_json
from segkit.postprocess.masks import params_list
from segkit.stages.tune.instances import tune_instances
from segkit.stages.tune.plots import plot_curves
from segkit.stages.tune.search import tune
from segkit.stages.tune.stream import OOFStream
from segkit.stages.tune.volumes import tune_volumes


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
    scores = score_frame(view, truth, metric, exclusive=cfg.data.mode == "multiclass",
                         workers=pool.workers(cfg.cpu_workers))["score"]
    return (model, float(scores.mean())) if len(scores) else None


def tune_unit(cfg: Config, plain_folds: list[int]) -> Unit:
    """The tuning as a unit of work: tune.json and the per-image scores, decided by the search settings, the
    metric, the truth and the ensemble OOF (and the first model's fold OOF, for the plain baseline)."""
    layout = cfg.layout
    paths = layout.tune
    plain = [manifest(layout.fold(cfg.models[0].name, k).oof) for k in plain_folds] if cfg.models else []
    inputs = {"tune": cfg.tune.model_dump(), "metric": cfg.metric, "mode": cfg.data.mode,
              "classes": cfg.data.classes, "root": str(cfg.data.root),
              "ensemble_oof": fingerprint(manifest(layout.final_ensemble.oof)), "plain": fingerprints(plain),
              # the folds decide the nested estimate
              "folds": fingerprint(layout.folds_file), "format": tune_json.VERSION}
    return Unit(f"tune: {paths.json}", paths.stamp, [paths.scores, paths.json], inputs)


def run(cfg: Config) -> int:
    layout = cfg.layout
    store = final_store(cfg, "oof")
    comp = Competition(cfg.data, seed=cfg.seed)
    folds = load_folds(cfg, comp) if layout.folds_file.exists() else None
    unit = tune_unit(cfg, fold_numbers(folds) if folds is not None else [])
    paths = layout.tune
    if unit.skip(lambda: _kept(tune_json.Tuned.read(paths.json, cfg.data.classes), cfg.metric)):
        return 0
    metric = get_metric(cfg.metric, key="metric")
    exclusive = cfg.data.mode == "multiclass"
    source = OOFStream(store, comp.read_mask, exclusive, workers=pool.workers(cfg.cpu_workers))
    searched = tune(source, list(cfg.data.classes), metric, cfg.tune,
                    folds=folds_of(store.ids, folds))
    result, per_image = searched.record, searched.per_image
    plain = plain_score(cfg, metric, comp.read_mask, folds) if folds is not None else None
    result["baseline"] = {"ensemble_oof_p>0.5": result["cv_baseline"],
                          "plain_pipeline": plain[1] if plain else None,
                          "plain_model": plain[0] if plain else None}
    # the fold file the nested choices are keyed by (evaluate refuses to apply them to other folds)
    result["folds_file"] = fingerprint(layout.folds_file)
    if cfg.data.volumes is not None and cfg.tune.volume_cleanup:
        classes = list(cfg.data.classes)
        nested = {int(f): params_list(v["classes"], classes, where=f"nested fold {f}")
                  for f, v in (result.get("nested") or {}).items()}
        result["volume_cleanup"] = tune_volumes(
            comp.volume_set("train"), store.ids, fold_of(folds) if folds is not None else None,
            lambda i: np.asarray(store[i]), comp.read_mask, classes, params_list(result["classes"], classes),
            nested, exclusive, cfg.tune.min_volumes, cfg.tune.volume_threshold_shifts)
    if cfg.data.instances is not None:
        result["instances"] = tune_instances(store.ids, folds_of(store.ids, folds), lambda i: np.asarray(store[i]),
                                             comp.instance_map, cfg.tune.instances,
                                             "contour" in cfg.data.instances.targets)
    with unit.writing():
        write_per_image(paths.scores, per_image, list(cfg.data.classes))
        result["plots"] = [str(p) for p in plot_curves(result["curves"], paths, metric.name)]
        written = tune_json.write(paths.json, result, cfg.data.classes)

    for step in result["steps"]:
        kept = "" if step["step"] == "baseline" else ("  kept" if step["kept"] else "  rejected")
        print(f"tune: {step['step']:<28} CV {step['cv']:.4f}{kept}")
    for name, text in result["summary"].items():
        print(f"tune: {name}: {text}")
    if plain:
        print(f"tune: plain pipeline ({plain[0]}, raw OOF p>0.5): {plain[1]:.4f}")
    volume = result.get("volume_cleanup")
    if volume:
        for name, text in volume["summary"].items():
            print(f"tune: {name}: {text}")
        nested_text = (f"{volume['dice_before_nested']:.4f} -> {volume['cv_nested']:.4f} nested, "
                       if volume["cv_nested"] is not None else "")
        print(f"tune: per-volume dice, threshold and 3D clean-up: {nested_text}{volume['dice_before']:.4f} -> "
              f"{volume['dice_after']:.4f} in-sample, on {volume['volumes']} OOF volumes")
    objects = result.get("instances")
    if objects:
        nested_text = f"{objects['cv_nested']:.4f} nested, " if objects["cv_nested"] is not None else ""
        print(f"tune: instances: {objects['summary']}; object AP {nested_text}{objects['cv']:.4f} in-sample "
              f"(connected components p>0.5: {objects['components_p0.5']:.4f}) on {objects['images']} OOF images "
              f"in {objects['seconds']:.0f} s")
    print(f"tune: {written.scored_as(metric.name)} CV {written.cv_text()} (ensemble OOF p>0.5: "
          f"{result['cv_baseline']:.4f}; keep rule {result['keep_rule']}) on {result['n_images']} images in "
          f"{result['seconds']['total']:.1f} s -> {paths.json}")
    return 0


def _kept(saved: tune_json.Tuned, metric: str) -> str:
    return f"{saved.scored_as(metric)} CV {saved.cv_text()}"


def folds_of(ids: list[str], folds: pd.DataFrame | None) -> list[int] | None:
    """The fold of each OOF image, or None (no fold file, or images it does not list): no nested estimate."""
    if folds is None:
        return None
    fold = fold_of(folds)
    missing = [i for i in ids if i not in fold]
    if missing:
        print(f"tune: note: {len(missing)} OOF image(s) are not in the fold file (e.g. {missing[0]!r}); no nested "
              f"estimate")
        return None
    return [fold[i] for i in ids]


def write_per_image(path, per_image: dict, classes: list[str]) -> None:
    """oof_scores.csv: id, tuned and baseline score, truth and predicted pixels[, per-class scores]."""
    frame = pd.DataFrame({"id": per_image["ids"], "score": per_image["score"], "baseline": per_image["baseline"],
                          **({"nested": per_image["nested"]} if "nested" in per_image else {}),
                          "truth_px": per_image["truth_px"].astype(np.int64),
                          "pred_px": per_image["pred_px"].astype(np.int64)})
    if len(classes) > 1:
        for k, name in enumerate(classes):
            frame[f"score_{name}"] = per_image["per_class"][:, k]
    atomic.write_csv(path, frame)


__all__ = ["folds_of", "plain_score", "run", "tune_unit", "write_per_image"]
