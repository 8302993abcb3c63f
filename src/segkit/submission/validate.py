"""``segkit validate-submission``: check a submission csv against the competition's sample submission.

What is checked, each problem reported with the csv row (the line number an editor shows: the header is line 1):

- the sample's columns are all there (missing ones make the file unusable: a one-line error);
- every sample id is present exactly once, and no id is added (compound ids like ``img_3`` or an id + class column
  pair count as one key);
- every RLE is well-formed: integer tokens, start/length pairs, positive lengths, starts from 1 (0 for SIIM's
  relative form), sorted, non-overlapping runs and — when image sizes are known — no run past the last pixel.

Row order is not checked (Kaggle matches rows by id); it is reported as a note when it differs from the sample.

``--instances`` checks a per-object submission instead (DSB 2018, Airbus: one row per object, an image without
objects one row with an empty mask): every sample image present, well-formed runs, no empty row beside objects,
and no two objects of an image sharing a pixel (the image and both rows named); the objects per image are noted.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Union

import numpy as np
import pandas as pd

from segkit.data import read_csv, rle
from segkit.data.imageio import IMAGE_EXTENSIONS, image_size
from segkit.errors import DataError, SegkitError

MAX_SHOWN = 20
# Without known image sizes a run can't be checked against the image end; any real image is smaller than this.
UNBOUNDED = (1, 2**62)

Shapes = Union[None, tuple[int, int], Mapping[str, tuple[int, int]], Callable[[str], "tuple[int, int] | None"]]


@dataclass
class Validation:
    path: Path
    rows: int = 0
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self, limit: int = MAX_SHOWN) -> str:
        if self.ok:
            return f"{self.path}: valid ({self.rows} rows)"
        lines = [f"{self.path}: {len(self.problems)} problem(s) in {self.rows} rows"]
        lines += [f"  {p}" for p in self.problems[:limit]]
        if len(self.problems) > limit:
            lines.append(f"  ... and {len(self.problems) - limit} more")
        return "\n".join(lines)


def parse_shape(text: str | None, option: str = "--shape") -> tuple[int, int] | None:
    """``"101x101"`` -> (101, 101)."""
    if text is None:
        return None
    parts = text.lower().replace("*", "x").split("x")
    try:
        h, w = (int(p) for p in parts)
    except ValueError:
        raise SegkitError(f"{option} {text!r}: expected HxW, e.g. 101x101") from None
    if h <= 0 or w <= 0:
        raise SegkitError(f"{option} {text!r}: height and width must be positive")
    return h, w


def rle_column(columns: list[str], preferred: str | None = None) -> str:
    """The RLE column of a Kaggle csv: ``preferred`` if present, else the last column (every Kaggle segmentation
    sample puts EncodedPixels / rle_mask last)."""
    if preferred and preferred in columns:
        return preferred
    if len(columns) < 2:
        raise DataError(f"a submission needs an id column and an RLE column, found {columns}")
    return columns[-1]


def shape_lookup(shapes: Shapes) -> Callable[[str], tuple[int, int] | None]:
    if shapes is None:
        return lambda key: None
    if callable(shapes):
        return shapes
    if isinstance(shapes, tuple):
        return lambda key: shapes
    return lambda key: shapes.get(key)


def key_text(key: tuple[str, ...]) -> str:
    return " ".join(repr(k) for k in key) if len(key) > 1 else repr(key[0])


def _columns(sub: pd.DataFrame, sample: pd.DataFrame, path: Path, rle_col: str | None) -> tuple[list[str], str]:
    """The sample's columns and its RLE column; a submission that lacks one of them is unusable (a one-line error)."""
    sample_cols = [str(c) for c in sample.columns]
    missing = [c for c in sample_cols if c not in sub.columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {missing}; the sample has {sample_cols}, this file "
                        f"{list(sub.columns)}")
    return sample_cols, rle_column(sample_cols, rle_col)


