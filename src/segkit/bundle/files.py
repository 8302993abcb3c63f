"""An offline bundle's own layout and manifest: what ``segkit package`` writes and a bundle's ``infer.py`` reads.

::

    <bundle>/
      bundle.json          the manifest (written last: a folder without it is no bundle)
      config.yaml          the experiment's config, frozen: every key, the budget applied
      tune.json            the tuned post-processing
      ensemble/            choice.json and state.json of the final ensemble (method, exact test-time state)
      models/<model>/fold<k>/<file>   the checkpoints' weights (<name>.safetensors, eager) or the exports of
                           `segkit export` (+ their .json)
      extra.csv            data.extra_csv, when the experiment has one (per-image columns a stacker may read)
      packages.json        what inference needs (the packages it imports and theirs), with the range of versions
                           of each that serves and the wheel that carries it where the target notebook lacks it
      wheels/              those wheels and segkit's own
      install.py           installs what the notebook lacks beside its own packages (segkit.bundle.install)
      infer.py             the entry point: python infer.py --test DIR --sample CSV --out CSV [--time-budget 8h]
      notebook.ipynb       a notebook that calls install.py and infer.py

The manifest lists, per model in the order a time budget keeps them (heaviest OOF weight first), its weight and
the files of each fold, and the sha256 of every model file (checked before any prediction).
This module owns the bundle's inner layout (as ``segkit.artifacts.probs`` owns a store's), the
offline work folder inference fills, and which files of the source tree segkit's own wheel is built from.
Loading a bundle reads only JSON, YAML (``safe_load``) and the model files (safetensors, ONNX graphs; a TorchScript
file is a program, so a bundle of those is only as safe as its maker).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from segkit.bundle.install import MANIFEST, PACKAGES, WHEELS
from segkit.errors import DataError
from segkit.models.checkpoint import WEIGHTS_SUFFIX

FORMAT = "segkit-bundle"
VERSION = 2  # 2: weights as safetensors, the files' hashes, packages.json and install.py
CONFIG = "config.yaml"
TUNE = "tune.json"
CHOICE = "ensemble/choice.json"
STATE = "ensemble/state.json"
EXTRA = "extra.csv"
INSTALL = "install.py"
INFER = "infer.py"
NOTEBOOK = "notebook.ipynb"


MODELS = "models"


def model_file(model: str, k: int, name: str) -> str:
    """A fold's model file inside the bundle (relative)."""
    return f"{MODELS}/{model}/fold{k}/{name}"


def weights_name(checkpoint: Path) -> str:
    """The name of a checkpoint's weights file in the bundle (``best.pt`` -> ``best.safetensors``)."""
    return Path(checkpoint).stem + WEIGHTS_SUFFIX


def work_dir(out: Path) -> Path:
    """Where inference keeps its probability stores unless told (beside the submission it writes)."""
    return Path(out).resolve().parent / ".segkit_work"


def work_paths(work: Path) -> dict[str, str]:
    """The config's ``paths`` for an offline run: every store under ``work``."""
    return {"runs": str(Path(work) / "runs"), "folds": str(work), "submissions": str(work)}


def stage_source(root: Path, into: Path) -> Path:
    """Copy what segkit's wheel is built from (``src/``, pyproject.toml, README.md) from the source tree ``root``
    into ``into``; returns the copy's root. Raises FileNotFoundError where ``root`` is no source tree."""
    import shutil  # here: only packaging copies the tree

    if not (root / "pyproject.toml").exists():
        raise FileNotFoundError(root / "pyproject.toml")
    copy = into / "project"
    shutil.copytree(root / "src", copy / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(root / name, copy / name)
    return copy


@dataclass
class BundleModel:
    name: str
    weight: float  # its share of the ensemble on OOF (the order a time budget keeps models in)
    folds: dict[int, list[str]]  # fold -> its files (relative), the order predict averages them in


@dataclass
class Bundle:
    root: Path
    experiment: str
    runtime: str  # eager | torchscript | onnx: what the model files are
    models: list[BundleModel]
    info: dict  # when, by which segkit and python, for which notebook, the weights' precision and check, sizes
    hashes: dict[str, str]  # model file (relative) -> sha256

    def path(self, relative: str) -> Path:
        return self.root / relative

    @classmethod
    def read(cls, root: Path) -> "Bundle":
        root = Path(root)
        path = root / MANIFEST
        if not path.exists():
            raise DataError(f"{path}: missing; {root} is not a complete segkit bundle (run `segkit package` again)")
        data = json.loads(path.read_text())
        if data.get("format") != FORMAT or data.get("version") != VERSION:
            raise DataError(f"{path}: not a {FORMAT} v{VERSION} manifest")
        models = [BundleModel(m["name"], float(m["weight"]), {int(k): v for k, v in m["folds"].items()})
                  for m in data["models"]]
        bundle = cls(root, data["experiment"], data["runtime"], models, data.get("info", {}), data["files"])
        for m in models:
            for files in m.folds.values():
                for f in files:
                    if not bundle.path(f).exists():
                        raise DataError(f"{bundle.path(f)}: missing from the bundle (model {m.name!r})")
                    if file_hash(bundle.path(f)) != bundle.hashes.get(f):
                        raise DataError(f"{bundle.path(f)}: its sha256 is not the one {path} records (model "
                                        f"{m.name!r}): the file was changed or damaged; package the bundle again")
        return bundle

    def manifest(self) -> dict:
        return {"format": FORMAT, "version": VERSION, "experiment": self.experiment, "runtime": self.runtime,
                "models": [{"name": m.name, "weight": m.weight, "folds": {str(k): v for k, v in m.folds.items()}}
                           for m in self.models], "files": self.hashes, "info": self.info}


def file_hash(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


__all__ = ["Bundle", "BundleModel", "CHOICE", "CONFIG", "EXTRA", "INFER", "INSTALL", "MANIFEST", "MODELS", "NOTEBOOK",
           "PACKAGES", "STATE", "TUNE", "WHEELS", "file_hash", "model_file", "stage_source", "weights_name", "work_dir",
           "work_paths"]
