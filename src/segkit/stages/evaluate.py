"""``segkit evaluate``: every metric of the final predictions, per image and class, and their table.

The predictions are those the submission is made of: the final ensemble's probabilities through the tuned
post-processing of ``tune.json`` (applied exactly as ``segkit submit`` applies it). Two splits are scored against
their truth: ``oof``, the ensemble's out-of-fold store (every train image), and, with ``data.holdout_fraction``,
``holdout``, the held-out images of the ensemble's test store. The holdout gets the parameters chosen on every
fold, as the submission does; an OOF image of fold k gets those the nested search chose without fold k
(``tune.json``'s ``nested``), so the OOF table is out-of-fold all the way and its row of the competition metric
is the nested CV. Without a nested estimate (no fold file) the OOF table uses the submission's parameters and says
it is in-sample.

For every image and class the table's metrics (``TABLE``) are computed from the post-processed mask, except
``roc_auc``, which is the real pixel ROC-AUC of the probabilities (``segkit.metrics.roc_auc``). Every metric that
is also a competition metric follows that metric's finite empty convention (``segkit.metrics.image_scores``), so
a row's mean is the CV that ``metric: <name>`` would report for these masks. A value is NaN, and skipped by the
row's statistics (``n`` counts the values that are not), only where a metric is undefined: the signed RVD on an
empty truth with a non-empty prediction, the ROC-AUC on a truth with one label.

A volume competition (``data.volumes``) is also scored volume by volume: each volume's slices post-processed as
above, stacked back, cleaned in 3D as tuned (an OOF volume with its fold's nested choice) and scored in mm with
the header's voxel spacing (``segkit.metrics.volume_scores``: Dice, IoU, RVD, HD95, ASSD, normalised surface
Dice), one row per volume and class in ``per_volume_<split>.csv`` and a table of means in evaluate.json.

An instance competition (``data.instances``) is also scored object by object: each image decoded with the tuned
decoder (an OOF image with its fold's nested choice), one row per image in ``objects_<split>.csv``: object AP and
the precision at each IoU threshold, the objects true and predicted, and the split and merged objects
(``segkit.metrics.competition.object_scores``).

Images are read, scored and dropped one at a time: memory holds only the per-image values. Outputs
(``segkit.artifacts.layout.EvaluatePaths``): ``per_image_<split>.csv`` (id, class, true and predicted pixels, every
metric), ``metrics.csv`` (per split, class and metric: best direction, mean, std, median, n; with several classes also
the class ``all``, the per-image mean over classes, which is what a competition metric scores) and ``evaluate.json``
(the same table with the conventions). The evaluation is a unit of work (``segkit.artifacts.freshness``): skipped while
tune.json, the stores and the data settings are those it was made from.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import pandas as pd

from segkit.artifacts import atomic
from segkit.artifacts.freshness import Unit, fingerprint
from segkit.artifacts.probs import ProbStore, manifest
from segkit.commands import final_ensemble_maker, final_store
from segkit.compute import pool
from segkit.config import Config
from segkit.data import Competition
from segkit.data.folds import fold_of, load_folds
from segkit.errors import DataError
from segkit.metrics import get_metric, overlap_counts, roc_auc
from segkit.metrics.competition import object_scores
from segkit.metrics.image_scores import COUNT_SCORES, SURFACE_SCORES, surface_class_scores
from segkit.metrics.volume_scores import VOLUME_METRICS, volume_scores
from segkit.postprocess.instances import DecodeParams, decode
from segkit.postprocess.masks import postprocess
from segkit.postprocess.tuned import Tuned
from segkit.postprocess.volumes import case_masks, case_truth, clean_volume
from segkit.progress import bar

# The table's metrics in the order it shows them; "rvd" is the only one that is not a competition metric.
TABLE = ("pixel_accuracy", "mean_pixel_accuracy", "iou", "dice", "sensitivity", "specificity", "voe", "rvd",
         "abs_rvd", "assd", "hd", "hd95", "roc_auc")
ALL_CLASSES = "all"
STATS = ("mean", "std", "median", "n")


def best_of(name: str) -> str:
    """Which way a metric is better: "higher", "lower", or "0" (the signed RVD: its sign shows a bias)."""
    if name == "rvd":
        return "0"
    return "higher" if get_metric(name).higher_is_better else "lower"


CONVENTIONS = {
    "pixel_accuracy": "(TP + TN) / pixels",
    "mean_pixel_accuracy": "mean of sensitivity and specificity over the labels the truth holds",
    "iou": "TP / (TP + FP + FN); both empty 1",
    "dice": "2 TP / (2 TP + FP + FN); both empty 1",
    "sensitivity": "TP / (TP + FN); empty truth: 1 if the prediction is empty, else 0",
    "specificity": "TN / (TN + FP); truth filling the image: 1 if the prediction fills it, else 0",
    "voe": "1 - IoU; both empty 0",
    "rvd": "(pred - truth) / truth; both empty 0; empty truth, non-empty prediction: NaN (skipped)",
    "abs_rvd": "min(|pred - truth| / truth, 1); empty truth: 0 if the prediction is empty, else 1",
    "assd": "average symmetric surface distance, pixels; both empty 0, one empty the image diagonal",
    "hd": "Hausdorff distance, pixels; both empty 0, one empty the image diagonal",
    "hd95": "95th percentile Hausdorff distance (MONAI), pixels; both empty 0, one empty the image diagonal",
    "roc_auc": "pixel ROC-AUC of the probabilities; truth with one label: NaN (skipped)",
}


# ------------------------------------------------------------------------------------------------ one image


def image_values(probs: np.ndarray, truth: np.ndarray, params, exclusive: bool) -> dict[str, np.ndarray]:
    """Every table metric per class (K,) of one image: uint8 probabilities (K, H, W) and 0/1 truth (K, H, W); also
    ``truth_px`` and ``pred_px`` (the masks' areas)."""
    masks = postprocess(probs, params, exclusive=exclusive).view(bool)
    truth = np.asarray(truth).astype(bool)
    counts = overlap_counts(masks[None], truth[None])
    values: dict[str, np.ndarray] = {"truth_px": counts.truth_area[0], "pred_px": counts.pred_area[0]}
    for name in TABLE:
        if name in COUNT_SCORES and name != "roc_auc":  # a mask's AUC is the metric's; the table has probabilities
            values[name] = COUNT_SCORES[name](counts)[0]
    values.update(surface_class_scores(masks, truth, tuple(n for n in TABLE if n in SURFACE_SCORES)))
    values["roc_auc"] = roc_auc(np.asarray(probs)[None], truth[None])[0]
    return values


def score_split(store: ProbStore, ids: list[str], read_mask, params_of: Callable[[str], list], classes: list[str],
                exclusive: bool, split: str, workers: int = 1) -> pd.DataFrame:
    """One row per image and class: id, class, truth_px, pred_px and the TABLE metrics; ``params_of(id)``: the
    post-processing parameters of that image. The images are spread over ``workers`` processes."""
    per_image = pool.map_indices(lambda i: image_rows(store, ids[i], read_mask, params_of(ids[i]), classes, exclusive),
                                 len(ids), workers, f"evaluate {split}")
    return pd.DataFrame([row for rows in per_image for row in rows],
                        columns=["id", "class", "truth_px", "pred_px", *TABLE])


def image_rows(store: ProbStore, image_id: str, read_mask, params: list, classes: list[str],
               exclusive: bool) -> list[dict]:
    """One image's rows of ``score_split``."""
    probs = np.asarray(store[image_id])
    if probs.ndim != 3 or probs.shape[0] != len(classes):
        raise DataError(f"{store.folder}: {image_id!r} has probabilities of shape {probs.shape}; expected "
                        f"({len(classes)}, H, W)")
    truth = read_mask(image_id)
    if truth.shape != probs.shape:
        raise DataError(f"{store.folder}: {image_id!r} has probabilities of shape {probs.shape} but its mask is "
                        f"{truth.shape}")
    values = image_values(probs, truth, params, exclusive)
    return [{"id": image_id, "class": cls, **{name: values[name][k].item() for name in ("truth_px", "pred_px", *TABLE)}}
            for k, cls in enumerate(classes)]


def score_volumes(comp: Competition, store: ProbStore, ids: list[str], params_of: Callable[[str], list],
                  cleanup_of: Callable[[str], list], classes: list[str], exclusive: bool, split: str
                  ) -> pd.DataFrame:
    """A volume competition's split scored volume by volume: each volume's slices post-processed as the
    submission makes them (at the volume step's thresholds), stacked back into the volume, cleaned in 3D as tuned
    (``cleanup_of(first slice id)``) and scored in mm (``segkit.metrics.volume_scores``)."""
    volumes = comp.volume_set("train")  # OOF and holdout volumes are labelled ones
    where = volumes.positions
    by_case: dict[str, set[str]] = {}
    for image_id in ids:
        by_case.setdefault(where[image_id].volume, set()).add(image_id)
    rows = []
    tolerance = comp.cfg.volumes.nsd_tolerance
    for case, members in bar(list(by_case.items()), f"evaluate {split} volumes", total=len(by_case)):
        order = volumes.slices_of(case)
        if set(order) != members:
            raise DataError(f"{store.folder}: volume {case!r} has {len(members)} of its {len(order)} slices in the "
                            f"{split} split; a volume's slices belong to one split")
        cleanup = cleanup_of(order[0])
        pred = clean_volume(case_masks(volumes, case, store.__getitem__, params_of, exclusive, cleanup), cleanup)
        truth = case_truth(volumes, case, comp.read_mask)
        scores = volume_scores(pred, truth, volumes.spacing(case), tolerance)
        for k, cls in enumerate(classes):
            rows.append({"volume": case, "class": cls, "truth_voxels": int(truth[k].sum()),
                         "pred_voxels": int(pred[k].sum()), **{m: float(scores[m][k]) for m in VOLUME_METRICS}})
    return pd.DataFrame(rows, columns=["volume", "class", "truth_voxels", "pred_voxels", *VOLUME_METRICS])


def score_objects(comp: Competition, store: ProbStore, ids: list[str], decoder_of: Callable[[str], DecodeParams],
                  split: str) -> pd.DataFrame:
    """An instance competition's split scored object by object: each image decoded as the submission decodes it
    (an OOF image with its fold's nested decoder) and compared with its instance map (``object_scores``)."""
    rows = []
    for image_id in bar(ids, f"evaluate {split} objects", total=len(ids)):
        found = decode(np.asarray(store[image_id]), decoder_of(image_id))
        rows.append({"id": image_id, **object_scores(found, comp.instance_map(image_id))})
    return pd.DataFrame(rows)


def object_table(frames: dict[str, pd.DataFrame]) -> str:
    """Means per image of the objects' scores, a line per split."""
    lines = ["objects (means over images; split: true objects cut in two or more, merged: predicted objects "
             "holding two or more)", f"{'split':<9}{'AP':>8}{'AP50':>8}{'AP75':>8}{'true':>8}{'pred':>8}"
             f"{'split':>8}{'merged':>8}"]
    for split, f in frames.items():
        lines.append(f"{split:<9}{f['ap'].mean():>8.4f}{f['ap50'].mean():>8.4f}{f['ap75'].mean():>8.4f}"
                     f"{f['true_objects'].mean():>8.1f}{f['pred_objects'].mean():>8.1f}{f['split'].mean():>8.2f}"
                     f"{f['merged'].mean():>8.2f}    ({len(f)} images)")
    return "\n".join(lines)


def volume_table(frame: pd.DataFrame, split: str) -> list[dict]:
    """Per class and metric: mean, std, median over the volumes with a finite value, n of those, and how many
    were infinite (a distance to an empty mask)."""
    rows = []
    for cls, part in frame.groupby("class", sort=False):
        for name in VOLUME_METRICS:
            values = part[name].replace([np.inf, -np.inf], np.nan)
            rows.append({"split": split, "class": cls, "metric": name, **_stats(values),
                         "infinite": int(np.isinf(part[name]).sum())})
    return rows


# ---------------------------------------------------------------------------------------------------- table


def _stats(values: pd.Series) -> dict[str, float | int]:
    valid = values.dropna().to_numpy(dtype=np.float64)
    if not len(valid):
        return {"mean": math.nan, "std": math.nan, "median": math.nan, "n": 0}
    # sample standard deviation (ddof 1): the spread of the per-image values, NaN for a single image
    std = float(valid.std(ddof=1)) if len(valid) > 1 else math.nan
    return {"mean": float(valid.mean()), "std": std, "median": float(np.median(valid)), "n": int(len(valid))}


def summarize(per_image: pd.DataFrame, split: str, classes: list[str]) -> list[dict]:
    """Table rows of one split: per class and metric its direction and statistics; with several classes also the
    class ``all``: each image's mean over its classes (NaN classes skipped), as a competition metric scores it."""
    groups = [(cls, per_image[per_image["class"] == cls]) for cls in classes]
    if len(classes) > 1:
        groups.append((ALL_CLASSES, per_image.groupby("id", sort=False)[list(TABLE)].mean()))
    rows = []
    for cls, part in groups:
        for name in TABLE:
            rows.append({"split": split, "class": cls, "metric": name, "best": best_of(name),
                         **_stats(part[name])})
    return rows


def format_table(table: pd.DataFrame, images: dict[str, int]) -> str:
    """The table as text, one block per split and class."""
    lines = []
    for (split, cls), part in table.groupby(["split", "class"], sort=False):
        lines.append(f"evaluate: {split} ({images[split]} images), class {cls}")
        lines.append(f"  {'metric':<20} {'best':>6} {'mean':>10} {'std':>10} {'median':>10} {'n':>6}")
        for row in part.itertuples(index=False):
            cells = " ".join(f"{getattr(row, s):>10.4f}" for s in ("mean", "std", "median"))
            lines.append(f"  {row.metric:<20} {row.best:>6} {cells} {row.n:>6}")
    return "\n".join(lines)


def format_volumes(rows: list[dict], counts: dict[str, int], tolerance: float) -> str:
    """Per split and class, the mean over volumes of every volume metric (the count of infinite distances aside)."""
    head = f"per volume (mean over volumes; hd95 and assd in mm; nsd at {tolerance:g} mm)"
    lines = [head, "split    class          " + "".join(f"{m:>9}" for m in VOLUME_METRICS)]
    by = {(r["split"], r["class"], r["metric"]): r for r in rows}
    for split, cls in dict.fromkeys((r["split"], r["class"]) for r in rows):
        cells = []
        for m in VOLUME_METRICS:
            r = by[(split, cls, m)]
            mark = "*" if r["infinite"] else ""
            cells.append(f"{r['mean']:>8.4f}{mark or ' '}" if r["n"] else f"{'-':>9}")
        lines.append(f"{split:<8} {cls:<14} " + "".join(cells) + f"   ({counts[split]} volumes)")
    if any(r["infinite"] for r in rows):
        lines.append("* some volumes' distances are infinite (an empty prediction or truth) and left out of the mean")
    return "\n".join(lines)


def _json_value(value):
    """NaN as null: evaluate.json stays strict JSON."""
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


# ------------------------------------------------------------------------------------------------ the stage


def evaluate_unit(cfg: Config, holdout: bool) -> Unit:
    """The evaluation as a unit of work: decided by the tuning, the final ensemble's stores, the truth and the
    table's metrics."""
    layout = cfg.layout
    paths = layout.evaluate
    inputs = {"tune": fingerprint(layout.tune.json), "oof": fingerprint(manifest(layout.final_ensemble.oof)),
              "test": fingerprint(manifest(layout.final_ensemble.test)) if holdout else None,
              "mode": cfg.data.mode, "classes": cfg.data.classes, "root": str(cfg.data.root),
              # which images are held out depends on the fraction and the seed, or on the list
              "holdout": [cfg.data.holdout_fraction, cfg.seed, cfg.data.holdout_list] if holdout else None,
              # the OOF images are scored with their fold's nested choice
              "folds": fingerprint(layout.folds_file),
              "table": list(TABLE), "metric": cfg.metric}
    outputs = [paths.per_image_oof] + ([paths.per_image_holdout] if holdout else []) + [paths.metrics, paths.json]
    return Unit(f"evaluate: {paths.dir}", paths.stamp, outputs, inputs)


def run(cfg: Config) -> int:
    layout = cfg.layout
    paths = layout.evaluate
    classes = list(cfg.data.classes)
    tuned = Tuned.read(layout.tune.json, classes, f"run `segkit tune --config {cfg.source or 'CFG'}` first")
    oof = final_store(cfg, "oof")
    comp = Competition(cfg.data, seed=cfg.seed)
    holdout_ids = list(comp.holdout_ids)
    test = final_store(cfg, "test") if holdout_ids else None
    unit = evaluate_unit(cfg, bool(holdout_ids))
    if unit.skip():
        return 0
    if test is not None:
        test.require(holdout_ids, "holdout images", f"run `segkit {final_ensemble_maker(layout)}` again")

    exclusive = cfg.data.mode == "multiclass"
    splits = {"oof": (oof, list(oof.ids), paths.per_image_oof)}
    if test is not None:
        splits["holdout"] = (test, holdout_ids, paths.per_image_holdout)
    fold = fold_of(load_folds(cfg)) if layout.folds_file.exists() else None  # the nested choices' keys
    # OOF images with their fold's nested choice (where tune made one), holdout images with the submission's
    choices = {"oof": tuned.choice(fold, layout.folds_file), "holdout": tuned.choice()}
    oof_choice = choices["oof"].text
    frames = {split: score_split(store, ids, comp.read_mask, choices[split].params, classes, exclusive, split,
                                 pool.workers(cfg.cpu_workers))
              for split, (store, ids, _) in splits.items()}
    rows = [row for split, frame in frames.items() for row in summarize(frame, split, classes)]
    table = pd.DataFrame(rows, columns=["split", "class", "metric", "best", *STATS])
    images = {split: len(ids) for split, (_, ids, _) in splits.items()}
    volumes = {}
    if cfg.data.volumes is not None:
        volumes = {split: score_volumes(comp, store, ids, choices[split].params, choices[split].cleanup,
                                        classes, exclusive, split)
                   for split, (store, ids, _) in splits.items()}
    volume_rows = [row for split, frame in volumes.items() for row in volume_table(frame, split)]
    objects = {}
    if cfg.data.instances is not None:
        objects = {split: score_objects(comp, store, ids, choices[split].decoder, split)
                   for split, (store, ids, _) in splits.items()}

    with unit.writing():
        for split, (_, _, path) in splits.items():
            atomic.write_csv(path, frames[split])
        if test is None and paths.per_image_holdout.exists():
            paths.per_image_holdout.unlink()  # a holdout of an earlier config: no longer part of this evaluation
        for split, frame in volumes.items():
            atomic.write_csv(paths.per_volume(split), frame)
        for split, frame in objects.items():
            atomic.write_csv(paths.objects(split), frame)
        atomic.write_csv(paths.metrics, table)
        atomic.write_json(paths.json, {
            "metric": cfg.metric, "tune": str(layout.tune.json), "images": images, "oof_parameters": oof_choice,
            "stores": {split: str(store.folder) for split, (store, _, _) in splits.items()},
            "conventions": CONVENTIONS,
            "table": [{k: _json_value(v) for k, v in row.items()} for row in rows],
            "volumes": {"nsd_tolerance_mm": cfg.data.volumes.nsd_tolerance,
                        "counts": {split: int(frame["volume"].nunique()) for split, frame in volumes.items()},
                        "table": [{k: _json_value(v) for k, v in row.items()} for row in volume_rows]}
            if volumes else None,
            "objects": {split: {k: float(frame[k].mean()) for k in frame.columns if k != "id"}
                        for split, frame in objects.items()} or None,
        })

    print(f"evaluate: OOF parameters {oof_choice}")
    print(format_table(table, images))
    if volumes:
        print(format_volumes(volume_rows, {split: int(f["volume"].nunique()) for split, f in volumes.items()},
                             cfg.data.volumes.nsd_tolerance))
    if objects:
        print(object_table(objects))
    main = get_metric(cfg.metric, key="metric").name  # the table's name of it (an alias names the same metric)
    headline = table[(table["split"] == "oof") & (table["metric"] == main)
                     & (table["class"] == (ALL_CLASSES if len(classes) > 1 else classes[0]))]
    score = f"; OOF {main} {headline['mean'].iloc[0]:.4f}" if len(headline) else ""
    held = f", {images['holdout']} holdout" if "holdout" in images else ""
    print(f"evaluate: wrote {paths.metrics} ({images['oof']} OOF{held} images x {len(classes)} class(es), "
          f"{len(TABLE)} metrics{score})")
    return 0