def validate_frame(sub: pd.DataFrame, sample: pd.DataFrame, path: Path, shapes: Shapes = None, relative: bool = False,
                   rle_col: str | None = None) -> Validation:
    """Check a submission frame against a sample frame (both read as strings). ``shapes``: one (H, W) for every
    row, or a mapping / function from the row's id (first column) to (H, W); unknown -> only the form is checked."""
    report = Validation(Path(path), rows=len(sub))
    sample_cols, rle_name = _columns(sub, sample, path, rle_col)
    extra_cols = [c for c in sub.columns if c not in sample_cols]
    if extra_cols:
        report.problems.append(f"header: extra column(s) {extra_cols} not in the sample")
    key_cols = [c for c in sample_cols if c != rle_name]
    sample_keys = {key: i + 2 for i, key in enumerate(zip(*(sample[c].astype(str) for c in key_cols)))}
    if len(sample_keys) != len(sample):
        raise DataError(f"the sample itself has duplicate ids ({len(sample) - len(sample_keys)} rows)")
    shape_of = shape_lookup(shapes)
    seen: dict[tuple[str, ...], int] = {}
    order_note = None
    sample_order = list(sample_keys)
    keys = list(zip(*(sub[c].astype(str) for c in key_cols)))
    for i, (key, text) in enumerate(zip(keys, sub[rle_name])):
        row = i + 2
        where = f"row {row} (id {key_text(key)})"
        if key in seen:
            report.problems.append(f"{where}: duplicate id (first at row {seen[key]})")
            continue
        seen[key] = row
        if key not in sample_keys:
            report.problems.append(f"{where}: id not in the sample submission")
            continue
        if order_note is None and i < len(sample_order) and sample_order[i] != key:
            order_note = f"rows are not in the sample's order (first difference at row {row})"
        shape = shape_of(key[0]) or UNBOUNDED
        try:
            rle.validate(text, shape, where=where, relative=relative)
        except rle.RLEError as err:
            report.problems.append(str(err))
    absent = [(k, r) for k, r in sample_keys.items() if k not in seen]
    for key, sample_row in absent:
        report.problems.append(f"id {key_text(key)} (sample row {sample_row}): missing from the submission")
    if order_note:
        report.notes.append(order_note)
    return report


def validate_instances_frame(sub: pd.DataFrame, sample: pd.DataFrame, path: Path, shapes: Shapes = None,
                             rle_col: str | None = None) -> tuple[Validation, dict[str, int]]:
    """Check a per-object submission (DSB, Airbus: one row per object, an image without objects one row with an
    empty mask) against a sample of one row per image; also returns the objects of each image. Problems: an id not
    in the sample, an image missing, a malformed RLE or one past the image, an empty row beside objects, and two
    objects of an image that share pixels (naming the image and both rows)."""
    report = Validation(Path(path), rows=len(sub))
    sample_cols, rle_name = _columns(sub, sample, path, rle_col)
    id_col = next(c for c in sample_cols if c != rle_name)
    sample_ids = {i: n + 2 for n, i in enumerate(sample[id_col].astype(str))}
    shape_of = shape_lookup(shapes)
    by_image: dict[str, list[tuple[int, str]]] = {}
    for i, (image_id, text) in enumerate(zip(sub[id_col].astype(str), sub[rle_name])):
        if image_id not in sample_ids:
            report.problems.append(f"row {i + 2} (id {image_id}): id not in the sample submission")
            continue
        by_image.setdefault(image_id, []).append((i + 2, text if isinstance(text, str) else ""))
    counts: dict[str, int] = {}
    for image_id, rows in by_image.items():
        shape = shape_of(image_id) or UNBOUNDED
        objects = [(row, text) for row, text in rows if text.strip()]
        if len(objects) < len(rows) and objects:
            empty = next(row for row, text in rows if not text.strip())
            report.problems.append(f"row {empty} (id {image_id}): an empty row beside {len(objects)} object(s); "
                                   f"only an image without objects has one")
        counts[image_id] = len(objects)
        spans = []
        for row, text in objects:
            try:
                starts, ends = rle.runs(text, shape, where=f"row {row} (id {image_id})")
            except rle.RLEError as err:
                report.problems.append(str(err))
                continue
            spans += [(a, b, row) for a, b in zip(starts.tolist(), ends.tolist())]
        spans.sort()
        reach, owner = -1, None  # the furthest end of the runs so far, and whose run it is
        clashes: set[tuple[int, int]] = set()
        for a, b, row in spans:
            if a < reach and owner != row and (owner, row) not in clashes:
                clashes.add((owner, row))
                report.problems.append(f"image {image_id}: the objects of rows {owner} and {row} overlap; objects "
                                       f"may not share pixels")
            if b > reach:
                reach, owner = b, row
    for image_id, sample_row in sample_ids.items():
        if image_id not in by_image:
            report.problems.append(f"id {image_id} (sample row {sample_row}): missing from the submission (an image "
                                   f"without objects needs one row with an empty mask)")
    first = list(by_image)
    if first != [i for i in sample_ids if i in by_image]:
        report.notes.append("images are not in the sample's order")
    if counts:
        values = np.array(list(counts.values()))
        report.notes.append(f"objects per image: {int(values.sum())} in {len(values)} images (median "
                            f"{int(np.median(values))}, max {int(values.max())}; {int((values == 0).sum())} without)")
    return report, counts


