"""``segkit pseudo``: pseudo-labelling — confident test predictions become extra training images.

Selection (one round): from the ensemble's test probabilities, an image is *confident* when at least
``pseudo.confident_share`` of its pixels (all classes together) lie below ``pseudo.low`` or above ``pseudo.high``;
confident images are binarised at ``pseudo.threshold`` (``p >= t``; multiclass: the most probable class) and
written to ``<run_dir>/pseudo/round<r>/`` as a probability store of 0/255 masks, with ``selection.csv`` listing
every test image's confident share and whether it was taken (``pseudo.max_images`` keeps the most confident).

Training with them: a config with ``pseudo.round: r`` trains every fold on its usual training ids *plus* the round's
pseudo-labelled images, ``pseudo.batch_share`` of each batch drawn from them (``extra_train_data``). They are test
images: they never enter the fold file, so no fold validates on them, and every CV stays on the original train set.

Rounds (``pseudo.rounds`` = N): round r selects from the current ensemble, then trains, predicts and ensembles the
models again as ``<model>_pl<r>`` (``round_config``) with round r's labels mixed in; the ensemble then holds the
round's models, and the next round (or tuning and submission) goes on from there. Each step skips what is complete.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd

from segkit import atomic
from segkit.config import Config
from segkit.errors import DataError
from segkit.probs import ProbStore, ProbWriter, dequantize

SELECTION = "selection.csv"


def round_dir(cfg: Config, r: int) -> Path:
    return cfg.run_dir / "pseudo" / f"round{r}"


def confident_share(q: np.ndarray, low: float, high: float) -> float:
    """Share of the (K, H, W) pixels whose probability is below ``low`` or above ``high``."""
    p = dequantize(q)
    return float(((p < np.float32(low)) | (p > np.float32(high))).mean())


def binarize(q: np.ndarray, threshold: float, mode: str = "binary") -> np.ndarray:
    """0/255 uint8 labels: ``p >= threshold`` per class; in multiclass mode the most probable class of each pixel
    (background = 1 - the sum of the K classes), so labels never overlap whatever the threshold."""
    p = dequantize(q)
    if mode == "multiclass":
        background = 1.0 - p.sum(0, keepdims=True)
        winner = np.concatenate([background, p]).argmax(0)
        return np.stack([np.where(winner == k + 1, 255, 0) for k in range(p.shape[0])]).astype(np.uint8)
    return np.where(p >= np.float32(threshold), 255, 0).astype(np.uint8)


def select(cfg: Config, r: Optional[int] = None) -> Path:
    """Write round ``r``'s pseudo labels (default: the round after ``cfg.pseudo.round``) from the ensemble's test
    store; returns the round's folder. A complete round is kept."""
    from segkit.ensemble import ensemble_dir

    r = cfg.pseudo.round + 1 if r is None else r
    out = round_dir(cfg, r)
    if ProbStore.is_complete(out) and (out / SELECTION).exists():
        print(f"pseudo: {out} is complete ({len(ProbStore(out))} images); keeping it")
        return out
    source = ensemble_dir(cfg) / "test"
    if not ProbStore.is_complete(source):
        raise DataError(f"{source}: no complete ensemble test store; run `segkit ensemble` first")
    store = ProbStore(source)
    opts = cfg.pseudo
    rows = []
    for image_id in store.ids:
        q = store[image_id]
        rows.append({
            "id": image_id,
            "confident_share": round(confident_share(q, opts.low, opts.high), 6),
            "foreground_share": round(float((dequantize(q) >= np.float32(opts.threshold)).mean()), 6),
        })
    table = pd.DataFrame(rows, columns=["id", "confident_share", "foreground_share"])
    table["selected"] = table["confident_share"] >= opts.confident_share
    if opts.max_images is not None and table["selected"].sum() > opts.max_images:
        keep = table[table["selected"]].sort_values("confident_share", ascending=False, kind="stable")
        table["selected"] = table["id"].isin(set(keep["id"].iloc[: opts.max_images]))
    chosen = table.loc[table["selected"], "id"].tolist()
    with atomic.atomic_dir(out) as tmp:
        writer = ProbWriter(tmp, store.classes)
        for image_id in chosen:
            writer.write(image_id, binarize(store[image_id], opts.threshold, cfg.data.mode))
        writer.finish(chosen)
        table.to_csv(tmp / SELECTION, index=False)
    print(f"pseudo: round {r}: {len(chosen)} of {len(table)} test images confident (>= {opts.confident_share:.0%} "
          f"of pixels below {opts.low} or above {opts.high}) -> {out}")
    return out


# ------------------------------------------------------------------------------------------- training hook


def labels(cfg: Config) -> Optional[ProbStore]:
    """The pseudo-label store this config trains with (``pseudo.round`` >= 1), or None."""
    r = cfg.pseudo.round
    if r == 0:
        return None
    folder = round_dir(cfg, r)
    if not ProbStore.is_complete(folder):
        raise DataError(f"{folder}: pseudo.round is {r} but its labels are missing; run `segkit pseudo` "
                        f"with pseudo.round={r - 1} first")
    return ProbStore(folder)


