"""Training augmentations by name (albumentations), so configs say ``augment: medium``.

Images arrive as float32 (H, W, C) in [0, 1] and masks as uint8 (H, W, K). Each level adds to the one before:

- ``none``: nothing.
- ``light``: the dihedral group D4 (flips, 90-degree rotations). Free accuracy for textures and tissue with no
  preferred orientation; turn it off for data with a meaningful up/down (e.g. TGS depth runs downward -> use
  ``hflip``).
- ``hflip``: horizontal flips only.
- ``medium``: light + shift/scale/rotate + brightness/contrast.
- ``heavy``: medium + elastic/grid distortion, CLAHE, noise, coarse dropout.

Random crops (``train.crop_size``) come first so the photometric work runs on the small crop.
"""

from __future__ import annotations

from typing import Callable

import albumentations as A
import cv2
import numpy as np

from segkit.errors import ConfigError
from segkit.registry import Registry

AUGMENTS: Registry[Callable[[], list]] = Registry("augmentation")
REFLECT = cv2.BORDER_REFLECT_101


class FloatCLAHE(A.ImageOnlyTransform):
    """CLAHE for float images in [0, 1] (albumentations' CLAHE takes uint8 only)."""

    def __init__(self, clip_limit: float = 2.0, tile_grid_size: int = 8, p: float = 0.5):
        super().__init__(p=p)
        self.clip_limit = clip_limit
        self.tile_grid_size = tile_grid_size

    def apply(self, img: np.ndarray, **params) -> np.ndarray:
        clahe = cv2.createCLAHE(clipLimit=self.clip_limit, tileGridSize=(self.tile_grid_size,) * 2)
        u8 = np.clip(img * 255 + 0.5, 0, 255).astype(np.uint8)
        if u8.ndim == 2 or u8.shape[2] == 1:
            out = clahe.apply(u8.reshape(u8.shape[:2]))[..., None]
        else:
            lab = cv2.cvtColor(u8, cv2.COLOR_RGB2LAB)
            lab[:, :, 0] = clahe.apply(lab[:, :, 0])
            out = cv2.cvtColor(lab, cv2.COLOR_LAB2RGB)
        return out.reshape(img.shape).astype(np.float32) / 255.0

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("clip_limit", "tile_grid_size")


@AUGMENTS.register("none")
def _none() -> list:
    return []


@AUGMENTS.register("hflip")
def _hflip() -> list:
    return [A.HorizontalFlip(p=0.5)]


@AUGMENTS.register("light")
def _light() -> list:
    return [A.D4(p=1.0)]


@AUGMENTS.register("medium")
def _medium() -> list:
    return _light() + [
        A.Affine(scale=(0.85, 1.15), translate_percent=(-0.0625, 0.0625), rotate=(-15, 15), border_mode=REFLECT, p=0.5),
        A.RandomBrightnessContrast(brightness_limit=0.15, contrast_limit=0.15, p=0.5),
    ]


@AUGMENTS.register("heavy")
def _heavy() -> list:
    return _medium() + [
        A.OneOf(
            [A.ElasticTransform(alpha=30, sigma=6, border_mode=REFLECT), A.GridDistortion(border_mode=REFLECT)], p=0.3
        ),
        FloatCLAHE(p=0.2),
        A.GaussNoise(std_range=(0.01, 0.05), p=0.2),
        A.CoarseDropout(num_holes_range=(1, 4), hole_height_range=(0.05, 0.15), hole_width_range=(0.05, 0.15), p=0.2),
    ]


def build_augment(name: str | None, crop_size: int | None = None, key: str = "train.augment") -> A.Compose | None:
    """The named pipeline, preceded by pad-if-needed + random crop when ``crop_size`` is set."""
    steps: list = []
    if crop_size:
        steps += [
            A.PadIfNeeded(min_height=crop_size, min_width=crop_size, border_mode=REFLECT),
            A.RandomCrop(height=crop_size, width=crop_size),
        ]
    steps += AUGMENTS.get(name or "none", key=key)()
    return A.Compose(steps) if steps else None


def check_channels(name: str | None, channels: int, classes: int, key: str = "train.augment") -> None:
    """Run every transform of the named pipeline once on a ``channels``-channel image (and a mask): a transform that
    does not work on that many channels is an error naming it, before any training."""
    rng = np.random.default_rng(0)
    image = rng.random((64, 64, channels), dtype=np.float32)
    mask = np.zeros((64, 64, classes), dtype=np.uint8)
    for transform in AUGMENTS.get(name or "none", key=key)():
        transform.p = 1.0  # every transform applied, not skipped by its chance
        try:
            out = A.Compose([transform])(image=image, mask=mask)
        except Exception as err:  # albumentations and OpenCV raise many types for a channel count they refuse
            raise ConfigError(f"{key}: {name}'s {type(transform).__name__} does not work on {channels}-channel "
                              f"images ({type(err).__name__}: {str(err).splitlines()[0][:160]}); choose another "
                              f"augmentation") from None
        if out["image"].shape[-1] != channels and out["image"].shape[:2] == image.shape[:2]:
            raise ConfigError(f"{key}: {name}'s {type(transform).__name__} changes {channels} channels into "
                              f"{out['image'].shape[-1]}; choose another augmentation")
