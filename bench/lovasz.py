"""Forward + backward time of segkit's binary Lovasz hinge against smp's, per image, on a TGS-sized batch.

    .venv/bin/python bench/lovasz.py [--batch 32] [--size 96] [--threads 2] [--repeats 30]

segkit scores all images of a batch in one batched sort (``segkit.losses.lovasz_hinge``); smp loops over the
images in Python. Rows: plain hinge (relu) and symmetric (foreground + background, which smp does by calling its
loss twice). A third of the images are empty, as in TGS. Prints the median milliseconds of each and the ratio
smp / segkit (above 1: segkit is faster), and checks both give the same loss.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch

import segkit  # noqa: F401  (sets up the torchvision shim before smp imports it)
from segkit.losses import build_loss


def _time(fn, x0: torch.Tensor, repeats: int) -> tuple[float, float]:
    times, value = [], 0.0
    for i in range(repeats + 3):
        x = x0.clone().requires_grad_(True)
        began = time.perf_counter()
        loss = fn(x)
        loss.backward()
        if i >= 3:  # warm-up
            times.append(time.perf_counter() - began)
        value = float(loss.detach())
    return statistics.median(times) * 1000, value


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--size", type=int, default=96)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=30)
    args = ap.parse_args()
    import segmentation_models_pytorch as smp

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    mask = (torch.rand(args.batch, 1, args.size, args.size) > 0.6).float()
    mask[::3] = 0
    logits = torch.randn(args.batch, 1, args.size, args.size) * 2
    reference = smp.losses.LovaszLoss("binary", per_image=True)
    print(f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, {args.threads} thread(s), "
          f"batch {args.batch} x {args.size}x{args.size}")
    print(f"{'hinge':<10} {'segkit ms':>10} {'smp ms':>10} {'smp/segkit':>11}")
    for symmetric in (False, True):
        ours = build_loss({"lovasz": 1}, "binary", 1,
                          params={"lovasz": {"per_image": True, "symmetric": symmetric}})

        def theirs(x):
            loss = reference(x, mask)
            return (loss + reference(-x, 1 - mask)) / 2 if symmetric else loss

        t_ours, v_ours = _time(lambda x: ours(x, mask)[0], logits, args.repeats)
        t_ref, v_ref = _time(theirs, logits, args.repeats)
        assert abs(v_ours - v_ref) < 1e-4, (v_ours, v_ref)
        print(f"{'symmetric' if symmetric else 'plain':<10} {t_ours:>10.1f} {t_ref:>10.1f} {t_ref / t_ours:>11.2f}")


if __name__ == "__main__":
    main()
