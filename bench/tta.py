"""D4 test-time augmentation: segkit.inference.tta.TTAPredictor against ttach's SegmentationTTAWrapper, side by side.

    .venv/bin/python bench/tta.py                      # CPU, Unet resnet18, 8x3x128x128
    .venv/bin/python bench/tta.py --device cuda --amp bf16 --batch 32 --size 256

Times (median over interleaved rounds, so load on a shared machine hits every variant alike): one plain forward
pass, segkit D4 for each chunk size (views per forward call), ttach D4. All run under torch.inference_mode with
the model in eval mode. Outputs are compared like with like: ttach merges raw model outputs, so segkit runs with
activation=None there. ttach is in requirements.txt.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import segmentation_models_pytorch as smp  # noqa: E402
import torch  # noqa: E402
import ttach  # noqa: E402

import segkit  # noqa: F401,E402  (import fix for torchvision before smp)
from segkit.compute.device import amp_dtype  # noqa: E402
from segkit.inference.tta import TTAPredictor  # noqa: E402


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device: torch.device) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of one call."""
    sync(device)
    t0, c0 = time.perf_counter(), time.process_time()
    fn()
    sync(device)
    return time.perf_counter() - t0, time.process_time() - c0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--encoder", default="resnet18")
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--classes", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--amp", default="none", help="none | bf16 | fp16 (segkit rows and ttach alike)")
    ap.add_argument("--channels-last", action="store_true")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    ap.add_argument("--per-round", action="store_true",
                    help="also print every round's wall ms (and CPU/wall: ~threads when the cores are free)")
    ap.add_argument("--chunks", default="1,2,4,8", help="segkit chunk sizes to time")
    args = ap.parse_args()

    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = smp.Unet(args.encoder, encoder_weights=None, classes=args.classes).eval().to(device)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    x = torch.randn(args.batch, 3, args.size, args.size, device=device)
    dtype = amp_dtype(args.amp, key="--amp")

    def autocast():
        return torch.autocast(device_type=device.type, dtype=dtype, enabled=dtype is not None)

    def prepare(t):
        return t.contiguous(memory_format=torch.channels_last) if args.channels_last else t

    ttach_model = ttach.SegmentationTTAWrapper(model, ttach.aliases.d4_transform(), merge_mode="mean")

    @torch.inference_mode()
    def plain():
        with autocast():
            return model(prepare(x)).float()

    @torch.inference_mode()
    def ttach_d4():
        with autocast():
            return ttach_model(prepare(x)).float()

    chunks = [int(c) for c in args.chunks.split(",")]
    segkit_runs = {
        c: TTAPredictor(model, tta="d4", merge="mean", chunk=c, activation=None, amp=dtype,
                        channels_last=args.channels_last)
        for c in chunks
    }
    default = TTAPredictor(model, tta="d4", merge="mean", activation=None, amp=dtype,
                           channels_last=args.channels_last)
    default_chunk = default.chunk_for(device, 8)

    variants = {"plain pass": plain, "ttach D4": ttach_d4}
    variants.update({f"segkit D4 chunk={c}": (lambda p=p: p(x)) for c, p in segkit_runs.items()})

    # Correctness first (same merge of the same raw outputs); this pass doubles as the warm-up (allocator,
    # oneDNN primitive cache / cuDNN autotune) for every variant.
    plain()
    ref = ttach_d4()
    diffs = {name: (fn() - ref).abs().max().item() for name, fn in variants.items() if name.startswith("segkit")}

    times: dict[str, list[float]] = {name: [] for name in variants}
    cpu: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.rounds):
        for name, fn in variants.items():
            wall, used = timed(fn, device)
            times[name].append(wall)
            cpu[name].append(used)
    if args.per_round:
        # A round whose plain pass shows CPU/wall well below the thread count ran on contended cores.
        print("round | " + " | ".join(variants))
        for r in range(args.rounds):
            print(f"{r} | " + " | ".join(f"{times[n][r] * 1e3:.0f} ({cpu[n][r] / times[n][r]:.1f})" for n in variants))
    med = {name: statistics.median(t) for name, t in times.items()}
    best = {name: min(t) for name, t in times.items()}
    cpu_best = {name: min(t) for name, t in cpu.items()}

    threads = torch.get_num_threads() if device.type == "cpu" else "-"
    print(f"device={device.type} threads={threads} model=Unet({args.encoder}) input={tuple(x.shape)} "
          f"amp={args.amp} channels_last={args.channels_last} rounds={args.rounds} "
          f"segkit default chunk here={default_chunk}")
    # On a shared machine other load only ever adds time, so the min is the cleaner figure; both are shown.
    # CPU ms (process time, min over rounds) is shown too: it does not count time spent waiting for a core.
    print("| variant | median ms | min ms | cpu ms | x plain (med / min) | ttach / this (med / min) "
          "| max abs diff vs ttach |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name in variants:
        diff = f"{diffs[name]:.1e}" if name in diffs else "-"
        print(f"| {name} | {med[name] * 1e3:.0f} | {best[name] * 1e3:.0f} | {cpu_best[name] * 1e3:.0f} "
              f"| {med[name] / med['plain pass']:.2f} / {best[name] / best['plain pass']:.2f} "
              f"| {med['ttach D4'] / med[name]:.2f} / {best['ttach D4'] / best[name]:.2f} | {diff} |")

if __name__ == "__main__":
    main()
