"""Pieces the classic networks share: conv-BN-ReLU, a depthwise-separable conv, ASPP, the smp encoder and resizing.

Every resize takes its target size from a tensor's shape (``resize(x, like.shape[-2:])``), never a scale factor
computed in Python: the ONNX tracer then records the size as a computation on the input's shape, so an exported
network runs at any input size instead of the one it was traced at.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

MAX_DEPTH = 5  # smp's and timm's encoders give at most five stages (stride 32)


def resize(x: torch.Tensor, size) -> torch.Tensor:
    """Bilinear resize to ``size`` (a tensor's ``shape[-2:]``, so the ONNX graph keeps it symbolic)."""
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class ConvBNReLU(nn.Sequential):
    """A k x k convolution (no bias: the batch norm's shift replaces it), batch norm, ReLU."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, dilation: int = 1):
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size, padding=dilation * (kernel_size // 2),
                      dilation=dilation, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class SeparableConvBNReLU(nn.Sequential):
    """A dilated depthwise 3x3 convolution, batch norm, a pointwise 1x1 convolution, batch norm, ReLU."""

    def __init__(self, in_channels: int, out_channels: int, dilation: int):
        super().__init__(
            nn.Conv2d(in_channels, in_channels, 3, padding=dilation, dilation=dilation, groups=in_channels,
                      bias=False),
            nn.BatchNorm2d(in_channels),
            nn.Conv2d(in_channels, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


def aspp_rates(stride: int) -> tuple[int, int, int]:
    """DeepLabV3's atrous rates for a feature map at ``stride``: (6, 12, 18) at 16, doubled at 8, halved at 32.

    The rates scale with the map's resolution so the three branches keep covering the same share of the image.
    """
    return tuple(max(1, rate * 16 // stride) for rate in (6, 12, 18))


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling (Chen et al. 2017, DeepLabV3): a 1x1 branch, three dilated 3x3 branches and
    an image-pooling branch, concatenated (with ``extra`` maps, if given) and projected by a 1x1 conv-BN-ReLU."""

    def __init__(self, in_channels: int, out_channels: int, rates: tuple[int, int, int], extra_channels: int = 0):
        super().__init__()
        self.branches = nn.ModuleList(
            [ConvBNReLU(in_channels, out_channels, 1)]
            + [ConvBNReLU(in_channels, out_channels, 3, dilation=rate) for rate in rates]
        )
        # No batch norm after the pooled 1x1 map: in training it would see one value per channel and image, which
        # fails at batch size 1 and is noisy above it. A bias stands in for the norm's shift.
        self.pooling = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1), nn.ReLU(inplace=True))
        self.project = ConvBNReLU(out_channels * (len(rates) + 2) + extra_channels, out_channels, 1)

    def forward(self, x: torch.Tensor, extra: Optional[torch.Tensor] = None) -> torch.Tensor:
        outs = [branch(x) for branch in self.branches]
        pooled = self.pooling(x.mean(dim=(2, 3), keepdim=True))
        outs.append(F.interpolate(pooled, size=x.shape[-2:], mode="nearest"))
        if extra is not None:
            outs.append(extra)
        return self.project(torch.cat(outs, dim=1))


def check_channels(network: str, classes: int, in_channels: int) -> None:
    if classes < 1:
        raise ValueError(f"{network}: classes must be at least 1, got {classes}")
    if in_channels < 1:
        raise ValueError(f"{network}: in_channels must be at least 1, got {in_channels}")


def smp_encoder(network: str, encoder_name: str, encoder_weights: Optional[str], in_channels: int,
                encoder_depth: int, min_depth: int, why: str) -> nn.Module:
    """smp's encoder by name (smp names and ``tu-<timm model>``), after checking the depth this network needs."""
    if not min_depth <= encoder_depth <= MAX_DEPTH:
        raise ValueError(
            f"{network}: encoder_depth must be between {min_depth} and {MAX_DEPTH} ({why}), got {encoder_depth}"
        )
    # Imported here, as segkit.models does: smp takes seconds to import, and importing these classes should not.
    from segmentation_models_pytorch.encoders import get_encoder

    return get_encoder(encoder_name, in_channels=in_channels, depth=encoder_depth, weights=encoder_weights)
