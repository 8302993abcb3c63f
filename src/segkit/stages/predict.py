"""``segkit predict``: test probabilities per model, averaged over its folds (and cycle snapshots), with TTA.

For each model of the config:

- ``<run_dir>/<model>/test/``: every test image predicted by every fold's checkpoint — ``best.pt`` (or ``last.pt``,
  ``predict.checkpoint``) plus the fold's ``snapshot<c>.pt`` files when ``predict.snapshots`` — each with the TTA
  named by ``predict.tta``, merged by ``predict.tta_merge``. A fold's checkpoints are averaged first, quantised
  like a store, and the folds then weigh equally, so a fold with more snapshots does not count more and the store
  is exactly the mean of the fold stores below, kept or not.
- ``<run_dir>/<model>/test_folds/fold<k>/`` when a pseudo round follows (``pseudo.rounds`` > ``pseudo.round``):
  fold k's probabilities alone, from the same pass (no extra network work), which the next round's fold-k labels
  come from (``segkit.stages.pseudo``). They cost a test store's disk per fold.
- ``<run_dir>/<model>/oof_tta/`` (``predict.repredict_oof``): each fold's validation images re-predicted by that
  fold's own checkpoints with the same TTA, so the OOF the ensemble and tuning see is made like the test
  predictions (the ensemble prefers this store over the fold OOF that training wrote without TTA). Each fold is a
  unit of its own, so ``--fold K`` re-predicts one fold; the store is complete once every fold is in.

Stores are uint8 at each image's original size (the stride padding is cropped off). Images larger than
``predict.tile_size`` are predicted in overlapping blended tiles (``segkit.inference.tiling``). All checkpoints of a
model are held on the device together, so each image is read and predicted in one go; memory is one network per
checkpoint.

Each store (and each fold's part of the OOF store) is a unit of work (``segkit.artifacts.freshness``) whose stamp
records the checkpoints and the prediction settings: images already in a store made from the same ones are kept (a
killed run resumes), a store made from others is predicted afresh. Under ``torchrun`` each rank predicts its share of
the ids and rank 0 finishes the store.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

from segkit.artifacts.freshness import Unit
from segkit.artifacts.probs import ProbWriter, manifest
from segkit.compute.device import resolve_device
from segkit.compute.distributed import World, barrier_if_many, setup
from segkit.config import Config
from segkit.config.schema import ModelConfig
from segkit.data import Competition
from segkit.data.folds import check_fold, fold_numbers, load_folds
from segkit.errors import ConfigError
from segkit.inference.engine import Predictor
from segkit.inference.outputs import Outputs, prepare_store, store_inputs
from segkit.inference.repredict import predict_oof
from segkit.models import dims_of
from segkit.models.checkpoint import fold_checkpoints


def store_unit(cfg: Config, model: str, per_fold: dict[int, list[Path]]) -> Unit:
    """A model's test store as a unit of work: every fold's checkpoints and the prediction settings decide it."""
    paths = cfg.layout.model(model)
    return Unit(f"predict: models[{model}] test ({paths.test})", paths.test_stamp, [manifest(paths.test)],
                store_inputs(cfg, per_fold, "test: mean of the quantised folds"))


def by_fold(cfg: Config) -> bool:
    """Whether a later pseudo round takes labels from this config's test predictions fold by fold (its fold k from
    fold k's checkpoints alone, which never saw fold k's labels: ``segkit.stages.pseudo``)."""
    return cfg.pseudo.rounds > cfg.pseudo.round


def fold_test_unit(cfg: Config, model: str, k: int, checkpoints: list[Path]) -> Unit:
    """Fold k's own test store: every test image by that fold's checkpoints alone."""
    paths = cfg.layout.model(model)
    folder = paths.test_fold(k)
    return Unit(f"predict: models[{model}] fold {k} test ({folder})", paths.test_fold_stamp(k), [manifest(folder)],
                store_inputs(cfg, {k: checkpoints}, "test_fold"))


def predict_test(cfg: Config, comp: Competition, model_cfg: ModelConfig, fold_list: list[int], device,
                 world: World) -> None:
    """A model's test store, the mean of its folds' predictions; when a pseudo round follows, each fold's own
    store too, from the same pass. A store already complete is kept, so fold stores asked for later (a round
    added to a finished experiment) cost a pass that leaves the model's store untouched."""
    per_fold = {k: fold_checkpoints(cfg, model_cfg.name, k) for k in fold_list}
    paths = cfg.layout.model(model_cfg.name)
    units = [(store_unit(cfg, model_cfg.name, per_fold), paths.test)]
    if by_fold(cfg):
        units += [(fold_test_unit(cfg, model_cfg.name, k, c), paths.test_fold(k)) for k, c in per_fold.items()]
    todo = [not unit.fresh() for unit, _ in units]  # decided once, before any rank writes a stamp
    barrier_if_many(world)
    for (unit, _), wanted in zip(units, todo):
        if not wanted:
            print(unit.kept())
    if not any(todo):
        return
    for (unit, folder), wanted in zip(units, todo):
        if wanted:
            prepare_store(unit, folder, world.is_main)
    barrier_if_many(world)
    writers = [ProbWriter(folder, list(cfg.data.classes)) if wanted else None for (_, folder), wanted in
               zip(units, todo)]
    out = Outputs(writers[0], writers[1:] if by_fold(cfg) else [None] * len(per_fold))
    ids = comp.test_ids
    n_left = sum(not out.has(i) for i in ids)
    what = ", ".join(str(folder) for (_, folder), wanted in zip(units, todo) if wanted)
    print(f"predict: models[{model_cfg.name}]: {sum(map(len, per_fold.values()))} checkpoint(s) over "
          f"{len(per_fold)} fold(s), TTA {cfg.predict.tta_of(dims_of(model_cfg))}; {n_left} of {len(ids)} test "
          f"images to do -> {what}", flush=True)
    predictor = Predictor(cfg, list(per_fold.values()), device)
    predictor.predict(comp, ids, "test", out, world, desc=f"{model_cfg.name} test")
    del predictor
    barrier_if_many(world)
    if world.is_main:
        # The fold stores first: the model's store is the one whose manifest says the whole pass is complete.
        for (unit, _), writer in list(zip(units, writers))[::-1]:
            if writer is not None:
                unit.done()
                writer.finish(ids)


