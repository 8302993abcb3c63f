"""``segkit ensemble``: combine the models' probabilities, comparing every method on OOF first.

Inputs per model: its OOF probabilities over every train id (``segkit.oof.ModelOOF``) and its test store. Steps:

1. fit: one streaming pass over the OOF (random order); each method observes every image, and a bounded sample of
   whole images (``ensemble.fit_pixels``) is kept in RAM for the methods that fit weights or thresholds; then each
   method fits, fold-aware (no pass when no method learns anything: ``mean`` alone);
2. CV: a second pass scores every method's OOF output, as it would be stored (uint8), with the competition metric
   at threshold 0.5 (p > 0.5, the common yardstick; tuning comes later), per fold and overall, next to each single
   model;
3. the chosen method (``ensemble.choose`` or the best CV) writes the ensemble's ``oof/`` and ``test/`` stores; when
   the choice is known before the CV (one method, or ``ensemble.choose``) the CV pass writes ``oof/`` itself.

The stores are read from disk pass by pass (12 000 images of 256 x 1600 x 4 are 20 GB per model), so the passes
saved are most of the stage's time on a big set; the CV and writing passes are spread over ``cpu_workers``.

Outputs, in ``<run_dir>/ensemble/`` (``ensemble_pl<r>/`` for pseudo round r): ``oof/`` and ``test/`` (probability
stores), ``cv.csv`` (one row per method and per single model), ``state.json`` (what the chosen method combines
test images with, exactly: weights, lookup tables, LightGBM text models; what ``restore`` reads back for an offline
bundle), ``choice.json`` (method, CV, learnt parameters, written last). The ensemble is one unit of work
(``segkit.artifacts.freshness``): skipped while its models' stores, the fold file and the ensemble settings are those
it was made from, redone when a model's stores were rewritten.
"""

from __future__ import annotations

import time
from typing import Optional

import numpy as np
import pandas as pd

from segkit.artifacts import atomic
from segkit.artifacts.freshness import Unit, fingerprint, fingerprints
from segkit.artifacts.probs import ProbWriter, manifest
from segkit.compute import pool
from segkit.config import Config
from segkit.data import Competition
from segkit.data.folds import fold_numbers, load_folds
from segkit.ensemble import (
    MODEL_PREFIX,
    Method,
    as_uint8,
    build_method,
    check_choice,
    method_names,
    picked,
    write_store,
)
from segkit.ensemble import chosen as chosen_files
from segkit.ensemble.base import FitSample, Setup, sample_stride
from segkit.ensemble.sources import TestSource, read_all
from segkit.errors import ConfigError, DataError
from segkit.metrics import CompetitionMetric, get_metric
from segkit.oof import ModelOOF
from segkit.progress import bar
from segkit.threshold import binarize

__all__ = ["run"]


def ensemble_unit(cfg: Config, models: list[str], names: list[str], sources) -> Unit:
    """The ensemble as a unit of work: its outputs, and the models' stores, fold file and settings that decide
    them."""
    paths = cfg.layout.ensemble
    inputs = {
        "models": models, "methods": names, "metric": cfg.metric, "seed": cfg.seed,
        "options": cfg.ensemble.model_dump(), "folds": fingerprint(cfg.layout.folds_file),
        "stores": [[s.model, s.kind, fingerprints(s.markers())] for s in sources],
    }
    outputs = [manifest(paths.oof), manifest(paths.test), paths.cv, paths.state, paths.choice]
    return Unit(f"ensemble: {paths.dir}", paths.stamp, outputs, inputs)


# --------------------------------------------------------------------------------------------------- passes


