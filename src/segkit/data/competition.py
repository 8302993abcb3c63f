"""A competition as the config describes it: which images exist, where each mask comes from, what the test set and
the sample submission look like. The front the stages use.

Ids are the image ids the competition's csv files use (TGS: ``a266a2a9df``; Severstal: ``0002cc93b.jpg``); an id
names the file ``<folder>/<id>`` or ``<folder>/<id>.<ext>``. Masks come from the competition's mask source
(``segkit.data.sources``: a mask folder, an RLE csv, instance maps or per-object rows, volumes), chosen by the
config; a source whose files hold the images too (volumes) gives them as well.

With ``data.holdout_fraction`` > 0 a deterministic share of the labelled images plays the hidden test set: it is
excluded from training and folds, predicted and submitted like test images, and scored with ``segkit score``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd

from segkit.artifacts.layout import check_id
from segkit.config.schema import DataConfig
from segkit.data import imageio
from segkit.data.folder import ImageFolder, read_csv
from segkit.data.normalize import clip_percentiles
from segkit.data.sources import MaskSource, source_class, source_for
from segkit.data.stacks import Stacks, positions
from segkit.data.volumes import VolumeSet
from segkit.errors import ConfigError, DataError


@dataclass(frozen=True)
class SampleRow:
    """One row of the sample submission: its id as written, and which image and class it stands for."""

    row_id: str
    image_id: str
    class_index: int  # 0-based index into data.classes


class Competition:
    def __init__(self, cfg: DataConfig, seed: int = 42):
        self.cfg = cfg
        self.seed = seed
        self.mode = cfg.mode
        self.classes = list(cfg.classes)
        self.num_classes = len(self.classes)
        if not cfg.root.is_dir():
            raise ConfigError(f"data.root: not a folder: {cfg.root}")
        self._stacks: dict[Path, Stacks] = {}

    @cached_property
    def source(self) -> MaskSource:
        """Where the masks come from (made on first use: a test-only competition, as an offline bundle reads it,
        has none)."""
        return source_for(self)

    # ------------------------------------------------------------------------------------------------ train set
    @cached_property
    def train_folder(self) -> ImageFolder:
        return ImageFolder(self.cfg.path("train_images"), "data.train_images", self.cfg.channel_suffixes)

    def split_id(self, raw_id: str, raw_class: str | None, where: str) -> tuple[str, int]:
        """(image id, class index) of a csv id: ``<id><sep><class>`` (``data.rle.id_class_sep``) or the id with its
        class from a class column (``raw_class``); a one-class competition needs neither."""
        sep = self.cfg.rle.id_class_sep
        if sep:
            image_id, found, raw_class = raw_id.rpartition(sep)
            if not found:
                raise DataError(f"{where}: id {raw_id!r} lacks the class suffix '{sep}<class>'")
        else:
            image_id = raw_id
        if raw_class is None:
            if self.num_classes != 1:
                raise DataError(f"{where}: no class given for a {self.num_classes}-class competition")
            return image_id, 0
        return image_id, self.class_index(raw_class, where)

    def class_index(self, raw: str, where: str) -> int:
        """A class named by its name or by its 1-based number (Severstal's ClassId)."""
        if raw in self.classes:
            return self.classes.index(raw)
        if raw.strip().isdigit() and 1 <= int(raw) <= self.num_classes:
            return int(raw) - 1
        raise DataError(f"{where}: unknown class {raw!r}; classes are {self.classes} (or 1..{self.num_classes})")

    @cached_property
    def labelled_ids(self) -> list[str]:
        """Every image with a mask (train + holdout), in folder order (a volume competition: every slice of every
        labelled volume, case by case), each checked to have its mask."""
        return self.source.labelled_ids()

    def instance_map(self, image_id: str) -> np.ndarray:
        """int32 (H, W) object labels of a labelled image: 0 the background, 1..N its objects."""
        return self.source.instance_map(image_id)

    @cached_property
    def holdout_ids(self) -> list[str]:
        if self.cfg.holdout_list is not None:
            return self._listed_holdout()
        frac = self.cfg.holdout_fraction
        if frac <= 0:
            return []
        rng = np.random.default_rng(self.seed)
        ids = self.labelled_ids
        if self.stacked:  # whole volumes: a slice's neighbours are near copies of it
            where = self.stacks("train").where_of
            volumes = sorted({where[i].volume for i in ids})
            if len(volumes) < 2:
                raise ConfigError("data.holdout_fraction: the train images are one volume; hold out none (0)")
            n = max(1, int(round(frac * len(volumes))))
            chosen = set(rng.choice(volumes, size=n, replace=False).tolist())
            return [i for i in ids if where[i].volume in chosen]
        n = max(1, int(round(frac * len(ids))))
        chosen = set(rng.choice(len(ids), size=n, replace=False).tolist())
        return [i for k, i in enumerate(ids) if k in chosen]

    def _listed_holdout(self) -> list[str]:
        """The ids ``data.holdout_list`` names: its lines are image ids, or volumes where images are slices."""
        if self.cfg.holdout_fraction > 0:
            raise ConfigError("data.holdout_list: set, and data.holdout_fraction too; hold out one or the other")
        path = self.cfg.path("holdout_list")
        names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
        ids = self.labelled_ids
        where = self.stacks("train").where_of if self.stacked else None
        known = {where[i].volume for i in ids} if where is not None else set(ids)
        for n, name in enumerate(names, start=1):
            if name not in known:
                what = "volume" if where is not None else "labelled image"
                raise DataError(f"{path}: line {n}: {name!r} is no {what} of this competition")
        chosen = set(names)
        return [i for i in ids if (where[i].volume if where is not None else i) in chosen]

    @cached_property
    def train_ids(self) -> list[str]:
        held = set(self.holdout_ids)
        return [i for i in self.labelled_ids if i not in held]

    def read_image(self, image_id: str, split: str = "train") -> np.ndarray:
        """float32 (H, W, C) in [0, 1]; C = data.input_channels (a 2.5D stack: the neighbours' channels too)."""
        if not self.cfg.context:
            return self._read_one(image_id, split)
        return np.concatenate([self._read_one(i, split) for i in self.stacks(split).neighbours(image_id)], axis=2)

    @cached_property
    def _kind(self) -> type[MaskSource] | None:
        """The source's class: its facts are known without building it (a test-only competition, as an offline
        bundle reads it, never builds a source it does not need)."""
        return source_class(self.cfg)

    @property
    def _source_images(self) -> bool:
        """Whether the images come from the mask source's files (volumes) rather than the image folders."""
        return self._kind is not None and self._kind.has_images

    def _read_one(self, image_id: str, split: str) -> np.ndarray:
        if self._source_images:
            return self.source.read_image(image_id, split)
        folder = self._folder(split)
        if folder.suffixes:
            image = np.concatenate([imageio.read_image(p, 1) for p in folder.channel_files(image_id)], axis=2)
        else:
            image = imageio.read_image(self.image_path(image_id, split), self.cfg.channels)
        if self.cfg.clip_percentiles is not None:
            image = clip_percentiles(image, *self.cfg.clip_percentiles)
        return image

    def _folder(self, split: str) -> ImageFolder:
        return self.test_folder if split == "test" and not self.holdout_ids else self.train_folder

    def image_path(self, image_id: str, split: str = "train") -> Path:
        folder = self._folder(split)
        path = folder.find(image_id)
        if path is None:
            raise DataError(f"id {image_id!r}: no image in {folder.folder}")
        return path

    @property
    def stacked(self) -> bool:
        """Whether images are slices of volumes (``data.slices`` or ``data.volumes``)."""
        return self.cfg.slices is not None or self.cfg.volumes is not None

    def stacks(self, split: str = "train") -> Stacks:
        """The volumes of the split's images (2.5D competitions: ``data.slices`` or ``data.volumes``)."""
        if self.cfg.volumes is not None:
            volumes = self.volume_set(split)
            key = volumes.folder
            if key not in self._stacks:
                self._stacks[key] = Stacks(self.cfg, {**volumes.positions, **volumes.view_positions}, str(key))
            return self._stacks[key]
        folder = self._folder(split)
        if folder.folder not in self._stacks:
            ids = folder.ids()
            self._stacks[folder.folder] = Stacks(self.cfg, positions(self.cfg, ids, self.extra, str(folder.folder)),
                                                 str(folder.folder))
        return self._stacks[folder.folder]

    def training_slices(self, ids: list[str]) -> list[str]:
        """What a fold trains on, given its training ids: the ids, and for a volume competition trained along
        several axes (``data.volumes.train_axes``) the same cases' slices along the other axes too."""
        if self.cfg.volumes is None or self.cfg.volumes.training_axes == [self.cfg.volumes.axis]:
            return list(ids)
        volumes = self.volume_set("train")
        cases = dict.fromkeys(volumes.case_of(i) for i in ids)
        others = [a for a in self.cfg.volumes.training_axes if a != volumes.axis]
        return list(ids) + [i for a in others for case in cases for i in volumes.cut(case, a)]

    def volume_set(self, split: str = "train") -> VolumeSet:
        """A volume competition's cases: the labelled ones, or the test ones (``data.volumes.test_images``)."""
        if self.cfg.volumes is None:
            raise ConfigError("data.volumes: not set (this competition's images are not volumes)")
        volume_set = getattr(self.source, "volume_set", None)
        if volume_set is None:
            raise ConfigError(f"data.mask_source: {type(self.source).__name__} holds no volumes; data.volumes needs "
                              f"the volumes source")
        return volume_set(split)

    def image_size(self, image_id: str, split: str = "train") -> tuple[int, int]:
        if self._source_images:
            return self.source.image_size(image_id, split)
        return imageio.image_size(self.image_path(image_id, split))

    def read_mask(self, image_id: str) -> np.ndarray:
        """uint8 (K, H, W) of 0/1 at the image's size."""
        return self.source.read_mask(image_id)

    def mask_stats(self, image_id: str) -> tuple[np.ndarray, int]:
        """(foreground pixels per class, pixels in the image) — from RLE run lengths where the source can, so fold
        stratification of a big csv competition needs no mask decoding."""
        return self.source.mask_stats(image_id)

    # ------------------------------------------------------------------------------------------------- test set
    @cached_property
    def test_folder(self) -> ImageFolder:
        return ImageFolder(self.cfg.path("test_images"), "data.test_images")

    @property
    def _objects(self) -> bool:
        """Whether a submission has one row per object (the source's masks are made of instances)."""
        return self._kind is not None and self._kind.objects

    @cached_property
    def sample_rows(self) -> list[SampleRow]:
        """The rows a submission must have, in order. A holdout gets a sample in the train csv's id format."""
        if self.holdout_ids:
            return self._rows_for(self.holdout_ids)
        if not self.cfg.sample_submission:
            return self._rows_for(self.source.test_image_ids() if self._source_images else self.test_folder.ids())
        path = self.cfg.path("sample_submission")
        frame = read_csv(path)
        id_col = frame.columns[0]
        if self._objects:  # rows are objects: an image may repeat; the submission writes its own
            return [SampleRow(i, check_id(i, f"{path.name} (id {i!r})"), 0) for i in dict.fromkeys(frame[id_col])]
        class_col = self.cfg.rle.class_column if self.cfg.rle.class_column in frame.columns else None
        rows, seen = [], set()
        for i, rec in enumerate(frame.to_dict("records")):
            where = f"{path.name} row {i + 2}"
            raw_class = rec[class_col] if class_col else None
            if (rec[id_col], raw_class) in seen:
                raise DataError(f"{where}: duplicate id {rec[id_col]!r}")
            seen.add((rec[id_col], raw_class))
            image_id, cls = self.split_id(rec[id_col], raw_class, where)
            rows.append(SampleRow(rec[id_col], check_id(image_id, where), cls))
        return rows

    def _rows_for(self, ids: list[str]) -> list[SampleRow]:
        """The rows of a sample the competition does not give: one per image, or per image and class with the
        ids ``<id><sep><class>`` (``data.rle.id_class_sep``, ``_`` when unset: the ids must stay unique)."""
        sep = self.cfg.rle.id_class_sep
        if self._objects or (self.num_classes == 1 and not sep):  # objects: the submission writes one per object
            return [SampleRow(i, i, 0) for i in ids]
        sep = sep or "_"
        return [SampleRow(f"{i}{sep}{name}", i, c) for i in ids for c, name in enumerate(self.classes)]

    @cached_property
    def test_ids(self) -> list[str]:
        if self.holdout_ids:
            return list(self.holdout_ids)
        ids = list(dict.fromkeys(r.image_id for r in self.sample_rows))
        if not ids:
            source = self.cfg.sample_submission or self.test_folder.folder
            raise DataError(f"{source}: the test set is empty")
        if self._source_images:
            self.source.check_test_ids(ids)
            return ids
        for image_id in ids:
            if self.test_folder.find(image_id) is None:
                raise DataError(
                    f"{self.cfg.sample_submission}: id {image_id!r} has no image in {self.test_folder.folder}"
                )
        return ids

    @property
    def sample_columns(self) -> list[str]:
        if self.holdout_ids or not self.cfg.sample_submission:
            return [self.cfg.rle.id_column, self.cfg.rle.rle_column]
        return list(read_csv(self.cfg.path("sample_submission")).columns)

    # ----------------------------------------------------------------------------------------- extra columns
    @cached_property
    def extra(self) -> pd.DataFrame | None:
        """Per-image columns (e.g. depth), indexed by id; numeric where they parse as numbers."""
        if not self.cfg.extra_csv:
            return None
        path = self.cfg.path("extra_csv")
        frame = read_csv(path)
        key = frame.columns[0]
        if frame[key].duplicated().any():
            dup = frame[key][frame[key].duplicated()].iloc[0]
            raise DataError(f"{path}: duplicate id {dup!r}")
        frame = frame.set_index(key)
        for col in frame.columns:
            converted = pd.to_numeric(frame[col], errors="coerce")
            if converted.notna().all():
                frame[col] = converted
        return frame

    def groups(self, ids: list[str]) -> list[str] | None:
        """Each id's group for the folds: ``data.group_column``, else the volume of a 2.5D competition's slice."""
        col = self.cfg.group_column
        if not col and self.stacked:
            where = self.stacks("train").where_of
            return [where[i].volume for i in ids]
        if not col:
            return None
        if self.extra is None or col not in self.extra.columns:
            raise ConfigError(f"data.group_column: column {col!r} not in data.extra_csv")
        missing = [i for i in ids if i not in self.extra.index]
        if missing:
            raise DataError(f"{self.cfg.extra_csv}: no row for id {missing[0]!r} (needed for its group)")
        return [str(v) for v in self.extra.loc[ids, col]]


__all__ = ["Competition", "ImageFolder", "SampleRow", "read_csv"]
