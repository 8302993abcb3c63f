"""Mask R-CNN against U-Net + watershed, and their fusion, on one fold of an instance recipe, in object AP.

    .venv/bin/python bench/maskrcnn.py --config configs/dsb2018_maskrcnn.yaml [--fold 0] [budget=cpu_both ...]

Every model of the config trains fold ``--fold`` (``segkit train``: a trained fold is reused, a killed one resumes),
and its OOF store (the fold's validation images, no TTA; with ``--repredict``, the same images predicted again by
its best.pt with the code as it is now) is decoded into objects:

- connected components of the mask channel at p > 0.5, and the watershed at its defaults (chosen by nothing);
- the decoder searched by ``segkit tune``'s instance search, cross-fitted: chosen on one half of the fold's images
  (every other image by id), scored on the other, both ways. Beside it, in-sample (chosen and scored on all).

The fusion is the pixel-wise mean of the models' mask and contour probabilities (what ``ensemble.methods: [mean]``
writes), decoded the same way. Also per model: parameters and seconds per validation image (timed here, after the
training, in the config's threads); ``bench/zoo.py`` times the training steps side by side. The figure ``segkit
ablate`` gives over every fold (nested) is the one to quote for a recipe; this is its one-fold counterpart for a CPU
session.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

import segkit  # noqa: E402, F401  (import fixes for torchvision come first)
from segkit.config import load_config  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--fold", type=int, default=0)
    parser.add_argument("--repredict", action="store_true",
                        help="re-predict the fold's validation images with each best.pt (as training writes its OOF) "
                             "into <model>/fold<k>_bench/, e.g. after the network's rendering changed")
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value")
    args = parser.parse_args(argv)

    from segkit.artifacts.probs import ProbStore, ProbWriter
    from segkit.compute.device import cpu_has_native_bf16
    from segkit.compute.distributed import World
    from segkit.data import Competition
    from segkit.data.folds import fold_ids, load_folds
    from segkit.metrics import get_metric
    from segkit.models import checkpoint
    from segkit.oof import MeanStore
    from segkit.postprocess.instances import DecodeParams
    from segkit.stages.train import train_fold
    from segkit.stages.train.validate import ImageValidation, Scores
    from segkit.stages.tune.instances import Candidates, nested, search

    cfg = load_config(args.config, args.overrides)
    comp = Competition(cfg.data, seed=cfg.seed)
    _, val_ids = fold_ids(load_folds(cfg, comp), args.fold)
    val_ids = sorted(val_ids)
    halves = np.arange(len(val_ids)) % 2
    truths = [comp.instance_map(i) for i in val_ids]
    contour = "contour" in cfg.data.instances.targets
    grid = cfg.tune.instances
    bf16 = "with" if cpu_has_native_bf16() else "without"
    print(f"{cfg.experiment}: fold {args.fold}, {len(val_ids)} validation images; {platform.node()}, "
          f"{os.cpu_count()} cores, {bf16} native bf16", flush=True)

    stores, facts = {}, {}
    for m in cfg.models:
        began = time.perf_counter()
        summary = train_fold(cfg, m, args.fold)
        paths = cfg.layout.fold(m.name, args.fold)
        model, meta = checkpoint.load_model(paths.best)
        store = paths.oof
        if args.repredict:
            store = paths.dir.parent / f"fold{args.fold}_bench"
            writer = ProbWriter(store, meta["classes"])
            validation = ImageValidation.of(comp, cfg.train_for(m), val_ids, Scores(get_metric(cfg.metric)), World())
            validation.evaluate(model.eval(), writer=writer)
            writer.finish(val_ids)
        stores[m.name] = ProbStore(store)
        facts[m.name] = {"arch": m.arch, "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
                         "epochs": int(summary["epochs"]), "best_epoch": int(summary["best_epoch"]),
                         "s_per_image": seconds_per_image(model, comp, val_ids[:8], cfg),
                         "trained_here_s": round(time.perf_counter() - began, 1)}
        del model

    rows = []
    sources = [(name, stores[name]) for name in stores]
    if len(stores) > 1:
        sources.append(("fusion: " + " + ".join(stores), MeanStore(list(stores.values()))))
    for name, store in sources:
        cands = Candidates([np.asarray(store[i]) for i in val_ids], truths)
        plain = {"components p>0.5": float(cands.of(DecodeParams("components")).mean())}
        if contour:
            plain["watershed (defaults)"] = float(cands.of(DecodeParams("watershed")).mean())
        crossed, _ = nested(cands, halves, grid, contour)
        pick, _ = search(cands, np.arange(len(val_ids)), grid, contour)
        rows.append({"source": name, **plain, "tuned, cross-fitted": float(crossed.mean()),
                     "tuned, in-sample": float(cands.of(pick).mean()), "decoder (chosen on all)": pick.describe(),
                     **facts.get(name, {})})
        print(f"  {name}: " + ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
                                        for k, v in rows[-1].items() if k != "source"), flush=True)
    table = pd.DataFrame(rows)
    with pd.option_context("display.width", 250, "display.max_columns", 20, "display.float_format", "{:.4f}".format):
        print(table.to_string(index=False))
    return 0


def seconds_per_image(model, comp, ids, cfg) -> float:
    """Median seconds of one validation image through the network (no TTA), at its own size padded to the
    stride, in the config's threads."""
    import torch

    from segkit.data import SegDataset

    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    ds = SegDataset(comp, list(ids), "train", augment=None, crop_size=None, pad_to=cfg.train.pad_to)
    times = []
    model.eval()
    with torch.no_grad():
        for k in range(len(ds)):
            x = ds[k]["image"][None]
            began = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - began)
    return float(np.median(times))


if __name__ == "__main__":
    sys.exit(main())
