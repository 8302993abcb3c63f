"""Segmentation networks by name: every smp decoder (``ARCHS``) on any smp or timm (``tu-...``) encoder, the classic
networks written here (``segkit.models.classic``: FCN, SegNet, FCDenseNet, FastFCN, GatedSCNN, with smp's
constructor signature), Mask R-CNN over any encoder (``segkit.models.maskrcnn``: a detector whose detections are
rendered as an instance competition's mask and contour channels), and MONAI's 3D networks
(``segkit.models.volumetric``: DynUNet, SegResNet, UNet3D, SwinUNETR) for patch-trained models.

``build_model(model_cfg, channels, mode, num_classes)`` returns an smp model whose forward gives mask logits
(N, C, H, W) — C = K foreground channels for binary / multilabel, K + 1 (background first) for multiclass — or a
tuple (mask logits, image logits (N, K)) when the auxiliary "has mask" head is on, or, in training, a dict with
``masks`` and the network's side outputs (GatedSCNN's ``edges``: ``edge_output``), or a detector's own
``{"losses": ...}`` when its training forward is given the batch's objects. With ``input_scale`` the model
works inside at that many times the input's size and still returns logits at the input's size. ``split_output`` and
``probabilities`` turn that into what the rest of the pipeline stores: (N, K, H, W) foreground probabilities.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from functools import partial
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from segkit.config.schema import ModelConfig
from segkit.errors import ConfigError
from segkit.models import classic, volumetric, weights
from segkit.models.maskrcnn import MaskRCNN
from segkit.registry import Registry


@dataclass(frozen=True)
class Arch:
    """An smp decoder, or a 3D network, and what it accepts."""

    name: str
    cls: Optional[type]  # the smp model class (None for a 3D network: ``build`` makes it)
    attention: bool = False  # takes decoder_attention_type (scSE)
    dims: int = 2  # 3: a volumetric network, trained on patches (train.patch_size), predicted in a sliding window
    build: Optional[Callable[[dict, int, int], nn.Module]] = None  # (params, in channels, outputs) for 3D
    stride: Optional[Callable[[dict], int]] = None  # params -> the multiple every input side must be of (3D)
    encoders: Optional[tuple[str, ...]] = None  # the encoder names it takes (None: any smp or tu- timm encoder)
    aux: bool = True  # takes smp's aux_params (the image-level "has mask" head)
    pretrained: bool = True  # its encoder can load weights (FCDenseNet's own dense encoder has none to load)
    edges: bool = False  # returns edge logits in training (for the dual_task loss term)
    instances: bool = False  # a detector: trains on an instance competition's objects (their boxes and masks)
    exports: bool = True  # exports to ONNX (segkit export, the offline bundle)


def _smp_architectures(registry: Registry[Arch]) -> None:
    """Every decoder smp registers (``smp.MODEL_ARCHITECTURES_MAPPING``), so a new smp decoder needs no change
    here. Filled on first use: importing smp (and timm, torchvision) costs seconds."""
    import segmentation_models_pytorch as smp  # here, on first use of the registry: see the docstring

    for cls in smp.MODEL_ARCHITECTURES_MAPPING.values():
        attention = "decoder_attention_type" in inspect.signature(cls.__init__).parameters
        registry.register(cls.__name__)(Arch(cls.__name__, cls, attention))
    # the networks written here state their own facts as class attributes (ENCODERS, PRETRAINED, EDGES,
    # INSTANCES, EXPORTS)
    for cls in (classic.FCN, classic.SegNet, classic.FCDenseNet, classic.FastFCN, classic.GatedSCNN, MaskRCNN):
        registry.register(cls.__name__)(Arch(cls.__name__, cls, encoders=getattr(cls, "ENCODERS", None), aux=False,
                                             pretrained=getattr(cls, "PRETRAINED", True),
                                             edges=getattr(cls, "EDGES", False),
                                             instances=getattr(cls, "INSTANCES", False),
                                             exports=getattr(cls, "EXPORTS", True)))
    for name, (build, stride) in volumetric.NETWORKS.items():
        registry.register(name)(Arch(name, None, dims=3, build=build, stride=stride))


ARCHS: Registry[Arch] = Registry("architecture", fill=_smp_architectures)

# constructor arguments segkit sets itself (from encoder, encoder_weights, data.channels, the classes, aux_head,
# decoder_attention): a model's params may not set them
RESERVED_PARAMS = ("encoder_name", "encoder_weights", "in_channels", "classes", "aux_params", "decoder_attention_type")
TIMM_PREFIX = "tu-"


def encoder_names() -> list[str]:
    """smp's own encoders (any timm model also works as ``tu-<name>``)."""
    import segmentation_models_pytorch as smp  # here: seconds to import, only when the names are asked for

    return list(smp.encoders.get_encoder_names())


