"""Training-step speed: segkit's training loop against a bare PyTorch loop, side by side in one run.

    .venv/bin/python bench/train_speed.py [--batch 8] [--size 128] [--rounds 5] [--threads 1]

Reference: the loop a notebook writes — ``model(x)``, BCE-with-logits + smp Dice, ``backward``, AdamW ``step`` —
in fp32. segkit: ``segkit.stages.train.loop.train_epoch`` (weighted loss terms in fp32, per-step LR schedule, gradient
clipping, NaN check, EMA off) in fp32, and with ``amp: bf16`` + ``channels_last`` + float32 depthwise
convolutions (what ``segkit train`` does for bf16 on the CPU:
``segkit.compute.device.depthwise_float32_when_training``). Each round times every variant once, in turn, so load from
other processes hits them alike; the table shows medians (ms per step) over rounds, the loop's overhead (segkit fp32 /
bare fp32) and the bf16 speed-up (segkit fp32 / segkit bf16).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
import warnings

warnings.filterwarnings("ignore")

import torch  # noqa: E402

import segkit  # noqa: E402, F401  (import fixes for torchvision come first)
from segkit.compute.device import depthwise_float32_when_training  # noqa: E402
from segkit.config.schema import ModelConfig, TrainConfig  # noqa: E402
from segkit.losses import build_loss  # noqa: E402
from segkit.models import build_model  # noqa: E402
from segkit.optim import build_optimizer, build_schedule  # noqa: E402
from segkit.stages.train.loop import Stepper, train_epoch  # noqa: E402

MODELS = [("Unet", "resnet34"), ("Unet", "tu-tf_efficientnet_lite0"), ("FPN", "resnet18"),
          ("Linknet", "tu-mobilenetv3_small_100")]


def batches(n: int, batch: int, size: int, channels_last: bool) -> list[dict]:
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(n):
        x = torch.randn(batch, 3, size, size, generator=g)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        m = (torch.rand(batch, 1, size, size, generator=g) > 0.8).float()
        out.append({"image": x, "mask": m, "has_mask": m.amax((2, 3)), "id": [str(i) for i in range(batch)],
                    "size": torch.tensor([[size, size]] * batch)})
    return out


def bare_steps(model, data) -> float:
    import segmentation_models_pytorch as smp

    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    dice = smp.losses.DiceLoss("binary")
    model.train()
    start = time.perf_counter()
    for b in data:
        logits = model(b["image"])
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, b["mask"]) + dice(logits, b["mask"])
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return (time.perf_counter() - start) / len(data)


def segkit_steps(model, data, amp: str, channels_last: bool) -> float:
    cfg = TrainConfig(amp=amp, channels_last=channels_last, clip_grad=5.0, progress=False, epochs=1)
    opt = build_optimizer(model, cfg)
    sched = build_schedule(opt, cfg, len(data))
    stepper = Stepper(model, model, opt, sched, torch.amp.GradScaler("cpu", enabled=False), None, cfg,
                      torch.device("cpu"), "bench")
    loss = build_loss({"bce": 1.0, "dice": 1.0}, "binary", 1)
    start = time.perf_counter()
    train_epoch(stepper, data, loss, 1, progress=False)
    return (time.perf_counter() - start) / len(data)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--steps", type=int, default=3, help="timed steps per variant per round")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"{platform.processor() or platform.machine()}, torch {torch.__version__}, {args.threads} thread(s), "
          f"batch {args.batch} x {args.size}^2, {args.steps} steps x {args.rounds} rounds (medians)")
    print("| model | bare fp32 ms | segkit fp32 ms | segkit bf16+CL ms | loop overhead | bf16 speed-up |")
    print("|---|---:|---:|---:|---:|---:|")
    for arch, encoder in MODELS:
        torch.manual_seed(0)
        cfg = ModelConfig(name="bench", arch=arch, encoder=encoder)
        nets = {k: build_model(cfg, 3, "binary", 1) for k in ("bare", "fp32", "bf16")}
        nets["bf16"] = nets["bf16"].to(memory_format=torch.channels_last)
        depthwise_float32_when_training(nets["bf16"])
        plain, cl = batches(args.steps, args.batch, args.size, False), batches(args.steps, args.batch, args.size, True)
        warm = batches(1, args.batch, args.size, False)
        bare_steps(nets["bare"], warm), segkit_steps(nets["fp32"], warm, "none", False)
        segkit_steps(nets["bf16"], batches(1, args.batch, args.size, True), "bf16", True)
        times: dict[str, list[float]] = {"bare": [], "fp32": [], "bf16": []}
        for _ in range(args.rounds):
            times["bare"].append(bare_steps(nets["bare"], plain))
            times["fp32"].append(segkit_steps(nets["fp32"], plain, "none", False))
            times["bf16"].append(segkit_steps(nets["bf16"], cl, "bf16", True))
        med = {k: 1000 * statistics.median(v) for k, v in times.items()}
        print(f"| {arch} {encoder} | {med['bare']:.0f} | {med['fp32']:.0f} | {med['bf16']:.0f} | "
              f"{med['fp32'] / med['bare']:.2f}x | {med['fp32'] / med['bf16']:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
