"""``segkit run``: every stage of ``segkit.commands`` in order. Each stage skips the units of work that are already
complete and up to date (``segkit.artifacts.freshness``), so running this again after a crash (or a kill) resumes where
it stopped, and running it on a finished experiment does nothing but say what it kept.

``--model M`` / ``--fold K`` narrow the run to a slice: the stages that work per model x fold run for that slice
(train; predict's OOF re-prediction of the slice's folds, and with ``--model`` alone also that model's test
store), the slice's out-of-fold scores are printed, and the run stops with one line before the first stage that
needs every fold of every model.

Pseudo-labelling rounds (``pseudo.rounds``) are run here too, since a round is other stages again: for each round,
select its labels (``segkit.stages.pseudo``), then train, predict and ensemble the round's models (``round_config``).
"""

from __future__ import annotations

import time
from typing import Optional

from segkit.artifacts.atomic import clean_tmp
from segkit.artifacts.probs import ProbStore
from segkit.catalog import check
from segkit.commands import BY_NAME, STAGES, load
from segkit.config import Config
from segkit.data import Competition
from segkit.data.folds import check_fold, fold_numbers, ids_of, load_folds
from segkit.errors import ConfigError
from segkit.inference.repredict import oof_part_unit
from segkit.metrics import get_metric
from segkit.oof import PartStore, score_frame
from segkit.postprocess.tuned import Tuned
from segkit.stages import pseudo


def run(cfg: Config, model: Optional[str] = None, fold: Optional[int] = None) -> int:
    check(cfg)
    # Leftovers of a killed write are never mistaken for results, but they would pile up: sweep them.
    for folder in cfg.layout.tmp_roots():
        clean_tmp(folder)
    # Every stage is imported up front: a broken import fails now, not after an hour of training.
    functions = {stage.name: load(stage) for stage in STAGES}
    narrowed = model is not None or fold is not None
    # pseudo-labelling is a stage of `segkit run` only when the config asks for rounds
    stages = [s for s in STAGES if s.name != "pseudo" or cfg.pseudo.rounds > 0]
    clock = StageClock(cfg) if cfg.plan.minutes and not narrowed else None
    for i, stage in enumerate(stages):
        if narrowed and stage.scope == "all":
            slice_scores(cfg, model, fold)
            print(f"== {', '.join(s.name for s in stages[i:])}: not run; they need every fold of every model, and "
                  f"this run was narrowed to {_slice(model, fold)}")
            return 0
        print(f"== {stage.name}")
        start = time.perf_counter()
        options = {"model": model, "fold": fold} if stage.narrows else {}
        code = functions[stage.name](cfg, **{k: v for k, v in options.items() if v is not None})
        if code:
            return code
        took = time.perf_counter() - start
        print(f"== {stage.name}: done in {took:.1f} s{clock.stage(stage.name, took) if clock else ''}")
        if clock and stage.name == "train":
            clock.forecast([s.name for s in stages[i + 1:]])
    _summary(cfg)
    if clock:
        clock.summary()
    return 0


class StageClock:
    """This invocation's time against the budget the recipe was planned for (``plan:``, written by ``segkit
    plan``). It changes nothing in the run: a recipe that overruns says so as soon as its training is over (the
    stage whose speed the planner measured and extrapolated), and by how much at the end. A resumed run counts only
    its own invocation."""

    TOLERANCE = 0.15  # the planner aims within +-15 % of its budget

    def __init__(self, cfg: Config):
        unknown = sorted(set(cfg.plan.stages) - {s.name for s in STAGES})
        if unknown:
            raise ConfigError(f"plan.stages.{unknown[0]}: not a stage; the stages are "
                              f"{', '.join(s.name for s in STAGES)} ({cfg.origin('plan.stages')})")
        self.minutes = float(cfg.plan.minutes)
        self.stages = dict(cfg.plan.stages)
        self.began = time.perf_counter()

    def _elapsed(self) -> float:
        return (time.perf_counter() - self.began) / 60

    def stage(self, name: str, seconds: float) -> str:
        planned = self.stages.get(name)
        return f" (planned {planned:.1f} min: {seconds / 60 / planned - 1:+.0%})" if planned else ""

    def forecast(self, later: list[str]) -> None:
        """After training: the time spent plus what the later stages were planned to take, against the budget."""
        ahead = self._elapsed() + sum(self.stages.get(s, 0.0) for s in later)
        unplanned = self.minutes - sum(self.stages.values())  # the planner's share for the stages it did not name
        ahead += max(unplanned, 0.0)
        if ahead > self.minutes * (1 + self.TOLERANCE):
            print(f"budget: training ended at {self._elapsed():.1f} min of the planned {self.minutes:.1f}; with the "
                  f"later stages as planned the run will end near {ahead:.1f} min ({ahead / self.minutes - 1:+.0%}). "
                  f"A shorter train.minutes or predict.tta keeps the next run within its budget")

    def summary(self) -> None:
        spent = self._elapsed()
        over = spent / self.minutes - 1
        note = "" if abs(over) <= self.TOLERANCE else f", outside the planner's +-{self.TOLERANCE:.0%}"
        print(f"budget: this run took {spent:.1f} min of the planned {self.minutes:.1f} ({over:+.1%}{note})")


