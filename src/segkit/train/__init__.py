"""``segkit train``: every model x fold of the config (or the one named by --model / --fold), each resumable and
skipped once complete. See ``segkit.train.fold`` for what one fold does and writes."""

from __future__ import annotations

from typing import Optional

from segkit.config.schema import Config
from segkit.errors import ConfigError
from segkit.train.data import ExtraTrainData
from segkit.train.fold import FoldPaths, fold_dir, is_done, train_fold

__all__ = ["ExtraTrainData", "FoldPaths", "fold_dir", "is_done", "run", "train_fold"]


def run(cfg: Config, model: Optional[str] = None, fold: Optional[int] = None) -> int:
    from segkit.data import Competition
    from segkit.train import distributed
    from segkit.folds import fold_numbers, load_folds

    models = [cfg.model(model)] if model else list(cfg.models)
    if not models:
        raise ConfigError("models: no model configured")
    _check_names(cfg, models)
    comp = Competition(cfg.data, seed=cfg.seed)
    folds = fold_numbers(load_folds(cfg, comp))
    if fold is not None:
        if fold not in folds:
            raise ConfigError(f"--fold {fold}: the fold file {cfg.folds_file} has folds {folds}")
        folds = [fold]
    rows = []
    try:
        for m in models:
            for k in folds:
                if is_done(fold_dir(cfg, m.name, k)):
                    print(f"models[{m.name}] fold {k}: complete, skipped", flush=True)
                summary = train_fold(cfg, m, k)
                rows.append((m.name, k, summary.get("best_epoch"), summary.get("score")))
    finally:
        distributed.teardown()
    _print_table(rows, cfg.metric)
    return 0


def _check_names(cfg: Config, models: list) -> None:
    """Every name a model's config picks from a registry (architecture, losses, optimizer, schedule,
    augmentation), checked before any data is read or any fold starts: a typo in the third model must not
    surface after the first two have trained for hours."""
    from segkit.data.augment import AUGMENTS
    from segkit.losses import LossSchedule
    from segkit.models import ARCHS
    from segkit.optim import OPTIMIZERS, SCHEDULES

    for m in models:
        tcfg = cfg.train_for(m)
        key = f"models[{m.name}]"
        ARCHS.get(m.arch, key=f"{key}.arch")
        OPTIMIZERS.get(tcfg.optimizer, key=f"{key} train.optimizer")
        SCHEDULES.get(tcfg.schedule.name, key=f"{key} train.schedule.name")
        AUGMENTS.get(tcfg.augment, key=f"{key} train.augment")
        LossSchedule(tcfg, cfg.data.mode, len(cfg.data.classes))


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
