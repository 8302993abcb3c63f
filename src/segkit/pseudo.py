"""``segkit pseudo``: pseudo-labelling — confident test predictions become extra training images.

Selection (one round r): from the test probabilities of round r - 1's ensemble, an image is *confident* when at
least ``pseudo.confident_share`` of its pixels (all classes together) lie below ``pseudo.low`` or above
``pseudo.high``; confident images are binarised at ``pseudo.threshold`` (the pipeline's rule, p > t; multiclass:
the most probable class) and written to ``<run_dir>/pseudo/round<r>/`` as a probability store of 0/255 masks, with
``selection.csv`` listing every test image's confident share and whether it was taken (``pseudo.max_images`` keeps
the most confident). A round's selection is a unit of work (``segkit.freshness``): kept while the ensemble it
selected from and the selection settings are unchanged.

Training with them: a config with ``pseudo.round: r`` trains every fold on its usual training ids *plus* round r's
pseudo-labelled images (``segkit.train.data.pseudo_train_data``). They are test images: they never enter the fold
file, so no fold validates on them.

Rounds (``pseudo.rounds`` = N): ``segkit pseudo`` (and ``segkit run``) go through rounds 1..N, each selecting from
the ensemble of the round before, then training, predicting and ensembling the models again as ``<model>_pl<r>``
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

from segkit import atomic
from segkit.config import Config
from segkit.errors import DataError
from segkit.freshness import Unit, fingerprint
from segkit.layout import PseudoPaths, round_name
from segkit.probs import ProbStore, ProbWriter, dequantize, image_files, manifest
from segkit.threshold import below
from segkit.threshold import binarize as above

SELECTION_COLUMNS = ["id", "confident_share", "foreground_share"]


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


def selection_unit(cfg: Config, r: int) -> tuple[Unit, PseudoPaths]:
    """Round r's selection as a unit of work: what it writes and what decides it."""
    paths = cfg.layout.pseudo(r)
    source = cfg.layout.ensemble_of(r - 1).test
    opts = cfg.pseudo
    inputs = {"ensemble_test": fingerprint(manifest(source)), "mode": cfg.data.mode,
              **{k: getattr(opts, k) for k in ("low", "high", "confident_share", "threshold", "max_images")}}
    return Unit(f"pseudo: round {r} ({paths.dir})", paths.stamp, [paths.selection, manifest(paths.labels)],
                inputs, marker=manifest(paths.labels)), paths


def select(cfg: Config, r: Optional[int] = None) -> Path:
    """Write round ``r``'s pseudo labels (default: the round after ``cfg.pseudo.round``) from the test store of the
    ensemble of round r - 1; returns the label store's folder. An up-to-date round is kept."""
    r = cfg.pseudo.round + 1 if r is None else r
    unit, paths = selection_unit(cfg, r)
    if unit.fresh():
        print(unit.kept(f"{len(ProbStore(paths.labels))} images"))
        return paths.labels
    source = cfg.layout.ensemble_of(r - 1).test
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
            "foreground_share": round(float(above(q, opts.threshold).mean()), 6),
        })
    table = pd.DataFrame(rows, columns=SELECTION_COLUMNS)
    table["selected"] = table["confident_share"] >= opts.confident_share
    if opts.max_images is not None and table["selected"].sum() > opts.max_images:
        keep = table[table["selected"]].sort_values("confident_share", ascending=False, kind="stable")
        table["selected"] = table["id"].isin(set(keep["id"].iloc[: opts.max_images]))
    chosen = table.loc[table["selected"], "id"].tolist()
    unit.begin()
    # Labels of an earlier selection go: the store must hold exactly this round's images.
    for old in image_files(paths.labels):
        old.unlink()
    writer = ProbWriter(paths.labels, store.classes)
    content = hashlib.sha1()  # what the labels are, so that labels selected again alike change nothing downstream
    for image_id in chosen:
        labels = binarize(store[image_id], opts.threshold, cfg.data.mode)
        writer.write(image_id, labels)
        content.update(image_id.encode() + b"\0" + labels.tobytes())
    atomic.write_csv(paths.selection, table)
    unit.done(labels=content.hexdigest())
    writer.finish(chosen)
    print(f"pseudo: round {r}: {len(chosen)} of {len(table)} test images confident (>= {opts.confident_share:.0%} "
          f"of pixels below {opts.low} or above {opts.high}) -> {paths.dir}")
    return paths.labels


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
    print(f"pseudo: train on them with `pseudo.round={cfg.pseudo.round + 1}` (labels in {labels})")
    return 0


__all__ = ["binarize", "confident_share", "round_config", "run", "select", "selection_unit"]
