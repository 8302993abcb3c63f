"""Gated-SCNN: Takikawa, Acuna, Jampani, Fidler (2019), "Gated-SCNN: Gated Shape CNNs for Semantic Segmentation"
(ICCV).

Two streams. The regular stream is an ordinary encoder. The shape stream is a thin, high-resolution branch that
only predicts boundaries: it starts from the encoder's stride-2 feature and, for each of the encoder's deepest three
features, runs a residual block and a gated convolution. The gate is an attention map computed from the shape
features and the (1x1-reduced, upsampled) regular feature, alpha = sigmoid(conv1x1(BN(s || r))); the shape features
become conv1x1(s * alpha + s), so the deep semantics decide which low-level edges are boundaries worth keeping. A
1x1 convolution gives the edge logits.

Fusion: the edge probability and the image's gradient magnitude (the paper uses Canny; here a fixed Sobel filter of
the channel mean, which needs no training, exports to ONNX and gives much the same cue) make an attention map by
1x1 convolution and sigmoid. That map, pooled to the deepest feature's size, is an extra branch of an ASPP over the
deepest feature; a DeepLabV3+-style decoder then joins the upsampled ASPP output with the stride-4 feature and
predicts the masks.

In training the network returns ``{"masks": (N, classes, H, W), "edges": (N, 1, H, W)}`` (logits): the edges are
what the ``dual_task`` loss term trains (``segkit.losses``: the paper's edge, boundary-attention and dual-task
consistency losses). In eval mode it returns the mask logits alone, so prediction and export see one tensor.
"""

from __future__ import annotations

from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import nn

from segkit.models.classic._blocks import ASPP, ConvBNReLU, aspp_rates, check_channels, resize, smp_encoder

LOW_LEVEL_CHANNELS = 48  # DeepLabV3+'s width for the stride-4 feature: few, so the decoder is led by the ASPP


def sobel_kernels() -> torch.Tensor:
    """The horizontal and vertical 3x3 Sobel filters, (2, 1, 3, 3)."""
    sobel = torch.tensor([[1.0, 0.0, -1.0], [2.0, 0.0, -2.0], [1.0, 0.0, -1.0]])
    return torch.stack([sobel, sobel.t()]).unsqueeze(1)


def gradient_magnitude(maps: torch.Tensor, kernels: torch.Tensor) -> torch.Tensor:
    """Sobel gradient magnitude of every channel of ``maps`` (N, C, H, W) -> (N, C, H, W).

    The border is padded by replication, so an object touching the image's edge has no boundary there. A sharp 0-1
    step gives a magnitude of 4 on both sides of it.
    """
    n, c = maps.shape[:2]
    padded = F.pad(maps.reshape(n * c, 1, *maps.shape[-2:]), (1, 1, 1, 1), mode="replicate")
    gradients = F.conv2d(padded, kernels.to(maps.dtype))
    # the small constant keeps sqrt's gradient finite on flat regions
    return torch.sqrt((gradients * gradients).sum(1) + 1e-8).reshape(n, c, *maps.shape[-2:])


