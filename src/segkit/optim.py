"""Optimizers and learning-rate schedules by name.

Parameter groups: the encoder and the rest (decoder, heads) each get their own learning rate (``train.encoder_lr``,
``train.lr``), and within each, biases and normalisation weights (every 0-/1-D tensor) get no weight decay — decay
on a BatchNorm scale or a bias only fights the normalisation.

Schedules are one function of the optimizer step: ``lr = base_lr * warmup(step) * curve(step)`` for every group.
Writing them as multipliers keeps separate encoder/decoder LRs in proportion, lets a linear warm-up compose with any
curve, makes resume a matter of restoring one step counter, and lets cycles line up with epochs so the end of each
cycle can be checkpointed for snapshot ensembles. Curves (``schedule.name``):

- ``constant``; ``cosine``: to ``min_lr`` over the run;
- ``cosine_restarts``: ``cycles`` equal cosine cycles (SGDR), each restarting at the base lr;
- ``onecycle``: cosine up from lr/div_factor to lr over ``pct_start`` of the run, then down to
  lr/(div_factor*final_div_factor) (torch's OneCycleLR shape);
- ``cyclic``: ``cycles`` triangles from ``min_lr`` up to lr and back (CyclicLR "triangular"; each cycle ends low);
- ``plateau``: constant, times ``factor`` after ``patience`` validations without improvement of the monitored
  value (torch's ReduceLROnPlateau decides, on a one-parameter stand-in optimizer whose lr is the multiplier).
"""

from __future__ import annotations

import math
from typing import Callable, Iterable, Optional

import torch
from torch import nn

from segkit.config.schema import ScheduleConfig, TrainConfig
from segkit.errors import ConfigError
from segkit.models import encoder_parameters
from segkit.registry import Registry

OPTIMIZERS: Registry[Callable[[list[dict], TrainConfig], torch.optim.Optimizer]] = Registry("optimizer")


@OPTIMIZERS.register("adamw")
def _adamw(groups: list[dict], cfg: TrainConfig) -> torch.optim.Optimizer:
    return torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)


@OPTIMIZERS.register("sgd")
def _sgd(groups: list[dict], cfg: TrainConfig) -> torch.optim.Optimizer:
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                           weight_decay=cfg.weight_decay)


@OPTIMIZERS.register("radam")
def _radam(groups: list[dict], cfg: TrainConfig) -> torch.optim.Optimizer:
    return torch.optim.RAdam(groups, lr=cfg.lr, weight_decay=cfg.weight_decay, decoupled_weight_decay=True)


def param_groups(model: nn.Module, lr: float, encoder_lr: Optional[float], weight_decay: float) -> list[dict]:
    """Up to four groups: (encoder | rest) x (decayed | not decayed). Each remembers its name and base lr."""
    in_encoder = encoder_parameters(model)
    buckets: dict[tuple[str, bool], list[nn.Parameter]] = {}
    for p in model.parameters():
        if not p.requires_grad:
            continue
        part = "encoder" if id(p) in in_encoder else "decoder"
        buckets.setdefault((part, p.ndim > 1), []).append(p)
    groups = []
    for (part, decay), params in sorted(buckets.items()):
        base = (encoder_lr or lr) if part == "encoder" else lr
        groups.append({"params": params, "lr": base, "initial_lr": base, "weight_decay": weight_decay if decay else 0.0,
                       "name": f"{part}{'' if decay else '_no_decay'}"})
    return groups


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    builder = OPTIMIZERS.get(cfg.optimizer, key="train.optimizer")
    return builder(param_groups(model, cfg.lr, cfg.encoder_lr, cfg.weight_decay), cfg)


# ----------------------------------------------------------------------------------------------------- schedules
# A curve maps (step, total steps, schedule config, floor = min_lr / lr) to a multiplier in (0, 1].
Curve = Callable[[int, int, ScheduleConfig, float], float]
SCHEDULES: Registry[Curve] = Registry("schedule")
CYCLIC = ("cosine_restarts", "cyclic")


def _cos(t: float) -> float:
    """1 -> 0 as t goes 0 -> 1, along half a cosine."""
    return 0.5 * (1 + math.cos(math.pi * min(max(t, 0.0), 1.0)))


@SCHEDULES.register("constant")
def _constant(step: int, total: int, cfg: ScheduleConfig, floor: float) -> float:
    return 1.0


@SCHEDULES.register("plateau")
def _plateau(step: int, total: int, cfg: ScheduleConfig, floor: float) -> float:
    return 1.0  # the cuts come from PlateauCuts at validation time


@SCHEDULES.register("cosine")
def _cosine(step: int, total: int, cfg: ScheduleConfig, floor: float) -> float:
    return floor + (1 - floor) * _cos(step / max(total - 1, 1))


def _cycle_position(step: int, total: int, cycles: int) -> float:
    """Position in the current cycle, 0 at its first step -> 1 at its last."""
    length = total / cycles
    start = math.floor(step / length) * length
    end = start + length
    return (step - math.ceil(start)) / max(math.ceil(end) - math.ceil(start) - 1, 1)


@SCHEDULES.register("cosine_restarts")
def _cosine_restarts(step: int, total: int, cfg: ScheduleConfig, floor: float) -> float:
    return floor + (1 - floor) * _cos(_cycle_position(step, total, cfg.cycles))


