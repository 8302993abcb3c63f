"""``segkit package --out DIR``: an experiment as an offline bundle for a code competition (``segkit.bundle.files``).

The bundle is a folder to upload as a Kaggle dataset. It holds the final ensemble's models (the fold checkpoints
predict uses, or their exports from ``segkit export`` with ``--models torchscript|onnx``), the frozen config,
tune.json, the ensemble's choice and exact test-time state, and wheels of segkit and of every package inference
imports, pinned to the versions installed here, so that ``pip install --no-index --find-links wheels`` works
with the network off. ``infer.py`` is its one entry point and ``notebook.ipynb`` calls it.

An incomplete experiment is refused before anything is written, naming what is missing (a fold's checkpoint,
tune.json, the ensemble's state, an export). The bundle is built in a temporary folder beside ``--out`` and moved
into place complete: an earlier bundle there is replaced only then, and a folder that is not a bundle is never
touched.
"""

from __future__ import annotations

import importlib.metadata as metadata
import json
import platform
import shutil
import subprocess
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

import yaml

from segkit.artifacts import atomic
from segkit.bundle.files import (
    CHOICE,
    CONFIG,
    EXTRA,
    INFER,
    MANIFEST,
    NOTEBOOK,
    REQUIREMENTS,
    STATE,
    TUNE,
    WHEELS,
    Bundle,
    BundleModel,
    model_file,
    stage_source,
)
from segkit.config import Config
from segkit.data import Competition
from segkit.data.folds import fold_numbers, load_folds
from segkit.ensemble import chosen
from segkit.errors import ConfigError, DataError
from segkit.inference.runtimes import SUFFIX, meta_path
from segkit.models.checkpoint import fold_checkpoints
from segkit.postprocess.tuned import Tuned

# What inference imports (segkit.bundle.infer and what it reaches), by distribution; pip adds their own dependencies.
INFER_PACKAGES = ["torch", "torchvision", "timm", "segmentation-models-pytorch", "safetensors", "numpy", "scipy",
                  "pandas", "opencv-python-headless", "albumentations", "scikit-image", "pillow", "pydantic",
                  "PyYAML", "tqdm", "numba", "lightgbm", "nibabel"]
RUNTIME_PACKAGES = {"eager": [], "torchscript": [], "onnx": ["onnxruntime"]}

INFER_PY = '''"""Writes a submission from this segkit bundle, offline: python infer.py --test DIR --sample CSV --out CSV
[--time-budget 8h] [--dry-run --images N]. Installs the bundle's wheels first where segkit is not installed."""
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def install():
    wheels = HERE / "wheels"
    if not wheels.is_dir():
        sys.exit(f"error: segkit is not installed and {wheels} is missing (the bundle was made with --no-wheels)")
    pip = [sys.executable, "-m", "pip", "install", "--no-index", "--find-links", str(wheels), "--quiet"]
    subprocess.check_call(pip + ["-r", str(HERE / "requirements.txt")])
    subprocess.check_call(pip + ["--no-deps", *map(str, sorted(wheels.glob("segkit-*.whl")))])


try:
    import segkit.bundle.infer
except ImportError:
    install()
    import segkit.bundle.infer

sys.exit(segkit.bundle.infer.main(sys.argv[1:], bundle=HERE))
'''


def notebook(name: str) -> dict:
    """A two-cell notebook: install the wheels offline, run infer.py on the competition's test folder."""
    root = f"/kaggle/input/{name}"
    cells = [
        f"!pip install --no-index --find-links {root}/wheels -r {root}/requirements.txt\n"
        f"!pip install --no-index --no-deps {root}/wheels/segkit-*.whl",
        f"!python {root}/infer.py --test /kaggle/input/COMPETITION/test --sample "
        f"/kaggle/input/COMPETITION/sample_submission.csv --out submission.csv --time-budget 8h",
    ]
    return {"nbformat": 4, "nbformat_minor": 5, "metadata": {"language_info": {"name": "python"}},
            "cells": [{"cell_type": "code", "metadata": {}, "execution_count": None, "outputs": [],
                       "id": f"cell{i}", "source": text} for i, text in enumerate(cells)]}