def is_encoder(name: str) -> bool:
    """Whether smp can build the encoder ``name``: one of its own, or ``tu-`` and a timm model (tag allowed)."""
    if name.startswith(TIMM_PREFIX):
        import timm  # here: seconds to import, only when names are checked
        from timm.models import split_model_name_tag  # here, with timm

        return bool(timm.is_model(split_model_name_tag(name[len(TIMM_PREFIX):])[0]))
    return name in encoder_names()


def num_outputs(mode: str, num_classes: int) -> int:
    """Channels of the segmentation head: multiclass adds the background channel (index 0)."""
    return num_classes + 1 if mode == "multiclass" else num_classes


def build_model(
    model_cfg: ModelConfig,
    channels: int,
    mode: str,
    num_classes: int,
    pretrained: bool = True,
) -> nn.Module:
    """The smp model for ``model_cfg``. ``pretrained=False`` skips ``encoder_weights`` (a checkpoint will overwrite
    every weight anyway, e.g. when the predict stage rebuilds a trained model)."""
    key = f"models[{model_cfg.name}]"
    arch = ARCHS.get(model_cfg.arch, key=f"{key}.arch")
    if arch.dims == 3:
        return _build_volumetric(arch, model_cfg, channels, num_outputs(mode, num_classes), key)
    kwargs: dict[str, Any] = dict(model_cfg.params)
    clash = sorted(set(RESERVED_PARAMS) & set(kwargs))
    if clash:
        raise ConfigError(f"{key}.params: {clash} are set by segkit (use encoder / encoder_weights / decoder_attention"
                          f" / aux_head)")
    if model_cfg.decoder_attention:
        if not arch.attention:
            with_attention = [a for a in ARCHS.names() if ARCHS.get(a).attention]
            raise ConfigError(f"{key}.decoder_attention: {arch.name} has no decoder attention "
                              f"(supported by {', '.join(with_attention)})")
        kwargs["decoder_attention_type"] = model_cfg.decoder_attention
    if arch.encoders is not None and model_cfg.encoder not in arch.encoders:
        raise ConfigError(f"{key}.encoder: {arch.name} takes {model_cfg.encoder!r} as no encoder; it takes "
                          f"{', '.join(arch.encoders)}")
    if model_cfg.encoder_weights and not arch.pretrained:
        raise ConfigError(f"{key}.encoder_weights: {arch.name} builds its own encoder, and no pretrained weights exist "
                          f"for it; leave encoder_weights unset (it trains from scratch)")
    if model_cfg.aux_head:
        if not arch.aux:
            with_aux = [a for a in ARCHS.names() if ARCHS.get(a).aux and ARCHS.get(a).dims == 2]
            raise ConfigError(f"{key}.aux_head: {arch.name} has no image-level head (the smp decoders have one: "
                              f"{', '.join(with_aux[:6])}, ...)")
        # One logit per foreground class: "does this image contain class k at all".
        kwargs["aux_params"] = {"classes": num_classes, "pooling": "avg", "dropout": 0.2, "activation": None}

    source = weights.plan(model_cfg) if pretrained else weights.WeightsPlan()
    try:
        model = arch.cls(
            encoder_name=model_cfg.encoder,
            encoder_weights=source.smp_weights,
            in_channels=channels,
            classes=num_outputs(mode, num_classes),
            **kwargs,
        )
    except Exception as err:  # smp / timm raise KeyError, ValueError, RuntimeError, TypeError, AssertionError
        if source.smp_weights is not None and weights.is_download_error(err):
            raise ConfigError(f"{key}.encoder_weights: downloading {model_cfg.encoder_weights!r} weights for "
                              f"{model_cfg.encoder!r} failed ({_first_line(err)}); set it to a local file") from None
        raise ConfigError(f"{key}: cannot build {arch.name} on encoder {model_cfg.encoder!r}: "
                          f"{_first_line(err)}") from None
    _check_no_empty_layers(model, model_cfg, key)
    if source.file is not None:
        weights.load_encoder_file(model, source.file, key=f"{key}.encoder_weights")
    if model_cfg.input_scale > 1:
        scale_inputs(model, model_cfg.input_scale)
    return model


