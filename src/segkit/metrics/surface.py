"""Surface distances between two binary masks, exact, in 1 to 3 dimensions, with voxel spacing.

Definitions (every public function here follows them):

* **Surface**: the foreground voxels with at least one background neighbour, neighbours taken with
  ``connectivity`` (1: faces, the default, as medpy and MONAI; up to ``ndim``: faces, edges and corners, as
  ``scipy.ndimage.generate_binary_structure``). Voxels outside the array count as background, so foreground on
  the image border is surface.
* **Surface distance** of a surface voxel of one mask: the Euclidean distance, in physical units (``spacing``
  per axis, default 1), from its centre to the nearest surface voxel centre of the other mask. These are the
  distances a brute-force ``cdist`` between the two surface point sets gives, exactly.
* **Hausdorff (HD)**: the largest surface distance in either direction.
* **Percentile Hausdorff (HD95)** under ``convention``:
  ``"monai"`` (the default) takes the larger of the two directed percentiles, ``max(P95(pred→truth),
  P95(truth→pred))``; ``"medpy"`` pools both directions' distances and takes one percentile. Percentiles
  interpolate linearly (``np.percentile``'s default), as both libraries do.
* **ASD** (average surface distance, directed): the mean surface distance from the prediction's surface to the
  truth's (medpy's ``asd(result, reference)``).
* **ASSD** (average symmetric surface distance): the mean of both directions' distances pooled, so each
  surface voxel weighs the same (Heimann et al. 2009; medpy 0.5 and MONAI compute it so, checked in the
  bench).
* **Empty masks**: both empty -> every distance is 0 (nothing to disagree on). Exactly one empty -> every
  score is ``empty_fill``: ``inf`` by default, a number, or ``"diagonal"`` for the image's diagonal in
  physical units (``norm((shape - 1) * spacing)``, the largest distance two voxels of the image can have, so
  it is a finite worst case that keeps means over a data set finite).

Why ``"monai"`` is the default: its HD95 is the classical partial Hausdorff distance (Huttenlocher et al.
1993: the larger of the two directed ranked distances), which treats both directions alike whatever their
sizes. Pooling before the percentile (medpy) weighs each direction by its number of surface voxels, so the
larger surface dominates: a small prediction's errors, or a small structure's misses, are diluted. DeepMind's
``surface-distance`` weighs surface elements by their area on a half-voxel grid; it is not implemented here
(on the bench its HD95 and ASD differ from both conventions by up to about a voxel).

Speed (see bench/metrics.py): everything runs on the bounding box of the union of both masks (outside it both
are background, so cropping changes nothing, not even the surface at the box edge); the surface is one erosion
done with array shifts; distances come from a search that grows outward from each surface voxel, handing
far-off voxels to a k-d tree or to per-slice distance maps (:mod:`segkit.metrics.nearest`). ``method="edt"``
takes them from ``scipy.ndimage.distance_transform_edt(~other_surface, sampling=spacing)`` instead, as medpy
does, and ``method="kdtree"`` from a k-d tree alone; all three give the same numbers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence, Union

import numpy as np
from scipy import ndimage as ndi

from segkit.components import bounding_box
from segkit.errors import ConfigError, DataError
from segkit.metrics.inputs import as_mask, check_same_shape
from segkit.metrics.nearest import nearest_distances

CONVENTIONS = ("monai", "medpy")
DEFAULT_CONVENTION = "monai"
METHODS = ("auto", "edt", "kdtree")
SURFACE_SCORES = ("hausdorff", "hd95", "asd", "assd")

EmptyFill = Union[float, str]
Spacing = Union[float, Sequence[float], None]


def _check_convention(convention: str) -> str:
    if convention not in CONVENTIONS:
        raise ConfigError(
            f"unknown surface distance convention {convention!r}; known: {', '.join(CONVENTIONS)}"
        )
    return convention


def as_spacing(spacing: Spacing, ndim: int) -> np.ndarray:
    """Voxel size per axis as float64 (ndim,); one number means isotropic, None means 1."""
    if spacing is None:
        return np.ones(ndim)
    values = np.asarray(spacing, dtype=np.float64)
    if values.ndim == 0:
        values = np.full(ndim, float(values))
    if values.shape != (ndim,):
        raise DataError(
            f"spacing {tuple(values.ravel().tolist())} has {values.size} values for a {ndim}-D mask"
        )
    if not np.all(np.isfinite(values)) or np.any(values <= 0):
        raise DataError(f"spacing must be positive and finite, got {tuple(values.tolist())}")
    return values


def mask_surface(mask: np.ndarray, connectivity: int = 1) -> np.ndarray:
    """Foreground voxels with at least one background neighbour (outside the array is background)."""
    mask = as_mask(mask, "mask")
    if not 1 <= connectivity <= max(mask.ndim, 1):
        raise ConfigError(
            f"connectivity must be in 1..{mask.ndim} for a {mask.ndim}-D mask, got {connectivity}"
        )
    if connectivity > 1:
        structure = ndi.generate_binary_structure(mask.ndim, connectivity)
        return mask & ~ndi.binary_erosion(mask, structure=structure, border_value=0)
    # Face-connected erosion by array shifts: a voxel is interior when it and both face neighbours on every
    # axis are foreground. Several times faster than ndi.binary_erosion, which handles any structure.
    interior = mask.copy()
    for axis in range(mask.ndim):
        lo = [slice(None)] * mask.ndim
        hi = [slice(None)] * mask.ndim
        lo[axis] = slice(None, -1)
        hi[axis] = slice(1, None)
        interior[tuple(hi)] &= mask[tuple(lo)]
        interior[tuple(lo)] &= mask[tuple(hi)]
        edge = [slice(None)] * mask.ndim
        for end in (0, -1):
            edge[axis] = end
            interior[tuple(edge)] = False
    return mask & ~interior


@dataclass(frozen=True)
class SurfaceDistances:
    """Both directions' surface distances of one mask pair; every surface score is computed from this.

    pred_to_truth[i]: distance from the i-th surface voxel of the prediction (in C order) to the truth's
    surface; truth_to_pred likewise. An empty mask has no surface voxels, so its array is empty, and the other
    mask's distances are all inf (nothing to reach); the scores then follow the empty rule of the module doc.
    diagonal: the image diagonal in physical units (for ``empty_fill="diagonal"``).
    """

    pred_to_truth: np.ndarray
    truth_to_pred: np.ndarray
    diagonal: float

    @property
    def empty(self) -> str:
        """'both', 'pred', 'truth' (the one that is empty) or 'none'."""
        p, t = self.pred_to_truth.size == 0, self.truth_to_pred.size == 0
        return "both" if p and t else "pred" if p else "truth" if t else "none"

    def _fill(self, empty_fill: EmptyFill) -> float | None:
        state = self.empty
        if state == "none":
            return None
        if state == "both":
            return 0.0
        if isinstance(empty_fill, str):
            if empty_fill != "diagonal":
                raise ConfigError(f"empty_fill must be a number or 'diagonal', got {empty_fill!r}")
            return self.diagonal
        return float(empty_fill)

    def hausdorff(
        self,
        percentile: float = 100.0,
        convention: str = DEFAULT_CONVENTION,
        empty_fill: EmptyFill = math.inf,
    ) -> float:
        """(Percentile) Hausdorff distance; at percentile 100 both conventions give the Hausdorff distance."""
        _check_convention(convention)
        if not 0 <= percentile <= 100:
            raise ConfigError(f"percentile must be in [0, 100], got {percentile}")
        fill = self._fill(empty_fill)
        if fill is not None:
            return fill
        a, b = self.pred_to_truth, self.truth_to_pred
        if percentile == 100:
            return float(max(a.max(), b.max()))
        if convention == "medpy":
            return float(np.percentile(np.concatenate([a, b]), percentile))
        return float(max(np.percentile(a, percentile), np.percentile(b, percentile)))

    def hd95(self, convention: str = DEFAULT_CONVENTION, empty_fill: EmptyFill = math.inf) -> float:
        return self.hausdorff(95.0, convention, empty_fill)

    def asd(self, empty_fill: EmptyFill = math.inf) -> float:
        """Average surface distance from the prediction's surface to the truth's (directed)."""
        fill = self._fill(empty_fill)
        return fill if fill is not None else float(self.pred_to_truth.mean())

    def assd(self, empty_fill: EmptyFill = math.inf) -> float:
        """Average symmetric surface distance: the mean of both directions' distances pooled."""
        fill = self._fill(empty_fill)
        if fill is not None:
            return fill
        a, b = self.pred_to_truth, self.truth_to_pred
        return float((a.sum() + b.sum()) / (a.size + b.size))

    def nsd(self, tolerance: float) -> float:
        """Normalised surface Dice at ``tolerance`` (physical units): the share of both surfaces' voxels within
        ``tolerance`` of the other surface (MSD's second metric; here on surface voxels, not surface elements).
        1 when both masks are empty, 0 when one is."""
        state = self.empty
        if state == "both":
            return 1.0
        if state != "none":
            return 0.0
        a, b = self.pred_to_truth, self.truth_to_pred
        return float(((a <= tolerance).sum() + (b <= tolerance).sum()) / (a.size + b.size))

    def score(
        self, name: str, convention: str = DEFAULT_CONVENTION, empty_fill: EmptyFill = math.inf
    ) -> float:
        """One of SURFACE_SCORES by name."""
        if name == "hausdorff":
            return self.hausdorff(100.0, convention, empty_fill)
        if name == "hd95":
            return self.hd95(convention, empty_fill)
        if name == "asd":
            return self.asd(empty_fill)
        if name == "assd":
            return self.assd(empty_fill)
        raise ConfigError(f"unknown surface score {name!r}; known: {', '.join(SURFACE_SCORES)}")