def run(cfg: Config, model: Optional[str] = None, fold: Optional[int] = None) -> int:
    """Every model's test store and (``predict.repredict_oof``) OOF re-prediction; ``--fold K`` only that fold's
    OOF re-prediction (the test store needs every fold)."""
    models = [cfg.model(model)] if model else list(cfg.models)
    if not models:
        raise ConfigError("models: no model configured")
    comp = Competition(cfg.data, seed=cfg.seed)
    folds = load_folds(cfg, comp)
    if fold is not None:
        check_fold(folds, fold, cfg.layout.folds_file)
        if not cfg.predict.repredict_oof:
            print(f"predict: --fold {fold}: nothing to do for one fold (the test store needs every fold; "
                  f"predict.repredict_oof: true re-predicts a fold's OOF)")
            return 0
    fold_list = fold_numbers(folds)
    device = resolve_device(cfg.device)
    world = setup(device)
    began = time.perf_counter()
    for m in models:
        if fold is None:
            predict_test(cfg, comp, m, fold_list, device, world)
        if cfg.predict.repredict_oof:
            if fold is None:
                predict_oof(cfg, comp, m, folds, device, world)
            else:  # one fold's part; the store is finished by a run over every fold
                predict_oof(cfg, comp, m, folds[folds["fold"] == fold], device, world, finish=False)
    print(f"predict: done in {time.perf_counter() - began:.1f}s on {device}")
    return 0


__all__ = ["by_fold", "fold_test_unit", "predict_test", "run", "store_unit"]
