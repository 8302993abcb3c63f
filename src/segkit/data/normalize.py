"""Intensities the network sees: percentile clipping on read, and the normalisation after augmentation.

- ``clip_percentiles(image, low, high)``: each channel clipped to its own percentiles and scaled to [0, 1] (raw CT,
  MRI or float data with outliers: the augmentations then work on the range they assume).
- ``Normalizer(cfg)``: ``imagenet`` (the pretrained encoders' statistics, for 1 or 3 input channels), ``image``
  (each image's own per-channel mean and std: scanners and stains that differ image to image), ``dataset``
  (``data.mean`` / ``data.std`` per input channel) or ``none``.
"""

from __future__ import annotations

import numpy as np

from segkit.config.schema import DataConfig

# ImageNet statistics: what pretrained encoders expect; harmless for random init.
IMAGENET_MEAN = {3: (0.485, 0.456, 0.406), 1: (0.449,)}
IMAGENET_STD = {3: (0.229, 0.224, 0.225), 1: (0.226,)}


def clip_percentiles(image: np.ndarray, low: float, high: float) -> np.ndarray:
    """float32 (H, W, C): each channel clipped to its [low, high] percentiles and scaled to [0, 1]."""
    flat = image.reshape(-1, image.shape[2])
    lo, hi = np.percentile(flat, [low, high], axis=0).astype(np.float32)
    scale = np.where(hi > lo, hi - lo, 1.0).astype(np.float32)
    return np.clip((image - lo) / scale, 0.0, 1.0).astype(np.float32)


class Normalizer:
    def __init__(self, cfg: DataConfig):
        self.kind = cfg.normalize
        c = cfg.input_channels
        if self.kind == "imagenet":
            self.mean, self.std = np.asarray(IMAGENET_MEAN[c], np.float32), np.asarray(IMAGENET_STD[c], np.float32)
        elif self.kind == "dataset":
            self.mean, self.std = np.asarray(cfg.mean, np.float32), np.asarray(cfg.std, np.float32)

    def __call__(self, image: np.ndarray) -> np.ndarray:
        if self.kind == "none":
            return image
        if self.kind == "image":
            flat = image.reshape(-1, image.shape[2])
            mean, std = flat.mean(0), flat.std(0)
            return (image - mean) / np.maximum(std, 1e-6)
        return (image - self.mean) / self.std
