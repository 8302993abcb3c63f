"""Segmentation losses by name, combined as a weighted sum from the config (``{bce: 1, dice: 1}``), optionally
changing by epoch (``loss_stages``: BCE + Dice first, then Lovasz — the TGS winners' recipe).

Every term sees float32 logits (N, C, H, W) and one ``Target``: the (N, K, H, W) 0/1 mask in every mode, plus the
label map (N, H, W) in multiclass mode (0 = background, k = class k; C = K + 1 there). Logits are cast to float
before any term runs: under autocast they arrive in bf16/fp16, and smp's Lovasz fails on bf16 (and sums are more
accurate in fp32 anyway).

The terms wrap ``smp.losses`` wherever it has the loss; balanced BCE, the distance-map boundary loss (Kervadec et
al., 2019) and the binary Lovasz hinge (batched over images, with its symmetric and elu variants) are written here.
Per-class weights (``train.class_weights``, one per foreground class) weight each class's share of a term;
multiclass terms give the background weight 1.

| name | binary / multilabel | multiclass |
|---|---|---|
| bce (alias ce) | BCE with logits, ``pos_weight`` | cross-entropy |
| balanced_bce | BCE, positives weighted by the batch's negative share | CE, classes weighted by inverse frequency |
| dice, jaccard, tversky | smp soft Dice / Jaccard / Tversky | same, softmax |
| focal | smp focal (``gamma``, ``alpha``) | same, one-vs-rest per class |
| lovasz | Lovasz hinge per channel (``per_image``, ``symmetric``, ``hinge``) | Lovasz-softmax (no class weights) |
| boundary | mean of p * signed distance to the true boundary | same on the foreground softmax channels |
| dual_task | Gated-SCNN's edge, boundary-attention and consistency losses (needs the network's edge logits) | same |
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from segkit.errors import ConfigError
from segkit.registry import Registry

MODES = ("binary", "multilabel", "multiclass")


@dataclass
class Target:
    mask: torch.Tensor  # (N, K, H, W) float 0/1
    labels: Optional[torch.Tensor] = None  # (N, H, W) long, multiclass only
    # (N, 1, H, W): a network's own edge logits (GatedSCNN's shape stream, in training), for the dual_task term
    edge_logits: Optional[torch.Tensor] = None

    @staticmethod
    def of(mask: torch.Tensor, mode: str, edge_logits: Optional[torch.Tensor] = None) -> "Target":
        mask = mask.float()
        labels = None
        if mode == "multiclass":
            # One-hot foreground channels -> label map; pixels of no class are background (0).
            labels = torch.where(mask.amax(1) > 0, mask.argmax(1) + 1, torch.zeros_like(mask[:, 0], dtype=torch.long))
        return Target(mask, labels, None if edge_logits is None else edge_logits.float())


Builder = Callable[..., nn.Module]
LOSSES: Registry[Builder] = Registry("loss")


def _weights(mode: str, num_classes: int, class_weights: Optional[Sequence[float]]) -> Optional[list[float]]:
    """Per-output-channel weights: multiclass prepends the background's weight 1."""
    if class_weights is None:
        return None
    return [1.0, *class_weights] if mode == "multiclass" else list(class_weights)


class _SmpTerm(nn.Module):
    """An smp loss fed the target form its mode expects."""

    def __init__(self, loss: nn.Module, mode: str):
        super().__init__()
        self.loss = loss
        self.mode = mode

    def forward(self, logits: torch.Tensor, target: Target) -> torch.Tensor:
        return self.loss(logits, target.labels if self.mode == "multiclass" else target.mask)


def _smp_mode(mode: str, num_classes: int) -> str:
    # A single sigmoid channel is smp's binary mode whatever the config calls it.
    return "binary" if mode != "multiclass" and num_classes == 1 else mode


def _region_loss(cls_name: str) -> Builder:
    def build(mode: str, num_classes: int, class_weights=None, **params) -> nn.Module:
        import segmentation_models_pytorch as smp  # here: smp imports timm and torchvision, seconds

        smp_mode = _smp_mode(mode, num_classes)
        if smp_mode != "binary":
            params.setdefault("class_weights", _weights(mode, num_classes, class_weights))
        return _SmpTerm(getattr(smp.losses, cls_name)(smp_mode, **params), mode)

    return build


LOSSES.register("dice")(_region_loss("DiceLoss"))
LOSSES.register("jaccard")(_region_loss("JaccardLoss"))
LOSSES.register("tversky")(_region_loss("TverskyLoss"))


