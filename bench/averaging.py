"""Weight averaging and multi-scale TTA on one fold of a recipe, side by side from one training run.

    .venv/bin/python bench/averaging.py --config configs/tgs_salt.yaml [--fold 0] [--window 0.36]
        [--scales "1;0.75,1,1.25;1,1.5"] [key.sub=value ...]

The recipe's first model trains fold ``--fold`` once, with ``train.average`` a greedy soup over the last
``--window`` of its epochs (every one of them validated) and its ingredients kept, in an experiment of its own
(``<experiment>_avg``; a killed run resumes). From that one run, on the fold's validation images, at p > 0.5 with
the config's metric:

- best single epoch (chosen on these images, as every fold's best.pt is);
- SWA: the mean of every ingredient, BatchNorm statistics measured again on the fold's training batches (chosen by
  nothing but the window: an honest figure);
- greedy soup, in-sample (chosen on these images) and cross-fitted (chosen on one half, scored on the other, both
  ways), beside the best single epoch cross-fitted the same way;
- the best single epoch's, the SWA's and the soup's weights predicted through ``segkit predict``'s engine (the
  config's TTA and tiles) at each ``--scales`` set (``predict.tta_scales``): the multi-scale TTA rows. The scales
  are the config's choice; each row keeps its weights' figure (the best epoch and the soup chosen on these images).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

import segkit  # noqa: E402, F401  (import fixes for torchvision come first)
from segkit.config import load_config  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--fold", type=int, default=0)
    parser.add_argument("--window", type=float, default=0.36, help="train.average.window (default 0.36)")
    parser.add_argument("--scales", default="1;0.75,1,1.25;1,1.5",
                        help="predict.tta_scales sets: scales comma-separated, sets by semicolons")
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value")
    args = parser.parse_args(argv)

    from segkit.compute.device import resolve_amp, resolve_device
    from segkit.compute.distributed import World
    from segkit.data import Competition
    from segkit.data.folds import fold_ids, load_folds
    from segkit.inference.engine import Predictor
    from segkit.inference.outputs import Collected
    from segkit.metrics import get_metric
    from segkit.models import checkpoint
    from segkit.stages.train import averaging, train_fold
    from segkit.stages.train import fold as fold_module
    from segkit.stages.train.data import TrainData
    from segkit.stages.train.seeding import derive_seed
    from segkit.stages.train.validate import ImageValidation, Scores

    base = load_config(args.config, args.overrides)
    cfg = load_config(args.config, [*args.overrides, f"experiment={base.experiment}_avg",
                                    f"train.average={{method: soup, window: {args.window}}}"])
    model_cfg = cfg.models[0]
    averaging.remove_ingredients = lambda paths: None  # kept: SWA below averages the same ingredients
    fold_module.remove_ingredients = averaging.remove_ingredients
    began = time.perf_counter()
    summary = train_fold(cfg, model_cfg, args.fold)
    train_minutes = (time.perf_counter() - began) / 60
    paths = cfg.layout.fold(model_cfg.name, args.fold)

    comp = Competition(cfg.data, seed=cfg.seed)
    train_ids, val_ids = fold_ids(load_folds(cfg, comp), args.fold)
    tcfg = cfg.train_for(model_cfg)
    device = resolve_device(cfg.device)
    tcfg = tcfg.model_copy(update={"amp": resolve_amp(tcfg.amp, device), "workers": 0})
    metric = get_metric(cfg.metric)
    validation = ImageValidation.of(comp, tcfg, val_ids, Scores(metric, tcfg.threshold), World())

    # SWA from the very ingredients the soup chose among
    ingredients = paths.ingredients()
    swa = checkpoint.average([checkpoint.load(p) for p in ingredients.values()], [p.name for p in ingredients.values()])
    model, _ = checkpoint.load_model(paths.best_epoch)
    model.load_state_dict(swa["model"])
    data = TrainData(comp, tcfg, comp.training_slices(train_ids), derive_seed(cfg.seed, args.fold), World())
    averaging.recompute_batchnorm(model, data.loader(tcfg.epochs + 1), device, tcfg.amp, tcfg.channels_last)
    swa_row = validation.evaluate(model.to(device), None, device, tcfg.amp)
    swa_path = paths.dir / "swa_bench.pt"
    checkpoint.save(swa_path, {**swa, "model": {k: v.detach().cpu() for k, v in model.state_dict().items()}})

    avg = summary["average"]
    rows = [("best single epoch (chosen on these images)", avg["best_epoch_scores"]["score"], "in-sample"),
            (f"SWA of {len(ingredients)} epochs ({', '.join(str(e) for e in ingredients)})", swa_row["score"],
             "honest"),
            (f"greedy soup ({', '.join(avg['ingredients'])})", avg["scores"]["score"], "in-sample"),
            ("greedy soup, cross-fitted (chosen on one half, scored on the other)", avg["cross_fit"]["soup"],
             "honest"),
            ("best single epoch, cross-fitted the same way", avg["cross_fit"]["best_single"], "honest")]

    truth = {i: comp.read_mask(i) > 0 for i in val_ids}

    def predicted(path, scales: list[float]) -> float:
        variant = cfg.model_copy(update={"predict": cfg.predict.model_copy(update={"tta_scales": scales})})
        out = Collected()
        Predictor(variant, [[path]], device).predict(comp, val_ids, "train", out)
        return float(np.mean([metric(out[i] > 127, truth[i]) for i in val_ids]))

    # the scales are the config's; the weights keep the figure of their choice above
    for label, path, kind in (("best single epoch", paths.best_epoch, "epoch chosen on these images"),
                              ("SWA", swa_path, "honest"), ("soup", paths.best, "soup chosen on these images")):
        for text in args.scales.split(";"):
            scales = [float(s) for s in text.split(",")]
            t0 = time.perf_counter()
            value = predicted(path, scales)
            rows.append((f"{label}, {cfg.predict.tta} TTA at scales {scales} ({time.perf_counter() - t0:.0f} s)",
                         value, kind))
            print(rows[-1], flush=True)

    print(f"\n{cfg.experiment} fold {args.fold}: {len(val_ids)} validation images, {tcfg.epochs} epochs "
          f"({train_minutes:.1f} min), {model_cfg.arch} {model_cfg.encoder}; {platform.node()}, "
          f"torch {torch.__version__}, {os.cpu_count()} cores")
    print(f"| weights | {cfg.metric} | figure |\n|---|---:|---|")
    for label, value, kind in rows:
        print(f"| {label} | {value:.4f} | {kind} |")
    print(json.dumps({"rows": rows, "summary": summary}, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
