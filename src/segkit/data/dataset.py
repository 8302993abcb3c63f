"""Torch Dataset over a competition: reads one image (and mask) per item from disk, never the whole set.

Items are dicts: ``image`` float32 (C, H, W) normalised; ``mask`` float32 (K, H, W) when masks exist; ``has_mask``
(1 if any foreground: the target of the auxiliary classification head); or, for a detector, ``objects`` (the boxes
and masks of the image's objects) in place of both; ``id``; ``size`` (H, W) before padding;
``native`` the image's (H, W) as read. Under ``data.resize`` the image and mask are at the working size
(``segkit.data.resize``), and a validation item (``native_mask=True``) also holds ``native_mask``, the mask as read,
which scores are taken against.
Inputs are padded bottom/right to a multiple of the network stride by reflection (what TGS winners did for 101 px
tiles); ``unpad`` crops predictions back to ``size``.
"""

from __future__ import annotations

from typing import Callable

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from segkit.data import instances
from segkit.data.augment import build_augment
from segkit.data.competition import Competition
from segkit.data.normalize import Normalizer
from segkit.data.resize import resize_image, resize_mask, working_size


def pad_to_multiple(arr: np.ndarray, multiple: int) -> np.ndarray:
    """Pad an (H, W[, C]) array at the bottom/right to multiples of ``multiple`` by reflection."""
    h, w = arr.shape[:2]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph == 0 and pw == 0:
        return arr
    if ph >= h or pw >= w:  # reflection needs padding smaller than the image
        mode = cv2.BORDER_REPLICATE
    else:
        mode = cv2.BORDER_REFLECT_101
    out = cv2.copyMakeBorder(arr, 0, ph, 0, pw, mode)
    return out.reshape(h + ph, w + pw, *arr.shape[2:])


def unpad(pred: torch.Tensor | np.ndarray, size: tuple[int, int]):
    """Crop a (..., H', W') prediction back to the original (H, W)."""
    h, w = int(size[0]), int(size[1])
    return pred[..., :h, :w]


class SegDataset(Dataset):
    def __init__(
        self,
        comp: Competition,
        ids: list[str],
        split: str = "train",
        augment: str | None = None,
        crop_size: int | None = None,
        pad_to: int = 32,
        with_mask: bool | None = None,
        mask_reader: Callable[[str], np.ndarray] | None = None,
        normalize: bool = True,
        native_mask: bool = False,
        objects: bool = False,
    ):
        """``split`` picks the image folder (train / test). Masks come from the competition unless ``mask_reader``
        (e.g. pseudo labels for test images) is given; ``with_mask`` defaults to "train split or a reader". With
        ``normalize=False`` images stay as read (in [0, 1]): for exported networks, which normalise themselves
        (``segkit.inference.runtimes``). The reflection padding commutes with a per-channel normalisation, so the
        network sees the same values either way. With ``objects`` (a detector's training set) an item holds the
        objects of the image's instance map, augmented with it (``segkit.data.instances.objects``), not a mask."""
        self.comp = comp
        self.ids = list(ids)
        self.split = split
        self.transform = build_augment(augment, crop_size)
        self.pad_to = pad_to
        self.objects = objects
        if objects:  # the label map rides through the augmentation as a one-channel mask (nearest-neighbour)
            mask_reader = mask_reader or _label_map_reader(comp)
        self.mask_reader = mask_reader or (comp.read_mask if split == "train" else None)
        self.with_mask = (self.mask_reader is not None) if with_mask is None else with_mask
        self.normalize = Normalizer(comp.cfg) if normalize else _as_read
        self.resize = comp.cfg.resize
        self.native_mask = native_mask and self.resize is not None

    def __len__(self) -> int:
        return len(self.ids)

    def working_size(self, index: int) -> tuple[int, int]:
        """(H, W) item ``index``'s image is seen at, from its file's header (nothing decoded)."""
        return working_size(*self.comp.image_size(self.ids[index], self.split), self.resize)

    def __getitem__(self, index: int) -> dict:
        image_id = self.ids[index]
        image = self.comp.read_image(image_id, self.split)
        mask = None
        if self.with_mask:
            mask = self.mask_reader(image_id)
            if mask.shape[1:] != image.shape[:2]:
                raise ValueError(f"id {image_id!r}: mask {mask.shape[1:]} vs image {image.shape[:2]}")
            mask = np.ascontiguousarray(mask.transpose(1, 2, 0))
        native = image.shape[:2]
        if self.resize is not None:
            work = working_size(*native, self.resize)
            image = resize_image(image, work)
            if mask is not None:
                native_mask = mask
                mask = resize_mask(mask, work)
        if self.transform is not None:
            out = self.transform(image=image, mask=mask) if mask is not None else self.transform(image=image)
            image, mask = out["image"], out.get("mask")
            if image.ndim == 2:
                image = image[:, :, None]
        size = image.shape[:2]
        image = pad_to_multiple(self.normalize(image.astype(np.float32)), self.pad_to)
        item = {
            "image": torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))),
            "id": image_id,
            "size": torch.tensor(size),
            "native": torch.tensor(native),
        }
        if mask is not None and self.native_mask:
            item["native_mask"] = torch.from_numpy(np.ascontiguousarray(native_mask.transpose(2, 0, 1))).float()
        if mask is not None and self.objects:
            labels = mask.reshape(size)
            # the stride's padding of the image reflects its content; the objects' masks take zeros there instead
            labels = np.pad(labels, [(0, image.shape[0] - size[0]), (0, image.shape[1] - size[1])])
            boxes, masks = instances.objects(labels)
            item["objects"] = {"boxes": torch.from_numpy(boxes), "masks": torch.from_numpy(masks)}
        elif mask is not None:
            if mask.ndim == 2:
                mask = mask[:, :, None]
            item["has_mask"] = torch.from_numpy(mask.reshape(-1, mask.shape[2]).max(0) > 0).float()
            mask = pad_to_multiple(mask, self.pad_to).reshape(*image.shape[:2], -1)
            item["mask"] = torch.from_numpy(np.ascontiguousarray(mask.transpose(2, 0, 1))).float()
        return item