def surface_distances(
    pred: np.ndarray,
    truth: np.ndarray,
    spacing: Spacing = None,
    *,
    connectivity: int = 1,
    method: str = "auto",
) -> SurfaceDistances:
    """Surface distances of one mask pair (1-D to 3-D bool or 0/1 arrays of the same shape); see module doc.

    method: "auto" (the outward search of segkit.metrics.nearest), "edt" (scipy's distance transform, medpy's
    way) or "kdtree"; all exact and equal.
    """
    pred = as_mask(pred, "pred")
    truth = as_mask(truth, "truth")
    check_same_shape(pred, truth)
    if not 1 <= pred.ndim <= 3:
        raise DataError(f"surface distances take 1-D to 3-D masks, got shape {pred.shape}")
    if method not in METHODS:
        raise ConfigError(f"unknown surface distance method {method!r}; known: {', '.join(METHODS)}")
    spacing_arr = as_spacing(spacing, pred.ndim)
    diagonal = float(np.linalg.norm((np.array(pred.shape) - 1) * spacing_arr))
    box = bounding_box(pred | truth)
    none = np.zeros(0)
    if box is None:
        return SurfaceDistances(none, none, diagonal)
    pred_surface = mask_surface(pred[box], connectivity)
    truth_surface = mask_surface(truth[box], connectivity)
    p_flat = np.flatnonzero(pred_surface)
    t_flat = np.flatnonzero(truth_surface)
    if p_flat.size == 0 or t_flat.size == 0:
        # Nothing to reach: the other mask's voxels are infinitely far (the scores then use empty_fill).
        return SurfaceDistances(np.full(p_flat.size, np.inf), np.full(t_flat.size, np.inf), diagonal)
    if method == "edt":
        return SurfaceDistances(
            _edt_distances(pred_surface, truth_surface, spacing_arr),
            _edt_distances(truth_surface, pred_surface, spacing_arr),
            diagonal,
        )
    way = "kdtree" if method == "kdtree" else "search"
    shape = pred_surface.shape
    return SurfaceDistances(
        nearest_distances(p_flat, t_flat, shape, spacing_arr, way),
        nearest_distances(t_flat, p_flat, shape, spacing_arr, way),
        diagonal,
    )