def requirements(runtime: str) -> list[str]:
    """The pinned requirement lines of inference: the versions installed here (what the experiment ran with)."""
    names = INFER_PACKAGES + RUNTIME_PACKAGES[runtime]
    lines = []
    for name in names:
        try:
            lines.append(f"{name}=={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            raise ConfigError(f"package: {name} is not installed here, and inference needs it") from None
    return lines


# --------------------------------------------------------------------------------------------------- checks


def check_experiment(cfg: Config) -> None:
    """Refuse what a bundle cannot carry yet, before anything is read."""
    if cfg.imports:
        raise ConfigError(f"imports: {cfg.imports}: a bundle carries segkit's own components only (its wheel); put "
                          f"the experiment's components into segkit itself to package it")
    if cfg.data.volumes is not None:
        raise ConfigError("data.volumes: volume competitions cannot be packaged yet (their test cases are NIfTI "
                          "files that infer.py does not cut)")
    if cfg.pseudo.rounds > cfg.pseudo.round:
        raise ConfigError(f"pseudo.rounds: the experiment goes to round {cfg.pseudo.rounds}; package that round's "
                          f"models with pseudo.round={cfg.pseudo.rounds}")


def ensemble_files(cfg: Config) -> tuple[dict, dict]:
    paths = cfg.layout.final_ensemble
    files = chosen.read(paths.choice, paths.state)
    return files.choice, files.state


def ranked(choice: dict, cv: Optional[Path]) -> list[tuple[str, float]]:
    """The models with their share of the ensemble (wmean's weights; else equal shares), heaviest first, equal
    shares in the order of each model's own OOF CV in the ensemble's table: the order a time budget keeps them in."""
    models = list(choice["models"])
    if choice["method"] == "wmean":
        share = {m: float(choice["params"]["weights"][m]) for m in models}
    elif choice["method"].startswith("model:"):
        share = {m: float(m == choice["method"][len("model:"):]) for m in models}
    else:
        share = {m: 1.0 / len(models) for m in models}
    own = {}
    if cv is not None and cv.exists():
        import pandas as pd  # here: the CV table is read only to order the models

        table = pd.read_csv(cv).set_index("method")["cv"]
        own = {m: float(table.get(f"model:{m}", 0.0)) for m in models}
    return sorted(((m, share[m]) for m in models), key=lambda x: (-x[1], -own.get(x[0], 0.0)))


def model_sources(cfg: Config, comp: Competition, runtime: str) -> dict[str, dict[int, list[Path]]]:
    """model -> fold -> the model files the bundle carries for it (the checkpoints, or their exports)."""
    folds = fold_numbers(load_folds(cfg, comp))
    out: dict[str, dict[int, list[Path]]] = {}
    for m in cfg.models:
        out[m.name] = {}
        for k in folds:
            checkpoints = fold_checkpoints(cfg, m.name, k)
            if runtime == "eager":
                out[m.name][k] = checkpoints
                continue
            out[m.name][k] = [cfg.layout.export.file(m.name, k, c, SUFFIX[runtime]) for c in checkpoints]
            for c, export in zip(checkpoints, out[m.name][k]):
                if not export.exists() or not meta_path(export).exists():
                    raise DataError(f"{export}: missing; run `segkit export --config {cfg.source or 'CFG'} "
                                    f"--format {runtime}` first")
                if export.stat().st_mtime < c.stat().st_mtime:
                    raise DataError(f"{export}: older than {c}; run `segkit export` again")
    return out


# ---------------------------------------------------------------------------------------------------- wheels


def pip(*args: str) -> None:
    command = [sys.executable, "-m", "pip", *args, "--disable-pip-version-check", "--quiet"]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode:
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-6:])
        raise DataError(f"package: `pip {' '.join(args[:2])} ...` failed:\n{tail}")


