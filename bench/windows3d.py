"""Sliding-window inference over a volume: several 3D windows a forward call against one window at a time (the way
nnU-Net predicts), on the same network and volume, in one process, alternating so that both meet the same machine.

    .venv/bin/python bench/windows3d.py [--shape 88 160 208] [--patch 64 96 96] [--batch 1 2 4] [--repeats 3]
        [--amp auto|none] [--network plain|dynunet]

The network is a small 3D U-Net of plain convolutions (``plain``), or segkit's ``DynUNet`` (MONAI's, four levels,
widths 16-32-64-128, as configs/msd_hippocampus.yaml trains it); random weights: speed depends on none. bf16
autocast where the CPU computes bf16 natively (``--amp auto``), float32 elsewhere or with ``--amp none``. The
volume's default shape is an LA 2018 left-atrium MRI's (88 slices of about 160 x 208 voxels, cropped), the patch
nnU-Net's 3d_fullres would give it on a CPU-sized budget. Prints the seconds of each batch size (median of the
repeats), the ratio to one window a call, and the largest difference from the one-window map.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch
from torch import nn

import segkit  # noqa: F401  (import fixes for torchvision come first)
from segkit.compute.device import amp_dtype, cpu_has_native_bf16, resolve_amp
from segkit.inference.tiling import predict_tiled, window_corners


def block(cin: int, cout: int) -> nn.Module:
    return nn.Sequential(nn.Conv3d(cin, cout, 3, padding=1), nn.InstanceNorm3d(cout, affine=True),
                         nn.LeakyReLU(0.01, inplace=True), nn.Conv3d(cout, cout, 3, padding=1),
                         nn.InstanceNorm3d(cout, affine=True), nn.LeakyReLU(0.01, inplace=True))


class UNet3d(nn.Module):
    """Three levels, 16-32-64 channels: nnU-Net's building block at a CPU's width."""

    def __init__(self, channels: int = 1, classes: int = 1, width: int = 16):
        super().__init__()
        self.down1, self.down2 = block(channels, width), block(width, 2 * width)
        self.bottom = block(2 * width, 4 * width)
        self.up2, self.dec2 = nn.ConvTranspose3d(4 * width, 2 * width, 2, 2), block(4 * width, 2 * width)
        self.up1, self.dec1 = nn.ConvTranspose3d(2 * width, width, 2, 2), block(2 * width, width)
        self.head = nn.Conv3d(width, classes, 1)
        self.pool = nn.MaxPool3d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.down1(x)
        b = self.down2(self.pool(a))
        c = self.bottom(self.pool(b))
        b = self.dec2(torch.cat([self.up2(c), b], 1))
        a = self.dec1(torch.cat([self.up1(b), a], 1))
        return self.head(a)


def dynunet() -> nn.Module:
    from segkit.config.schema import ModelConfig
    from segkit.models import build_model

    return build_model(ModelConfig(name="bench", arch="DynUNet", params={"levels": 4, "filters": [16, 32, 64, 128]}),
                       1, "binary", 1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=int, nargs=3, default=[88, 160, 208], metavar=("D", "H", "W"))
    parser.add_argument("--patch", type=int, nargs=3, default=[64, 96, 96], metavar=("D", "H", "W"))
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--overlap", type=float, default=0.5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--amp", default="auto", help="auto (bf16 where the CPU computes it natively) or none")
    parser.add_argument("--network", choices=["plain", "dynunet"], default="plain")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    net = (UNet3d() if args.network == "plain" else dynunet()).eval()
    device = torch.device("cpu")
    dtype = amp_dtype(resolve_amp(args.amp, device))
    volume = torch.rand(1, *args.shape)
    windows = len(window_corners(args.shape, args.patch, args.overlap))

    def network(batch: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
            return torch.sigmoid(net(batch).float())

    print(f"CPU {platform.processor() or platform.machine()}, {'with' if cpu_has_native_bf16() else 'without'} "
          f"native bf16 ({'bf16' if dtype is not None else 'float32'}), {args.threads} threads; {args.network} "
          f"network; volume "
          f"{tuple(args.shape)}, patch {tuple(args.patch)}, overlap {args.overlap}: {windows} windows")
    with torch.inference_mode():
        network(volume[None, :, :args.patch[0], :args.patch[1], :args.patch[2]])  # warm-up
        seconds: dict[int, list[float]] = {b: [] for b in args.batch}
        maps: dict[int, torch.Tensor] = {}
        for _ in range(args.repeats):
            for b in args.batch:  # alternating: a drift of the machine's speed meets every batch size alike
                began = time.perf_counter()
                maps[b] = predict_tiled(network, volume, tuple(args.patch), args.overlap, batch_size=b)
                seconds[b].append(time.perf_counter() - began)
    one = statistics.median(seconds[args.batch[0]])
    print(f"{'windows a call':>14}  {'seconds (median)':>16}  {'vs ' + str(args.batch[0]):>8}  {'max |diff|':>10}")
    for b in args.batch:
        t = statistics.median(seconds[b])
        diff = (maps[b] - maps[args.batch[0]]).abs().max().item()
        print(f"{b:>14}  {t:>16.2f}  {one / t:>7.2f}x  {diff:>10.2e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
