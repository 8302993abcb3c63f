"""Where a prediction pass's probabilities go: probability stores (``Outputs``), or memory (``Collected``); a
store's folder readied for a unit of work (``prepare_store``), and what decides a store (``store_inputs``)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from segkit.artifacts import atomic
from segkit.artifacts.freshness import Unit, fingerprints
from segkit.artifacts.probs import ProbWriter, mean_uint8
from segkit.config import Config


class Outputs:
    """Where a pass's probabilities go: ``main``, the mean of the groups, quantised group by group first (so a
    model's test store is exactly the mean of its fold stores, whether or not those are kept), and ``parts[g]``,
    group g alone (None: not wanted). An image is to do while any wanted store lacks it."""

    def __init__(self, main: Optional[ProbWriter], parts: Sequence[Optional[ProbWriter]] = ()):
        self.main = main
        self.parts = list(parts)

    def writers(self) -> list[ProbWriter]:
        return [w for w in [self.main, *self.parts] if w is not None]

    def has(self, image_id: str) -> bool:
        return all(w.has(image_id) for w in self.writers())

    def write(self, image_id: str, q: np.ndarray) -> None:
        """``q``: uint8 (G * K, H, W) as a Predictor gives it."""
        groups = q.reshape(max(len(self.parts), 1), -1, *q.shape[1:])
        for part, writer in zip(groups, self.parts):
            if writer is not None and not writer.has(image_id):
                writer.write(image_id, np.ascontiguousarray(part))
        if self.main is not None and not self.main.has(image_id):
            self.main.write(image_id, np.ascontiguousarray(mean_uint8(list(groups))))


class Collected(dict):
    """A pass's uint8 probabilities kept in memory, id -> (G * K, H, W), where Outputs would write them."""

    def has(self, image_id: str) -> bool:
        return image_id in self

    def write(self, image_id: str, q: np.ndarray) -> None:
        self[image_id] = q



def to_uint8(p: torch.Tensor) -> np.ndarray:
    """Quantise on the device (a quarter of the bytes to copy back); same rounding as
    segkit.artifacts.probs.quantize."""
    p = torch.nan_to_num(p, nan=0.0)
    return torch.round(p * 255.0).clamp_(0, 255).to(torch.uint8).cpu().numpy()


def prepare_store(unit: Unit, folder: Path, is_main: bool, images: Optional[list[Path]] = None) -> None:
    """Ready ``folder`` for ``unit`` and stamp it begun. Unless the unit may resume (same inputs), what it holds from
    other inputs goes first: the whole store, or, for one fold's part of a store, that part's ``images``."""
    if not is_main:
        return
    if not unit.resumable():
        if images is not None:
            for path in images:
                path.unlink(missing_ok=True)
        elif folder.exists():
            shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    atomic.clean_tmp(folder)
    unit.begin()



def store_inputs(cfg: Config, checkpoints: dict[int, list[Path]], kind: str) -> dict:
    """What decides a store's probabilities: the checkpoints (as files on disk) and the prediction settings."""
    p = cfg.predict
    inputs = {"kind": kind, "tta": p.tta, "tta_merge": p.tta_merge, "amp": p.amp, "tile_size": p.tile_size,
              "tile_overlap": p.tile_overlap, "tile_blend": p.tile_blend,
              "checkpoints": {str(k): fingerprints(v) for k, v in checkpoints.items()}}
    if cfg.data.volumes is not None and cfg.data.volumes.predict_axes is not None:
        inputs["volume_axes"] = cfg.data.volumes.prediction_axes
    # recorded where they differ from their defaults, so that stores stamped before these keys existed stay fresh
    defaults = type(p)()
    for key in ("tta_scales", "tta_3d", "snapshot_merge"):
        if getattr(p, key) != getattr(defaults, key):
            inputs[key] = getattr(p, key)
    return inputs


__all__ = ["Collected", "Outputs", "prepare_store", "store_inputs", "to_uint8"]
