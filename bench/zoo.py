"""The networks of a config side by side: parameters and the training step's time, and (when their folds are
trained) the fold scores from each fold's summary.json.

    .venv/bin/python bench/zoo.py --config configs/isbi2012_zoo.yaml [--steps 6] [key.sub=value ...]

Each model is built as ``segkit train`` builds it (random init: the weights do not change the time) and timed on
random batches of the training shape (``train.batch_size`` x ``data.input_channels`` x ``train.crop_size``²) with
the config's loss (a detector: its own losses, on 20 discs an image made into its targets as a fold makes them),
AdamW and autocast (``train.amp`` resolved here): one untimed warm-up step, then the median of
``--steps``, every model in this one process, one after the other, so they share the machine's state. Then, for
each model with trained folds, the mean validation score (the config's metric, p > 0.5, no TTA) over its folds.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import torch  # noqa: E402

import segkit  # noqa: E402, F401  (import fixes for torchvision come first)
from segkit.config import load_config  # noqa: E402


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value")
    args = parser.parse_args(argv)

    from segkit.compute.device import autocast, cpu_has_native_bf16, resolve_amp, resolve_device
    from segkit.losses import LossSchedule
    from segkit.models import build_model, learns_objects
    from segkit.stages.train.loop import batch_loss, network_inputs

    cfg = load_config(args.config, args.overrides)
    device = resolve_device(cfg.device)
    bf16 = "with" if cpu_has_native_bf16() else "without"
    print(f"{cfg.experiment}: {platform.node()}, {cpu_model()} ({bf16} native bf16), torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    rows = []
    for m in cfg.models:
        tcfg = cfg.train_for(m)
        if tcfg.threads:
            torch.set_num_threads(tcfg.threads)
        amp = resolve_amp(tcfg.amp, device)
        torch.manual_seed(0)
        model = build_model(m, cfg.data.input_channels, cfg.data.mode, len(cfg.data.classes), pretrained=False)
        model = model.to(device).train()
        if tcfg.channels_last:
            model = model.to(memory_format=torch.channels_last)
        loss_fn = LossSchedule(tcfg, cfg.data.mode, len(cfg.data.classes)).for_epoch(1)
        optimizer = torch.optim.AdamW(model.parameters(), lr=tcfg.lr)
        size = tcfg.crop_size or 256
        x = torch.randn(tcfg.batch_size, cfg.data.input_channels, size, size, device=device)
        if tcfg.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        mask = (torch.rand(tcfg.batch_size, len(cfg.data.classes), size, size, device=device) > 0.7).float()
        batch = {"image": x, "mask": mask}
        if learns_objects(m):
            batch["objects"] = [discs(size, 20, seed, device) for seed in range(tcfg.batch_size)]
        times = []
        for step in range(args.steps + 1):
            began = time.perf_counter()
            with autocast(device, amp):
                out = model(*network_inputs(batch))
            loss, _ = batch_loss(loss_fn, out, batch)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if step:
                times.append(time.perf_counter() - began)
        params = sum(p.numel() for p in model.parameters())
        scores = []
        for _, fold in cfg.layout.model(m.name).folds():
            if fold.summary.exists():
                scores.append(json.loads(fold.summary.read_text())["score"])
        rows.append((m, params, statistics.median(times), scores))
        print(f"{m.name}: {params / 1e6:.2f} M params, {statistics.median(times) * 1000:.0f} ms a step "
              f"(batch {tcfg.batch_size}, {size} px, amp {amp})", flush=True)
    base = rows[0][2]
    print(f"\n| model | network | encoder | params (M) | step (ms) | step vs {rows[0][0].name} | {cfg.metric}, "
          f"fold mean (folds) |\n|---|---|---|---:|---:|---:|---:|")
    for m, params, step, scores in rows:
        score = f"{sum(scores) / len(scores):.4f} ({len(scores)})" if scores else "not trained"
        weights = f", {m.encoder_weights}" if m.encoder_weights else ""
        print(f"| {m.name} | {m.arch} | {m.encoder}{weights} | {params / 1e6:.2f} | {step * 1000:.0f} | "
              f"{step / base:.2f}x | {score} |")
    return 0


def discs(size: int, n: int, seed: int, device) -> dict:
    """A detector's targets for one image: ``n`` discs 4-12 px in radius (nuclei-like), as boxes and masks."""
    import numpy as np

    from segkit.data.instances import objects

    rng = np.random.default_rng(seed)
    labels = np.zeros((size, size), np.int32)
    yy, xx = np.mgrid[:size, :size]
    for k in range(1, n + 1):
        cy, cx, r = *rng.integers(0, size, 2), rng.integers(4, 13)
        labels[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = k
    boxes, masks = objects(labels)
    return {"boxes": torch.from_numpy(boxes).to(device), "masks": torch.from_numpy(masks).to(device)}


if __name__ == "__main__":
    sys.exit(main())
