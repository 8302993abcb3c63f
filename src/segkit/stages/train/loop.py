"""One training epoch: forward under autocast, loss in float32, backward (loss-scaled for fp16), gradient
accumulation and clipping, optimizer + LR-schedule step per optimizer step, EMA update, and the NaN policy."""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Optional

import torch
from torch import nn
from tqdm import tqdm

from segkit.compute.device import autocast, to_device
from segkit.compute.distributed import World, gather
from segkit.config.schema import TrainConfig
from segkit.errors import SegkitError
from segkit.losses import SegLoss
from segkit.models import edge_output, split_output
from segkit.optim import LRSchedule
from segkit.stages.train.ema import EMA


@dataclass
class EpochStats:
    loss: float
    batches: int
    steps: int  # optimizer steps taken
    skipped: int = 0  # batches dropped by nan_policy: skip
    parts: dict[str, float] = field(default_factory=dict)  # mean of each loss term


@dataclass
class Stepper:
    """What an optimizer step needs; ``forward_model`` may be the DDP / compiled wrapper of ``model``."""

    model: nn.Module
    forward_model: nn.Module
    optimizer: torch.optim.Optimizer
    schedule: LRSchedule
    scaler: torch.amp.GradScaler
    ema: Optional[EMA]
    cfg: TrainConfig
    device: torch.device
    where: str  # "models[x] fold k": prefix of error messages


def network_inputs(batch: dict) -> tuple:
    """What a network's training forward takes from a batch: the images, and a detector's objects too (its
    losses need them)."""
    return (batch["image"], batch["objects"]) if "objects" in batch else (batch["image"],)


def batch_loss(loss_fn: SegLoss, out, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
    """The loss of a network's forward output on a batch: mask logits, and whatever else the network gave (smp's
    image logits for the aux head, GatedSCNN's edge logits in training); or a detector's own losses (Mask R-CNN's
    five), summed, which the configured loss terms do not apply to."""
    if isinstance(out, dict) and "losses" in out:
        parts = {k: v.float() for k, v in out["losses"].items()}
        return sum(parts.values()), {k: float(v.detach()) for k, v in parts.items()}
    logits, aux = split_output(out)
    return loss_fn(logits, batch["mask"], aux, batch.get("has_mask"), edge_output(out))


def train_epoch(s: Stepper, loader, loss_fn: SegLoss, epoch: int, world: World = World(),
                progress: bool = True) -> EpochStats:
    cfg = s.cfg
    s.forward_model.train()
    n_batches = len(loader)
    total = 0.0
    seen = steps = skipped = 0
    part_sums: dict[str, float] = {}
    s.optimizer.zero_grad(set_to_none=True)
    bar = tqdm(loader, total=n_batches, desc=f"{s.where} epoch {epoch}", leave=False, dynamic_ncols=True,
               disable=True if not (progress and world.is_main) else None)
    for i, batch in enumerate(bar, start=1):
        batch = to_device(batch, s.device, cfg.channels_last, non_blocking=cfg.pin_memory)
        boundary = i % cfg.accumulate == 0 or i == n_batches
        # Under DDP, gradients are all-reduced only on the micro-batch that ends an accumulation window.
        sync = contextlib.nullcontext() if boundary or not hasattr(s.forward_model, "no_sync") \
            else s.forward_model.no_sync()
        with sync:
            with autocast(s.device, cfg.amp):
                out = s.forward_model(*network_inputs(batch))
            loss, parts = batch_loss(loss_fn, out, batch)
            if not torch.isfinite(loss):
                if cfg.nan_policy == "stop":
                    raise SegkitError(
                        f"{s.where}: loss is {float(loss)} at epoch {epoch} step {i} (optimizer step "
                        f"{s.schedule.steps + 1}); training stopped, the last good checkpoint is kept. Lower train.lr, "
                        f"set train.clip_grad, or train.nan_policy=skip"
                    )
                skipped += 1
                s.optimizer.zero_grad(set_to_none=True)
                if boundary:
                    s.schedule.step()  # the schedule follows the plan of steps, taken or not
                continue
            s.scaler.scale(loss / cfg.accumulate).backward()
        total += float(loss.detach())
        seen += 1
        for k, v in parts.items():
            part_sums[k] = part_sums.get(k, 0.0) + v
        if boundary:
            if _optimizer_step(s):
                steps += 1
            else:
                skipped += 1
        if seen:
            bar.set_postfix(loss=f"{total / seen:.4f}", lr=f"{s.optimizer.param_groups[-1]['lr']:.2e}")
    bar.close()
    sums = gather(world, (total, seen, skipped))
    total, seen, skipped = (sum(x[j] for x in sums) for j in range(3))
    return EpochStats(loss=total / seen if seen else math.nan, batches=n_batches, steps=steps, skipped=skipped,
                      parts={k: v / max(seen, 1) for k, v in part_sums.items()})


def _optimizer_step(s: Stepper) -> bool:
    """Unscale, clip, step, schedule, EMA. False when the step was dropped (non-finite gradients)."""
    cfg = s.cfg
    s.scaler.unscale_(s.optimizer)
    finite = True
    if cfg.clip_grad:
        norm = torch.nn.utils.clip_grad_norm_(s.model.parameters(), cfg.clip_grad)
        finite = bool(torch.isfinite(norm))
    if not finite and cfg.nan_policy == "skip" and not s.scaler.is_enabled():
        s.optimizer.zero_grad(set_to_none=True)
        s.schedule.step()  # the schedule follows the plan of steps, taken or not
        return False
    s.scaler.step(s.optimizer)  # with fp16 the scaler itself skips steps with inf/NaN gradients
    s.scaler.update()
    s.optimizer.zero_grad(set_to_none=True)
    s.schedule.step()
    if s.ema is not None:
        s.ema.update(s.model)
    return True
