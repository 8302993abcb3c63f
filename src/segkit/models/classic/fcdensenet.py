"""FC-DenseNet ("Tiramisu"): Jégou, Drozdzal, Vazquez, Romero, Bengio (2017), "The One Hundred Layers Tiramisu:
Fully Convolutional DenseNets for Semantic Segmentation" (CVPR workshops).

A U-shaped network built from DenseNet blocks, trained from scratch. In a dense block every layer
(BN-ReLU-conv3x3-dropout) adds ``growth_rate`` new maps and sees all the maps before it. Down the network, each
block's input and new maps are concatenated, kept as the skip, and reduced by a transition down
(BN-ReLU-conv1x1-dropout-maxpool). Up the network, only the *new* maps of the previous block are upsampled (a 3x3
transposed convolution, stride 2) and concatenated with the skip: upsampling the whole concatenation would make the
number of maps explode with depth. The last block's full output goes to a 1x1 convolution for the scores.

Variants (the ``encoder_name``): fcdensenet56 (4 layers a block, growth 12), fcdensenet67 (5 layers, growth 16),
fcdensenet103 (4, 5, 7, 10, 12 layers down, a 15-layer bottleneck, growth 16).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from segkit.models.classic._blocks import MAX_DEPTH, check_channels

# name -> (layers of the dense blocks down, layers of the bottleneck block, growth rate)
VARIANTS = {
    "fcdensenet56": ((4, 4, 4, 4, 4), 4, 12),
    "fcdensenet67": ((5, 5, 5, 5, 5), 5, 16),
    "fcdensenet103": ((4, 5, 7, 10, 12), 15, 16),
}


class DenseLayer(nn.Sequential):
    def __init__(self, in_channels: int, growth_rate: int, dropout: float):
        super().__init__(
            nn.BatchNorm2d(in_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(in_channels, growth_rate, 3, padding=1),
            nn.Dropout(dropout),
        )


class DenseBlock(nn.Module):
    """``layers`` dense layers; returns only the new maps (``layers * growth_rate`` of them): the down path
    concatenates them with the input itself, the up path must not."""

    def __init__(self, in_channels: int, layers: int, growth_rate: int, dropout: float):
        super().__init__()
        self.layers = nn.ModuleList(
            [DenseLayer(in_channels + i * growth_rate, growth_rate, dropout) for i in range(layers)]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        new = []
        for layer in self.layers:
            new.append(layer(torch.cat([x, *new], dim=1)))
        return torch.cat(new, dim=1)


class TransitionDown(nn.Sequential):
    def __init__(self, channels: int, dropout: float):
        super().__init__(
            nn.BatchNorm2d(channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, 1),
            nn.Dropout(dropout),
            nn.MaxPool2d(2),
        )


class DenseEncoder(nn.Module):
    """The down path: the first 3x3 convolution, the dense blocks and transitions down. Returns the skips (shallow
    first) and the last transition's output."""

    def __init__(self, in_channels: int, first_channels: int, blocks: tuple[int, ...], growth_rate: int,
                 dropout: float):
        super().__init__()
        self.first = nn.Conv2d(in_channels, first_channels, 3, padding=1)
        self.blocks = nn.ModuleList()
        self.downs = nn.ModuleList()
        channels = first_channels
        self.skip_channels: list[int] = []
        for layers in blocks:
            self.blocks.append(DenseBlock(channels, layers, growth_rate, dropout))
            channels += layers * growth_rate
            self.skip_channels.append(channels)
            self.downs.append(TransitionDown(channels, dropout))
        self.out_channels = channels

    def forward(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        x = self.first(x)
        skips = []
        for block, down in zip(self.blocks, self.downs):
            x = torch.cat([x, block(x)], dim=1)
            skips.append(x)
            x = down(x)
        return skips, x


class FCDenseNet(nn.Module):
    """FC-DenseNet 56 / 67 / 103, chosen by ``encoder_name``; ``encoder_depth`` transitions down (1 to 5, the paper
    uses 5: inputs must be multiples of 2**encoder_depth).

    ``growth_rate``: maps each dense layer adds (None: the variant's). ``first_channels``: the first convolution's
    width (48 in the paper). ``dropout``: after every convolution (0.2 in the paper).
    """

    ENCODERS = tuple(VARIANTS)  # the encoder names it takes (the model registry checks a config against them)
    PRETRAINED = False  # its dense encoder is its own: no weights exist to load

    def __init__(
        self,
        encoder_name: str,
        encoder_weights: Optional[str] = None,
        in_channels: int = 3,
        classes: int = 1,
        encoder_depth: int = 5,
        growth_rate: Optional[int] = None,
        first_channels: int = 48,
        dropout: float = 0.2,
    ):
        super().__init__()
        check_channels("FCDenseNet", classes, in_channels)
        if encoder_name not in VARIANTS:
            raise ValueError(
                f"FCDenseNet: encoder_name must be one of {', '.join(VARIANTS)} (FCDenseNet builds its own dense "
                f"encoder, it takes no smp or timm encoder); got {encoder_name!r}"
            )
        if encoder_weights is not None:
            raise ValueError(
                f"FCDenseNet: encoder_weights must be None: no pretrained weights exist for its dense encoder, it "
                f"trains from scratch; got {encoder_weights!r}"
            )
        if not 1 <= encoder_depth <= MAX_DEPTH:
            raise ValueError(
                f"FCDenseNet: encoder_depth (transitions down) must be 1 to {MAX_DEPTH}, got {encoder_depth}"
            )
        if growth_rate is not None and growth_rate < 1:
            raise ValueError(
                f"FCDenseNet: growth_rate must be at least 1 (or None for the variant's), got {growth_rate}"
            )
        if first_channels < 1:
            raise ValueError(f"FCDenseNet: first_channels must be at least 1, got {first_channels}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"FCDenseNet: dropout must be in [0, 1), got {dropout}")

        blocks, bottleneck, default_growth = VARIANTS[encoder_name]
        growth = growth_rate or default_growth
        blocks = blocks[:encoder_depth]
        self.encoder = DenseEncoder(in_channels, first_channels, blocks, growth, dropout)
        self.bottleneck = DenseBlock(self.encoder.out_channels, bottleneck, growth, dropout)

        self.ups = nn.ModuleList()
        self.up_blocks = nn.ModuleList()
        new = bottleneck * growth  # the maps that go up: the previous block's new ones only
        for layers, skip in zip(reversed(blocks), reversed(self.encoder.skip_channels)):
            # padding 1 and output_padding 1: a 3x3 kernel at stride 2 gives exactly twice the size
            self.ups.append(nn.ConvTranspose2d(new, new, 3, stride=2, padding=1, output_padding=1))
            self.up_blocks.append(DenseBlock(new + skip, layers, growth, dropout))
            last_in, new = new + skip, layers * growth
        self.head = nn.Conv2d(last_in + new, classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips, x = self.encoder(x)
        new = self.bottleneck(x)
        for up, block, skip in zip(self.ups, self.up_blocks, reversed(skips)):
            x = torch.cat([up(new), skip], dim=1)
            new = block(x)
        # The last block's input and new maps together give the scores (the paper's final 1x1 convolution).
        return self.head(torch.cat([x, new], dim=1))
