"""Every ``segkit`` command as one registry: the pipeline's stages, in order, and the commands beside them (``run``,
``ablate``, ``export``, ``package``, the tools). The command line, ``segkit run`` and the README's command tables
are all built from it, so they can never disagree on what the commands are, what they take or in which order the
stages run.

Each stage declares what it reads and what it writes, by the names of ``ARTIFACTS`` (every one a place of
``segkit.artifacts.layout``), and how far it can be narrowed:

- ``data``: experiment-wide preparation that any slice of the work needs (check, folds);
- ``fold``: works per model x fold, so it takes ``--model`` and ``--fold`` (train, predict);
- ``all``: needs every fold of every model (ensemble and everything after it); ``segkit run --model/--fold``
  stops before the first of these.

What decides a stage's outputs (the fingerprint of its inputs) is declared by the stage's own units of work
(``segkit.artifacts.freshness``); this table is what the commands *are*. Their modules are named here as strings
and imported only when the command runs, so ``segkit --help`` stays instant. A module listed in a config's
``imports`` may add a stage (``register_stage``, with ``register_artifact`` for what it writes) or a command
(``register``): the command line imports those modules before it builds its parser.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Callable, Literal

from segkit.artifacts.layout import Layout, pattern
from segkit.artifacts.probs import ProbStore
from segkit.errors import DataError, SegkitError

Scope = Literal["data", "fold", "all"]

# Every artifact a stage may read or write, as places of the layout (folders end in "/"); the competition's own
# files are the config's (data.*).
ARTIFACTS: dict[str, Callable[[Layout], tuple[str, ...]]] = {
    "competition": lambda L: ("competition files",),
    "data_check": lambda L: (f"{L.data_check}", f"{L.fingerprint}"),
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
class Option:
    """One argument of a command, as ``argparse.add_argument`` takes it."""

    flags: tuple[str, ...]
    kwargs: dict[str, Any] = field(default_factory=dict)

    @property
    def dest(self) -> str:
        return self.kwargs.get("dest") or self.flags[0].lstrip("-").replace("-", "_")


def option(*flags: str, **kwargs: Any) -> Option:
    return Option(tuple(flags), kwargs)


@dataclass(frozen=True)
class Command:
    """A ``segkit`` sub-command: ``target`` ("module:function") is called as ``function(cfg, **options)`` for a
    config command (``--config CFG key=value...``), or ``function(args)`` for a tool (its own arguments)."""

    name: str
    target: str
    help: str
    options: tuple[Option, ...] = ()
    usage: str = ""  # how the README's command table shows a call of it
    description: str = ""  # --help's longer text (default: help)
    config: bool = True  # takes --config CFG and overrides
    # writes the experiment: holds its lock (segkit.artifacts.lock) for the length of the command
    locks: bool = True
    scope: Scope = "all"

    @property
    def narrows(self) -> bool:
        """Whether the command takes --model / --fold."""
        return self.scope == "fold"

    def describe(self, layout: Layout) -> str:
        """The command's --help description."""
        return self.description or self.help


@dataclass(frozen=True)
class Stage(Command):
    """A stage of the pipeline: a config command that ``segkit run`` runs in order."""

    reads: tuple[str, ...] = ()
    writes: tuple[str, ...] = ()

    def paths(self, layout: Layout) -> tuple[list[str], list[str]]:
        """(reads, writes) as paths of ``layout``."""
        return ([p for a in self.reads for p in ARTIFACTS[a](layout)],
                [p for a in self.writes for p in ARTIFACTS[a](layout)])

    def describe(self, layout: Layout) -> str:
        reads, writes = self.paths(layout)
        return f"{self.help}. Reads {', '.join(reads)}; writes {', '.join(writes)}."


STAGES: list[Stage] = [
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
          writes=("report",), scope="all", locks=False),
]

RUN_HELP = "every stage in order, skipping what is complete and up to date"
ABLATE_HELP = "what each trick of a recipe is worth: a baseline, the recipe, one trick added at a time"
EXPORT_HELP = "every checkpoint the ensemble predicts with as TorchScript / ONNX, checked against PyTorch"
PLAN_HELP = "a recipe planned from the data, the machine and a time budget"
PACKAGE_HELP = "an offline bundle for a code competition: models, config, tuning, ensemble, wheels, infer.py"


