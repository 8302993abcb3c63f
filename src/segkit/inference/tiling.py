"""Tiled inference: predict an image (or a volume) larger than the training size from overlapping, blended tiles.

The image is cut into tiles of the training size that overlap by a fraction of the tile; tiles go through the
predictor ``batch_size`` at a time; each tile's probabilities are multiplied by a weight map that is high in the
tile's centre and low at its border (where the network saw the least context) and added onto a float32 canvas,
together with the weights; the canvas divided by the summed weights is the prediction. Memory holds the canvas,
one (H, W) weight sum and one batch of tiles, so a 5000x5000 image predicts in bounded memory, and because every
pixel is a weighted average of tiles whose weights fade in and out smoothly there are no seams.

The predictor is any ``fn(batch (B, C, th, tw)) -> probs (B, K, th, tw)``, e.g. a
``segkit.inference.tta.TTAPredictor``, so tiling and TTA compose. The same code slides a 3D window over a volume
(C, D, H, W) when the tile has three sides: the weights are the product of one ramp per axis (nnU-Net's Gaussian
importance map, sigma an eighth of the patch), and several windows go through the network in one batch where
nnU-Net predicts one at a time.

Tiling pays for images only a little larger than the tile, too. A network trained on random crops has never seen
padding: TGS's 101 px tiles padded to 128 by reflection score 0.7782 on fold 0 with a network trained on 96 px
crops, and the same network on the four 96 px corner tiles, blended linearly, 0.7950 (bench/tiles.py).
"""

from __future__ import annotations

import itertools
import math
from typing import Callable, Iterator, Literal, Optional, Sequence, Union

import torch
import torch.nn.functional as F

from segkit.errors import ConfigError

Blend = Literal["gaussian", "linear"]
Size = Union[int, Sequence[int]]  # an int is a square 2D tile

# Gaussian weights are clipped to this fraction of their peak: the map stays strictly positive (so a pixel covered
# only by tile borders still gets a finite weighted average) and far from float32 underflow at the corners.
GAUSSIAN_FLOOR = 1e-3


def _sides(size: Size) -> tuple[int, ...]:
    """A tile's sides, one per spatial axis: an int is a square 2D tile."""
    if isinstance(size, int):
        return size, size
    return tuple(int(n) for n in size)


def _pair(size: Size) -> tuple[int, int]:
    th, tw = _sides(size)
    return th, tw


def _ramp_1d(n: int, blend: Blend, ramp: int) -> torch.Tensor:
    centre = torch.arange(n, dtype=torch.float64) + 0.5  # pixel centres, so both ends are symmetric
    if blend == "gaussian":
        sigma = n / 8  # nnU-Net's importance map: sigma = 1/8 of the patch size
        return torch.exp(-0.5 * ((centre - n / 2) / sigma) ** 2)
    # linear: rises from the border over ``ramp`` pixels (the overlap) and stays flat at 1 in between
    r = max(ramp, 1)
    return torch.clamp(torch.minimum(centre, n - centre) / r, max=1.0)


def tile_weights(tile: Size, blend: Blend = "gaussian", overlap: float = 0.5) -> torch.Tensor:
    """(th, tw) float32 blending weights, peak 1, strictly positive everywhere; (td, th, tw) for a 3D tile.

    ``gaussian``: separable Gaussian with sigma = tile/8 per axis, clipped below at GAUSSIAN_FLOOR.
    ``linear``: separable ramp from the tile border to 1 over the overlap width (overlap * tile pixels), so two
    neighbouring tiles cross-fade linearly across their shared strip.
    """
    sides = _sides(tile)
    if blend not in ("gaussian", "linear"):
        raise ConfigError(f"predict.tile_blend: unknown blend {blend!r}; known: gaussian, linear")
    w = torch.ones((), dtype=torch.float64)
    for n in sides:  # the outer product of one ramp per axis
        w = w[..., None] * _ramp_1d(n, blend, round(overlap * n))
    w = w / w.max()
    if blend == "gaussian":
        w = w.clamp_min(GAUSSIAN_FLOOR)
    return w.float()


