"""The ensemble's inputs, per model: its OOF over every train id (``segkit.oof.ModelOOF``: the TTA re-prediction
when complete, else the fold stores) and its test store. Readers hand out uint8 memmaps one image at a time;
nothing here holds more than one image per model."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from segkit.artifacts.layout import Layout
from segkit.artifacts.probs import ProbStore, manifest
from segkit.errors import DataError


class TestSource:
    """One model's test store, checked to cover the competition's test ids."""

    kind = "test"

    def __init__(self, layout: Layout, model: str, ids: list[str], classes: list[str]):
        self.model = model
        folder = layout.model(model).test
        if not ProbStore.is_complete(folder):
            raise DataError(f"{folder}: model {model!r} has no complete test predictions; run `segkit predict` first")
        self.store = ProbStore(folder)
        if self.store.classes != list(classes):
            raise DataError(f"{folder}: holds classes {self.store.classes}, the config has {list(classes)}")
        have = set(self.store.ids)
        missing = [i for i in ids if i not in have]
        if missing:
            raise DataError(f"{folder}: {len(missing)} test ids missing (e.g. {missing[0]!r}); rerun `segkit predict`")

    def __getitem__(self, image_id: str) -> np.ndarray:
        return self.store[image_id]

    def markers(self) -> list[Path]:
        return [manifest(self.store.folder)]


def read_all(sources, image_id: str) -> list[np.ndarray]:
    """Every model's uint8 (K, H, W) for one image, checked to agree in shape."""
    arrays = [s[image_id] for s in sources]
    shape = arrays[0].shape
    for s, a in zip(sources, arrays):
        if a.shape != shape:
            raise DataError(f"id {image_id!r}: model {s.model!r} has shape {a.shape}, model "
                            f"{sources[0].model!r} has {shape}")
    return arrays
