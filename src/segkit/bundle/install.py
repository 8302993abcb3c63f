"""A bundle's ``install.py``: what inference needs, installed beside the notebook's own packages, never over them.

``segkit package`` copies this file into the bundle; it runs before segkit is installed, so it imports the standard
library only. ``python install.py`` (a notebook's first cell) and ``infer.py`` (when that cell was skipped) call
``ensure``:

1. **read what is there**: every distribution the running Python holds, by name and version, and a snapshot of it
   (the constraints of what must not change);
2. **choose**: each package of the bundle's ``packages.json`` (what inference imports and what those import) that
   the running Python lacks, or holds at a version outside the range segkit supports, or holds but cannot import
   (a compiled package built against another numpy), is installed from the bundle's wheels; the rest is the
   notebook's and is used as it is. torch, torchvision and numpy are never installed over a copy that is there;
3. **install into a folder of its own** (``--site``; default ``/kaggle/working/.segkit-site`` in a Kaggle notebook,
   else a folder in the temporary directory named after the bundle), with ``pip --no-deps --target``, so that not
   one file of the notebook's environment changes; ``infer.py`` puts that folder first on ``sys.path``. The folder
   is moved into place complete, with a record of what it holds: a second call finds it and installs nothing;
4. **guard**: the versions printed; an error if anything the notebook held changed version, if torch is not the
   notebook's own, if CUDA is expected (``--device cuda``, or an NVIDIA driver present) but unavailable, or if a
   GPU's architecture is not one this torch was built for (a tiny convolution on each GPU proves it runs).

Every refusal (a wheel for another Python or platform, a missing wheel, a package the bundle does not carry and the
notebook lacks, an unsupported GPU) is an ``InstallError`` naming it: exit 2 before any prediction.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata as metadata
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path
from typing import Optional

PACKAGES = "packages.json"  # in the bundle: what inference needs, and which wheel carries each
MANIFEST = "bundle.json"
WHEELS = "wheels"
RECORD = "segkit-install.json"  # in the site: what was installed, and the environment before
NOT_CARRIED = ("torch", "torchvision")  # a bundle never carries them: a notebook's CUDA build is not replaceable
NEVER = (*NOT_CARRIED, "numpy")  # the notebook's own: never installed over a copy that is there
# Distributions that provide the same modules as a package's name (a notebook's opencv may be any of these).
PROVIDES = {"opencv-python-headless": ("opencv-python", "opencv-contrib-python", "opencv-contrib-python-headless")}


class InstallError(Exception):
    """What stops the installation, said so that the notebook's user can act on it."""


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def version_key(version: str) -> tuple[int, ...]:
    """The leading release numbers of a version ('2.11.0+cu126' -> (2, 11, 0); '0.50.0rc1' -> (0, 50, 0))."""
    numbers = []
    for part in version.split("+")[0].split("."):
        digits = re.match(r"\d+", part)
        if not digits:
            break
        numbers.append(int(digits.group()))
        if digits.group() != part:
            break
    return tuple(numbers)


def in_range(version: str, spec: Optional[str]) -> bool:
    """Whether ``version`` meets ``spec``: comma-separated ``>=X``, ``<X`` or ``==X`` bounds (None: any version)."""
    if not spec:
        return True
    have = version_key(version)
    for bound in spec.split(","):
        op, value = re.fullmatch(r"\s*(>=|<|==)\s*(\S+)\s*", bound).groups()
        want = version_key(value)
        if op == ">=" and have < want or op == "<" and have >= want or op == "==" and have != want:
            return False
    return True


# ------------------------------------------------------------------------------------------- what is there