def _ints(text: str) -> list[int]:
    import argparse  # here: only the command line parses

    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of fold numbers") from None


def _names(text: str) -> list[str]:
    return text.split(",")


# The commands beside the stages, in the order --help and the README list them.
OTHERS: list[Command] = [
    Command("demo-data", "segkit.data.demo:main", "write the built-in synthetic competition", config=False,
            locks=False, usage="segkit demo-data --out data/demo",
            options=(option("--out", required=True), option("--n-train", type=int), option("--n-test", type=int),
                     option("--size", type=int), option("--classes", type=int, help="1 = binary; more = multiclass"),
                     option("--seed", type=int))),
    Command("run", "segkit.pipeline:run", RUN_HELP, scope="fold", usage="segkit run --config CFG"),
    Command("ablate", "segkit.ablate:main", ABLATE_HELP, description=f"{ABLATE_HELP} (runs/<experiment>/quality/)",
            usage="segkit ablate --config CFG [--folds 0,1] [--metrics iou]",
            options=(option("--folds", type=_ints, default=[],
                            help="folds the ablation trains and scores, e.g. 0,1 (default: all)"),
                     option("--metrics", type=_names, default=[],
                            help="more metrics to report beside the config's, e.g. iou,pixel_accuracy"),
                     option("--no-variants", dest="with_variants", action="store_false",
                            help="skip the baseline and loss-only trainings: score only the recipe's own rows"),
                     option("--train-only", action="store_true", help="train and predict, do not score"))),
    Command("export", "segkit.stages.export:run", EXPORT_HELP, description=f"{EXPORT_HELP} (runs/<experiment>/export/)",
            usage="segkit export --config CFG [--format torchscript|onnx|both]",
            options=(option("--format", default="both", choices=["torchscript", "onnx", "both"]),
                     option("--tolerance", type=float, default=1e-3,
                            help="largest difference of probabilities from PyTorch (float32) an export may have"))),
    Command("package", "segkit.stages.package:run", PACKAGE_HELP, locks=False,
            description=f"{PACKAGE_HELP}; the README's \"Submitting to a code competition\" shows how a "
                        f"notebook runs it",
            usage="segkit package --config CFG --out DIR",
            options=(option("--out", required=True, help="the bundle's folder (must not exist, or be an earlier "
                            "bundle)"),
                     option("--models", default="eager", choices=["eager", "torchscript", "onnx"],
                            help="which networks the bundle carries: the checkpoints' weights (eager, the default) or "
                            "the exports of `segkit export`"),
                     option("--weights", default="fp16", choices=["fp16", "fp32"],
                            help="eager weights in float16 (half the size; checked against the checkpoints on test "
                            "images) or float32 (the submission equals `segkit submit`'s byte for byte)"),
                     option("--target", default="kaggle-gpu", choices=["kaggle-gpu", "kaggle-cpu", "any"],
                            help="the notebook it runs in: the wheels carry what that one lacks (any: all but "
                            "torch and torchvision)"),
                     option("--no-wheels", dest="wheels", action="store_false",
                            help="leave out the wheels (the notebook has every package)"),
                     option("--python-version", help="wheels for this Python (e.g. 3.12) instead of the running "
                            "one's"))),
    Command("plan", "segkit.plan:run", PLAN_HELP,
            description=f"{PLAN_HELP}: the data's fingerprint, the networks' speed measured here, and rules; every "
                        f"planned key says why",
            usage="segkit plan --config DATA.yaml --budget 45m --out configs/NAME.yaml",
            options=(option("--budget", required=True, help="the time the whole run may take, e.g. 45m, 2h"),
                     option("--out", required=True, help="the config to write (its base: --config)"),
                     option("--device", default="auto", help="where the run will train: auto, cpu, cuda"),
                     option("--force", action="store_true", help="replace --out if it exists"))),
    Command("score", "segkit.tools.score:main", "score an RLE csv against a truth csv as the competition would",
            config=False, locks=False, usage="segkit score SUBMISSION --truth CSV --metric NAME",
            options=(option("submission"), option("--truth", required=True),
                     option("--metric", required=True, help="a metric name: tgs, dice, iou, object_ap, hd95, "
                            "abs_rvd, ... (the README's Metrics section lists them all)"),
                     option("--sample", help="sample_submission.csv (image sizes / id format)"),
                     option("--shape", help="HxW of every image when no sample gives it, e.g. 101x101"),
                     option("--images", help="folder of the images (their sizes), instead of --shape"),
                     option("--order", choices=["F", "C"], default="F",
                            help="RLE pixel order (F: Kaggle column-major)"),
                     option("--relative", action="store_true", help="SIIM-style relative RLE starts"),
                     option("--instances", action="store_true", help="one row per object (DSB): each image's rows "
                            "are its objects, scored as label maps (object_ap)"))),
    Command("validate-submission", "segkit.submission.validate:main",
            "check a submission against the sample submission", config=False, locks=False,
            usage="segkit validate-submission SUBMISSION --sample CSV",
            options=(option("submission"), option("--sample", required=True),
                     option("--shape", help="HxW to check RLE runs against, e.g. 101x101"),
                     option("--images", help="folder of the images (their sizes), instead of --shape"),
                     option("--relative", action="store_true", help="SIIM-style relative RLE starts"),
                     option("--instances", action="store_true", help="one row per object (DSB, Airbus): objects "
                            "of an image may not overlap; an image without objects has one empty row"))),
]

