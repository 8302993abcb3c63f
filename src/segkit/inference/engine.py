"""The prediction engine: one model's checkpoints, with test-time augmentation, over a competition's images.

``Predictor`` holds the networks of a model's checkpoints in groups (a fold's checkpoints are one group), each
wrapped in TTA (``segkit.inference.tta``); calling it on a batch gives every group's mean side by side, and
``predict`` runs it over image ids: batched by size, tiled where an image is larger than ``predict.tile_size``
(``segkit.inference.tiling``), along orthogonal views for volumes (``segkit.inference.views``), written to stores
or memory (``segkit.inference.outputs``). A 3D model's checkpoints (``dims`` 3 in their metadata) predict whole
cases instead, in a sliding window of their training patch (``segkit.inference.sliding``), with the views of
``predict.tta_3d``, and write the same per-slice stores. The predict stage, the offline bundle and the ablation all
predict through it.

``loader`` (path, device) -> (network, meta) replaces the checkpoint's PyTorch model by another runtime's
(``segkit.inference.runtimes``): an exported network that takes images as read and gives probabilities, so it runs
without autocast, its activation is not applied again, and it wants its inputs unnormalised (``normalizes``).
``max_views``: the first views of the TTA only (what a time budget leaves).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Optional

import torch
from torch.utils.data import DataLoader

from segkit.compute.sizing import loader_workers, prediction_batch
from segkit.config import Config
from segkit.data import SegDataset, by_size, pad_collate, same_size_batches, unpad
from segkit.data.resize import to_native, working_size
from segkit.errors import ConfigError
from segkit.inference.outputs import to_uint8
from segkit.inference.sliding import predict_case, slice_of
from segkit.inference.tiling import predict_tiled, stack_groups
from segkit.inference.tta import TTAPredictor, average_predictions
from segkit.inference.views import cases_share, predict_views, view_ids
from segkit.models.checkpoint import dims_in, load_model
from segkit.progress import bar


class Predictor:
    """A model's checkpoints in groups, with TTA: ``self(x)`` on a batch, ``predict`` over image ids."""

    def __init__(self, cfg: Config, groups: list[list[Path]], device: torch.device,
                 loader: Optional[Callable] = None, max_views: Optional[int] = None):
        self.cfg = cfg
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
                    model, tta=cfg.predict.tta_of(dims_in(meta)), merge=cfg.predict.tta_merge,
                    chunk=cfg.predict.tta_chunk, activation="softmax" if meta["mode"] == "multiclass" else "sigmoid",
                    amp=None if loader else cfg.predict.amp,
                    channels_last=cfg.predict.channels_last and loader is None and not self.volumetric,
                    max_views=max_views, activated=loader is not None,
                    scales=cfg.predict.tta_scales, multiple=int(meta.get("pad_to", 32)),
                ))
            self.groups.append(predictors)
        self.multiclass = self.meta.get("mode") == "multiclass"

    @staticmethod
    def _check(cfg: Config, path: Path, meta: dict) -> None:
        if list(meta["classes"]) != list(cfg.data.classes) or meta["mode"] != cfg.data.mode:
            raise ConfigError(f"{path}: trained for {meta['mode']} {meta['classes']}, the config has "
                              f"data.mode {cfg.data.mode} with classes {cfg.data.classes}")
        if dims_in(meta) == 3:
            if cfg.data.volumes is None:
                raise ConfigError(f"{path}: a 3D network predicts volumes; the config has no data.volumes")
            if meta["channels"] != cfg.data.channels:
                raise ConfigError(f"{path}: trained on {meta['channels']}-modality volumes, the config's have "
                                  f"{cfg.data.channels} (data.channels)")
            return
        if meta["channels"] != cfg.data.input_channels:
            raise ConfigError(f"{path}: trained on {meta['channels']}-channel inputs, the config's are "
                              f"{cfg.data.input_channels} (data.channels, data.context)")

    @property
    def pad_to(self) -> int:
        return int(self.meta.get("pad_to", 32))

    @property
    def volumetric(self) -> bool:
        return dims_in(self.meta) == 3

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """(N, G * K, H, W) float32: group g's mean foreground probabilities in channels [g K, (g + 1) K)."""
        means = []
        for predictors in self.groups:
            p = average_predictions(predictors, x)
            means.append(p[:, 1:] if self.multiclass else p)
        return means[0] if len(means) == 1 else torch.cat(means, dim=1)


    def predict(self, comp, ids: list[str], split: str, out, world=None, desc: str = "") -> int:
        """Predict the ids not yet in every store of ``out`` and write them; returns how many were predicted. Under
        DDP each rank takes its share of all ``ids`` first and then skips what is on disk, so the shares never depend on
        how far another rank has got."""
        cfg = self.cfg
        if self.volumetric:
            return self._predict_cases(comp, ids, split, out, world, desc)
        views = cfg.data.volumes is not None and cfg.data.volumes.prediction_axes != [cfg.data.volumes.axis]
        todo = by_size(comp, ids, split)
        if world is not None and world.size > 1:
            todo = cases_share(comp.volume_set(split), todo, world) if views else todo[world.rank::world.size]
        todo = [i for i in todo if not out.has(i)]
        if not todo:
            return 0
        p = cfg.predict
        tile = p.tile_size
        if tile is not None and tile % self.pad_to:
            raise ConfigError(f"predict.tile_size: {tile} is not a multiple of the network stride pad_to={self.pad_to}")
        sized = view_ids(comp.volume_set(split), cfg.data.volumes.prediction_axes, todo) if views else todo
        batch = prediction_batch(p.batch_size, self, lambda: self._largest_input(comp, sized, split), self.device)

        def predict_slices(slice_ids: list[str], into, label: str = desc) -> int:
            ds = SegDataset(comp, slice_ids, split=split, augment=None, pad_to=self.pad_to, with_mask=False,
                            normalize=not self.normalizes)
            # A network that normalises its inputs itself gets batches of one image size (no zero padding between).
            batching = ({"batch_sampler": same_size_batches(comp, slice_ids, batch, split)} if self.normalizes
                        else {"batch_size": batch, "shuffle": False})
            # Pinned pages let the copies to a GPU run asynchronously (non_blocking below) while the next batch decodes.
            loader = DataLoader(ds, num_workers=loader_workers(p.workers, self.device), collate_fn=pad_collate,
                                pin_memory=self.device.type == "cuda", **batching)
            with torch.inference_mode():
                return self._batches(loader, into, batch, label, world)

        began = time.perf_counter()
        if views:
            done = predict_views(comp.volume_set(split), cfg.data.volumes.prediction_axes, todo, out, predict_slices)
        else:
            done = predict_slices(todo, out)
        if desc:
            rate = done / max(time.perf_counter() - began, 1e-9)
            print(f"predict: {desc}: {done} images ({rate:.1f} images/s)", flush=True)
        return done

    def _predict_cases(self, comp, ids: list[str], split: str, out, world=None, desc: str = "") -> int:
        """A 3D model: every case with a slice among ``ids`` not yet in ``out``, predicted whole and written slice
        by slice (all of the case's slices among ``ids``). Under DDP each rank takes every world-size-th case."""
        volumes = comp.volume_set(split)
        cases: dict[str, list[str]] = {}
        for slice_id in ids:
            cases.setdefault(volumes.case_of(slice_id), []).append(slice_id)
        names = list(cases)
        if world is not None and world.size > 1:
            names = names[world.rank::world.size]
        names = [c for c in names if not all(out.has(i) for i in cases[c])]
        if not names:
            return 0
        p, meta = self.cfg.predict, self.meta
        batch = p.batch_size if isinstance(p.batch_size, int) else (4 if self.device.type == "cuda" else 1)
        axis = volumes.axis
        began, done = time.perf_counter(), 0
        shown = names if world is not None and not world.is_main else \
            bar(names, f"predict: {desc}" if desc else "predict", unit="case")
        for name in shown:
            image, _ = volumes.volume(name)
            with torch.inference_mode():
                probs = predict_case(self, image, volumes.spacing(name), meta["spacing"], meta["patch_size"],
                                     overlap=p.tile_overlap, blend=p.tile_blend, batch_size=batch, device=self.device)
            wanted = set(cases[name])
            for index, slice_id in enumerate(volumes.slices_of(name)):
                if slice_id in wanted:
                    out.write(slice_id, to_uint8(slice_of(probs, axis, index)))
                    done += 1
        if desc:
            took = max(time.perf_counter() - began, 1e-9)
            print(f"predict: {desc}: {len(names)} cases, {done} slices ({len(names) / took:.2f} cases/s)", flush=True)
        return done

    def _largest_input(self, comp, ids: list[str], split: str) -> tuple[int, int, int]:
        """(C, H, W) of the largest network input among ``ids``: the largest image (at the working resolution)
        padded to the stride, or a tile where images larger than ``predict.tile_size`` are cut into tiles."""
        sizes = (working_size(*comp.image_size(i, split), self.cfg.data.resize) for i in ids)
        h, w = max(sizes, key=lambda s: s[0] * s[1])
        tile = self.cfg.predict.tile_size
        if tile is not None and (h > tile or w > tile):
            h = w = tile
        return self.cfg.data.input_channels, -(-h // self.pad_to) * self.pad_to, -(-w // self.pad_to) * self.pad_to

    def _batches(self, loader, out, batch_size: int, desc: str = "", world=None) -> int:
        p, device = self.cfg.predict, self.device
        tile = p.tile_size
        done = 0
        batches = loader if world is not None and not world.is_main else \
            bar(loader, f"predict: {desc}" if desc else "predict", unit="batch")  # one bar, not one per rank
        for batch in batches:
            sizes = [tuple(s) for s in batch["size"].tolist()]
            natives = [tuple(s) for s in batch["native"].tolist()]
            images = batch["image"]
            big = [i for i, (h, w) in enumerate(sizes) if tile is not None and (h > tile or w > tile)]
            small = [i for i in range(len(sizes)) if i not in big]
            if small:
                x = images[small].to(device, non_blocking=True)
                if all(sizes[i] == natives[i] for i in small):
                    q = to_uint8(self(x))  # one copy back per batch
                    for j, i in enumerate(small):
                        out.write(batch["id"][i], unpad(q[j], sizes[i]))
                else:  # a working resolution: each image's probabilities back to its native size, on the device
                    probs = self(x)
                    for j, i in enumerate(small):
                        out.write(batch["id"][i], to_uint8(to_native(unpad(probs[j], sizes[i]), natives[i])))
            for size in dict.fromkeys(sizes[i] for i in big):
                same = [i for i in big if sizes[i] == size]
                for group in stack_groups(same, size, tile, p.tile_overlap, batch_size):
                    probs = self._tiled(images[group], size, batch_size)
                    for j, i in enumerate(group):
                        out.write(batch["id"][i], to_uint8(to_native(probs[j], natives[i])))
            done += len(sizes)
        return done

    def _tiled(self, images: torch.Tensor, size, batch_size: int) -> torch.Tensor:
        """(N, K, H, W) probabilities of a stack of same-size images, tile by tile."""
        images = unpad(images, size).contiguous()
        p = self.cfg.predict
        return predict_tiled(self, images, p.tile_size, overlap=p.tile_overlap, blend=p.tile_blend,
                             batch_size=batch_size, device=self.device)


__all__ = ["Predictor"]
