"""The pipeline's stages, in order, as one registry: the command line (``segkit <stage>``) and ``segkit run`` are
both built from it, so the two can never disagree on what the stages are, what they take or in which order they run.

Each stage declares what it reads and what it writes, by the names of ``ARTIFACTS`` (every one a place of
``segkit.artifacts.layout``), and how far it can be narrowed:

- ``data``: experiment-wide preparation that any slice of the work needs (check, folds);
- ``fold``: works per model x fold, so it takes ``--model`` and ``--fold`` (train, predict);
- ``all``: needs every fold of every model (ensemble and everything after it); ``segkit run --model/--fold``
  stops before the first of these.

What decides a stage's outputs (the fingerprint of its inputs) is declared by the stage's own units of work
(``segkit.artifacts.freshness``); this table is what the stages *are*. Stage modules are named here as strings and imported
only when their command runs, so ``segkit --help`` stays instant.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable, Literal

from segkit.errors import DataError, SegkitError
from segkit.artifacts.layout import Layout, pattern
from segkit.artifacts.probs import ProbStore

Scope = Literal["data", "fold", "all"]

# Every artifact a stage may read or write, as places of the layout (folders end in "/"); the competition's own
# files are the config's (data.*).
ARTIFACTS: dict[str, Callable[[Layout], tuple[str, ...]]] = {
    "competition": lambda L: ("competition files",),
    "data_check": lambda L: (f"{L.data_check}",),
    "folds": lambda L: (f"{L.folds_file}",),
    "fold": lambda L: (f"{L.fold('<model>', '<k>').dir}/",),
    "model_test": lambda L: (f"{L.model('<model>').test}/",),
    "model_oof_tta": lambda L: (f"{L.model('<model>').oof_tta}/",),
    "model_test_folds": lambda L: (f"{L.model('<model>').test_fold('<k>')}/",),
    "pseudo_labels": lambda L: (f"{L.pseudo('<r>').dir}/",),
    "ensemble": lambda L: (f"{L.ensemble.dir}/",),
    "round_ensemble": lambda L: (f"{L.ensemble_of('<r>').dir}/",),
    "tune": lambda L: (f"{L.tune.json}", f"{L.tune.dir}/"),
    "submission": lambda L: (f"{L.submission}",),
    "holdout_truth": lambda L: (f"{L.holdout_truth}",),
    "evaluation": lambda L: (f"{L.evaluate.dir}/",),
    "report": lambda L: (f"{L.report.dir}/",),
}


@dataclass(frozen=True)
class Stage:
    name: str
    target: str  # "module:function", called as function(cfg, **options)
    help: str
    reads: tuple[str, ...]
    writes: tuple[str, ...]
    scope: Scope

    @property
    def narrows(self) -> bool:
        """Whether the stage takes --model / --fold."""
        return self.scope == "fold"

    def describe(self, layout: Layout) -> tuple[list[str], list[str]]:
        """(reads, writes) as paths of ``layout``."""
        return ([p for a in self.reads for p in ARTIFACTS[a](layout)],
                [p for a in self.writes for p in ARTIFACTS[a](layout)])


STAGES: tuple[Stage, ...] = (
    Stage("check", "segkit.stages.check:run", "read every image and mask once; stop at the first bad file",
          reads=("competition",), writes=("data_check",), scope="data"),
    Stage("folds", "segkit.stages.folds:run", "build folds/<competition>.csv",
          reads=("competition",), writes=("folds",), scope="data"),
    Stage("train", "segkit.stages.train:run", "train models x folds (all unless narrowed)",
          reads=("competition", "folds", "pseudo_labels"), writes=("fold",), scope="fold"),
    Stage("predict", "segkit.stages.predict:run", "predict test images with TTA, per model (and re-predict the OOF)",
          reads=("competition", "folds", "fold"), writes=("model_test", "model_oof_tta", "model_test_folds"),
          scope="fold"),
    Stage("ensemble", "segkit.stages.ensemble:run", "ensemble OOF and test probabilities",
          reads=("competition", "folds", "fold", "model_test", "model_oof_tta"), writes=("ensemble",),
          scope="all"),
    # Rounds of pseudo-labelling run the train, predict and ensemble stages again on each round's config, so this
    # entry is the pipeline's (segkit.pipeline.pseudo_rounds), the selection itself the pseudo module's.
    Stage("pseudo", "segkit.pipeline:pseudo_rounds",
          "select confident test images as pseudo labels (and go through pseudo.rounds rounds)",
          reads=("folds", "model_test_folds"),
          writes=("pseudo_labels", "fold", "model_test", "model_oof_tta", "model_test_folds", "round_ensemble"),
          scope="all"),
    Stage("tune", "segkit.stages.tune:run", "choose thresholds, min areas, clean-up on OOF",
          reads=("competition", "folds", "fold", "ensemble", "round_ensemble"), writes=("tune",), scope="all"),
    Stage("submit", "segkit.stages.submit:run", "write and validate submissions/<experiment>.csv",
          reads=("competition", "ensemble", "round_ensemble", "tune"), writes=("submission", "holdout_truth"),
          scope="all"),
    Stage("evaluate", "segkit.stages.evaluate:run",
          "every metric of the tuned OOF (and holdout) predictions: per image, class and split, and their table",
          reads=("competition", "folds", "ensemble", "round_ensemble", "tune"), writes=("evaluation",), scope="all"),
    Stage("report", "segkit.stages.report:run", "write runs/<experiment>/report/",
          reads=("competition", "fold", "ensemble", "round_ensemble", "tune", "submission", "evaluation"),
          writes=("report",), scope="all"),
)

BY_NAME: dict[str, Stage] = {s.name: s for s in STAGES}


def made_by(artifact: str) -> str:
    """The stage that writes ``artifact`` (for messages that say what to run first)."""
    return next(s.name for s in STAGES if artifact in s.writes)


def final_ensemble_maker(layout: Layout) -> str:
    """The stage that makes the ensemble tuning and submission read: the ensemble stage, or with pseudo rounds the
    pseudo stage (which makes each round's ensemble)."""
    return made_by("round_ensemble" if layout.final_round else "ensemble")


def final_store(cfg, split: str):
    """The final ensemble's complete ``oof`` or ``test`` store, its classes checked against the config; a missing
    store is an error naming the stage to run first."""
    layout = cfg.layout
    folder = getattr(layout.final_ensemble, split)
    if not ProbStore.is_complete(folder):
        raise SegkitError(f"{folder}: no complete ensemble {split.upper() if split == 'oof' else split} store; run "
                          f"`segkit {final_ensemble_maker(layout)}` first")
    store = ProbStore(folder)
    if list(store.classes) != list(cfg.data.classes):
        raise DataError(f"{folder}: classes {store.classes} differ from data.classes {cfg.data.classes}")
    return store


def markdown_table() -> str:
    """The stages as the README's pipeline table shows them (a test keeps the two equal)."""
    layout = pattern()

    def cell(paths: list[str]) -> str:
        return ", ".join(p if " " in p else f"`{p}`" for p in paths)

    rows = ["| stage | command | reads | writes |", "|---|---|---|---|"]
    for stage in STAGES:
        reads, writes = stage.describe(layout)
        narrow = " [--model M] [--fold K]" if stage.narrows else ""
        rows.append(f"| {stage.name} | `segkit {stage.name} --config CFG{narrow}` | {cell(reads)} | {cell(writes)} |")
    return "\n".join(rows) + "\n"


def load(stage: Stage) -> Callable:
    """The stage's function (importing its module now: each command imports only what it runs)."""
    module, _, func = stage.target.partition(":")
    return getattr(importlib.import_module(module), func)


__all__ = ["ARTIFACTS", "BY_NAME", "STAGES", "Scope", "Stage", "final_ensemble_maker", "load", "made_by",
           "markdown_table"]
