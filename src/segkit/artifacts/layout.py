"""Where every artifact of an experiment lives. Stages ask this module for paths and never spell one themselves
(a test scans the package for hand-made ones), so a change of layout is a change here and nowhere else.

::

    runs/<experiment>/
      data_check.json            check: what the data check saw
      fingerprint.json           check: the data's facts a recipe is planned from (segkit.data.fingerprint)
      <model>/fold<k>/           train: last.pt, best.pt, snapshot<c>.pt, metrics.csv, summary.json, oof/, stamp.json;
                                 with train.average: ingredient<e>.pt while training, best_epoch.pt (best.pt is
                                 then the average); predict.snapshot_merge weights: weights_mean.pt and its
                                 stamp
      <model>/test/              predict: the model's test probabilities (every fold, TTA), stamp.json
      <model>/oof_tta/           predict (predict.repredict_oof): each fold's validation images re-predicted by that
                                 fold's checkpoints with TTA; fold<k>.stamp.json per fold
      <model>/test_folds/        predict, when a pseudo round follows: fold<k>/, the test images predicted by fold
                                 k's checkpoints alone (what the next round's fold k takes its labels from)
      ensemble/                  ensemble: oof/, test/, cv.csv, choice.json, state.json, stamp.json
      pseudo/round<r>/           pseudo: fold<k>/ (the labels fold k trains on: a store of 0/255 masks from fold
                                 k's models of the round before), selection.csv, stamp.json
      <model>_pl<r>/             the models of pseudo round r, laid out like <model>/
      ensemble_pl<r>/            the ensemble of pseudo round r, laid out like ensemble/
      tune.json, tune/           tune: the chosen post-processing; tune/ holds oof_scores.csv, plots, stamp.json
      holdout_truth.csv          submit, with data.holdout_fraction: the held-out images' truth as a solution file
      evaluate/                  evaluate: metrics.csv (every metric per split and class), per_image_oof.csv,
                                 per_image_holdout.csv (per image and class), per_volume_<split>.csv (volume
                                 competitions: per volume and class, in mm), objects_<split>.csv (instance
                                 competitions: per image), evaluate.json, stamp.json
      report/                    report: report.md, plots, stamp.json
      export/                    export: <model>/fold<k>/<checkpoint>.ts and .onnx, each with a .json (its meta
                                 and its check against PyTorch), export.json, stamp.json
      quality/                   ablate: baseline/, loss/ (and slices/) (experiments of their own), tiles/<model>/,
                                 one_axis/<model>/, single_epoch/<model>/, one_scale/<model>/, quality.json,
                                 quality.md
      stamps/                    the stamps of the units whose outputs have no folder of their own (check, submit)
      extensions/<name>/         what a stage added by a config's imports writes (README: Extending segkit)
      lock.json                  held while a command writes the experiment: its PID, host, start and command
    folds/<competition>.csv      folds (committed with the code: part of reproducibility)
    submissions/<experiment>.csv submit
    submissions/<experiment>_volumes/<case>.nii.gz   submit, volume competitions: label volumes, the source's affine

A *stamp* (``stamp.json``) is written after the outputs of a unit of work and records what decided them
(``segkit.artifacts.freshness``). Probability stores have their own inner layout (``<id>.npy`` + ``manifest.json``,
``segkit.artifacts.probs``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from segkit.errors import DataError

STAMP = "stamp.json"
ROUND_SUFFIX = "_pl"  # <model>_pl<r>, ensemble_pl<r>: the models and ensemble of pseudo round r
_SNAPSHOT = re.compile(r"^snapshot(\d+)\.pt$")
_INGREDIENT = re.compile(r"^ingredient(\d+)\.pt$")
_FOLD = re.compile(r"^fold(\d+)$")


@dataclass(frozen=True)
class FoldPaths:
    """One model's fold: its checkpoints, training log, summary and OOF store."""

    dir: Path

    @property
    def last(self) -> Path:
        return self.dir / "last.pt"

    @property
    def best(self) -> Path:
        return self.dir / "best.pt"

    def checkpoint(self, which: str) -> Path:
        """``best``, ``last`` or ``best_epoch`` (``predict.checkpoint``)."""
        return self.dir / f"{which}.pt"

    def snapshot(self, cycle: int) -> Path:
        return self.dir / f"snapshot{cycle}.pt"

    def snapshots(self) -> list[Path]:
        """The cycle snapshots on disk, in cycle order."""
        if not self.dir.is_dir():
            return []
        found = [(int(m.group(1)), p) for p in self.dir.iterdir() if (m := _SNAPSHOT.match(p.name))]
        return [p for _, p in sorted(found)]

    def ingredient(self, epoch: int) -> Path:
        """The weights at the end of ``epoch``, kept for the fold's weight average (train.average)."""
        return self.dir / f"ingredient{epoch}.pt"

    def ingredients(self) -> dict[int, Path]:
        """The averaging ingredients on disk, by epoch."""
        if not self.dir.is_dir():
            return {}
        return dict(sorted((int(m.group(1)), p) for p in self.dir.iterdir() if (m := _INGREDIENT.match(p.name))))

    @property
    def best_epoch(self) -> Path:
        """With train.average, the best single epoch's weights (best.pt then holds the average)."""
        return self.dir / "best_epoch.pt"

    @property
    def snapshot_average(self) -> Path:
        """The mean of the weights the fold predicts with (predict.snapshot_merge: weights): one network."""
        return self.dir / "weights_mean.pt"

    @property
    def snapshot_average_stamp(self) -> Path:
        return self.dir / "weights_mean.stamp.json"

    @property
    def oof(self) -> Path:
        return self.dir / "oof"

    @property
    def metrics(self) -> Path:
        return self.dir / "metrics.csv"

    @property
    def summary(self) -> Path:
        return self.dir / "summary.json"

    @property
    def stamp(self) -> Path:
        return self.dir / STAMP


