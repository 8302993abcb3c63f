"""Decoders of instances: an image's per-pixel probabilities (``mask`` and, when trained, ``contour``; the
channels of ``data.instances.targets``) -> an int32 label map, 0 the background and 1..N the objects.

- ``components``: the connected components (8-neighbour) of ``P(mask) > mask``: the baseline, which merges every
  pair of touching objects;
- ``watershed``: markers where ``P(mask) - P(contour) > seed`` (the objects' interiors, apart even where objects
  touch), their connected components of at least ``min_seed`` px; a watershed from them over ``-(P(mask) -
  P(contour))`` floods ``P(mask) > mask``, so each object grows from its own seed until it meets a neighbour.
  Parts of the mask no seed reaches stay background.

Then, either way: objects smaller than ``min_size`` px are dropped, and with ``dilate`` > 0 the objects grow back by
that many px into background pixels no other object claims (the contour band a high threshold shaved off).
``segkit tune`` chooses every parameter on the OOF predictions for object AP (``segkit.stages.tune.instances``).
Decoding is per image: nothing is held beyond the image.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any, Callable, Mapping

import numpy as np
from scipy import ndimage

from segkit.errors import ConfigError
from segkit.registry import Registry

EIGHT = np.ones((3, 3), dtype=bool)


@dataclass(frozen=True)
class DecodeParams:
    decoder: str = "watershed"
    mask: float = 0.5  # a pixel belongs to an object where P(mask) > this
    seed: float = 0.5  # watershed: the seeds are where P(mask) - P(contour) > this
    min_seed: int = 0  # px: smaller seeds are dropped (noise in an interior would split the object)
    min_size: int = 0  # px: smaller objects are dropped
    dilate: int = 0  # px the objects grow back into unclaimed background

    def to_json(self) -> dict:
        return asdict(self)

    def replace(self, **changes: Any) -> "DecodeParams":
        return replace(self, **changes)

    @classmethod
    def from_json(cls, saved: Mapping[str, Any], where: str = "instances") -> "DecodeParams":
        unknown = set(saved) - set(cls.__dataclass_fields__)
        if unknown:
            raise ConfigError(f"{where}: unknown decoder parameter(s) {sorted(unknown)}")
        params = cls(**saved)
        DECODERS.get(params.decoder, f"{where}.decoder")
        return params

    def describe(self) -> str:
        parts = [self.decoder, f"mask p>{self.mask:.2f}"]
        if self.decoder == "watershed":
            parts.append(f"seeds p-c>{self.seed:.2f}" + (f" of {self.min_seed}+ px" if self.min_seed else ""))
        if self.min_size:
            parts.append(f"objects of {self.min_size}+ px")
        if self.dilate:
            parts.append(f"grown {self.dilate} px")
        return ", ".join(parts)


Decoder = Callable[[np.ndarray, DecodeParams], np.ndarray]
DECODERS: Registry[Decoder] = Registry("instance decoder")


def _float(probs: np.ndarray) -> np.ndarray:
    probs = np.asarray(probs)
    return probs.astype(np.float32) / 255.0 if probs.dtype == np.uint8 else probs.astype(np.float32, copy=False)


@DECODERS.register("components")
def components(probs: np.ndarray, params: DecodeParams) -> np.ndarray:
    return ndimage.label(_float(probs)[0] > params.mask, structure=EIGHT)[0]


@DECODERS.register("watershed")
def watershed(probs: np.ndarray, params: DecodeParams) -> np.ndarray:
    from skimage.segmentation import watershed as flood  # here: only the watershed needs skimage (slow import)

    p = _float(probs)
    if p.shape[0] < 2:
        raise ConfigError("the watershed decoder needs a contour channel: data.instances.targets [mask, contour]")
    mask = p[0] > params.mask
    interior = p[0] - p[1]
    seeds, n = ndimage.label((interior > params.seed) & mask, structure=EIGHT)
    if n and params.min_seed:
        sizes = np.bincount(seeds.ravel())
        keep = sizes >= params.min_seed
        keep[0] = False
        seeds = np.where(keep[seeds], seeds, 0)
    if not seeds.any():
        return np.zeros(mask.shape, np.int32)
    return flood(-interior, markers=seeds, mask=mask).astype(np.int32)


def finish(labels: np.ndarray, params: DecodeParams) -> np.ndarray:
    """Drop objects under ``min_size``, grow by ``dilate``, and number the objects 1..N in order."""
    if params.min_size and labels.any():
        sizes = np.bincount(labels.ravel())
        small = sizes < params.min_size
        small[0] = False
        labels = np.where(small[labels], 0, labels)
    if params.dilate and labels.any():
        from skimage.segmentation import expand_labels  # here: as above

        labels = expand_labels(labels, distance=params.dilate)
    ids = np.unique(labels)
    if ids[-1] != len(ids) - 1:  # gaps: renumber so that N is the object count
        lookup = np.zeros(int(ids[-1]) + 1, np.int32)
        lookup[ids] = np.arange(len(ids), dtype=np.int32)
        labels = lookup[labels]
    return labels.astype(np.int32, copy=False)


def decode(probs: np.ndarray, params: DecodeParams) -> np.ndarray:
    """int32 (H, W) labels of one image's (K, H, W) probabilities (uint8 of a store, or floats in [0, 1])."""
    return finish(DECODERS.get(params.decoder, "instances.decoder")(probs, params), params)


__all__ = ["DECODERS", "DecodeParams", "components", "decode", "finish", "watershed"]