def write_wheels(folder: Path, lines: list[str], python_version: Optional[str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    requirements_file = folder.parent / REQUIREMENTS
    target = ["--only-binary=:all:", "--python-version", python_version] if python_version else []
    pip("download", "--dest", str(folder), "-r", str(requirements_file), *target)
    with tempfile.TemporaryDirectory() as build:
        # Built from a copy of the source tree segkit runs from (an editable install), so that the build's own
        # files (build/, *.egg-info) never land in the checkout.
        package_dir = Path(__file__).resolve().parents[1]  # src/segkit: this module is segkit/stages/package.py
        try:
            src = stage_source(package_dir.parents[1], Path(build))
        except FileNotFoundError:
            raise ConfigError(f"package: segkit at {package_dir} is not installed from its source tree, so its "
                              f"wheel cannot be built here; install it with `pip install -e` from a checkout") from None
        pip("wheel", "--no-deps", "--no-build-isolation", "--wheel-dir", str(folder), str(src))


# ------------------------------------------------------------------------------------------------------- run


def _size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def run(cfg: Config, out: str, models: str = "eager", wheels: bool = True,
        python_version: Optional[str] = None) -> int:
    out_dir = Path(out).resolve()
    if out_dir.exists() and not (out_dir / MANIFEST).exists():
        raise DataError(f"--out {out_dir}: exists and is not a segkit bundle; give a new folder")
    check_experiment(cfg)
    layout = cfg.layout
    tuned_path = layout.tune.json
    Tuned.read(tuned_path, cfg.data.classes, f"run `segkit tune --config {cfg.source or 'CFG'}` first")
    choice, _ = ensemble_files(cfg)
    if list(choice["models"]) != [m.name for m in cfg.models]:
        raise DataError(f"{layout.final_ensemble.choice}: ensembles {choice['models']}, the config's models are "
                        f"{[m.name for m in cfg.models]}; run `segkit ensemble` again")
    comp = Competition(cfg.data, seed=cfg.seed)
    sources = model_sources(cfg, comp, models)
    order = ranked(choice, layout.final_ensemble.cv)

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=atomic.TMP_SUFFIX, dir=out_dir.parent))
    try:
        entries = []
        for name, share in order:
            folds = {}
            for k, files in sources[name].items():
                folds[k] = []
                for f in files:
                    rel = model_file(name, k, f.name)
                    (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(f, tmp / rel)
                    if meta_path(f).exists():  # an export's record travels beside it (its runtime reads it)
                        shutil.copy2(meta_path(f), meta_path(tmp / rel))
                    folds[k].append(rel)
            entries.append(BundleModel(name, share, folds))
        (tmp / CONFIG).write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
        shutil.copy2(tuned_path, tmp / TUNE)
        (tmp / CHOICE).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(layout.final_ensemble.choice, tmp / CHOICE)
        shutil.copy2(layout.final_ensemble.state, tmp / STATE)
        if cfg.data.extra_csv:
            shutil.copy2(cfg.data.path("extra_csv"), tmp / EXTRA)
        lines = requirements(models)
        (tmp / REQUIREMENTS).write_text("\n".join(lines) + "\n")
        (tmp / INFER).write_text(INFER_PY)
        (tmp / NOTEBOOK).write_text(json.dumps(notebook(cfg.experiment.replace("_", "-")), indent=1) + "\n")
        without_wheels = _size(tmp)
        if wheels:
            print(f"package: wheels of {len(lines)} packages and their dependencies (pip download) and of segkit")
            write_wheels(tmp / WHEELS, lines, python_version)
        info = {"made": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "segkit": metadata.version("segkit"), "python": python_version or platform.python_version(),
                "bytes_without_wheels": without_wheels, "bytes": _size(tmp)}
        bundle = Bundle(tmp, cfg.experiment, models, entries, info)
        atomic.write_json(tmp / MANIFEST, bundle.manifest())
        _replace(tmp, out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    print(f"package: wrote {out_dir} ({info['bytes_without_wheels'] / 2**20:.1f} MiB without wheels, "
          f"{info['bytes'] / 2**20:.1f} MiB in all; models {', '.join(e.name for e in entries)} as {models})")
    print(f"package: try it: python {out_dir / INFER} --test <test images> --sample <sample_submission.csv> "
          f"--out submission.csv --time-budget 8h")
    return 0


def _replace(new: Path, target: Path) -> None:
    """Move the complete bundle ``new`` to ``target``; an earlier bundle there goes only once it is in place."""
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old{atomic.TMP_SUFFIX}")
        shutil.rmtree(old, ignore_errors=True)
        target.rename(old)
    new.rename(target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


__all__ = ["INFER_PACKAGES", "check_experiment", "requirements", "run"]
