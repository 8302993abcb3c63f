"""Post-processing search: segkit.stages.tune against the plain way of scoring a threshold x min-area grid.

    .venv/bin/python bench/tune.py                      # 4000 TGS masks, reference on 400 of them
    .venv/bin/python bench/tune.py --n 1000 --ref-n 200

Data: the 4000 TGS Salt train masks (../shared/datasets/tgs-salt/train.csv) with synthetic "model" probabilities
(a blurred, slightly shifted mask plus smooth noise and, on some images, a faint false blob), written to a
temporary probability store like an ensemble's OOF.

Rows:
- ``tables`` (ours): the one streamed pass that scores every threshold x min area for every image (components once
  per threshold, counts for every min area from the component areas, metric from the counts);
- ``plain`` (reference): for every (threshold, min area) pair, post-process every image with
  ``segkit.postprocess.masks.apply_class`` and score it with the metric's per-image function — what a tuning loop does
  without precomputation. It runs on the first ``--ref-n`` images; its curve is checked equal to ours there, and
  its time is scaled to ``--n`` images for the ratio;
- ``full tune``: everything ``segkit tune`` does on ``--n`` images (tables, empty rule, 6 morphology passes,
  final exact scoring), without folds;
- ``+ nested, 5 folds``: the same with the nested estimate (5 more searches on 4 folds each, sharing the tables
  and the candidate cache), as ``segkit tune`` runs it with a fold file.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from segkit.artifacts.probs import ProbWriter
from segkit.config.schema import TuneConfig
from segkit.data import rle
from segkit.metrics import get_metric
from segkit.postprocess.masks import ClassParams, apply_class
from segkit.stages.tune import OOFStream, tune
from segkit.stages.tune.tables import summarize

TGS = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "tgs-salt"


def fake_probs(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    shifted = np.roll(mask.astype(np.float32), tuple(rng.integers(-2, 3, 2)), axis=(0, 1))
    p = 0.85 * cv2.GaussianBlur(shifted, (0, 0), 2.0)
    p += 0.25 * cv2.GaussianBlur(rng.random(mask.shape).astype(np.float32), (0, 0), 3.0)
    if rng.random() < 0.3:
        blob = np.zeros(mask.shape, np.float32)
        cv2.circle(blob, tuple(int(v) for v in rng.integers(0, 101, 2)), int(rng.integers(2, 8)), 0.55, -1)
        p = np.maximum(p, blob)
    return np.clip(p, 0, 1)[None]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=4000)
    parser.add_argument("--ref-n", type=int, default=400)
    parser.add_argument("--metric", default="tgs")
    args = parser.parse_args()

    frame = pd.read_csv(TGS / "train.csv", dtype=str, keep_default_na=False).iloc[: args.n]
    truths = {i: rle.decode(r, (101, 101))[None] for i, r in zip(frame["id"], frame["rle_mask"])}
    rng = np.random.default_rng(0)
    cfg = TuneConfig()
    thresholds = sorted(set([0.5] + cfg.thresholds))
    min_areas = sorted(set([0] + cfg.min_areas))
    metric = get_metric(args.metric)
    with tempfile.TemporaryDirectory() as tmp:
        writer = ProbWriter(Path(tmp) / "oof", ["salt"])
        for image_id, mask in truths.items():
            writer.write(image_id, fake_probs(mask[0], rng))
        store = writer.finish(list(truths))

        # ours, on the reference subset (for the equality check) and on everything
        ref_ids = store.ids[: args.ref_n]
        sub = summarize(OOFStream(store, truths.__getitem__, ids=ref_ids), metric, thresholds, min_areas)
        start = time.perf_counter()
        summarize(OOFStream(store, truths.__getitem__), metric, thresholds, min_areas)
        t_tables = time.perf_counter() - start

        # the plain way, on the subset
        start = time.perf_counter()
        plain = np.zeros((len(thresholds), len(min_areas)))
        for j, t in enumerate(thresholds):
            for m, a in enumerate(min_areas):
                params = ClassParams(threshold=t, min_area=a)
                scores = [metric.per_image(apply_class(store[i][0], params)[None].view(bool), truths[i].astype(bool))
                          for i in ref_ids]
                plain[j, m] = np.mean(scores)
        t_plain = (time.perf_counter() - start) * args.n / len(ref_ids)
        assert np.allclose(plain, sub.score[:, 0].mean(0)), "fast tables disagree with the plain scoring"

        start = time.perf_counter()
        result = tune(OOFStream(store, truths.__getitem__), ["salt"], metric, cfg).record
        t_full = time.perf_counter() - start

        # the same search with the nested estimate over 5 folds (the images dealt round-robin)
        start = time.perf_counter()
        nested = tune(OOFStream(store, truths.__getitem__), ["salt"], metric, cfg,
                      folds=[i % 5 for i in range(args.n)]).record
        t_nested = time.perf_counter() - start

    grid = f"{len(thresholds)} thresholds x {len(min_areas)} min areas"
    print(f"{args.n} TGS masks (101x101), metric {args.metric}, {grid}; plain scaled from {len(ref_ids)} images")
    print(f"{'':24}{'seconds':>10}{'ms/image':>10}{'vs plain':>10}")
    for name, secs in (("tables (ours)", t_tables), ("plain (reference)", t_plain), ("full tune (ours)", t_full),
                       ("+ nested, 5 folds", t_nested)):
        print(f"{name:24}{secs:10.2f}{1000 * secs / args.n:10.3f}{t_plain / secs:9.1f}x")
    print(f"CV {result['cv_baseline']:.4f} at p>0.5 -> {result['cv']:.4f} tuned: {result['summary']['salt']}; "
          f"nested {nested['cv_nested']:.4f}; the nested estimate costs {t_nested / t_full:.2f}x the search alone")


if __name__ == "__main__":
    main()
