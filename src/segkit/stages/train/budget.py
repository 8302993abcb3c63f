"""``train.minutes``: a fold's epochs derived from the time it may take on the machine it runs on.

A recipe written in epochs means 25 minutes on one CPU and 72 on another; one written in minutes means the same
on both, and on a GPU. Before a fold's first epoch, a few training steps (forward, loss and backward, under the
run's precision and memory format) run on a throwaway copy of the network and a few validation batches are timed;
the epochs are then as many as fit the minutes, validation included, to the nearest whole number of LR cycles. The
schedule is laid out over those epochs, and the number is recorded in ``last.pt`` so that a resumed fold (perhaps on
another machine) keeps it: the resume stays exact. The probe's own time is taken from the minutes: nine steps of a
large network on 256 px crops took 30 s of ISBI's 146-second folds, which ran 24 % over without it.
"""

from __future__ import annotations

import copy
import math
import statistics
import time
from dataclasses import dataclass
from typing import Callable

import torch
from torch.utils.data import DataLoader

from segkit.compute.device import autocast, synchronize, to_device
from segkit.config.schema import TrainConfig
from segkit.errors import ConfigError
from segkit.losses import SegLoss
from segkit.optim import build_optimizer
from segkit.stages.train.ema import build_ema
from segkit.stages.train.loop import batch_loss, network_inputs

PROBE_STEPS = 8  # timed training steps, after one untimed warm-up step
PROBE_VAL_BATCHES = 3  # the first, the middle and the last


@dataclass
class Plan:
    epochs: int
    step_seconds: float  # one optimizer step's batch, forward and backward
    epoch_seconds: float  # an epoch's training and its share of validation
    text: str


def time_steps(model, loader, loss_fn: SegLoss, device: torch.device, tcfg: TrainConfig, steps: int = PROBE_STEPS
               ) -> float:
    """Median seconds of a training batch (read, forward, loss, backward, the optimizer's step and the EMA update)
    on ``loader``'s first batches, on a copy of ``model`` with an optimizer of its own (the fold's weights and
    optimizer state stay as they are): an epoch pays for both, and a probe without them read Kvasir's epochs 5-9 %
    short."""
    probe = copy.deepcopy(model).train()
    optimizer = build_optimizer(probe, tcfg)
    ema = build_ema(probe, tcfg.ema)
    times = []
    batches = iter(loader)
    for i in range(steps + 1):
        began = time.perf_counter()  # reading and augmenting the batch count: an epoch waits for them too
        try:
            batch = next(batches)
        except StopIteration:
            batches = iter(loader)
            batch = next(batches)
        batch = to_device(batch, device, tcfg.channels_last)
        with autocast(device, tcfg.amp):
            out = probe(*network_inputs(batch))
        loss, _ = batch_loss(loss_fn, out, batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if ema is not None:
            ema.update(probe)
        synchronize(device)
        if i:  # the first step pays for allocation and kernel choice
            times.append(time.perf_counter() - began)
    return statistics.median(times)


def time_validation(validate: Callable[[DataLoader], object], loader: DataLoader, batches: int = PROBE_VAL_BATCHES
                    ) -> float:
    """Seconds of one pass over ``loader``: ``validate`` (the fold's own evaluation: forward, loss and the scores at
    native size) timed on a few of its batches spread from the first to the last, scaled by pixels to all of them.
    A loader of mixed sizes holds its smallest images first: its first batches alone had read DSB's validation at
    5 s where it took 30."""
    order = list(loader.batch_sampler)
    if not order:
        return 0.0
    pixels = [_pixels(loader.dataset, batch) for batch in order]
    picks = sorted({round(k * (len(order) - 1) / max(batches - 1, 1)) for k in range(batches)})

    def some(which: list[int]) -> DataLoader:
        return DataLoader(loader.dataset, batch_sampler=[order[k] for k in which], collate_fn=loader.collate_fn)

    validate(some([0]))  # the first pass warms up
    began = time.perf_counter()
    validate(some(picks))
    return (time.perf_counter() - began) * sum(pixels) / sum(pixels[k] for k in picks)


def _pixels(dataset, batch: list[int]) -> int:
    """The pixels a batch is padded to (its largest height by its largest width, times its images)."""
    sizes = [dataset.working_size(i) for i in batch]
    return len(batch) * max(h for h, _ in sizes) * max(w for _, w in sizes)


def epochs_for(minutes: float, step_seconds: float, steps_per_epoch: int, val_seconds: float, val_every: int,
               cycles: int, spent: float = 0.0) -> Plan:
    """The epochs that fit ``minutes`` best (whole LR cycles, the nearest number), validation every ``val_every``
    epochs and at the end, ``spent`` seconds of the minutes already gone (to the probe)."""
    train = step_seconds * steps_per_epoch
    epoch = train + val_seconds / val_every
    budget = minutes * 60 - spent
    # The nearest whole number of cycles, not the floor: with the few epochs a short budget holds, rounding down
    # left a quarter of a fold's minutes unused (Kvasir, 3.8 epochs fitting); the nearest is within half an epoch
    fit = (budget - val_seconds) / epoch / cycles if budget > val_seconds else 0.0
    epochs = int(math.floor(fit + 0.5)) * cycles
    least = (cycles * epoch + val_seconds + spent) / 60
    if fit < 1:  # not one whole cycle: an error, rather than a fold that runs far past its minutes
        what = "epoch" if cycles == 1 else f"{cycles} epochs (one per LR cycle)"
        raise ConfigError(f"train.minutes: {minutes:g} minutes hold no {what} here (an epoch takes about "
                          f"{epoch:.0f} s: {steps_per_epoch} steps of {step_seconds:.3f} s and validation); give at "
                          f"least {math.ceil(least * 10) / 10:g}")
    text = (f"train.minutes {minutes:g}: {epochs} epochs of about {epoch:.0f} s ({steps_per_epoch} steps of "
            f"{step_seconds:.3f} s, validation {val_seconds:.0f} s every {val_every})"
            + (f", after {spent:.0f} s of probing" if spent >= 0.5 else ""))
    return Plan(epochs, step_seconds, epoch, text)


__all__ = ["Plan", "epochs_for", "time_steps", "time_validation"]
