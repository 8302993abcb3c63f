"""``segkit predict``: test probabilities per model, averaged over its folds (and cycle snapshots), with TTA.

For each model of the config:

- ``<run_dir>/<model>/test/``: every test image predicted by every fold's checkpoint — ``best.pt`` (or ``last.pt``,
  ``predict.checkpoint``) plus the fold's ``snapshot<c>.pt`` files when ``predict.snapshots`` — each with the TTA
  named by ``predict.tta``, merged by ``predict.tta_merge``. A fold's checkpoints are averaged first and the folds
  then weigh equally, so a fold with more snapshots does not count more.
- ``<run_dir>/<model>/oof_tta/`` (``predict.repredict_oof``): each fold's validation images re-predicted by that
  fold's own checkpoints with the same TTA, so the OOF the ensemble and tuning see is made like the test
  predictions (the ensemble prefers this store over the fold OOF that training wrote without TTA). Each fold is a
  unit of its own, so ``--fold K`` re-predicts one fold; the store is complete once every fold is in.

Stores are uint8 at each image's original size (the stride padding is cropped off). Images larger than
``predict.tile_size`` are predicted in overlapping blended tiles (``segkit.tiling``). All checkpoints of a model are
held on the device together, so each image is read and predicted in one go; memory is one network per checkpoint.

Each store (and each fold's part of the OOF store) is a unit of work (``segkit.freshness``) whose stamp records the
checkpoints and the prediction settings: images already in a store made from the same ones are kept (a killed run
resumes), a store made from others is predicted afresh. Under ``torchrun`` each rank predicts its share of the ids
and rank 0 finishes the store.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader

from segkit import atomic
from segkit.config import Config
from segkit.config.schema import ModelConfig
from segkit.data import Competition, SegDataset, by_size, pad_collate, unpad
from segkit.data.folds import check_fold, fold_numbers, load_folds
from segkit.device import resolve_device
from segkit.errors import ConfigError, DataError
from segkit.freshness import Unit, fingerprints, kept
from segkit.layout import part_stamp
from segkit.probs import ProbStore, ProbWriter, image_file, manifest, mean_uint8
from segkit.progress import bar
from segkit.tiling import predict_tiled, stack_groups
from segkit.checkpoint import load_model
from segkit.distributed import World, barrier, setup
from segkit.tta import TTAPredictor, average_predictions

# ------------------------------------------------------------------------------------------------ checkpoints


def fold_checkpoints(cfg: Config, model: str, fold: int) -> list[Path]:
    """The checkpoints one fold predicts with: its best (or last) and, if asked, its cycle snapshots in order."""
    paths = cfg.layout.fold(model, fold)
    if not ProbStore.is_complete(paths.oof):
        raise DataError(f"{paths.dir}: fold {fold} of model {model!r} has not finished training (no complete oof/); "
                        f"run `segkit train` first")
    main = paths.checkpoint(cfg.predict.checkpoint)
    if not main.exists():
        raise DataError(f"{main}: missing; set predict.checkpoint to a kept checkpoint (train.keep) or retrain")
    return [main] + (paths.snapshots() if cfg.predict.snapshots else [])


def _inputs(cfg: Config, checkpoints: dict[int, list[Path]], kind: str) -> dict:
    """What decides a store's probabilities: the checkpoints (as files on disk) and the prediction settings."""
    p = cfg.predict
    return {"kind": kind, "tta": p.tta, "tta_merge": p.tta_merge, "amp": p.amp, "tile_size": p.tile_size,
            "tile_overlap": p.tile_overlap, "tile_blend": p.tile_blend,
            "checkpoints": {str(k): fingerprints(v) for k, v in checkpoints.items()}}


def store_unit(cfg: Config, model: str, per_fold: dict[int, list[Path]]) -> Unit:
    """A model's test store as a unit of work: every fold's checkpoints and the prediction settings decide it, and
    whether it is the mean of the fold stores (when a pseudo round follows) or one pass over every checkpoint."""
    paths = cfg.layout.model(model)
    return Unit(f"predict: models[{model}] test ({paths.test})", paths.test_stamp, [manifest(paths.test)],
                _inputs(cfg, per_fold, "test (mean of fold stores)" if by_fold(cfg) else "test"))


