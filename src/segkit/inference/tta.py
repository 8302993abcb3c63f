"""Test-time augmentation: run a model on flipped / rotated views of a batch and merge the un-done predictions.

A view is a forward transform of an (N, C, H, W) batch and its exact inverse, built from ``torch.flip`` and
``torch.rot90`` only, so undoing a view moves every pixel back to where it came from without interpolation.
View sets are registered by name (``TTA.get("d4")``):

- ``none``:  the identity.
- ``hflip``: identity, horizontal flip.
- ``flips``: the D2 group: identity, hflip, vflip, both (both = rotation by 180 degrees).
- ``d4``:    the 8 dihedral views: rot90 by k = 0..3, each with and without a horizontal flip.
- ``mirror3d``: for volumes (N, C, D, H, W): the 8 flips of the three spatial axes (nnU-Net's mirroring).

Scales (``predict.tta_scales``, e.g. [0.75, 1, 1.25]): every view set is run again on the batch resized by each
scale (bilinear, each side rounded to a multiple of the network stride, so the network takes it as it takes the
native batch), and the probabilities are resized back to the native size before they are merged with the others.
Views of one scale share forward batches as above; scales cannot (their sizes differ). Upscaling gives small
objects more pixels through the encoder's strides (the Contrails winners predicted at 2-4x); downscaling gives
large ones more context. Image (and 2.5D slice) batches only: a 3D network's windows keep its training spacing.

Non-square inputs: a rotation by 90 or 270 degrees swaps H and W, so those views could not share a forward batch
with the others; for H != W only the views that keep the shape are used (d4 then falls back to its 4 flip views,
the D2 group). Pad the batch to a square first to get all 8.

``TTAPredictor`` stacks views into forward batches: ``chunk`` views of the N images go into one forward call of
chunk*N images. On a GPU one big call is fastest. On a CPU (measured on 2 cores, Unet-resnet18, 8x128x128; see
BENCHMARKS.md ``## TTA``) one view per call is fastest while the cores are free: 2, 4 and 8 views per call were
1.1x, 1.3x and 1.4x slower, the bigger batch's activations falling out of cache. When other processes compete for
the cores the picture flips (every forward call then waits at its thread barriers, and 8 views per call were up to
2.7x faster); there, pass a larger ``chunk`` or run torch with fewer threads.
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Callable, Iterable, Literal, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

from segkit.compute.device import amp_dtype, is_auto, resolve_amp
from segkit.config.schema import scales_problem
from segkit.errors import ConfigError
from segkit.models import split_output
from segkit.registry import Registry

TTA: Registry[Callable[[], tuple["View", ...]]] = Registry("tta")

Merge = Literal["mean", "gmean", "max"]
Activation = Optional[Literal["sigmoid", "softmax"]]
_MERGES = ("mean", "gmean", "max")
_ACTIVATIONS = ("sigmoid", "softmax", None)

CPU_CHUNK = 1  # views per forward call on a CPU when the caller does not say (see the module docstring)

# gmean works in log space; probabilities are clamped here first so a single confident zero in one view does not
# send the merged value to exactly 0 (log 0 = -inf).
GMEAN_EPS = 1e-6


@dataclass(frozen=True)
class View:
    """Flip (horizontal = last axis, vertical = H axis, depth = a volume's D axis) first, then rotate by ``k``
    quarter turns in the H-W plane."""

    hflip: bool = False
    vflip: bool = False
    k: int = 0
    dflip: bool = False  # (N, C, D, H, W) batches only: on an image batch the axis would be its channels

    @property
    def name(self) -> str:
        parts = [p for p, on in (("hflip", self.hflip), ("vflip", self.vflip), ("dflip", self.dflip)) if on]
        if self.k:
            parts.append(f"rot{90 * self.k}")
        return "+".join(parts) or "identity"

    @property
    def keeps_shape(self) -> bool:
        return self.k % 2 == 0

    def _flip_dims(self) -> list[int]:
        return [d for d, on in ((-1, self.hflip), (-2, self.vflip), (-3, self.dflip)) if on]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dims = self._flip_dims()
        if dims:
            x = torch.flip(x, dims)
        if self.k:
            x = torch.rot90(x, self.k, dims=(-2, -1))
        return x

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        if self.k:
            y = torch.rot90(y, -self.k, dims=(-2, -1))
        dims = self._flip_dims()
        if dims:
            y = torch.flip(y, dims)  # a flip is its own inverse
        return y


@TTA.register("none")
def _none() -> tuple[View, ...]:
    return (View(),)


@TTA.register("hflip")
def _hflip() -> tuple[View, ...]:
    return (View(), View(hflip=True))


@TTA.register("flips")
def _flips() -> tuple[View, ...]:
    return (View(), View(hflip=True), View(vflip=True), View(hflip=True, vflip=True))


@TTA.register("d4")
def _d4() -> tuple[View, ...]:
    return tuple(View(hflip=f, k=k) for k in range(4) for f in (False, True))


@TTA.register("mirror3d")
def _mirror3d() -> tuple[View, ...]:
    return tuple(View(hflip=h, vflip=v, dflip=d) for d in (False, True) for v in (False, True) for h in (False, True))


def scaled_size(size: Sequence[int], scale: float, multiple: int) -> tuple[int, ...]:
    """``size`` times ``scale``, each side rounded to the nearest multiple of ``multiple`` (at least one)."""
    return tuple(max(multiple, math.floor(s * scale / multiple + 0.5) * multiple) for s in size)


def check_scales(scales: Sequence[float], key: str = "predict.tta_scales") -> tuple[float, ...]:
    """The scales as floats; the config's rule (``scales_problem``) for callers that pass them directly."""
    problem = scales_problem(scales)
    if problem:
        raise ConfigError(f"{key}: {problem}")
    return tuple(float(s) for s in scales)


def views_for(name: str, shape: Optional[Sequence[int]] = None, key: str = "predict.tta") -> tuple[View, ...]:
    """The views of TTA ``name``; given ``shape`` (…, H, W) with H != W, only the views that keep the shape.

    For a non-square shape the shape-keeping views of d4 (identity, hflip, rot180, hflip+rot180) are the D2 group
    again, so nothing is merged twice.
    """
    views = TTA.get(name, key=key)()
    if shape is not None and shape[-1] != shape[-2]:
        views = tuple(v for v in views if v.keeps_shape)
    return views


class TTAPredictor:
    """``TTAPredictor(model, tta="d4")(x)`` -> merged probabilities (N, C', H, W) float32 for a batch x (N, C, H, W);
    (N, C', D, H, W) for a batch of volumes (``mirror3d``, or any set without rotations).

    - ``merge``: ``mean`` (arithmetic), ``gmean`` (geometric: mean of log(clamp(p, GMEAN_EPS)) then exp; for
      softmax the result is renormalised over classes, since a geometric mean of distributions is one only up to
      scale), ``max`` (per pixel and channel). The merge is applied to the *activated* outputs; with
      ``activation=None`` the raw model outputs are merged (gmean then needs non-negative outputs).
    - ``activation``: ``sigmoid`` (binary / multilabel), ``softmax`` over dim 1 (multiclass; all K+1 channels come
      back, background included), or None. Applied in float32 after the forward pass.
    - ``chunk``: views per forward call (1..n_views). None: all views on CUDA, CPU_CHUNK elsewhere.
    - ``amp``: autocast dtype (``"bf16"``, ``"fp16"``, a torch dtype, or None) for the forward pass.
    - ``channels_last``: converts the model (in place) and every forward batch to channels_last memory format.
    - ``max_views``: only the first views of the set (what a time budget leaves; None: all of them).
    - ``scales``: sizes to run every view at, relative to the input (4-D batches), with ``multiple`` the network's
      stride each scaled side is rounded to; merged at the input's size.
    - ``activated``: the model applies ``activation`` itself (an exported network): it is not applied again, and
      gmean still renormalises a softmax.

    The model is switched to eval mode (batch statistics would otherwise depend on how views are chunked) and
    runs under ``torch.inference_mode``. Memory: one forward batch plus one merge accumulator of the output size.
    """

    def __init__(
        self,
        model: Callable[[torch.Tensor], torch.Tensor],
        tta: str = "d4",
        merge: Merge = "mean",
        chunk: Optional[int] = None,
        activation: Activation = "sigmoid",
        amp: Union[None, str, torch.dtype] = None,
        channels_last: bool = False,
        max_views: Optional[int] = None,
        activated: bool = False,
        scales: Sequence[float] = (1.0,),
        multiple: int = 32,
    ):
        if merge not in _MERGES:
            raise ConfigError(f"predict.tta_merge: unknown merge {merge!r}; known: {', '.join(_MERGES)}")
        if activation not in _ACTIVATIONS:
            raise ConfigError(f"unknown activation {activation!r}; known: sigmoid, softmax, None")
        if chunk is not None and chunk < 1:
            raise ConfigError(f"predict.tta_chunk: must be >= 1, got {chunk}")
        TTA.get(tta, key="predict.tta")  # fail on a bad name now, not at the first batch
        self.model = model
        self.tta = tta
        self.merge = merge
        self.chunk = chunk
        self.activation = activation
        if not is_auto(amp):  # "auto" depends on the device, known only when a batch comes
            amp_dtype(amp, key="predict.amp")  # fail on a bad name now, not at the first batch
        self.amp = amp
        self.channels_last = channels_last
        if max_views is not None and max_views < 1:
            raise ConfigError(f"TTA: max_views must be >= 1, got {max_views}")
        self.max_views = max_views
        self.activated = activated
        self.scales = check_scales(scales)
        self.multiple = multiple
        if isinstance(model, nn.Module):
            model.eval()
            if channels_last:
                model.to(memory_format=torch.channels_last)

    def views(self, x: torch.Tensor) -> tuple[View, ...]:
        return views_for(self.tta, x.shape)[:self.max_views]

    def chunk_for(self, device: torch.device, n_views: int) -> int:
        if self.chunk is not None:
            return min(self.chunk, n_views)
        return n_views if device.type == "cuda" else min(CPU_CHUNK, n_views)

    def _forward(self, batch: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            batch = batch.contiguous(memory_format=torch.channels_last)
        dtype = amp_dtype(resolve_amp(self.amp, batch.device, "predict.amp"))
        autocast = torch.autocast(device_type=batch.device.type, dtype=dtype) if dtype is not None else nullcontext()
        with autocast:
            out, _ = split_output(self.model(batch))  # smp's aux head adds image logits
        out = out.float()
        if self.activated:
            return out
        if self.activation == "sigmoid":
            out = torch.sigmoid(out)
        elif self.activation == "softmax":
            out = torch.softmax(out, dim=1)
        return out

    @torch.inference_mode()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim not in (4, 5):
            raise ValueError(f"TTAPredictor expects an (N, C, H, W) or (N, C, D, H, W) batch, got shape "
                             f"{tuple(x.shape)}")
        views = self.views(x)
        if x.ndim == 4 and any(v.dflip for v in views):
            raise ConfigError(f"predict.tta: {self.tta} flips a volume's depth axis: it needs (N, C, D, H, W) "
                              f"batches, got an image batch {tuple(x.shape)}")
        scales = self.scales if x.ndim == 4 else (1.0,)
        n, size = x.shape[0], tuple(x.shape[2:])
        acc: Optional[torch.Tensor] = None
        merged = 0
        for scale in scales:
            xs = x
            if scale != 1.0:
                xs = F.interpolate(x, size=scaled_size(size, scale, self.multiple), mode="bilinear",
                                   align_corners=False)
            views = self.views(xs)  # a scaled batch's sides may be rounded apart (or together): its own views
            step = self.chunk_for(x.device, len(views))
            for start in range(0, len(views), step):
                group = views[start:start + step]
                batch = torch.cat([v.forward(xs) for v in group]) if len(group) > 1 else group[0].forward(xs)
                out = self._forward(batch)
                for i, view in enumerate(group):
                    p = view.inverse(out[i * n:(i + 1) * n])
                    if p.shape[2:] != size:
                        p = F.interpolate(p, size=size, mode="bilinear", align_corners=False)
                    acc = self._merge_into(acc, p)
                merged += len(group)
        return self._finish(acc, merged)

    def _merge_into(self, acc: Optional[torch.Tensor], p: torch.Tensor) -> torch.Tensor:
        if self.merge == "gmean":
            p = torch.log(p.clamp_min(GMEAN_EPS))
        if acc is None:
            # A normal (not inference-mode) tensor, so callers may edit the result in place afterwards; it also
            # owns its memory, where p may be a view into the forward batch's output.
            with torch.inference_mode(False):
                acc = torch.empty(p.shape, dtype=p.dtype, device=p.device)
            return acc.copy_(p)
        if self.merge == "max":
            return torch.maximum(acc, p, out=acc)
        return acc.add_(p)

    def _finish(self, acc: torch.Tensor, n_views: int) -> torch.Tensor:
        if self.merge == "mean":
            return acc.div_(n_views)
        if self.merge == "gmean":
            acc = acc.div_(n_views).exp_()
            if self.activation == "softmax":
                acc = acc.div_(acc.sum(dim=1, keepdim=True))
            return acc
        return acc


class RunningMean:
    """Mean of a stream of same-shaped tensors in one float32 accumulator (no list of outputs kept)."""

    def __init__(self):
        self.total: Optional[torch.Tensor] = None
        self.count = 0

    def add(self, t: torch.Tensor, weight: float = 1.0) -> None:
        t = t.float() if weight == 1.0 else t.float() * weight
        if self.total is None:
            self.total = t.clone()
        else:
            if t.shape != self.total.shape:
                raise ValueError(f"RunningMean: shape {tuple(t.shape)} != {tuple(self.total.shape)}")
            self.total.add_(t)
        self.count += weight

    @property
    def value(self) -> torch.Tensor:
        if self.total is None:
            raise ValueError("RunningMean: nothing added")
        return self.total / self.count


def average_predictions(predictors: Iterable[Callable[[torch.Tensor], torch.Tensor]], x: torch.Tensor,
                        weights: Optional[Sequence[float]] = None) -> torch.Tensor:
    """(Weighted) mean of ``p(x)`` over several predictors (models / folds, each e.g. a TTAPredictor).

    ``predictors`` may be a generator that loads one checkpoint at a time: each output is added to a running sum
    and dropped before the next predictor is pulled, so memory holds one model and one output.
    """
    mean = RunningMean()
    for i, predict in enumerate(predictors):
        mean.add(predict(x), 1.0 if weights is None else float(weights[i]))
    return mean.value
