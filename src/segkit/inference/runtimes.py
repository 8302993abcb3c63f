"""A fold's network as the exports of ``segkit export`` hold it, and the runtimes that run one.

An exported network is self-contained: ``ProbabilityGraph`` wraps the trained network with the input normalisation
of the config (``data.normalize``) before it and its activation after it, so it takes images *as segkit reads them*
(float32 (N, C, H, W) in [0, 1]; H and W multiples of the network stride ``pad_to``) and gives probabilities
(sigmoid per class; softmax over background + classes for multiclass). A notebook that knows nothing of segkit can
run it with the runtime alone.

Runtimes, by name (``RUNTIMES``), each a loader ``(path, device) -> (callable on a torch batch, meta)``:

- ``eager``: the checkpoint in PyTorch, as ``segkit predict`` runs it (no loader: ``Predictor``'s own);
- ``torchscript``: ``torch.jit`` of the graph (no segkit, timm or smp needed to load it);
- ``onnx``: ONNX Runtime, the CUDA execution provider on a GPU where it is installed, else the CPU one.

``data.normalize: image`` (each image's own statistics) is computed by the graph over its input, padding included,
where the pipeline takes it over the image alone: that one kind is not bit-equal to the pipeline near the border
(``segkit export`` reports the difference).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
from torch import nn

from segkit.artifacts import atomic
from segkit.data.normalize import IMAGENET_MEAN, IMAGENET_STD
from segkit.errors import ConfigError, DataError
from segkit.models import split_output
from segkit.registry import Registry

# What an export's file ends with, per format; ``meta.json`` beside each export holds its model's meta.
SUFFIX = {"torchscript": ".ts", "onnx": ".onnx"}
FORMATS = tuple(SUFFIX)


class ProbabilityGraph(nn.Module):
    """images as read -> probabilities: normalise, the network, its activation (in float32)."""

    def __init__(self, net: nn.Module, data_cfg, mode: str):
        super().__init__()
        self.net = net
        self.kind = data_cfg.normalize
        self.softmax = mode == "multiclass"
        c = data_cfg.input_channels
        mean, std = {"imagenet": (IMAGENET_MEAN.get(c), IMAGENET_STD.get(c)),
                     "dataset": (data_cfg.mean, data_cfg.std)}.get(self.kind, ([0.0] * c, [1.0] * c))
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def normalise(self, image: torch.Tensor) -> torch.Tensor:
        """What the network sees of ``image``: the config's normalisation, as ``segkit.data.normalize`` does it."""
        if self.kind == "image":
            mean = image.mean(dim=(2, 3), keepdim=True)
            std = (image - mean).pow(2).mean(dim=(2, 3), keepdim=True).sqrt().clamp_min(1e-6)
            return (image - mean) / std
        if self.kind == "none":
            return image
        return (image - self.mean) / self.std

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        out, _ = split_output(self.net(self.normalise(image)))
        return torch.softmax(out, dim=1) if self.softmax else torch.sigmoid(out)


# ------------------------------------------------------------------------------------------------------ writing


def export_torchscript(graph: nn.Module, example: torch.Tensor, path: Path) -> dict:
    """Trace ``graph`` (its ops do not depend on the input's size, so the trace takes any batch and size)."""
    with torch.inference_mode(False), torch.no_grad():
        traced = torch.jit.trace(graph, example, check_trace=False)
    traced.save(str(path))
    return {"dynamic": True}