def _checked_ids(cfg: Config, comp, store: ProbStore) -> list[str]:
    """The store's ids, refusing any that is a train id (it would leak into some fold's validation)."""
    train = set(comp.train_ids)
    leaked = [i for i in store.ids if i in train]
    if leaked:
        raise DataError(f"{store.folder}: pseudo-labelled id {leaked[0]!r} is a train id; pseudo labels may only "
                        f"cover test images")
    test = set(comp.test_ids)
    unknown = [i for i in store.ids if i not in test]
    if unknown:
        raise DataError(f"{store.folder}: id {unknown[0]!r} is not a test image of this competition")
    return list(store.ids)


def mask_reader(store: ProbStore):
    """id -> uint8 (K, H, W) 0/1 mask from a store of 0/255 pseudo labels."""

    def read(image_id: str) -> np.ndarray:
        return (np.asarray(store[image_id]) >= 128).astype(np.uint8)

    return read


def extra_train_data(cfg: Config, comp):
    """What the training loop mixes in for this config: ``segkit.train.ExtraTrainData`` of the round's pseudo
    labels at ``pseudo.batch_share`` per batch, or None (round 0, share 0, or no confident image)."""
    from segkit.train.data import ExtraTrainData

    store = labels(cfg)
    if store is None or cfg.pseudo.batch_share <= 0:
        return None
    ids = _checked_ids(cfg, comp, store)
    if not ids:
        return None
    return ExtraTrainData(ids=ids, mask_reader=mask_reader(store), share=cfg.pseudo.batch_share, split="test")


def pseudo_dataset(cfg: Config, comp, train=None):
    """The pseudo-labelled images as a ``SegDataset`` (test images, masks from the round's labels, the training
    augmentation of ``train`` — default ``cfg.train``), or None when this config trains without them."""
    from segkit.data import SegDataset

    extra = extra_train_data(cfg, comp)
    if extra is None:
        return None
    t = train or cfg.train
    return SegDataset(comp, extra.ids, split="test", augment=t.augment, crop_size=t.crop_size, pad_to=t.pad_to,
                      with_mask=True, mask_reader=extra.mask_reader)


# ------------------------------------------------------------------------------------------------- rounds


def round_config(cfg: Config, r: int) -> Config:
    """The config of round ``r``: pseudo.round = r and every model renamed ``<name>_pl<r>`` (new run folders)."""
    base = cfg.model_copy(deep=True)
    models = []
    for m in base.models:
        root = m.name.rsplit("_pl", 1)[0] if m.name.rsplit("_pl", 1)[-1].isdigit() else m.name
        models.append(m.model_copy(update={"name": f"{root}_pl{r}"}))
    out = base.model_copy(update={"models": models,
                                  "pseudo": base.pseudo.model_copy(update={"round": r})})
    out.source = cfg.source
    return out


def train_round(cfg: Config) -> None:
    """Train every model x fold of a round config with its pseudo labels mixed in."""
    from segkit.data import Competition
    from segkit.folds import fold_numbers, load_folds
    from segkit.train import distributed, fold_dir, is_done, train_fold

    comp = Competition(cfg.data, seed=cfg.seed)
    extra = extra_train_data(cfg, comp)
    folds = fold_numbers(load_folds(cfg, comp))
    n = len(extra.ids) if extra else 0
    print(f"pseudo: round {cfg.pseudo.round}: training {', '.join(m.name for m in cfg.models)} with {n} "
          f"pseudo-labelled images at {cfg.pseudo.batch_share:.0%} of each batch")
    try:
        for m in cfg.models:
            for k in folds:
                if is_done(fold_dir(cfg, m.name, k)):
                    print(f"models[{m.name}] fold {k}: complete, skipped", flush=True)
                    continue
                train_fold(cfg, m, k, extra=extra)
    finally:
        distributed.teardown()


def run(cfg: Config) -> int:
    """``pseudo.rounds`` = 0: select one round of labels (for a config with pseudo.round set to train on).
    Otherwise go through the rounds after ``pseudo.round``: select, train, predict, ensemble."""
    from segkit import ensemble, predict

    if cfg.pseudo.rounds == 0:
        out = select(cfg)
        print(f"pseudo: train on them with `pseudo.round={cfg.pseudo.round + 1}` (labels in {out})")
        return 0
    current = cfg
    for r in range(cfg.pseudo.round + 1, cfg.pseudo.rounds + 1):
        select(current, r)
        current = round_config(cfg, r)
        train_round(current)
        predict.run(current)
        ensemble.run(current)
    return 0


__all__ = ["binarize", "confident_share", "extra_train_data", "labels", "mask_reader", "pseudo_dataset",
           "round_config", "round_dir", "run", "select"]
