"""DistributedDataParallel under ``torchrun``; the same code runs as a single process without it.

torchrun sets RANK / WORLD_SIZE / LOCAL_RANK (and MASTER_ADDR / MASTER_PORT); ``setup()`` joins the process group
when they are present (NCCL on GPUs, Gloo on CPUs) and otherwise returns a world of one. Each rank trains on its
own share of every epoch's batches; checkpoints, metrics and manifests are written by rank 0 only (each rank writes
the probability files of the validation images it predicted: distinct files).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return dist.is_available() and dist.is_initialized()


def launched() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def setup(device: torch.device) -> World:
    """Join the process group if launched by torchrun (idempotent)."""
    if not launched():
        return World()
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend=backend)
    return World(rank=dist.get_rank(), size=dist.get_world_size(), local_rank=int(os.environ.get("LOCAL_RANK", 0)))


def teardown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier(world: World) -> None:
    if world.active and world.size > 1:
        dist.barrier()


def barrier_if_many(world: World) -> None:
    """A barrier where there are several ranks (one process waits for no one)."""
    if world.size > 1:
        barrier(world)


def gather(world: World, obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order (a list of one without DDP)."""
    if not world.active or world.size == 1:
        return [obj]
    out: list[Any] = [None] * world.size
    dist.all_gather_object(out, obj)
    return out


def broadcast(world: World, obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if not world.active or world.size == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def sync_batchnorm(model: nn.Module, world: World, on: bool, device: torch.device) -> nn.Module:
    """BatchNorm statistics over the global batch (small per-GPU batches); before the optimizer is built. PyTorch's
    SyncBatchNorm runs on GPUs only: CPU ranks keep their own statistics, and say so once."""
    if not (on and world.active and world.size > 1):
        return model
    if device.type != "cuda":
        if world.is_main:
            print("train.sync_bn: SyncBatchNorm needs GPUs; on the CPU each rank normalises its own batch", flush=True)
        return model
    return nn.SyncBatchNorm.convert_sync_batchnorm(model)


def wrap(model: nn.Module, world: World, device: torch.device) -> nn.Module:
    """DDP-wrap for a world of more than one; the model itself otherwise."""
    if not world.active or world.size == 1:
        return model
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module inside DDP and/or torch.compile wrappers."""
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model