@LOSSES.register("focal")
def _focal(mode: str, num_classes: int, class_weights=None, **params) -> nn.Module:
    import segmentation_models_pytorch as smp  # here: smp imports timm and torchvision, seconds

    smp_mode = _smp_mode(mode, num_classes)
    if smp_mode != "binary":
        params.setdefault("class_weights", _weights(mode, num_classes, class_weights))
    return _SmpTerm(smp.losses.FocalLoss(smp_mode, **params), mode)


class _BCE(nn.Module):
    def __init__(self, num_classes: int, class_weights=None, pos_weight=None, smooth_factor: Optional[float] = None):
        super().__init__()
        import segmentation_models_pytorch as smp  # here: smp imports timm and torchvision, seconds

        def per_channel(v):
            if v is None:
                return None
            t = torch.as_tensor(v, dtype=torch.float32).reshape(-1)
            if t.numel() not in (1, num_classes):
                raise ValueError(f"needs 1 or {num_classes} values, got {t.numel()}")
            return t.reshape(-1, 1, 1)

        self.loss = smp.losses.SoftBCEWithLogitsLoss(
            weight=per_channel(class_weights), pos_weight=per_channel(pos_weight), smooth_factor=smooth_factor,
            ignore_index=None,
        )

    def forward(self, logits: torch.Tensor, target: Target) -> torch.Tensor:
        return self.loss(logits, target.mask)


class _CE(nn.Module):
    def __init__(self, weight: Optional[list[float]], label_smoothing: float = 0.0):
        super().__init__()
        self.register_buffer("weight", torch.tensor(weight) if weight is not None else None)
        self.label_smoothing = label_smoothing

    def forward(self, logits: torch.Tensor, target: Target) -> torch.Tensor:
        return F.cross_entropy(logits, target.labels, weight=self.weight, label_smoothing=self.label_smoothing)


@LOSSES.register("bce")
def _bce(mode: str, num_classes: int, class_weights=None, **params) -> nn.Module:
    if mode == "multiclass":
        if "pos_weight" in params:
            raise TypeError("pos_weight applies to sigmoid outputs; multiclass uses class_weights")
        return _CE(_weights(mode, num_classes, class_weights), **params)
    return _BCE(num_classes, class_weights, **params)


LOSSES.register("ce")(_bce)


class _BalancedBCE(nn.Module):
    """BCE whose positives weigh the batch's share of negatives (and negatives the share of positives) per class, so
    a 1 % foreground counts as much as the background (HED-style class balancing). Multiclass: cross-entropy with
    inverse-frequency class weights of the batch."""

    def __init__(self, mode: str, num_classes: int, class_weights=None, clamp: float = 0.01):
        super().__init__()
        w = _weights(mode, num_classes, class_weights)
        self.register_buffer("class_weights", torch.tensor(w) if w is not None else None)
        self.mode = mode
        self.clamp = clamp

    def forward(self, logits: torch.Tensor, target: Target) -> torch.Tensor:
        if self.mode == "multiclass":
            c = logits.shape[1]
            freq = torch.bincount(target.labels.reshape(-1), minlength=c).float() / target.labels.numel()
            weight = 1.0 / freq.clamp_min(self.clamp)
            weight = weight / weight.mean()
            if self.class_weights is not None:
                weight = weight * self.class_weights
            return F.cross_entropy(logits, target.labels, weight=weight)
        y = target.mask
        pos = y.mean(dim=(0, 2, 3), keepdim=True).clamp(self.clamp, 1 - self.clamp)
        weight = torch.where(y > 0, 1 - pos, pos) * 2  # x2: a balanced batch keeps plain BCE's scale
        if self.class_weights is not None:
            weight = weight * self.class_weights.reshape(1, -1, 1, 1)
        return F.binary_cross_entropy_with_logits(logits, y, weight=weight)


@LOSSES.register("balanced_bce")
def _balanced_bce(mode: str, num_classes: int, class_weights=None, **params) -> nn.Module:
    return _BalancedBCE(mode, num_classes, class_weights, **params)


