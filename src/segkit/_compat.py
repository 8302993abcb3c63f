"""Import-time fixes for the CPU-only torch wheel next to a CUDA torchvision build.

The registry's torchvision is built against CUDA torch. Next to the CPU torch wheel its compiled extension fails to
load (silently), and torchvision's fake-kernel registrations then raise ``operator torchvision::nms does not exist``,
which breaks ``import timm`` and ``import segmentation_models_pytorch``. Segmentation never calls the detection ops,
so declaring their schemas is enough. Where the extension loads (a matching build) this module changes nothing.

It must run before torchvision is first imported; ``segkit/__init__.py`` imports it first.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

# albumentations checks PyPI for a newer version on every import (2 s, and no network here).
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

_TORCHVISION_OPS = ("nms", "qnms")


def _torchvision_extension() -> Path | None:
    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(list(spec.submodule_search_locations)[0])
    found = sorted(folder.glob("_C*.so")) + sorted(folder.glob("_C*.pyd"))
    return found[0] if found else None


def patch_torchvision() -> str:
    """Make ``import torchvision`` work; returns what was done ('native', 'stub', 'absent' or 'already')."""
    if "torchvision" in sys.modules:
        return "already"
    if importlib.util.find_spec("torch") is None:
        return "absent"
    extension = _torchvision_extension()
    if extension is None:
        return "absent"
    import torch  # here: only when torch is installed at all (checked just above)

    try:
        torch.ops.load_library(str(extension))
        return "native"
    except (OSError, RuntimeError):
        pass
    # The extension could not load: declare the two schemas torchvision registers fake kernels for.
    lib = torch.library.Library("torchvision", "DEF")
    for op in _TORCHVISION_OPS:
        lib.define(f"{op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    # Keep the library object alive for the life of the process (dropping it unregisters the ops).
    globals()["_torchvision_stub_library"] = lib
    return "stub"


TORCHVISION_STATUS = patch_torchvision()
