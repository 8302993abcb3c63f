"""Object AP of label maps: segkit's ``object_ap_labels`` against a reference that renumbers both maps with
``np.unique`` (sorting every pixel) before the same IoU matching, on an instance run's OOF images.

    .venv/bin/python bench/object_ap.py --config configs/dsb2018_instances.yaml [--images 100] [key.sub=value ...]

The predicted maps are the run's final ensemble OOF decoded with tune's chosen decoder (``segkit run`` of the
config must be complete); the true ones its instance maps. Both functions score the same pairs in one process,
one after the other; the table gives the mean ms per image of each, their ratio and the largest difference.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

import numpy as np


def reference_ap(pred: np.ndarray, truth: np.ndarray) -> float:
    """The DSB metric as usually written: consecutive ids by np.unique, then IoU > t matching, t = 0.5 .. 0.95."""
    _, p = np.unique(pred, return_inverse=True)
    _, t = np.unique(truth, return_inverse=True)
    p, t = p.reshape(pred.shape), t.reshape(truth.shape)
    n_pred, n_true = int(p.max()), int(t.max())  # both maps hold background 0, so index 0 is it
    if n_pred == 0 and n_true == 0:
        return 1.0
    if n_pred == 0 or n_true == 0:
        return 0.0
    joint = np.bincount(t.ravel() * (n_pred + 1) + p.ravel(), minlength=(n_true + 1) * (n_pred + 1))
    joint = joint.reshape(n_true + 1, n_pred + 1)
    inter = joint[1:, 1:]
    union = joint[1:, :].sum(1)[:, None] + joint[:, 1:].sum(0)[None, :] - inter
    iou = inter / union
    scores = []
    for threshold in np.arange(0.5, 1.0, 0.05):
        match = iou > threshold
        tp = int(match.any(1).sum())
        scores.append(tp / (tp + (n_pred - int(match.any(0).sum())) + (n_true - tp)))
    return float(np.mean(scores))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value")
    args = parser.parse_args(argv)
    from segkit.artifacts.probs import ProbStore
    from segkit.config import load_config
    from segkit.data import Competition
    from segkit.metrics.competition import object_ap_labels
    from segkit.postprocess.instances import decode
    from segkit.postprocess.tuned import Tuned

    cfg = load_config(args.config, args.overrides)
    decoder = Tuned.read(cfg.layout.tune.json, cfg.data.classes).choice().decoder("")
    store = ProbStore(cfg.layout.final_ensemble.oof)
    comp = Competition(cfg.data, seed=cfg.seed)
    ids = store.ids[:: max(1, len(store.ids) // args.images)][: args.images]
    pairs = [(decode(np.asarray(store[i]), decoder), comp.instance_map(i)) for i in ids]
    results = {}
    scorers = (("reference (np.unique renumbering)", reference_ap), ("segkit object_ap_labels", object_ap_labels))
    for name, fn in scorers:
        began = time.perf_counter()
        values = [fn(p, t) for p, t in pairs]
        results[name] = (1000 * (time.perf_counter() - began) / len(pairs), np.array(values))
    (ref_ms, ref), (ours_ms, ours) = results.values()
    print(f"{platform.node()} ({os.cpu_count()} cores); {cfg.experiment}: {len(pairs)} OOF images, sizes "
          f"{min(p.size for p, _ in pairs)}-{max(p.size for p, _ in pairs)} px")
    print("| scorer | ms per image | ratio to segkit |\n|---|---:|---:|")
    for name, (ms, _) in results.items():
        print(f"| {name} | {ms:.2f} | {ms / ours_ms:.1f} |")
    print(f"largest difference of the scores: {np.abs(ref - ours).max():.2e}; mean AP {ours.mean():.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
