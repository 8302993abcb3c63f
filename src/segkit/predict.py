"""``segkit predict``: test probabilities per model, averaged over its folds (and cycle snapshots), with TTA.

For each model of the config:

- ``<run_dir>/<model>/test/``: every test image predicted by every fold's checkpoint — ``best.pt`` (or ``last.pt``,
  ``predict.checkpoint``) plus the fold's ``snapshot<c>.pt`` files when ``predict.snapshots`` — each with the TTA
  named by ``predict.tta``, merged by ``predict.tta_merge``. A fold's checkpoints are averaged first, quantised
  like a store, and the folds then weigh equally, so a fold with more snapshots does not count more and the store
  is exactly the mean of the fold stores below, kept or not.
- ``<run_dir>/<model>/test_folds/fold<k>/`` when a pseudo round follows (``pseudo.rounds`` > ``pseudo.round``):
  fold k's probabilities alone, from the same pass (no extra network work), which the next round's fold-k labels
  come from (``segkit.pseudo``). They cost a test store's disk per fold.
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
from typing import Callable, Optional, Sequence

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader

from segkit import atomic
from segkit.config import Config
from segkit.config.schema import ModelConfig
from segkit.data import Competition, SegDataset, by_size, pad_collate, same_size_batches, unpad
from segkit.data.folds import check_fold, fold_numbers, load_folds
from segkit.data.volume_readers import cut
from segkit.data.volumes import assemble
from segkit.device import resolve_device
from segkit.errors import ConfigError
from segkit.freshness import Unit, fingerprints, kept
from segkit.layout import part_stamp
from segkit.probs import ProbStore, ProbWriter, image_file, manifest, mean_uint8
from segkit.progress import bar
from segkit.sizing import loader_workers, prediction_batch
from segkit.tiling import predict_tiled, stack_groups
from segkit.checkpoint import fold_checkpoints, load_model
from segkit.distributed import World, barrier, setup
from segkit.tta import TTAPredictor, average_predictions

# ------------------------------------------------------------------------------------------------ checkpoints


def _inputs(cfg: Config, checkpoints: dict[int, list[Path]], kind: str) -> dict:
    """What decides a store's probabilities: the checkpoints (as files on disk) and the prediction settings."""
    p = cfg.predict
    inputs = {"kind": kind, "tta": p.tta, "tta_merge": p.tta_merge, "amp": p.amp, "tile_size": p.tile_size,
              "tile_overlap": p.tile_overlap, "tile_blend": p.tile_blend,
              "checkpoints": {str(k): fingerprints(v) for k, v in checkpoints.items()}}
    if cfg.data.volumes is not None and cfg.data.volumes.predict_axes is not None:
        inputs["volume_axes"] = cfg.data.volumes.prediction_axes
    return inputs


