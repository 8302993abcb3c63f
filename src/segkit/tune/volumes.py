"""The 3D clean-up step of ``segkit tune`` for volume competitions (segkit.postprocess3d), chosen per class by
per-volume Dice on the OOF volumes, after the slice-wise search.

Candidates per class: nothing, the largest 3D component only, or each of ``tune.min_volumes`` as a minimum
component volume. A volume's slices are post-processed with the slice-wise choice, stacked back and cleaned with
every candidate; each class keeps the candidate of the best mean Dice over the volumes if it beats doing nothing
(the same rule as the slice-wise steps' default). Honest evidence: for every fold k, the slices of all volumes are
post-processed with fold k's nested slice-wise choice (made without fold k), the 3D candidate is chosen on the
other folds' volumes, and fold k's volumes are scored with it: ``cv_nested`` never saw a label of the volumes it
scores. One volume is in memory at a time; each table holds a Dice per volume, class and candidate.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from segkit.data.volumes import VolumeSet
from segkit.metrics.volume_scores import overlap
from segkit.postprocess3d import VolumeParams, case_masks, case_truth, clean_volume
from segkit.progress import bar


def candidates(min_volumes: Sequence[int]) -> list[VolumeParams]:
    return [VolumeParams(), VolumeParams(largest=True)] + [VolumeParams(min_volume=v) for v in min_volumes if v > 0]


def score_table(volumes: VolumeSet, cases: list[str], read_probs: Callable[[str], np.ndarray],
                read_mask: Callable[[str], np.ndarray], params, exclusive: bool, options: list[VolumeParams],
                desc: str) -> np.ndarray:
    """(V, K, C): the Dice of every case, class and candidate, the slices post-processed with ``params``."""
    table = None
    for v, case in enumerate(bar(cases, desc, total=len(cases))):
        pred = case_masks(volumes, case, read_probs, lambda _: params, exclusive)
        truth = case_truth(volumes, case, read_mask)
        k = pred.shape[0]
        if table is None:
            table = np.empty((len(cases), k, len(options)), np.float64)
        for c, option in enumerate(options):
            table[v, :, c] = overlap(clean_volume(pred, [option] * k), truth)[0]
    return table


def choose(table: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Per class, the candidate of the best mean over ``rows`` if it beats candidate 0 (nothing), else 0."""
    means = table[rows].mean(0)  # (K, C)
    best = means.argmax(1)
    return np.where(means[np.arange(len(best)), best] > means[:, 0], best, 0)


def tune_volumes(volumes: VolumeSet, ids: Sequence[str], fold_of: dict[str, int] | None,
                 read_probs: Callable[[str], np.ndarray], read_mask: Callable[[str], np.ndarray], classes: list[str],
                 params, nested_params: dict[int, list], exclusive: bool, min_volumes: Sequence[int]) -> dict:
    """The step's choice (on every OOF volume) and, with folds, its nested estimate; for tune.json."""
    have = set(ids)
    cases = [c for c in volumes.cases if set(volumes.slices_of(c)) <= have]
    options = candidates(min_volumes)
    full = score_table(volumes, cases, read_probs, read_mask, params, exclusive, options, "tune: 3D clean-up")
    chosen = choose(full, np.arange(len(cases)))
    k = np.arange(len(classes))
    out = {
        "volumes": len(cases),
        "classes": {c: options[chosen[j]].to_json() for j, c in enumerate(classes) if chosen[j]},
        "summary": {c: options[chosen[j]].describe() for j, c in enumerate(classes)},
        "dice_before": float(full[:, :, 0].mean()),
        "dice_after": float(full[:, k, chosen].mean()),  # in-sample: chosen on these volumes
        "cv_nested": None, "dice_before_nested": None, "nested": {},
    }
    if fold_of and nested_params:
        folds = np.array([fold_of[volumes.slices_of(c)[0]] for c in cases])
        before = np.empty(len(cases))
        after = np.empty(len(cases))
        for f, fold_params in sorted(nested_params.items()):
            rows = folds == f
            if not rows.any():
                continue
            table = score_table(volumes, cases, read_probs, read_mask, fold_params, exclusive, options,
                                f"tune: 3D clean-up, fold {f} nested")
            pick = choose(table, ~rows)
            before[rows] = table[rows][:, :, 0].mean(1)
            after[rows] = table[rows][:, k, pick].mean(1)
            out["nested"][str(f)] = {c: options[pick[j]].to_json() for j, c in enumerate(classes) if pick[j]}
        out["dice_before_nested"] = float(before.mean())
        out["cv_nested"] = float(after.mean())
    return out
