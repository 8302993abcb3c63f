"""``segkit score``: score a submission csv against a truth csv of the same format, as the competition would.

Rows are matched on every column but the RLE column (the truth file's last column): the id alone, a compound
``<image>_<class>`` id, or an id + class column pair. Each matched row is one mask, scored with the metric's
per-image function, and the score is the mean over the truth's rows — Kaggle's rule for TGS (one row per image),
Severstal, SIIM and Clouds (one row per image and class). Several truth (or submission) rows with the same key are
merged into one mask; ``--instances`` scores them as objects instead (DSB 2018 lists one row per nucleus): each
image's rows become a label map, scored with ``object_ap``.

RLE alone does not know the image size: give ``--shape HxW`` (all images alike) or ``--images DIR`` (sizes read
from the image files). ``--sample`` first validates the submission against the sample submission.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from segkit.data import rle
from segkit.data.instances import objects_from_rows
from segkit.errors import DataError, SegkitError
from segkit.metrics import get_metric
from segkit.metrics.competition import object_ap_labels
from segkit.submission.validate import (
    Shapes,
    key_text,
    read_table,
    rle_column,
    shape_lookup,
    shapes_from_args,
    validate_instances,
    validate_submission,
)

BATCH = 512  # masks scored per call of the metric's batch path


def _grouped(frame: pd.DataFrame, key_cols: list[str], rle_name: str) -> dict[tuple[str, ...], list[tuple[str, int]]]:
    """key -> [(rle, csv row)], rows of one key in file order."""
    out: dict[tuple[str, ...], list[tuple[str, int]]] = {}
    keys = zip(*(frame[c].astype(str) for c in key_cols))
    for i, (key, text) in enumerate(zip(keys, frame[rle_name])):
        out.setdefault(key, []).append((text, i + 2))
    return out


def _mask(texts: list[tuple[str, int]], shape, order: str, relative: bool, path: Path, key) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    for text, row in texts:
        mask |= rle.decode(text, shape, order=order, relative=relative,
                           where=f"{path.name} row {row} (id {key_text(key)})").view(bool)
    return mask


def score_files(sub_path: str | Path, truth_path: str | Path, metric: str, shapes: Shapes,
                order: str = "F", relative: bool = False) -> tuple[float, int, list[str]]:
    """(score, rows scored, notes). Every truth row must have a submission row; extra submission rows are ignored
    (the truth may be a subset, e.g. the private part of a test set)."""
    scorer = get_metric(metric, key="--metric")
    sub_path, truth_path = Path(sub_path), Path(truth_path)
    truth = read_table(truth_path)
    rle_name = rle_column(list(truth.columns))
    key_cols = [c for c in truth.columns if c != rle_name]
    sub = read_table(sub_path, key_cols + [rle_name])
    truth_rows = _grouped(truth, key_cols, rle_name)
    sub_rows = _grouped(sub, key_cols, rle_name)
    missing = [k for k in truth_rows if k not in sub_rows]
    if missing:
        raise DataError(f"{sub_path}: {len(missing)} truth id(s) have no row, e.g. {key_text(missing[0])}")
    shape_of = shape_lookup(shapes)
    scores: list[float] = []
    preds: list[np.ndarray] = []
    truths: list[np.ndarray] = []

    def flush() -> None:  # rows of one size are scored in batches: the metric counts a stack in one go
        if preds:
            scores.extend(scorer.score_many(np.stack(preds)[:, None], np.stack(truths)[:, None]).tolist())
            preds.clear()
            truths.clear()

    for key, texts in truth_rows.items():
        shape = shape_of(key[0])
        if shape is None:
            raise SegkitError(f"image size of id {key_text(key)} unknown: pass --shape HxW or --images DIR")
        if preds and (preds[0].shape != tuple(shape) or len(preds) >= BATCH):
            flush()
        truths.append(_mask(texts, shape, order, relative, truth_path, key))
        preds.append(_mask(sub_rows[key], shape, order, relative, sub_path, key))
    flush()
    notes = []
    extra = len(sub_rows) - len(truth_rows)
    if extra:
        notes.append(f"{extra} submission id(s) not in the truth were ignored")
    merged = sum(len(v) > 1 for v in truth_rows.values())
    if merged:
        notes.append(f"{merged} truth id(s) have several rows: their runs were merged into one mask")
    return float(np.mean(scores)) if scores else float("nan"), len(scores), notes


def score_instances(sub_path: str | Path, truth_path: str | Path, shapes: Shapes, order: str = "F"
                    ) -> tuple[float, int, list[str]]:
    """Object AP of a per-object submission against a per-object truth csv: each image's rows are its objects
    (numbered in row order; an empty row, no object), scored as label maps; the mean over the truth's images."""
    sub_path, truth_path = Path(sub_path), Path(truth_path)
    truth = read_table(truth_path)
    rle_name = rle_column(list(truth.columns))
    id_col = next(c for c in truth.columns if c != rle_name)
    sub = read_table(sub_path, [id_col, rle_name])
    truth_rows = _grouped(truth, [id_col], rle_name)
    sub_rows = _grouped(sub, [id_col], rle_name)
    missing = [k for k in truth_rows if k not in sub_rows]
    if missing:
        raise DataError(f"{sub_path}: {len(missing)} truth image(s) have no row, e.g. {key_text(missing[0])}")
    shape_of = shape_lookup(shapes)
    scores = []
    for key, texts in truth_rows.items():
        shape = shape_of(key[0])
        if shape is None:
            raise SegkitError(f"image size of id {key_text(key)} unknown: pass --shape HxW or --images DIR")
        scores.append(object_ap_labels(_labels(sub_rows[key], shape, order, sub_path, key),
                                       _labels(texts, shape, order, truth_path, key)))
    notes = [f"{len(sub_rows) - len(truth_rows)} submission image(s) not in the truth were ignored"] \
        if len(sub_rows) > len(truth_rows) else []
    return float(np.mean(scores)) if scores else float("nan"), len(scores), notes


def _labels(texts: list[tuple[str, int]], shape, order: str, path: Path, key) -> np.ndarray:
    """An image's label map from its rows, object n the n-th non-empty row (a later object takes shared pixels)."""
    rows = [(text, f"{path.name} row {row} (id {key_text(key)})") for text, row in texts]
    return objects_from_rows(rows, shape, order, False, "later_wins", key_text(key))


def main(args: argparse.Namespace) -> int:
    shapes = shapes_from_args(args)
    relative = bool(getattr(args, "relative", False))
    order = getattr(args, "order", None) or "F"
    if getattr(args, "sample", None):
        if getattr(args, "instances", False):
            report, _ = validate_instances(args.submission, args.sample, shapes=shapes)
        else:
            report = validate_submission(args.submission, args.sample, shapes=shapes, relative=relative)
        if not report.ok:
            print(report.summary())
            print("not scored: the submission does not match the sample")
            return 1
    if getattr(args, "instances", False):
        if get_metric(args.metric, key="--metric").name != "object_ap":
            raise SegkitError(f"--instances scores objects: --metric object_ap, not {args.metric}")
        value, n, notes = score_instances(args.submission, args.truth, shapes, order=order)
    else:
        value, n, notes = score_files(args.submission, args.truth, args.metric, shapes, order=order,
                                      relative=relative)
    for note in notes:
        print(f"note: {note}")
    print(f"{args.metric}: {value:.6f} ({n} rows of {args.truth})")
    return 0