def _as_read(image: np.ndarray) -> np.ndarray:
    return image


def _label_map_reader(comp: Competition) -> Callable[[str], np.ndarray]:
    """id -> (1, H, W) instance labels in a dtype the augmentations warp (OpenCV has no int32 warps)."""

    def read(image_id: str) -> np.ndarray:
        labels = comp.instance_map(image_id)
        return labels.astype(np.uint16 if labels.max() < 2**16 else np.float32)[None]

    return read


def same_size_batches(comp, ids: list[str], batch_size: int, split: str = "train") -> list[list[int]]:
    """Indices of ``ids`` in batches of at most ``batch_size`` that never mix image sizes (``ids`` ordered by size
    first): for inputs that are not normalised yet, where the zeros ``pad_collate`` pads with would not be the
    normalised zeros the networks were trained with."""
    batches: list[list[int]] = []
    last = None
    for i, image_id in enumerate(ids):
        size = comp.image_size(image_id, split)
        if size != last or len(batches[-1]) == batch_size:
            batches.append([])
        batches[-1].append(i)
        last = size
    return batches


def by_size(comp, ids: list[str], split: str = "train") -> list[str]:
    """``ids`` ordered by image size (stable), so that batches of mixed-size sets hold like sizes and
    ``pad_collate`` pads little: a 256 px image batched with a 1388 px one would cost 30 times its own work.
    Sizes come from the file headers; the order of the ids is kept when they are all one size."""
    sizes = {i: comp.image_size(i, split) for i in ids}
    if len(set(sizes.values())) <= 1:
        return list(ids)
    return sorted(ids, key=lambda i: sizes[i])


def pad_collate(batch: list[dict]) -> dict:
    """Stack items, zero-padding images and masks to the largest size in the batch (validation and test batches
    may mix image sizes; training crops or fixed-size sets never need it)."""
    out: dict = {"id": [b["id"] for b in batch], "size": torch.stack([b["size"] for b in batch]),
                 "native": torch.stack([b.get("native", b["size"]) for b in batch])}
    for key in ("image", "mask", "native_mask"):
        if key in batch[0]:
            tensors = [b[key] for b in batch]
            h, w = max(t.shape[1] for t in tensors), max(t.shape[2] for t in tensors)
            if any(t.shape[1:] != (h, w) for t in tensors):
                tensors = [torch.nn.functional.pad(t, (0, w - t.shape[2], 0, h - t.shape[1])) for t in tensors]
            out[key] = torch.stack(tensors)
    if "has_mask" in batch[0]:
        out["has_mask"] = torch.stack([b["has_mask"] for b in batch])
    if "objects" in batch[0]:  # a detector's targets: a list, one entry per image (each its own count)
        out["objects"] = [b["objects"] for b in batch]
    return out
