"""The fold file: which fold validates each train image. ``segkit folds`` writes it once (and it is committed);
every later stage reads it through here, checked against the competition's train ids."""

from __future__ import annotations

from typing import TypeVar

import pandas as pd

from segkit.artifacts.layout import check_id
from segkit.data.competition import Competition, read_csv
from segkit.errors import ConfigError, DataError

T = TypeVar("T")


def load_folds(cfg, comp: Competition | None = None) -> pd.DataFrame:
    """The fold file of ``cfg`` (id as str, fold as int); checked against the competition's train ids when given."""
    path = cfg.layout.folds_file
    if not path.exists():
        raise DataError(f"{path}: fold file missing; run `segkit folds --config {cfg.source or 'CFG'}` first")
    frame = read_csv(path, ["id", "fold"])
    for i, image_id in enumerate(frame["id"]):
        check_id(image_id, f"{path} row {i + 2}")
    try:
        frame["fold"] = frame["fold"].astype(int)
    except ValueError:
        raise DataError(f"{path}: column 'fold' must hold integers") from None
    if frame["id"].duplicated().any():
        raise DataError(f"{path}: duplicate id {frame['id'][frame['id'].duplicated()].iloc[0]!r}")
    if comp is not None:
        want, have = set(comp.train_ids), set(frame["id"])
        if want != have:
            extra, missing = sorted(have - want), sorted(want - have)
            detail = f"{len(missing)} train ids missing (e.g. {missing[:1]})" if missing else ""
            if extra:
                detail += ("; " if detail else "") + f"{len(extra)} unknown ids (e.g. {extra[:1]})"
            raise DataError(f"{path}: does not match the train set: {detail}. Delete it to rebuild the folds")
    return frame


def fold_numbers(frame: pd.DataFrame) -> list[int]:
    """The fold numbers of a fold table, ascending."""
    return sorted(int(f) for f in frame["fold"].unique())


def check_fold(frame: pd.DataFrame, fold: int, path=None) -> int:
    """``fold`` if the fold table (read from ``path``) has it, else a ConfigError listing the folds it has."""
    folds = fold_numbers(frame)
    if fold not in folds:
        raise ConfigError(f"--fold {fold}: the fold file{f' {path}' if path else ''} has folds {folds}")
    return fold


def fold_ids(frame: pd.DataFrame, fold: int) -> tuple[list[str], list[str]]:
    """(training ids, validation ids) of one fold."""
    check_fold(frame, fold)
    is_val = frame["fold"].astype(int) == fold
    return frame.loc[~is_val, "id"].astype(str).tolist(), frame.loc[is_val, "id"].astype(str).tolist()


def ids_of(frame: pd.DataFrame, folds) -> list[str]:
    """The ids validated by any of ``folds``, in file order."""
    return frame.loc[frame["fold"].isin(list(folds)), "id"].astype(str).tolist()


def fold_of(frame: pd.DataFrame) -> dict[str, int]:
    """id -> fold of a fold table."""
    return dict(zip(frame["id"].astype(str), frame["fold"].astype(int)))


__all__ = ["check_fold", "fold_ids", "fold_numbers", "fold_of", "ids_of", "load_folds"]