def lovasz_hinge(logits: torch.Tensor, labels: torch.Tensor, elu: bool = False) -> torch.Tensor:
    """Lovasz hinge (Berman et al., 2018) of each row of (R, P) logits against 0/1 labels: the Lovasz extension of
    the Jaccard loss applied to the sorted hinge errors. All rows are sorted and scored at once, so a batch scored
    per image costs one sort instead of a Python loop of them. ``elu`` scores errors with elu(e) + 1 instead of
    max(e, 0): pixels already beyond the margin keep a small gradient. Returns (R,) losses."""
    labels = labels.to(logits.dtype)
    errors = 1.0 - logits * (2.0 * labels - 1.0)
    errors, order = torch.sort(errors, dim=1, descending=True)
    truth = labels.gather(1, order)
    positives = truth.sum(dim=1, keepdim=True)
    # Jaccard loss of predicting the first i sorted pixels as foreground; its increments weight the errors
    jaccard = 1.0 - (positives - truth.cumsum(dim=1)) / (positives + (1.0 - truth).cumsum(dim=1))
    weights = torch.cat([jaccard[:, :1], jaccard[:, 1:] - jaccard[:, :-1]], dim=1)
    hinge = F.elu(errors) + 1.0 if elu else F.relu(errors)
    return (hinge * weights).sum(dim=1)


