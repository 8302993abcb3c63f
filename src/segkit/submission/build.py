"""Submission files: the rows, order, id format and columns of the competition's sample submission, filled from
tuned probabilities (``Submission``), checked as written before they may replace anything; a volume competition's
label volumes; the holdout's truth in the same format (what ``segkit score`` scores a submission against).

RLEs follow ``data.rle`` (pixel order, SIIM-style relative starts; in relative form an empty mask is written
``-1``, as SIIM's sample does). The submit stage and the offline bundle both build their file here.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from segkit.artifacts.probs import ProbStore
from segkit.config import Config
from segkit.data import Competition, read_csv, rle
from segkit.data.volumes import write_labels
from segkit.errors import DataError
from segkit.metrics import CompetitionMetric, get_metric
from segkit.metrics.competition import object_ap_labels
from segkit.postprocess.instances import DecodeParams, decode
from segkit.postprocess.tuned import FinalMasks, Tuned
from segkit.submission.validate import rle_column, validate_frame, validate_instances_frame

SIIM_EMPTY = "-1"


def sample_frame(cfg: Config, comp: Competition) -> pd.DataFrame:
    """The rows a submission must have, as a frame of strings in the sample's columns and order."""
    rows = comp.sample_rows
    if comp.holdout_ids or not cfg.data.sample_submission:
        columns = comp.sample_columns
        return pd.DataFrame({columns[0]: [r.row_id for r in rows], columns[1]: [""] * len(rows)}, dtype=str)
    frame = read_csv(cfg.data.path("sample_submission"))
    if cfg.data.instances is not None:  # a per-object sample repeats an image's id: its first row stands for it
        frame = frame.drop_duplicates(subset=frame.columns[0]).reset_index(drop=True)
    if len(frame) != len(rows):
        raise DataError(f"{cfg.data.sample_submission}: {len(frame)} rows but {len(rows)} parsed sample rows")
    return frame


def _encode(mask: np.ndarray, order: str, relative: bool) -> str:
    text = rle.encode(mask, order=order, relative=relative)
    return SIIM_EMPTY if relative and not text else text


def final_masks(cfg: Config, comp: Competition, store: ProbStore, tuned: Tuned) -> FinalMasks:
    """The submitted masks of the test store's images (whole test volumes in a volume competition)."""
    volumes = comp.volume_set("test") if cfg.data.volumes is not None else None
    return FinalMasks(tuned, store, cfg.data.mode == "multiclass", volumes)


def build_submission(cfg: Config, comp: Competition, store: ProbStore, tuned: Tuned,
                     metric: CompetitionMetric | None = None
                     ) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, tuple[int, int]], list[float]]:
    """(submission frame, sample frame, shape per row id, per-image holdout scores when ``metric`` is given)."""
    params = tuned.params
    sample = sample_frame(cfg, comp)
    rle_name = rle_column(list(sample.columns), cfg.data.rle.rle_column)
    rows = comp.sample_rows
    by_image: dict[str, list[int]] = {}
    for i, row in enumerate(rows):
        by_image.setdefault(row.image_id, []).append(i)
    store.require(by_image, "test images", "run `segkit ensemble` (and predict) again")
    order, relative = cfg.data.rle.order, cfg.data.rle.relative
    encoded = [""] * len(rows)
    shapes: dict[str, tuple[int, int]] = {}
    scores: list[float] = []
    masks_of = final_masks(cfg, comp, store, tuned)
    for image_id, indices in by_image.items():
        probs = np.asarray(store[image_id])
        if probs.ndim != 3 or probs.shape[0] != len(params):
            raise DataError(f"{store.folder}: {image_id!r} has probabilities of shape {probs.shape}; expected "
                            f"({len(params)}, H, W)")
        masks = masks_of(image_id)
        for i in indices:
            encoded[i] = _encode(masks[rows[i].class_index], order, relative)
            shapes[rows[i].row_id] = masks.shape[1:]
        shapes[image_id] = masks.shape[1:]
        if metric is not None:
            scores.append(float(metric.per_image(masks.view(bool), comp.read_mask(image_id).astype(bool))))
    sub = sample.copy()
    sub[rle_name] = encoded
    return sub, sample, shapes, scores


def volume_files(cfg: Config, comp: Competition) -> dict[str, Path]:
    """A volume competition's test cases -> the label volume file the submission writes for each."""
    if cfg.data.volumes is None:
        return {}
    volumes = comp.volume_set("test")
    cases = dict.fromkeys(volumes.positions[r.image_id].volume for r in comp.sample_rows)
    return {case: cfg.layout.submission_volume(case) for case in cases}