BY_NAME: dict[str, Command] = {c.name: c for c in [*STAGES, *OTHERS]}


def commands() -> list[Command]:
    """Every command in --help order: demo-data, the stages, then the others."""
    return [OTHERS[0], *STAGES, *OTHERS[1:]]


def register(command: Command) -> Command:
    """Add a command beside the stages (from a module a config ``imports``)."""
    if command.name in BY_NAME:
        raise ValueError(f"command {command.name!r} registered twice")
    OTHERS.append(command)
    BY_NAME[command.name] = command
    return command


def register_stage(stage: Stage, after: str) -> Stage:
    """Add a stage to the pipeline, right after the stage ``after``: ``segkit run`` runs it in that place and
    ``segkit <name>`` runs it alone. What it reads and writes must be names of ``ARTIFACTS``."""
    if stage.name in BY_NAME:
        raise ValueError(f"command {stage.name!r} registered twice")
    unknown = [a for a in (*stage.reads, *stage.writes) if a not in ARTIFACTS]
    if unknown:
        raise ValueError(f"stage {stage.name!r}: unknown artifact(s) {unknown}; register them first")
    if after not in BY_NAME or not isinstance(BY_NAME[after], Stage):
        raise ValueError(f"stage {stage.name!r}: no stage {after!r} to follow")
    STAGES.insert(STAGES.index(BY_NAME[after]) + 1, stage)
    BY_NAME[stage.name] = stage
    return stage


def register_artifact(name: str, places: Callable[[Layout], tuple[str, ...]]) -> None:
    """Name what a stage added from outside reads or writes, as places of the layout (``Layout.extension``)."""
    if name in ARTIFACTS:
        raise ValueError(f"artifact {name!r} registered twice")
    ARTIFACTS[name] = places


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
        reads, writes = stage.paths(layout)
        narrow = " [--model M] [--fold K]" if stage.narrows else ""
        rows.append(f"| {stage.name} | `segkit {stage.name} --config CFG{narrow}` | {cell(reads)} | {cell(writes)} |")
    return "\n".join(rows) + "\n"


def commands_table() -> str:
    """The commands beside the stages as the README's second table shows them (a test keeps the two equal)."""
    rows = ["| more commands | does |", "|---|---|"]
    for command in OTHERS:
        usage = (command.usage or f"segkit {command.name}").replace("|", "\\|")
        rows.append(f"| `{usage}` | {command.help} |")
    return "\n".join(rows) + "\n"


def load(command: Command) -> Callable:
    """The command's function (importing its module now: each command imports only what it runs)."""
    module, _, func = command.target.partition(":")
    return getattr(importlib.import_module(module), func)


__all__ = ["ARTIFACTS", "BY_NAME", "OTHERS", "STAGES", "Command", "Option", "Scope", "Stage", "commands",
           "commands_table", "final_ensemble_maker", "final_store", "load", "made_by", "markdown_table", "option",
           "register", "register_artifact", "register_stage"]
