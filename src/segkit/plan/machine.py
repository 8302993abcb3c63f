"""The machine probe of ``segkit plan``: how fast each candidate network trains and predicts here.

Each candidate of the ladder (smallest first) trains a few steps and predicts a few batches at the planned crop size, on
the device the run will use, in the precision and memory format the run will train in (``amp: auto`` is bf16 on a CPU
that computes it, float32 on one that does not, bf16 or fp16 on a GPU). The steps are timed by the very function
``train.minutes`` times a fold's steps with (forward, BCE, backward, the optimizer's step and the EMA update): a probe
of its own (no channels_last, no optimizer) had read TGS at 34-37 ms a training image where its runs took 19-24. Random
weights and a random batch: speed depends on neither; reading the data is timed apart, on the data (``reading``).
The probe stops climbing the ladder when a candidate alone has taken ``limit`` seconds, so it ends in about two
minutes on a slow CPU, and at the first candidate whose batch does not fit the device's memory: a plan never offers a
network the machine cannot hold.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from typing import Optional

import torch

from segkit.compute.device import autocast, synchronize, training_layout
from segkit.config.schema import ModelConfig, TrainConfig
from segkit.data import SegDataset
from segkit.errors import ConfigError
from segkit.losses import build_loss
from segkit.models import build_model
from segkit.stages.train.budget import time_steps


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


@dataclass(frozen=True)
class Reading:
    train: float  # seconds to read, augment and crop one training image
    pixel: float  # seconds to read a native pixel (an image predicted or validated is read whole)


def reading(comp, ids: list[str], crop: int, augment: Optional[str], samples: int = 24, seed: int = 0) -> Reading:
    """What reading the data costs here, timed on a sample of the training images as a fold reads them: a crop with
    its augmentation, and a whole image at its native size: the networks' probe runs on a random batch, and a run
    reads every image on the cores that train (DSB: 3.7 ms a 160 px crop with medium augmentation beside 29.4 ms of
    network on a 2-core CPU with native bf16; 38 ms a native megapixel)."""
    pick = random.Random(seed).sample(list(ids), min(samples, len(ids)))
    crops = SegDataset(comp, pick, "train", augment=augment, crop_size=crop)
    whole = SegDataset(comp, pick, "train", native_mask=True)
    began = time.perf_counter()
    for i in range(len(pick)):
        crops[i]
    train = (time.perf_counter() - began) / len(pick)
    began, pixels = time.perf_counter(), 0
    for i in range(len(pick)):
        h, w = whole[i]["native"].tolist()
        pixels += h * w
    return Reading(train, (time.perf_counter() - began) / max(pixels, 1))


@dataclass
class Speed:
    train: float  # seconds per training image at the crop size
    predict: float  # seconds per predicted image (one view) at the crop size
    precision: str


def probe(candidates: list[Candidate], channels: int, classes: int, crop: int, tcfg: TrainConfig,
          device: torch.device, predict_channels_last: bool = False, limit: float = 40.0, steps: int = 4
          ) -> dict[str, Speed]:
    """Seconds per image of each candidate here (the ones reached within the time limit), trained as ``tcfg`` says
    (its batch size, resolved precision, memory format, optimizer and EMA)."""
    out: dict[str, Speed] = {}
    for c in candidates:
        began = time.perf_counter()
        try:
            out[c.name] = _time(c, channels, classes, crop, tcfg, device, predict_channels_last, steps)
        except torch.OutOfMemoryError:
            # a batch of this network does not fit the device: neither do the larger ones after it
            print(f"plan:   {c.name}: a batch of {tcfg.batch_size} at {crop} px does not fit on {device}; "
                  "not offered", flush=True)
            if device.type == "cuda":
                torch.cuda.empty_cache()
            break
        if time.perf_counter() - began > limit:
            break
    if not out:
        raise ConfigError(f"plan: not even {candidates[0].name} trains a batch of {tcfg.batch_size} at {crop} px "
                          f"on {device}")
    return out


def _time(c: Candidate, channels: int, classes: int, crop: int, tcfg: TrainConfig, device: torch.device,
          predict_channels_last: bool, steps: int) -> Speed:
    """One candidate's seconds per image: the median of ``steps`` training steps after a warm-up, and two
    predicted batches."""
    mode = "binary" if classes == 1 else "multilabel"
    net = build_model(ModelConfig.model_validate(c.model()), channels, mode, classes, pretrained=False).to(device)
    net = training_layout(net, tcfg.channels_last, tcfg.amp, device)
    x = torch.rand(tcfg.batch_size, channels, crop, crop, device=device)
    y = (torch.rand(tcfg.batch_size, classes, crop, crop, device=device) > 0.5).float()
    loss = build_loss({"bce": 1.0}, mode, classes).to(device)
    step = time_steps(net, [{"image": x, "mask": y}], loss, device, tcfg, steps)
    net.eval()
    if predict_channels_last:
        net = net.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        t = time.perf_counter()
        for _ in range(2):
            with autocast(device, tcfg.amp):
                net(x)
        synchronize(device)
        predict = (time.perf_counter() - t) / (2 * tcfg.batch_size)
    return Speed(step / tcfg.batch_size, predict, tcfg.amp)


__all__ = ["Candidate", "LADDER", "Reading", "Speed", "probe", "reading"]
