"""A bundle's install.py: which packages it installs and which it leaves to the notebook, and what it refuses
(a wheel for another Python or platform, a missing wheel, a package nobody has, a GPU torch was not built for)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from segkit.bundle import install
from segkit.bundle.install import InstallError, arch_supported, choose, in_range, version_key, wheel_fits
from segkit.bundle.targets import needs, parse_freeze

HERE = f"cp{sys.version_info[0]}{sys.version_info[1]}"


def package(name: str, version: str = "1.0", wheel: bool = True, supported: str | None = None,
            modules: tuple = ()) -> dict:
    return {"name": name, "version": version, "supported": supported, "carried": wheel, "modules": list(modules),
            "wheel": f"{name.replace('-', '_')}-{version}-py3-none-any.whl" if wheel else None}


def bundle_with(tmp_path: Path, packages: list[dict], files: list[str] = ()) -> tuple[Path, dict]:
    (tmp_path / "wheels").mkdir(parents=True, exist_ok=True)
    for p in packages:
        if p["wheel"]:
            (tmp_path / "wheels" / p["wheel"]).write_bytes(b"")
    for name in files:
        (tmp_path / "wheels" / name).write_bytes(b"")
    spec = {"bundle": "b1", "target": "any", "python": "3.12", "wheels": True, "packages": packages}
    return tmp_path, spec


def test_versions_ranges_and_wheel_tags():
    assert version_key("2.11.0+cu126") == (2, 11, 0) and version_key("0.50.0rc1") == (0, 50, 0)
    assert in_range("2.0.8", ">=2.0,<3") and not in_range("1.4.18", ">=2.0,<3") and in_range("5", None)
    assert in_range("0.6.0", "==0.6.0") and not in_range("0.6.1", "==0.6.0")
    assert wheel_fits("timm-1.0.31-py3-none-any.whl") is None
    assert wheel_fits(f"numpy-2.4.6-{HERE}-{HERE}-manylinux_2_27_x86_64.manylinux_2_28_x86_64.whl") is None
    assert "made for Python cp27" in wheel_fits("numpy-1.0-cp27-cp27mu-manylinux1_x86_64.whl")
    assert "platform win_amd64" in wheel_fits(f"numpy-2.4.6-{HERE}-{HERE}-win_amd64.whl")
    assert wheel_fits("pydantic_core-2.50.4-cp39-abi3-manylinux_2_17_x86_64.whl") is None  # abi3: any later one
    assert parse_freeze("torch @ file:///w/torch-2.10.0%2Bcu128-cp312-cp312-linux_x86_64.whl\nnumpy==2.2.6\nfoo\n") \
        == {"torch": "2.10.0+cu128", "numpy": "2.2.6", "foo": None}


def test_a_gpu_runs_binaries_of_its_major_version_and_older_ptx():
    archs = ["sm_75", "sm_80", "sm_86", "sm_90", "compute_90"]
    assert arch_supported((7, 5), archs) and arch_supported((8, 9), archs)  # an L4 runs sm_86 code
    assert arch_supported((12, 0), archs)  # PTX of compute_90 compiles for a newer GPU
    assert not arch_supported((6, 0), archs)  # a P100 with a torch built from sm_75 on
    assert not arch_supported((6, 0), ["sm_75", "sm_80"])


def test_the_notebooks_copies_serve_and_what_it_lacks_is_installed(tmp_path):
    bundle, spec = bundle_with(tmp_path, [
        package("torch", "2.13.0", wheel=False), package("numpy", "2.4.6", supported=">=2.0,<3"),
        package("albumentations", "2.0.8", supported=">=2.0,<3"), package("segmentation-models-pytorch", "0.6.0"),
        package("opencv-python-headless", "5.0.0.93", supported=">=4.9,<6")])
    env = {"torch": ("2.11.0+cu126", "/nb"), "numpy": ("1.26.4", "/nb"), "albumentations": ("1.4.18", "/nb"),
           "opencv-python": ("4.11.0.86", "/nb")}
    todo, kept = choose(spec, env, bundle)
    # albumentations 1 is outside the range: the bundle's goes beside it; numpy and torch stay the notebook's
    # whatever their versions; opencv-python provides cv2 in a version that serves
    assert [p["name"] for p in todo] == ["albumentations", "segmentation-models-pytorch"]
    assert [p["name"] for p in kept] == ["torch", "numpy", "opencv-python-headless"]


def test_what_cannot_be_had_is_refused_naming_it(tmp_path):
    bundle, spec = bundle_with(tmp_path, [package("torch", "2.13.0", wheel=False, modules=("torch",))])
    with pytest.raises(InstallError, match="torch is not installed here, and a bundle never carries it"):
        choose(spec, {}, bundle)
    bundle, spec = bundle_with(tmp_path, [package("timm", "1.0.31", wheel=False, supported=">=1.0,<2")])
    with pytest.raises(InstallError, match="holds timm 0.9.16; segkit needs timm >=1.0,<2.*--target any"):
        choose(spec, {"timm": ("0.9.16", "/nb")}, bundle)
    bundle, spec = bundle_with(tmp_path, [package("timm", "1.0.31")])
    (bundle / "wheels" / spec["packages"][0]["wheel"]).unlink()
    with pytest.raises(InstallError, match=r"wheels/timm-1.0.31-py3-none-any.whl: missing from the bundle"):
        choose(spec, {}, bundle)
    odd = package("numpy", "1.0")
    odd["wheel"] = "numpy-1.0-cp27-cp27mu-manylinux1_x86_64.whl"
    bundle, spec = bundle_with(tmp_path / "b2", [odd])
    with pytest.raises(InstallError, match=r"numpy-1.0-cp27.*made for Python cp27.*--python-version"):
        choose(spec, {}, bundle)


def test_a_copy_that_does_not_import_is_replaced_when_the_bundle_carries_one(tmp_path, monkeypatch):
    bundle, spec = bundle_with(tmp_path, [package("scipy", "1.17.1", modules=("scipy",)),
                                          package("numba", "0.68.1", wheel=False, modules=("numba",))])
    env = {"scipy": ("1.17.1", "/nb"), "numba": ("0.68.1", "/nb")}
    monkeypatch.setattr(install, "failed_imports", lambda modules, path=None: {"scipy": "ImportError: numpy ABI"})
    todo, kept = choose(spec, env, bundle)
    assert [p["name"] for p in todo] == ["scipy"] and [p["name"] for p in kept] == ["numba"]
    monkeypatch.setattr(install, "failed_imports", lambda modules, path=None: {"numba": "ImportError: llvmlite"})
    with pytest.raises(InstallError, match="numba: `import numba` fails here"):
        choose(spec, env, bundle)


def test_install_py_exits_2_before_any_work_naming_the_missing_wheel(tmp_path):
    bundle, spec = bundle_with(tmp_path, [package("not-a-real-package", "1.0")])
    (bundle / "wheels" / spec["packages"][0]["wheel"]).unlink()
    (bundle / "packages.json").write_text(json.dumps(spec))
    (bundle / "bundle.json").write_text("{}")
    shutil.copy2(install.__file__, bundle / "install.py")
    done = subprocess.run([sys.executable, str(bundle / "install.py"), "--site", str(tmp_path / "site")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "not_a_real_package-1.0-py3-none-any.whl: missing" in done.stderr
    assert not (tmp_path / "site").exists()


def test_targets_carry_what_the_notebook_lacks_never_torch():
    for target in ("kaggle-gpu", "kaggle-cpu", "any"):
        packages = {p.name: p for p in needs("eager", target, "3.12")}
        assert not packages["torch"].carried and not packages["torchvision"].carried
        assert packages["segmentation-models-pytorch"].carried  # no Kaggle notebook has smp
        assert packages["timm"].modules == ["timm"] and packages["opencv-python-headless"].modules == ["cv2"]
    gpu = {p.name for p in needs("eager", "kaggle-gpu", "3.12") if p.carried}
    assert gpu == {"segmentation-models-pytorch"}
    everything = {p.name for p in needs("eager", "any", "3.12") if p.carried}
    assert {"timm", "numpy", "albumentations", "albucore", "scipy", "pydantic-core"} <= everything
    assert "onnxruntime" in {p.name for p in needs("onnx", "kaggle-gpu", "3.12") if p.carried}


def test_the_guard_stops_on_a_changed_package_and_on_a_gpu_that_is_not_there(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sys, "path", list(sys.path))  # the guard puts the site first on it
    real = install.environment
    monkeypatch.setattr(install, "environment", lambda exclude=None: {"timm": ("1.0.20", "/nb")})
    with pytest.raises(InstallError, match=r"packages changed since install.py chose.*timm 1.0.31 -> 1.0.20"):
        install.guard(tmp_path, {"kept": {"timm": "1.0.31"}}, "cpu")
    monkeypatch.setattr(install, "environment", real)
    line = install.guard(tmp_path, {"kept": {}}, "cpu")
    assert line.startswith("python ") and "torch " in line and line in capsys.readouterr().out
    import torch

    if not torch.cuda.is_available():
        with pytest.raises(InstallError, match=r"CUDA is expected \(--device cuda\) but torch .* sees no GPU"):
            install.guard(tmp_path, {"kept": {}}, "cuda")