def _edt_distances(from_surface: np.ndarray, to_surface: np.ndarray, spacing: np.ndarray) -> np.ndarray:
    return ndi.distance_transform_edt(~to_surface, sampling=spacing)[from_surface]


# ---------------------------------------------------------------------------------------------- one-call
# scores


def hausdorff(
    pred,
    truth,
    spacing: Spacing = None,
    *,
    percentile: float = 100.0,
    convention: str = DEFAULT_CONVENTION,
    empty_fill: EmptyFill = math.inf,
    connectivity: int = 1,
) -> float:
    """(Percentile) Hausdorff distance of one mask pair; the module doc gives conventions and empty masks."""
    return surface_distances(pred, truth, spacing, connectivity=connectivity).hausdorff(
        percentile, convention, empty_fill
    )


def hd95(
    pred,
    truth,
    spacing: Spacing = None,
    *,
    convention: str = DEFAULT_CONVENTION,
    empty_fill: EmptyFill = math.inf,
    connectivity: int = 1,
) -> float:
    """95th percentile Hausdorff distance of one mask pair; ``convention``: "monai" (default) or "medpy"."""
    return surface_distances(pred, truth, spacing, connectivity=connectivity).hd95(convention, empty_fill)


def average_surface_distance(
    pred, truth, spacing: Spacing = None, *, empty_fill: EmptyFill = math.inf, connectivity: int = 1
) -> float:
    """Average surface distance from the prediction's surface to the truth's (directed; medpy's ``asd``)."""
    return surface_distances(pred, truth, spacing, connectivity=connectivity).asd(empty_fill)


def assd(
    pred, truth, spacing: Spacing = None, *, empty_fill: EmptyFill = math.inf, connectivity: int = 1
) -> float:
    """Average symmetric surface distance of one mask pair (both directions' distances pooled)."""
    return surface_distances(pred, truth, spacing, connectivity=connectivity).assd(empty_fill)


def surface_scores(
    preds,
    truths,
    spacing: Spacing = None,
    *,
    scores: Sequence[str] = SURFACE_SCORES,
    convention: str = DEFAULT_CONVENTION,
    empty_fill: EmptyFill = math.inf,
    connectivity: int = 1,
) -> dict[str, np.ndarray]:
    """Surface scores of masks batched as (N, K, *spatial): {score name: (N, K) array}, distances computed
    once.

    scores: names from SURFACE_SCORES ("hausdorff", "hd95", "asd", "assd").
    """
    preds = as_mask(preds, "pred")
    truths = as_mask(truths, "truth")
    check_same_shape(preds, truths)
    if not 3 <= preds.ndim <= 5:
        raise DataError(f"expected masks shaped (N, K, *spatial) with 1 to 3 spatial axes, got {preds.shape}")
    _check_convention(convention)
    for name in scores:
        if name not in SURFACE_SCORES:
            raise ConfigError(f"unknown surface score {name!r}; known: {', '.join(SURFACE_SCORES)}")
    n, k = preds.shape[:2]
    out = {name: np.empty((n, k)) for name in scores}
    for i in range(n):
        for c in range(k):
            dist = surface_distances(preds[i, c], truths[i, c], spacing, connectivity=connectivity)
            for name in scores:
                out[name][i, c] = dist.score(name, convention, empty_fill)
    return out
