"""The volume step of ``segkit tune`` for volume competitions (segkit.postprocess.volumes): per class, the probability
threshold and the 3D clean-up of whole volumes, chosen by per-volume Dice on the OOF volumes after the slice-wise
search.

Candidates per class: the slice-wise threshold shifted by each of ``tune.volume_threshold_shifts`` (0 included),
times nothing, the largest 3D component only, or each of ``tune.min_volumes`` as a minimum component volume. A
volume's slices are post-processed with the slice-wise choice at each shifted threshold, stacked back and cleaned
with every 3D candidate; each class keeps the pair of the best mean Dice over the volumes if it beats the
slice-wise choice alone (the same rule as the slice-wise steps' default). The classes are chosen one by one and
the chosen combination is scored again, as ``segkit evaluate`` will score it. Honest evidence: for every fold k,
the slices of all volumes are post-processed with fold k's nested slice-wise choice (made without fold k), the
volume choice is made on the other folds' volumes, and fold k's volumes are scored with it: ``cv_nested`` never
saw a label of the volumes it scores. One volume is in memory at a time; each table holds a Dice per volume,
class, threshold and 3D candidate.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from segkit.components import bounding_box, label_counts
from segkit.data.volumes import VolumeSet
from segkit.metrics.volume_scores import overlap
from segkit.postprocess.masks import ClassParams
from segkit.postprocess.volumes import (
    VolumeParams,
    case_masks,
    case_truth,
    clean_volume,
    kept_components,
    label_box,
)
from segkit.progress import bar


def candidates(min_volumes: Sequence[int]) -> list[VolumeParams]:
    return [VolumeParams(), VolumeParams(largest=True)] + [VolumeParams(min_volume=v) for v in min_volumes if v > 0]


def shifts_of(shifts: Sequence[float]) -> list[float]:
    """The threshold shifts tried, 0 (the slice-wise threshold) first."""
    return [0.0] + sorted({float(s) for s in shifts if s != 0})


def shifted(params: Sequence[ClassParams], shift: float) -> list[VolumeParams]:
    """Every class's slice-wise threshold moved by ``shift``, kept inside (0, 1), as volume thresholds."""
    return [VolumeParams(threshold=round(min(max(p.threshold + shift, 0.01), 0.99), 4)) for p in params]


def score_table(volumes: VolumeSet, cases: list[str], read_probs: Callable[[str], np.ndarray],
                read_mask: Callable[[str], np.ndarray], params: Sequence[ClassParams], exclusive: bool,
                shifts: list[float], options: list[VolumeParams], desc: str) -> np.ndarray:
    """(V, K, T, C): the Dice of every case and class, the slices post-processed with ``params`` at threshold
    shift t and the volume cleaned with 3D candidate c."""
    table = None
    for v, case in enumerate(bar(cases, desc, total=len(cases))):
        truth = case_truth(volumes, case, read_mask)
        for t, shift in enumerate(shifts):
            pred = case_masks(volumes, case, read_probs, lambda _: params, exclusive, shifted(params, shift))
            k = pred.shape[0]
            if table is None:
                table = np.empty((len(cases), k, len(shifts), len(options)), np.float64)
            for j in range(k):
                table[v, j, t] = option_dice(pred[j], truth[j], options)
    return table


def option_dice(pred: np.ndarray, truth: np.ndarray, options: list[VolumeParams]) -> np.ndarray:
    """(C,) the Dice of one class's (X, Y, Z) mask after each 3D rule of ``options``, from one labelling: every
    rule keeps whole components, so its Dice follows from the components' sizes and their overlaps with the truth
    (``overlap(clean_volume(...))`` without a cleaned volume per rule)."""
    truth_voxels = int(np.count_nonzero(truth))
    box = bounding_box(pred)
    if box is None:  # nothing predicted: every rule keeps nothing
        return np.full(len(options), 1.0 if truth_voxels == 0 else 0.0)
    labels, n = label_box(pred, box)
    sizes = label_counts(labels, n + 1)
    inside = label_counts(labels[np.asarray(truth[box]).view(bool)], n + 1)  # the true voxels' labels only
    out = np.empty(len(options))
    for c, option in enumerate(options):
        keep = kept_components(sizes, option) if option.active else np.arange(n + 1) > 0
        total = int(sizes[keep].sum()) + truth_voxels
        out[c] = 1.0 if total == 0 else 2.0 * float(inside[keep].sum()) / total
    return out


