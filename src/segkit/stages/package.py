"""``segkit package --out DIR``: an experiment as an offline bundle for a code competition (``segkit.bundle.files``).

The bundle is a folder to upload as a Kaggle dataset. It holds the final ensemble's networks (the weights of the fold
checkpoints predict uses, as safetensors, float16 unless ``--weights fp32``; or their exports from ``segkit export``
with ``--models torchscript|onnx``), the frozen config, tune.json, the ensemble's choice and exact test-time state,
and the wheels of segkit and of what the target notebook lacks (``segkit.bundle.targets``), at the versions
installed here. ``install.py`` installs those beside the notebook's packages (``segkit.bundle.install``);
``infer.py`` is the entry point and ``notebook.ipynb`` calls both.

Float16 weights are checked at packaging: each model's first fold predicts the first test images with the
checkpoint and with its float16 weights (one TTA view), and a difference of probabilities past ``FP16_TOLERANCE``
is an error that names the model (``--weights fp32`` keeps them exact). Fold models are not merged into one by
averaging their weights: each fold trains from the same start on other images for many epochs, and weights that
far apart do not average into a working network (weight averaging pays within one run: ``train.average``, EMA).

An incomplete experiment is refused before anything is written, naming what is missing (a fold's checkpoint,
tune.json, the ensemble's state, an export). The bundle is built in a temporary folder beside ``--out`` and moved
into place complete: an earlier bundle there is replaced only then, and a folder that is not a bundle is never
touched.
"""

from __future__ import annotations

import importlib.metadata as metadata
import json
import platform
import secrets
import shutil
import subprocess
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

import yaml

from segkit.artifacts import atomic
from segkit.bundle import install as installer
from segkit.bundle.files import (
    CHOICE,
    CONFIG,
    EXTRA,
    INFER,
    INSTALL,
    MANIFEST,
    MODELS,
    NOTEBOOK,
    PACKAGES,
    STATE,
    TUNE,
    WHEELS,
    Bundle,
    BundleModel,
    file_hash,
    model_file,
    stage_source,
    weights_name,
)
from segkit.bundle.targets import Package, needs
from segkit.config import Config
from segkit.data import Competition
from segkit.data.folds import fold_numbers, load_folds
from segkit.ensemble import chosen
from segkit.errors import ConfigError, DataError
from segkit.inference.runtimes import SUFFIX, meta_path
from segkit.models import check_exportable, dims_of
from segkit.models.checkpoint import fold_checkpoints, save_weights
from segkit.postprocess.tuned import Tuned

# The largest difference of probabilities (on [0, 1]) float16 weights may make against their checkpoint.
FP16_TOLERANCE = 0.02
CHECK_IMAGES = 8

INFER_PY = '''"""Writes a submission from this segkit bundle, offline: python infer.py --test DIR --sample CSV --out CSV
[--time-budget 8h] [--dry-run --images N]. Installs what the notebook lacks first (install.py), beside its own
packages, never over them."""
import runpy
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
args = sys.argv[1:]
device = args[args.index("--device") + 1] if "--device" in args[:-1] else "auto"
install = runpy.run_path(str(HERE / "install.py"))
try:
    install["ensure"](HERE, device=device)
except install["InstallError"] as err:  # before any prediction, and no submission written
    print(f"error: {err}", file=sys.stderr)
    sys.exit(2)

import segkit.bundle.infer  # noqa: E402 - from the folder install.py put first on the path

sys.exit(segkit.bundle.infer.main(args, bundle=HERE))
'''


def notebook_cells(root: str) -> list[str]:
    """The notebook's two cells for a bundle at ``root`` (the README shows them, the suite runs them)."""
    return [f"!python {root}/{INSTALL}",
            f"!python {root}/{INFER} --test /kaggle/input/COMPETITION/test --sample "
            f"/kaggle/input/COMPETITION/sample_submission.csv --out submission.csv --time-budget 8h"]


def notebook(name: str) -> dict:
    """A two-cell notebook: install what the notebook lacks, run infer.py on the competition's test folder."""
    return {"nbformat": 4, "nbformat_minor": 5, "metadata": {"language_info": {"name": "python"}},
            "cells": [{"cell_type": "code", "metadata": {}, "execution_count": None, "outputs": [],
                       "id": f"cell{i}", "source": text}
                      for i, text in enumerate(notebook_cells(f"/kaggle/input/{name}"))]}


# --------------------------------------------------------------------------------------------------- checks


def check_experiment(cfg: Config) -> None:
    """Refuse what a bundle cannot carry yet, before anything is read."""
    if cfg.imports:
        raise ConfigError(f"imports: {cfg.imports}: a bundle carries segkit's own components only (its wheel); put "
                          f"the experiment's components into segkit itself to package it")
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
        if runtime != "eager":
            check_exportable(m)
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


def write_wheels(folder: Path, packages: list[Package], python_version: Optional[str]) -> Package:
    """Download the carried packages' wheels (no dependencies: ``packages`` is already their closure) and build
    segkit's; fills each package's ``wheel`` and returns segkit's own entry."""
    folder.mkdir(parents=True, exist_ok=True)
    carried = [p for p in packages if p.carried]
    target = ["--python-version", python_version] if python_version else []
    if carried:
        pip("download", "--no-deps", "--only-binary=:all:", "--dest", str(folder), *target,
            *(f"{p.name}=={p.version}" for p in carried))
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
    files = {installer.norm(w.name.split("-")[0]): w.name for w in folder.glob("*.whl")}
    for p in carried:
        if p.name not in files:
            raise DataError(f"package: pip gave no wheel of {p.name}=={p.version} (only binary wheels travel)")
        p.wheel = files[p.name]
    version = metadata.version("segkit")
    return Package("segkit", version, f"=={version}", True, ["segkit"], files["segkit"])


