"""A 3D model's fold: training patches drawn from the fold's cases at the working spacing, and validation of whole
cases through the sliding window, written as the same per-slice OOF store a 2.5D model writes.

Each case is decoded, normalised and resampled once per fold and kept (``CaseCache``: an LA 2018 volume at its
0.625 mm is about 10 MB as float32, 80 of them under 1 GB), so an epoch reads no file: a patch is a slice of an array
in memory. An epoch
visits every training case once (``PatchPlan``), in batches whose last third of patches are forced onto foreground
(``segkit.data.patches``); each patch has a seed of its own for its place and its augmentation, so the batches are
the same whatever the number of loader workers, and a resumed fold deals the same batches.
"""

from __future__ import annotations

import time
import zlib
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, default_collate
from tqdm import tqdm

from segkit.compute.device import autocast
from segkit.compute.distributed import World, gather
from segkit.config.schema import Config, ModelConfig, TrainConfig
from segkit.data import Competition
from segkit.data.augment3d import Augment3D, slice_plane
from segkit.data.patches import FOREGROUND_SHARE, PatchSampler, foreground_voxels
from segkit.data.spacing import resample, resampled_shape, target_spacing
from segkit.data.volumes import VolumeSet
from segkit.errors import ConfigError
from segkit.inference.sliding import predict_case, slice_of
from segkit.models import input_multiple, probabilities, split_output
from segkit.stages.train.sampler import DealtPlan
from segkit.stages.train.seeding import derive_seed, worker_init
from segkit.stages.train.validate import Scores


def working_spacing(cfg: Config, volumes: VolumeSet) -> tuple[float, ...]:
    """``data.volumes.spacing``, or the rule of ``segkit.data.spacing.target_spacing`` over every labelled case
    (a fact of the data, like nnU-Net's plan: the same for every fold)."""
    given = cfg.data.volumes.spacing
    if given is not None:
        if min(given) <= 0:
            raise ConfigError(f"data.volumes.spacing: {given}; every axis needs a size above 0 mm")
        return tuple(float(s) for s in given)
    return target_spacing([volumes.spacing(c) for c in volumes.cases])


def check_volume_data(cfg: Config, model_cfg: ModelConfig) -> None:
    """What a 3D network needs of the data config: a volume competition, each case normalised on its own."""
    key = f"models[{model_cfg.name}].arch: {model_cfg.arch} is a 3D network; it needs"
    if cfg.data.volumes is None:
        raise ConfigError(f"{key} a volume competition (data.volumes)")
    if cfg.data.normalize != "none":
        raise ConfigError(f"{key} data.normalize: none (each case is normalised on its own; it is "
                          f"{cfg.data.normalize!r})")


def checked_patch(model_cfg: ModelConfig, tcfg: TrainConfig, key: str) -> tuple[int, int, int]:
    """``train.patch_size``, each side a multiple of the network's stride."""
    if tcfg.patch_size is None:
        raise ConfigError(f"{key}.train.patch_size: {model_cfg.arch} is a 3D network; give its training patch "
                          f"(three sides, voxels at the working spacing)")
    multiple = input_multiple(model_cfg, tcfg.pad_to)
    bad = [s for s in tcfg.patch_size if s < 1 or s % multiple]
    if bad:
        raise ConfigError(f"{key}.train.patch_size: {tcfg.patch_size}: every side must be a multiple of "
                          f"{multiple}, {model_cfg.arch}'s stride with these params")
    return tuple(int(s) for s in tcfg.patch_size)


@dataclass
class WorkingCase:
    image: torch.Tensor  # float32 (C, X, Y, Z) at the working spacing, at least a patch along every axis
    labels: torch.Tensor  # uint8 (X, Y, Z)
    sampler: PatchSampler


