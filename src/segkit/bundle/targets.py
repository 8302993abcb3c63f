"""The notebooks a bundle is made for, and what it must carry into one (``segkit package --target``).

A target is the list of distributions a kind of notebook holds, kept as data in ``targets/<name>.txt`` (``pip
freeze`` lines; refresh one from a real notebook with ``python -m segkit.bundle.targets NAME FREEZE.txt``, where
FREEZE.txt is what ``!pip freeze`` printed there). ``any`` holds nothing. What inference needs is ``INFER_PACKAGES``
and everything they require (their metadata, evaluated for the target's Python); the bundle carries the wheels of
those the target lacks or holds outside ``SUPPORTED``, at the versions installed here (what the experiment ran
with), and never torch or torchvision (a notebook's CUDA build is not replaceable by a wheel of ours). Which copies
serve is decided again in the notebook by the bundle's ``install.py`` against what is really there.
"""

from __future__ import annotations

import importlib.metadata as metadata
import re
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional
from urllib.parse import unquote

from packaging.markers import default_environment
from packaging.requirements import Requirement

from segkit.bundle.install import NOT_CARRIED, in_range, norm
from segkit.errors import ConfigError

FOLDER = Path(__file__).with_name("targets")
TARGETS = ("kaggle-gpu", "kaggle-cpu", "any")

# What inference imports (segkit.bundle.infer and what it reaches), by distribution. Not torchvision: timm and smp
# ask for it in their metadata but import it only for what segkit does not use.
INFER_PACKAGES = ["torch", "timm", "segmentation-models-pytorch", "safetensors", "numpy", "scipy",
                  "pandas", "opencv-python-headless", "albumentations", "scikit-image", "pillow", "pydantic",
                  "PyYAML", "tqdm", "numba", "lightgbm", "nibabel"]
RUNTIME_PACKAGES = {"eager": [], "torchscript": [], "onnx": ["onnxruntime"]}
# what a bundle with 3D networks imports besides (segkit.models.volumetric; einops: SwinUNETR)
VOLUMETRIC_PACKAGES = ["monai", "einops"]

# The versions of the packages inference imports that segkit works with: a notebook's copy outside its range is
# shadowed by the bundle's. Floors: the release lines whose APIs segkit calls (albumentations 2's transforms,
# pydantic 2's models, timm 1's `tu-` encoders, numpy 2's ABI that the compiled wheels here are built against);
# ceilings: the next major release, whose breaks segkit has not met.
SUPPORTED = {
    "torch": ">=2.1", "torchvision": ">=0.16", "numpy": ">=2.0,<3", "timm": ">=1.0,<2",
    "segmentation-models-pytorch": ">=0.5,<0.7", "safetensors": ">=0.4,<1", "scipy": ">=1.11,<2",
    "pandas": ">=2.1,<4", "opencv-python-headless": ">=4.9,<6", "albumentations": ">=2.0,<3",
    "scikit-image": ">=0.22,<1", "pillow": ">=10", "pydantic": ">=2.5,<3", "pyyaml": ">=6,<7", "tqdm": ">=4.60,<5",
    "numba": ">=0.59,<1", "lightgbm": ">=4.0,<5", "nibabel": ">=5,<6", "onnxruntime": ">=1.17,<2",
    "monai": ">=1.3,<2", "einops": ">=0.6,<1",
}


@dataclass
class Package:
    name: str  # normalised distribution name
    version: str  # installed here: the one the bundle's wheel has
    supported: Optional[str]  # the range a notebook's copy must be in to serve
    carried: bool  # the bundle carries its wheel
    modules: list[str]  # top-level modules to import-check a notebook's copy by (the packages inference imports)
    wheel: Optional[str] = None  # its file in wheels/, once downloaded

    def spec(self) -> dict:
        return asdict(self)


