"""``segkit submit``: the tuned post-processing applied to the ensemble's test probabilities, written in exactly the
rows, order, id format and columns of the competition's sample submission, and validated before it replaces any
earlier submission.

The csv is written to a temporary file beside the target and checked there (every sample id once, no extra id,
every RLE well-formed and inside its image); only a valid file is renamed into place, so a failed or interrupted
run never leaves a broken submission where a good one was. RLEs follow ``data.rle`` (pixel order, SIIM-style
relative starts; in relative form an empty mask is written ``-1``, as SIIM's sample does).

With ``data.holdout_fraction`` the "test" images are labelled train images: the holdout's truth is written in the
same format to ``runs/<experiment>/holdout_truth.csv`` so ``segkit score`` can score the submission.

The probabilities are those of the experiment's final ensemble (the last pseudo-labelling round's, if any). The
submission is a unit of work (``segkit.freshness``): skipped while tune.json, the ensemble's test store, the sample
submission and the RLE settings are those it was made from.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from segkit import atomic, rle
from segkit.config import Config
from segkit.data import Competition, read_csv
from segkit.data.volume_readers import cut
from segkit.data.volumes import write_labels
from segkit.errors import DataError
from segkit.freshness import Unit, fingerprint
from segkit.instance_decoders import DecodeParams, decode, tuned_decoders
from segkit.metrics import CompetitionMetric, get_metric
from segkit.metrics.competition import object_ap_labels
from segkit.postprocess import params_list, postprocess, read_tuned, scored_as, tuned_cv
from segkit.postprocess3d import VolumeParams, case_masks, clean_volume, volume_params
from segkit.probs import ProbStore, manifest
from segkit.stages import final_store
from segkit.validate import rle_column, validate_frame, validate_instances_frame

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


class FinalMasks:
    """An image's submitted masks: its probabilities post-processed with the tuned parameters, and, in a volume
    competition whose volume step chose anything (a threshold, a 3D clean-up), made from its whole volume
    (computed once a volume, one in memory)."""

    def __init__(self, cfg: Config, comp: Competition, store: ProbStore, params, cleanup: list[VolumeParams]):
        self.store, self.params = store, params
        self.exclusive = cfg.data.mode == "multiclass"
        self.cleanup = cleanup if any(p.changes for p in cleanup) else None
        self.volumes = comp.volume_set("test") if cfg.data.volumes is not None else None
        self._case, self._slices = None, {}

    def __call__(self, image_id: str) -> np.ndarray:
        if self.volumes is None or self.cleanup is None:
            return postprocess(np.asarray(self.store[image_id]), self.params, exclusive=self.exclusive)
        case = self.volumes.positions[image_id].volume
        if case != self._case:
            order = self.volumes.slices_of(case)
            masks = self.volume(case)
            self._case = case
            self._slices = {i: np.ascontiguousarray(cut(masks, 1 + self.volumes.axis, j))
                            for j, i in enumerate(order)}
        return self._slices[image_id]

    def volume(self, case: str) -> np.ndarray:
        """(K, X, Y, Z) masks of a test case: its slices post-processed (at the volume step's thresholds, where it
        chose any) and cleaned in 3D as tuned."""
        cleanup = self.cleanup or ()
        return clean_volume(case_masks(self.volumes, case, self.store.__getitem__, lambda _: self.params,
                                       self.exclusive, cleanup), cleanup)


def build_submission(cfg: Config, comp: Competition, store: ProbStore, params,
                     metric: CompetitionMetric | None = None, cleanup: list[VolumeParams] | None = None
                     ) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, tuple[int, int]], list[float]]:
    """(submission frame, sample frame, shape per row id, per-image holdout scores when ``metric`` is given)."""
    cleanup = cleanup or []
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
    masks_of = FinalMasks(cfg, comp, store, params, cleanup)
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


def submit_unit(cfg: Config, holdout: bool, volumes: dict[str, Path] | None = None) -> Unit:
    """The submission as a unit of work: the csv (and the holdout's truth), decided by the tuning, the ensemble's
    test probabilities, the sample submission and the RLE format."""
    layout = cfg.layout
    sample = cfg.data.path("sample_submission") if cfg.data.sample_submission else None
    inputs = {"tune": fingerprint(layout.tune.json), "test": fingerprint(manifest(layout.final_ensemble.test)),
              "sample": fingerprint(sample) if sample else None, "rle": cfg.data.rle.model_dump(),
              "mode": cfg.data.mode, "classes": cfg.data.classes, "holdout": cfg.data.holdout_fraction,
              "metric": cfg.metric if holdout else None}
    outputs = ([layout.holdout_truth] if holdout else []) + [layout.submission] + list((volumes or {}).values())
    return Unit(f"submit: {layout.submission}", layout.stamp("submit"), outputs, inputs)


class Submission:
    """A submission built from tuned probabilities: its frame and what checking it needs."""

    def __init__(self, cfg: Config, comp: Competition, store: ProbStore, tuned: dict, where: str):
        self.objects = cfg.data.instances is not None
        self.params = params_list(tuned["classes"], list(cfg.data.classes), where=where)
        self.cleanup = volume_params((tuned.get("volume_cleanup") or {}).get("classes"), list(cfg.data.classes))
        metric = get_metric(cfg.metric, key="metric") if comp.holdout_ids else None
        if self.objects:
            _, self.decoder = tuned_decoders(tuned, None, where)
            self.frame, self.sample, self.shapes, self.holdout_scores = build_instance_submission(
                cfg, comp, store, self.decoder)
        else:
            self.frame, self.sample, self.shapes, self.holdout_scores = build_submission(
                cfg, comp, store, self.params, metric, self.cleanup)
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


def run(cfg: Config) -> int:
    layout = cfg.layout
    tuned = read_tuned(layout.tune.json, f"run `segkit tune --config {cfg.source or 'CFG'}` first")
    # Checked before the freshness check, so that a bad tune.json fails even where the submission is up to date
    # (Submission reads it again when it builds one).
    params_list(tuned["classes"], list(cfg.data.classes), where=str(layout.tune.json))
    store = final_store(cfg, "test")
    comp = Competition(cfg.data, seed=cfg.seed)
    volumes = volume_files(cfg, comp)
    unit = submit_unit(cfg, bool(comp.holdout_ids), volumes)
    if unit.fresh():
        print(unit.kept())
        return 0
    built = Submission(cfg, comp, store, tuned, str(layout.tune.json))
    objects = built.objects
    target = layout.submission
    with atomic.atomic_path(target) as tmp:
        report = built.write(tmp, target)
        unit.begin()
        if comp.holdout_ids:
            atomic.write_csv(layout.holdout_truth, instance_truth(cfg, comp) if objects else holdout_truth(cfg, comp))
        write_volumes(FinalMasks(cfg, comp, store, built.params, built.cleanup), volumes)
    unit.done()

    n_images = len({r.image_id for r in comp.sample_rows})
    print(f"submit: wrote {target} ({len(built.frame)} rows, {n_images} images; validated against the sample)")
    if objects:
        print(f"submit: {report.notes[-1]}; decoder {built.decoder.describe()}")
    if volumes:
        print(f"submit: wrote {len(volumes)} label volumes (NIfTI, the source's affine) -> {layout.submission_volumes}")
    print(f"submit: tuned OOF {scored_as(tuned, tuned.get('metric', cfg.metric))} CV {tuned_cv(tuned)} (raw "
          f"ensemble OOF p>0.5: {tuned.get('cv_baseline', float('nan')):.4f})")
    if comp.holdout_ids:
        print(f"submit: holdout {'object AP' if objects else cfg.metric} {np.mean(built.holdout_scores):.4f} on "
              f"{len(built.holdout_scores)} images "
              f"(truth in {layout.holdout_truth})")
    return 0
