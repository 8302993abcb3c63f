"""Masks as images in a folder, named like the train images (``data.train_masks``): one grey level per class in
multiclass mode, non-zero = foreground otherwise; ``data.invert_masks`` for datasets that draw the background."""

from __future__ import annotations

from functools import cached_property

import numpy as np

from segkit.data import imageio
from segkit.data.folder import ImageFolder
from segkit.data.sources.base import SOURCES, MaskSource
from segkit.errors import DataError


@SOURCES.register("mask_folder")
class MaskFolder(MaskSource):
    @cached_property
    def folder(self) -> ImageFolder:
        return ImageFolder(self.cfg.path("train_masks"), "data.train_masks")

    def check(self, ids: list[str]) -> None:
        for image_id in ids:
            if self.folder.find(image_id) is None:
                image = self.comp.train_folder.find(image_id)
                raise DataError(f"{image}: no mask for this image in {self.folder.folder}")

    def read_mask(self, image_id: str) -> np.ndarray:
        h, w = self.comp.image_size(image_id)
        path = self.folder.find(image_id)
        if path is None:
            raise DataError(f"id {image_id!r}: no mask in {self.folder.folder}")
        mask = imageio.read_mask(path, self.cfg.mode, len(self.cfg.classes))
        if self.cfg.invert_masks:
            mask = 1 - mask
        if mask.shape[1:] != (h, w):
            raise DataError(f"{path}: mask is {mask.shape[1]}x{mask.shape[2]}, image is {h}x{w}")
        return mask
