"""The competition data layer: reading a competition's files, augmentations, and the streaming Dataset."""

from segkit.data.augment import AUGMENTS, build_augment
from segkit.data.competition import Competition, SampleRow, read_csv
from segkit.data.dataset import SegDataset, by_size, pad_collate, pad_to_multiple, same_size_batches, unpad

__all__ = [
    "AUGMENTS", "Competition", "SampleRow", "SegDataset", "build_augment", "by_size", "pad_collate", "pad_to_multiple",
    "read_csv", "same_size_batches", "unpad",
]
