"""Instances as csv rows (``data.instances.csv``): one RLE row per object, an image without objects one row with
an empty mask (DSB 2018's ``stage1_train_labels.csv``, Airbus)."""

from __future__ import annotations

from functools import cached_property

import numpy as np

from segkit.artifacts.layout import check_id
from segkit.data import instances
from segkit.data.folder import read_csv
from segkit.data.sources.base import SOURCES, ObjectSource
from segkit.errors import ConfigError, DataError


@SOURCES.register("object_rows")
class ObjectRows(ObjectSource):
    @cached_property
    def rows(self) -> dict[str, list[tuple[str, str]]]:
        """id -> [(rle, where)] of the per-object csv, in file order."""
        spec = self.cfg.rle
        path = self.cfg.root / self.cfg.instances.csv
        if not path.is_file():
            raise ConfigError(f"data.instances.csv: not a file: {path}")
        frame = read_csv(path, [spec.id_column, spec.rle_column])
        train = self.comp.train_folder
        rows: dict[str, list[tuple[str, str]]] = {}
        for i, (image_id, text) in enumerate(zip(frame[spec.id_column], frame[spec.rle_column])):
            where = f"{path.name} row {i + 2}"
            check_id(image_id, where)
            if train.find(image_id) is None:
                raise DataError(f"{where}: id {image_id!r} has no image in {train.folder}")
            rows.setdefault(image_id, []).append((text, f"{where} (id {image_id})"))
        return rows

    def check(self, ids: list[str]) -> None:
        missing = [i for i in ids if i not in self.rows]
        if missing:
            raise DataError(f"{self.cfg.instances.csv}: no row for image {missing[0]!r} (an image without objects "
                            f"has one row with an empty mask)")

    def instance_map(self, image_id: str) -> np.ndarray:
        """int32 (H, W) object labels drawn from the image's rows (overlaps resolved by data.instances.overlaps)."""
        h, w = self.comp.image_size(image_id)
        return instances.objects_from_rows(self.rows.get(image_id, []), (h, w), self.cfg.rle.order,
                                           self.cfg.rle.relative, self.cfg.instances.overlaps, image_id)