def oof_part_unit(cfg: Config, model: str, folder: Path, k: int, ids: list[str]) -> Unit:
    """Fold k's part of an OOF re-prediction store: its images, decided by that fold's checkpoints and the
    prediction settings. Its completion marker is the store's manifest, which the store gets once every part is
    in."""
    return Unit(f"predict: models[{model}] fold {k} OOF re-prediction", part_stamp(folder, k),
                [image_file(folder, i) for i in ids], _inputs(cfg, {k: fold_checkpoints(cfg, model, k)}, "oof_tta"),
                marker=manifest(folder))


def _prepare(unit: Unit, folder: Path, is_main: bool, images: Optional[list[Path]] = None) -> None:
    """Ready ``folder`` for ``unit`` and stamp it begun. Unless the unit may resume (same inputs), what it holds from
    other inputs goes first: the whole store, or, for one fold's part of a store, that part's ``images``."""
    if not is_main:
        return
    if not unit.resumable():
        if images is not None:
            for path in images:
                path.unlink(missing_ok=True)
        elif folder.exists():
            shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    atomic.clean_tmp(folder)
    unit.begin()


class CheckpointAverage:
    """The networks of one model's checkpoints, each wrapped in TTA, averaged with per-checkpoint weights."""

    def __init__(self, cfg: Config, paths: list[Path], weights: list[float], device: torch.device):
        self.device = device
        self.weights = weights
        self.predictors = []
        self.meta: dict = {}
        for path in paths:
            model, meta = load_model(path, device)
            self._check(cfg, path, meta)
            self.meta = meta
            activation = "softmax" if meta["mode"] == "multiclass" else "sigmoid"
            self.predictors.append(TTAPredictor(
                model, tta=cfg.predict.tta, merge=cfg.predict.tta_merge, chunk=cfg.predict.tta_chunk,
                activation=activation, amp=cfg.predict.amp, channels_last=cfg.predict.channels_last,
            ))
        self.multiclass = self.meta.get("mode") == "multiclass"

    @staticmethod
    def _check(cfg: Config, path: Path, meta: dict) -> None:
        if list(meta["classes"]) != list(cfg.data.classes) or meta["mode"] != cfg.data.mode:
            raise ConfigError(f"{path}: trained for {meta['mode']} {meta['classes']}, the config has "
                              f"data.mode {cfg.data.mode} with classes {cfg.data.classes}")
        if meta["channels"] != cfg.data.channels:
            raise ConfigError(f"{path}: trained on {meta['channels']}-channel images, data.channels is "
                              f"{cfg.data.channels}")

    @property
    def pad_to(self) -> int:
        return int(self.meta.get("pad_to", 32))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """(N, K, H, W) foreground probabilities of a batch, float32."""
        p = average_predictions(self.predictors, x, self.weights)
        return p[:, 1:] if self.multiclass else p


def _weights(per_fold: dict[int, list[Path]]) -> tuple[list[Path], list[float]]:
    """Flatten fold -> checkpoints, weighting so every fold counts the same."""
    paths, weights = [], []
    for ckpts in per_fold.values():
        paths += ckpts
        weights += [1.0 / len(ckpts)] * len(ckpts)
    return paths, weights


# ------------------------------------------------------------------------------------------------ prediction


def _to_uint8(p: torch.Tensor) -> np.ndarray:
    """Quantise on the device (a quarter of the bytes to copy back); same rounding as segkit.probs.quantize."""
    p = torch.nan_to_num(p, nan=0.0)
    return torch.round(p * 255.0).clamp_(0, 255).to(torch.uint8).cpu().numpy()