def dims_of(model_cfg: ModelConfig) -> int:
    """2 for an image network, 3 for a volumetric one (patches, sliding window)."""
    return ARCHS.get(model_cfg.arch, key=f"models[{model_cfg.name}].arch").dims


def learns_objects(model_cfg: ModelConfig) -> bool:
    """Whether the network is a detector, trained on each image's objects (``segkit.models.maskrcnn``)."""
    return ARCHS.get(model_cfg.arch, key=f"models[{model_cfg.name}].arch").instances


def check_exportable(model_cfg: ModelConfig) -> None:
    """Refuse to export a network that has no export (Mask R-CNN), naming what works instead."""
    arch = ARCHS.get(model_cfg.arch, key=f"models[{model_cfg.name}].arch")
    if not arch.exports:
        raise ConfigError(f"models[{model_cfg.name}].arch: {arch.name} has no ONNX or TorchScript export here (its "
                          f"detections are rendered one by one, which a traced graph cannot hold); package it with "
                          f"its PyTorch checkpoints instead (segkit package --models eager)")


def input_multiple(model_cfg: ModelConfig, pad_to: int) -> int:
    """The multiple every input side must be of: a 3D network's own total stride, ``train.pad_to`` for a 2D one."""
    arch = ARCHS.get(model_cfg.arch, key=f"models[{model_cfg.name}].arch")
    return arch.stride(model_cfg.params) if arch.dims == 3 else pad_to


def _build_volumetric(arch: Arch, model_cfg: ModelConfig, channels: int, outputs: int, key: str) -> nn.Module:
    clash = sorted(set(volumetric.RESERVED_3D) & set(model_cfg.params))
    if clash:
        raise ConfigError(f"{key}.params: {clash} are set by segkit (from data.channels and data.classes)")
    unused = [k for k in ("encoder_weights", "decoder_attention") if getattr(model_cfg, k)]
    unused += ["aux_head"] if model_cfg.aux_head else []
    unused += ["input_scale"] if model_cfg.input_scale > 1 else []
    if unused:
        raise ConfigError(f"{key}.{unused[0]}: not for {arch.name}, a 3D network (no smp encoder or heads)")
    try:
        return arch.build(dict(model_cfg.params), channels, outputs)
    except ConfigError as err:
        raise ConfigError(f"{key}.{err}") from None
    except Exception as err:  # MONAI raises ValueError, TypeError, AssertionError on bad params
        raise ConfigError(f"{key}: cannot build {arch.name}: {_first_line(err)}") from None


_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


def _check_no_empty_layers(model: nn.Module, model_cfg: ModelConfig, key: str) -> None:
    """smp builds a convolution with zero channels without complaint when a setting divides a stage's width down
    to nothing (scSE squeezes channels by 16, so a decoder stage of 8 gets a 0-channel layer), and the error then
    comes from the first forward pass, naming neither the setting nor the config. Catch it here instead."""
    empty = [name for name, m in model.named_modules()
             if isinstance(m, _CONVS) and 0 in (m.in_channels, m.out_channels)]
    if not empty:
        return
    more = f" and {len(empty) - 1} more" if len(empty) > 1 else ""
    fix = ("decoder_attention: scse divides each decoder stage's channels by 16, so every stage needs at least 16 "
           "(params.decoder_channels)" if model_cfg.decoder_attention else "widen the decoder (params)")
    raise ConfigError(f"{key}: {model_cfg.arch} with these params has layers with no channels ({empty[0]}{more}); "
                      f"{fix}")


