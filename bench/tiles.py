"""Tiled prediction on a trained fold: whole padded images against tiles of the training crop size, and the speed
of tiling many small images together against one image at a time.

    .venv/bin/python bench/tiles.py --config configs/tgs_salt.yaml [--fold 0] [--tile 96] [key.sub=value ...]

Needs the fold trained (``<run_dir>/<model>/fold<k>/best.pt`` of the config's first model). Its validation images
are predicted four ways, each without and with the config's TTA, and scored with the config's metric at p > 0.5:
the whole image padded bottom/right by reflection to the network stride (what training's validation does), and
``--tile`` px tiles blended ``gaussian`` or ``linear`` (``segkit.tiling``). Then the linear tiles without TTA are
timed twice on the same images: stacks of same-size images sharing each batch of ``predict.batch_size`` tiles
(``segkit.tiling.stack_groups``, as ``segkit predict`` makes them), against one image per call. Two threads, one
after the other in one process.
"""

from __future__ import annotations

import argparse
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
    parser.add_argument("--tile", type=int, default=96, help="tile size; the training crop_size (default 96)")
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value")
    args = parser.parse_args(argv)

    from segkit.data import Competition, SegDataset, unpad
    from segkit.folds import load_folds
    from segkit.metrics import get_metric
    from segkit.tiling import predict_tiled, stack_groups
    from segkit.train.checkpoint import load_model
    from segkit.tta import TTAPredictor

    torch.set_num_threads(2)
    cfg = load_config(args.config, args.overrides)
    comp = Competition(cfg.data, seed=cfg.seed)
    table = load_folds(cfg, comp)
    ids = table.loc[table["fold"] == args.fold, "id"].tolist()
    path = cfg.run_dir / cfg.models[0].name / f"fold{args.fold}" / "best.pt"
    model, meta = load_model(path)
    ds = SegDataset(comp, ids, "train", augment=None, pad_to=meta["pad_to"], with_mask=False)
    items = [ds[i] for i in range(len(ds))]
    sizes = {tuple(item["size"].tolist()) for item in items}
    if len(sizes) != 1:
        sys.exit(f"bench/tiles.py: needs one image size per fold, {cfg.data.root} has {sorted(sizes)}")
    (h, w), = sizes
    padded = torch.stack([item["image"] for item in items])
    images = unpad(padded, (h, w)).contiguous()
    truth = [comp.read_mask(i) > 0 for i in ids]
    metric = get_metric(cfg.metric)
    batch = cfg.predict.batch_size
    stacks = stack_groups(list(range(len(ids))), (h, w), args.tile, cfg.predict.tile_overlap, batch)

    def predictor(tta: str) -> TTAPredictor:
        return TTAPredictor(model, tta=tta, merge=cfg.predict.tta_merge, activation="sigmoid", amp=cfg.predict.amp,
                            channels_last=cfg.predict.channels_last)

    def whole(fn) -> torch.Tensor:
        return torch.cat([unpad(fn(padded[k:k + batch]), (h, w)) for k in range(0, len(ids), batch)])

    def tiled(fn, blend: str, groups: list[list[int]]) -> torch.Tensor:
        return torch.cat([predict_tiled(fn, images[group], args.tile, overlap=cfg.predict.tile_overlap,
                                        blend=blend, batch_size=batch) for group in groups])

    def score(probs: torch.Tensor) -> float:
        pred = (probs >= 0.5).numpy()
        return float(np.mean([metric(pred[k], truth[k]) for k in range(len(ids))]))

    print(f"{cfg.experiment}, fold {args.fold}: {len(ids)} images of {h}x{w}, {path}")
    print(f"| prediction | {cfg.metric}, no TTA | {cfg.metric}, {cfg.predict.tta} TTA |\n|---|---:|---:|")
    ways = [(f"whole image, padded to {padded.shape[-2]}x{padded.shape[-1]}", whole),
            (f"{args.tile} px tiles, gaussian blend", lambda fn: tiled(fn, "gaussian", stacks)),
            (f"{args.tile} px tiles, linear blend", lambda fn: tiled(fn, "linear", stacks))]
    for label, way in ways:
        cells = [score(way(predictor(tta))) for tta in ("none", cfg.predict.tta)]
        print(f"| {label} | {cells[0]:.4f} | {cells[1]:.4f} |", flush=True)

    fn = predictor("none")
    timings = {}
    alone = [[k] for k in range(len(ids))]
    for label, groups in ((f"stacks of {len(stacks[0])} images", stacks), ("one image at a time", alone)):
        began = time.perf_counter()
        tiled(fn, "linear", groups)
        timings[label] = len(ids) / (time.perf_counter() - began)
    (fast, fast_rate), (slow, slow_rate) = timings.items()
    print(f"\ntiles, no TTA: {fast} {fast_rate:.1f} images/s, {slow} {slow_rate:.1f} images/s "
          f"({fast_rate / slow_rate:.2f}x); batch {batch} tiles, {platform.node()} ({os.cpu_count()} cores)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