def read_table(path: str | Path, columns: list[str] | tuple[str, ...] = ()) -> pd.DataFrame:
    """A csv as strings, with one-line errors for a missing, unreadable, non-UTF-8 or malformed file."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: {'not a file' if path.exists() else 'file not found'}")
    try:
        return read_csv(path, columns)
    except OSError as err:
        raise DataError(f"{path}: cannot read ({err.strerror or err})") from None


def validate_submission(sub_path: str | Path, sample: str | Path | pd.DataFrame, shapes: Shapes = None,
                        relative: bool = False, rle_col: str | None = None) -> Validation:
    """Validate the csv at ``sub_path`` against the sample (a csv path or a frame of its rows)."""
    sub_path = Path(sub_path)
    sample_frame = sample if isinstance(sample, pd.DataFrame) else read_table(sample)
    return validate_frame(read_table(sub_path), sample_frame, sub_path, shapes, relative, rle_col)


def image_shapes(folder: str | Path) -> Callable[[str], tuple[int, int] | None]:
    """(H, W) of ``<folder>/<id>`` or ``<folder>/<id>.<ext>`` read from file headers; for compound ids
    (``<image>_<class>``) the image part is tried too."""
    folder = Path(folder)
    if not folder.is_dir():
        raise SegkitError(f"--images {folder}: not a folder")
    by_name: dict[str, Path] = {}
    for p in folder.iterdir():
        if p.suffix.lower() in IMAGE_EXTENSIONS:
            by_name.setdefault(p.name, p)
            by_name.setdefault(p.stem, p)
    cache: dict[str, tuple[int, int] | None] = {}

    def lookup(image_id: str) -> tuple[int, int] | None:
        if image_id not in cache:
            path = by_name.get(image_id)
            if path is None and "_" in image_id:
                path = by_name.get(image_id.rsplit("_", 1)[0])
            if path is None:
                raise DataError(f"--images {folder}: no image for id {image_id!r}")
            cache[image_id] = image_size(path)
        return cache[image_id]

    return lookup


def shapes_from_args(args: argparse.Namespace) -> Shapes:
    images = getattr(args, "images", None)
    if images and getattr(args, "shape", None):
        raise SegkitError("give --shape or --images, not both")
    if images:
        return image_shapes(images)
    return parse_shape(getattr(args, "shape", None))


def validate_instances(sub_path: str | Path, sample: str | Path | pd.DataFrame, shapes: Shapes = None
                       ) -> tuple[Validation, dict[str, int]]:
    """``validate_instances_frame`` of the csv at ``sub_path``."""
    sub_path = Path(sub_path)
    sample_frame = sample if isinstance(sample, pd.DataFrame) else read_table(sample)
    return validate_instances_frame(read_table(sub_path), sample_frame, sub_path, shapes)


def main(args: argparse.Namespace) -> int:
    """Print the report; exit status 1 when the submission is invalid."""
    shapes = shapes_from_args(args)
    if getattr(args, "instances", False):
        report, _ = validate_instances(args.submission, args.sample, shapes=shapes)
    else:
        report = validate_submission(args.submission, args.sample, shapes=shapes,
                                     relative=bool(getattr(args, "relative", False)))
    for note in report.notes:
        print(f"note: {note}")
    if shapes is None:
        print("note: image sizes unknown (no --shape/--images): runs past the last pixel are not checked")
    print(report.summary())
    return 0 if report.ok else 1
