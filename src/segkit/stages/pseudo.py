"""``segkit pseudo``: pseudo-labelling — confident test predictions become extra training images.

Leak-free by construction: fold k's model of round r trains only on labels predicted by models that were never
fitted on fold k's labels, i.e. by the fold-k models of round r - 1 (trained on the other folds, and on labels made
the same way). Pseudo labels from the ensemble of every fold would carry fold k's labels into fold k's training
through the other folds' models, and fold k's OOF score would no longer be out-of-fold. So a round has one label
set per fold. (What remains is the weak selection effect every fold already has: its ``best.pt`` is the epoch that
scored best on fold k's validation images.)

Selection (round r, fold k): the test probabilities of fold k's checkpoints of every model of round r - 1 (written
by predict under ``<model>/test_folds/fold<k>/`` when a round follows), averaged over the models with equal weights
(the ensemble's fitted weights and stacker saw every fold's labels, so they take no part). An image is *confident*
when at least ``pseudo.confident_share`` of its pixels (all classes together) lie below ``pseudo.low`` or above
``pseudo.high``; confident images are binarised at ``pseudo.threshold`` (the pipeline's rule, p > t; multiclass:
the most probable class) and written to ``<run_dir>/pseudo/round<r>/fold<k>/`` as a probability store of 0/255
masks, with ``selection.csv`` listing every (fold, test image) pair's confident share and whether it was taken
(``pseudo.max_images`` keeps the most confident of each fold). A round's selection is a unit of work
(``segkit.artifacts.freshness``): kept while the test stores it selected from and the selection settings are unchanged.

Training with them: a config with ``pseudo.round: r`` trains fold k on its usual training ids *plus* round r's fold-k
labels (``segkit.stages.train.data.pseudo_train_data``). They are test images: they never enter the fold file, so no
fold validates on them. The submission's own test prediction still uses every fold of every model (the ensemble).

Rounds (``pseudo.rounds`` = N): ``segkit pseudo`` (and ``segkit run``) go through rounds 1..N, each selecting from
the models of the round before, then training, predicting and ensembling the models again as ``<model>_pl<r>``
(``round_config``) into the round's own ensemble ``ensemble_pl<r>/``; tuning and submission use the last round's.
The rounds are driven by ``segkit.pipeline``, which runs the train, predict and ensemble stages on each round's
config; this module only selects and names.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd

from segkit.artifacts import atomic
from segkit.artifacts.freshness import Unit, fingerprints
from segkit.artifacts.layout import PseudoPaths, round_name
from segkit.artifacts.probs import ProbStore, ProbWriter, dequantize, image_files, manifest, mean_uint8
from segkit.config import Config
from segkit.data import Competition
from segkit.data.folds import fold_numbers, load_folds
from segkit.errors import DataError
from segkit.threshold import below
from segkit.threshold import binarize as above

SELECTION_COLUMNS = ["fold", "id", "confident_share", "foreground_share"]


def confident_share(q: np.ndarray, low: float, high: float) -> float:
    """Share of the (K, H, W) pixels whose probability is below ``low`` or above ``high`` (exactly, on the stored
    levels: segkit.threshold)."""
    return float((below(q, low) | above(q, high).view(bool)).mean())


def binarize(q: np.ndarray, threshold: float, mode: str = "binary") -> np.ndarray:
    """0/255 uint8 labels: ``p > threshold`` per class; in multiclass mode the most probable class of each pixel
    (background = 1 - the sum of the K classes), so labels never overlap whatever the threshold."""
    if mode == "multiclass":
        p = dequantize(q)
        background = 1.0 - p.sum(0, keepdims=True)
        winner = np.concatenate([background, p]).argmax(0)
        return np.stack([np.where(winner == k + 1, 255, 0) for k in range(p.shape[0])]).astype(np.uint8)
    return above(q, threshold) * np.uint8(255)


def source_models(cfg: Config, r: int) -> list[str]:
    """The models whose fold-k test predictions give round r's fold-k labels: those of round r - 1."""
    return [m.name if r == 1 else round_name(m.name, r - 1) for m in cfg.models]


def source_stores(cfg: Config, r: int, k: int) -> list[Path]:
    return [cfg.layout.model(name).test_fold(k) for name in source_models(cfg, r)]


def selection_unit(cfg: Config, r: int, folds: list[int]) -> tuple[Unit, PseudoPaths]:
    """Round r's selection as a unit of work: what it writes and what decides it."""
    paths = cfg.layout.pseudo(r)
    opts = cfg.pseudo
    inputs = {"test_folds": {str(k): fingerprints(manifest(s) for s in source_stores(cfg, r, k)) for k in folds},
              "mode": cfg.data.mode,
              **{k: getattr(opts, k) for k in ("low", "high", "confident_share", "threshold", "max_images")}}
    outputs = [paths.selection] + [manifest(paths.labels(k)) for k in folds]
    return Unit(f"pseudo: round {r} ({paths.dir})", paths.stamp, outputs, inputs,
                marker=manifest(paths.labels(folds[-1]))), paths


