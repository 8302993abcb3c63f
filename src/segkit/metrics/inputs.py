"""Turning what callers pass (bool, 0/1 integers, probabilities) into the bool masks the scores count on."""

from __future__ import annotations

import numpy as np

from segkit.errors import DataError


def as_mask(x, name: str, threshold: float | None = None) -> np.ndarray:
    """A bool array: bool as is, integers as ``x != 0``, floats as ``x >= threshold`` (threshold required).

    ``>=`` matches ``smp.metrics.get_stats``; uint8-quantized probabilities must be thresholded by the caller
    (or passed to the functions that take probabilities) since 0/1 integers and 0..255 integers look alike.
    """
    arr = np.asarray(x)
    if arr.dtype == np.bool_:
        if threshold is not None:
            raise DataError(f"{name} is already a bool mask; threshold={threshold} makes no sense for it")
        return arr
    if np.issubdtype(arr.dtype, np.floating):
        if threshold is None:
            raise DataError(f"{name} holds floats ({arr.dtype}); pass threshold= to binarize it")
        return arr >= arr.dtype.type(threshold)
    if np.issubdtype(arr.dtype, np.integer):
        return arr >= threshold if threshold is not None else arr != 0
    raise DataError(f"{name} must be a bool, integer or float array, got dtype {arr.dtype}")


def check_same_shape(pred: np.ndarray, truth: np.ndarray) -> None:
    if pred.shape != truth.shape:
        raise DataError(f"pred shape {pred.shape} differs from truth shape {truth.shape}")


def check_batch(pred: np.ndarray, truth: np.ndarray, min_spatial: int = 1, max_spatial: int = 3) -> None:
    """Masks batched as (N, K, *spatial)."""
    check_same_shape(pred, truth)
    spatial = pred.ndim - 2
    if not min_spatial <= spatial <= max_spatial:
        raise DataError(
            f"expected masks shaped (N, K, *spatial) with {min_spatial} to {max_spatial} spatial axes, "
            f"got shape {pred.shape}"
        )
