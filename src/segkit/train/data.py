"""The data of one fold: which ids train and validate, and the loaders that feed them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
import torch
from torch.utils.data import ConcatDataset, DataLoader

from segkit.config.schema import TrainConfig
from segkit.data import Competition, SegDataset, by_size, pad_collate
from segkit.errors import ConfigError
from segkit.train.distributed import World
from segkit.train.sampler import BatchPlan
from segkit.train.seeding import derive_seed, worker_init


@dataclass
class ExtraTrainData:
    """Images added to every fold's training set with a fixed share of each batch (pseudo-labelled test images):
    ``mask_reader(id)`` gives their uint8 (K, H, W) masks; ``split`` picks the image folder."""

    ids: list[str]
    mask_reader: Callable[[str], np.ndarray]
    share: float
    split: str = "test"


def fold_ids(frame, fold: int) -> tuple[list[str], list[str]]:
    from segkit.folds import fold_numbers  # sklearn: only when a fold really trains

    folds = fold_numbers(frame)
    if fold not in folds:
        raise ConfigError(f"--fold {fold}: the fold file has folds {folds}")
    is_val = frame["fold"].astype(int) == fold
    return frame.loc[~is_val, "id"].astype(str).tolist(), frame.loc[is_val, "id"].astype(str).tolist()


def _datasets(ds) -> list[SegDataset]:
    return list(ds.datasets) if isinstance(ds, ConcatDataset) else [ds]


class TrainData:
    """The training loader of a fold, re-seeded every epoch (batch plan, augmentations, worker seeds)."""

    def __init__(self, comp: Competition, cfg: TrainConfig, ids: list[str], seed: int, world: World,
                 extra: Optional[ExtraTrainData] = None):
        self.cfg, self.seed, self.world = cfg, seed, world
        real = SegDataset(comp, ids, "train", augment=cfg.augment, crop_size=cfg.crop_size, pad_to=cfg.pad_to)
        pools: list[list[int]] = [list(range(len(ids)))]
        shares: Optional[list[float]] = None
        if cfg.positive_share is not None:
            has = [bool(comp.mask_stats(i)[0].sum() > 0) for i in ids]
            pos = [k for k, h in enumerate(has) if h]
            neg = [k for k, h in enumerate(has) if not h]
            pools, shares = [pos, neg], [cfg.positive_share, 1 - cfg.positive_share]
        self.dataset = real
        if extra is not None and extra.ids:
            pseudo = SegDataset(comp, extra.ids, extra.split, augment=cfg.augment, crop_size=cfg.crop_size,
                                pad_to=cfg.pad_to, with_mask=True, mask_reader=extra.mask_reader)
            self.dataset = ConcatDataset([real, pseudo])
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
    ds = SegDataset(comp, ids[world.rank::world.size], "train", augment=None, crop_size=None, pad_to=cfg.pad_to)
    return DataLoader(ds, batch_size=cfg.val_batch_size or cfg.batch_size, shuffle=False, num_workers=cfg.workers,
                      pin_memory=cfg.pin_memory, collate_fn=pad_collate,
                      generator=torch.Generator().manual_seed(0))
