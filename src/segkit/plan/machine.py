"""The machine probe of ``segkit plan``: how fast each candidate network trains and predicts here.

Each candidate of the ladder (smallest first) trains a few steps (forward, BCE, backward: the cost every segkit loss
shares) and predicts a few batches at the planned crop size, on the device the run will use and in the precision
``amp: auto`` picks there (bf16 on a CPU that computes it, float32 on one that does not, bf16 or fp16 on a GPU).
Random weights: speed does not depend on them. The probe stops climbing the ladder when a candidate alone has
taken ``limit`` seconds, so it ends in about two minutes on a slow CPU, and at the first candidate whose batch does not
fit the device's memory: a plan never offers a network the machine cannot hold.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from segkit.compute.device import autocast, resolve_amp, synchronize
from segkit.config.schema import ModelConfig
from segkit.errors import ConfigError
from segkit.models import build_model, split_output


@dataclass(frozen=True)
class Candidate:
    name: str
    arch: str
    encoder: str
    params: dict = field(default_factory=dict)
    weights: str = "imagenet"  # Lite0-2's ImageNet weights come from local packages (no download)

    def model(self) -> dict:
        out = {"name": self.name, "arch": self.arch, "encoder": self.encoder, "encoder_weights": self.weights}
        if self.params:
            out["params"] = dict(self.params)
        return out


# Smallest first. The half-width decoder is the TGS cpu recipe's (a step 1.45x faster on a CPU at 96 px).
LADDER = {
    "cpu": [Candidate("unet_lite0", "Unet", "tu-tf_efficientnet_lite0",
                      {"decoder_channels": [128, 64, 32, 16, 8]}),
            Candidate("unet_lite0_full", "Unet", "tu-tf_efficientnet_lite0"),
            Candidate("unet_lite2", "Unet", "tu-tf_efficientnet_lite2")],
    "cuda": [Candidate("unet_lite0", "Unet", "tu-tf_efficientnet_lite0"),
             Candidate("unet_lite2", "Unet", "tu-tf_efficientnet_lite2"),
             Candidate("fpn_lite2", "FPN", "tu-tf_efficientnet_lite2")],
}


@dataclass
class Speed:
    train: float  # seconds per training image at the crop size
    predict: float  # seconds per predicted image (one view) at the crop size
    precision: str


def probe(candidates: list[Candidate], channels: int, classes: int, crop: int, batch: int, device: torch.device,
          limit: float = 40.0, steps: int = 3) -> dict[str, Speed]:
    """Seconds per image of each candidate here (the ones reached within the time limit)."""
    amp = resolve_amp("auto", device, key="plan")
    out: dict[str, Speed] = {}
    for c in candidates:
        began = time.perf_counter()
        try:
            out[c.name] = _time(c, channels, classes, crop, batch, device, amp, steps)
        except torch.OutOfMemoryError:
            # a batch of this network does not fit the device: neither do the larger ones after it
            print(f"plan:   {c.name}: a batch of {batch} at {crop} px does not fit on {device}; not offered",
                  flush=True)
            if device.type == "cuda":
                torch.cuda.empty_cache()
            break
        if time.perf_counter() - began > limit:
            break
    if not out:
        raise ConfigError(f"plan: not even {candidates[0].name} trains a batch of {batch} at {crop} px on {device}")
    return out


def _time(c: Candidate, channels: int, classes: int, crop: int, batch: int, device: torch.device, amp: str,
          steps: int) -> Speed:
    """One candidate's seconds per image: the median of ``steps`` training steps after a warm-up, and two
    predicted batches."""
    net = build_model(ModelConfig.model_validate(c.model()), channels, "binary" if classes == 1 else "multilabel",
                      classes, pretrained=False).to(device)
    x = torch.rand(batch, channels, crop, crop, device=device)
    y = (torch.rand(batch, classes, crop, crop, device=device) > 0.5).float()
    times = []
    for i in range(steps + 1):
        t = time.perf_counter()
        with autocast(device, amp):
            logits, _ = split_output(net(x))
        F.binary_cross_entropy_with_logits(logits.float(), y).backward()
        net.zero_grad(set_to_none=True)
        synchronize(device)
        if i:
            times.append(time.perf_counter() - t)
    net.eval()
    with torch.inference_mode():
        t = time.perf_counter()
        for _ in range(2):
            with autocast(device, amp):
                net(x)
        synchronize(device)
        predict = (time.perf_counter() - t) / (2 * batch)
    return Speed(statistics.median(times) / batch, predict, amp)


__all__ = ["Candidate", "LADDER", "Speed", "probe"]
