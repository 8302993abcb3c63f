"""Training-step speed of the real-data recipes' network on this CPU: threads, scSE attention, crop size, decoder
width, encoder size, bf16 against float32 depthwise convolutions, and bf16 against plain float32.

    .venv/bin/python bench/cpu_step.py [--steps 10] [--compile]
    .venv/bin/python bench/cpu_step.py --flops      # where the FLOPs go, encoder vs decoder (no timing)
    .venv/bin/python bench/cpu_step.py --depthwise  # backward of single depthwise layers, bf16 vs float32

One bare step = bf16 autocast forward (float32 in the rows that say so) of a Unet on ``tu-tf_efficientnet_lite0``
(Lite1 or Lite2 in the rows that say so; channels_last), BCE, backward, AdamW step; batch 32. ``--only 4 6`` times
only those rows beside the reference. Each row is the median of ``--steps`` timed steps after 3 warm-up steps; every
row runs in its own process with the asked thread count, one after another, so no two compete for the cores. Prints
images per second and the ratio to the reference row (two threads, no attention, 128 px).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

# Each row: a label and its changes to DEFAULTS. "depthwise float32" is what segkit's CPU bf16 training does
# (segkit.compute.device.depthwise_float32_when_training); the rows without it show the plain bf16 network.
DEFAULTS = {"threads": 2, "attention": None, "size": 128, "decoder": None, "depthwise_fp32": False, "compile": False,
            "bf16": True, "encoder": "tu-tf_efficientnet_lite0"}
ROWS = [
    ("reference: 2 threads, 128 px", {}),
    ("1 thread, 128 px", {"threads": 1}),
    ("2 threads, 128 px, scSE", {"attention": "scse"}),
    ("2 threads, 128 px, depthwise float32", {"depthwise_fp32": True}),
    ("2 threads, 96 px crops", {"size": 96}),
    ("2 threads, 96 px crops, decoder 128-64-32-16-8", {"size": 96, "decoder": [128, 64, 32, 16, 8]}),
    ("2 threads, 96 px crops, depthwise float32 (the TGS cpu recipe)", {"size": 96, "depthwise_fp32": True}),
    ("2 threads, 96 px crops, depthwise float32, decoder 128-64-32-16-8",
     {"size": 96, "depthwise_fp32": True, "decoder": [128, 64, 32, 16, 8]}),
    ("2 threads, 96 px crops, float32", {"size": 96, "bf16": False}),
    ("2 threads, 96 px crops, float32, decoder 128-64-32-16-8",
     {"size": 96, "bf16": False, "decoder": [128, 64, 32, 16, 8]}),
    # smp's scSE squeezes channels by 16, so the last block needs 16 channels
    ("2 threads, 96 px crops, float32, decoder 128-64-32-16-16, scSE",
     {"size": 96, "bf16": False, "decoder": [128, 64, 32, 16, 16], "attention": "scse"}),
    ("2 threads, 96 px crops, float32, decoder 128-64-32-16-8, Lite1 encoder",
     {"size": 96, "bf16": False, "decoder": [128, 64, 32, 16, 8], "encoder": "tu-tf_efficientnet_lite1"}),
    ("2 threads, 96 px crops, float32, decoder 128-64-32-16-8, Lite2 encoder",
     {"size": 96, "bf16": False, "decoder": [128, 64, 32, 16, 8], "encoder": "tu-tf_efficientnet_lite2"}),
]


def one(threads: int, attention: str | None, size: int, decoder: list[int] | None, depthwise_fp32: bool,
        compile: bool, bf16: bool, encoder: str, steps: int) -> float:
    import segmentation_models_pytorch as smp
    import torch

    import segkit  # noqa: F401  (import fix for torchvision before smp)
    from segkit.compute.device import depthwise_float32_when_training

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    extra = {"decoder_channels": decoder} if decoder else {}
    model = smp.Unet(encoder, encoder_weights=None, decoder_attention_type=attention, **extra)
    model = model.to(memory_format=torch.channels_last)
    if depthwise_fp32:
        depthwise_float32_when_training(model)
    forward = torch.compile(model) if compile else model
    opt = torch.optim.AdamW(model.parameters(), 1e-3)
    x = torch.randn(32, 3, size, size).contiguous(memory_format=torch.channels_last)
    y = (torch.rand(32, 1, size, size) > 0.5).float()

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = forward(x)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(out.float(), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    for _ in range(3):
        step()
    times = []
    for _ in range(steps):
        began = time.perf_counter()
        step()
        times.append(time.perf_counter() - began)
    return 32 / statistics.median(times)


def flops(size: int = 96) -> None:
    """Where the forward pass's FLOPs go at ``size`` px (torch's FlopCounterMode): encoder, decoder + head."""
    import segmentation_models_pytorch as smp
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    import segkit  # noqa: F401  (import fix for torchvision before smp)

    for label, extra in (("256-128-64-32-16 (smp's default)", {}),
                         ("128-64-32-16-8", {"decoder_channels": [128, 64, 32, 16, 8]})):
        model = smp.Unet("tu-tf_efficientnet_lite0", encoder_weights=None, **extra).eval()
        x = torch.zeros(1, 3, size, size)
        with torch.no_grad():
            with FlopCounterMode(display=False) as counter:
                model.encoder(x)
            encoder = counter.get_total_flops()
            with FlopCounterMode(display=False) as counter:
                model(x)
            total = counter.get_total_flops()
        print(f"| decoder {label} | {encoder / 1e6:.0f} | {(total - encoder) / 1e6:.0f} | "
              f"{(total - encoder) / encoder:.1f}x |")


# Depthwise layers of tu-tf_efficientnet_lite0 at 96 px input, batch 32: (channels, input px, kernel, stride).
DEPTHWISE = [(96, 49, 3, 2), (144, 27, 5, 2), (240, 12, 5, 1), (672, 6, 5, 1), (1152, 3, 5, 1)]


def depthwise(repeats: int = 5) -> None:
    """Milliseconds for the backward (input and weight gradients) of single depthwise convolutions, channels_last,
    in bf16 and in float32: the measurement behind ``segkit.compute.device.depthwise_float32_when_training``."""
    import torch

    torch.set_num_threads(2)
    print("| layer (channels, px, kernel, stride) | bf16 ms | float32 ms | bf16 / float32 |\n|---|---:|---:|---:|")
    for channels, px, kernel, stride in DEPTHWISE:
        row = []
        for dtype in (torch.bfloat16, torch.float32):
            x = torch.randn(32, channels, px, px, dtype=dtype).contiguous(memory_format=torch.channels_last)
            w = torch.randn(channels, 1, kernel, kernel, dtype=dtype).contiguous(memory_format=torch.channels_last)
            x.requires_grad_(True), w.requires_grad_(True)
            out = torch.nn.functional.conv2d(x, w, stride=stride, padding=kernel // 2, groups=channels)
            grad = torch.randn_like(out)
            times = []
            for i in range(repeats + 2):
                began = time.perf_counter()
                torch.autograd.grad(out, (x, w), grad, retain_graph=True)
                if i >= 2:  # two warm-up calls
                    times.append(time.perf_counter() - began)
            row.append(statistics.median(times) * 1000)
        print(f"| {channels}, {px}, {kernel}x{kernel}, {stride} | {row[0]:.1f} | {row[1]:.1f} | "
              f"{row[0] / row[1]:.1f}x |")


def _native_bf16() -> bool:
    import segkit  # noqa: F401  (import fix for torchvision)
    from segkit.compute.device import cpu_has_native_bf16

    return cpu_has_native_bf16()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--compile", action="store_true", help="also time the reference row under torch.compile")
    parser.add_argument("--flops", action="store_true", help="print the encoder's and decoder's FLOPs at 96 px "
                                                              "instead of timing")
    parser.add_argument("--depthwise", action="store_true", help="time the backward of single depthwise layers, "
                                                                  "bf16 vs float32, instead of whole steps")
    parser.add_argument("--only", nargs="+", type=int, metavar="N",
                        help="time only these rows (numbered from 0; the reference row always runs)")
    parser.add_argument("--row", help=argparse.SUPPRESS)  # a child process: one row as JSON
    args = parser.parse_args()
    if args.flops:
        print("one 96 px image, forward pass\n| network | encoder MFLOPs | decoder + head MFLOPs | ratio |\n"
              "|---|---:|---:|---:|")
        flops()
        return
    if args.depthwise:
        depthwise()
        return
    if args.row:
        print(json.dumps(one(**json.loads(args.row), steps=args.steps)))
        return
    rows = [row for n, row in enumerate(ROWS) if args.only is None or n == 0 or n in args.only]
    if args.compile:
        rows.append(("2 threads, 128 px, torch.compile", {"compile": True}))
    print(f"{platform.machine()}, {os.cpu_count()} cores, native bf16: {_native_bf16()}, batch 32, channels_last, "
          f"median of {args.steps} steps")
    print("| setting | images/s | ratio to reference |\n|---|---:|---:|")
    reference = None
    for label, changes in rows:
        settings = {**DEFAULTS, **changes}
        env = dict(os.environ, OMP_NUM_THREADS=str(settings["threads"]))
        out = subprocess.run([sys.executable, __file__, "--steps", str(args.steps), "--row", json.dumps(settings)],
                             capture_output=True, text=True, env=env, check=True)
        rate = float(out.stdout.strip().splitlines()[-1])
        reference = reference or rate
        print(f"| {label} | {rate:.1f} | {rate / reference:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
