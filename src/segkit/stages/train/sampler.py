"""Which images make up each training batch.

``BatchPlan`` deals every epoch's batches from one or more pools of dataset indices:

- one pool: a plain shuffle without replacement, the last partial batch dropped (BatchNorm and equal steps per
  rank want full batches);
- several pools with shares: every batch holds a fixed number of images from each pool — e.g. the images with and
  without a mask (``train.positive_share``, the SIIM pneumothorax trick against a sea of empty images), or real and
  pseudo-labelled images. Each pool is shuffled and cycled on its own, so a small pool repeats within an epoch.

The order is a pure function of (seed, epoch): a resumed run deals the same batches, and under DDP every rank
computes the same plan and takes every world-size-th batch, so all ranks run the same number of steps.
"""

from __future__ import annotations

import math
from typing import Iterator, Optional, Sequence

import numpy as np
from torch.utils.data import Sampler

from segkit.stages.train.seeding import derive_seed


def split_counts(shares: Sequence[float], batch_size: int) -> list[int]:
    """Images per pool in a batch: shares x batch size, rounded so they sum to the batch size."""
    total = float(sum(shares))
    raw = [batch_size * s / total for s in shares]
    counts = [math.floor(r) for r in raw]
    order = sorted(range(len(raw)), key=lambda i: raw[i] - counts[i], reverse=True)
    for i in order[: batch_size - sum(counts)]:
        counts[i] += 1
    return counts


class DealtPlan(Sampler):
    """Batches dealt from a plan of all ranks' batches (``plan``, a pure function of (seed, epoch)): every rank
    takes every world-size-th one, as many batches per rank as ``items`` fill (at least one, at most
    ``max_batches``)."""

    def __init__(self, items: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1,
                 max_batches: Optional[int] = None):
        self.batch_size, self.seed = batch_size, seed
        self.rank, self.world_size = rank, world_size
        per_rank = max(items // batch_size // world_size, 1)
        self.batches_per_rank = min(per_rank, max_batches) if max_batches else per_rank
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.batches_per_rank

    def plan(self) -> list[list]:
        raise NotImplementedError

    def __iter__(self) -> Iterator[list]:
        return iter(self.plan()[self.rank::self.world_size])

    def state_dict(self) -> dict:
        return {"epoch": self.epoch}


class BatchPlan(DealtPlan):
    def __init__(
        self,
        pools: Sequence[Sequence[int]],
        batch_size: int,
        seed: int,
        shares: Optional[Sequence[float]] = None,
        rank: int = 0,
        world_size: int = 1,
        max_batches: Optional[int] = None,
    ):
        self.pools = [list(p) for p in pools]
        n_total = sum(len(p) for p in self.pools)
        if n_total == 0:
            raise ValueError("no training images")
        super().__init__(n_total, min(batch_size, n_total), seed, rank, world_size, max_batches)
        if shares is not None:
            # A share of an empty pool cannot be served: it goes to the other pools.
            shares = [s if self.pools[i] else 0.0 for i, s in enumerate(shares)]
            if sum(shares) <= 0:
                shares = [float(len(p)) for p in self.pools]
            self.counts: Optional[list[int]] = split_counts(shares, self.batch_size)
        else:
            self.counts = None

    def plan(self) -> list[list[int]]:
        """All ranks' batches of this epoch, in order."""
        rng = np.random.default_rng(derive_seed(self.seed, self.epoch))
        n_batches = self.batches_per_rank * self.world_size
        if self.counts is None:
            everything = np.concatenate([np.asarray(p, dtype=np.int64) for p in self.pools])
            need = n_batches * self.batch_size
            order = rng.permutation(everything)
            while len(order) < need:  # more ranks than a small set fills: deal it again
                order = np.concatenate([order, rng.permutation(everything)])
            return [order[i * self.batch_size:(i + 1) * self.batch_size].tolist() for i in range(n_batches)]
        streams = [_Cycle(p, rng) for p in self.pools]
        batches = []
        for _ in range(n_batches):
            batch = [i for s, c in zip(streams, self.counts) for i in s.take(c)]
            batches.append(rng.permutation(batch).tolist())
        return batches


class _Cycle:
    """Endless reshuffled passes over a pool."""

    def __init__(self, pool: list[int], rng: np.random.Generator):
        self.pool, self.rng, self.queue = pool, rng, []

    def take(self, n: int) -> list[int]:
        out = []
        while len(out) < n:
            if not self.queue:
                self.queue = self.rng.permutation(self.pool).tolist()
            out.append(self.queue.pop())
        return out