def store_unit(cfg: Config, model: str, per_fold: dict[int, list[Path]]) -> Unit:
    """A model's test store as a unit of work: every fold's checkpoints and the prediction settings decide it."""
    paths = cfg.layout.model(model)
    return Unit(f"predict: models[{model}] test ({paths.test})", paths.test_stamp, [manifest(paths.test)],
                _inputs(cfg, per_fold, "test: mean of the quantised folds"))


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
    """The networks of one model's checkpoints in groups (a fold's checkpoints are one group), each wrapped in TTA;
    a call gives every group's mean, side by side: the folds of a model are predicted in one pass over the images,
    and each fold's probabilities stay apart for the stores that want them (``Outputs``).

    ``loader`` (path, device) -> (network, meta) replaces the checkpoint's PyTorch model by another runtime's
    (``segkit.runtimes``): an exported network that takes images as read and gives probabilities, so it runs
    without autocast, its activation is not applied again, and it wants its inputs unnormalised (``normalizes``).
    ``max_views``: the first views of the TTA only (what a time budget leaves)."""

    def __init__(self, cfg: Config, groups: list[list[Path]], device: torch.device,
                 loader: Optional[Callable] = None, max_views: Optional[int] = None):
        self.device = device
        self.groups: list[list[TTAPredictor]] = []
        self.meta: dict = {}
        self.normalizes = loader is not None
        for paths in groups:
            predictors = []
            for path in paths:
                model, meta = load_model(path, device) if loader is None else loader(path, device)
                self._check(cfg, path, meta)
                self.meta = meta
                predictors.append(TTAPredictor(
                    model, tta=cfg.predict.tta, merge=cfg.predict.tta_merge, chunk=cfg.predict.tta_chunk,
                    activation="softmax" if meta["mode"] == "multiclass" else "sigmoid",
                    amp=None if loader else cfg.predict.amp, channels_last=cfg.predict.channels_last and loader is None,
                    max_views=max_views, activated=loader is not None,
                ))
            self.groups.append(predictors)
        self.multiclass = self.meta.get("mode") == "multiclass"

    @staticmethod
    def _check(cfg: Config, path: Path, meta: dict) -> None:
        if list(meta["classes"]) != list(cfg.data.classes) or meta["mode"] != cfg.data.mode:
            raise ConfigError(f"{path}: trained for {meta['mode']} {meta['classes']}, the config has "
                              f"data.mode {cfg.data.mode} with classes {cfg.data.classes}")
        if meta["channels"] != cfg.data.input_channels:
            raise ConfigError(f"{path}: trained on {meta['channels']}-channel inputs, the config's are "
                              f"{cfg.data.input_channels} (data.channels, data.context)")

    @property
    def pad_to(self) -> int:
        return int(self.meta.get("pad_to", 32))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """(N, G * K, H, W) float32: group g's mean foreground probabilities in channels [g K, (g + 1) K)."""
        means = []
        for predictors in self.groups:
            p = average_predictions(predictors, x)
            means.append(p[:, 1:] if self.multiclass else p)
        return means[0] if len(means) == 1 else torch.cat(means, dim=1)


class Outputs:
    """Where a pass's probabilities go: ``main``, the mean of the groups, quantised group by group first (so a
    model's test store is exactly the mean of its fold stores, whether or not those are kept), and ``parts[g]``,
    group g alone (None: not wanted). An image is to do while any wanted store lacks it."""

    def __init__(self, main: Optional[ProbWriter], parts: Sequence[Optional[ProbWriter]] = ()):
        self.main = main
        self.parts = list(parts)

    def writers(self) -> list[ProbWriter]:
        return [w for w in [self.main, *self.parts] if w is not None]

    def has(self, image_id: str) -> bool:
        return all(w.has(image_id) for w in self.writers())

    def write(self, image_id: str, q: np.ndarray) -> None:
        """``q``: uint8 (G * K, H, W) as CheckpointAverage gives it."""
        groups = q.reshape(max(len(self.parts), 1), -1, *q.shape[1:])
        for part, writer in zip(groups, self.parts):
            if writer is not None and not writer.has(image_id):
                writer.write(image_id, np.ascontiguousarray(part))
        if self.main is not None and not self.main.has(image_id):
            self.main.write(image_id, np.ascontiguousarray(mean_uint8(list(groups))))


# ------------------------------------------------------------------------------------------------ prediction


def _to_uint8(p: torch.Tensor) -> np.ndarray:
    """Quantise on the device (a quarter of the bytes to copy back); same rounding as segkit.probs.quantize."""
    p = torch.nan_to_num(p, nan=0.0)
    return torch.round(p * 255.0).clamp_(0, 255).to(torch.uint8).cpu().numpy()