class ResidualBlock(nn.Module):
    """A ResNet basic block at constant width."""

    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(
            ConvBNReLU(channels, channels),
            nn.Conv2d(channels, channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x + self.body(x))


class GatedConv(nn.Module):
    """The gated convolutional layer: s_hat = s * alpha + s, alpha = sigmoid(conv1x1(BN(s || r))), then a 1x1 conv.

    The residual ``+ s`` keeps the shape features (and their gradient) flowing where the gate is closed.
    """

    def __init__(self, channels: int):
        super().__init__()
        self.attention = nn.Sequential(nn.BatchNorm2d(channels + 1), nn.Conv2d(channels + 1, 1, 1), nn.Sigmoid())
        self.out = nn.Conv2d(channels, channels, 1)

    def forward(self, shape: torch.Tensor, regular: torch.Tensor) -> torch.Tensor:
        alpha = self.attention(torch.cat([shape, regular], dim=1))
        return self.out(shape * alpha + shape)


class GatedSCNN(nn.Module):
    """Gated-SCNN over an smp encoder (``encoder_depth`` 3 to 5).

    ``shape_channels``: the shape stream's width (32). ``aspp_channels``: the ASPP's and decoder's width (256).
    """

    EDGES = True  # returns edge logits in training: the dual_task loss term trains them

    def __init__(
        self,
        encoder_name: str,
        encoder_weights: Optional[str] = None,
        in_channels: int = 3,
        classes: int = 1,
        encoder_depth: int = 5,
        shape_channels: int = 32,
        aspp_channels: int = 256,
    ):
        super().__init__()
        check_channels("GatedSCNN", classes, in_channels)
        if shape_channels < 1 or aspp_channels < 1:
            raise ValueError(
                f"GatedSCNN: shape_channels and aspp_channels must be at least 1, got {shape_channels} and "
                f"{aspp_channels}"
            )
        self.encoder = smp_encoder("GatedSCNN", encoder_name, encoder_weights, in_channels, encoder_depth,
                                   min_depth=3, why="the shape stream is gated by the deepest three features")
        widths = self.encoder.out_channels
        self.depth = encoder_depth

        # Shape stream, at the stride-2 feature's resolution (features[1]).
        self.shape_in = nn.Conv2d(widths[1], shape_channels, 1)
        self.shape_blocks = nn.ModuleList([ResidualBlock(shape_channels) for _ in range(3)])
        # The regular features are reduced to one map before upsampling (as the authors' code does): the gate needs
        # a cue of where the semantics are, and upsampling 512 maps to stride 2 would cost more than the stream.
        self.regular = nn.ModuleList([nn.Conv2d(w, 1, 1) for w in widths[-3:]])
        self.gates = nn.ModuleList([GatedConv(shape_channels) for _ in range(3)])
        self.edge = nn.Conv2d(shape_channels, 1, 1)

        # Fusion: edge probability and image gradient -> attention map. The Sobel filters are a constant, not a
        # weight: a buffer left out of the state dict, so checkpoints hold learnt weights only.
        self.register_buffer("sobel", sobel_kernels(), persistent=False)
        self.fuse = nn.Conv2d(2, 1, 1)
        self.edge_branch = ConvBNReLU(1, aspp_channels, 1)
        self.aspp = ASPP(widths[-1], aspp_channels, aspp_rates(2**encoder_depth), extra_channels=aspp_channels)

        # DeepLabV3+ decoder with the stride-4 feature (features[2]).
        self.low_level = ConvBNReLU(widths[2], LOW_LEVEL_CHANNELS, 1)
        self.decoder = nn.Sequential(
            ConvBNReLU(aspp_channels + LOW_LEVEL_CHANNELS, aspp_channels),
            ConvBNReLU(aspp_channels, aspp_channels),
            nn.Conv2d(aspp_channels, classes, 1),
        )

    def forward(self, x: torch.Tensor) -> Union[torch.Tensor, dict[str, torch.Tensor]]:
        size = x.shape[-2:]
        features = self.encoder(x)

        shape = self.shape_in(features[1])
        for block, reduce, gate, feature in zip(self.shape_blocks, self.regular, self.gates, features[-3:]):
            shape = gate(block(shape), resize(reduce(feature), shape.shape[-2:]))
        edges = resize(self.edge(shape), size)

        image_gradient = gradient_magnitude(x.mean(dim=1, keepdim=True), self.sobel)
        attention = torch.sigmoid(self.fuse(torch.cat([torch.sigmoid(edges), image_gradient], dim=1)))
        # Average pooling to the deepest feature's size (its stride, 2**depth, divides the input): unlike bilinear
        # downsampling, which reads a few pixels a cell, it keeps every thin boundary as a share of its cell.
        attention = F.avg_pool2d(attention, kernel_size=2**self.depth)
        y = self.aspp(features[-1], extra=self.edge_branch(attention))

        low = self.low_level(features[2])
        y = self.decoder(torch.cat([resize(y, low.shape[-2:]), low], dim=1))
        masks = resize(y, size)
        if self.training:
            return {"masks": masks, "edges": edges}
        return masks
