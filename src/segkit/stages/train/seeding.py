"""Seeds and random states: everything random in a run derives from ``cfg.seed``, so two runs with
``deterministic: true`` match bit for bit on a CPU, and a resumed run continues the same random streams.

Each epoch's randomness (batch order, augmentations, dropout) is seeded from (seed, fold, epoch, rank) at the start
of the epoch, so an epoch after a resume draws exactly what it would have drawn without the interruption. The
generator states are checkpointed too, for anything that draws between epochs.
"""

from __future__ import annotations

import os
import random

import numpy as np
import torch


def derive_seed(*keys: int) -> int:
    """A well-mixed 31-bit seed from integers (SeedSequence: nearby keys give unrelated streams)."""
    return int(np.random.SeedSequence([int(k) & 0xFFFFFFFF for k in keys]).generate_state(1)[0] & 0x7FFFFFFF)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def set_deterministic(on: bool) -> None:
    """Deterministic kernels where torch has them (warn, don't fail, where it has none); cuDNN autotuning only
    when determinism is not asked for."""
    if on:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(on, warn_only=True)
    torch.backends.cudnn.deterministic = on
    torch.backends.cudnn.benchmark = not on


def rng_state() -> dict:
    """Every generator's state as tensors and plain numbers, so a checkpoint holding it loads with
    ``torch.load(weights_only=True)``: no pickled object, hence no code, in the file."""
    version, words, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": {"version": int(version), "state": torch.tensor(words, dtype=torch.int64),
                        "gauss": None if gauss is None else float(gauss)},
             "numpy": {"kind": str(kind), "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
                       "pos": int(pos), "has_gauss": int(has_gauss), "cached": float(cached)},
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    py, npy = state["python"], state["numpy"]
    if isinstance(py, dict):
        py = (py["version"], tuple(int(w) for w in py["state"].tolist()), py["gauss"])
    if isinstance(npy, dict):
        npy = (npy["kind"], npy["keys"].numpy().astype(np.uint32), npy["pos"], npy["has_gauss"], npy["cached"])
    random.setstate(py)  # tuples: a checkpoint of version 1, loaded with SEGKIT_TRUST_CHECKPOINTS=1
    np.random.set_state(npy)
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def worker_init(worker_id: int) -> None:
    """DataLoader worker seeding: torch gives each worker base_seed + id; numpy, random and the dataset's
    albumentations pipeline (which keeps its own generators) follow it, so workers never repeat each other."""
    seed = torch.initial_seed() % 2**31
    random.seed(seed)
    np.random.seed(seed)
    info = torch.utils.data.get_worker_info()
    if info is None:
        return
    for i, ds in enumerate(getattr(info.dataset, "datasets", [info.dataset])):  # ConcatDataset: each part
        transform = getattr(ds, "transform", None)
        if transform is not None:
            transform.set_random_seed(derive_seed(seed, i))
