"""A volume competition's working spacing: the voxel grid its 3D networks see, and the way back to each case's own.

Cases of one competition come at several spacings (scanners, protocols); a 3D network's patch should hold the same
millimetres in every case, so volumes are resampled to one ``target_spacing``: the median of the cases' spacings,
axis by axis (nnU-Net's rule), except for a thick axis (its median more than ``ANISOTROPY`` times the others'):
there the 10th percentile, so that the few finer cases are not thrown away, yet never finer than the other axes.
Images go trilinearly, label volumes by their nearest voxel, probabilities back to each case's grid trilinearly
before tuning and scoring, so every score is on the case's own voxels.

A resampled volume keeps its place in the world: its affine (``resampled_affine``) maps each new voxel's centre to
the point it was interpolated at, so the volume's corners and centre stay where they were and a round trip gives
the original affine back.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

ANISOTROPY = 3.0  # a thick axis: spacing more than this many times the finest of the others (nnU-Net's threshold)
THICK_PERCENTILE = 10


def target_spacing(spacings: Sequence[Sequence[float]]) -> tuple[float, ...]:
    """The working spacing of cases of ``spacings`` (one row a case, one column an axis)."""
    table = np.asarray(spacings, dtype=np.float64)
    if table.ndim != 2 or not len(table):
        raise ValueError("target_spacing: give one spacing row per case")
    target = np.median(table, axis=0)
    thick = int(np.argmax(target))
    others = np.delete(target, thick)
    if len(others) and target[thick] > ANISOTROPY * others.max():
        target[thick] = max(np.percentile(table[:, thick], THICK_PERCENTILE), others.max())
    return tuple(float(s) for s in target)


def resampled_shape(shape: Sequence[int], spacing: Sequence[float], target: Sequence[float]) -> tuple[int, ...]:
    """The grid a volume of ``shape`` at ``spacing`` has at ``target`` spacing (at least one voxel an axis)."""
    return tuple(max(1, int(round(n * s / t))) for n, s, t in zip(shape, spacing, target))


def resample(volume: np.ndarray | torch.Tensor, shape: Sequence[int], labels: bool = False) -> torch.Tensor:
    """A volume (D, H, W), or channels of one (C, D, H, W), on a grid of ``shape``: trilinear, or the nearest voxel
    for ``labels`` (their values stay the values they were). Voxel centres are spread over the same extent
    (``align_corners=False``), as ``resampled_affine`` assumes."""
    x = torch.as_tensor(volume)
    channels = x.ndim == 4
    x = x if channels else x[None]
    if tuple(x.shape[1:]) == tuple(shape):
        return x if channels else x[0]
    dtype = x.dtype
    if labels:
        out = F.interpolate(x[None].float(), size=tuple(shape), mode="nearest-exact")[0].to(dtype)
    else:
        out = F.interpolate(x[None].float(), size=tuple(shape), mode="trilinear", align_corners=False)[0]
    return out if channels else out[0]


def resampled_affine(affine: np.ndarray, shape: Sequence[int], new_shape: Sequence[int]) -> np.ndarray:
    """The affine of a volume of ``shape`` resampled to ``new_shape`` by ``resample``: new voxel j's centre lies at
    old voxel coordinate (j + 0.5) * f - 0.5, f = old / new size along each axis."""
    f = np.asarray(shape, dtype=np.float64) / np.asarray(new_shape, dtype=np.float64)
    out = np.array(affine, dtype=np.float64, copy=True)
    out[:3, 3] = affine[:3, 3] + affine[:3, :3] @ ((f - 1) / 2)
    out[:3, :3] = affine[:3, :3] * f[None, :]
    return out


__all__ = ["ANISOTROPY", "resample", "resampled_affine", "resampled_shape", "target_spacing"]
