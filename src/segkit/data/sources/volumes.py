"""Volumes (``data.volumes``): NIfTI images and label volumes seen as slices along an axis; the slices are the
images, so this source holds them too (normalised per volume: ``segkit.data.volumes.VolumeSet``). A label volume
holds class k as the value k + 1."""

from __future__ import annotations

import numpy as np

from segkit.data.sources.base import SOURCES, MaskSource
from segkit.data.volumes import VolumeSet
from segkit.errors import ConfigError, DataError


@SOURCES.register("volumes")
class Volumes(MaskSource):
    has_images = True

    def __init__(self, comp):
        super().__init__(comp)
        self._sets: dict[str, VolumeSet] = {}

    def volume_set(self, split: str) -> VolumeSet:
        """The labelled cases, or the test ones (``data.volumes.test_images``; the holdout is labelled cases)."""
        spec = self.cfg.volumes
        test = split == "test" and not self.comp.holdout_ids
        name = "test" if test else "train"
        if name not in self._sets:
            if test:
                if not spec.test_images:
                    raise ConfigError("data.volumes.test_images: not set, and nothing is held out "
                                      "(data.holdout_fraction, data.holdout_list): no test set")
                images, labels, key = self.cfg.root / spec.test_images, None, "data.volumes.test_images"
            else:
                labels = self.cfg.root / spec.labels if spec.labels else None
                images, key = self.cfg.root / spec.images, "data.volumes.images"
                if labels is not None and not labels.is_dir():
                    raise ConfigError(f"data.volumes.labels: not a folder: {labels}")
            self._sets[name] = VolumeSet(self.cfg, images, labels, key)
        return self._sets[name]

    def labelled_ids(self) -> list[str]:
        """Every slice of every labelled volume, case by case."""
        return self.volume_set("train").ids()

    def read_mask(self, image_id: str) -> np.ndarray:
        labels = self.volume_set("train").label(image_id)
        return np.stack([labels == k + 1 for k in range(len(self.cfg.classes))]).astype(np.uint8)

    def read_image(self, image_id: str, split: str) -> np.ndarray:
        return self.volume_set(split).image(image_id)  # normalised per volume, clipping included

    def image_size(self, image_id: str, split: str) -> tuple[int, int]:
        return self.volume_set(split).slice_size(image_id)

    def test_image_ids(self) -> list[str]:
        return self.volume_set("test").ids()

    def check_test_ids(self, ids: list[str]) -> None:
        volumes = self.volume_set("test")
        missing = [i for i in ids if i not in volumes.positions]
        if missing:
            raise DataError(f"{self.cfg.sample_submission or volumes.folder}: id {missing[0]!r} is no slice of "
                            f"a test volume in {volumes.folder} (slice ids: data.volumes.slice_id)")
