"""Tiled prediction on a trained fold: whole padded images against tiles of the training crop size, and the speed
of tiling many small images together against one image at a time.

    .venv/bin/python bench/tiles.py --config configs/tgs_salt.yaml [--fold 0] [--tile 96] [key.sub=value ...]

Needs the fold trained (``<run_dir>/<model>/fold<k>/best.pt`` of the config's first model). Its validation images
are predicted three ways, each without and with the config's TTA, and scored per image with the config's metric
at p > 0.5: the whole image padded bottom/right by reflection to the network stride (what training's validation
does), and ``--tile`` px tiles blended ``gaussian`` or ``linear`` (``segkit.inference.tiling``, overlap
``predict.tile_overlap``). Images of several sizes (DSB's nine) are batched by size, as ``segkit predict`` does.
Then the linear tiles without TTA are timed twice on the same images: stacks of same-size images sharing each
batch of ``predict.batch_size`` tiles (``segkit.inference.tiling.stack_groups``, as ``segkit predict`` makes them),
against one image per call, and so is the whole padded image. Two threads, one after the other in one process.
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
    from segkit.data.folds import load_folds
    from segkit.inference.tiling import predict_tiled, stack_groups
    from segkit.inference.tta import TTAPredictor
    from segkit.metrics import get_metric
    from segkit.models.checkpoint import load_model

    torch.set_num_threads(2)
    cfg = load_config(args.config, args.overrides)
    comp = Competition(cfg.data, seed=cfg.seed)
    table = load_folds(cfg, comp)
    ids = table.loc[table["fold"] == args.fold, "id"].tolist()
    path = cfg.layout.fold(cfg.models[0].name, args.fold).best
    model, meta = load_model(path)
    ds = SegDataset(comp, ids, "train", augment=None, pad_to=meta["pad_to"], with_mask=False)
    items = [ds[i] for i in range(len(ds))]
    sizes = [tuple(int(v) for v in item["size"].tolist()) for item in items]
    padded = [item["image"] for item in items]
    images = [unpad(x, size).contiguous() for x, size in zip(padded, sizes)]
    by_size: dict[tuple[int, int], list[int]] = {}
    for k, size in enumerate(sizes):
        by_size.setdefault(size, []).append(k)
    truth = [comp.read_mask(i) > 0 for i in ids]
    metric = get_metric(cfg.metric)
    batch = cfg.predict.batch_size
    overlap = cfg.predict.tile_overlap
    stacks = [group for size, members in by_size.items()
              for group in stack_groups(members, size, args.tile, overlap, batch)]

    def predictor(tta: str) -> TTAPredictor:
        return TTAPredictor(model, tta=tta, merge=cfg.predict.tta_merge, activation="sigmoid", amp=cfg.predict.amp,
                            channels_last=cfg.predict.channels_last)

    chunks = [members[k:k + batch] for members in by_size.values() for k in range(0, len(members), batch)]

    def per_group(groups: list[list[int]], predict_group) -> list[torch.Tensor]:
        """Each group (same-size images) predicted in one call, the results put back in the order of ``ids``."""
        out: list[torch.Tensor] = [None] * len(ids)  # type: ignore[list-item]
        for group in groups:
            for j, p in zip(group, predict_group(group)):
                out[j] = p
        return out

    def whole(fn) -> list[torch.Tensor]:
        return per_group(chunks, lambda group: unpad(fn(torch.stack([padded[j] for j in group])), sizes[group[0]]))

    def tiled(fn, blend: str, groups: list[list[int]]) -> list[torch.Tensor]:
        return per_group(groups, lambda group: predict_tiled(fn, torch.stack([images[j] for j in group]), args.tile,
                                                             overlap=overlap, blend=blend, batch_size=batch))

    def score(probs: list[torch.Tensor]) -> float:
        return float(np.mean([metric((p >= 0.5).numpy(), t) for p, t in zip(probs, truth)]))

    shapes = ", ".join(f"{len(m)} of {h}x{w}" for (h, w), m in sorted(by_size.items(), key=lambda kv: -len(kv[1])))
    print(f"{cfg.experiment}, fold {args.fold}: {len(ids)} images ({shapes}), {path}")
    print(f"| prediction | {cfg.metric}, no TTA | {cfg.metric}, {cfg.predict.tta} TTA |\n|---|---:|---:|")
    ways = [(f"whole image, padded to a multiple of {meta['pad_to']}", whole),
            (f"{args.tile} px tiles, gaussian blend", lambda fn: tiled(fn, "gaussian", stacks)),
            (f"{args.tile} px tiles, linear blend", lambda fn: tiled(fn, "linear", stacks))]
    for label, way in ways:
        cells = [score(way(predictor(tta))) for tta in ("none", cfg.predict.tta)]
        print(f"| {label} | {cells[0]:.4f} | {cells[1]:.4f} |", flush=True)

    fn = predictor("none")
    timings = {}
    alone = [[k] for k in range(len(ids))]
    contenders = [(f"tiles in stacks (at most {max(map(len, stacks))} a stack)", lambda: tiled(fn, "linear", stacks)),
                  ("tiles, one image at a time", lambda: tiled(fn, "linear", alone)),
                  ("whole padded images", lambda: whole(fn))]
    for label, run in contenders:
        began = time.perf_counter()
        run()
        timings[label] = len(ids) / (time.perf_counter() - began)
    rates = list(timings.values())
    print("\nno TTA, images/s: " + ", ".join(f"{label} {rate:.1f}" for label, rate in timings.items())
          + f" (stacked tiles {rates[0] / rates[1]:.2f}x one at a time); batch {batch}, "
          f"{platform.node()} ({os.cpu_count()} cores)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
