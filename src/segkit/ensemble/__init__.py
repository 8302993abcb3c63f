"""Ensembling methods and what the ensemble stage and the offline bundle share of them.

The methods live one family a module (``averaging``, ``voting``, ``stacking``), registered in ``METHODS`` by name;
each declares its own facts (``Method.subsettable``, ``state`` / ``load_state`` / ``restrict``: see ``base``).
This module builds them from the config (``method_names``, ``check_choice``), writes a method's output store
(``write_store``) and restores the chosen method from ``choice.json`` / ``state.json`` (``restore``), which the
ensemble stage (``segkit.stages.ensemble``) writes and ``chosen`` reads.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np

from segkit.artifacts import atomic
from segkit.artifacts.probs import ProbWriter, quantize
from segkit.compute import pool
from segkit.config import Config
from segkit.ensemble import averaging, stacking, voting  # noqa: F401  (register the methods)
from segkit.ensemble.base import METHODS, MODEL_PREFIX, Method, Setup, build_method, is_subsettable
from segkit.ensemble.sources import read_all
from segkit.errors import ConfigError, DataError

__all__ = ["METHODS", "MODEL_PREFIX", "Method", "Setup", "as_uint8", "build_method", "check_choice",
           "is_subsettable", "method_names", "picked", "restore", "write_store"]


def method_names(cfg: Config) -> list[str]:
    names: list[str] = []
    for name in cfg.ensemble.methods:
        for n in METHODS.names() if name.lower() == "all" else [name.lower()]:
            METHODS.get(n, key="ensemble.methods")
            if n not in names:
                names.append(n)
    if not names:
        raise ConfigError("ensemble.methods: empty")
    return names


def picked(cfg: Config) -> Optional[str]:
    pick = cfg.ensemble.choose
    if pick is None:
        return None
    return pick if pick.startswith(MODEL_PREFIX) else pick.lower()


def check_choice(cfg: Config, names: list[str], models: list[str]) -> None:
    """Fail before any work when ``ensemble.choose`` names nothing this run will score."""
    pick = picked(cfg)
    allowed = names + [MODEL_PREFIX + m for m in models]
    if pick is not None and pick not in allowed:
        raise ConfigError(f"ensemble.choose: {cfg.ensemble.choose!r} is neither in ensemble.methods nor a model; "
                          f"choose one of {', '.join(allowed)}")


def restore(setup: Setup, choice: dict, state: dict) -> Method:
    """The method ``choice.json`` names, with its test-time ``state.json`` loaded: it combines test images
    (``fold=None``) as the ensemble stage did, without the OOF it was fitted on. ``setup.models`` may be a subset of
    the models it was fitted on only for a subsettable method (``Method.subsettable``), whose state is restricted
    to the models kept."""
    picked_name, fitted = choice["method"], list(choice["models"])
    method = build_method(picked_name, setup, key="ensemble")
    if setup.models != fitted:
        if not method.subsettable:
            raise DataError(f"ensemble: method {picked_name!r} needs every model it was fitted on ({fitted}); "
                            f"got {setup.models}")
        state = method.restrict(state, fitted, setup.models)
    method.load_state(state)
    return method


def as_uint8(p: np.ndarray) -> np.ndarray:
    return p if p.dtype == np.uint8 else quantize(p)


def write_store(folder: Path, classes: list[str], ids: list[str], folds: Optional[dict], sources, method,
                workers: int = 1) -> None:
    """Write one output store into a temporary folder and move it into place when complete; the images are
    spread over ``workers`` processes (each writes its own files)."""
    with atomic.atomic_dir(folder) as tmp:
        writer = ProbWriter(tmp, classes)

        def one(i: int) -> None:
            image_id = ids[i]
            fold = folds[image_id] if folds is not None else None
            writer.write(image_id, as_uint8(method.combine(read_all(sources, image_id), image_id, fold)))

        pool.map_indices(one, len(ids), workers, f"ensemble: {folder.parent.name}/{folder.name}")
        writer.finish(ids)