def tile_starts(length: int, tile: int, overlap: float) -> list[int]:
    """Start offsets of tiles of size ``tile`` covering [0, length) with at least ``overlap`` * tile overlap.

    The first tile starts at 0 and the last ends at ``length``; the ones between are spread evenly, so the real
    overlap is never below the one asked for. ``length`` <= ``tile`` gives one tile (the image is padded to it).
    """
    if not 0 <= overlap < 1:
        raise ConfigError(f"predict.tile_overlap: must be in [0, 1), got {overlap}")
    if length <= tile:
        return [0]
    stride = max(tile * (1 - overlap), 1)
    n = math.ceil((length - tile) / stride) + 1
    span = length - tile
    return [round(i * span / (n - 1)) for i in range(n)]


def tile_boxes(height: int, width: int, tile: Size, overlap: float) -> list[tuple[int, int]]:
    """Top-left corners (y, x) of all tiles, row by row."""
    return window_corners((height, width), _pair(tile), overlap)


def window_corners(shape: Sequence[int], tile: Sequence[int], overlap: float) -> list[tuple[int, ...]]:
    """First corners of all tiles of ``tile`` over an array of ``shape`` (any number of axes), the last axis
    fastest."""
    return list(itertools.product(*(tile_starts(n, t, overlap) for n, t in zip(shape, tile))))


def _pad_to(images: torch.Tensor, sides: tuple[int, ...], mode: str) -> torch.Tensor:
    """Pad a stack (N, C, *spatial) at the far end of each spatial axis to at least ``sides``."""
    spatial = images.shape[2:]
    short = [max(t - n, 0) for n, t in zip(spatial, sides)]
    if not any(short):
        return images
    # Pad at the far ends only, so canvas coordinates stay image coordinates; reflect needs pad < size, so a tiny
    # image falls back to replicating its edge.
    if mode == "reflect" and any(p >= n for p, n in zip(short, spatial)):
        mode = "replicate"
    pad = tuple(x for p in reversed(short) for x in (0, p))  # F.pad lists the last axis first
    if mode == "constant":
        return F.pad(images, pad, mode="constant", value=0.0)
    return F.pad(images, pad, mode=mode)


def tiles_per_image(height: int, width: int, tile: Size, overlap: float) -> int:
    """How many tiles ``predict_tiled`` cuts from one (height, width) image."""
    th, tw = _pair(tile)
    return len(tile_boxes(max(height, th), max(width, tw), (th, tw), overlap))


