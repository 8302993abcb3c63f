"""FastFCN: Wu, Zhang, Huang, Liang, Yu (2019), "FastFCN: Rethinking Dilated Convolution in the Backbone for
Semantic Segmentation" (arXiv:1903.11816).

Strong segmentation heads (FCN, ASPP, EncNet) want features at output stride 8, usually got by dilating the
backbone's last two stages, whose maps then cost 4x and 16x as much. FastFCN keeps the backbone plain (stride 32) and
recovers a stride-8 feature with Joint Pyramid Upsampling (JPU): the deepest three features (strides 8, 16, 32 at
``encoder_depth=5``) are each convolved to a common width, the two deeper upsampled to the shallowest's size and all
three concatenated; four parallel depthwise-separable 3x3 convolutions with dilations 1, 2, 4, 8 then read the
result at several receptive fields. Their concatenation feeds the head. JPU costs a fraction of the dilated stages
at about the same accuracy.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from segkit.models.classic._blocks import (
    ASPP,
    ConvBNReLU,
    SeparableConvBNReLU,
    aspp_rates,
    check_channels,
    resize,
    smp_encoder,
)

HEADS = ("fcn", "aspp")
JPU_DILATIONS = (1, 2, 4, 8)


class JPU(nn.Module):
    """Joint Pyramid Upsampling over three features (shallow first); returns ``4 * channels`` maps at the
    shallowest one's resolution."""

    def __init__(self, in_channels: list[int], channels: int):
        super().__init__()
        self.reduce = nn.ModuleList([ConvBNReLU(c, channels) for c in in_channels])
        self.dilated = nn.ModuleList(
            [SeparableConvBNReLU(3 * channels, channels, dilation) for dilation in JPU_DILATIONS]
        )

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        reduced = [reduce(f) for reduce, f in zip(self.reduce, features)]
        size = reduced[0].shape[-2:]
        joint = torch.cat([reduced[0]] + [resize(f, size) for f in reduced[1:]], dim=1)
        return torch.cat([branch(joint) for branch in self.dilated], dim=1)


class FastFCN(nn.Module):
    """JPU over the encoder's deepest three features, then an FCN or ASPP head; logits upsampled to the input.

    ``jpu_channels``: JPU's width (512 in the paper; the head sees 4x that). ``head``: "fcn" (conv3x3-BN-ReLU of
    ``head_channels``, dropout 0.1, 1x1 scores) or "aspp" (DeepLabV3's ASPP of ``head_channels``, 1x1 scores).
    """

    def __init__(
        self,
        encoder_name: str,
        encoder_weights: Optional[str] = None,
        in_channels: int = 3,
        classes: int = 1,
        encoder_depth: int = 5,
        jpu_channels: int = 512,
        head: str = "fcn",
        head_channels: int = 256,
    ):
        super().__init__()
        check_channels("FastFCN", classes, in_channels)
        if head not in HEADS:
            raise ValueError(f"FastFCN: head must be one of {', '.join(HEADS)}, got {head!r}")
        if jpu_channels < 1 or head_channels < 1:
            raise ValueError(
                f"FastFCN: jpu_channels and head_channels must be at least 1, got {jpu_channels} and {head_channels}"
            )
        self.encoder = smp_encoder("FastFCN", encoder_name, encoder_weights, in_channels, encoder_depth, min_depth=3,
                                   why="JPU joins the deepest three features")
        self.jpu = JPU(self.encoder.out_channels[-3:], jpu_channels)
        if head == "fcn":
            self.head = nn.Sequential(
                ConvBNReLU(4 * jpu_channels, head_channels),
                nn.Dropout2d(0.1),
                nn.Conv2d(head_channels, classes, 1),
            )
        else:
            # JPU's output is at stride 2**(depth - 2): 8 at the usual depth 5, where DeepLabV3 uses rates 12, 24, 36
            self.head = nn.Sequential(
                ASPP(4 * jpu_channels, head_channels, aspp_rates(2 ** (encoder_depth - 2))),
                nn.Conv2d(head_channels, classes, 1),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.encoder(x)[-3:]
        return resize(self.head(self.jpu(features)), x.shape[-2:])
