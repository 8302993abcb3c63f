"""Exponential moving average of the weights (timm's ModelEmaV3, with its warm-up so the average does not start
dominated by the random init). Validation, best.pt and snapshots use the averaged weights when EMA is on."""

from __future__ import annotations

from typing import Optional

from timm.utils import ModelEmaV3
from torch import nn


class EMA:
    def __init__(self, model: nn.Module, decay: float):
        self.ema = ModelEmaV3(model, decay=decay, use_warmup=True)
        self.updates = 0

    @property
    def module(self) -> nn.Module:
        return self.ema.module

    def update(self, model: nn.Module) -> None:
        self.updates += 1
        self.ema.update(model, step=self.updates)

    def state_dict(self) -> dict:
        return {"module": self.ema.module.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        self.ema.module.load_state_dict(state["module"])
        self.updates = int(state["updates"])


def build_ema(model: nn.Module, decay: Optional[float]) -> Optional[EMA]:
    return EMA(model, decay) if decay else None