# --------------------------------------------------------------------------------------------------- weights


def write_weights(checkpoints: list[Path], into: Path, dtype: str) -> list[Path]:
    """A fold's checkpoints as weights files in ``into`` (same names, safetensors)."""
    into.mkdir(parents=True, exist_ok=True)
    out = []
    for c in checkpoints:
        save_weights(c, into / weights_name(c), dtype)
        out.append(into / weights_name(c))
    return out


def check_weights(cfg: Config, comp: Competition, name: str, checkpoints: list[Path], weights: list[Path]) -> dict:
    """The largest difference of probabilities between a fold's checkpoints and its weights files, on the first
    test images (one TTA view); an error past ``FP16_TOLERANCE``."""
    import numpy as np  # here: only the check compares predictions

    from segkit.compute.device import resolve_device  # here: packaging without the check needs no engine
    from segkit.inference.engine import Predictor  # (idem)
    from segkit.inference.outputs import Collected  # (idem)

    ids = comp.test_ids[:CHECK_IMAGES]
    device = resolve_device("cpu")
    outs = []
    for files in (checkpoints, weights):
        out = Collected()
        Predictor(cfg, [files], device, max_views=1).predict(comp, ids, "test", out)
        outs.append(out)
    diff = max(float(np.abs(outs[0][i].astype(np.int16) - outs[1][i].astype(np.int16)).max()) for i in ids) / 255
    if diff > FP16_TOLERANCE:
        raise DataError(f"models[{name}]: float16 weights move its probabilities by up to {diff:.4f} on "
                        f"{len(ids)} test images (more than {FP16_TOLERANCE}); package with --weights fp32")
    return {"images": len(ids), "max_abs_diff": round(diff, 5)}


# ------------------------------------------------------------------------------------------------------- run


def _size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def run(cfg: Config, out: str, models: str = "eager", weights: str = "fp16", target: str = "kaggle-gpu",
        wheels: bool = True, python_version: Optional[str] = None) -> int:
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
    packages = needs(models, target, python_version, volumetric=any(dims_of(m) == 3 for m in cfg.models))

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=atomic.TMP_SUFFIX, dir=out_dir.parent))
    try:
        entries, checks = [], {}
        for name, share in order:
            folds = {}
            for k, files in sources[name].items():
                into = tmp / model_file(name, k, "")
                if models == "eager":
                    made = write_weights(files, into, weights)
                    if weights == "fp16" and name not in checks:  # each model's first fold speaks for it
                        checks[name] = check_weights(cfg, comp, name, files, made)
                else:
                    into.mkdir(parents=True, exist_ok=True)
                    made = []
                    # an export travels with its record (its runtime reads it)
                    for f in files:
                        shutil.copy2(f, into / f.name)
                        shutil.copy2(meta_path(f), meta_path(into / f.name))
                        made.append(into / f.name)
                folds[k] = [model_file(name, k, f.name) for f in made]
            entries.append(BundleModel(name, share, folds))
        (tmp / CONFIG).write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
        shutil.copy2(tuned_path, tmp / TUNE)
        (tmp / CHOICE).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(layout.final_ensemble.choice, tmp / CHOICE)
        shutil.copy2(layout.final_ensemble.state, tmp / STATE)
        if cfg.data.extra_csv:
            shutil.copy2(cfg.data.path("extra_csv"), tmp / EXTRA)
        shutil.copy2(installer.__file__, tmp / INSTALL)
        (tmp / INFER).write_text(INFER_PY)
        (tmp / NOTEBOOK).write_text(json.dumps(notebook(cfg.experiment.replace("_", "-")), indent=1) + "\n")
        without_wheels = _size(tmp)
        if wheels:
            carried = [p.name for p in packages if p.carried]
            print(f"package: wheels for target {target}: segkit and {len(carried)} package(s) the target lacks"
                  f"{': ' + ', '.join(carried) if carried else ''}")
            packages.append(write_wheels(tmp / WHEELS, packages, python_version))
        else:
            for p in packages:
                p.carried = False
        python = python_version or ".".join(platform.python_version_tuple()[:2])
        atomic.write_json(tmp / PACKAGES, {"bundle": secrets.token_hex(8), "target": target, "python": python,
                                           "wheels": wheels, "packages": [p.spec() for p in packages]})
        info = {"made": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "segkit": metadata.version("segkit"), "python": python, "target": target,
                "weights": weights if models == "eager" else "fp32", "weights_check": checks,
                "bytes_without_wheels": without_wheels, "bytes_models": _size(tmp / MODELS), "bytes": _size(tmp)}
        hashes = {f: file_hash(tmp / f) for e in entries for files in e.folds.values() for f in files}
        bundle = Bundle(tmp, cfg.experiment, models, entries, info, hashes)
        atomic.write_json(tmp / MANIFEST, bundle.manifest())
        _replace(tmp, out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    checked = "".join(f"; {n}'s float16 weights within {c['max_abs_diff']:.4f} of its checkpoint on {c['images']} "
                      f"test images" for n, c in checks.items())
    print(f"package: wrote {out_dir} ({info['bytes_models'] / 2**20:.1f} MiB of networks, "
          f"{info['bytes_without_wheels'] / 2**20:.1f} MiB without wheels, {info['bytes'] / 2**20:.1f} MiB in all; "
          f"models {', '.join(e.name for e in entries)} as {models}{checked})")
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


__all__ = ["FP16_TOLERANCE", "check_experiment", "notebook_cells", "run"]
