"""The data of one fold: the loaders that feed it, and the pseudo-labelled test images a round mixes in.

Pseudo labels are an artifact of the pseudo stage (``runs/<experiment>/pseudo/round<r>/fold<k>/``, a store of 0/255
masks per fold); a config with ``pseudo.round: r`` reads round r's labels of the fold it trains here and mixes them
into every batch: fold k's labels come from models that never saw fold k's labels (``segkit.stages.pseudo``). They are
test images: they never enter the fold file, so no fold validates on them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
import torch
from torch.utils.data import ConcatDataset, DataLoader

from segkit.artifacts.freshness import fingerprint, recorded
from segkit.artifacts.probs import ProbStore, manifest
from segkit.compute.distributed import World
from segkit.config.schema import Config, TrainConfig
from segkit.data import Competition, SegDataset, by_size, pad_collate
from segkit.errors import DataError
from segkit.stages.train.sampler import BatchPlan
from segkit.stages.train.seeding import derive_seed, worker_init
from segkit.threshold import binarize


@dataclass
class ExtraTrainData:
    """Images added to every fold's training set with a fixed share of each batch (pseudo-labelled test images):
    ``mask_reader(id)`` gives their uint8 (K, H, W) masks; ``split`` picks the image folder."""

    ids: list[str]
    mask_reader: Callable[[str], np.ndarray]
    share: float
    split: str = "test"
    identity: object = None  # what the images and labels are (JSON-able): part of a fold's input fingerprint


def pseudo_labels(cfg: Config, fold: int) -> Optional[ProbStore]:
    """The pseudo-label store fold ``fold`` of this config trains with (``pseudo.round`` >= 1), or None."""
    r = cfg.pseudo.round
    if r == 0:
        return None
    paths = cfg.layout.pseudo(r)
    folder = paths.labels(fold)
    if not ProbStore.is_complete(folder):
        raise DataError(f"{folder}: pseudo.round is {r} but fold {fold}'s labels are missing; run `segkit pseudo` "
                        f"with pseudo.round={r - 1} first")
    if paths.stamp.exists() and recorded(paths.stamp, "labels") is None:
        # a selection that began and did not finish: some folds' stores may be new, others old
        raise DataError(f"{paths.stamp}: round {r}'s selection did not finish; run `segkit pseudo` with "
                        f"pseudo.round={r - 1} again")
    return ProbStore(folder)


def _checked_ids(comp: Competition, store: ProbStore) -> list[str]:
    """The store's ids, refusing any that is a train id (it would leak into some fold's validation)."""
    train = set(comp.train_ids)
    leaked = [i for i in store.ids if i in train]
    if leaked:
        raise DataError(f"{store.folder}: pseudo-labelled id {leaked[0]!r} is a train id; pseudo labels may only "
                        f"cover test images")
    test = set(comp.test_ids)
    unknown = [i for i in store.ids if i not in test]
    if unknown:
        raise DataError(f"{store.folder}: id {unknown[0]!r} is not a test image of this competition")
    return list(store.ids)


def label_reader(store: ProbStore) -> Callable[[str], np.ndarray]:
    """id -> uint8 (K, H, W) 0/1 mask from a store of 0/255 pseudo labels."""

    def read(image_id: str) -> np.ndarray:
        return binarize(store[image_id])

    return read


def pseudo_train_data(cfg: Config, comp: Competition, fold: int) -> Optional[ExtraTrainData]:
    """What the training loop mixes into fold ``fold`` for this config: the round's labels of that fold at
    ``pseudo.batch_share`` of each batch, or None (round 0, share 0, or no confident image)."""
    store = pseudo_labels(cfg, fold)
    if store is None or cfg.pseudo.batch_share <= 0:
        return None
    ids = _checked_ids(comp, store)
    if not ids:
        return None
    # The labels' content digest as the pseudo stage recorded it (labels selected again alike are the same
    # labels); the store's manifest as a file where no stage recorded one.
    paths = cfg.layout.pseudo(cfg.pseudo.round)
    identity = (recorded(paths.stamp, "labels") or {}).get(str(fold)) or fingerprint(manifest(store.folder))
    return ExtraTrainData(ids=ids, mask_reader=label_reader(store), share=cfg.pseudo.batch_share, split="test",
                          identity=identity)


def extra_dataset(comp: Competition, extra: ExtraTrainData, cfg: TrainConfig) -> SegDataset:
    """The extra images as a dataset with the training augmentation of ``cfg``."""
    return SegDataset(comp, extra.ids, extra.split, augment=cfg.augment, crop_size=cfg.crop_size,
                      pad_to=cfg.pad_to, with_mask=True, mask_reader=extra.mask_reader)


def pseudo_dataset(cfg: Config, comp: Competition, fold: int,
                   train: Optional[TrainConfig] = None) -> Optional[SegDataset]:
    """The pseudo-labelled images fold ``fold`` of this config's round trains on, as a dataset (training
    augmentation of ``train``, default ``cfg.train``), or None when it trains without them."""
    extra = pseudo_train_data(cfg, comp, fold)
    return extra_dataset(comp, extra, train or cfg.train) if extra is not None else None


def _datasets(ds) -> list[SegDataset]:
    return list(ds.datasets) if isinstance(ds, ConcatDataset) else [ds]


class TrainData:
    """The training loader of a fold, re-seeded every epoch (batch plan, augmentations, worker seeds)."""

    def __init__(self, comp: Competition, cfg: TrainConfig, ids: list[str], seed: int, world: World,
                 extra: Optional[ExtraTrainData] = None, objects: bool = False):
        """``objects``: batches hold each image's objects instead of its mask (a detector's training set)."""
        self.cfg, self.seed, self.world = cfg, seed, world
        real = SegDataset(comp, ids, "train", augment=cfg.augment, crop_size=cfg.crop_size, pad_to=cfg.pad_to,
                          objects=objects)
        pools: list[list[int]] = [list(range(len(ids)))]
        shares: Optional[list[float]] = None
        if cfg.positive_share is not None:
            has = [bool(comp.mask_stats(i)[0].sum() > 0) for i in ids]
            pos = [k for k, h in enumerate(has) if h]
            neg = [k for k, h in enumerate(has) if not h]
            pools, shares = [pos, neg], [cfg.positive_share, 1 - cfg.positive_share]
        self.dataset = real
        if extra is not None and extra.ids:
            self.dataset = ConcatDataset([real, extra_dataset(comp, extra, cfg)])
            base = len(real)
            real_shares = shares or [1.0]
            shares = [s * (1 - extra.share) for s in real_shares] + [extra.share]
            pools = pools + [list(range(base, base + len(extra.ids)))]
        self.plan = BatchPlan(pools, cfg.batch_size, seed, shares=shares, rank=world.rank, world_size=world.size,
                              max_batches=cfg.max_steps_per_epoch)

    def __len__(self) -> int:
        return len(self.plan)

    def loader(self, epoch: int) -> DataLoader:
        self.plan.set_epoch(epoch)
        epoch_seed = derive_seed(self.seed, epoch, self.world.rank)
        for i, ds in enumerate(_datasets(self.dataset)):
            if ds.transform is not None:  # used as is without workers; workers re-seed their copies
                ds.transform.set_random_seed(derive_seed(epoch_seed, i))
        return DataLoader(
            self.dataset,
            batch_sampler=self.plan,
            num_workers=self.cfg.workers,
            pin_memory=self.cfg.pin_memory,
            collate_fn=pad_collate,
            worker_init_fn=worker_init if self.cfg.workers else None,
            generator=torch.Generator().manual_seed(epoch_seed),
            persistent_workers=False,
        )


def val_loader(comp: Competition, cfg: TrainConfig, ids: list[str], world: World) -> DataLoader:
    """This rank's share of the validation images, in a fixed order (by size, then as given)."""
    ids = by_size(comp, ids)  # mixed sizes: batch like with like
    ds = SegDataset(comp, ids[world.rank::world.size], "train", augment=None, crop_size=None, pad_to=cfg.pad_to,
                    native_mask=True)
    return DataLoader(ds, batch_size=cfg.val_batch_size or cfg.batch_size, shuffle=False, num_workers=cfg.workers,
                      pin_memory=cfg.pin_memory, collate_fn=pad_collate,
                      generator=torch.Generator().manual_seed(0))