@SCHEDULES.register("cyclic")
def _cyclic(step: int, total: int, cfg: ScheduleConfig, floor: float) -> float:
    p = _cycle_position(step, total, cfg.cycles)
    return floor + (1 - floor) * (1 - abs(2 * p - 1))


@SCHEDULES.register("onecycle")
def _onecycle(step: int, total: int, cfg: ScheduleConfig, floor: float) -> float:
    start = 1 / cfg.div_factor
    end = start / cfg.final_div_factor
    peak = max(int(round(cfg.pct_start * total)) - 1, 1)
    if step <= peak:
        return start + (1 - start) * (1 - _cos(step / peak))
    return end + (1 - end) * _cos((step - peak) / max(total - 1 - peak, 1))


class PlateauCuts:
    """ReduceLROnPlateau's decisions as a multiplier: torch's scheduler drives a stand-in optimizer with lr 1."""

    def __init__(self, cfg: ScheduleConfig, mode: str, floor: float):
        self._param = torch.zeros(1, requires_grad=True)
        self._opt = torch.optim.SGD([self._param], lr=1.0)
        self.sched = torch.optim.lr_scheduler.ReduceLROnPlateau(
            self._opt, mode=mode, factor=cfg.factor, patience=cfg.patience, min_lr=floor
        )

    @property
    def factor(self) -> float:
        return float(self._opt.param_groups[0]["lr"])

    def observe(self, value: float) -> None:
        self.sched.step(value)

    def state_dict(self) -> dict:
        return {"sched": self.sched.state_dict(), "lr": self.factor}

    def load_state_dict(self, state: dict) -> None:
        self.sched.load_state_dict(state["sched"])
        self._opt.param_groups[0]["lr"] = state["lr"]


class LRSchedule:
    """Sets every group's lr to ``initial_lr * multiplier(step)``; call ``step()`` after each optimizer step."""

    def __init__(self, optimizer: torch.optim.Optimizer, cfg: ScheduleConfig, total_steps: int, warmup_steps: int,
                 base_lr: float, monitor_mode: str = "max"):
        self.optimizer = optimizer
        self.cfg = cfg
        self.curve = SCHEDULES.get(cfg.name, key="train.schedule.name")
        self.total = max(int(total_steps), 1)
        self.warmup = max(int(warmup_steps), 0)
        self.floor = min(cfg.min_lr / base_lr, 1.0)
        self.plateau = PlateauCuts(cfg, monitor_mode, self.floor) if cfg.name == "plateau" else None
        self.steps = 0
        for g in optimizer.param_groups:
            g.setdefault("initial_lr", g["lr"])
        self._apply()

    def multiplier(self, step: Optional[int] = None) -> float:
        step = self.steps if step is None else step
        warm = min(1.0, (step + 1) / (self.warmup + 1)) if self.warmup else 1.0
        value = warm * self.curve(min(step, self.total - 1), self.total, self.cfg, self.floor)
        if self.plateau is not None:
            value *= self.plateau.factor
        return value

    def _apply(self) -> None:
        m = self.multiplier()
        for g in self.optimizer.param_groups:
            g["lr"] = g["initial_lr"] * m

    def step(self) -> None:
        self.steps += 1
        self._apply()

    def observe(self, value: float) -> None:
        """A validation result (for plateau); other schedules ignore it."""
        if self.plateau is not None and math.isfinite(value):
            self.plateau.observe(value)
            self._apply()

    def lrs(self) -> dict[str, float]:
        return {g.get("name", str(i)): g["lr"] for i, g in enumerate(self.optimizer.param_groups)}

    def state_dict(self) -> dict:
        return {"steps": self.steps, "plateau": self.plateau.state_dict() if self.plateau else None}

    def load_state_dict(self, state: dict) -> None:
        self.steps = int(state["steps"])
        if self.plateau is not None and state.get("plateau"):
            self.plateau.load_state_dict(state["plateau"])
        self._apply()


def build_schedule(optimizer: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int,
                   monitor_mode: str = "max") -> LRSchedule:
    steps_per_epoch = max(int(steps_per_epoch), 1)
    return LRSchedule(
        optimizer, cfg.schedule, total_steps=cfg.epochs * steps_per_epoch,
        warmup_steps=round(cfg.schedule.warmup_epochs * steps_per_epoch), base_lr=cfg.lr, monitor_mode=monitor_mode,
    )


def cycle_end_epochs(cfg: TrainConfig) -> list[int]:
    """1-based epochs that end an LR cycle (where snapshot checkpoints go); empty for single-cycle schedules."""
    if cfg.schedule.name not in CYCLIC or cfg.schedule.cycles < 2:
        return []
    if cfg.epochs % cfg.schedule.cycles:
        raise ConfigError(f"train.schedule.cycles ({cfg.schedule.cycles}) must divide train.epochs ({cfg.epochs})")
    length = cfg.epochs // cfg.schedule.cycles
    return [length * (c + 1) for c in range(cfg.schedule.cycles)]


def group_lrs(groups: Iterable[dict]) -> tuple[float, float]:
    """(decoder lr, encoder lr) of an optimizer's groups, for logging."""
    dec = enc = float("nan")
    for g in groups:
        if g.get("name", "").startswith("encoder"):
            enc = g["lr"]
        else:
            dec = g["lr"]
    return dec, (enc if not math.isnan(enc) else dec)
