"""Orthogonal-view test-time augmentation of volumes seen as slices: a case predicted along several axes, the
views averaged voxel by voxel and written slice by slice along the volume's own axis."""

from __future__ import annotations

from typing import Callable, Optional

import numpy as np

from segkit.data.volume_readers import cut
from segkit.data.volumes import assemble
from segkit.inference.outputs import Collected, Outputs


def cases_share(volumes, ids: list[str], world) -> list[str]:
    """This rank's share of ``ids`` when whole cases are the unit (orthogonal views): every slice of its cases."""
    cases = list(dict.fromkeys(volumes.case_of(i) for i in ids))[world.rank::world.size]
    mine = set(cases)
    return [i for i in ids if volumes.case_of(i) in mine]


def view_ids(volumes, axes: list[int], ids: list[str]) -> list[str]:
    """Every slice the orthogonal views of ``ids``' cases predict."""
    return [i for case in dict.fromkeys(volumes.case_of(i) for i in ids) for a in axes for i in volumes.cut(case, a)]


def predict_views(volumes, axes: list[int], todo: list[str], out: Outputs,
                   predict_slices: Callable[[list[str], object], int]) -> int:
    """Orthogonal-view TTA: each case of ``todo`` predicted slice by slice along every axis of ``axes``; a voxel's
    probability is the mean of its views (each quantised, like the folds of a store), written slice by slice along
    ``volumes.axis``. One case is in memory at a time: a uint8 volume of the view being predicted and a uint16 sum
    of the views, per output channel. Returns the slices written."""
    done = 0
    for case in dict.fromkeys(volumes.case_of(i) for i in todo):
        total: Optional[np.ndarray] = None
        for axis in axes:
            ids = volumes.cut(case, axis)
            views = Collected()
            predict_slices(ids, views, f"{case} along axis {axis}")
            view = assemble([views.pop(i) for i in ids], axis)  # (G * K, X, Y, Z)
            if total is None:
                total = np.zeros(view.shape, np.uint16)
            total += view
            del view
        for j, slice_id in enumerate(volumes.slices_of(case)):
            if not out.has(slice_id):
                mean = cut(total, 1 + volumes.axis, j).astype(np.float64) / len(axes)
                out.write(slice_id, np.rint(mean).astype(np.uint8))  # rounds as segkit.artifacts.probs.mean_uint8
                done += 1
    return done



__all__ = ["cases_share", "predict_views", "view_ids"]