def scale_inputs(model: nn.Module, scale: int) -> None:
    """Make ``model`` upsample its input ``scale`` times (bilinear) and average its mask logits back over each
    ``scale`` x ``scale`` block, so it maps an input to logits of the same size. Forward hooks rather than a
    wrapper module: weights, state_dict keys and checkpoints stay those of the plain network, and every caller
    (training, validation, TTA, tiling, export) gets the scaled network without knowing."""
    model.register_forward_pre_hook(partial(_upsample_input, scale=scale))
    model.register_forward_hook(partial(_pool_logits, scale=scale))


def _upsample_input(module: nn.Module, args: tuple, scale: int) -> tuple:
    return (F.interpolate(args[0], scale_factor=scale, mode="bilinear", align_corners=False), *args[1:])


def _pool_logits(module: nn.Module, args: tuple, out: Any, scale: int) -> Any:
    if isinstance(out, dict):  # masks and side outputs (edges): every map back to the input's size
        return {k: F.avg_pool2d(v, scale) if v.ndim == 4 else v for k, v in out.items()}
    masks, aux = split_output(out)
    masks = F.avg_pool2d(masks, scale)
    return masks if aux is None else (masks, aux)


def _first_line(err: Exception) -> str:
    text = str(err).strip()
    if len(text) > 1 and text[0] == text[-1] and text[0] in "'\"":  # str(KeyError("x")) is "'x'"
        text = text[1:-1]
    return (text or type(err).__name__).splitlines()[0][:300]


@torch.no_grad()
def check_output_size(model: nn.Module, channels: int, multiple: int, key: str, dims: int = 2) -> None:
    """One dry forward: the mask logits must come out at the input's size. Some decoder settings silently change
    the output stride (e.g. FPN's fixed upsampling with a shallower encoder_depth); better to say so before a run.
    A 3D network is tried on a small cube (two strides a side)."""
    size = max(128, multiple) + (-max(128, multiple)) % multiple if dims == 2 else 2 * multiple
    was_training = model.training
    model.eval()
    try:
        x = torch.zeros(1, channels, *[size] * dims, device=next(model.parameters()).device)
        logits, _ = split_output(model(x))
    finally:
        model.train(was_training)
    if tuple(logits.shape[2:]) != (size,) * dims:
        shape = "x".join(map(str, logits.shape[2:]))
        raise ConfigError(f"{key}.params: the network maps a {'x'.join([str(size)] * dims)} input to {shape} "
                          f"masks; adjust encoder_depth / upsampling / decoder settings")


def split_output(out: Any) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """(mask logits, aux logits or None) from a model's forward output."""
    if isinstance(out, dict):
        return out["masks"], out.get("aux")
    if isinstance(out, (tuple, list)):
        return out[0], out[1]
    return out, None


def edge_output(out: Any) -> Optional[torch.Tensor]:
    """A network's edge logits (N, 1, H, W) when its forward gave them (GatedSCNN, in training), else None."""
    return out.get("edges") if isinstance(out, dict) else None


def probabilities(logits: torch.Tensor, mode: str) -> torch.Tensor:
    """(N, K, H, W) foreground probabilities from mask logits: sigmoid, or softmax without the background."""
    logits = logits.float()
    if mode == "multiclass":
        return logits.softmax(dim=1)[:, 1:]
    return logits.sigmoid()


def encoder_parameters(model: nn.Module) -> set[int]:
    """ids of the encoder's parameters (for the separate encoder learning rate)."""
    encoder = getattr(model, "encoder", None)
    return {id(p) for p in encoder.parameters()} if encoder is not None else set()


__all__ = ["ARCHS", "Arch", "RESERVED_PARAMS", "build_model", "check_exportable", "check_output_size", "dims_of",
           "edge_output", "encoder_names", "encoder_parameters", "input_multiple", "is_encoder", "learns_objects",
           "num_outputs", "probabilities", "split_output"]