def predict_ids(cfg: Config, comp, ids: list[str], split: str, predict: CheckpointAverage, writer: ProbWriter,
                device: torch.device, world=None, desc: str = "") -> int:
    """Predict the ids not yet in ``writer``'s store and write them; returns how many were predicted. Under DDP
    each rank takes its share of all ``ids`` first and then skips what is on disk, so the shares never depend on
    how far another rank has got."""
    todo = by_size(comp, ids, split)
    if world is not None and world.size > 1:
        todo = todo[world.rank::world.size]
    todo = [i for i in todo if not writer.has(i)]
    if not todo:
        return 0
    p = cfg.predict
    tile = p.tile_size
    if tile is not None and tile % predict.pad_to:
        raise ConfigError(f"predict.tile_size: {tile} is not a multiple of the network stride pad_to={predict.pad_to}")
    ds = SegDataset(comp, todo, split=split, augment=None, pad_to=predict.pad_to, with_mask=False)
    loader = DataLoader(ds, batch_size=p.batch_size, shuffle=False, num_workers=p.workers, collate_fn=pad_collate,
                        pin_memory=device.type == "cuda")
    began = time.perf_counter()
    with torch.inference_mode():
        done = _predict_batches(loader, predict, writer, tile, p, device, desc)
    if desc:
        rate = done / max(time.perf_counter() - began, 1e-9)
        print(f"predict: {desc}: {done} images ({rate:.1f} images/s)", flush=True)
    return done


def _predict_batches(loader, predict: CheckpointAverage, writer: ProbWriter, tile: Optional[int], p,
                     device: torch.device, desc: str = "") -> int:
    done = 0
    for batch in bar(loader, f"predict: {desc}" if desc else "predict", unit="batch"):
        sizes = [tuple(s) for s in batch["size"].tolist()]
        images = batch["image"]
        big = [i for i, (h, w) in enumerate(sizes) if tile is not None and (h > tile or w > tile)]
        small = [i for i in range(len(sizes)) if i not in big]
        if small:
            x = images[small].to(device, non_blocking=True)
            q = _to_uint8(predict(x))  # one copy back per batch
            for j, i in enumerate(small):
                writer.write(batch["id"][i], np.ascontiguousarray(unpad(q[j], sizes[i])))
        for size in dict.fromkeys(sizes[i] for i in big):
            same = [i for i in big if sizes[i] == size]
            for group in stack_groups(same, size, tile, p.tile_overlap, p.batch_size):
                q = _to_uint8(_tiled(predict, images[group], size, p, device))
                for j, i in enumerate(group):
                    writer.write(batch["id"][i], np.ascontiguousarray(q[j]))
        done += len(sizes)
    return done


def _tiled(predict: Callable, images: torch.Tensor, size, p, device: torch.device) -> torch.Tensor:
    """(N, K, H, W) probabilities of a stack of same-size images, tile by tile."""
    images = unpad(images, size).contiguous()
    return predict_tiled(predict, images, p.tile_size, overlap=p.tile_overlap, blend=p.tile_blend,
                         batch_size=p.batch_size, device=device)


def by_fold(cfg: Config) -> bool:
    """Whether a later pseudo round takes labels from this config's test predictions fold by fold (its fold k from
    fold k's checkpoints alone, which never saw fold k's labels: ``segkit.pseudo``)."""
    return cfg.pseudo.rounds > cfg.pseudo.round


def fold_test_unit(cfg: Config, model: str, k: int, checkpoints: list[Path]) -> Unit:
    """Fold k's own test store: every test image by that fold's checkpoints alone."""
    paths = cfg.layout.model(model)
    folder = paths.test_fold(k)
    return Unit(f"predict: models[{model}] fold {k} test ({folder})", paths.test_fold_stamp(k), [manifest(folder)],
                _inputs(cfg, {k: checkpoints}, "test_fold"))


def _predict_store(cfg: Config, comp: Competition, model: str, per_fold: dict[int, list[Path]], folder: Path,
                   unit: Unit, device, world: World) -> None:
    """Every test image into ``folder``, predicted by the mean of ``per_fold``'s checkpoints (folds weigh equally)."""
    _prepare(unit, folder, world.is_main)
    _barrier(world)
    writer = ProbWriter(folder, list(cfg.data.classes))
    ids = comp.test_ids
    checkpoints, weights = _weights(per_fold)
    n_done = sum(writer.has(i) for i in ids)
    folds = f"fold {next(iter(per_fold))}" if len(per_fold) == 1 else f"{len(per_fold)} fold(s)"
    print(f"predict: models[{model}]: {len(checkpoints)} checkpoint(s) over {folds}, TTA {cfg.predict.tta}; "
          f"{len(ids) - n_done} of {len(ids)} test images to do", flush=True)
    predict = CheckpointAverage(cfg, checkpoints, weights, device)
    predict_ids(cfg, comp, ids, "test", predict, writer, device, world, desc=f"{model} {folds} test")
    del predict
    _barrier(world)
    if world.is_main:
        unit.done()
        writer.finish(ids)