def predict_ids(cfg: Config, comp, ids: list[str], split: str, predict: CheckpointAverage, out: Outputs,
                device: torch.device, world=None, desc: str = "") -> int:
    """Predict the ids not yet in every store of ``out`` and write them; returns how many were predicted. Under
    DDP each rank takes its share of all ``ids`` first and then skips what is on disk, so the shares never depend on
    how far another rank has got."""
    views = cfg.data.volumes is not None and cfg.data.volumes.prediction_axes != [cfg.data.volumes.axis]
    todo = by_size(comp, ids, split)
    if world is not None and world.size > 1:
        todo = _cases_share(comp.volume_set(split), todo, world) if views else todo[world.rank::world.size]
    todo = [i for i in todo if not out.has(i)]
    if not todo:
        return 0
    p = cfg.predict
    tile = p.tile_size
    if tile is not None and tile % predict.pad_to:
        raise ConfigError(f"predict.tile_size: {tile} is not a multiple of the network stride pad_to={predict.pad_to}")
    sized = _view_ids(comp.volume_set(split), cfg.data.volumes.prediction_axes, todo) if views else todo
    batch = prediction_batch(p.batch_size, predict, lambda: _largest_input(cfg, comp, sized, split, predict.pad_to),
                             device)

    def predict_slices(slice_ids: list[str], into, label: str = desc) -> int:
        ds = SegDataset(comp, slice_ids, split=split, augment=None, pad_to=predict.pad_to, with_mask=False,
                        normalize=not predict.normalizes)
        # A network that normalises its inputs itself gets batches of one image size (no zero padding between).
        batching = ({"batch_sampler": same_size_batches(comp, slice_ids, batch, split)} if predict.normalizes
                    else {"batch_size": batch, "shuffle": False})
        # Pinned pages let the copies to a GPU run asynchronously (non_blocking below) while the next batch decodes.
        loader = DataLoader(ds, num_workers=loader_workers(p.workers, device), collate_fn=pad_collate,
                            pin_memory=device.type == "cuda", **batching)
        with torch.inference_mode():
            return _predict_batches(loader, predict, into, tile, p, batch, device, label, world)

    began = time.perf_counter()
    if views:
        done = _predict_views(comp.volume_set(split), cfg.data.volumes.prediction_axes, todo, out, predict_slices)
    else:
        done = predict_slices(todo, out)
    if desc:
        rate = done / max(time.perf_counter() - began, 1e-9)
        print(f"predict: {desc}: {done} images ({rate:.1f} images/s)", flush=True)
    return done


def _cases_share(volumes, ids: list[str], world) -> list[str]:
    """This rank's share of ``ids`` when whole cases are the unit (orthogonal views): every slice of its cases."""
    cases = list(dict.fromkeys(volumes.case_of(i) for i in ids))[world.rank::world.size]
    mine = set(cases)
    return [i for i in ids if volumes.case_of(i) in mine]


class Collected(dict):
    """A pass's uint8 probabilities kept in memory, id -> (G * K, H, W), where Outputs would write them."""

    def has(self, image_id: str) -> bool:
        return image_id in self

    def write(self, image_id: str, q: np.ndarray) -> None:
        self[image_id] = q


def _view_ids(volumes, axes: list[int], ids: list[str]) -> list[str]:
    """Every slice the orthogonal views of ``ids``' cases predict."""
    return [i for case in dict.fromkeys(volumes.case_of(i) for i in ids) for a in axes for i in volumes.cut(case, a)]


def _predict_views(volumes, axes: list[int], todo: list[str], out: Outputs,
                   predict_slices: Callable[[list[str], object], int]) -> int:
    """Orthogonal-view TTA: each case of ``todo`` predicted slice by slice along every axis of ``axes``; a voxel's
    probability is the mean of its views (each quantised, like the folds of a store), written slice by slice along
    ``volumes.axis``. One case is in memory at a time: a uint8 volume of the view being predicted and a uint16 sum
    of the views, per output channel. Returns the slices written."""
    done = 0
    for case in dict.fromkeys(volumes.case_of(i) for i in todo):
        total: Optional[np.ndarray] = None
        for axis in axes:
            ids = volumes.cut(case, axis)
            views = Collected()
            predict_slices(ids, views, f"{case} along axis {axis}")
            view = assemble([views.pop(i) for i in ids], axis)  # (G * K, X, Y, Z)
            if total is None:
                total = np.zeros(view.shape, np.uint16)
            total += view
            del view
        for j, slice_id in enumerate(volumes.slices_of(case)):
            if not out.has(slice_id):
                mean = cut(total, 1 + volumes.axis, j).astype(np.float64) / len(axes)
                out.write(slice_id, np.rint(mean).astype(np.uint8))  # rounds as segkit.probs.mean_uint8
                done += 1
    return done


