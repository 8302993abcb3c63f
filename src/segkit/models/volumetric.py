"""3D networks by name, from MONAI: the same model registry and config keys as the 2D decoders (``models[].arch``,
``params``), for models trained on 3D patches (``train.patch_size``) and predicted with a sliding window.

- ``DynUNet``: nnU-Net's U-Net (MONAI's implementation of its dynamic topology): two 3x3x3 convolutions with
  instance norm and leaky ReLU a level, strided convolutions down, transposed ones up, deep supervision heads.
  ``params.levels`` (default 5: strides 1, 2, 2, 2, 2, so patches are multiples of 16) or explicit ``strides`` /
  ``kernel_size`` (anisotropic volumes: a stride of 1 along the thick axis, as nnU-Net plans it), ``filters``
  (default nnU-Net's 32, 64, 128, 256, 320, ...), ``deep_supervision: true`` (with ``deep_supr_num`` heads).
- ``SegResNet``: the residual encoder-decoder of Myronenko's BraTS 2018 winner (without its VAE branch).
- ``UNet3D``: MONAI's residual ``UNet`` (its name ``UNet`` would clash with smp's ``Unet`` in a registry whose
  names ignore case).
- ``SwinUNETR``: a Swin transformer encoder with a convolutional decoder (patches multiples of 32).

MONAI is imported when one of them is built, not when the registry is read: a 2D run, and an offline notebook
without MONAI that predicts 2D models, never needs it. The constructors are MONAI's; segkit fills in only what
it sets itself (``spatial_dims``, ``in_channels``, ``out_channels``) and the defaults below.

Deep supervision (DynUNet): in training mode the network returns (N, 1 + heads, C, D, H, W), every head already at
the output's size; ``segkit.losses.model_loss`` weighs head i by 1 / 2^i, as nnU-Net does. In eval mode it returns
the main head alone, so prediction, export and validation never see the others.
"""

from __future__ import annotations

import math
from typing import Any

from torch import nn

from segkit.errors import ConfigError

NNUNET_FILTERS = (32, 64, 128, 256, 320, 320, 320)
# set by segkit from data.channels and the classes: a model's params may not set them
RESERVED_3D = ("spatial_dims", "in_channels", "out_channels")


def _monai_nets():
    try:
        from monai.networks import nets  # here: only a 3D model needs MONAI (seconds to import)
    except ImportError:
        raise ConfigError("arch: a 3D network needs MONAI (pip install monai)") from None
    return nets


def _dynunet_strides(params: dict[str, Any]) -> list:
    """Per-level strides: ``params.strides``, or 1 then 2 at each of ``params.levels`` (5) levels."""
    return params.get("strides") or [1] + [2] * (int(params.get("levels", 5)) - 1)


def _dynunet(params: dict[str, Any], channels: int, outputs: int) -> nn.Module:
    strides = _dynunet_strides(params)
    params = {k: v for k, v in params.items() if k not in ("levels", "strides")}
    kernels = params.pop("kernel_size", [3] * len(strides))
    if len(kernels) != len(strides):
        raise ConfigError(f"params.kernel_size: {len(kernels)} levels, params.strides has {len(strides)}")
    filters = params.pop("filters", list(NNUNET_FILTERS[:len(strides)]))
    return _monai_nets().DynUNet(3, channels, outputs, kernel_size=kernels, strides=strides,
                                 upsample_kernel_size=params.pop("upsample_kernel_size", strides[1:]),
                                 filters=filters, norm_name=params.pop("norm_name", "instance"), **params)


def _segresnet(params: dict[str, Any], channels: int, outputs: int) -> nn.Module:
    return _monai_nets().SegResNet(spatial_dims=3, in_channels=channels, out_channels=outputs,
                                   **{"init_filters": 16, **params})


def _unet3d(params: dict[str, Any], channels: int, outputs: int) -> nn.Module:
    defaults = {"channels": (16, 32, 64, 128, 256), "strides": (2, 2, 2, 2), "num_res_units": 2, "norm": "instance"}
    return _monai_nets().UNet(spatial_dims=3, in_channels=channels, out_channels=outputs, **{**defaults, **params})


def _swinunetr(params: dict[str, Any], channels: int, outputs: int) -> nn.Module:
    return _monai_nets().SwinUNETR(in_channels=channels, out_channels=outputs, spatial_dims=3,
                                   **{"feature_size": 24, **params})


def _axis_strides(strides) -> int:
    """The largest total stride along any axis of a list of per-level strides (ints or one per axis)."""
    per_axis = [[s] * 3 if isinstance(s, int) else list(s) for s in strides]
    return max(math.prod(int(level[a]) for level in per_axis) for a in range(3))


def dynunet_stride(params: dict[str, Any]) -> int:
    return _axis_strides(_dynunet_strides(params))


def segresnet_stride(params: dict[str, Any]) -> int:
    return 2 ** (len(params.get("blocks_down", (1, 2, 2, 4))) - 1)


def unet3d_stride(params: dict[str, Any]) -> int:
    return _axis_strides(params.get("strides", (2, 2, 2, 2)))


def swinunetr_stride(params: dict[str, Any]) -> int:
    return 32  # a patch embedding of 2 and four merges


# name -> (builder, the multiple every input side must be of)
NETWORKS = {
    "DynUNet": (_dynunet, dynunet_stride),
    "SegResNet": (_segresnet, segresnet_stride),
    "UNet3D": (_unet3d, unet3d_stride),
    "SwinUNETR": (_swinunetr, swinunetr_stride),
}
