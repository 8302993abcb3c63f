"""Where tensors run and in which precision: one place for device choice, autocast and the fp16 grad scaler, so
training and prediction make the same choices.

- ``resolve_device("auto")``: the GPU of this process's local rank under torchrun, else the first GPU, else the CPU.
- ``autocast(device, "bf16")``: mixed precision on any device. bf16 needs no loss scaling and pays on CPUs with
  AVX-512 BF16 (1.5-1.7x for ResNets here, BENCHMARKS.md); fp16 is for older GPUs and needs ``grad_scaler``.
- ``resolve_amp("auto", device)``: the precision that is fastest where the process runs, see its docstring.
- ``depthwise_float32_when_training(model)``: the one exception to bf16 on the CPU, see its docstring.
"""

from __future__ import annotations

import contextlib
import functools
import os
from typing import ContextManager, Optional, Union

import torch
from torch import nn

from segkit.errors import ConfigError

AMP_DTYPES: dict[str, Optional[torch.dtype]] = {"none": None, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
                                                "fp16": torch.float16, "float16": torch.float16}


def resolve_device(name: str = "auto", key: str = "device") -> torch.device:
    """``auto`` | ``cpu`` | ``cuda`` | ``cuda:N`` | ``mps`` -> a device that exists on this machine."""
    name = (name or "auto").lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)) % torch.cuda.device_count())
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"{key}: unknown device {name!r} (auto, cpu, cuda, cuda:N)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"{key}: {name!r} asked for but no CUDA GPU is available")
        if device.index is None:
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)) % torch.cuda.device_count())
        elif device.index >= torch.cuda.device_count():
            raise ConfigError(f"{key}: {name!r} but only {torch.cuda.device_count()} GPU(s)")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"{key}: 'mps' asked for but not available")
    return device


@functools.cache
def cpu_has_native_bf16() -> bool:
    """True if this CPU computes bf16 in hardware (AVX-512 BF16 or AMX on x86, the BF16 extension on Arm)."""
    checks = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    if any(check is not None and check() for check in checks):
        return True
    try:  # other architectures, or a torch without those probes: the kernel's feature flags
        with open("/proc/cpuinfo") as f:
            flags = {flag for line in f if line.startswith(("flags", "Features")) for flag in line.split()}
    except OSError:
        return False
    return bool(flags & {"avx512_bf16", "amx_bf16", "bf16"})


_ANNOUNCED: set[tuple[str, str, str]] = set()


def is_auto(amp: Union[None, str, torch.dtype]) -> bool:
    """Whether ``amp`` leaves the precision to ``resolve_amp`` (which needs the device to decide)."""
    return isinstance(amp, str) and amp.lower() == "auto"


def resolve_amp(amp: Union[None, str, torch.dtype], device: torch.device, key: str = "train.amp"):
    """The precision to run in: ``auto`` becomes bf16 on a GPU that has it (else fp16), bf16 on a CPU that computes
    bf16 in hardware, and ``none`` (float32) on any other CPU; the other values are returned as they are.

    On a CPU without native bf16, oneDNN emulates it and a bf16 training step is about 2x *slower* than float32
    (a Lite0 Unet at 96 px: 19 against 41 images/s, ``bench/cpu_step.py``), so one recipe cannot name one
    precision for every machine it runs on. The choice is printed once per process and key."""
    if not is_auto(amp):
        amp_dtype(amp, key)  # validates
        return amp
    if device.type == "cuda":
        chosen = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        why = "GPU"
    elif device.type == "cpu":
        native = cpu_has_native_bf16()
        chosen = "bf16" if native else "none"
        why = "CPU with native bf16" if native else "CPU without native bf16"
    else:
        chosen, why = "none", device.type
    if (key, device.type, chosen) not in _ANNOUNCED:
        _ANNOUNCED.add((key, device.type, chosen))
        print(f"{key} auto: {'float32' if chosen == 'none' else chosen} ({why})", flush=True)
    return chosen