def choose(table: np.ndarray, rows: np.ndarray) -> list[tuple[int, int]]:
    """Per class, the (shift, 3D candidate) of the best mean over ``rows`` if it beats (0, 0), the slice-wise
    choice alone; else (0, 0)."""
    means = table[rows].mean(0)  # (K, T, C)
    out = []
    for k in range(means.shape[0]):
        t, c = np.unravel_index(int(np.argmax(means[k])), means[k].shape)
        out.append((int(t), int(c)) if means[k, t, c] > means[k, 0, 0] else (0, 0))
    return out


def chosen_params(params: Sequence[ClassParams], picks: list[tuple[int, int]], shifts: list[float],
                  options: list[VolumeParams]) -> list[VolumeParams]:
    """Each class's volume parameters: the picked 3D rule, with a threshold where the picked shift is not 0."""
    return [VolumeParams(options[c].largest, options[c].min_volume, shifted([p], shifts[t])[0].threshold if t else None)
            for p, (t, c) in zip(params, picks)]


def case_dice(volumes: VolumeSet, cases: list[str], read_probs, read_mask, params: Sequence[ClassParams],
              exclusive: bool, volume: list[VolumeParams]) -> np.ndarray:
    """(V, K): the Dice of each case with the slice-wise ``params`` and the volume parameters ``volume``."""
    out = np.empty((len(cases), len(params)))
    for v, case in enumerate(cases):
        pred = case_masks(volumes, case, read_probs, lambda _: params, exclusive, volume)
        out[v] = overlap(clean_volume(pred, volume), case_truth(volumes, case, read_mask))[0]
    return out


def _json(volume: list[VolumeParams], classes: list[str]) -> dict:
    """The classes whose volume parameters change anything, as tune.json keeps them."""
    return {c: {k: v for k, v in p.to_json().items() if v is not None} for c, p in zip(classes, volume) if p.changes}


def tune_volumes(volumes: VolumeSet, ids: Sequence[str], fold_of: dict[str, int] | None,
                 read_probs: Callable[[str], np.ndarray], read_mask: Callable[[str], np.ndarray], classes: list[str],
                 params, nested_params: dict[int, list], exclusive: bool, min_volumes: Sequence[int],
                 threshold_shifts: Sequence[float] = ()) -> dict:
    """The step's choice (on every OOF volume) and, with folds, its nested estimate; for tune.json."""
    have = set(ids)
    cases = [c for c in volumes.cases if set(volumes.slices_of(c)) <= have]
    options = candidates(min_volumes)
    shifts = shifts_of(threshold_shifts)
    full = score_table(volumes, cases, read_probs, read_mask, params, exclusive, shifts, options,
                       "tune: per-volume threshold and 3D clean-up")
    choice = chosen_params(params, choose(full, np.arange(len(cases))), shifts, options)
    after = case_dice(volumes, cases, read_probs, read_mask, params, exclusive, choice)
    out = {
        "volumes": len(cases),
        "classes": _json(choice, classes),
        "summary": {c: p.describe() for c, p in zip(classes, choice)},
        "dice_before": float(full[:, :, 0, 0].mean()),
        "dice_after": float(after.mean()),  # in-sample: chosen on these volumes
        "cv_nested": None, "dice_before_nested": None, "nested": {},
    }
    if fold_of and nested_params:
        folds = np.array([fold_of[volumes.slices_of(c)[0]] for c in cases])
        before = np.empty(len(cases))
        nested_after = np.empty(len(cases))
        for f, fold_params in sorted(nested_params.items()):
            rows = folds == f
            if not rows.any():
                continue
            table = score_table(volumes, cases, read_probs, read_mask, fold_params, exclusive, shifts, options,
                                f"tune: per-volume step, fold {f} nested")
            pick = chosen_params(fold_params, choose(table, ~rows), shifts, options)
            mine = [c for c, r in zip(cases, rows) if r]
            before[rows] = table[rows][:, :, 0, 0].mean(1)
            nested_after[rows] = case_dice(volumes, mine, read_probs, read_mask, fold_params, exclusive, pick).mean(1)
            out["nested"][str(f)] = _json(pick, classes)
        out["dice_before_nested"] = float(before.mean())
        out["cv_nested"] = float(nested_after.mean())
    return out
