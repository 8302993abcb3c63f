"""Where a 3D network's training patches come from: random corners in a volume, a share of them forced onto
foreground.

A structure that fills a few percent of a volume (the left atrium: about 8 % of an LA 2018 MRI; the hippocampus far
less of a head) is missed by most uniformly random patches, and a network trained on them learns mostly background.
nnU-Net forces a third of each batch's patches onto foreground: it picks a foreground voxel (of a class chosen at
random among those present, so a rare class is not drowned by a common one) and centres the patch on it, shifted
back inside the volume. The rest are uniform. ``PatchSampler`` does the same, from the foreground voxels a case's
label volume lists once (``foreground_voxels``), so sampling a patch costs no pass over the volume.

A volume smaller than the patch along an axis gets corner 0 there; the dataset pads it to the patch (and says so
once): the corner is then the volume's own origin, and the patch covers it whole.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

FOREGROUND_SHARE = 1 / 3  # nnU-Net's oversample_foreground_percent
MAX_VOXELS_PER_CLASS = 10_000  # a sample of each class's voxels is enough to centre patches on it


def foreground_voxels(labels: np.ndarray, seed: int = 0, most: int = MAX_VOXELS_PER_CLASS) -> dict[int, np.ndarray]:
    """{class value: (n, 3) voxel coordinates} of each foreground class (every value above 0) in a label volume, at
    most ``most`` of each, drawn at random: what ``PatchSampler`` centres foreground patches on."""
    rng = np.random.default_rng(seed)
    out = {}
    for value in np.unique(labels):
        if value == 0:
            continue
        where = np.argwhere(labels == value)
        if len(where) > most:
            where = where[rng.choice(len(where), most, replace=False)]
        out[int(value)] = where
    return out


@dataclass(frozen=True)
class Patch:
    corner: tuple[int, ...]  # the first voxel along each axis (0 where the volume is smaller than the patch)
    forced: bool  # placed on a foreground voxel


class PatchSampler:
    """Patch corners in a volume of ``shape`` for patches of ``patch``; ``sample(rng, forced)`` places one on a
    foreground voxel when ``forced`` and the case has any, uniformly otherwise. ``batch(rng, n)`` forces the last
    ``round(n * share)`` of n (at least one in a batch of two or more, as nnU-Net does)."""

    def __init__(self, shape: Sequence[int], patch: Sequence[int], foreground: Optional[dict[int, np.ndarray]] = None,
                 share: float = FOREGROUND_SHARE):
        if len(shape) != len(patch):
            raise ValueError(f"patch {tuple(patch)} and volume {tuple(shape)} differ in their number of axes")
        if not 0 <= share <= 1:
            raise ValueError(f"foreground share must be in [0, 1], got {share}")
        self.shape = tuple(int(s) for s in shape)
        self.patch = tuple(int(p) for p in patch)
        self.foreground = {k: v for k, v in (foreground or {}).items() if len(v)}
        self.share = share
        # the last corner along each axis that keeps the patch inside (0 where the volume is smaller)
        self.last = tuple(max(s - p, 0) for s, p in zip(self.shape, self.patch))

    def sample(self, rng: np.random.Generator, forced: bool = False) -> Patch:
        if forced and self.foreground:
            classes = sorted(self.foreground)
            voxels = self.foreground[classes[rng.integers(len(classes))]]
            centre = voxels[rng.integers(len(voxels))]
            # centred on the voxel, then shifted back inside the volume: the voxel stays in the patch
            corner = tuple(int(min(max(c - p // 2, 0), last)) for c, p, last in zip(centre, self.patch, self.last))
            return Patch(corner, True)
        return Patch(tuple(int(rng.integers(last + 1)) for last in self.last), False)

    def batch(self, rng: np.random.Generator, n: int) -> list[Patch]:
        forced = round(n * self.share)
        if n > 1 and self.share > 0:
            forced = max(forced, 1)
        return [self.sample(rng, forced=i >= n - forced) for i in range(n)]


__all__ = ["FOREGROUND_SHARE", "Patch", "PatchSampler", "foreground_voxels"]
