"""A competition as the config describes it: which images exist, where each mask comes from, what the test set and
the sample submission look like.

Ids are the image ids the competition's csv files use (TGS: ``a266a2a9df``; Severstal: ``0002cc93b.jpg``); an id
names the file ``<folder>/<id>`` or ``<folder>/<id>.<ext>``. Masks come from a folder of mask images or from an RLE
csv; in the csv an image may have one row, one row per class (class column or ``<id><sep><class>`` compound ids),
or no row at all (= empty mask, as in Severstal).

With ``data.holdout_fraction`` > 0 a deterministic share of the labelled images plays the hidden test set: it is
excluded from training and folds, predicted and submitted like test images, and scored with ``segkit score``.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd

from segkit.data import rle
from segkit.config.schema import DataConfig
from segkit.data import imageio, instances
from segkit.data.normalize import clip_percentiles
from segkit.data.stacks import Stacks, positions
from segkit.data.volumes import VolumeSet
from segkit.errors import ConfigError, DataError
from segkit.artifacts.layout import check_id


@dataclass(frozen=True)
class SampleRow:
    """One row of the sample submission: its id as written, and which image and class it stands for."""

    row_id: str
    image_id: str
    class_index: int  # 0-based index into data.classes


def read_csv(path: Path, columns: list[str] | tuple[str, ...] = ()) -> pd.DataFrame:
    """A csv as strings (ids stay ids: no '007' -> 7), with a clear error for encoding or missing columns."""
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8")
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not UTF-8 text (byte {err.start})") from None
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: empty csv") from None
    except (pd.errors.ParserError, csv.Error) as err:
        raise DataError(f"{path}: malformed csv: {str(err).splitlines()[0]}") from None
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {missing}; has {list(frame.columns)}")
    return frame


class ImageFolder:
    """Resolves ids to files of one folder, indexing it once. With ``suffixes`` (one file a channel) an image
    ``<id>`` is the files ``<id><suffix>.<ext>``, and ``find`` gives its first channel's."""

    def __init__(self, folder: Path, key: str, suffixes: list[str] | None = None):
        if not folder.is_dir():
            raise ConfigError(f"{key}: not a folder: {folder}")
        self.folder = folder
        self.suffixes = suffixes
        self.by_name: dict[str, Path] = {}
        self.by_stem: dict[str, Path] = {}
        for p in sorted(folder.iterdir()):
            if p.suffix.lower() in imageio.IMAGE_EXTENSIONS and not p.name.startswith("."):
                self.by_name[p.name] = p
                if p.stem in self.by_stem:
                    other = self.by_stem[p.stem].name
                    raise DataError(f"{folder}: two images share the id {p.stem!r} ({other}, {p.name})")
                self.by_stem[p.stem] = p

    def ids(self) -> list[str]:
        if self.suffixes:
            first = self.suffixes[0]
            return [stem[: -len(first)] for stem in self.by_stem if stem.endswith(first)]
        return list(self.by_stem)

    def find(self, image_id: str) -> Path | None:
        if self.suffixes:
            return self.by_stem.get(image_id + self.suffixes[0])
        return self.by_name.get(image_id) or self.by_stem.get(image_id)

    def channel_files(self, image_id: str) -> list[Path]:
        """The files of ``image_id``'s channels, in the order of the suffixes."""
        paths = []
        for suffix in self.suffixes:
            path = self.by_stem.get(image_id + suffix)
            if path is None:
                raise DataError(f"{self.folder}: image {image_id!r} has no channel file {image_id}{suffix}.*")
            paths.append(path)
        return paths


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
        self._volumes: dict[str, VolumeSet] = {}

    # ------------------------------------------------------------------------------------------------ train set
    @cached_property
    def train_folder(self) -> ImageFolder:
        return ImageFolder(self.cfg.path("train_images"), "data.train_images", self.cfg.channel_suffixes)

    @cached_property
    def _rle_rows(self) -> dict[str, dict[int, tuple[str, str]]]:
        """id -> {class index: (rle, where)} from the train csv."""
        spec = self.cfg.rle
        path = self.cfg.path("train_csv")
        cols = [spec.id_column, spec.rle_column] + ([spec.class_column] if spec.class_column else [])
        frame = read_csv(path, cols)
        rows: dict[str, dict[int, tuple[str, str]]] = {}
        for i, rec in enumerate(frame.itertuples(index=False)):
            rec = rec._asdict() if hasattr(rec, "_asdict") else dict(zip(frame.columns, rec))
            where = f"{path.name} row {i + 2}"  # +1 header, +1 one-based: the line number an editor shows
            raw_class = rec.get(spec.class_column) if spec.class_column else None
            image_id, cls = self._split_id(rec[spec.id_column], raw_class, where)
            check_id(image_id, where)
            if self.train_folder.find(image_id) is None:
                raise DataError(f"{where}: id {image_id!r} has no image in {self.train_folder.folder}")
            per_image = rows.setdefault(image_id, {})
            if cls in per_image:
                raise DataError(f"{where}: duplicate row for id {image_id!r} class {self.classes[cls]!r}")
            per_image[cls] = (rec[spec.rle_column], f"{where} (id {image_id})")
        return rows

    def _split_id(self, raw_id: str, raw_class: str | None, where: str) -> tuple[str, int]:
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
    def mask_folder(self) -> ImageFolder | None:
        return ImageFolder(self.cfg.path("train_masks"), "data.train_masks") if self.cfg.train_masks else None

    @cached_property
    def labelled_ids(self) -> list[str]:
        """Every image with a mask (train + holdout), in folder order (a volume competition: every slice of every
        labelled volume, case by case)."""
        if self.cfg.volumes is not None:
            return self.volume_set("train").ids()
        if not self.cfg.train_masks and not self.cfg.train_csv and self.cfg.instances is None:
            raise ConfigError("data: neither train_masks nor train_csv (nor instances) is set")
        ids = self.train_folder.ids()
        if not ids:
            raise DataError(f"{self.train_folder.folder}: no images")
        if self.cfg.instances is not None:
            self._check_instances(ids)
            return ids
        if self.mask_folder is not None:
            for image_id in ids:
                if self.mask_folder.find(image_id) is None:
                    image = self.train_folder.find(image_id)
                    raise DataError(f"{image}: no mask for this image in {self.mask_folder.folder}")
        else:
            self._rle_rows  # parse and check the csv up front: errors surface before any training
        return ids

    # ------------------------------------------------------------------------------------------------ instances
    @cached_property
    def instance_folder(self) -> ImageFolder | None:
        spec = self.cfg.instances
        if spec is None or not spec.labels:
            return None
        return ImageFolder(self.cfg.root / spec.labels, "data.instances.labels")

    @cached_property
    def _object_rows(self) -> dict[str, list[tuple[str, str]]]:
        """id -> [(rle, where)] of the per-object csv, in file order."""
        spec = self.cfg.rle
        path = self.cfg.root / self.cfg.instances.csv
        if not path.is_file():
            raise ConfigError(f"data.instances.csv: not a file: {path}")
        frame = read_csv(path, [spec.id_column, spec.rle_column])
        rows: dict[str, list[tuple[str, str]]] = {}
        for i, (image_id, text) in enumerate(zip(frame[spec.id_column], frame[spec.rle_column])):
            where = f"{path.name} row {i + 2}"
            check_id(image_id, where)
            if self.train_folder.find(image_id) is None:
                raise DataError(f"{where}: id {image_id!r} has no image in {self.train_folder.folder}")
            rows.setdefault(image_id, []).append((text, f"{where} (id {image_id})"))
        return rows

    def _check_instances(self, ids: list[str]) -> None:
        if self.instance_folder is not None:
            for image_id in ids:
                if self.instance_folder.find(image_id) is None:
                    raise DataError(f"{self.train_folder.find(image_id)}: no instance label map in "
                                    f"{self.instance_folder.folder}")
            return
        rows = self._object_rows
        missing = [i for i in ids if i not in rows]
        if missing:
            raise DataError(f"{self.cfg.instances.csv}: no row for image {missing[0]!r} (an image without objects "
                            f"has one row with an empty mask)")

    def instance_map(self, image_id: str) -> np.ndarray:
        """int32 (H, W) object labels of a labelled image: 0 the background, 1..N its objects."""
        spec = self.cfg.instances
        h, w = self.image_size(image_id)
        if self.instance_folder is not None:
            path = self.instance_folder.find(image_id)
            if path is None:
                raise DataError(f"id {image_id!r}: no instance label map in {self.instance_folder.folder}")
            labels = instances.read_label_map(path)
            if labels.shape != (h, w):
                raise DataError(f"{path}: label map is {labels.shape[0]}x{labels.shape[1]}, image is {h}x{w}")
            return labels
        return instances.objects_from_rows(self._object_rows.get(image_id, []), (h, w), self.cfg.rle.order,
                                           self.cfg.rle.relative, spec.overlaps, image_id)

    @cached_property
    def holdout_ids(self) -> list[str]:
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

    @cached_property
    def train_ids(self) -> list[str]:
        held = set(self.holdout_ids)
        return [i for i in self.labelled_ids if i not in held]

    def read_image(self, image_id: str, split: str = "train") -> np.ndarray:
        """float32 (H, W, C) in [0, 1]; C = data.input_channels (a 2.5D stack: the neighbours' channels too)."""
        if not self.cfg.context:
            return self._read_one(image_id, split)
        return np.concatenate([self._read_one(i, split) for i in self.stacks(split).neighbours(image_id)], axis=2)

    def _read_one(self, image_id: str, split: str) -> np.ndarray:
        if self.cfg.volumes is not None:  # normalised per volume, clipping included
            return self.volume_set(split).image(image_id)
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
        spec = self.cfg.volumes
        if spec is None:
            raise ConfigError("data.volumes: not set (this competition's images are not volumes)")
        test = split == "test" and not self.holdout_ids
        name = "test" if test else "train"
        if name not in self._volumes:
            if test:
                if not spec.test_images:
                    raise ConfigError("data.volumes.test_images: not set, and data.holdout_fraction is 0: no test set")
                images, labels, key = self.cfg.root / spec.test_images, None, "data.volumes.test_images"
            else:
                labels = self.cfg.root / spec.labels if spec.labels else None
                images, key = self.cfg.root / spec.images, "data.volumes.images"
                if labels is not None and not labels.is_dir():
                    raise ConfigError(f"data.volumes.labels: not a folder: {labels}")
            self._volumes[name] = VolumeSet(self.cfg, images, labels, key)
        return self._volumes[name]

    def image_size(self, image_id: str, split: str = "train") -> tuple[int, int]:
        if self.cfg.volumes is not None:
            return self.volume_set(split).slice_size(image_id)
        return imageio.image_size(self.image_path(image_id, split))

    def read_mask(self, image_id: str) -> np.ndarray:
        """uint8 (K, H, W) of 0/1 at the image's size."""
        if self.cfg.volumes is not None:  # a label map: class k is the value k + 1
            labels = self.volume_set("train").label(image_id)
            return np.stack([labels == k + 1 for k in range(self.num_classes)]).astype(np.uint8)
        if self.cfg.instances is not None:  # the targets of its objects: mask, contour
            return instances.targets(self.instance_map(image_id), self.cfg.instances)
        h, w = self.image_size(image_id)
        if self.mask_folder is not None:
            path = self.mask_folder.find(image_id)
            if path is None:
                raise DataError(f"id {image_id!r}: no mask in {self.mask_folder.folder}")
            mask = imageio.read_mask(path, self.mode, self.num_classes)
            if self.cfg.invert_masks:
                mask = 1 - mask
            if mask.shape[1:] != (h, w):
                raise DataError(f"{path}: mask is {mask.shape[1]}x{mask.shape[2]}, image is {h}x{w}")
            return mask
        mask = np.zeros((self.num_classes, h, w), dtype=np.uint8)
        for cls, (text, where) in self._rle_rows.get(image_id, {}).items():
            mask[cls] = rle.decode(text, (h, w), order=self.cfg.rle.order, relative=self.cfg.rle.relative, where=where)
        if self.mode == "multiclass" and (mask.sum(0) > 1).any():
            raise DataError(f"id {image_id!r}: classes overlap, which multiclass mode does not allow")
        return mask

    def mask_stats(self, image_id: str) -> tuple[np.ndarray, int]:
        """(foreground pixels per class, pixels in the image) — from RLE run lengths where possible, so fold
        stratification of a big csv competition needs no mask decoding."""
        if self.mask_folder is not None or self.cfg.volumes is not None or self.cfg.instances is not None:
            mask = self.read_mask(image_id)
            return mask.reshape(self.num_classes, -1).sum(1), mask.shape[1] * mask.shape[2]
        h, w = self.image_size(image_id)
        areas = np.zeros(self.num_classes, dtype=np.int64)
        for cls, (text, where) in self._rle_rows.get(image_id, {}).items():
            # validate counts the run lengths without building the mask, and checks the row on the way.
            areas[cls] = rle.validate(text, (h, w), where=where, relative=self.cfg.rle.relative)
        return areas, h * w

    # ------------------------------------------------------------------------------------------------- test set
    @cached_property
    def test_folder(self) -> ImageFolder:
        return ImageFolder(self.cfg.path("test_images"), "data.test_images")

    @cached_property
    def sample_rows(self) -> list[SampleRow]:
        """The rows a submission must have, in order. A holdout gets a sample in the train csv's id format."""
        if self.holdout_ids:
            return self._rows_for(self.holdout_ids)
        if not self.cfg.sample_submission:
            if self.cfg.volumes is not None:
                return self._rows_for(self.volume_set("test").ids())
            return self._rows_for(self.test_folder.ids())
        path = self.cfg.path("sample_submission")
        frame = read_csv(path)
        id_col = frame.columns[0]
        if self.cfg.instances is not None:  # rows are objects: an image may repeat; the submission writes its own
            return [SampleRow(i, check_id(i, f"{path.name} (id {i!r})"), 0) for i in dict.fromkeys(frame[id_col])]
        class_col = self.cfg.rle.class_column if self.cfg.rle.class_column in frame.columns else None
        rows, seen = [], set()
        for i, rec in enumerate(frame.to_dict("records")):
            where = f"{path.name} row {i + 2}"
            raw_class = rec[class_col] if class_col else None
            if (rec[id_col], raw_class) in seen:
                raise DataError(f"{where}: duplicate id {rec[id_col]!r}")
            seen.add((rec[id_col], raw_class))
            image_id, cls = self._split_id(rec[id_col], raw_class, where)
            rows.append(SampleRow(rec[id_col], check_id(image_id, where), cls))
        return rows

    def _rows_for(self, ids: list[str]) -> list[SampleRow]:
        """The rows of a sample the competition does not give: one per image, or per image and class with the
        ids ``<id><sep><class>`` (``data.rle.id_class_sep``, ``_`` when unset: the ids must stay unique)."""
        sep = self.cfg.rle.id_class_sep
        if self.cfg.instances is not None:  # one row per image; the submission writes one per object
            return [SampleRow(i, i, 0) for i in ids]
        if self.num_classes == 1 and not sep:
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
        if self.cfg.volumes is not None:
            volumes = self.volume_set("test")
            missing = [i for i in ids if i not in volumes.positions]
            if missing:
                raise DataError(f"{self.cfg.sample_submission or volumes.folder}: id {missing[0]!r} is no slice of "
                                f"a test volume in {volumes.folder} (slice ids: data.volumes.slice_id)")
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
