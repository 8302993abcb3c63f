"""The working resolution (``data.resize``): the size the networks see images at, and the way back to each image's
native size.

Images (and their masks) are resized on read for training and prediction: to a fixed ``size`` [H, W], by a
``scale`` factor (above 1 enlarges: thin structures that a stride-32 encoder would lose), or so that the
``longest`` side has that many pixels (aspect kept; the batch pads the rest). Crops and tiles are in working
pixels. Every probability leaves the network's side at the image's native size (``to_native``), so OOF stores,
tuning, every score and every RLE are native, as the competition scores them.

Images shrink with area averaging (no aliasing) and grow bilinearly; masks take the nearest pixel (0/1 stays 0/1);
probabilities go back bilinearly.
"""

from __future__ import annotations

from typing import Optional

import cv2
import numpy as np
import torch
import torch.nn.functional as F


def working_size(h: int, w: int, spec) -> tuple[int, int]:
    """(H, W) an image of native (h, w) is seen at under ``spec`` (a ``ResizeSpec``; None: native)."""
    if spec is None:
        return int(h), int(w)
    if spec.size is not None:
        return int(spec.size[0]), int(spec.size[1])
    factor = spec.scale if spec.scale is not None else spec.longest / max(h, w)
    return max(1, int(round(h * factor))), max(1, int(round(w * factor)))


def resize_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(H, W, C) float or uint8 image to ``size`` (up to 512 channels)."""
    h, w = size
    if image.shape[:2] == (h, w):
        return image
    shrink = h * w < image.shape[0] * image.shape[1]
    method = cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
    # cv2 drops a last axis of 1: put it back
    return cv2.resize(np.ascontiguousarray(image), (w, h), interpolation=method).reshape(h, w, image.shape[2])


def resize_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(H, W, K) 0/1 mask to ``size`` by the nearest pixel."""
    h, w = size
    if mask.shape[:2] == (h, w):
        return mask
    rows = np.minimum((np.arange(h) + 0.5) * mask.shape[0] / h, mask.shape[0] - 1).astype(np.int64)
    cols = np.minimum((np.arange(w) + 0.5) * mask.shape[1] / w, mask.shape[1] - 1).astype(np.int64)
    return np.ascontiguousarray(mask[rows][:, cols])


def to_native(probs: torch.Tensor, native: Optional[tuple[int, int]]) -> torch.Tensor:
    """(K, h, w) probabilities at working size to (K, H, W) at the native size (bilinear; on their device)."""
    if native is None or tuple(probs.shape[-2:]) == tuple(native):
        return probs
    out = F.interpolate(probs[None].float(), size=tuple(int(n) for n in native), mode="bilinear",
                        align_corners=False)
    return out[0]


__all__ = ["resize_image", "resize_mask", "to_native", "working_size"]
