"""Masks as run-length encodings in a csv (``data.train_csv``): one row per image, one row per image and class
(a class column, or ``<id><sep><class>`` compound ids), or no row at all for an empty mask (Severstal)."""

from __future__ import annotations

from functools import cached_property

import numpy as np

from segkit.artifacts.layout import check_id
from segkit.data import rle
from segkit.data.folder import read_csv
from segkit.data.sources.base import SOURCES, MaskSource
from segkit.errors import DataError


@SOURCES.register("rle_csv")
class RLECsv(MaskSource):
    @cached_property
    def rows(self) -> dict[str, dict[int, tuple[str, str]]]:
        """id -> {class index: (rle, where)} from the train csv."""
        spec = self.cfg.rle
        path = self.cfg.path("train_csv")
        cols = [spec.id_column, spec.rle_column] + ([spec.class_column] if spec.class_column else [])
        frame = read_csv(path, cols)
        rows: dict[str, dict[int, tuple[str, str]]] = {}
        train = self.comp.train_folder
        for i, rec in enumerate(frame.to_dict("records")):
            where = f"{path.name} row {i + 2}"  # +1 header, +1 one-based: the line number an editor shows
            raw_class = rec.get(spec.class_column) if spec.class_column else None
            image_id, cls = self.comp.split_id(rec[spec.id_column], raw_class, where)
            check_id(image_id, where)
            if train.find(image_id) is None:
                raise DataError(f"{where}: id {image_id!r} has no image in {train.folder}")
            per_image = rows.setdefault(image_id, {})
            if cls in per_image:
                raise DataError(f"{where}: duplicate row for id {image_id!r} class {self.cfg.classes[cls]!r}")
            per_image[cls] = (rec[spec.rle_column], f"{where} (id {image_id})")
        return rows

    def check(self, ids: list[str]) -> None:
        self.rows  # parse and check the csv up front: errors surface before any training

    def read_mask(self, image_id: str) -> np.ndarray:
        h, w = self.comp.image_size(image_id)
        mask = np.zeros((len(self.cfg.classes), h, w), dtype=np.uint8)
        for cls, (text, where) in self.rows.get(image_id, {}).items():
            mask[cls] = rle.decode(text, (h, w), order=self.cfg.rle.order, relative=self.cfg.rle.relative, where=where)
        if self.cfg.mode == "multiclass" and (mask.sum(0) > 1).any():
            raise DataError(f"id {image_id!r}: classes overlap, which multiclass mode does not allow")
        return mask

    def mask_stats(self, image_id: str) -> tuple[np.ndarray, int]:
        """From the run lengths alone, so fold stratification of a big csv competition decodes no mask."""
        h, w = self.comp.image_size(image_id)
        areas = np.zeros(len(self.cfg.classes), dtype=np.int64)
        for cls, (text, where) in self.rows.get(image_id, {}).items():
            # validate counts the run lengths without building the mask, and checks the row on the way.
            areas[cls] = rle.validate(text, (h, w), where=where, relative=self.cfg.rle.relative)
        return areas, h * w
