"""FCN: Long, Shelhamer, Darrell (2015), "Fully Convolutional Networks for Semantic Segmentation" (CVPR).

A classification backbone made fully convolutional scores every location of its deepest feature map with a 1x1
convolution (FCN-32s). The coarse scores are upsampled 2x and summed with 1x1 scores of the next shallower feature
(FCN-16s), and once more with the one after that (FCN-8s), then upsampled to the input: the skips bring back the
detail the deep stride throws away. Here the skip heads sit on any smp / timm encoder, using its deepest three
features (strides 32, 16, 8 at ``encoder_depth=5``; 8, 4, 2 at depth 3).

torchvision's ``fcn_resnet50`` is a different variant: a dilated ResNet-50 (output stride 8) with one conv head and
no skips. That only exists for dilatable ResNets, which is why the paper's skip heads are written here over any
encoder.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from segkit.models.classic._blocks import ConvBNReLU, check_channels, resize, smp_encoder

VARIANTS = {"32s": 1, "16s": 2, "8s": 3}  # variant -> how many of the deepest features are scored


class FCN(nn.Module):
    """FCN-32s / 16s / 8s skip heads over an smp encoder.

    ``variant``: "32s", "16s" or "8s" (the deepest one, two or three features scored and summed).
    ``head_channels``: 0 for the paper's plain 1x1 score on the deepest feature; above 0, a conv3x3-BN-ReLU of that
    width and dropout 0.1 before it (torchvision's FCNHead).
    """

    def __init__(
        self,
        encoder_name: str,
        encoder_weights: Optional[str] = None,
        in_channels: int = 3,
        classes: int = 1,
        encoder_depth: int = 5,
        variant: str = "8s",
        head_channels: int = 0,
    ):
        super().__init__()
        check_channels("FCN", classes, in_channels)
        if variant not in VARIANTS:
            raise ValueError(f"FCN: variant must be one of {', '.join(VARIANTS)}, got {variant!r}")
        if head_channels < 0:
            raise ValueError(f"FCN: head_channels must be 0 (plain 1x1 scores) or a width above 0, got {head_channels}")
        scored = VARIANTS[variant]
        self.encoder = smp_encoder("FCN", encoder_name, encoder_weights, in_channels, encoder_depth, min_depth=scored,
                                   why=f"variant {variant} scores the deepest {scored} features")
        self.scored = scored
        widths = self.encoder.out_channels[-scored:][::-1]  # deepest first

        deepest: list[nn.Module] = []
        if head_channels:
            deepest = [ConvBNReLU(widths[0], head_channels), nn.Dropout(0.1)]
        deepest.append(nn.Conv2d(head_channels or widths[0], classes, 1))
        self.scores = nn.ModuleList([nn.Sequential(*deepest)] + [nn.Conv2d(w, classes, 1) for w in widths[1:]])
        # The paper zero-initialises the skip scores, so training starts from the coarser net's predictions and the
        # skips only learn the correction.
        for score in self.scores[1:]:
            nn.init.zeros_(score.weight)
            nn.init.zeros_(score.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.encoder(x)[-self.scored:][::-1]  # deepest first
        logits = self.scores[0](features[0])
        for score, feature in zip(self.scores[1:], features[1:]):
            # The paper upsamples with transposed convolutions initialised to bilinear interpolation (and fixes the
            # last one). Plain bilinear interpolation is the common modern equivalent, costs no weights, and takes
            # its size from the skip's shape, so the exported graph works at any input size.
            logits = resize(logits, feature.shape[-2:]) + score(feature)
        return resize(logits, x.shape[-2:])
