"""SegNet: Badrinarayanan, Kendall, Cipolla (2017), "SegNet: A Deep Convolutional Encoder-Decoder Architecture for
Image Segmentation" (IEEE TPAMI).

The encoder is VGG's convolutional part; each of its 2x2 max pools remembers where every maximum came from. The
decoder mirrors the encoder stage by stage: it unpools with those indices (each value goes back to the position
its maximum came from, the other three positions are zero), then densifies the sparse map with conv-BN-ReLU layers
of the encoder stage's widths. Reusing the indices keeps boundary detail without storing (or concatenating) the
encoder's feature maps as U-Net does; the last convolution gives the class scores.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from segkit.models.classic._blocks import ConvBNReLU, check_channels, smp_encoder

VGG_ENCODERS = ("vgg11", "vgg11_bn", "vgg13", "vgg13_bn", "vgg16", "vgg16_bn", "vgg19", "vgg19_bn")


def unpool(x: torch.Tensor, indices: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """Max unpooling: ``x``'s values scattered to ``indices`` (max_pool2d's, per plane) in zeros of ``shape``.

    ``F.max_unpool2d`` does not export to ONNX (tracing it fails); a scatter does, and the shape, read from the
    pooled tensor while tracing, stays a computation on the input's size rather than numbers fixed at export.
    """
    flat = x.new_zeros(shape).flatten(2)
    return flat.scatter(2, indices.flatten(2), x.flatten(2)).view(shape)


class SegNet(nn.Module):
    """SegNet over one of smp's VGG encoders; ``encoder_depth`` pools (and unpools). No design parameters: the
    decoder mirrors the encoder's convolutions, as in the paper."""

    ENCODERS = VGG_ENCODERS  # the encoder names it takes (the model registry checks a config against them)

    def __init__(
        self,
        encoder_name: str,
        encoder_weights: Optional[str] = None,
        in_channels: int = 3,
        classes: int = 1,
        encoder_depth: int = 5,
    ):
        super().__init__()
        check_channels("SegNet", classes, in_channels)
        if encoder_name not in VGG_ENCODERS:
            raise ValueError(
                f"SegNet: encoder_name must be an encoder that returns max-pooling indices: one of "
                f"{', '.join(VGG_ENCODERS)}; got {encoder_name!r}"
            )
        self.encoder = smp_encoder("SegNet", encoder_name, encoder_weights, in_channels, encoder_depth, min_depth=1,
                                   why="VGG has five pooling stages")
        # Drop the layers past the last pool used: their weights would never get a gradient (and DDP refuses
        # parameters that get none).
        pools = [i for i, layer in enumerate(self.encoder.features) if isinstance(layer, nn.MaxPool2d)]
        self.encoder.features = self.encoder.features[: pools[encoder_depth - 1] + 1]

        # The convolutions' widths of each encoder stage (the layers before each pool): [[64], [128], [256, 256], ...]
        stages: list[list[int]] = [[]]
        for layer in self.encoder.features:
            if isinstance(layer, nn.Conv2d):
                stages[-1].append(layer.out_channels)
            elif isinstance(layer, nn.MaxPool2d):
                stages.append([])
        stages = stages[:-1]  # (the empty list after the last pool)

        # Decoder stage i mirrors encoder stage i: as many 3x3 conv-BN-ReLUs, at the stage's width, the last going
        # back to the width the encoder stage started from (the previous stage's; for the first stage, the classes:
        # a plain 3x3 convolution, the scores).
        decoder = []
        for i, widths in enumerate(stages):
            width = widths[-1]
            layers: list[nn.Module] = [ConvBNReLU(width, width) for _ in widths[:-1]]
            if i == 0:
                layers.append(nn.Conv2d(width, classes, 3, padding=1))
            else:
                layers.append(ConvBNReLU(width, stages[i - 1][-1]))
            decoder.append(nn.Sequential(*layers))
        self.decoder = nn.ModuleList(decoder)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Only the indices and the shape before pooling are kept, not the maps: SegNet's saving over U-Net.
        pooled: list[tuple[torch.Tensor, torch.Size]] = []
        for layer in self.encoder.features:
            if isinstance(layer, nn.MaxPool2d):
                shape = x.shape
                x, indices = F.max_pool2d(x, kernel_size=2, stride=2, return_indices=True)
                pooled.append((indices, shape))
            else:
                x = layer(x)
        for stage, (indices, shape) in zip(reversed(self.decoder), reversed(pooled)):
            x = stage(unpool(x, indices, shape))
        return x
