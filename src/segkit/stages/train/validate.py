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
from segkit.threshold import binarize


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
    sums = {"loss": 0.0, "dice": 0.0, "iou": 0.0, "score": 0.0}
    n_images = n_loss = 0
    bar = tqdm(loader, desc=desc, leave=False, disable=True if not progress else None, dynamic_ncols=True)
    for batch in bar:
        batch = to_device(batch, device, channels_last)
        with autocast(device, amp):
            out = model(batch["image"])
        logits, aux = split_output(out)
        if loss_fn is not None and "mask" in batch:
            loss, _ = loss_fn(logits, batch["mask"], aux, batch.get("has_mask"))
            sums["loss"] += float(loss) * len(batch["id"])
            n_loss += len(batch["id"])
        probs = probabilities(logits, mode)
        for i, image_id in enumerate(batch["id"]):
            size, native = batch["size"][i].tolist(), batch["native"][i].tolist()
            p = to_native(unpad(probs[i], size), native).cpu().numpy()
            if writer is not None:
                writer.write(image_id, p)
            if "mask" in batch:
                pred = binarize(p, threshold).view(bool)
                truth = batch["native_mask"][i] if "native_mask" in batch else batch["mask"][i]
                truth = (unpad(truth, native) > 0.5).cpu().numpy()
                overlap = overlap_scores(pred[None], truth[None], ["dice", "iou"], reduction="mean")
                sums["dice"] += float(overlap["dice"])
                sums["iou"] += float(overlap["iou"])
                sums["score"] += float(metric(pred, truth))
                n_images += 1
    model.train(was_training)
    parts = gather(world, (sums, n_images, n_loss))
    total = {k: sum(p[0][k] for p in parts) for k in sums}
    n_images = sum(p[1] for p in parts)
    n_loss = sum(p[2] for p in parts)
    nan = math.nan
    return {
        "val_loss": total["loss"] / n_loss if n_loss else nan,
        "dice": total["dice"] / n_images if n_images else nan,
        "iou": total["iou"] / n_images if n_images else nan,
        "score": total["score"] / n_images if n_images else nan,
    }
