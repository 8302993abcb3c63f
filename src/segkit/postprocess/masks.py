"""Post-processing: a (K, H, W) probability map becomes a (K, H, W) uint8 0/1 mask, with parameters per class.

Each class goes through the same fixed chain; a parameter at its neutral value switches its step off:

1. empty-mask rule (``empty_top``, ``empty_pixels``): if fewer than ``empty_pixels`` pixels have p > ``empty_top``,
   the class is declared absent and its mask is empty. Otherwise the mask is binarised at the (lower) ``threshold``.
   This is the SIIM pneumothorax winners' triplet: a confident core decides *whether* there is an object, a lower
   threshold decides *where* it is, which a single threshold cannot do for both small and empty masks.
2. binarise: p > ``threshold`` (the pipeline's one rule, ``segkit.threshold``).
3. ``morphology``: steps in the order listed: ``opening`` / ``closing`` / ``dilation`` / ``erosion`` with a
   disk of radius r (the pixels within distance r), and ``fill_holes`` (background not 4-connected to the border);
   every step is a ``MaskStep`` of the ``MASK_STEPS`` registry, so a module may add its own (``register_step``).
4. ``min_area``: connected components (8-connectivity) smaller than this many pixels are removed.
5. ``keep_largest``: only the largest component survives (one object per image, as in TGS).

Multiclass data (mutually exclusive classes) is passed with ``exclusive=True``: a pixel may only be claimed by the
class with the highest probability, and pixels that morphology makes two classes claim go to the more probable one.

Probabilities may be float in [0, 1] or the stores' uint8 (p * 255); ``segkit.threshold`` binarises both so that
tuning and submission (both on stores) agree exactly.

``tune.json`` (what the tune stage chose, and what submission applies) holds one parameter set per class in the form
``ClassParams.to_dict`` writes; ``segkit.postprocess.tuned`` reads it back, checked.
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from typing import Any, Callable, Mapping, Sequence

import cv2
import numpy as np

from segkit.components import bounding_box, components
from segkit.errors import ConfigError
from segkit.registry import Registry
from segkit.threshold import binarize, count_above


@dataclass(frozen=True)
class MaskStep:
    """A step of the morphology chain: ``apply(mask, radius)`` on one class's uint8 0/1 (H, W) mask. The tune
    search offers it once per radius of ``tune.morph_radii`` (``radius=False``: once, with radius 0).
    ``keeps_empty``: an empty mask stays empty (true of the built-in steps), so the tuner skips it there."""

    name: str
    apply: Callable[[np.ndarray, int], np.ndarray]
    radius: bool = True
    keeps_empty: bool = False


# The morphology steps by name: what ``ClassParams.morphology`` lists and ``tune.morph_steps`` searches.
MASK_STEPS: Registry[MaskStep] = Registry("post-processing step")


def register_step(name: str, radius: bool = True, keeps_empty: bool = False) -> Callable:
    """``@register_step("name")`` on a function (mask, radius) -> mask adds it to the chain's steps."""
    def add(fn: Callable[[np.ndarray, int], np.ndarray]) -> Callable[[np.ndarray, int], np.ndarray]:
        MASK_STEPS.register(name)(MaskStep(name, fn, radius, keeps_empty))
        return fn

    return add


@dataclass(frozen=True)
class ClassParams:
    """Post-processing parameters of one class (the defaults do nothing but binarise at 0.5)."""

    threshold: float = 0.5
    min_area: int = 0
    empty_top: float | None = None  # None: no empty-mask rule
    empty_pixels: int = 0
    morphology: tuple[tuple[str, int], ...] = field(default_factory=tuple)
    keep_largest: bool = False

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["morphology"] = [[op, int(r)] for op, r in self.morphology]
        return d

    def replace(self, **changes: Any) -> "ClassParams":
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str = "params") -> "ClassParams":
        """Checked construction from JSON (tune.json may be edited by hand): errors name the key."""
        if isinstance(d, ClassParams):
            return d
        if not isinstance(d, Mapping):
            raise ConfigError(f"{where}: expected a mapping of post-processing parameters, got {type(d).__name__}")
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {sorted(unknown)}; known: {sorted(cls.__dataclass_fields__)}")
        out: dict[str, Any] = {}
        try:
            if "threshold" in d:
                out["threshold"] = _prob(d["threshold"], f"{where}.threshold")
            if "min_area" in d:
                out["min_area"] = _count(d["min_area"], f"{where}.min_area")
            if d.get("empty_top") is not None:
                out["empty_top"] = _prob(d["empty_top"], f"{where}.empty_top")
            if "empty_pixels" in d:
                out["empty_pixels"] = _count(d["empty_pixels"], f"{where}.empty_pixels")
            if "keep_largest" in d:
                if not isinstance(d["keep_largest"], bool):
                    raise ConfigError(f"{where}.keep_largest: expected true/false, got {d['keep_largest']!r}")
                out["keep_largest"] = d["keep_largest"]
            if "morphology" in d:
                ops = []
                for i, item in enumerate(d["morphology"] or []):
                    key = f"{where}.morphology[{i}]"
                    if not isinstance(item, (list, tuple)) or len(item) != 2:
                        raise ConfigError(f"{key}: expected [operation, radius], got {item!r}")
                    op, radius = item
                    if op not in MASK_STEPS:
                        raise ConfigError(f"{key}: unknown operation {op!r}; known: {', '.join(MASK_STEPS)}")
                    ops.append((str(op), _count(radius, f"{key} radius")))
                out["morphology"] = tuple(ops)
        except TypeError:
            raise ConfigError(f"{where}: malformed parameters {dict(d)!r}") from None
        return cls(**out)