def _fold_sources(cfg: Config, r: int, k: int) -> list[ProbStore]:
    stores = []
    for name, folder in zip(source_models(cfg, r), source_stores(cfg, r, k)):
        if not ProbStore.is_complete(folder):
            how = (f"run `segkit predict` with pseudo.rounds={max(r, cfg.pseudo.rounds)}" if r == 1 else
                   f"`segkit pseudo` (or `segkit run`) with pseudo.rounds >= {r} predicts round {r - 1}'s")
            raise DataError(f"{folder}: no complete test store of models[{name}] fold {k}; predict writes one per "
                            f"fold when a pseudo round follows (pseudo.rounds > pseudo.round): {how}")
        stores.append(ProbStore(folder))
    return stores


def _select_fold(stores: list[ProbStore], k: int, opts) -> pd.DataFrame:
    """Fold k's selection table from the mean of its models' test probabilities."""
    rows = []
    for image_id in stores[0].ids:
        q = mean_uint8([s[image_id] for s in stores])
        rows.append({"fold": k, "id": image_id,
                     "confident_share": round(confident_share(q, opts.low, opts.high), 6),
                     "foreground_share": round(float(above(q, opts.threshold).mean()), 6)})
    table = pd.DataFrame(rows, columns=SELECTION_COLUMNS)
    table["selected"] = table["confident_share"] >= opts.confident_share
    if opts.max_images is not None and table["selected"].sum() > opts.max_images:
        keep = table[table["selected"]].sort_values("confident_share", ascending=False, kind="stable")
        table["selected"] = table["id"].isin(set(keep["id"].iloc[: opts.max_images]))
    return table


def select(cfg: Config, r: Optional[int] = None, folds: Optional[list[int]] = None) -> Path:
    """Write round ``r``'s pseudo labels (default: the round after ``cfg.pseudo.round``), one store per fold, from
    the fold-k test stores of round r - 1's models; returns the round's folder. An up-to-date round is kept."""
    r = cfg.pseudo.round + 1 if r is None else r
    if folds is None:
        folds = fold_numbers(load_folds(cfg, Competition(cfg.data, seed=cfg.seed)))
    unit, paths = selection_unit(cfg, r, folds)
    if unit.skip(lambda: f"{sum(len(ProbStore(paths.labels(k))) for k in folds)} labels over {len(folds)} folds"):
        return paths.dir
    opts = cfg.pseudo
    sources = {k: _fold_sources(cfg, r, k) for k in folds}
    tables = {k: _select_fold(sources[k], k, opts) for k in folds}
    with unit.writing() as facts:
        # Every fold's store stops counting as complete before any of them changes, so a kill mid-way never leaves a
        # store that looks complete with the labels of two selections in it.
        for k in folds:
            manifest(paths.labels(k)).unlink(missing_ok=True)
        digests = {}
        for k in folds:
            # Labels of an earlier selection go: each store must hold exactly this round's images.
            for old in image_files(paths.labels(k)):
                old.unlink()
            chosen = tables[k].loc[tables[k]["selected"], "id"].tolist()
            writer = ProbWriter(paths.labels(k), sources[k][0].classes)
            # what the labels are, so that labels selected again alike change nothing downstream
            content = hashlib.sha1()
            for image_id in chosen:
                # the mean again rather than kept from the selection pass: a test set's worth of means per fold would
                # sit in memory until every image was rated (max_images needs them all before it can choose)
                labels = binarize(mean_uint8([s[image_id] for s in sources[k]]), opts.threshold, cfg.data.mode)
                writer.write(image_id, labels)
                content.update(image_id.encode() + b"\0" + labels.tobytes())
            writer.finish(chosen)
            digests[str(k)] = content.hexdigest()
        table = pd.concat(list(tables.values()), ignore_index=True)
        atomic.write_csv(paths.selection, table)
        facts['labels'] = digests
    per_fold = ", ".join(f"fold {k} {int(t['selected'].sum())}" for k, t in tables.items())
    print(f"pseudo: round {r}: confident test images (>= {opts.confident_share:.0%} of pixels below {opts.low} or "
          f"above {opts.high}) by each fold's models of round {r - 1}: {per_fold} of {len(tables[folds[0]])} "
          f"-> {paths.dir}")
    return paths.dir


def round_config(cfg: Config, r: int) -> Config:
    """The config of round ``r``: pseudo.round = r and every model renamed ``<name>_pl<r>`` (new run folders)."""
    base = cfg.model_copy(deep=True)
    models = [m.model_copy(update={"name": round_name(m.name, r)}) for m in base.models]
    out = base.model_copy(update={"models": models, "pseudo": base.pseudo.model_copy(update={"round": r})})
    out.source = cfg.source
    out.origins = cfg.origins
    return out


def run(cfg: Config) -> int:
    """Select the labels of the round after ``pseudo.round`` (for a config that will train with them)."""
    labels = select(cfg)
    print(f"pseudo: train on them with `pseudo.round={cfg.pseudo.round + 1}` (labels in {labels}/fold<k>)")
    return 0


__all__ = ["binarize", "confident_share", "round_config", "run", "select", "selection_unit", "source_models",
           "source_stores"]
