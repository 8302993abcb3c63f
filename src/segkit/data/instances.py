"""Instance competitions: each object of an image is a mask of its own (DSB 2018's nuclei, Airbus's ships).

Objects come from instance label maps (a folder of 16-bit PNG/TIF images named like the images, 0 the background
and every other value one object) or from a per-object RLE csv (one row per object; an image without objects has
one row with an empty mask). Objects of a csv that share pixels are refused, naming the image and both rows,
unless ``data.instances.overlaps: later_wins`` (the rule where a competition has one): the later row takes the
shared pixels, as in DSB's label maps.

The network does not learn label maps; it learns per-pixel targets that a decoder turns back into objects
(``segkit.postprocess.instances``): ``mask``, the union of the objects, and ``contour``, the band of each object
within ``data.instances.contour_width`` px of a pixel that is not its own (the background or a touching object).
``mask - contour`` is then every object's interior, apart from its neighbours even where they touch: the seeds of
a watershed (the DSB winners' masks + contours). Targets are made from the map before augmentation, so crops and
warps move them with nearest-neighbour interpolation, like any mask.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from scipy import ndimage

from segkit.config.schema import InstanceSpec
from segkit.data import imageio, rle
from segkit.errors import DataError


def read_label_map(path: Path) -> np.ndarray:
    """int32 (H, W) instance labels of a label image: 0 the background, every other value one object."""
    arr = imageio.read_raw(Path(path))
    if arr.ndim == 3:
        if not (arr == arr[:, :, :1]).all():
            raise DataError(f"{path}: an instance label map has one channel; this one has {arr.shape[2]} that differ")
        arr = arr[:, :, 0]
    if arr.dtype.kind == "f":
        if not np.array_equal(arr, np.round(arr)):
            raise DataError(f"{path}: label value {arr[arr != np.round(arr)][0]} is not an object id (whole numbers)")
    elif arr.dtype.kind not in "ui":
        raise DataError(f"{path}: an instance label map holds integers, not {arr.dtype}")
    if arr.min() < 0:
        raise DataError(f"{path}: label value {arr.min()} is not an object id (0 = background, 1.. objects)")
    return arr.astype(np.int32)


def objects_from_rows(rows: Sequence[tuple[str, str]], shape: tuple[int, int], order: str, relative: bool,
                      overlaps: str, image_id: str) -> np.ndarray:
    """int32 (H, W) labels of one image's csv rows ``(rle, where)``, object n the n-th non-empty row."""
    labels = np.zeros(shape, np.int32)
    owners: list[str] = []
    for text, where in rows:
        if not isinstance(text, str) or not text.strip():
            continue  # the row of an image without objects
        mask = rle.decode(text, shape, order=order, relative=relative, where=where).astype(bool)
        if not mask.any():
            raise DataError(f"{where}: an empty object (zero pixels) of image {image_id!r}")
        owners.append(where)
        taken = labels[mask]
        if overlaps == "error" and taken.any():
            other = int(taken[taken > 0][0])
            raise DataError(f"{where}: this object of image {image_id!r} overlaps the one of {owners[other - 1]} "
                            f"({int((taken > 0).sum())} px); objects may not overlap (data.instances.overlaps)")
        labels[mask] = len(owners)
    return labels


def targets(labels: np.ndarray, spec: InstanceSpec) -> np.ndarray:
    """uint8 (K, H, W) 0/1 per-pixel targets of an instance map, in the order of ``spec.targets``."""
    out = []
    objects = labels > 0
    for name in spec.targets:
        if name == "mask":
            out.append(objects)
        else:
            out.append(contour(labels, spec.contour_width))
    return np.stack(out).astype(np.uint8)


def contour(labels: np.ndarray, width: int) -> np.ndarray:
    """bool (H, W): object pixels within ``width`` px (a (2 width + 1)^2 square) of a pixel with another label.
    The image's edge is not a border: a nucleus cut by the frame keeps its interior up to it."""
    size = 2 * width + 1
    high = ndimage.maximum_filter(labels, size=size, mode="nearest")
    low = ndimage.minimum_filter(labels, size=size, mode="nearest")
    return (labels > 0) & ((high != labels) | (low != labels))


def objects(labels: np.ndarray, min_area: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """The objects of a label map as a detector's targets: float32 (N, 4) boxes (x0, y0, x1, y1, pixel edges) and
    uint8 (N, H, W) masks. Each connected part of one label is an object of its own (8-neighbour): a warp that
    reflects at the border copies objects with their labels, and those copies are other objects. Parts under
    ``min_area`` px (slivers of objects a crop cut) are dropped."""
    from skimage.measure import label as connected  # here: skimage is a slow import, only detectors need this

    parts = connected(np.asarray(labels), background=0, connectivity=2)
    boxes, masks = [], []
    for n, where in enumerate(ndimage.find_objects(parts), start=1):
        if where is None:
            continue
        mask = parts == n
        if mask[where].sum() < min_area:
            continue
        boxes.append([where[1].start, where[0].start, where[1].stop, where[0].stop])
        masks.append(mask)
    if not boxes:
        return np.zeros((0, 4), np.float32), np.zeros((0, *labels.shape), np.uint8)
    return np.asarray(boxes, np.float32), np.stack(masks).astype(np.uint8)


__all__ = ["contour", "objects", "objects_from_rows", "read_label_map", "targets"]
