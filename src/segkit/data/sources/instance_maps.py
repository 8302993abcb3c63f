"""Instances as label maps (``data.instances.labels``): one image per train image, 0 the background and 1..N its
objects (DSB 2018's instance maps)."""

from __future__ import annotations

from functools import cached_property

import numpy as np

from segkit.data import instances
from segkit.data.folder import ImageFolder
from segkit.data.sources.base import SOURCES, ObjectSource
from segkit.errors import DataError


@SOURCES.register("instance_maps")
class InstanceMaps(ObjectSource):
    @cached_property
    def folder(self) -> ImageFolder:
        return ImageFolder(self.cfg.root / self.cfg.instances.labels, "data.instances.labels")

    def check(self, ids: list[str]) -> None:
        for image_id in ids:
            if self.folder.find(image_id) is None:
                raise DataError(f"{self.comp.train_folder.find(image_id)}: no instance label map in "
                                f"{self.folder.folder}")

    def instance_map(self, image_id: str) -> np.ndarray:
        """int32 (H, W) object labels: 0 the background, 1..N the objects."""
        h, w = self.comp.image_size(image_id)
        path = self.folder.find(image_id)
        if path is None:
            raise DataError(f"id {image_id!r}: no instance label map in {self.folder.folder}")
        labels = instances.read_label_map(path)
        if labels.shape != (h, w):
            raise DataError(f"{path}: label map is {labels.shape[0]}x{labels.shape[1]}, image is {h}x{w}")
        return labels