def amp_dtype(amp: Union[None, str, torch.dtype], key: str = "train.amp") -> Optional[torch.dtype]:
    """``none`` / None -> None; ``bf16`` / ``fp16`` (any case, or the long names, or a torch dtype) -> the
    autocast dtype."""
    if amp is None or isinstance(amp, torch.dtype):
        return amp
    try:
        return AMP_DTYPES[amp.lower()]
    except (KeyError, AttributeError):
        raise ConfigError(f"{key}: unknown precision {amp!r} (none, bf16, fp16; auto where a device is known)") \
            from None


def autocast(device: torch.device, amp: str) -> ContextManager:
    """Autocast context for ``amp`` (``none`` -> a no-op; ``auto`` as ``resolve_amp`` chooses for ``device``)."""
    dtype = amp_dtype(resolve_amp(amp, device))
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def _depthwise_forward(self: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    if not torch.is_grad_enabled():  # bf16 is the faster forward: keep it for validation and prediction
        return type(self).forward(self, x)
    with torch.autocast(device_type=x.device.type, enabled=False):
        return type(self).forward(self, x.float())


def depthwise_float32_when_training(model: nn.Module) -> int:
    """Run the depthwise convolutions of ``model`` in float32 whenever gradients are recorded; returns how many.

    On the CPU, oneDNN's bf16 backward of a depthwise convolution is 4-7x slower than its float32 backward in
    channels_last (a 1152-channel 5x5 at 3x3 px: 40 ms against 9 ms; a stride-2 input gradient: 67 ms against
    2 ms), while every other layer gains from bf16. EfficientNet and MobileNet encoders are mostly depthwise: for
    the Lite0 Unet of the TGS recipe this makes a training step about 1.5x faster (``bench/cpu_step.py``).
    Under ``no_grad`` the layer keeps bf16, which is the faster forward. Weights and state_dict keys are unchanged.
    """
    n = 0
    for module in model.modules():
        if isinstance(module, nn.Conv2d) and module.groups > 1 and module.groups == module.in_channels:
            # an instance attribute, so deepcopy (EMA) rebinds it to the copy and checkpoints never see it
            module.forward = _depthwise_forward.__get__(module)
            n += 1
    return n


def memory_format(dims: int) -> torch.memory_format:
    """The channels-last layout of a ``dims``-D network's tensors (channels_last_3d for volumes)."""
    return torch.channels_last_3d if dims == 3 else torch.channels_last


def training_layout(model: nn.Module, channels_last: bool, amp: str, device: torch.device, dims: int = 2
                    ) -> nn.Module:
    """``model`` laid out as a fold trains it (and as a speed probe must time it): channels_last memory when asked,
    and on a CPU under bf16 its depthwise convolutions in float32 (``depthwise_float32_when_training``)."""
    if channels_last:
        model = model.to(memory_format=memory_format(dims))
    if device.type == "cpu" and amp_dtype(amp) == torch.bfloat16:
        depthwise_float32_when_training(model)
    return model


def grad_scaler(device: torch.device, amp: str) -> torch.amp.GradScaler:
    """A loss scaler that is active only for fp16 (bf16 has fp32's exponent range and needs none)."""
    return torch.amp.GradScaler(device.type, enabled=resolve_amp(amp, device) == "fp16")


def synchronize(device: torch.device) -> None:
    """Wait for a GPU's queued work (what a timing must see end); nothing on other devices."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def to_device(batch: dict, device: torch.device, channels_last: bool = False, non_blocking: bool = False) -> dict:
    """Move the tensors of a collated batch; images optionally to channels_last memory format."""
    out = {}
    for k, v in batch.items():
        if isinstance(v, torch.Tensor):
            v = v.to(device, non_blocking=non_blocking)
            if channels_last and k == "image" and v.ndim in (4, 5):
                v = v.contiguous(memory_format=memory_format(v.ndim - 2))
        elif k == "objects":  # a detector's targets: per image, a dict of tensors
            v = [{name: t.to(device, non_blocking=non_blocking) for name, t in o.items()} for o in v]
        out[k] = v
    return out
