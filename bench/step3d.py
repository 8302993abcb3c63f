"""One training step of a 3D network, in the layouts and norms a recipe can choose, side by side in one process.

    .venv/bin/python bench/step3d.py [--patch 40 56 40] [--batch 4] [--repeats 5]

The network is segkit's DynUNet as configs/msd_hippocampus.yaml trains it (four levels, 16-128 wide), random
weights, CE loss, AdamW; bf16 autocast where the CPU computes bf16 natively, float32 elsewhere. Variants: instance
norm (the recipe's) or batch norm, each in the default memory layout and in channels_last_3d. The variants'
steps alternate within each repeat; printed: the median seconds a step and the ratio to the first variant.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import segkit  # noqa: F401  (import fixes for torchvision come first)
from segkit.compute.device import amp_dtype, cpu_has_native_bf16, resolve_amp
from segkit.config.schema import ModelConfig
from segkit.models import build_model

VARIANTS = {"instance": ("instance", False), "instance, channels_last_3d": ("instance", True),
            "batch": ("batch", False), "batch, channels_last_3d": ("batch", True)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patch", type=int, nargs=3, default=[40, 56, 40])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    dtype = amp_dtype(resolve_amp("auto", torch.device("cpu")))
    x = torch.randn(args.batch, 1, *args.patch)
    y = torch.randint(0, 3, (args.batch, *args.patch))
    steps = {}
    for name, (norm, cl) in VARIANTS.items():
        params = {"levels": 4, "filters": [16, 32, 64, 128], "norm_name": norm}
        net = build_model(ModelConfig(name="bench", arch="DynUNet", params=params), 1, "multiclass", 2)
        fmt = torch.channels_last_3d if cl else torch.contiguous_format
        steps[name] = (net.to(memory_format=fmt), torch.optim.AdamW(net.parameters(), 1e-3),
                       x.contiguous(memory_format=fmt))

    def step(name: str) -> float:
        net, opt, inputs = steps[name]
        began = time.perf_counter()
        with torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None):
            out = net(inputs)
        torch.nn.functional.cross_entropy(out.float(), y).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return time.perf_counter() - began

    for name in steps:  # warm-up
        step(name)
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(args.repeats):
        for name in steps:
            times[name].append(step(name))
    print(f"CPU {'with' if cpu_has_native_bf16() else 'without'} native bf16 ({'bf16' if dtype else 'float32'}), "
          f"{args.threads} threads; DynUNet, batch {args.batch} of {tuple(args.patch)}")
    first = statistics.median(times[next(iter(times))])
    for name, t in times.items():
        m = statistics.median(t)
        print(f"{name:28} {m:6.3f} s a step  {first / m:5.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
