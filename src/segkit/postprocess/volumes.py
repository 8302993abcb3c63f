"""Clean-up of whole volumes, after the slice-wise post-processing: what 2D rules cannot see, a blob of a few
voxels floating slices away from the organ, or a second body where anatomy has one.

Per class: keep only the largest connected component in 3D (``largest``), or drop the components smaller than
``min_volume`` voxels; and the probability threshold of the class's volume outputs (``threshold``). Connectivity
is full (26 neighbours): touching diagonally is touching. ``segkit tune`` chooses each class's rule and threshold
on the OOF volumes by per-volume Dice (segkit.stages.tune.volumes), keeps them only where they gain, and
``segkit evaluate`` / ``segkit submit`` apply them to every volume they write or score.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np
from scipy import ndimage

from segkit.components import bounding_box, label_counts
from segkit.data.volumes import VolumeSet
from segkit.postprocess.masks import ClassParams, params_list, postprocess

FULL = np.ones((3, 3, 3), dtype=bool)


@dataclass(frozen=True)
class VolumeParams:
    largest: bool = False
    min_volume: int = 0
    # The class's probability threshold for whatever is made of whole volumes (label volumes, the rows of a
    # volume's slices, per-volume scores), chosen by per-volume Dice; None: the slice-wise search's.
    threshold: Optional[float] = None

    @property
    def active(self) -> bool:
        """Whether the 3D component rule removes anything."""
        return self.largest or self.min_volume > 0

    @property
    def changes(self) -> bool:
        """Whether a volume's masks differ from its slices' slice-wise post-processing."""
        return self.active or self.threshold is not None

    def describe(self) -> str:
        rule = "largest 3D component only" if self.largest else \
            f"3D components of at least {self.min_volume} voxels" if self.min_volume else "no 3D clean-up"
        return rule if self.threshold is None else f"p>{self.threshold:.2f}, {rule}"

    def to_json(self) -> dict:
        return asdict(self)


def volume_params(saved: Mapping[str, Any] | None, classes: Sequence[str]) -> list[VolumeParams]:
    """Each class's rule from tune.json's ``volume_cleanup.classes`` (none where it holds no rule)."""
    saved = saved or {}
    return [VolumeParams(**saved[c]) if c in saved else VolumeParams() for c in classes]


def clean_class(mask: np.ndarray, params: VolumeParams, out: Optional[np.ndarray] = None) -> np.ndarray:
    """One class's (X, Y, Z) 0/1 mask after its rule, into ``out`` when given. Labelled inside the foreground's
    bounding box only: the components are the same (outside it is background) and numbered in the same order, and
    a label volume of a whole 1024 x 1024 x 512 slab would be 2 GB of int32."""
    if out is None:
        out = mask.copy()
    else:
        out[...] = mask
    if not params.active:
        return out
    box = bounding_box(mask)
    if box is None:
        return out
    labels, n = label_box(mask, box)
    if n <= 1 and not params.min_volume:
        return out
    out[box] = kept_components(label_counts(labels, n + 1), params)[labels]
    return out


def label_box(mask: np.ndarray, box: tuple[slice, ...]) -> tuple[np.ndarray, int]:
    """The 26-connected components of the mask inside ``box`` (which holds all its foreground)."""
    return ndimage.label(mask[box], structure=FULL)


def kept_components(sizes: np.ndarray, params: VolumeParams) -> np.ndarray:
    """Which labels survive the rule, from every label's voxel count (``sizes[0]``: the background): a bool per
    label, False for the background."""
    keep = np.zeros(len(sizes), dtype=bool)
    if len(sizes) < 2:
        return keep
    if params.largest:
        keep[1 + int(np.argmax(sizes[1:]))] = True
    else:
        keep[1:] = sizes[1:] >= params.min_volume
    return keep


def clean_volume(masks: np.ndarray, params: Sequence[VolumeParams]) -> np.ndarray:
    """(K, X, Y, Z) 0/1 masks, each class after its rule (a new array where any rule is active)."""
    if not any(p.active for p in params):
        return masks
    out = np.empty_like(masks)
    for k in range(masks.shape[0]):
        clean_class(masks[k], params[k], out[k])
    return out


def with_thresholds(params: Sequence[ClassParams], volume: Sequence[VolumeParams]) -> list[ClassParams]:
    """The slice-wise parameters with each class's volume threshold, where the volume step chose one."""
    if not volume:
        return list(params)
    return [p if v.threshold is None else p.replace(threshold=v.threshold) for p, v in zip(params, volume)]


def case_masks(volumes: VolumeSet, case: str, probs_of: Callable[[str], np.ndarray], params_of: Callable[[str], Any],
               exclusive: bool, volume: Sequence[VolumeParams] = ()) -> np.ndarray:
    """(K, X, Y, Z) 0/1 masks of a case: each slice's probabilities post-processed with ``params_of(slice id)`` (its
    thresholds replaced by ``volume``'s, where set), as the submission makes them, and stacked back into the
    volume (not yet cleaned in 3D)."""
    return fill_case(volumes, case, lambda i: postprocess(
        np.asarray(probs_of(i)), with_thresholds(params_list(params_of(i)), volume), exclusive=exclusive))


def case_truth(volumes: VolumeSet, case: str, read_mask: Callable[[str], np.ndarray]) -> np.ndarray:
    """(K, X, Y, Z) 0/1 truth of a labelled case, from its slices' masks."""
    return fill_case(volumes, case, read_mask)


def fill_case(volumes: VolumeSet, case: str, slice_of: Callable[[str], np.ndarray]) -> np.ndarray:
    """A case's (K, X, Y, Z) uint8 volume from its slices' (K, H, W) arrays, written into place one slice at a
    time: as ``segkit.data.volumes.assemble`` stacks them, without a list of every slice beside the volume."""
    order = volumes.slices_of(case)
    out = stacked = None
    for index, slice_id in enumerate(order):
        part = np.asarray(slice_of(slice_id))
        if out is None:
            dims = list(part.shape[1:])
            dims.insert(volumes.axis, len(order))
            out = np.empty((part.shape[0], *dims), np.uint8)
            stacked = np.moveaxis(out, 1 + volumes.axis, 1)  # (K, slices, H, W): a view of out
        stacked[:, index] = part
    return out