def _largest_input(cfg: Config, comp, ids: list[str], split: str, pad_to: int) -> tuple[int, int, int]:
    """(C, H, W) of the largest network input among ``ids``: the largest image padded to the stride, or a tile
    where images larger than ``predict.tile_size`` are cut into tiles."""
    h, w = max((comp.image_size(i, split) for i in ids), key=lambda s: s[0] * s[1])
    tile = cfg.predict.tile_size
    if tile is not None and (h > tile or w > tile):
        h = w = tile
    return cfg.data.input_channels, -(-h // pad_to) * pad_to, -(-w // pad_to) * pad_to


def _predict_batches(loader, predict: CheckpointAverage, out: Outputs, tile: Optional[int], p, batch_size: int,
                     device: torch.device, desc: str = "", world=None) -> int:
    done = 0
    batches = loader if world is not None and not world.is_main else \
        bar(loader, f"predict: {desc}" if desc else "predict", unit="batch")  # one bar, not one per rank
    for batch in batches:
        sizes = [tuple(s) for s in batch["size"].tolist()]
        images = batch["image"]
        big = [i for i, (h, w) in enumerate(sizes) if tile is not None and (h > tile or w > tile)]
        small = [i for i in range(len(sizes)) if i not in big]
        if small:
            x = images[small].to(device, non_blocking=True)
            q = _to_uint8(predict(x))  # one copy back per batch
            for j, i in enumerate(small):
                out.write(batch["id"][i], unpad(q[j], sizes[i]))
        for size in dict.fromkeys(sizes[i] for i in big):
            same = [i for i in big if sizes[i] == size]
            for group in stack_groups(same, size, tile, p.tile_overlap, batch_size):
                q = _to_uint8(_tiled(predict, images[group], size, p, batch_size, device))
                for j, i in enumerate(group):
                    out.write(batch["id"][i], q[j])
        done += len(sizes)
    return done


def _tiled(predict: Callable, images: torch.Tensor, size, p, batch_size: int, device: torch.device) -> torch.Tensor:
    """(N, K, H, W) probabilities of a stack of same-size images, tile by tile."""
    images = unpad(images, size).contiguous()
    return predict_tiled(predict, images, p.tile_size, overlap=p.tile_overlap, blend=p.tile_blend,
                         batch_size=batch_size, device=device)


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
    _barrier(world)
    for (unit, _), wanted in zip(units, todo):
        if not wanted:
            print(unit.kept())
    if not any(todo):
        return
    for (unit, folder), wanted in zip(units, todo):
        if wanted:
            _prepare(unit, folder, world.is_main)
    _barrier(world)
    writers = [ProbWriter(folder, list(cfg.data.classes)) if wanted else None for (_, folder), wanted in
               zip(units, todo)]
    out = Outputs(writers[0], writers[1:] if by_fold(cfg) else [None] * len(per_fold))
    ids = comp.test_ids
    n_left = sum(not out.has(i) for i in ids)
    what = ", ".join(str(folder) for (_, folder), wanted in zip(units, todo) if wanted)
    print(f"predict: models[{model_cfg.name}]: {sum(map(len, per_fold.values()))} checkpoint(s) over "
          f"{len(per_fold)} fold(s), TTA {cfg.predict.tta}; {n_left} of {len(ids)} test images to do -> {what}",
          flush=True)
    predict = CheckpointAverage(cfg, list(per_fold.values()), device)
    predict_ids(cfg, comp, ids, "test", predict, out, device, world, desc=f"{model_cfg.name} test")
    del predict
    _barrier(world)
    if world.is_main:
        # The fold stores first: the model's store is the one whose manifest says the whole pass is complete.
        for (unit, _), writer in list(zip(units, writers))[::-1]:
            if writer is not None:
                unit.done()
                writer.finish(ids)


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
        predict = CheckpointAverage(cfg, [fold_checkpoints(cfg, model_cfg.name, k)], device)
        predict_ids(cfg, comp, ids, "train", predict, Outputs(writer), device, world,
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


__all__ = ["CheckpointAverage", "Collected", "by_fold", "fold_checkpoints", "fold_test_unit", "oof_part_unit",
           "predict_ids", "predict_oof", "predict_test", "run", "store_unit"]
