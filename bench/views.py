"""What orthogonal views add on the same checkpoints: a volume recipe's trained folds re-predict their validation
volumes along ``data.volumes.axis`` alone and averaged over ``data.volumes.predict_axes``, both with the recipe's
TTA, scored at p > 0.5 (argmax for multiclass) per slice and per volume.

    .venv/bin/python bench/views.py --config configs/msd_hippocampus.yaml --folds 0,1 \\
        --reference msd_hippocampus_cpu experiment=msd_hippocampus_views \\
        'data.volumes.train_axes=[0,1,2]' 'data.volumes.predict_axes=[0,1,2]'

Needs the folds trained (``segkit train --fold K`` with the same overrides); the predictions go to ``--work``
(default: a temporary folder), so the experiment's own stores are left alone. This is the ablation's "+ TTA" /
"+ orthogonal views" pair on a subset of folds, without the whole pipeline first. ``--reference EXPERIMENT``
scores another experiment's TTA OOF store on the same volumes beside them (the recipe trained along one axis).
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--folds", type=lambda s: [int(k) for k in s.split(",")], default=[0])
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--reference", default=None, metavar="EXPERIMENT",
                        help="also score this experiment's TTA OOF (<model>/oof_tta, e.g. the recipe trained along "
                             "one axis) on the same volumes")
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value")
    args = parser.parse_args(argv)
    from segkit.ablate import Scorer
    from segkit.artifacts.probs import ProbStore
    from segkit.compute.device import resolve_device
    from segkit.compute.distributed import World
    from segkit.config import load_config
    from segkit.data import Competition
    from segkit.data.folds import load_folds
    from segkit.inference.repredict import predict_oof
    from segkit.metrics.volume_scores import overlap
    from segkit.oof import StoreUnion
    from segkit.postprocess.masks import ClassParams
    from segkit.postprocess.volumes import case_masks, case_truth

    cfg = load_config(args.config, args.overrides)
    spec = cfg.data.volumes
    if spec is None or spec.prediction_axes == [spec.axis]:
        raise SystemExit("the config predicts along one axis: set data.volumes.predict_axes")
    work = args.work or Path(tempfile.mkdtemp(prefix="segkit_views_"))
    comp = Competition(cfg.data, seed=cfg.seed)
    table = load_folds(cfg, comp)
    part = table[table["fold"].isin(args.folds)]
    ids = part["id"].tolist()
    model = cfg.models[0]
    volumes = comp.volume_set("train")
    cases = list(dict.fromkeys(volumes.case_of(i) for i in ids))
    classes = list(cfg.data.classes)
    exclusive = cfg.data.mode == "multiclass"
    one = cfg.model_copy(update={"data": cfg.data.model_copy(update={
        "volumes": spec.model_copy(update={"predict_axes": None})})})
    def scored(folder: Path) -> tuple[float, np.ndarray]:
        store = ProbStore(folder)
        per_slice = Scorer(cfg, [], comp).raw(StoreUnion([folder], ids))[cfg.metric]
        dice = np.stack([overlap(case_masks(volumes, c, store.__getitem__, lambda _: [ClassParams()] * len(classes),
                                            exclusive), case_truth(volumes, c, comp.read_mask))[0] for c in cases])
        return per_slice, dice.mean(0)

    rows = []
    if args.reference:
        folder = cfg.model_copy(update={"experiment": args.reference}).layout.model(model.name).oof_tta
        rows.append((f"{args.reference}'s own OOF (axis {spec.axis})", *scored(folder), float("nan")))
    for name, variant in ((f"axis {spec.axis} alone", one), (f"axes {spec.prediction_axes} averaged", cfg)):
        folder = work / ("one_axis" if variant is one else "views")
        began = time.perf_counter()
        predict_oof(variant, comp, model, part, resolve_device(cfg.device), World(), folder=folder)
        rows.append((name, *scored(folder), time.perf_counter() - began))
    print(f"{platform.node()} ({os.cpu_count()} cores); {cfg.experiment}, folds {args.folds}: {len(cases)} volumes, "
          f"{len(ids)} slices; TTA {cfg.predict.tta}; trained along {spec.training_axes}")
    print(f"| prediction | {cfg.metric} per slice | " + " | ".join(f"Dice per volume, {c}" for c in classes)
          + " | seconds |\n|---|---:|" + "---:|" * len(classes) + "---:|")
    for name, per_slice, dice, seconds in rows:
        took = "" if np.isnan(seconds) else f"{seconds:.0f}"
        print(f"| {name} | {per_slice:.4f} | " + " | ".join(f"{d:.4f}" for d in dice) + f" | {took} |")
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
