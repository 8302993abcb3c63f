"""``segkit train``: every model x fold of the config (or the one named by --model / --fold), each resumable and
skipped once complete. See ``segkit.stages.train.fold`` for what one fold does and writes."""

from __future__ import annotations

from typing import Optional

from segkit.compute import distributed
from segkit.config.schema import Config
from segkit.data import Competition
from segkit.data.folds import check_fold, fold_numbers, load_folds
from segkit.errors import ConfigError
from segkit.stages.train.data import ExtraTrainData
from segkit.stages.train.fold import train_fold

__all__ = ["ExtraTrainData", "run", "train_fold"]


def run(cfg: Config, model: Optional[str] = None, fold: Optional[int] = None) -> int:
    models = [cfg.model(model)] if model else list(cfg.models)
    if not models:
        raise ConfigError("models: no model configured")
    frame = load_folds(cfg, Competition(cfg.data, seed=cfg.seed))
    folds = [check_fold(frame, fold, cfg.layout.folds_file)] if fold is not None else fold_numbers(frame)
    rows = []
    try:
        for m in models:
            for k in folds:
                summary = train_fold(cfg, m, k)
                rows.append((m.name, k, summary.get("best_epoch"), summary.get("score")))
    finally:
        distributed.teardown()
    _print_table(rows, cfg.metric)
    return 0


def _print_table(rows: list[tuple], metric: str) -> None:
    if not rows:
        return
    by_model: dict[str, list[float]] = {}
    print(f"{'model':<20} {'fold':>4} {'best':>5} {metric:>10}")
    for name, k, epoch, score in rows:
        print(f"{name:<20} {k:>4} {epoch if epoch is not None else '-':>5} "
              f"{score if score is None else format(score, '.4f'):>10}")
        if score is not None:
            by_model.setdefault(name, []).append(score)
    for name, scores in by_model.items():
        print(f"{name:<20} mean {'':>5} {sum(scores) / len(scores):>10.4f}")