@dataclass(frozen=True)
class ModelPaths:
    """One model: its folds and the stores predicted from all of them."""

    dir: Path

    def fold(self, k: int) -> FoldPaths:
        return FoldPaths(self.dir / f"fold{k}")

    def folds(self) -> list[tuple[int, FoldPaths]]:
        """The fold folders on disk, by fold number."""
        if not self.dir.is_dir():
            return []
        found = [(int(m.group(1)), p) for p in self.dir.iterdir() if p.is_dir() and (m := _FOLD.match(p.name))]
        return [(k, FoldPaths(p)) for k, p in sorted(found)]

    @property
    def test(self) -> Path:
        return self.dir / "test"

    @property
    def test_stamp(self) -> Path:
        return self.test / STAMP

    @property
    def oof_tta(self) -> Path:
        return self.dir / "oof_tta"

    def test_fold(self, k: int) -> Path:
        """The test probabilities of fold k's checkpoints alone (written when a pseudo round follows)."""
        return self.dir / "test_folds" / f"fold{k}"

    def test_fold_stamp(self, k: int) -> Path:
        return self.test_fold(k) / STAMP


def part_stamp(store: Path, k: int) -> Path:
    """The stamp of fold k's images in a store that several folds fill (a re-predicted OOF store)."""
    return Path(store) / f"fold{k}.{STAMP}"


@dataclass(frozen=True)
class EnsemblePaths:
    dir: Path

    @property
    def oof(self) -> Path:
        return self.dir / "oof"

    @property
    def test(self) -> Path:
        return self.dir / "test"

    @property
    def cv(self) -> Path:
        return self.dir / "cv.csv"

    @property
    def choice(self) -> Path:
        return self.dir / "choice.json"

    @property
    def state(self) -> Path:
        """What the chosen method combines test images with (``Method.state``): what an offline bundle restores."""
        return self.dir / "state.json"

    @property
    def stamp(self) -> Path:
        return self.dir / STAMP


@dataclass(frozen=True)
class ExportPaths:
    """``segkit export``: every fold checkpoint the ensemble predicts with, as TorchScript and / or ONNX."""

    dir: Path

    def file(self, model: str, k: int, checkpoint: Path, suffix: str) -> Path:
        """The export of fold k's ``checkpoint`` (its file name, e.g. best.pt) ending in ``suffix``."""
        return self.dir / model / f"fold{k}" / (checkpoint.stem + suffix)

    @property
    def json(self) -> Path:
        """What was exported, with each export's check against PyTorch (written last)."""
        return self.dir / "export.json"

    @property
    def stamp(self) -> Path:
        return self.dir / STAMP


@dataclass(frozen=True)
class PseudoPaths:
    """One pseudo-labelling round: a label store per fold (fold k's models train on ``labels(k)`` only)."""

    dir: Path

    def labels(self, k: int) -> Path:
        return self.dir / f"fold{k}"

    @property
    def selection(self) -> Path:
        return self.dir / "selection.csv"

    @property
    def stamp(self) -> Path:
        return self.dir / STAMP


