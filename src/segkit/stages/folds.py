"""``segkit folds``: assign every labelled image to one of k folds, balanced on what drives the score.

- binary masks: stratified by coverage (empty masks are a bin of their own, non-empty ones binned by coverage
  quantile), so each fold has the same share of empty images and the same spread of object sizes;
- several classes: by the class-presence vector, with iterative stratification (multilabel);
- with ``data.group_column`` (or ``data.slices``: the volumes): grouped (no patient / video / mosaic / volume in
  two folds) and stratified as far as groups allow (StratifiedGroupKFold);
- ``folds.split: blocks``: each volume's slices in index order, cut into contiguous runs, one a fold (the
  sections of one stack, ISBI 2012's 30 slices say, are near copies of their neighbours).

Output ``folds/<competition>.csv``: id, fold, stratum[, group]. The file is part of the experiment's
reproducibility (commit it); an existing file is reused, and one that no longer matches the data is an error
rather than silently rebuilt. Later stages read it through ``segkit.data.folds``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from iterstrat.ml_stratifiers import MultilabelStratifiedKFold
from sklearn.model_selection import KFold, StratifiedGroupKFold, StratifiedKFold

from segkit.artifacts import atomic
from segkit.artifacts.freshness import Unit
from segkit.config import Config
from segkit.data import Competition
from segkit.data.folds import fold_numbers, load_folds
from segkit.errors import ConfigError, DataError


def coverage_strata(coverage: np.ndarray, bins: int) -> np.ndarray:
    """0 for empty masks, 1..bins for quantile bins of the non-empty coverages."""
    strata = np.zeros(len(coverage), dtype=np.int64)
    nonempty = coverage > 0
    if nonempty.any() and bins > 1:
        edges = np.quantile(coverage[nonempty], np.linspace(0, 1, bins + 1)[1:-1])
        strata[nonempty] = 1 + np.searchsorted(edges, coverage[nonempty], side="right")
    elif nonempty.any():
        strata[nonempty] = 1
    return strata


def _split(strata: np.ndarray, groups: list[str] | None, presence: np.ndarray | None, n_splits: int, seed: int):
    n = len(strata)
    split = dict(n_splits=n_splits, shuffle=True, random_state=seed)
    if groups is not None:
        return StratifiedGroupKFold(**split).split(np.zeros(n), strata, groups)
    if presence is not None:
        return MultilabelStratifiedKFold(**split).split(np.zeros(n), presence)
    counts = np.bincount(strata)
    if counts[counts > 0].min() < n_splits:
        # A stratum smaller than k cannot be spread over every fold; merge the rare strata into the nearest.
        strata = _merge_rare(strata, n_splits)
    if len(np.unique(strata)) < 2:
        return KFold(**split).split(np.zeros(n))
    return StratifiedKFold(**split).split(np.zeros(n), strata)


def _merge_rare(strata: np.ndarray, minimum: int) -> np.ndarray:
    strata = strata.copy()
    for s in np.unique(strata)[::-1]:
        members = strata == s
        if members.sum() < minimum and s > 0:
            strata[members] = s - 1
    return strata


def _blocks(comp: Competition, ids: list[str], n_splits: int) -> np.ndarray:
    """Fold of each id: its volume's slices in index order, cut into ``n_splits`` contiguous runs."""
    if not comp.stacked:
        raise ConfigError("folds.split: blocks needs data.slices or data.volumes (which volume and index each "
                          "image is)")
    where = comp.stacks("train").where_of
    fold = np.empty(len(ids), dtype=np.int64)
    by_volume: dict[str, list[int]] = {}
    for j, image_id in enumerate(ids):
        by_volume.setdefault(where[image_id].volume, []).append(j)
    for members in by_volume.values():
        members.sort(key=lambda j: where[ids[j]].index)
        for k, run in enumerate(np.array_split(np.asarray(members), n_splits)):
            fold[run] = k
    return fold


def build_folds(comp: Competition, cfg: Config) -> pd.DataFrame:
    ids = comp.train_ids
    n_splits = cfg.folds.n_splits
    if len(ids) < n_splits:
        raise DataError(f"folds.n_splits: {n_splits} folds need at least as many images; have {len(ids)}")
    stats = [comp.mask_stats(i) for i in ids]
    areas = np.stack([a for a, _ in stats]).astype(np.float64)
    pixels = np.array([p for _, p in stats], dtype=np.float64)
    coverage = areas.sum(1) / pixels

    how = cfg.folds.stratify
    if how == "auto":
        how = "coverage" if comp.num_classes == 1 else "classes"
    presence = None
    if how == "coverage":
        strata = coverage_strata(coverage, cfg.folds.coverage_bins)
        labels = strata.astype(str)
    elif how == "classes":
        presence = (areas > 0).astype(int)
        labels = np.array(["".join(map(str, row)) for row in presence])
        strata = np.unique(labels, return_inverse=True)[1]
    else:
        strata = np.zeros(len(ids), dtype=np.int64)
        labels = strata.astype(str)

    groups = comp.groups(ids)
    if cfg.folds.split == "blocks":
        fold = _blocks(comp, ids, n_splits)
    else:
        fold = np.full(len(ids), -1, dtype=np.int64)
        for k, (_, val) in enumerate(_split(strata, groups, presence, n_splits, cfg.folds.seed)):
            fold[val] = k
    frame = pd.DataFrame({"id": ids, "fold": fold, "stratum": labels, "coverage": coverage.round(6)})
    if groups is not None:
        frame["group"] = groups
    return frame


def summary(frame: pd.DataFrame) -> pd.DataFrame:
    """Per-fold count, empty share and mean coverage, with the whole set as the last row."""
    rows = []
    for name, part in list(frame.groupby("fold")) + [("all", frame)]:
        rows.append({
            "fold": name,
            "images": len(part),
            "empty %": round(100 * float((part["coverage"] == 0).mean()), 2),
            "mean coverage %": round(100 * float(part["coverage"].mean()), 2),
        })
    return pd.DataFrame(rows)


def run(cfg: Config) -> int:
    comp = Competition(cfg.data, seed=cfg.seed)
    path = cfg.layout.folds_file
    # The fold file is committed and reused as long as it exists: a unit fresh with its output alone.
    unit = Unit(f"folds: {path}", None, [path])
    if unit.fresh():
        frame = load_folds(cfg, comp)
        if frame["fold"].nunique() != cfg.folds.n_splits:
            raise DataError(f"{path}: has {frame['fold'].nunique()} folds but folds.n_splits is "
                            f"{cfg.folds.n_splits}; set folds.file to a new name (or delete this one) to rebuild")
        print(unit.kept(f"{frame['fold'].nunique()} folds, {len(frame)} ids"))
    else:
        frame = build_folds(comp, cfg)
        atomic.write_csv(path, frame)
        print(f"folds: wrote {path}")
    if "coverage" in frame.columns:
        frame["coverage"] = frame["coverage"].astype(float)
        print(summary(frame).to_string(index=False))
    return 0


__all__ = ["build_folds", "coverage_strata", "fold_numbers", "load_folds", "run", "summary"]
