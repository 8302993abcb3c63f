"""Augmentation of 3D training patches, from MONAI's dictionary transforms (image and labels moved together).

The presets (``AUGMENTS_3D``) share ``train.augment``'s names with the 2D ones, so a recipe's ``augment: light``
means the like amount for its 3D model:

- ``none``;
- ``flips``: mirror along each voxel axis (p 0.5 each): the 8 mirrorings nnU-Net trains and predicts with;
- ``light``: flips, 90-degree turns in the slice plane (where the patch's two in-plane sides are equal), and
  intensity: scale and shift (p 0.3), gamma (p 0.3), Gaussian noise (p 0.15);
- ``medium``: light, plus a small affine (p 0.2: up to 15 degrees about each axis, 0.85-1.25 scale), nnU-Net's
  spatial augmentation in its usual range;
- ``heavy``: medium, plus elastic deformation (p 0.1).

MONAI rather than TorchIO, though not for speed: on the same pipeline TorchIO is 17-30 % faster a patch here, MONAI
faster or even with the affine always on (bench/augment3d.py, BENCHMARKS.md), and either costs 3-20 ms a patch
against a 500-1000 ms training step. MONAI is already the 3D networks' library; TorchIO would add SimpleITK and four
other packages to every install and bundle. Transforms run on torch tensors with no metadata tracked.
Randomness comes from the patch's own seed (``apply(image, labels, seed)``), so a batch is the same whatever the
number of loader workers.
"""

from __future__ import annotations

import math
from typing import Callable, Optional, Sequence

import torch

from segkit.errors import ConfigError
from segkit.registry import Registry


def _transforms():
    from monai import transforms as T  # here: only 3D training needs MONAI's transforms
    from monai.data import set_track_meta  # here, with them

    set_track_meta(False)  # plain tensors: MONAI's metadata costs time per transform and nothing here reads it
    return T


BOTH = ("image", "label")
# A preset: (patch, slice plane) -> MONAI dictionary transforms on "image" (C, D, H, W) and "label" (1, D, H, W).
AUGMENTS_3D: Registry[Callable[[tuple, tuple], list]] = Registry("3D augmentation")


@AUGMENTS_3D.register("none")
def _none(patch: tuple, plane: tuple) -> list:
    return []


@AUGMENTS_3D.register("flips")
def _flips(patch: tuple, plane: tuple) -> list:
    T = _transforms()
    return [T.RandFlipd(BOTH, prob=0.5, spatial_axis=axis) for axis in range(3)]


def _intensity() -> list:
    T = _transforms()
    return [T.RandScaleIntensityd("image", factors=0.1, prob=0.3),
            T.RandShiftIntensityd("image", offsets=0.1, prob=0.3),
            T.RandAdjustContrastd("image", gamma=(0.7, 1.5), prob=0.3),
            T.RandGaussianNoised("image", std=0.1, prob=0.15)]


def _turns(patch: tuple, plane: tuple) -> list:
    if patch[plane[0]] != patch[plane[1]]:  # a turn of a non-square plane would change the patch's shape
        return []
    return [_transforms().RandRotate90d(BOTH, prob=0.5, max_k=3, spatial_axes=plane)]


def _affine(patch: tuple) -> list:
    angle = math.radians(15)
    return [_transforms().RandAffined(BOTH, prob=0.2, rotate_range=(angle,) * 3, scale_range=(0.15,) * 3,
                                      mode=("bilinear", "nearest"), padding_mode="zeros", spatial_size=patch)]


@AUGMENTS_3D.register("light")
def _light(patch: tuple, plane: tuple) -> list:
    return _flips(patch, plane) + _turns(patch, plane) + _intensity()


@AUGMENTS_3D.register("medium")
def _medium(patch: tuple, plane: tuple) -> list:
    return _flips(patch, plane) + _turns(patch, plane) + _affine(patch) + _intensity()


@AUGMENTS_3D.register("heavy")
def _heavy(patch: tuple, plane: tuple) -> list:
    elastic = _transforms().Rand3DElasticd(BOTH, sigma_range=(5, 8), magnitude_range=(50, 150), prob=0.1,
                                           mode=("bilinear", "nearest"), padding_mode="zeros", spatial_size=patch)
    return _flips(patch, plane) + _turns(patch, plane) + _affine(patch) + [elastic] + _intensity()


class Augment3D:
    """A preset for patches of ``patch`` voxels; ``plane`` the two voxel axes of the slice plane (turns)."""

    def __init__(self, name: str, patch: Sequence[int], plane: tuple[int, int] = (0, 1), key: str = "train.augment"):
        if name not in AUGMENTS_3D:
            raise ConfigError(f"{key}: {name!r} is no 3D augmentation; known: {', '.join(AUGMENTS_3D.names())}")
        self.name = name
        steps = AUGMENTS_3D.get(name)(tuple(patch), tuple(plane))
        self.transform = _transforms().Compose(steps) if steps else None

    def apply(self, image: torch.Tensor, labels: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(C, D, H, W) float image and (1, D, H, W) labels, augmented alike."""
        if self.transform is None:
            return image, labels
        self.transform.set_random_state(seed=seed % 2**32)
        out = self.transform({"image": image, "label": labels})
        return _plain(out["image"]), _plain(out["label"])


def _plain(x) -> torch.Tensor:
    return x.as_tensor() if hasattr(x, "as_tensor") else torch.as_tensor(x)


def slice_plane(axis: Optional[int]) -> tuple[int, int]:
    """The two voxel axes of the plane slices are cut in (``data.volumes.axis`` the third)."""
    axes = [a for a in range(3) if a != (2 if axis is None else axis)]
    return axes[0], axes[1]


__all__ = ["AUGMENTS_3D", "Augment3D", "slice_plane"]
