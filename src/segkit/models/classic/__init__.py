"""Classic 2D segmentation networks written for segkit, with smp's constructor signature
(``encoder_name, encoder_weights, in_channels, classes, encoder_depth`` and keyword design parameters) and forward
contract (mask logits at the input's size; inputs multiples of 2**encoder_depth):

- ``FCN``: Long et al. 2015, the 32s / 16s / 8s skip heads over any smp or timm encoder.
- ``SegNet``: Badrinarayanan et al. 2017, a VGG encoder and a decoder that unpools with its max-pooling indices.
- ``FCDenseNet``: Jégou et al. 2017 ("Tiramisu" 56 / 67 / 103), its own dense encoder, trained from scratch.
- ``FastFCN``: Wu et al. 2019, Joint Pyramid Upsampling and an FCN or ASPP head over any encoder.
- ``GatedSCNN``: Takikawa et al. 2019, a gated shape stream beside the encoder; in training it also returns edge
  logits, for the ``dual_task`` loss term (``segkit.losses``).

Every network keeps its down path as ``model.encoder`` (for encoder weight files and the encoder's learning rate)
and exports to ONNX with dynamic batch, height and width.
"""

from __future__ import annotations

from segkit.models.classic.fastfcn import FastFCN
from segkit.models.classic.fcdensenet import FCDenseNet
from segkit.models.classic.fcn import FCN
from segkit.models.classic.gscnn import GatedSCNN
from segkit.models.classic.segnet import SegNet

__all__ = ["FCN", "SegNet", "FCDenseNet", "FastFCN", "GatedSCNN"]