def _prob(value: Any, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= float(value) <= 1.0:
        raise ConfigError(f"{key}: expected a probability in [0, 1], got {value!r}")
    return float(value)


def _count(value: Any, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ConfigError(f"{key}: expected a non-negative integer, got {value!r}")
    return int(value)


# ------------------------------------------------------------------------------------------------- single steps


@lru_cache(maxsize=None)
def _kernel(radius: int) -> np.ndarray:
    """The pixels within Euclidean distance ``radius`` of the centre (OpenCV's MORPH_ELLIPSE is boxier)."""
    yy, xx = np.mgrid[-radius:radius + 1, -radius:radius + 1]
    return (yy * yy + xx * xx <= radius * radius).astype(np.uint8)


def morph(mask: np.ndarray, op: str, radius: int = 1) -> np.ndarray:
    """One step of the morphology chain (``MASK_STEPS``) on a uint8 0/1 mask."""
    step = MASK_STEPS.get(op, key="morphology")
    return np.ascontiguousarray(step.apply(np.ascontiguousarray(mask, dtype=np.uint8), radius), dtype=np.uint8)


def local(op: Callable[[np.ndarray, int], np.ndarray], margin: Callable[[int], int]):
    """``op`` run on the box around the foreground only, with the same result as on the whole mask: most masks
    of a big competition are empty or hold a few small objects, and a whole 256 x 1600 pass per step and
    candidate was most of the tuner's time. Exact for an operation whose output is empty on an empty mask and is
    decided within ``margin(radius)`` pixels of the foreground (past it the box holds only background, which is
    what lies outside it too)."""
    def apply(mask: np.ndarray, radius: int) -> np.ndarray:
        box = bounding_box(mask, margin(radius))
        if box is None:
            return np.zeros_like(mask)
        if all(b.stop - b.start == size for b, size in zip(box, mask.shape)):
            return op(mask, radius)
        out = np.zeros_like(mask)
        out[box] = op(np.ascontiguousarray(mask[box]), radius)
        return out

    return apply


def _opencv(op: int) -> Callable[[np.ndarray, int], np.ndarray]:
    """An OpenCV morphological operation with a disk of the radius. Pixels outside the image count as neither
    foreground nor background (OpenCV's default border), so an object touching the edge is not eroded from
    outside. Run on the foreground's box grown by 2 radius + 1: a closing dilates by the radius and then erodes,
    reading another radius around that, and the box's own edge then lies in background that erosion never
    changes (an edge that is the image's edge is treated alike in both)."""
    def whole(mask: np.ndarray, radius: int) -> np.ndarray:
        return cv2.morphologyEx(mask, op, _kernel(radius))

    boxed = local(whole, lambda r: 2 * r + 1)
    return lambda mask, radius: mask if radius <= 0 else boxed(mask, radius)


for _name, _op in (("opening", cv2.MORPH_OPEN), ("closing", cv2.MORPH_CLOSE), ("dilation", cv2.MORPH_DILATE),
                   ("erosion", cv2.MORPH_ERODE)):
    register_step(_name, keeps_empty=True)(_opencv(_op))


# The box's one-pixel background ring joins the background outside it, which reaches the image's border: a hole
# in the box is a hole in the image.
register_step("fill_holes", radius=False, keeps_empty=True)(local(lambda mask, _: fill_holes(mask), lambda _: 1))


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """Fill background regions not 4-connected to the image border (scipy's binary_fill_holes, ~20x faster):
    flood the background from a one-pixel frame around the image; whatever stays unflooded is a hole."""
    h, w = mask.shape
    frame = np.zeros((h + 2, w + 2), np.uint8)
    frame[1:-1, 1:-1] = mask
    cv2.floodFill(frame, np.zeros((h + 4, w + 4), np.uint8), (0, 0), 1, flags=4)
    return (mask | (frame[1:-1, 1:-1] == 0)).view(np.uint8)


def remove_small(mask: np.ndarray, min_area: int) -> np.ndarray:
    """Drop 8-connected components smaller than ``min_area`` pixels."""
    if min_area <= 1 or not mask.any():
        return mask
    n, labels, areas = components(mask)
    keep = areas >= min_area
    keep[0] = False
    return keep[labels].view(np.uint8)


def keep_largest(mask: np.ndarray) -> np.ndarray:
    if not mask.any():
        return mask
    n, labels, areas = components(mask)
    if n <= 2:
        return mask
    return (labels == 1 + int(np.argmax(areas[1:]))).view(np.uint8)


# ------------------------------------------------------------------------------------------------ whole chain


def has_empty_rule(params: ClassParams) -> bool:
    return params.empty_top is not None and params.empty_pixels > 0


def stage_mask(prob: np.ndarray, params: ClassParams) -> np.ndarray:
    """Steps 1-3 of the chain (empty rule, binarise, morphology): the mask whose components steps 4-5 filter."""
    if has_empty_rule(params) and count_above(prob, params.empty_top) < params.empty_pixels:
        return np.zeros(np.shape(prob), dtype=np.uint8)
    mask = binarize(prob, params.threshold)
    for op, radius in params.morphology:
        mask = morph(mask, op, radius)
    return mask


def component_filter(areas: np.ndarray, params: ClassParams) -> np.ndarray:
    """Steps 4-5 on component areas (areas[0] = background): which labels survive min_area and keep_largest."""
    keep = areas >= max(params.min_area, 1)
    keep[0] = False
    if params.keep_largest and keep.any():
        largest = int(np.argmax(np.where(keep, areas, -1)))
        keep[:] = False
        keep[largest] = True
    return keep


def apply_class(prob: np.ndarray, params: ClassParams) -> np.ndarray:
    """The full chain for one class: (H, W) probabilities -> uint8 (H, W) 0/1 mask."""
    mask = stage_mask(prob, params)
    if (params.min_area > 1 or params.keep_largest) and mask.any():
        _, labels, areas = components(mask)
        mask = component_filter(areas, params)[labels].view(np.uint8)
    return np.ascontiguousarray(mask, dtype=np.uint8)


def restrict_to_argmax(probs: np.ndarray) -> np.ndarray:
    """Zero each channel where another channel is more probable (ties go to the lower index), so exclusive classes
    never compete for a pixel. Background is not a channel: each class's threshold decides class vs background."""
    probs = np.asarray(probs)
    if probs.shape[0] < 2:
        return probs
    winner = np.argmax(probs, axis=0)
    return np.where(winner[None] == np.arange(probs.shape[0])[:, None, None], probs, 0).astype(probs.dtype)


def params_list(params: Sequence[Any] | Mapping[str, Any], classes: Sequence[str] | None = None,
                where: str = "params") -> list[ClassParams]:
    """Per-class parameters as a list in class order, from a list or a {class name: params} mapping."""
    if isinstance(params, ClassParams):
        return [params]
    if isinstance(params, Mapping):
        if classes is None:
            raise ValueError("params given by class name need the class list")
        missing = [c for c in classes if c not in params]
        if missing:
            raise ConfigError(f"{where}: no parameters for class(es) {missing}; has {sorted(params)}")
        return [ClassParams.from_dict(params[c], f"{where}.{c}") for c in classes]
    out = [ClassParams.from_dict(p, f"{where}[{i}]") for i, p in enumerate(params)]
    if classes is not None and len(out) != len(classes):
        raise ConfigError(f"{where}: {len(out)} parameter sets for {len(classes)} classes")
    return out


def postprocess(probs: np.ndarray, params: Sequence[Any] | Mapping[str, Any], classes: Sequence[str] | None = None,
                exclusive: bool = False) -> np.ndarray:
    """(K, H, W) probabilities (float in [0, 1] or uint8) -> uint8 (K, H, W) 0/1 masks.

    ``params``: K parameter sets (``ClassParams`` or dicts) in class order, or a {class name: params} mapping with
    ``classes`` giving the order. ``exclusive``: classes are mutually exclusive (multiclass mode).
    """
    probs = np.asarray(probs)
    if probs.ndim != 3:
        raise ValueError(f"expected (K, H, W) probabilities, got shape {probs.shape}")
    plist = params_list(params, classes)
    if len(plist) != probs.shape[0]:
        raise ValueError(f"{len(plist)} parameter sets for {probs.shape[0]} probability channels")
    work = restrict_to_argmax(probs) if exclusive else probs
    masks = np.stack([apply_class(work[k], plist[k]) for k in range(probs.shape[0])])
    if exclusive and probs.shape[0] > 1:
        masks = resolve_overlaps(masks, probs)
    return masks


def resolve_overlaps(masks: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """Where several exclusive classes claim a pixel (after dilation or closing), keep the most probable one."""
    claimed = masks.sum(0) > 1
    if not claimed.any():
        return masks
    score = np.where(masks.astype(bool), probs.astype(np.float32), -1.0)
    best = np.argmax(score, axis=0)
    out = masks.copy()
    for k in range(masks.shape[0]):
        out[k][claimed] = (best[claimed] == k).astype(np.uint8)
    return out


def describe(params: ClassParams) -> str:
    """One line for tables and logs, e.g. ``p>0.45, min area 25, empty if <100 px >0.70, opening(1)``."""
    parts = [f"p>{params.threshold:.2f}"]
    if params.empty_top is not None and params.empty_pixels > 0:
        parts.append(f"empty if <{params.empty_pixels} px >{params.empty_top:.2f}")
    parts += [op if op == "fill_holes" else f"{op}({r})" for op, r in params.morphology]
    if params.min_area > 1:
        parts.append(f"min area {params.min_area}")
    if params.keep_largest:
        parts.append("largest only")
    return ", ".join(parts)