class CaseCache:
    """The training cases at the working spacing, each decoded and resampled once and kept."""

    def __init__(self, volumes: VolumeSet, target: Sequence[float], patch: Sequence[int], where: str):
        self.volumes, self.target, self.patch, self.where = volumes, tuple(target), tuple(patch), where
        self._cases: dict[str, WorkingCase] = {}
        self._padded: list[str] = []

    def __getitem__(self, name: str) -> WorkingCase:
        if name not in self._cases:
            self._cases[name] = self._load(name)
        return self._cases[name]

    def _load(self, name: str) -> WorkingCase:
        image, labels = self.volumes.volume(name)
        if labels is None:
            raise ConfigError(f"{self.where}: case {name!r} has no label volume to train on")
        shape = resampled_shape(image.shape[1:], self.volumes.spacing(name), self.target)
        image = resample(torch.from_numpy(image), shape)
        labels = resample(torch.from_numpy(labels), shape, labels=True)
        short = [max(p - s, 0) for s, p in zip(shape, self.patch)]
        if any(short):
            # zeros: the mean of a z-scored volume, and background; the patch then covers the case whole
            pad = tuple(x for n in reversed(short) for x in (0, n))
            image, labels = torch.nn.functional.pad(image, pad), torch.nn.functional.pad(labels, pad)
            if not self._padded:
                print(f"{self.where}: case {name!r} is {tuple(shape)} voxels at the working spacing, smaller than "
                      f"train.patch_size {list(self.patch)}: padded with zeros to the patch (said once for all such "
                      f"cases)", flush=True)
            self._padded.append(name)
        # the case's own seed, not its place in the loading order: a resumed fold loads its cases in another order
        voxels = foreground_voxels(labels.numpy(), seed=zlib.crc32(name.encode()))
        sampler = PatchSampler(image.shape[1:], self.patch, voxels)
        return WorkingCase(image.contiguous(), labels.contiguous(), sampler)


class PatchDataset(Dataset):
    """Items are (case index, forced on foreground, seed) keys, dealt by ``PatchPlan``: a patch and its
    (K, X, Y, Z) one-hot foreground mask, augmented."""

    def __init__(self, cache: CaseCache, cases: list[str], classes: int, augment: Augment3D):
        self.cache, self.cases, self.classes, self.augment = cache, cases, classes, augment

    def __len__(self) -> int:
        return len(self.cases)

    def __getitem__(self, key: tuple[int, bool, int]) -> dict:
        index, forced, seed = key
        case = self.cache[self.cases[index]]
        patch = case.sampler.sample(np.random.default_rng(seed), forced)
        box = tuple(slice(c, c + p) for c, p in zip(patch.corner, self.cache.patch))
        image = case.image[(slice(None), *box)].clone()
        labels = case.labels[box][None].clone()
        image, labels = self.augment.apply(image, labels, seed)
        labels = labels[0].round().to(torch.uint8)  # an affine's nearest neighbours come back as floats
        mask = torch.stack([labels == k for k in range(1, self.classes + 1)]).float()
        return {"image": image.float().contiguous(), "mask": mask, "has_mask": mask.flatten(1).amax(1),
                "id": self.cases[index]}


