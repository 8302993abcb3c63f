"""Checkpoints of a fold: what they hold, how they are written (atomically) and read back.

- ``best.pt`` / ``snapshot<c>.pt``: the weights to predict with (the EMA weights when EMA is on) plus what is needed
  to rebuild the network without the config: the model section, mode, classes, channels, pad multiple.
  ``load_model(path)`` returns a ready model in eval mode — what the predict stage uses.
- ``<name>.safetensors`` (an offline bundle's, ``save_weights``): the weights alone, float16 by default (the batch
  norm statistics stay float32), with the rebuild facts as JSON in the file's metadata: no optimizer, schedule or RNG
  state, and nothing that can run code. ``load_model`` reads it as it reads a ``.pt`` (weights cast back to the
  network's float32).
- ``last.pt``: the same, plus the full training state at the end of an epoch (raw weights, optimizer, LR schedule,
  grad scaler, EMA, sampler position, RNG states, metric history, best value so far), so a killed run resumes as if
  never interrupted. Written after everything else of its epoch: its existence marks the epoch as finished.
"""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from segkit.artifacts import atomic
from segkit.artifacts.freshness import Unit, fingerprints
from segkit.artifacts.probs import ProbStore
from segkit.config.schema import ModelConfig
from segkit.errors import DataError, SegkitError
from segkit.models import build_model

FORMAT = "segkit-checkpoint"
VERSION = 2  # 2: the RNG states as tensors and numbers, so the whole file loads with weights_only=True

def weights_payload(
    state_dict: dict[str, torch.Tensor],
    model_cfg: dict,
    mode: str,
    classes: list[str],
    channels: int,
    pad_to: int,
    epoch: int,
    scores: Optional[dict[str, float]] = None,
    volumetric: Optional[dict[str, Any]] = None,
) -> dict[str, Any]:
    """``volumetric``: a 3D network's facts for prediction: ``dims`` 3, ``patch_size`` (its sliding window) and the
    working ``spacing`` it was trained at."""
    return {
        "format": FORMAT,
        "version": VERSION,
        "model": {k: v.detach().cpu() for k, v in state_dict.items()},
        "model_cfg": model_cfg,
        "mode": mode,
        "classes": list(classes),
        "channels": channels,
        "pad_to": pad_to,
        "epoch": epoch,
        "scores": dict(scores or {}),
        **(volumetric or {}),
    }


def dims_in(meta: dict) -> int:
    """The spatial axes of a checkpoint's network: 3 for a 3D one (its ``volumetric`` facts recorded), else 2."""
    return int(meta.get("dims", 2))


def save(path: Path, payload: dict) -> None:
    atomic.save_torch(path, payload)


TRUST_ENV = "SEGKIT_TRUST_CHECKPOINTS"  # =1: also load pickled checkpoints (older segkit); they can run code


def trusted() -> bool:
    return os.environ.get(TRUST_ENV, "").strip().lower() in ("1", "true", "yes")


