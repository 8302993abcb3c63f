"""``segkit run``: every stage in order. Each stage skips the work whose outputs are already complete, so running
this again after a crash (or a kill) resumes where it stopped."""

from __future__ import annotations

import importlib
import time

from segkit.config import Config

# (stage, module); a stage whose module is absent ends the run with a note instead of failing.
ORDER = ["check", "folds", "train", "predict", "ensemble", "pseudo", "tune", "submit", "report"]


def _stage(name: str):
    try:
        return importlib.import_module(f"segkit.{name}")
    except ModuleNotFoundError as err:
        if err.name == f"segkit.{name}":
            return None
        raise


def run(cfg: Config, model: str | None = None, fold: int | None = None) -> int:
    from segkit.atomic import clean_tmp

    # Leftovers of a killed write are never mistaken for results, but they would pile up: sweep them.
    for folder in (cfg.run_dir, cfg.folds_file.parent, cfg.paths.submissions):
        clean_tmp(folder)
    for name in ORDER:
        if name == "pseudo" and cfg.pseudo.rounds == 0:
            continue
        module = _stage(name)
        if module is None:
            print(f"== {name}: not built yet; stopping here")
            return 0
        print(f"== {name}")
        start = time.perf_counter()
        options = {"model": model, "fold": fold} if name == "train" else {}
        code = module.run(cfg, **{k: v for k, v in options.items() if v is not None})
        if code:
            return code
        print(f"== {name}: done in {time.perf_counter() - start:.1f} s")
    return 0