def export_onnx(graph: nn.Module, example: torch.Tensor, path: Path) -> dict:
    """ONNX with a dynamic batch, height and width; where the architecture does not allow that, the example's
    size alone (``dynamic: false``, said in the returned record and by ``segkit export``)."""
    names = {"input_names": ["images"], "output_names": ["probabilities"]}
    axes = {0: "batch", **{d: name for d, name in zip(range(2, example.ndim),
                                                      ("height", "width") if example.ndim == 4 else
                                                      ("depth", "height", "width"))}}
    try:
        # The TorchScript-based exporter: dynamic axes in a second, where torch.export's symbolic shapes take
        # minutes on an EfficientNet (bench/export.py).
        torch.onnx.export(graph, (example,), str(path), dynamo=False, opset_version=17,
                          dynamic_axes={"images": axes, "probabilities": axes}, **names)
        return {"dynamic": True}
    except Exception as err:  # noqa: BLE001 - any exporter failure falls back to the fixed-size export
        first = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
    torch.onnx.export(graph, (example,), str(path), dynamo=True, **names)
    return {"dynamic": False, "shape": list(example.shape), "why": first}


EXPORTERS: dict[str, Callable[[nn.Module, torch.Tensor, Path], dict]] = {
    "torchscript": export_torchscript, "onnx": export_onnx}


def meta_path(export: Path) -> Path:
    return export.with_name(export.name + ".json")


def write_meta(export: Path, meta: dict, record: dict) -> None:
    """``export``'s record beside it: what a runtime needs of the network besides the file (the checkpoint's meta,
    less its scores) and how it was exported and checked."""
    kept = {k: meta[k] for k in ("model_cfg", "mode", "classes", "channels", "pad_to", "epoch", "dims", "patch_size",
                                 "spacing") if k in meta}
    atomic.write_json(meta_path(export), {**kept, "export": record})


def read_meta(export: Path) -> dict:
    path = meta_path(export)
    if not path.exists():
        raise DataError(f"{path}: missing; the export {export.name} is incomplete (run `segkit export` again)")
    return json.loads(path.read_text())


# ------------------------------------------------------------------------------------------------------ loading

RUNTIMES: Registry[Optional[Callable]] = Registry("runtime")
RUNTIMES.register("eager")(None)


@RUNTIMES.register("torchscript")
def load_torchscript(path: Path, device: torch.device):
    module = torch.jit.load(str(path), map_location=device).eval()
    return module, read_meta(path)


class OnnxNetwork:
    """An ONNX Runtime session as a callable on torch batches."""

    def __init__(self, path: Path, device: torch.device, meta: dict):
        try:
            import onnxruntime as ort  # here: only the onnx runtime needs it (a 20 MB import)
        except ImportError:
            raise ConfigError("runtime onnx: onnxruntime is not installed (pip install onnxruntime)") from None
        options = ort.SessionOptions()
        # As many threads as torch uses: the runtimes are compared on the same cores.
        options.intra_op_num_threads = torch.get_num_threads()
        providers = ["CPUExecutionProvider"]
        if device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        self.session = ort.InferenceSession(str(path), options, providers=providers)
        self.input = self.session.get_inputs()[0].name
        self.shape = meta["export"].get("shape")
        self.device = device

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.shape is not None and list(x.shape[1:]) != self.shape[1:]:
            raise ConfigError(f"runtime onnx: this export takes {'x'.join(map(str, self.shape[2:]))} inputs only, "
                              f"got {'x'.join(map(str, x.shape[2:]))} (its architecture did not export with dynamic "
                              f"sizes)")
        out = self.session.run(None, {self.input: np.ascontiguousarray(x.detach().cpu().numpy(), np.float32)})[0]
        return torch.from_numpy(out).to(x.device)


@RUNTIMES.register("onnx")
def load_onnx(path: Path, device: torch.device):
    meta = read_meta(path)
    return OnnxNetwork(path, device, meta), meta


def loader(runtime: str) -> Optional[Callable]:
    """The loader of ``runtime`` (None: the checkpoint in PyTorch)."""
    return RUNTIMES.get(runtime, key="runtime")


__all__ = ["EXPORTERS", "FORMATS", "OnnxNetwork", "ProbabilityGraph", "RUNTIMES", "SUFFIX", "loader", "meta_path",
           "read_meta", "write_meta"]