def pseudo_rounds(cfg: Config) -> int:
    """``segkit pseudo``. With ``pseudo.rounds`` = 0: select one round of labels (for a config with
    ``pseudo.round`` set to train on). Otherwise go through the rounds after ``pseudo.round``: select the round's
    labels fold by fold from the models of the round before, then train, predict and ensemble the round's models."""
    if cfg.pseudo.rounds == 0:
        return pseudo.run(cfg)
    for r in range(cfg.pseudo.round + 1, cfg.pseudo.rounds + 1):
        pseudo.select(cfg, r)
        current = pseudo.round_config(cfg, r)
        print(f"pseudo: round {r}: {', '.join(m.name for m in current.models)} with round {r}'s labels at "
              f"{cfg.pseudo.batch_share:.0%} of each batch")
        for name in ("train", "predict", "ensemble"):
            code = load(BY_NAME[name])(current)
            if code:
                return code
    return 0


def _slice(model: Optional[str], fold: Optional[int]) -> str:
    parts = ([f"model {model}"] if model else []) + ([f"fold {fold}"] if fold is not None else [])
    return " and ".join(parts)


def slice_scores(cfg: Config, model: Optional[str], fold: Optional[int]) -> None:
    """The competition metric on the slice's out-of-fold images at p > 0.5: as training left them, and as the
    TTA re-prediction made them (where it ran)."""
    comp = Competition(cfg.data, seed=cfg.seed)
    frame = load_folds(cfg, comp)
    folds = [check_fold(frame, fold, cfg.layout.folds_file)] if fold is not None else fold_numbers(frame)
    metric = get_metric(cfg.metric, key="metric")
    models = [cfg.model(model)] if model else list(cfg.models)
    exclusive = cfg.data.mode == "multiclass"
    print(f"== scores of {_slice(model, fold)} ({cfg.metric}, out-of-fold images at p > 0.5)")
    for m in models:
        paths = cfg.layout.model(m.name)
        for k in folds:
            ids = ids_of(frame, [k])
            shown = []
            if ProbStore.is_complete(paths.fold(k).oof):  # the fold finished training
                views = [("training OOF", ProbStore(paths.fold(k).oof))]
                if cfg.predict.repredict_oof and oof_part_unit(cfg, m.name, paths.oof_tta, k, ids).fresh():
                    views.append(("TTA OOF", PartStore(paths.oof_tta, ids)))
                for what, view in views:
                    score = score_frame(view, comp.read_mask, metric, exclusive=exclusive)["score"].mean()
                    shown.append(f"{score:.4f} ({what})")
            print(f"models[{m.name}] fold {k}: {', '.join(shown) or 'not trained yet'}")


def _summary(cfg: Config) -> None:
    """The closing lines: where the submission is, its CV (the nested estimate first, the in-sample one beside it:
    ``Tuned.cv_text``), and what the same models score with TTA, ensembling and tuning switched off (the
    first model's own out-of-fold predictions at threshold 0.5)."""
    layout = cfg.layout
    if not (layout.tune.json.exists() and layout.submission.exists()):
        return
    tuned = Tuned.read(layout.tune.json, cfg.data.classes)
    plain = (tuned.record.get("baseline") or {}).get("plain_pipeline")
    print(f"submission: {layout.submission}")
    print(f"CV {tuned.scored_as(cfg.metric)}: {tuned.cv_text()}  (TTA + ensemble + tuned post-processing)")
    if plain is not None:
        print(f"CV {cfg.metric}: {plain:.4f}  (plain: one model, no TTA, no ensemble, threshold 0.5)")


__all__ = ["pseudo_rounds", "run", "slice_scores"]