def load(path: Path) -> dict:
    """Read a checkpoint written by segkit: tensors, numbers, strings, lists and dicts only, loaded with
    ``weights_only=True``, so a file from anyone else cannot run code here. A file that needs more (a pickled
    object: a checkpoint of an older segkit, or a hostile one) is refused, unless ``SEGKIT_TRUST_CHECKPOINTS=1``
    says its owner trusts it."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=not trusted())
    except pickle.UnpicklingError as err:
        raise SegkitError(
            f"{path}: refused: the file holds pickled objects, and unpickling can run any code (torch: "
            f"{str(err).splitlines()[0][:160]}). A checkpoint of segkit before 2026-12-01 looks like this: delete "
            f"its fold folder to retrain, or, only for a file you trust, set {TRUST_ENV}=1") from None
    except Exception as err:
        raise SegkitError(f"{path}: unreadable checkpoint ({str(err).splitlines()[0][:200]}); delete it to retrain")
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise SegkitError(f"{path}: not a segkit checkpoint")
    return obj


def average(payloads: list[dict], names: Optional[list[str]] = None) -> dict:
    """The uniform mean of several checkpoints' weights as one payload (the first's facts, ``averaged`` listing
    ``names``). Floating tensors (weights and BatchNorm statistics alike) are averaged in float32 and cast back;
    integer buffers (BatchNorm's batch counters) are taken from the first. Every checkpoint must be of one
    network: a mean of two architectures' weights is no network at all."""
    names = names or [str(i) for i in range(len(payloads))]
    if not payloads:
        raise SegkitError("checkpoint average: no checkpoints to average")
    first = payloads[0]
    for name, p in zip(names[1:], payloads[1:]):
        if p["model_cfg"] != first["model_cfg"] or p["model"].keys() != first["model"].keys():
            raise SegkitError(f"checkpoint average: {name} is another network than {names[0]} "
                              f"({p['model_cfg'].get('arch')} on {p['model_cfg'].get('encoder')} vs "
                              f"{first['model_cfg'].get('arch')} on {first['model_cfg'].get('encoder')}); "
                              f"only checkpoints of one architecture average")
    mean = {}
    for k, v in first["model"].items():
        if v.is_floating_point():
            total = sum(p["model"][k].float() for p in payloads)
            mean[k] = (total / len(payloads)).to(v.dtype)
        else:
            mean[k] = v.clone()
    return {**{k: v for k, v in first.items() if k != "train_state"}, "model": mean, "averaged": list(names)}


WEIGHTS_SUFFIX = ".safetensors"
WEIGHT_DTYPES = {"fp16": torch.float16, "fp32": torch.float32}
# Kept float32 in any case: small, and a variance of 1e-6 is not an fp16 number.
FLOAT32_ALWAYS = ("running_mean", "running_var")


def save_weights(checkpoint: Path, path: Path, dtype: str = "fp16") -> None:
    """The weights of ``checkpoint`` (and what rebuilds its network) as a safetensors file in ``dtype``."""
    from safetensors.torch import save_file  # here: only packaging writes these

    ckpt = load(checkpoint)
    cast = WEIGHT_DTYPES[dtype]
    tensors, seen = {}, set()
    for k, v in ckpt["model"].items():
        v = (v.to(cast) if v.is_floating_point() and not k.endswith(FLOAT32_ALWAYS) else v).contiguous()
        # safetensors refuses two names of one storage (MONAI's DynUNet lists a layer under two names): each
        # name gets its own copy, and loading fills the one layer from either
        tensors[k] = v.clone() if v.data_ptr() in seen else v
        seen.add(v.data_ptr())
    meta = {k: v for k, v in ckpt.items() if k not in ("model", "train_state")}
    with atomic.atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"segkit": json.dumps({**meta, "weights": dtype})})


def _load_weights(path: Path) -> dict:
    from safetensors import safe_open  # here: only a bundle's weights are safetensors

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {}).get("segkit", "null"))
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as err:  # noqa: BLE001 - safetensors' own errors, said as a segkit one
        raise SegkitError(f"{path}: unreadable weights ({str(err).splitlines()[0][:200]})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise SegkitError(f"{path}: not segkit weights (no segkit metadata)")
    return {**meta, "model": tensors}


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, dict]:
    """Rebuild the network of a checkpoint or weights file (no pretrained download: every weight comes from the
    file) and load its weights. Returns (model in eval mode on ``device``, the file's metadata without the weights)."""
    path = Path(path)
    ckpt = _load_weights(path) if path.suffix == WEIGHTS_SUFFIX else load(path)
    model_cfg = ModelConfig.model_validate(ckpt["model_cfg"])
    model = build_model(model_cfg, ckpt["channels"], ckpt["mode"], len(ckpt["classes"]), pretrained=False)
    model.load_state_dict(ckpt["model"])
    meta = {k: v for k, v in ckpt.items() if k not in ("model", "train_state")}
    return model.to(device).eval(), meta


def fold_checkpoints(cfg, model: str, fold: int) -> list[Path]:
    """The checkpoints one fold predicts with: its best (or last) and, if asked, its cycle snapshots in order."""
    paths = cfg.layout.fold(model, fold)
    if not ProbStore.is_complete(paths.oof):
        raise DataError(f"{paths.dir}: fold {fold} of model {model!r} has not finished training (no complete oof/); "
                        f"run `segkit train` first")
    main = paths.checkpoint(cfg.predict.checkpoint)
    if not main.exists():
        raise DataError(f"{main}: missing; set predict.checkpoint to a kept checkpoint (train.keep) or retrain")
    found = [main] + (paths.snapshots() if cfg.predict.snapshots else [])
    if cfg.predict.snapshot_merge == "weights" and len(found) > 1:
        return [weights_mean(found, paths.snapshot_average, paths.snapshot_average_stamp)]
    return found


def weights_mean(sources: list[Path], path: Path, stamp: Path) -> Path:
    """``path``: the mean of the weights of ``sources`` (one network instead of several), a unit of work of its own
    (``stamp``): made again whenever the sources are not those it was made from. BatchNorm statistics are averaged
    too: there is no data here to measure them again, and a fold's checkpoints share one training run."""
    unit = Unit(f"{path.parent}: the mean of {len(sources)} checkpoints' weights", stamp, [path],
                {"sources": fingerprints(sources)})
    if not unit.fresh():
        with unit.writing():
            save(path, average([load(p) for p in sources], [p.name for p in sources]))
    return path