def environment(exclude: Optional[Path] = None) -> dict[str, tuple[str, str]]:
    """name -> (version, where) of every distribution importable here, the folder ``exclude`` left out (the first
    of a name on the path wins, as for imports)."""
    found: dict[str, tuple[str, str]] = {}
    skip = str(Path(exclude).resolve()) if exclude else None
    for dist in metadata.distributions():
        where = str(Path(str(dist.locate_file(""))).resolve())
        name = dist.metadata["Name"]
        if not name or (skip and where.startswith(skip)):
            continue
        found.setdefault(norm(name), (dist.version, where))
    return found


def held_as(env: dict, name: str) -> Optional[str]:
    """The name under which ``env`` holds package ``name`` (itself, or a distribution providing its modules)."""
    return next((norm(c) for c in (name, *PROVIDES.get(name, ())) if norm(c) in env), None)


def held(env: dict, name: str) -> Optional[tuple[str, str]]:
    """(version, where) of package ``name`` in ``env``, None where it is missing."""
    found = held_as(env, name)
    return env[found] if found else None


def failed_imports(modules: list[str]) -> dict[str, str]:
    """module -> the last line of its error, for the modules that do not import in a fresh interpreter."""
    probe = "\n".join([
        "import importlib, json, sys",
        "bad = {}",
        "for m in sys.argv[1:]:",
        "    try:",
        "        importlib.import_module(m)",
        "    except Exception as err:",
        "        bad[m] = (type(err).__name__ + ': ' + str(err)).splitlines()[0][:300]",
        "print(json.dumps(bad))"])
    done = subprocess.run([sys.executable, "-c", probe, *modules], capture_output=True, text=True)
    if done.returncode:
        return {m: done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "crashed" for m in modules}
    return json.loads(done.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------------------------- wheels


def wheel_fits(filename: str) -> Optional[str]:
    """Why the wheel ``filename`` cannot install into this Python (None: it can)."""
    parts = filename[:-len(".whl")].split("-")
    python, abi, platforms = parts[-3], parts[-2], parts[-1]
    here = f"cp{sys.version_info[0]}{sys.version_info[1]}"
    if not any(tag in ("py3", "py2", here) or tag == f"py{sys.version_info[0]}{sys.version_info[1]}"
               or (abi == "abi3" and tag.startswith("cp3") and int(tag[3:]) <= sys.version_info[1])
               for tag in python.split(".")):
        return f"made for Python {python}, this is {sys.version_info[0]}.{sys.version_info[1]} ({here})"
    machine = sysconfig.get_platform().split("-")[-1].replace("-", "_")
    if platforms != "any" and not any(p.endswith(machine) and (p.startswith(("manylinux", "musllinux", "linux"))
                                                              == sys.platform.startswith("linux"))
                                      for p in platforms.split(".")):
        return f"made for the platform {platforms}, this is {sysconfig.get_platform()}"
    return None


def default_site(bundle: Path) -> Path:
    """Where the packages go: /kaggle/working in a Kaggle notebook (its input is read-only), else the temporary
    directory, in a folder named after the bundle's manifest (a new bundle gets a new folder)."""
    digest = hashlib.sha256((Path(bundle) / MANIFEST).read_bytes()).hexdigest()[:12]
    kaggle = Path("/kaggle/working")
    base = kaggle if kaggle.is_dir() and os.access(kaggle, os.W_OK) else Path(tempfile.gettempdir())
    return base / f".segkit-site-{digest}"


def choose(spec: dict, env: dict, bundle: Path) -> tuple[list[dict], list[dict]]:
    """(packages to install from the wheels, packages the notebook's copies serve), refusing what cannot be had."""
    install, kept = [], []
    for p in spec["packages"]:
        have = held(env, p["name"])
        if p["name"] in NEVER or (have and in_range(have[0], p.get("supported"))):
            if have:
                kept.append(p)
                continue
            if p["name"] in NEVER and not p.get("wheel"):
                if not p.get("modules"):  # required by a package's metadata, imported by nothing inference runs
                    continue
                raise InstallError(f"{p['name']} is not installed here, and a bundle never carries it (it belongs to "
                                   f"the notebook): run this in a Python that has {p['name']}")
        if not p.get("wheel"):
            now = f"holds {p['name']} {have[0]}" if have else f"lacks {p['name']}"
            raise InstallError(f"this Python {now}; segkit needs {p['name']} {p.get('supported') or ''} and the "
                               f"bundle, made for target {spec.get('target')!r}, does not carry it: make it with "
                               f"`segkit package --target any`")
        install.append(p)
    # A copy that is there but does not import (a compiled package built against another numpy) is replaced too.
    modules = {m: p for p in kept for m in p.get("modules", [])}
    for module, err in failed_imports(sorted(modules)).items():
        p = modules[module]
        if p["name"] in NEVER or not p.get("wheel"):
            raise InstallError(f"{p['name']}: `import {module}` fails here ({err}), and the bundle carries no "
                               f"{p['name']} to use instead")
        if p in kept:
            kept.remove(p)
            install.append(p)
    for p in install:
        wheel = Path(bundle) / WHEELS / p["wheel"]
        if not wheel.is_file():
            raise InstallError(f"{wheel}: missing from the bundle (needed: {p['name']} {p['version']})")
        why = wheel_fits(wheel.name)
        if why:
            raise InstallError(f"{wheel}: {why}; make the bundle with `segkit package --python-version "
                               f"{sys.version_info[0]}.{sys.version_info[1]}` for this notebook")
    return install, kept


def pip_install(wheels: list[Path], site: Path) -> None:
    command = [sys.executable, "-m", "pip", "install", "--no-index", "--no-deps", "--target", str(site),
               "--disable-pip-version-check", "--no-warn-script-location", "--quiet", *map(str, wheels)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode:
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-6:])
        raise InstallError(f"pip install --target {site} failed:\n{tail}")