def fit_methods(methods: list[Method], oof: list[ModelOOF], folds: pd.DataFrame, read_truth, budget: int,
                seed: int) -> dict[str, float]:
    """Pass 1: every method observes every OOF image; the sample keeps whole images (on a grid subsampled for big
    sets) up to ``budget`` pixel values per model; then each method fits. Returns seconds spent per method."""
    seconds = {m.name: 0.0 for m in methods}
    if not any(m.learns() for m in methods):
        return seconds  # nothing to learn: a pass over every model's OOF saved (on a big set, minutes of disk)
    order = np.random.default_rng(seed).permutation(len(folds))
    ids, fold_of = folds["id"].to_numpy(), folds["fold"].to_numpy()
    first = oof[0][ids[order[0]]].size if len(ids) else 1
    sample = FitSample(budget if any(m.uses_sample for m in methods) else 0,
                       stride=sample_stride(len(ids), first, budget))
    for i in bar(order, "ensemble: fit"):
        image_id, fold = ids[i], int(fold_of[i])
        probs = read_all(oof, image_id)
        truth = read_truth(image_id)
        _check_truth(image_id, probs[0], truth)
        sample.offer(image_id, fold, probs, truth)
        for m in methods:
            t0 = time.perf_counter()
            m.observe(image_id, fold, probs, truth)
            seconds[m.name] += time.perf_counter() - t0
    if sample.budget:
        grid = f", every {sample.stride}th row and column" if sample.stride > 1 else ""
        print(f"ensemble: fitting on {len(sample.images)} of {len(ids)} OOF images held in RAM{grid} "
              f"({sample.used:,} of ensemble.fit_pixels={budget:,} pixel values per model)")
    for m in methods:
        t0 = time.perf_counter()
        m.fit(sample)
        seconds[m.name] += time.perf_counter() - t0
    return seconds


def _check_truth(image_id: str, probs: np.ndarray, truth: np.ndarray) -> None:
    if probs.shape != truth.shape:
        raise DataError(f"id {image_id!r}: OOF probabilities are {probs.shape}, the mask is {truth.shape}")


# Thresholds of the informative "best single threshold" columns of the CV table.
SWEEP = np.round(np.arange(0.1, 0.91, 0.05), 2)


def cross_validate(methods: list[Method], models: list[str], oof: list[ModelOOF], folds: pd.DataFrame, read_truth,
                   metric: CompetitionMetric, seconds: dict[str, float], workers: int = 1,
                   keep: Optional[tuple[ProbWriter, str]] = None) -> pd.DataFrame:
    """Pass 2: per-image scores of every method's stored-as-uint8 OOF output (and of every single model) at 0.5,
    reduced to the overall mean and one mean per fold; the images are spread over ``workers`` processes.
    ``keep``: (writer, row) when the choice is known before the scores: that row's outputs are written on the way,
    exactly as ``write_store`` writes them, which saves another pass over every model's OOF.

    When the metric has a fast threshold sweep, two informative columns follow: the CV at the single threshold that
    is best on the whole OOF (``best_t``, ``cv_best_t``). That threshold is picked on the data it scores, so it is
    optimistic; it shows which methods only lose at 0.5 through calibration. The choice uses ``cv``."""
    rows = [m.name for m in methods] + [MODEL_PREFIX + n for n in models]
    sweep = metric.has_fast_sweep
    ids, fold_of = list(folds["id"]), folds["fold"].to_numpy()

    kept = rows.index(keep[1]) if keep else None

    def one(i: int) -> tuple[list[float], list[np.ndarray], list[float]]:
        probs = read_all(oof, ids[i])
        truth = np.asarray(read_truth(ids[i])).astype(bool)
        _check_truth(ids[i], probs[0], truth)
        outputs, spent = [], []
        for m in methods:
            t0 = time.perf_counter()
            outputs.append(as_uint8(m.combine(probs, ids[i], int(fold_of[i]))))
            spent.append(time.perf_counter() - t0)
        outputs += [np.asarray(q) for q in probs]
        if keep:
            keep[0].write(ids[i], outputs[kept])
        scored = [metric(binarize(q).view(bool), truth) for q in outputs]
        swept = [metric.score_above([q], [truth], SWEEP)[:, 0] for q in outputs] if sweep else []
        return scored, swept, spent

    per_image = pool.map_indices(one, len(ids), workers, "ensemble: OOF CV")
    for m, spent in zip(methods, zip(*[p[2] for p in per_image])):
        seconds[m.name] += sum(spent)
    scores = {r: [p[0][j] for p in per_image] for j, r in enumerate(rows)}
    swept = {r: [p[1][j] for p in per_image] for j, r in enumerate(rows)} if sweep else {}
    fold_ids = folds["fold"].to_numpy()
    uniq = sorted(set(int(f) for f in fold_ids))
    table = []
    for r in rows:
        s = np.asarray(scores[r], dtype=np.float64)
        rec = {"method": r, "cv": float(s.mean())}
        for f in uniq:
            rec[f"fold{f}"] = float(s[fold_ids == f].mean())
        rec["fold_std"] = float(np.std([rec[f"fold{f}"] for f in uniq]))
        if sweep:
            curve = np.stack(swept[r]).mean(0)  # (T,)
            best = int(np.argmax(metric.sign * curve))
            rec["best_t"] = float(SWEEP[best])
            rec["cv_best_t"] = float(curve[best])
        rec["seconds"] = round(seconds.get(r, 0.0), 2)
        table.append(rec)
    return pd.DataFrame(table)


