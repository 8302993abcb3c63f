"""``segkit run``: every stage in order. Each stage skips the work whose outputs are already complete, so running
this again after a crash (or a kill) resumes where it stopped."""

from __future__ import annotations

import importlib
import time

from segkit.config import Config

# The stages in order; each is the module segkit.<stage> with a run(cfg) function.
ORDER = ["check", "folds", "train", "predict", "ensemble", "pseudo", "tune", "submit", "report"]


def run(cfg: Config, model: str | None = None, fold: int | None = None) -> int:
    from segkit.atomic import clean_tmp

    # Leftovers of a killed write are never mistaken for results, but they would pile up: sweep them.
    for folder in (cfg.run_dir, cfg.folds_file.parent, cfg.paths.submissions):
        clean_tmp(folder)
    # Every stage is imported up front: a broken import fails now, not after an hour of training.
    stages = {name: importlib.import_module(f"segkit.{name}") for name in ORDER}
    for name, module in stages.items():
        if name == "pseudo" and cfg.pseudo.rounds == 0:
            continue
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
