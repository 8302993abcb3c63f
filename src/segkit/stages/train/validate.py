"""Validation: loss, Dice, IoU and the competition metric on a fold's held-out images, each image scored at its
original size (padding cropped away; under ``data.resize`` its probabilities resized back to the native size and
scored against the mask as read), optionally writing the probabilities as the fold's OOF store.

Dice and IoU are per image and class, 1 when both prediction and truth are empty (the Kaggle convention), averaged
over classes and then images. The competition metric is the one object every stage scores with
(``segkit.metrics.get_metric(cfg.metric)``), applied to boolean (K, H, W) prediction and truth; the dataset score is
its mean. Pixels with p > threshold are predicted: the pipeline's one rule (``segkit.threshold``).
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from segkit.artifacts.probs import ProbWriter
from segkit.compute.device import autocast, to_device
from segkit.compute.distributed import World, gather
from segkit.data import unpad
from segkit.data.resize import to_native
from segkit.losses import SegLoss
from segkit.metrics import CompetitionMetric
from segkit.metrics.overlap import overlap_scores
from segkit.models import probabilities, split_output
from segkit.stages.train.budget import time_validation
from segkit.stages.train.data import val_loader
from segkit.threshold import binarize


class Scores:
    """The running sums of a validation: Dice, IoU and the competition metric of each image (or slice) at
    ``threshold``; ``means`` of sums gathered from every rank."""

    def __init__(self, metric: CompetitionMetric, threshold: float = 0.5):
        self.metric, self.threshold = metric, threshold

    @staticmethod
    def empty() -> dict[str, float]:
        return {"loss": 0.0, "dice": 0.0, "iou": 0.0, "score": 0.0, "images": 0, "losses": 0}

    def add(self, sums: dict, probs: np.ndarray, truth: np.ndarray) -> None:
        """One image's float (K, H, W) probabilities against its boolean (K, H, W) truth."""
        pred = binarize(probs, self.threshold).view(bool)
        overlap = overlap_scores(pred[None], truth[None], ["dice", "iou"], reduction="mean")
        sums["dice"] += float(overlap["dice"])
        sums["iou"] += float(overlap["iou"])
        sums["score"] += float(self.metric(pred, truth))
        sums["images"] += 1

    @staticmethod
    def means(parts: list[dict]) -> dict[str, float]:
        total = {k: sum(p[k] for p in parts) for k in parts[0]}
        n, n_loss = total["images"], total["losses"]
        nan = math.nan
        return {
            "val_loss": total["loss"] / n_loss if n_loss else nan,
            "dice": total["dice"] / n if n else nan,
            "iou": total["iou"] / n if n else nan,
            "score": total["score"] / n if n else nan,
        }


@torch.inference_mode()
def evaluate(
    model: nn.Module,
    loader,
    loss_fn: Optional[SegLoss],
    mode: str,
    metric: CompetitionMetric,
    device: torch.device,
    amp: str = "none",
    channels_last: bool = False,
    threshold: float = 0.5,
    writer: Optional[ProbWriter] = None,
    world: World = World(),
    progress: bool = False,
    desc: str = "valid",
) -> dict[str, float]:
    """Mean val loss / dice / iou / score over the loader's images (gathered over DDP ranks)."""
    was_training = model.training
    model.eval()
    scores = Scores(metric, threshold)
    sums = scores.empty()
    bar = tqdm(loader, desc=desc, leave=False, disable=True if not progress else None, dynamic_ncols=True)
    for batch in bar:
        batch = to_device(batch, device, channels_last)
        with autocast(device, amp):
            out = model(batch["image"])
        logits, aux = split_output(out)
        if loss_fn is not None and "mask" in batch:
            loss, _ = loss_fn(logits, batch["mask"], aux, batch.get("has_mask"))
            sums["loss"] += float(loss) * len(batch["id"])
            sums["losses"] += len(batch["id"])
        probs = probabilities(logits, mode)
        for i, image_id in enumerate(batch["id"]):
            size, native = batch["size"][i].tolist(), batch["native"][i].tolist()
            p = to_native(unpad(probs[i], size), native).cpu().numpy()
            if writer is not None:
                writer.write(image_id, p)
            if "mask" in batch:
                truth = batch["native_mask"][i] if "native_mask" in batch else batch["mask"][i]
                scores.add(sums, p, (unpad(truth, native) > 0.5).cpu().numpy())
    model.train(was_training)
    return scores.means(gather(world, sums))


class ImageValidation:
    """A 2D (or 2.5D) model's validation: ``evaluate`` over the fold's validation loader; ``seconds`` of a pass,
    from a few of its batches (``segkit.stages.train.budget.time_validation``)."""

    def __init__(self, loader, mode: str, scores: Scores, channels_last: bool, world: World):
        self.loader, self.mode, self.scores, self.channels_last, self.world = loader, mode, scores, channels_last, world

    @classmethod
    def of(cls, comp, tcfg, ids: list[str], scores: Scores, world: World) -> "ImageValidation":
        """The validation of the images ``ids`` of ``comp``, batched as the fold's train section says."""
        return cls(val_loader(comp, tcfg, ids, world), comp.mode, scores, tcfg.channels_last, world)

    def evaluate(self, model, loss_fn=None, device=torch.device("cpu"), amp: str = "none", writer=None,
                 progress: bool = False, loader=None) -> dict[str, float]:
        return evaluate(model, loader if loader is not None else self.loader, loss_fn, self.mode, self.scores.metric,
                        device, amp, self.channels_last, self.scores.threshold, writer=writer,
                        world=self.world if loader is None else World(), progress=progress)

    def seconds(self, model, loss_fn, device, amp: str) -> float:
        return time_validation(lambda batches: self.evaluate(model, loss_fn, device, amp, loader=batches),
                               self.loader)
