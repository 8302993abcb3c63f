"""The interface every mask source implements, and how the config picks one."""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

import numpy as np

from segkit.data import instances
from segkit.errors import ConfigError, DataError
from segkit.registry import Registry

if TYPE_CHECKING:
    from segkit.data.competition import Competition

SOURCES: Registry[type["MaskSource"]] = Registry("mask source")


class MaskSource:
    """The labelled images of a competition and their masks.

    A source reads its own files and checks them (errors name the file and row); the images themselves come from
    the competition's image folders unless the source says ``has_images`` (volumes, whose slices are the images).
    Facts the rest of the pipeline reads: ``objects`` (masks are made of instances: one submission row per object,
    ``instance_map``), ``has_images``."""

    name = ""
    objects = False  # masks are the targets of instances (``instance_map``)
    has_images = False  # the source's files hold the images too (``read_image``, ``image_size``, ``test_ids``)

    def __init__(self, comp: "Competition"):
        self.comp = comp
        self.cfg = comp.cfg
        self.options = dict(comp.cfg.mask_options or {})

    # ------------------------------------------------------------------------------------------ every source
    def labelled_ids(self) -> list[str]:
        """Every labelled image's id, in folder order, each checked to have its mask (before any training)."""
        ids = self.comp.train_folder.ids()
        if not ids:
            raise DataError(f"{self.comp.train_folder.folder}: no images")
        self.check(ids)
        return ids

    def check(self, ids: list[str]) -> None:
        """Fail, naming the file or row, when an image of ``ids`` has no mask."""

    def read_mask(self, image_id: str) -> np.ndarray:
        """uint8 (K, H, W) of 0/1 at the image's size."""
        raise NotImplementedError

    def mask_stats(self, image_id: str) -> tuple[np.ndarray, int]:
        """(foreground pixels per class, pixels in the image), for fold stratification."""
        mask = self.read_mask(image_id)
        return mask.reshape(mask.shape[0], -1).sum(1), mask.shape[1] * mask.shape[2]

    def instance_map(self, image_id: str) -> np.ndarray:
        raise ConfigError("data.instances: not set (this competition's masks have no objects)")

    # ---------------------------------------------------------------------- sources that hold the images
    def read_image(self, image_id: str, split: str) -> np.ndarray:
        raise NotImplementedError

    def image_size(self, image_id: str, split: str) -> tuple[int, int]:
        raise NotImplementedError

    def test_image_ids(self) -> list[str]:
        """The test images when no sample submission lists them."""
        raise NotImplementedError

    def check_test_ids(self, ids: list[str]) -> None:
        raise NotImplementedError


class ObjectSource(MaskSource):
    """Masks made of instances: the training targets (mask, contour) drawn from each image's objects."""

    objects = True

    def read_mask(self, image_id: str) -> np.ndarray:
        return instances.targets(self.instance_map(image_id), self.cfg.instances)


def infer(cfg) -> Optional[str]:
    """The source the data keys set imply, when ``data.mask_source`` names none (None: no masks at all)."""
    if cfg.volumes is not None:
        return "volumes"
    if cfg.instances is not None:
        return "instance_maps" if cfg.instances.labels else "object_rows"
    if cfg.train_masks:
        return "mask_folder"
    if cfg.train_csv:
        return "rle_csv"
    return None


def source_class(cfg) -> Optional[type[MaskSource]]:
    """The class of the source the config picks (None: the data keys set imply none)."""
    name = cfg.mask_source or infer(cfg)
    return None if name is None else SOURCES.get(name, key="data.mask_source")


def source_for(comp: "Competition") -> MaskSource:
    kind = source_class(comp.cfg)
    if kind is None:
        raise ConfigError("data: neither train_masks nor train_csv (nor instances) is set")
    return kind(comp)


__all__ = ["SOURCES", "MaskSource", "ObjectSource", "infer", "source_class", "source_for"]