def write_volumes(final: FinalMasks, files: dict[str, Path]) -> None:
    """Each test case's label volume, made of the very masks of the csv's rows (0 the background, class k as
    k + 1; where classes overlap, the later wins), written with the source image's affine."""
    for case, path in files.items():
        masks = final.volume(case)
        labels = np.zeros(masks.shape[1:], np.uint8)
        for k in range(masks.shape[0]):
            labels[masks[k] > 0] = k + 1
        path.parent.mkdir(parents=True, exist_ok=True)
        write_labels(path, labels, final.volumes.affine(case), like=final.volumes.cases[case].images[0])


def holdout_truth(cfg: Config, comp: Competition) -> pd.DataFrame:
    """The holdout's masks as a csv in the submission's format (what a competition's hidden solution file is)."""
    rows = comp.sample_rows
    columns = comp.sample_columns
    masks: dict[str, np.ndarray] = {}
    texts = []
    for row in rows:
        if row.image_id not in masks:
            masks = {row.image_id: comp.read_mask(row.image_id)}  # rows of one image are adjacent
        texts.append(_encode(masks[row.image_id][row.class_index], cfg.data.rle.order, cfg.data.rle.relative))
    return pd.DataFrame({columns[0]: [r.row_id for r in rows], columns[1]: texts})


def build_instance_submission(cfg: Config, comp: Competition, store: ProbStore, params: DecodeParams
                              ) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, tuple[int, int]], list[float]]:
    """An instance competition's submission: each sample image decoded into objects with the tuned decoder, one
    row per object (in the sample's image order, objects in label order), one empty row for an image without any.
    Returns what ``build_submission`` does; the holdout scores are object AP against the instance maps."""
    sample = sample_frame(cfg, comp)
    id_col, rle_name = sample.columns[0], rle_column(list(sample.columns), cfg.data.rle.rle_column)
    ids = list(dict.fromkeys(sample[id_col]))
    store.require({i: [] for i in ids}, "test images", "run `segkit ensemble` (and predict) again")
    rows, shapes, scores = [], {}, []
    for image_id in ids:
        labels = decode(np.asarray(store[image_id]), params)
        shapes[image_id] = labels.shape
        rows += [(image_id, text) for text in rle.encode_labels(labels, cfg.data.rle.order) or [""]]
        if comp.holdout_ids:
            scores.append(object_ap_labels(labels, comp.instance_map(image_id)))
    return pd.DataFrame(rows, columns=[id_col, rle_name]), sample, shapes, scores


def instance_truth(cfg: Config, comp: Competition) -> pd.DataFrame:
    """The holdout's objects as a per-object csv in the submission's format (the hidden solution file)."""
    columns = comp.sample_columns
    rows = []
    for image_id in dict.fromkeys(r.image_id for r in comp.sample_rows):
        texts = rle.encode_labels(comp.instance_map(image_id), cfg.data.rle.order)
        rows += [(image_id, text) for text in texts if text] or [(image_id, "")]
    return pd.DataFrame(rows, columns=columns[:2])


class Submission:
    """A submission built from tuned probabilities: its frame and what checking it needs."""

    def __init__(self, cfg: Config, comp: Competition, store: ProbStore, tuned: Tuned):
        self.objects = cfg.data.instances is not None
        self.tuned = tuned
        metric = get_metric(cfg.metric, key="metric") if comp.holdout_ids else None
        if self.objects:
            self.decoder = tuned.choice().decoder("")
            self.frame, self.sample, self.shapes, self.holdout_scores = build_instance_submission(
                cfg, comp, store, self.decoder)
        else:
            self.frame, self.sample, self.shapes, self.holdout_scores = build_submission(
                cfg, comp, store, tuned, metric)
        self.rle_column = rle_column(list(self.sample.columns), cfg.data.rle.rle_column)
        self.relative = cfg.data.rle.relative

    def write(self, tmp: Path, target: Path):
        """Write the csv to ``tmp`` and check the file as written (what the competition will read), before the
        caller may let it replace ``target``; an invalid file is an error and ``target`` stays as it was."""
        self.frame.to_csv(tmp, index=False)
        if self.objects:
            report, _ = validate_instances_frame(read_csv(tmp), self.sample, target, shapes=self.shapes,
                                                 rle_col=self.rle_column)
        else:
            report = validate_frame(read_csv(tmp), self.sample, target, shapes=self.shapes, relative=self.relative,
                                    rle_col=self.rle_column)
        if not report.ok:
            raise DataError(f"the new submission is invalid, {target} left as it was:\n{report.summary()}")
        return report


__all__ = ["Submission", "build_instance_submission", "build_submission", "final_masks", "holdout_truth",
           "instance_truth", "sample_frame", "volume_files", "write_volumes"]