def stack_groups(members: list, size: tuple[int, int], tile: Size, overlap: float, batch_size: int) -> list[list]:
    """``members`` (images of one ``size``) split into stacks for ``predict_tiled``: as many images as fill one
    batch of ``batch_size`` with all their tiles, or one image a stack once it alone has that many tiles."""
    per_stack = max(1, batch_size // tiles_per_image(*size, tile, overlap))
    return [members[k:k + per_stack] for k in range(0, len(members), per_stack)]


def _batches(boxes: list[tuple[int, ...]], size: int) -> Iterator[list[tuple[int, ...]]]:
    for i in range(0, len(boxes), size):
        yield boxes[i:i + size]


def predict_tiled(
    fn: Callable[[torch.Tensor], torch.Tensor],
    image: torch.Tensor,
    tile: Size,
    overlap: float = 0.5,
    blend: Blend = "gaussian",
    batch_size: int = 8,
    pad_mode: Literal["reflect", "replicate", "constant"] = "reflect",
    device: Optional[Union[str, torch.device]] = None,
) -> torch.Tensor:
    """Probabilities (K, H, W) float32 for one image (C, H, W), predicted tile by tile; or (N, K, H, W) for a
    stack (N, C, H, W) of same-size images, whose tiles share the predictor's batches. A 3D ``tile`` (three sides)
    slides a window over a volume (C, D, H, W), or a stack of them (N, C, D, H, W), the same way.

    - ``tile``: tile size (int or (th, tw), or (td, th, tw)), normally the training crop or patch size.
    - ``overlap``: fraction of the tile shared with each neighbour (0.5 = half-tile stride).
    - ``blend``: ``gaussian`` or ``linear`` weights (see ``tile_weights``).
    - ``batch_size``: tiles per ``fn`` call. A stack of N images is cut at the same boxes, and one call holds
      ``max(1, batch_size // N)`` boxes of every image: a stack of many small images (TGS's 101 px tiles cut into
      four 96 px tiles each) fills the batches that one image alone would leave nearly empty.
    - ``pad_mode``: how an image smaller than a tile (in any axis) is padded to the tile size before cutting;
      the padding is cropped off the result.
    - ``device``: where tiles are sent for ``fn`` (default: the image's device); the canvas stays with the image.

    An image of exactly the tile size is a single tile with a single weight map, so the result equals ``fn`` on
    the whole image up to one multiply-and-divide of rounding.
    """
    sides = _sides(tile)
    dims = len(sides)
    if image.ndim not in (dims + 1, dims + 2):
        raise ValueError(f"predict_tiled with a {dims}D tile expects one (C, {_axes(dims)}) input or an (N, C, "
                         f"{_axes(dims)}) stack, got shape {tuple(image.shape)}")
    if batch_size < 1:
        raise ConfigError(f"predict.batch_size: must be >= 1, got {batch_size}")
    if min(sides) < 1:
        raise ConfigError(f"predict.tile_size: must be >= 1, got {tile}")
    single = image.ndim == dims + 1
    stack = image[None] if single else image
    n = stack.shape[0]
    spatial = tuple(stack.shape[2:])
    padded = _pad_to(stack, sides, pad_mode)
    grid = tuple(padded.shape[2:])
    boxes = window_corners(grid, sides, overlap)
    run_on = torch.device(device) if device is not None else image.device
    weights = tile_weights(sides, blend, overlap).to(image.device)

    def window(corner: tuple[int, ...]) -> tuple[slice, ...]:
        return tuple(slice(c, c + t) for c, t in zip(corner, sides))

    canvas: Optional[torch.Tensor] = None
    weight_sum = torch.zeros(grid, dtype=torch.float32, device=image.device)
    with torch.inference_mode():
        for group in _batches(boxes, max(1, batch_size // n)):
            # box-major: rows [j * n, (j + 1) * n) are box j of every image
            batch = torch.cat([padded[(..., *window(c))] for c in group]).to(run_on)
            probs = fn(batch)
            if probs.shape[0] != len(group) * n or tuple(probs.shape[2:]) != sides:
                raise ValueError(f"tile predictor returned shape {tuple(probs.shape)} for a batch of "
                                 f"{tuple(batch.shape)}; expected ({len(group) * n}, K, {', '.join(map(str, sides))})")
            probs = probs.to(image.device, torch.float32).unflatten(0, (len(group), n))
            if canvas is None:
                # allocated outside inference mode so the returned array can be edited in place by the caller
                with torch.inference_mode(False):
                    canvas = torch.zeros((n, probs.shape[2], *grid), dtype=torch.float32, device=image.device)
            for corner, p in zip(group, probs):
                canvas[(..., *window(corner))].addcmul_(p, weights)
                weight_sum[window(corner)].add_(weights)
            del batch, probs
        assert canvas is not None  # at least one tile always exists
        canvas.div_(weight_sum)
    if grid != spatial:
        # drop the padding rather than keep it alive in a view
        canvas = canvas[(..., *(slice(0, m) for m in spatial))].contiguous()
    return canvas[0] if single else canvas


def _axes(dims: int) -> str:
    return "D, H, W" if dims == 3 else "H, W"
