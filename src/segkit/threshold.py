"""The pipeline's one binarisation rule: a pixel belongs to a class when its probability is strictly above the
threshold, **p > t**.

Validation during training, the ensemble's CV yardstick (t = 0.5) and its threshold sweeps, majority voting,
pseudo-labels, tuning and the submission all binarise here, so a threshold means the same in every stage.

On the stores' uint8 values q = round(255 p) the rule is q > ``uint8_cut(t)``, exactly ``q / 255 > t``. At the
yardstick 0.5 that is q >= 128 (127/255 < 0.5 < 128/255), the same as p >= 0.5 would give; the strict and the
non-strict rule differ only where a threshold falls exactly on a stored level (0.2 = 51/255, 0.4, 0.6, 0.8).

``segkit.metrics`` is a library and keeps smp's convention for the functions that take probabilities and a
threshold (p >= t); when the pipeline sweeps thresholds through them it passes ``sweep_level(t)``, the threshold
at which p >= t' picks exactly the stored levels above t.
"""

from __future__ import annotations

import math
from typing import Sequence, Union

import numpy as np

Threshold = Union[float, Sequence[float], np.ndarray]
YARDSTICK = 0.5  # the untuned threshold every stage reports its first score at


def uint8_cut(threshold: float) -> int:
    """The integer c with ``q > c`` <=> ``q / 255 > threshold`` for uint8 q (the epsilon absorbs float error such
    as 0.6 * 255 = 152.999...)."""
    return int(math.floor(float(threshold) * 255.0 + 1e-6))


def binarize(prob, threshold: Threshold = YARDSTICK) -> np.ndarray:
    """uint8 0/1 mask of ``prob > threshold``: float probabilities or the stores' uint8 levels; ``threshold`` one
    number, or one per class for (K, ...) arrays."""
    prob = np.asarray(prob)
    cuts = np.asarray(threshold, dtype=np.float64)
    if prob.dtype == np.uint8:
        cuts = np.vectorize(uint8_cut, otypes=[np.int64])(cuts) if cuts.ndim else np.int64(uint8_cut(cuts))
    elif np.issubdtype(prob.dtype, np.floating):
        cuts = cuts.astype(prob.dtype)
    if cuts.ndim:
        cuts = cuts.reshape((-1,) + (1,) * (prob.ndim - 1))
    return (prob > cuts).view(np.uint8)


def below(prob, threshold: float) -> np.ndarray:
    """bool mask of ``prob < threshold`` (the other side of a confidence band): on uint8 levels the integer test
    q < 255 t, exactly, where comparing dequantised floats would misjudge the levels that are the threshold."""
    prob = np.asarray(prob)
    if prob.dtype == np.uint8:
        return prob < math.ceil(float(threshold) * 255.0 - 1e-6)
    return prob < prob.dtype.type(threshold) if np.issubdtype(prob.dtype, np.floating) else prob < threshold


def count_above(prob, threshold: float) -> int:
    """How many values of ``prob`` are above ``threshold`` (the rule of ``binarize``)."""
    prob = np.asarray(prob)
    cut = uint8_cut(threshold) if prob.dtype == np.uint8 else threshold
    return int(np.count_nonzero(prob > cut))


def sweep_level(threshold: float) -> float:
    """The threshold t' with ``dequantize(q) >= t'`` <=> ``q > uint8_cut(threshold)`` for every uint8 q: the
    stored level just above the cut, as float32 computes it (``segkit.artifacts.probs.dequantize``)."""
    cut = uint8_cut(threshold)
    if cut >= 255:
        return float(np.nextafter(np.float32(1.0), np.float32(2.0)))  # nothing is above the top level
    return float(np.float32(cut + 1) * np.float32(1.0 / 255.0))


__all__ = ["YARDSTICK", "below", "binarize", "count_above", "sweep_level", "uint8_cut"]
