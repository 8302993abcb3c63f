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
    _summary(cfg)
    return 0


def _summary(cfg: Config) -> None:
    """The closing lines: where the submission is, its CV, and what the same models score with TTA, ensembling
    and tuning switched off (the first model's own out-of-fold predictions at threshold 0.5)."""
    import json

    tune_file = cfg.run_dir / "tune.json"
    if not (tune_file.exists() and cfg.submission_file.exists()):
        return
    tuned = json.loads(tune_file.read_text())
    plain = (tuned.get("baseline") or {}).get("plain_pipeline")
    print(f"submission: {cfg.submission_file}")
    print(f"CV {cfg.metric}: {tuned['cv']:.4f}  (TTA + ensemble + tuned post-processing)")
    if plain is not None:
        print(f"CV {cfg.metric}: {plain:.4f}  (plain: one model, no TTA, no ensemble, threshold 0.5)")
