"""Images per second of one fold's network in each runtime a bundle can use, side by side in one run: PyTorch eager
(float32, and as ``segkit predict`` runs it: ``predict.amp``, channels_last), TorchScript and ONNX Runtime (float32),
on one batch of real test images at the network's input size (a tile where the recipe tiles), plus the sizes of
the exports and each runtime's largest difference of probabilities from PyTorch float32.

    .venv/bin/python bench/export.py --config configs/tgs_salt.yaml paths.runs=/work/wt_runs/runs budget=cpu
    .venv/bin/python bench/export.py --config configs/dsb2018_instances.yaml paths.runs=/work/wt_runs/runs \\
        budget=cpu experiment=dsb2018_instances_e20 --batch 16

The fold's checkpoint is exported into a temporary folder (the experiment's export/ is left alone). Each runtime
runs ``--repeats`` timed passes after one warm-up; the median is reported.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--model", default=None, help="default: the config's first model")
    parser.add_argument("--fold", type=int, default=0)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dynamo", action="store_true",
                        help="also time torch.export's ONNX exporter with dynamic batch, height and width (minutes)")
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value")
    args = parser.parse_args(argv)
    import torch

    from segkit.compute.device import cpu_has_native_bf16
    from segkit.config import load_config
    from segkit.data import Competition, pad_to_multiple
    from segkit.inference.runtimes import EXPORTERS, SUFFIX, ProbabilityGraph, loader, write_meta
    from segkit.inference.tta import TTAPredictor
    from segkit.models.checkpoint import fold_checkpoints, load_model

    cfg = load_config(args.config, args.overrides)
    model_name = args.model or cfg.models[0].name
    checkpoint = fold_checkpoints(cfg, model_name, args.fold)[0]
    net, meta = load_model(checkpoint, "cpu")
    graph = ProbabilityGraph(net, cfg.data, meta["mode"]).eval()
    pad_to = int(meta.get("pad_to", 32))
    comp = Competition(cfg.data, seed=cfg.seed)
    tile = cfg.predict.tile_size
    images = []
    for image_id in comp.test_ids:
        image = comp.read_image(image_id, "test")
        if tile is not None and max(image.shape[:2]) > tile:
            image = image[:tile, :tile]  # prediction cuts tiles of this size
        image = pad_to_multiple(image, pad_to)
        if images and image.shape != images[0].shape:
            continue
        images.append(image)
        if len(images) == args.batch:
            break
    x = torch.from_numpy(np.ascontiguousarray(np.stack(images).transpose(0, 3, 1, 2)))
    with torch.inference_mode():
        reference = graph(x)

    def timed(run) -> float:
        run()
        seconds = []
        for _ in range(args.repeats):
            began = time.perf_counter()
            run()
            seconds.append(time.perf_counter() - began)
        return statistics.median(seconds)

    # The forward pass as predict runs it: the network on normalised input, predict.amp, channels_last, one view.
    as_predict = TTAPredictor(net, tta="none", activation="softmax" if meta["mode"] == "multiclass" else "sigmoid",
                              amp=cfg.predict.amp, channels_last=cfg.predict.channels_last)
    with torch.inference_mode():
        normalised = graph.normalise(x)
    rows = []
    with torch.inference_mode():
        rows.append(("eager float32", timed(lambda: graph(x)), 0.0, None))
        p = as_predict(normalised)
        rows.append((f"eager as predict (amp {cfg.predict.amp}, channels_last {cfg.predict.channels_last})",
                     timed(lambda: as_predict(normalised)), float((p - reference).abs().max()), None))
    exported = []
    with tempfile.TemporaryDirectory() as work:
        for fmt in ("torchscript", "onnx"):
            path = Path(work) / f"net{SUFFIX[fmt]}"
            began = time.perf_counter()
            record = EXPORTERS[fmt](graph, x[:1], path)
            exported.append((f"{fmt} as segkit export writes it (dynamic: {record['dynamic']})",
                             {"seconds": time.perf_counter() - began}))
            write_meta(path, meta, record)
            network, _ = loader(fmt)(path, torch.device("cpu"))
            with torch.inference_mode():
                out = network(x)
                rows.append((f"{fmt} float32", timed(lambda: network(x)), float((out - reference).abs().max()),
                             path.stat().st_size))
        exports = [(fmt, rec) for fmt, rec in exported]
        if args.dynamo:
            b, h, w = (torch.export.Dim(n, min=1, max=4096) for n in ("batch", "height", "width"))
            began = time.perf_counter()
            torch.onnx.export(graph, (x[:1],), str(Path(work) / "dynamo.onnx"), dynamo=True,
                              dynamic_shapes={"image": {0: b, 2: pad_to * h, 3: pad_to * w}})
            exports.append(("onnx, torch.export (dynamo), dynamic sizes", {"seconds": time.perf_counter() - began}))
    base = rows[1][1]
    print(f"# {cfg.experiment} {model_name} fold {args.fold}: batch {tuple(x.shape)}, torch "
          f"{torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()} "
          f"CPU {'with' if cpu_has_native_bf16() else 'without'} native bf16")
    print("| runtime | images/s | vs eager as predict | max abs diff of p vs fp32 eager | file MiB |")
    print("|---|---|---|---|---|")
    for name, seconds, diff, size in rows:
        print(f"| {name} | {len(x) / seconds:.1f} | {base / seconds:.2f}x | {diff:.1e} | "
              f"{'' if size is None else f'{size / 2**20:.1f}'} |")
    print("\n| export | seconds |\n|---|---|")
    for name, rec in exports:
        print(f"| {name} | {rec['seconds']:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