@dataclass(frozen=True)
class TunePaths:
    json: Path
    dir: Path

    @property
    def scores(self) -> Path:
        return self.dir / "oof_scores.csv"

    def plot(self, search: str, cls: str) -> Path:
        return self.dir / f"{search}_{safe_name(cls)}.png"

    @property
    def stamp(self) -> Path:
        return self.dir / STAMP


@dataclass(frozen=True)
class EvaluatePaths:
    """The full metric table of the final predictions (``segkit evaluate``): the table, each split's values per
    image and class, the same as JSON, and the unit's stamp."""

    dir: Path

    @property
    def metrics(self) -> Path:
        return self.dir / "metrics.csv"

    @property
    def per_image_oof(self) -> Path:
        return self.dir / "per_image_oof.csv"

    @property
    def per_image_holdout(self) -> Path:
        return self.dir / "per_image_holdout.csv"

    def objects(self, split: str) -> Path:
        """Instance competitions: one row per image of its decoded objects' scores."""
        return self.dir / f"objects_{split}.csv"

    def per_volume(self, split: str) -> Path:
        """A volume competition's scores per volume and class (``split``: oof or holdout)."""
        return self.dir / f"per_volume_{split}.csv"

    @property
    def json(self) -> Path:
        return self.dir / "evaluate.json"

    @property
    def stamp(self) -> Path:
        return self.dir / STAMP


@dataclass(frozen=True)
class ReportPaths:
    dir: Path

    @property
    def markdown(self) -> Path:
        return self.dir / "report.md"

    def plot(self, name: str) -> Path:
        return self.dir / f"{safe_name(name)}.png"

    @property
    def stamp(self) -> Path:
        return self.dir / STAMP


@dataclass(frozen=True)
class QualityPaths:
    """The ablation (``segkit ablate``): its extra experiments live under ``runs`` (they are experiments with a
    layout of their own), the tiled re-prediction under ``tiles/<model>``, the one-axis one under
    ``one_axis/<model>``."""

    dir: Path

    @property
    def runs(self) -> Path:
        return self.dir

    def tiles(self, model: str) -> Path:
        return self.dir / "tiles" / model

    def single_epoch(self, model: str) -> Path:
        """The first model's folds predicted by their best single epoch (train.average made best.pt an average)."""
        return self.dir / "single_epoch" / model

    def one_scale(self, model: str) -> Path:
        """The first model's OOF re-predicted with the recipe's TTA at the native scale alone."""
        return self.dir / "one_scale" / model

    def one_axis(self, model: str) -> Path:
        """The OOF re-predicted with the recipe's TTA along data.volumes.axis alone (no orthogonal views)."""
        return self.dir / "one_axis" / model

    @property
    def json(self) -> Path:
        return self.dir / "quality.json"

    @property
    def markdown(self) -> Path:
        return self.dir / "quality.md"


