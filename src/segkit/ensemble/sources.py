"""Where each model's probabilities are: the OOF of every fold joined into one view, and the test store.

OOF of model ``m`` is, in order of preference,

- ``<run_dir>/<m>/oof_tta/``: every train id re-predicted by its own fold's checkpoint with TTA (``segkit predict``
  with ``predict.repredict_oof``), when that store is complete: it matches how the test set is predicted;
- the union of ``<run_dir>/<m>/fold<k>/oof/``: each fold's validation ids as training left them.

Readers hand out uint8 memmaps one image at a time; nothing here holds more than one image per model.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from segkit.config import Config
from segkit.errors import DataError
from segkit.probs import MANIFEST, ProbStore

FOLD_DIR = re.compile(r"^fold(\d+)$")


def model_dir(cfg: Config, model: str) -> Path:
    return cfg.run_dir / model


def oof_tta_dir(cfg: Config, model: str) -> Path:
    return model_dir(cfg, model) / "oof_tta"


def test_dir(cfg: Config, model: str) -> Path:
    return model_dir(cfg, model) / "test"


def _check_classes(store: ProbStore, classes: list[str]) -> None:
    if store.classes != list(classes):
        raise DataError(f"{store.folder}: holds classes {store.classes}, the config has {list(classes)}")


class OOFSource:
    """One model's out-of-fold probabilities for every train id, from its fold stores (or its TTA re-prediction)."""

    def __init__(self, cfg: Config, model: str, folds: pd.DataFrame):
        self.model = model
        fold_of = dict(zip(folds["id"], folds["fold"]))
        self.store_of: dict[str, ProbStore] = {}
        tta = oof_tta_dir(cfg, model)
        if ProbStore.is_complete(tta):
            store = ProbStore(tta)
            _check_classes(store, cfg.data.classes)
            self.kind = "oof_tta"
            self.folders = [tta]
            for image_id in store.ids:
                self.store_of[image_id] = store
        else:
            self.kind = "fold oof"
            self.folders = []
            root = model_dir(cfg, model)
            fold_dirs = sorted(p for p in root.glob("fold*") if FOLD_DIR.match(p.name)) if root.is_dir() else []
            for fold_path in fold_dirs:
                k = int(FOLD_DIR.match(fold_path.name).group(1))
                oof = fold_path / "oof"
                if not ProbStore.is_complete(oof):
                    continue  # reported below as missing ids of that fold
                store = ProbStore(oof)
                _check_classes(store, cfg.data.classes)
                self.folders.append(oof)
                for image_id in store.ids:
                    if image_id in fold_of and fold_of[image_id] != k:
                        raise DataError(
                            f"{oof}: id {image_id!r} is in fold {fold_of[image_id]} of {cfg.folds_file}, not fold {k}; "
                            f"the OOF is stale (folds changed): retrain model {model!r}"
                        )
                    self.store_of[image_id] = store
        missing = [i for i in folds["id"] if i not in self.store_of]
        if missing:
            folds_missing = sorted({int(fold_of[i]) for i in missing})
            raise DataError(
                f"{model_dir(cfg, model)}: model {model!r} has no complete OOF for fold(s) {folds_missing} "
                f"({len(missing)} ids, e.g. {missing[0]!r}); run `segkit train` first"
            )

    def __getitem__(self, image_id: str) -> np.ndarray:
        return self.store_of[image_id][image_id]

    def manifests(self) -> list[Path]:
        return [f / MANIFEST for f in self.folders]


class TestSource:
    """One model's test store, checked to cover the competition's test ids."""

    def __init__(self, cfg: Config, model: str, ids: list[str]):
        self.model = model
        folder = test_dir(cfg, model)
        if not ProbStore.is_complete(folder):
            raise DataError(f"{folder}: model {model!r} has no complete test predictions; run `segkit predict` first")
        self.store = ProbStore(folder)
        _check_classes(self.store, cfg.data.classes)
        have = set(self.store.ids)
        missing = [i for i in ids if i not in have]
        if missing:
            raise DataError(f"{folder}: {len(missing)} test ids missing (e.g. {missing[0]!r}); rerun `segkit predict`")

    def __getitem__(self, image_id: str) -> np.ndarray:
        return self.store[image_id]

    def manifests(self) -> list[Path]:
        return [self.store.folder / MANIFEST]


def read_all(sources, image_id: str) -> list[np.ndarray]:
    """Every model's uint8 (K, H, W) for one image, checked to agree in shape."""
    arrays = [s[image_id] for s in sources]
    shape = arrays[0].shape
    for s, a in zip(sources, arrays):
        if a.shape != shape:
            raise DataError(f"id {image_id!r}: model {s.model!r} has shape {a.shape}, model "
                            f"{sources[0].model!r} has {shape}")
    return arrays


def fingerprint(sources) -> list[list]:
    """(path, mtime, size) of every input manifest: a rewritten input store changes the fingerprint."""
    out = []
    for s in sources:
        for m in s.manifests():
            st = m.stat()
            out.append([str(m), st.st_mtime_ns, st.st_size])
    return out