# -------------------------------------------------------------------------------------------------- guard


def cuda_expected(device: str) -> bool:
    if device.startswith("cuda"):
        return True
    return device == "auto" and (shutil.which("nvidia-smi") is not None or Path("/proc/driver/nvidia").exists())


def arch_supported(capability: tuple[int, int], archs: list[str]) -> bool:
    """Whether a GPU of ``capability`` runs a torch built for ``archs``: a binary of its major version and a minor
    at most its own (sm_80 runs on 8.6), or PTX of an older architecture that the driver compiles for it."""
    major, minor = capability
    for arch in archs:
        kind, _, number = arch.partition("_")
        number = re.sub(r"\D", "", number)
        if not number:
            continue
        a_major, a_minor = int(number[:-1]), int(number[-1])
        if kind == "sm" and a_major == major and a_minor <= minor:
            return True
        if kind == "compute" and (a_major, a_minor) <= (major, minor):
            return True
    return False


def changes(before: dict[str, str], site: Path) -> list[str]:
    """What of ``before`` (name -> version) the environment outside ``site`` no longer holds as it was."""
    env = environment(exclude=site)
    return [f"{name} {was} -> {env[name][0] if name in env else 'gone'}"
            for name, was in before.items() if name not in env or env[name][0] != was]


def guard(site: Path, record: dict, device: str) -> str:
    """Check the environment after installing (see the module's text); returns the versions line it printed. The
    packages the bundle chose by must be as they were when it chose (the notebook's other packages are its own
    business after the install: a later cell may add some)."""
    changed = changes(record["kept"], site)
    if changed:
        raise InstallError(f"the notebook's packages changed since install.py chose what to install: "
                           f"{', '.join(changed)}; delete {site} and run install.py again")
    if str(site) not in sys.path:
        sys.path.insert(0, str(site))
    import torch  # the notebook's: never one from the site

    if Path(torch.__file__).resolve().is_relative_to(Path(site).resolve()):
        raise InstallError(f"torch was imported from {site}, not from the notebook's environment")
    versions = {"python": sys.version.split()[0], "torch": torch.__version__}
    for name in ("torchvision", "numpy", "timm", "segmentation-models-pytorch", "segkit"):
        try:  # read, not imported: a package nothing imports at inference may not import at all
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "missing"
    line = ", ".join(f"{k} {v}" for k, v in versions.items())
    print(f"install: {line}", flush=True)
    if cuda_expected(device):
        if not torch.cuda.is_available():
            raise InstallError(f"CUDA is expected (--device {device}"
                               f"{', an NVIDIA driver is present' if device == 'auto' else ''}) but torch "
                               f"{torch.__version__} sees no GPU (torch.cuda.is_available() is False)")
        archs = torch.cuda.get_arch_list()
        for i in range(torch.cuda.device_count()):
            name, capability = torch.cuda.get_device_name(i), torch.cuda.get_device_capability(i)
            if not arch_supported(capability, archs):
                raise InstallError(f"GPU {i} ({name}, sm_{capability[0]}{capability[1]}) is not among the "
                                   f"architectures torch {torch.__version__} was built for ({' '.join(archs)})")
            try:
                x = torch.ones(1, 1, 8, 8, device=f"cuda:{i}")
                torch.nn.functional.conv2d(x, torch.ones(1, 1, 3, 3, device=f"cuda:{i}")).sum().item()
            except RuntimeError as err:
                raise InstallError(f"GPU {i} ({name}): a convolution fails: {str(err).splitlines()[0]}") from None
            print(f"install: GPU {i}: {name}, sm_{capability[0]}{capability[1]}: a convolution runs", flush=True)
    return line


