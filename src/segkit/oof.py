"""A model's out-of-fold probabilities, read from wherever the layout keeps them, as one store-like view.

A model's OOF is, in order of preference,

- ``<model>/oof_tta/``: every train id re-predicted by its own fold's checkpoints with TTA (``segkit predict``
  with ``predict.repredict_oof``), when that store is complete: it is made like the test predictions;
- the union of ``<model>/fold<k>/oof/``: each fold's validation images as training left them.

Views hand out uint8 memmaps one image at a time and hold nothing else in memory. The ensemble, the tuner's plain
baseline, the ablation, the report and a narrowed ``segkit run`` read OOF through here; ``score_frame`` scores a
view image by image with the competition's metric object.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import pandas as pd

from segkit.artifacts.layout import Layout
from segkit.artifacts.probs import ProbStore, load_image, manifest, mean_uint8
from segkit.compute import pool
from segkit.errors import DataError, SegkitError
from segkit.metrics import CompetitionMetric
from segkit.postprocess.masks import ClassParams, postprocess


class StoreUnion:
    """Several probability stores read as one (the per-fold OOF stores of a model), restricted to ``ids``; an id
    held by two stores is read from the first."""

    def __init__(self, folders: Sequence[Path], ids: Sequence[str]):
        self.folder = Path(folders[0]) if folders else Path()
        self.folders = [Path(f) for f in folders]
        self.stores = [ProbStore(f) for f in self.folders]
        self.where: dict[str, ProbStore] = {}
        for store in self.stores:
            for image_id in store.ids:
                self.where.setdefault(image_id, store)
        missing = [i for i in ids if i not in self.where]
        if missing:
            raise SegkitError(f"{self.folder}: no probabilities for {len(missing)} image(s), e.g. {missing[0]!r}")
        self.ids = list(ids)
        self.classes = self.stores[0].classes if self.stores else []

    def __getitem__(self, image_id: str) -> np.ndarray:
        return self.where[image_id][image_id]

    def markers(self) -> list[Path]:
        """The completion markers of the stores read (what an input fingerprint records)."""
        return [manifest(f) for f in self.folders]


class MeanStore:
    """The plain mean of several views (the ``mean`` ensemble's arithmetic), read like a store."""

    def __init__(self, stores: Sequence[StoreUnion]):
        self.stores = list(stores)
        self.folder = self.stores[0].folder
        self.ids = self.stores[0].ids
        self.classes = self.stores[0].classes

    def __getitem__(self, image_id: str) -> np.ndarray:
        return mean_uint8([s[image_id] for s in self.stores])


def fold_oof(layout: Layout, model: str, folds: Sequence[int], ids: Sequence[str]) -> StoreUnion:
    """The training OOF of ``folds`` (no TTA), restricted to ``ids``."""
    return StoreUnion([layout.fold(model, k).oof for k in folds], ids)


def tta_oof(layout: Layout, model: str, ids: Sequence[str]) -> StoreUnion:
    """The TTA re-prediction of the OOF images, restricted to ``ids``; an error if it is incomplete."""
    folder = layout.model(model).oof_tta
    if not ProbStore.is_complete(folder):
        raise SegkitError(f"{folder}: missing; predict.repredict_oof: true makes it (`segkit predict`)")
    return StoreUnion([folder], ids)


class ModelOOF(StoreUnion):
    """One model's OOF for every id of the fold table: its TTA re-prediction when complete (``tta=True``), else
    its fold stores, each checked to hold its own fold's ids (a fold file changed since training is an error)."""

    def __init__(self, layout: Layout, model: str, folds: pd.DataFrame, classes: list[str], tta: bool = True):
        self.model = model
        paths = layout.model(model)
        if tta and ProbStore.is_complete(paths.oof_tta):
            self.kind, parts = "oof_tta", [(None, paths.oof_tta)]
        else:  # an incomplete fold is reported below as the missing ids of that fold
            self.kind = "fold oof"
            parts = [(k, f.oof) for k, f in paths.folds() if ProbStore.is_complete(f.oof)]
        super().__init__([folder for _, folder in parts], ids=())  # every id is checked below, with its fold
        fold_of = dict(zip(folds["id"], folds["fold"]))
        for (k, folder), store in zip(parts, self.stores):
            if store.classes != list(classes):
                raise DataError(f"{folder}: holds classes {store.classes}, the config has {list(classes)}")
            stray = [i for i in store.ids if i in fold_of and fold_of[i] != k] if k is not None else []
            if stray:
                raise DataError(f"{folder}: id {stray[0]!r} is in fold {fold_of[stray[0]]} of {layout.folds_file}, "
                                f"not fold {k}; the OOF is stale (folds changed): retrain model {model!r}")
        self.ids = list(folds["id"])
        missing = [i for i in self.ids if i not in self.where]
        if missing:
            folds_missing = sorted({int(fold_of[i]) for i in missing})
            raise DataError(f"{paths.dir}: model {model!r} has no complete OOF for fold(s) {folds_missing} "
                            f"({len(missing)} ids, e.g. {missing[0]!r}); run `segkit train` first")


class PartStore:
    """The images of ``ids`` in a store folder that may still be being filled (one fold's part of a store)."""

    def __init__(self, folder: Path, ids: Sequence[str]):
        self.folder, self.ids = Path(folder), list(ids)

    def __getitem__(self, image_id: str) -> np.ndarray:
        return load_image(self.folder, image_id)


def score_frame(view, read_truth: Callable[[str], np.ndarray], metric: CompetitionMetric,
                params: Optional[list[ClassParams]] = None, exclusive: bool = False,
                workers: int = 1) -> pd.DataFrame:
    """id, score, truth_px, pred_px of every image of ``view`` (post-processed with ``params``, default p > 0.5),
    one image in memory at a time (per worker process: ``segkit.compute.pool``)."""
    ids = list(view.ids)

    def one(i: int) -> tuple:
        probs = np.asarray(view[ids[i]])
        masks = postprocess(probs, params or [ClassParams()] * probs.shape[0], exclusive=exclusive).view(bool)
        truth = np.asarray(read_truth(ids[i])).astype(bool)
        return ids[i], float(metric(masks, truth)), int(np.count_nonzero(truth)), int(np.count_nonzero(masks))

    return pd.DataFrame(pool.map_indices(one, len(ids), workers, "scoring OOF"),
                        columns=["id", "score", "truth_px", "pred_px"])


__all__ = ["MeanStore", "ModelOOF", "PartStore", "StoreUnion", "fold_oof", "score_frame", "tta_oof"]