@dataclass(frozen=True)
class Layout:
    """Every path of one experiment. ``round`` is the pseudo-labelling round the config trains in
    (``pseudo.round``), ``final_round`` the last round the experiment goes to (``pseudo.rounds``): tuning and
    submission read the final round's ensemble."""

    runs: Path
    experiment: str
    folds_file: Path
    submissions: Path
    round: int = 0
    final_round: int = 0

    @classmethod
    def of(cls, cfg) -> "Layout":
        """The layout of a ``segkit.config.Config``."""
        folds_file = Path(cfg.folds.file) if cfg.folds.file else Path(cfg.paths.folds) / f"{cfg.competition}.csv"
        return cls(Path(cfg.paths.runs), cfg.experiment, folds_file, Path(cfg.paths.submissions),
                   round=cfg.pseudo.round, final_round=max(cfg.pseudo.rounds, cfg.pseudo.round))

    # ------------------------------------------------------------------------------------------------- the run

    @property
    def run_dir(self) -> Path:
        return self.runs / self.experiment

    @property
    def data_check(self) -> Path:
        return self.run_dir / "data_check.json"

    @property
    def fingerprint(self) -> Path:
        return self.run_dir / "fingerprint.json"

    def stamp(self, unit: str) -> Path:
        """The stamp of a unit whose outputs have no folder of their own (``check``, ``submit``)."""
        return self.run_dir / "stamps" / f"{safe_name(unit)}.json"

    @property
    def lock(self) -> Path:
        """Held while a command writes the experiment (``segkit.artifacts.lock``)."""
        return self.run_dir / "lock.json"

    def extension(self, name: str) -> Path:
        """The folder of a stage added from outside segkit (a module of the config's ``imports``)."""
        return self.run_dir / "extensions" / safe_name(name)

    @property
    def submission(self) -> Path:
        return self.submissions / f"{self.experiment}.csv"

    @property
    def submission_volumes(self) -> Path:
        """A volume competition's label volumes (NIfTI, one a test case), beside the csv."""
        return self.submissions / f"{self.experiment}_volumes"

    def submission_volume(self, case: str) -> Path:
        return self.submission_volumes / f"{check_id(case, 'a volume name')}.nii.gz"

    @property
    def holdout_truth(self) -> Path:
        return self.run_dir / "holdout_truth.csv"

    def tmp_roots(self) -> list[Path]:
        """The folders that hold this experiment's files, where leftovers of killed writes may lie."""
        return [self.run_dir, self.folds_file.parent, self.submissions]

    # ----------------------------------------------------------------------------------------------- models

    def model(self, name: str) -> ModelPaths:
        return ModelPaths(self.run_dir / check_name(name, "model"))

    def fold(self, model: str, k: int) -> FoldPaths:
        return self.model(model).fold(k)

    # -------------------------------------------------------------------------------------- ensemble, rounds

    def ensemble_of(self, round: int) -> EnsemblePaths:
        """The ensemble of pseudo round ``round`` (0: the models without pseudo labels)."""
        return EnsemblePaths(self.run_dir / ("ensemble" if round == 0 else f"ensemble{ROUND_SUFFIX}{round}"))

    @property
    def ensemble(self) -> EnsemblePaths:
        """The ensemble of this config's round."""
        return self.ensemble_of(self.round)

    @property
    def final_ensemble(self) -> EnsemblePaths:
        """The ensemble that tuning, submission and the report use: that of the experiment's last round."""
        return self.ensemble_of(self.final_round)

    def pseudo(self, round: int) -> PseudoPaths:
        return PseudoPaths(self.run_dir / "pseudo" / f"round{round}")

    # -------------------------------------------------------------------------- tune, evaluate, report, ablate

    @property
    def tune(self) -> TunePaths:
        return TunePaths(self.run_dir / "tune.json", self.run_dir / "tune")

    @property
    def evaluate(self) -> EvaluatePaths:
        return EvaluatePaths(self.run_dir / "evaluate")

    @property
    def export(self) -> ExportPaths:
        return ExportPaths(self.run_dir / "export")

    @property
    def report(self) -> ReportPaths:
        return ReportPaths(self.run_dir / "report")

    @property
    def quality(self) -> QualityPaths:
        return QualityPaths(self.run_dir / "quality")


def round_name(name: str, round: int) -> str:
    """``<name>_pl<r>``: a model's name in pseudo round r (the round suffix of an earlier round is replaced)."""
    root, sep, tail = name.rpartition(ROUND_SUFFIX)
    base = root if sep and tail.isdigit() else name
    return f"{base}{ROUND_SUFFIX}{round}"


def safe_name(name: str) -> str:
    """A name made safe as one file name (class names of plots, unit names of stamps)."""
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in str(name)).lstrip(".") or "_"


def check_id(image_id: str, where: str = "") -> str:
    """An image id (from a train csv, a sample submission, a fold file) that becomes a file name — a store's
    ``<id>.npy``, a pseudo label — must be one plain path component: no separator, no ``..``, no leading dot, no NUL
    byte, not absolute. So no csv can make segkit read or write outside the competition's and the run's folders."""
    if (not image_id or "/" in image_id or "\\" in image_id or "\0" in image_id or image_id.startswith(".")
            or Path(image_id).is_absolute()):
        raise DataError(f"{where + ': ' if where else ''}id {image_id!r} is not a plain file name (a path "
                        f"separator, '..', a leading dot or a NUL byte); an id may not point outside the "
                        f"competition's folders")
    return image_id


def check_name(name: str, what: str) -> str:
    """A config-given name that becomes a folder: one plain path component, never a way out of the run."""
    if not name or name in (".", "..") or "/" in name or "\\" in name or "\0" in name or name.startswith("."):
        raise ValueError(f"{what} name {name!r} cannot name a folder")
    return name


def pattern() -> Layout:
    """The layout with placeholders for names, as the README and ``--help`` show it."""
    return Layout(Path("runs"), "<experiment>", Path("folds") / "<competition>.csv", Path("submissions"))


__all__ = ["EnsemblePaths", "EvaluatePaths", "FoldPaths", "Layout", "ModelPaths", "PseudoPaths", "QualityPaths",
           "ReportPaths", "STAMP", "TunePaths", "check_name", "part_stamp", "pattern", "round_name", "safe_name"]
