"""A whole case through a 3D network: resampled to the working spacing, predicted in a sliding window of the training
patch (Gaussian-weighted, several windows a forward: ``segkit.inference.tiling``), and the probabilities resampled
back onto the case's own grid, where they are stored slice by slice like any 2.5D model's, so that ensembles,
tuning, scores and submissions see one kind of prediction whatever network made it.

A case smaller than the patch along an axis is padded with zeros (the mean of a z-scored volume, as nnU-Net pads)
and the padding cropped from the result. Training validation, the predict stage, the offline bundle and the
ablation all predict a case through ``predict_case``.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch

from segkit.data.spacing import resample, resampled_shape
from segkit.inference.tiling import predict_tiled


def predict_case(fn: Callable[[torch.Tensor], torch.Tensor], image: np.ndarray, spacing: Sequence[float],
                 target: Sequence[float], patch: Sequence[int], overlap: float = 0.5, blend: str = "gaussian",
                 batch_size: int = 1, device: torch.device | str = "cpu") -> torch.Tensor:
    """float32 (K, X, Y, Z) probabilities on the case's grid for its float32 (C, X, Y, Z) image at ``spacing`` mm,
    the network ``fn`` ((N, C, *patch) -> (N, K, *patch) probabilities) working at ``target`` mm."""
    shape = tuple(image.shape[1:])
    work = resampled_shape(shape, spacing, target)
    x = resample(torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)), work)
    probs = predict_tiled(fn, x, tuple(patch), overlap=overlap, blend=blend, batch_size=batch_size,
                          pad_mode="constant", device=device)
    return resample(probs, shape).clamp_(0, 1)  # trilinear stays within [0, 1] up to rounding


def slice_of(volume: torch.Tensor, axis: int, index: int) -> torch.Tensor:
    """(K, H, W) slice ``index`` along voxel ``axis`` of a (K, X, Y, Z) volume: the pixels of that slice's id."""
    return volume.select(axis + 1, index)


__all__ = ["predict_case", "slice_of"]