def predict_test(cfg: Config, comp: Competition, model_cfg: ModelConfig, fold_list: list[int], device,
                 world: World) -> None:
    """A model's test store. When a pseudo round follows, each fold's checkpoints predict a store of their own
    first, and the model's store is their mean (the same network passes, not twice as many)."""
    per_fold = {k: fold_checkpoints(cfg, model_cfg.name, k) for k in fold_list}
    paths = cfg.layout.model(model_cfg.name)
    unit = store_unit(cfg, model_cfg.name, per_fold)
    if not by_fold(cfg):
        if unit.fresh():
            print(unit.kept())
            return
        _predict_store(cfg, comp, model_cfg.name, per_fold, paths.test, unit, device, world)
        return
    for k, checkpoints in per_fold.items():
        part = fold_test_unit(cfg, model_cfg.name, k, checkpoints)
        if part.fresh():
            print(part.kept())
        else:
            _predict_store(cfg, comp, model_cfg.name, {k: checkpoints}, paths.test_fold(k), part, device, world)
    if unit.fresh():
        print(unit.kept())
        return
    if world.is_main:
        _prepare(unit, paths.test, True)
        writer = ProbWriter(paths.test, list(cfg.data.classes))
        stores = [ProbStore(paths.test_fold(k)) for k in per_fold]
        for image_id in bar(comp.test_ids, f"{model_cfg.name} test: mean of {len(stores)} folds"):
            if not writer.has(image_id):
                writer.write(image_id, mean_uint8([s[image_id] for s in stores]))
        unit.done()
        writer.finish(comp.test_ids)
        print(f"predict: models[{model_cfg.name}]: test store = mean of the {len(stores)} fold stores -> "
              f"{paths.test}")
    _barrier(world)


def predict_oof(cfg: Config, comp: Competition, model_cfg: ModelConfig, folds: pd.DataFrame, device,
                world: World, folder: Optional[Path] = None, finish: bool = True) -> None:
    """Each fold's validation ids (of the ``folds`` table) re-predicted by that fold's checkpoints, into
    ``<run_dir>/<model>/oof_tta`` or ``folder``. Every fold is its own unit; with ``finish`` the store gets its
    manifest (is complete) once every fold of the table is in, so pass the whole table then."""
    folder = Path(folder or cfg.layout.model(model_cfg.name).oof_tta)
    parts = []
    for k in fold_numbers(folds):
        ids = folds.loc[folds["fold"] == k, "id"].tolist()
        parts.append((k, ids, oof_part_unit(cfg, model_cfg.name, folder, k, ids)))
    all_ids = folds["id"].tolist()

    def complete() -> bool:
        return ProbStore.is_complete(folder) and ProbStore(folder).ids == all_ids

    if complete() and all(unit.fresh() for *_, unit in parts):
        print(kept(f"predict: models[{model_cfg.name}] OOF re-prediction ({folder})"))
        return
    for k, ids, unit in parts:
        if unit.fresh():
            print(unit.kept())
            continue
        _prepare(unit, folder, world.is_main, images=list(unit.outputs))
        _barrier(world)
        writer = ProbWriter(folder, list(cfg.data.classes))
        checkpoints = fold_checkpoints(cfg, model_cfg.name, k)
        predict = CheckpointAverage(cfg, checkpoints, [1.0 / len(checkpoints)] * len(checkpoints), device)
        predict_ids(cfg, comp, ids, "train", predict, writer, device, world,
                    desc=f"{model_cfg.name} fold {k} OOF re-prediction")
        del predict
        _barrier(world)  # every rank's images of this part are in before the part is stamped done
        if world.is_main:
            unit.done()
    if finish and world.is_main and not complete():
        ProbWriter(folder, list(cfg.data.classes)).finish(all_ids)


def _barrier(world: World) -> None:
    if world.size > 1:
        barrier(world)


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


__all__ = ["CheckpointAverage", "by_fold", "fold_checkpoints", "fold_test_unit", "oof_part_unit", "predict_ids",
           "predict_oof", "predict_test", "run", "store_unit"]