def read_target(name: str) -> dict[str, Optional[str]]:
    """name -> version of what the target notebook holds (``any``: nothing)."""
    if name == "any":
        return {}
    if name not in TARGETS:
        raise ConfigError(f"--target: {name!r} is not one of {', '.join(TARGETS)}")
    return parse_freeze((FOLDER / f"{name}.txt").read_text())


def parse_freeze(text: str) -> dict[str, Optional[str]]:
    """``pip freeze`` lines (``name==version``, ``name @ URL-of-a-wheel``, or a bare name) -> name -> version."""
    held: dict[str, Optional[str]] = {}
    for line in text.splitlines():
        line = line.split("#")[0].strip()
        match = re.match(r"([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:===?\s*([^\s;]+))?", line)
        if not match or line.startswith("-"):
            continue
        version = match.group(2)
        if version is None and " @ " in line and line.endswith(".whl"):
            version = unquote(line.rsplit("/", 1)[-1]).split("-")[1]  # name-version-python-abi-platform.whl
        held[norm(match.group(1))] = version
    return held


def modules_of(dist: metadata.Distribution) -> list[str]:
    """The public top-level modules a distribution installs (what importing it means)."""
    text = dist.read_text("top_level.txt")
    names = text.split() if text else [str(f).split("/")[0].removesuffix(".py") for f in dist.files or []
                                        if "/" in str(f) and str(f).endswith("__init__.py")]
    return sorted({n for n in names if n and not n.startswith("_") and ".dist-info" not in n})


def needs(runtime: str, target: str, python_version: Optional[str] = None, volumetric: bool = False) -> list[Package]:
    """Every distribution inference needs, the roots first, each marked carried where the target lacks it or holds
    it outside ``SUPPORTED``; the requirements of a package the target serves are the target's business.
    ``volumetric``: the bundle holds 3D networks (MONAI's)."""
    holds = read_target(target)
    marker_env = default_environment()
    if python_version:
        marker_env.update(python_version=python_version, python_full_version=f"{python_version}.0")
    roots = [norm(n) for n in INFER_PACKAGES + RUNTIME_PACKAGES[runtime] + (VOLUMETRIC_PACKAGES if volumetric else [])]
    out: dict[str, Package] = {}
    todo = list(roots)
    while todo:
        name = todo.pop(0)
        if name in out:
            continue
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            raise ConfigError(f"package: {name} is not installed here, and inference needs it") from None
        supported = SUPPORTED.get(name)
        serves = name in holds and (not holds[name] or in_range(holds[name], supported))
        carried = name not in NOT_CARRIED and not serves  # numpy too, where the target lacks it
        out[name] = Package(name, dist.version, supported, carried, modules_of(dist) if name in roots else [])
        if carried:
            for line in dist.requires or []:
                req = Requirement(line)
                if req.marker is None or req.marker.evaluate({**marker_env, "extra": ""}):
                    todo.append(norm(req.name))
    return list(out.values())


def refresh(name: str, freeze_file: Path) -> Path:
    """Write target ``name``'s list from a notebook's ``pip freeze`` output."""
    held = parse_freeze(Path(freeze_file).read_text())
    path = FOLDER / f"{name}.txt"
    header = (f"# {name}: the distributions this notebook holds (`pip freeze` there), read by "
              f"`segkit package --target {name}`.\n# Refreshed with: python -m segkit.bundle.targets {name} "
              f"FREEZE.txt\n")
    path.write_text(header + "".join(f"{n}=={v}\n" if v else f"{n}\n" for n, v in sorted(held.items())))
    return path


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python -m segkit.bundle.targets NAME FREEZE.txt   (FREEZE.txt: a notebook's `pip freeze`)")
    print(refresh(sys.argv[1], Path(sys.argv[2])))


__all__ = ["INFER_PACKAGES", "Package", "RUNTIME_PACKAGES", "SUPPORTED", "TARGETS", "VOLUMETRIC_PACKAGES", "needs",
           "read_target", "refresh"]