def choose(cfg: Config, table: pd.DataFrame, names: list[str], higher_is_better: bool = True) -> str:
    pick = picked(cfg)
    if pick is not None:
        return pick
    ranked = table[table["method"].isin(names)].sort_values("cv", ascending=not higher_is_better, kind="stable")
    return str(ranked.iloc[0]["method"])


def run(cfg: Config) -> int:
    if not cfg.models:
        raise ConfigError("models: no models to ensemble")
    comp = Competition(cfg.data, seed=cfg.seed)
    folds = load_folds(cfg, comp)
    models = [m.name for m in cfg.models]
    names = method_names(cfg)
    check_choice(cfg, names, models)
    classes = list(cfg.data.classes)
    oof = [ModelOOF(cfg.layout, m, folds, classes) for m in models]
    test_ids = comp.test_ids
    test = [TestSource(cfg.layout, m, test_ids, classes) for m in models]
    paths = cfg.layout.ensemble
    unit = ensemble_unit(cfg, models, names, oof + test)
    if unit.skip(lambda: chosen_files.read(paths.choice).summary()):
        return 0
    atomic.clean_tmp(paths.dir)

    metric = get_metric(cfg.metric, key="metric")
    setup = Setup(
        models=models, classes=classes, mode=cfg.data.mode,
        folds=fold_numbers(folds), metric=metric, seed=cfg.seed,
        options=cfg.ensemble, extra=comp.extra, n_oof=len(folds),
    )
    methods = [build_method(n, setup) for n in names]
    print(f"ensemble: {len(models)} model(s) ({', '.join(f'{s.model} [{s.kind}]' for s in oof)}), "
          f"methods {', '.join(names)}, {len(folds)} OOF images, {len(test_ids)} test images")
    seconds = fit_methods(methods, oof, folds, comp.read_mask, cfg.ensemble.fit_pixels, cfg.seed)
    workers = pool.workers(cfg.cpu_workers) if all(m.forks for m in methods) else 1
    ids = list(folds["id"])
    known = picked(cfg) or (names[0] if len(names) == 1 else None)  # the choice, where no score decides it

    def method_of(chosen: str) -> Method:
        return build_method(chosen, setup) if chosen.startswith(MODEL_PREFIX) else methods[names.index(chosen)]

    with unit.writing():
        if known is None:  # the best CV chooses: the OOF store is written once the scores are in
            table = cross_validate(methods, models, oof, folds, comp.read_mask, metric, seconds, workers)
            chosen = choose(cfg, table, names, metric.higher_is_better)
            method = method_of(chosen)
            fold_of = {i: int(f) for i, f in zip(folds["id"], folds["fold"])}
            write_store(paths.oof, classes, ids, fold_of, oof, method, workers if method.forks else 1)
        else:  # known beforehand: the scoring pass writes the OOF store on the way
            chosen, method = known, method_of(known)
            with atomic.atomic_dir(paths.oof) as tmp:
                writer = ProbWriter(tmp, classes)
                table = cross_validate(methods, models, oof, folds, comp.read_mask, metric, seconds, workers,
                                       keep=(writer, chosen))
                writer.finish(ids)
        print(f"ensemble CV ({cfg.metric} at threshold 0.5):")
        with pd.option_context("display.float_format", "{:.5f}".format, "display.width", 200):
            print(table.to_string(index=False))
        write_store(paths.test, classes, test_ids, None, test, method, workers if method.forks else 1)
        atomic.write_csv(paths.cv, table)
        cv = float(table.loc[table["method"] == chosen, "cv"].iloc[0])
        chosen_files.write(paths.choice, paths.state, {
            "method": chosen, "cv": cv, "metric": cfg.metric, "threshold": 0.5, "models": models,
            "chosen_by": "ensemble.choose" if cfg.ensemble.choose else "best CV", "params": method.params(),
        }, method.state())
    print(f"ensemble: chose {chosen} (CV {cv:.5f}); wrote {paths.oof}, {paths.test}, {paths.cv.name}, "
          f"{paths.choice.name}")
    return 0