# ------------------------------------------------------------------------------------------------- ensure


def ensure(bundle: Path, site: Optional[Path] = None, device: str = "auto") -> Path:
    """Install what inference lacks (once), check the environment, and put the site first on ``sys.path``."""
    bundle = Path(bundle).resolve()
    site = Path(site or os.environ.get("SEGKIT_SITE") or default_site(bundle)).resolve()
    spec_path = bundle / PACKAGES
    if not spec_path.is_file():
        raise InstallError(f"{spec_path}: missing; {bundle} is not a segkit bundle with wheels (`segkit package` "
                           f"without --no-wheels makes one)")
    spec = json.loads(spec_path.read_text())
    record_path = site / RECORD
    if record_path.is_file() and json.loads(record_path.read_text()).get("bundle") == spec.get("bundle"):
        record = json.loads(record_path.read_text())
    else:
        env = environment(exclude=site)
        install, kept = choose(spec, env, bundle)
        partial = site.with_name(site.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        if install:
            print(f"install: {len(install)} package(s) into {site}: "
                  f"{', '.join(p['name'] + ' ' + p['version'] for p in install)}", flush=True)
            pip_install([bundle / WHEELS / p["wheel"] for p in install], partial)
        # pip wrote into the folder alone: every package of the notebook is as it was (the constraints it kept)
        changed = changes({name: version for name, (version, _) in env.items()}, partial)
        if changed:
            raise InstallError(f"installing changed the notebook's packages: {', '.join(changed)}")
        # by the name the notebook holds each under (opencv-python for opencv-python-headless)
        kept_as = {name: env[name][0] for name in (held_as(env, p["name"]) for p in kept)}
        record = {"bundle": spec.get("bundle"), "installed": {p["name"]: p["version"] for p in install},
                  "kept": kept_as}
        (partial / RECORD).write_text(json.dumps(record, indent=1) + "\n")
        shutil.rmtree(site, ignore_errors=True)
        partial.rename(site)
        print(f"install: the notebook's own copies serve {len(kept)} package(s); nothing of it was changed",
              flush=True)
    guard(site, record, device)
    return site


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description="install what a segkit bundle's inference needs, offline")
    parser.add_argument("--site", default=None, help="folder to install into (default: see the module's text)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda: whether a GPU must be usable")
    args = parser.parse_args(argv)
    try:
        ensure(Path(__file__).resolve().parent, args.site and Path(args.site), args.device)
    except InstallError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