class PatchPlan(DealtPlan):
    """Every training case once an epoch in batches of ``batch_size`` patches, the last ``share`` of each batch
    forced onto foreground (at least one in a batch of two or more); a pure function of (seed, epoch)."""

    def __init__(self, cases: int, batch_size: int, seed: int, share: float = FOREGROUND_SHARE, rank: int = 0,
                 world_size: int = 1, max_batches: Optional[int] = None):
        if cases < 1:
            raise ValueError("no training cases")
        super().__init__(cases, batch_size, seed, rank, world_size, max_batches)
        self.cases, self.share = cases, share

    def plan(self) -> list[list[tuple[int, bool, int]]]:
        rng = np.random.default_rng(derive_seed(self.seed, self.epoch))
        n = self.batch_size
        need = self.batches_per_rank * self.world_size * n
        order = rng.permutation(self.cases)
        while len(order) < need:  # fewer cases than one batch (or than the ranks' batches): deal again
            order = np.concatenate([order, rng.permutation(self.cases)])
        forced = round(n * self.share)
        forced = max(forced, 1) if n > 1 and self.share > 0 else forced
        seeds = rng.integers(0, 2**31, size=need)
        return [[(int(order[b * n + i]), i >= n - forced, int(seeds[b * n + i])) for i in range(n)]
                for b in range(need // n)]


class PatchTrainData:
    """The training loader of a 3D model's fold (the interface of ``segkit.stages.train.data.TrainData``)."""

    def __init__(self, cache: CaseCache, cases: list[str], classes: int, cfg: TrainConfig, augment: Augment3D,
                 seed: int, world: World):
        self.cfg, self.seed, self.world = cfg, seed, world
        self.dataset = PatchDataset(cache, cases, classes, augment)
        self.plan = PatchPlan(len(cases), cfg.batch_size, seed, rank=world.rank, world_size=world.size,
                              max_batches=cfg.max_steps_per_epoch)

    def __len__(self) -> int:
        return len(self.plan)

    def loader(self, epoch: int) -> DataLoader:
        self.plan.set_epoch(epoch)
        # Every case decoded before the first batch: the speed probe of train.minutes then times steady steps (it
        # read LA's 1.22 s a step where the epochs took 0.95 s, decoding cases as it went), and loader workers,
        # forked after, share the cache instead of each decoding the cases again.
        for case in self.dataset.cases:
            self.dataset.cache[case]
        return DataLoader(self.dataset, batch_sampler=self.plan, num_workers=self.cfg.workers,
                          pin_memory=self.cfg.pin_memory, collate_fn=default_collate,
                          worker_init_fn=worker_init if self.cfg.workers else None)


class VolumeValidation:
    """A fold's validation cases predicted whole in the sliding window (no TTA) and scored slice by slice, as a
    2.5D model's slices are, so that the two kinds' metrics.csv and OOF stores read alike."""

    def __init__(self, volumes: VolumeSet, cases: list[str], target: Sequence[float], patch: Sequence[int],
                 batch_size: int, mode: str, scores: Scores, world: World):
        self.volumes, self.cases, self.target, self.patch = volumes, cases[world.rank::world.size], target, patch
        self.batch_size, self.mode, self.scores, self.world = batch_size, mode, scores, world

    def _network(self, model, device, amp) -> Callable[[torch.Tensor], torch.Tensor]:
        def fn(x: torch.Tensor) -> torch.Tensor:
            with autocast(device, amp):
                logits, _ = split_output(model(x))
            return probabilities(logits, self.mode)
        return fn

    def _case(self, model, name: str, device, amp) -> tuple[torch.Tensor, Optional[np.ndarray]]:
        image, labels = self.volumes.volume(name)
        probs = predict_case(self._network(model, device, amp), image, self.volumes.spacing(name), self.target,
                             self.patch, batch_size=self.batch_size, device=device)
        return probs, labels

    @torch.inference_mode()
    def evaluate(self, model, loss_fn=None, device=torch.device("cpu"), amp: str = "none", writer=None,
                 progress: bool = False) -> dict[str, float]:
        was_training = model.training
        model.eval()
        totals = self.scores.empty()
        axis = self.volumes.axis
        for name in tqdm(self.cases, desc="valid", leave=False, disable=True if not progress else None):
            probs, labels = self._case(model, name, device, amp)
            for index, slice_id in enumerate(self.volumes.slices_of(name)):
                p = slice_of(probs, axis, index).numpy()
                if writer is not None:
                    writer.write(slice_id, p)
                if labels is not None:
                    truth = np.stack([np.take(labels, index, axis=axis) == k for k in range(1, len(p) + 1)])
                    self.scores.add(totals, p, truth)
        model.train(was_training)
        return self.scores.means(gather(self.world, totals))

    def seconds(self, model, loss_fn, device, amp: str) -> float:
        """One pass over this rank's cases: the first case predicted once to warm up and once timed, scaled by
        voxels to all of them."""
        if not self.cases:
            return 0.0
        first = self.cases[0]
        was_training = model.training
        model.eval()
        with torch.inference_mode():
            self._case(model, first, device, amp)
            began = time.perf_counter()
            self._case(model, first, device, amp)
            took = time.perf_counter() - began
        model.train(was_training)
        voxels = [float(np.prod(self.volumes.shape(c))) for c in self.cases]
        return took * sum(voxels) / voxels[0]


def fold_volumes(cfg: Config, comp: Competition, model_cfg: ModelConfig, tcfg: TrainConfig, train_ids: list[str],
                 val_ids: list[str], seed: int, world: World, scores: Scores, where: str
                 ) -> tuple[PatchTrainData, VolumeValidation, dict]:
    """A 3D model's training data and validation for one fold, and what its checkpoints record to predict alike
    (``dims``, ``patch_size``, the working ``spacing``)."""
    key = f"models[{model_cfg.name}]"
    check_volume_data(cfg, model_cfg)
    patch = checked_patch(model_cfg, tcfg, key)
    volumes = comp.volume_set("train")
    target = working_spacing(cfg, volumes)
    train_cases = list(dict.fromkeys(volumes.case_of(i) for i in train_ids))
    val_cases = list(dict.fromkeys(volumes.case_of(i) for i in val_ids))
    augment = Augment3D(tcfg.augment, patch, slice_plane(volumes.axis), key=f"{key}.train.augment")
    cache = CaseCache(volumes, target, patch, where)
    data = PatchTrainData(cache, train_cases, len(comp.classes), tcfg, augment, seed, world)
    batch = tcfg.val_batch_size or 1
    validation = VolumeValidation(volumes, val_cases, target, patch, batch, comp.mode, scores, world)
    return data, validation, {"dims": 3, "patch_size": list(patch), "spacing": list(target)}


__all__ = ["CaseCache", "PatchDataset", "PatchPlan", "PatchTrainData", "VolumeValidation", "check_volume_data",
           "checked_patch", "fold_volumes", "working_spacing"]