class _LovaszHinge(nn.Module):
    """Lovasz hinge per sigmoid channel (a multilabel channel is its own binary problem), weighted over channels.

    ``symmetric`` averages the hinge on the foreground with the hinge on the background (negated logits, inverted
    mask). Per image, the plain hinge on an empty mask has a Jaccard loss of 1 as soon as one pixel is predicted, so
    only the single highest logit gets a gradient; the background term gives every pixel of such an image one,
    which matters where many images are empty (TGS: 39 %). ``hinge: elu`` is the smoother elu(e) + 1 scoring of
    the errors."""

    def __init__(self, num_classes: int, class_weights=None, per_image: bool = False, symmetric: bool = False,
                 hinge: str = "relu"):
        super().__init__()
        self.per_image, self.symmetric, self.elu = per_image, symmetric, hinge == "elu"
        w = torch.tensor(class_weights if class_weights is not None else [1.0] * num_classes, dtype=torch.float32)
        self.register_buffer("weights", w / w.sum())

    def _channel(self, logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        rows = logits.shape[0] if self.per_image else 1
        logits, mask = logits.reshape(rows, -1), mask.reshape(rows, -1).float()
        loss = lovasz_hinge(logits, mask, self.elu)
        if self.symmetric:
            loss = (loss + lovasz_hinge(-logits, 1.0 - mask, self.elu)) / 2
        return loss.mean()

    def forward(self, logits: torch.Tensor, target: Target) -> torch.Tensor:
        parts = [self._channel(logits[:, k], target.mask[:, k]) for k in range(logits.shape[1])]
        return (torch.stack(parts) * self.weights).sum()


@LOSSES.register("lovasz")
def _lovasz(mode: str, num_classes: int, class_weights=None, per_image: bool = False, symmetric: bool = False,
            hinge: str = "relu") -> nn.Module:
    import segmentation_models_pytorch as smp  # here: smp imports timm and torchvision, seconds

    if hinge not in ("relu", "elu"):  # one check for both modes (build_loss names the key)
        raise ValueError(f"hinge must be 'relu' or 'elu', got {hinge!r}")
    if mode == "multiclass":
        if symmetric or hinge != "relu":
            raise ConfigError("train.loss_params.lovasz: symmetric and hinge are for binary / multilabel masks "
                              "(Lovasz-softmax already scores every class, background included)")
        return _SmpTerm(smp.losses.LovaszLoss("multiclass", per_image=per_image), mode)
    return _LovaszHinge(num_classes, class_weights, per_image=per_image, symmetric=symmetric, hinge=hinge)


def signed_distance(mask: np.ndarray) -> np.ndarray:
    """Signed Euclidean distance to the boundary of each (N, K) 2-D mask, in units of the image diagonal:
    negative inside the object, positive outside (Kervadec et al.). An empty mask is +1 everywhere (any predicted
    pixel is maximally wrong), a full mask -1."""
    from scipy.ndimage import distance_transform_edt  # here: only the boundary loss needs scipy

    out = np.empty(mask.shape, dtype=np.float32)
    h, w = mask.shape[-2:]
    diag = float(np.hypot(h, w))
    for idx in np.ndindex(*mask.shape[:-2]):
        pos = mask[idx] > 0
        if not pos.any():
            out[idx] = 1.0
        elif pos.all():
            out[idx] = -1.0
        else:
            neg = ~pos
            out[idx] = (distance_transform_edt(neg) * neg - (distance_transform_edt(pos) - 1) * pos) / diag
    return out


class _Boundary(nn.Module):
    """Boundary loss: mean over pixels of p(x) * phi(x), phi the target's signed distance map (computed per batch on
    the CPU with scipy). Predicted foreground far outside the object costs most; inside it earns a reward."""

    def __init__(self, mode: str, num_classes: int, class_weights=None):
        super().__init__()
        self.mode = mode
        w = torch.tensor(class_weights if class_weights is not None else [1.0] * num_classes, dtype=torch.float32)
        self.register_buffer("weights", w / w.sum())

    def forward(self, logits: torch.Tensor, target: Target) -> torch.Tensor:
        probs = logits.softmax(1)[:, 1:] if self.mode == "multiclass" else logits.sigmoid()
        phi = torch.from_numpy(signed_distance(target.mask.detach().cpu().numpy())).to(probs.device)
        per_class = (probs * phi).mean(dim=(0, 2, 3))
        return (per_class * self.weights).sum()


@LOSSES.register("boundary")
def _boundary(mode: str, num_classes: int, class_weights=None) -> nn.Module:
    return _Boundary(mode, num_classes, class_weights)


def boundary_map(maps: torch.Tensor) -> torch.Tensor:
    """(N, K, H, W) masks or probabilities -> (N, 1, H, W) in [0, 1]: the morphological gradient (3x3 dilation minus
    erosion, by max pooling) of each channel, the largest over channels. On 0/1 masks it is the 0/1 boundary, two
    pixels thick (the last pixel in an object, the first outside); max pooling pads with -inf, so the image's border
    is no boundary. On probabilities it is a soft boundary with a gradient, the same operator on both sides."""
    dilated = F.max_pool2d(maps, 3, stride=1, padding=1)
    eroded = -F.max_pool2d(-maps, 3, stride=1, padding=1)
    return (dilated - eroded).amax(dim=1, keepdim=True)


class _DualTask(nn.Module):
    """Gated-SCNN's losses beside the segmentation terms (Takikawa et al., 2019, "Gated-SCNN: Gated Shape CNNs for
    Semantic Segmentation"), on the edge logits the network returns in training:

    - edge: BCE of the edge logits against the masks' boundary, positives weighted by the share of negatives and
      negatives by the share of positives (boundaries are a few percent of the pixels);
    - attention: the pixel loss (BCE, CE for multiclass) again, on the pixels whose edge probability exceeds
      ``attention_threshold`` only, so the masks are pushed hardest along the boundaries;
    - consistency: the dual-task regularizer: the soft boundary of the predicted probabilities (``boundary_map``)
      should be the true boundary: mean absolute difference over the pixels that are boundary in either.

    In eval mode the network gives no edges (validation's loss, prediction): the term is then 0."""

    def __init__(self, mode: str, edge: float = 1.0, attention: float = 1.0, consistency: float = 1.0,
                 attention_threshold: float = 0.8):
        super().__init__()
        self.mode, self.weights, self.threshold = mode, (edge, attention, consistency), attention_threshold

    def forward(self, logits: torch.Tensor, target: Target) -> torch.Tensor:
        edges = target.edge_logits
        if edges is None:
            return logits.new_zeros(())
        if edges.shape[2:] != logits.shape[2:]:
            raise ValueError(f"dual_task: edge logits {tuple(edges.shape)} and masks {tuple(logits.shape)} differ in "
                             f"size")
        boundary = (boundary_map(target.mask) > 0).float()
        positives = boundary.mean()
        edge = F.binary_cross_entropy_with_logits(edges, boundary,
                                                  weight=torch.where(boundary > 0, 1.0 - positives, positives))
        if self.mode == "multiclass":
            pixel = F.cross_entropy(logits, target.labels, reduction="none")
            probs = logits.softmax(1)[:, 1:]
        else:
            pixel = F.binary_cross_entropy_with_logits(logits, target.mask, reduction="none").mean(1)
            probs = logits.sigmoid()
        # the edge stream only picks the pixels here; the edge term is what trains it
        confident = (edges.detach().sigmoid()[:, 0] > self.threshold).float()
        attention = (pixel * confident).sum() / confident.sum().clamp_min(1.0)
        predicted = boundary_map(probs)
        region = ((predicted.detach() > 0.5) | (boundary > 0)).float()
        consistency = ((predicted - boundary).abs() * region).sum() / region.sum().clamp_min(1.0)
        w_edge, w_attention, w_consistency = self.weights
        return w_edge * edge + w_attention * attention + w_consistency * consistency


@LOSSES.register("dual_task")
def _dual_task(mode: str, num_classes: int, class_weights=None, **params) -> nn.Module:
    return _DualTask(mode, **params)


EDGE_TERMS = ("dual_task",)  # terms that need a network with an edge output (GatedSCNN)


# ------------------------------------------------------------------------------------------------ weighted sums
class SegLoss(nn.Module):
    """sum_i w_i * term_i(logits, target) [+ aux_weight * BCE(image logits, has-mask)]. ``forward`` returns the total
    and a dict of each part's value (for logging)."""

    def __init__(self, terms: dict[str, tuple[float, nn.Module]], mode: str, aux_weight: float = 0.0):
        super().__init__()
        self.mode = mode
        self.weights = {name: w for name, (w, _) in terms.items()}
        self.terms = nn.ModuleDict({name: m for name, (_, m) in terms.items()})
        self.aux_weight = aux_weight

    def forward(
        self,
        logits: torch.Tensor,
        mask: torch.Tensor,
        aux_logits: Optional[torch.Tensor] = None,
        has_mask: Optional[torch.Tensor] = None,
        edge_logits: Optional[torch.Tensor] = None,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        logits = logits.float()
        target = Target.of(mask, self.mode, edge_logits)
        total = logits.new_zeros(())
        parts: dict[str, float] = {}
        # Deep supervision (a 3D network's extra heads, stacked on axis 1, each at the output's size): head i
        # weighs 1 / 2^i, the weights summing to 1, as nnU-Net weighs them; the logged parts are the main head's.
        heads = logits.unbind(1) if logits.ndim == mask.ndim + 1 else (logits,)
        weights = [0.5 ** i for i in range(len(heads))]
        for i, head in enumerate(heads):
            for name, term in self.terms.items():
                value = term(head, target)
                if i == 0:
                    parts[name] = float(value.detach())
                total = total + self.weights[name] * value * (weights[i] / sum(weights))
        if aux_logits is not None and self.aux_weight > 0:
            aux = F.binary_cross_entropy_with_logits(aux_logits.float(), has_mask.float())
            parts["aux"] = float(aux.detach())
            total = total + self.aux_weight * aux
        return total, parts

    @property
    def names(self) -> list[str]:
        return list(self.terms)


def build_loss(
    terms: dict[str, float],
    mode: str,
    num_classes: int,
    class_weights: Optional[Sequence[float]] = None,
    params: Optional[dict[str, dict[str, Any]]] = None,
    aux_weight: float = 0.0,
    key: str = "train.loss",
) -> SegLoss:
    """A weighted sum of named terms; errors name the config key (unknown loss, bad parameter, bad weights)."""
    if mode not in MODES:
        raise ConfigError(f"data.mode: unknown mode {mode!r}")
    params = params or {}
    if class_weights is not None and len(class_weights) != num_classes:
        raise ConfigError(f"train.class_weights: {len(class_weights)} weights for {num_classes} classes")
    built: dict[str, tuple[float, nn.Module]] = {}
    for name, weight in terms.items():
        builder = LOSSES.get(name, key=key)
        try:
            module = builder(mode, num_classes, class_weights, **params.get(name, {}))
        except (TypeError, ValueError, AssertionError) as err:
            raise ConfigError(f"train.loss_params.{name}: {str(err).splitlines()[0]}") from None
        built[name.lower()] = (float(weight), module)
    return SegLoss(built, mode, aux_weight)


class LossSchedule:
    """The loss of each epoch: ``train.loss``, or the ``loss_stages`` stage covering it (1-based epochs)."""

    def __init__(self, train_cfg, mode: str, num_classes: int, aux_weight: float = 0.0):
        self.stages: list[tuple[Optional[int], SegLoss]] = []
        used = set(train_cfg.loss)
        if train_cfg.loss_stages:
            for i, stage in enumerate(train_cfg.loss_stages):
                used |= set(stage.terms)
                loss = build_loss(stage.terms, mode, num_classes, train_cfg.class_weights, train_cfg.loss_params,
                                  aux_weight, key=f"train.loss_stages.{i}.terms")
                self.stages.append((stage.until_epoch, loss))
        else:
            self.stages.append((None, build_loss(train_cfg.loss, mode, num_classes, train_cfg.class_weights,
                                                 train_cfg.loss_params, aux_weight)))
        unused = sorted(set(train_cfg.loss_params) - {u.lower() for u in used})
        if unused:
            raise ConfigError(f"train.loss_params.{unused[0]}: not a loss term in use (a file that changes a base's "
                              f"loss states the parameters it keeps: `loss_params: {{}}` for none)")

    def for_epoch(self, epoch: int) -> SegLoss:
        for until, loss in self.stages:
            if until is None or epoch <= until:
                return loss
        return self.stages[-1][1]

    def to(self, device: torch.device) -> "LossSchedule":
        for _, loss in self.stages:
            loss.to(device)
        return self
