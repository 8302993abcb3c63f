"""Code-competition submissions: ``segkit export`` (TorchScript / ONNX checked against PyTorch), ``segkit package``
(an offline bundle) and the bundle's inference, which must write ``segkit submit``'s file byte for byte, fit its
TTA to a time budget, and refuse bad input without leaving anything half-written."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import CONFIGS

from segkit.bundle.infer import BudgetError, parse_budget, plan_views
from segkit.cli import main
from segkit.errors import ConfigError

TINY = ("models=[{name: tiny, arch: Unet, encoder: tu-resnet10t, params: {encoder_depth: 3, decoder_channels: "
        "[16, 8, 4]}}, {name: tiny2, arch: Unet, encoder: tu-resnet10t, params: {encoder_depth: 3, "
        "decoder_channels: [8, 8, 4]}}]")


@pytest.fixture(scope="module")
def experiment(demo_root, tmp_path_factory):
    """A finished tiny experiment (two models, two folds, a LightGBM stack chosen) and its submission."""
    tmp = tmp_path_factory.mktemp("package")
    args = ["--config", str(CONFIGS / "demo.yaml"), f"data.root={demo_root}", f"paths.runs={tmp / 'runs'}",
            f"paths.folds={tmp / 'folds'}", f"paths.submissions={tmp / 'subs'}", TINY, "device=cpu",
            "folds.n_splits=2", "train.epochs=12", "train.batch_size=4", "train.lr=0.01",
            "train.progress=false", "train.keep=[best]", "predict.tta=flips", "ensemble.methods=[mean, stack]",
            "ensemble.choose=stack", "ensemble.stack_rounds=5", "tune.morph_radii=[1]"]
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(["run", *args]) == 0
    finally:
        torch.set_num_threads(threads)
    return {"args": args, "tmp": tmp, "root": demo_root, "submission": tmp / "subs" / "demo.csv",
            "test": demo_root / "test" / "images", "sample": demo_root / "sample_submission.csv"}


def infer(bundle: Path, experiment: dict, out: Path, *extra: str) -> int:
    from segkit.bundle.infer import main as offline

    return offline(["--test", str(experiment["test"]), "--sample", str(experiment["sample"]), "--out", str(out),
                    "--device", "cpu", *extra], bundle=bundle)


def test_exports_match_pytorch_and_an_export_that_fails_names_the_network(experiment, monkeypatch, capsys):
    assert main(["export", *experiment["args"]]) == 0
    export = experiment["tmp"] / "runs" / "demo" / "export"
    listing = json.loads((export / "export.json").read_text())
    assert sorted(listing["models"]) == ["tiny", "tiny2"] and listing["formats"] == ["torchscript", "onnx"]
    for fmt, suffix in (("torchscript", ".ts"), ("onnx", ".onnx")):
        meta = json.loads((export / "tiny" / "fold1" / f"best{suffix}.json").read_text())
        assert meta["export"]["dynamic"] is True and meta["classes"] == ["object"]
        assert 0 <= meta["export"]["max_abs_diff"] <= 1e-3
        assert len(meta["export"]["checked_on"]) == 2  # the images' size and a larger one, another batch size
    assert main(["export", *experiment["args"]]) == 0
    assert "keeping it" in capsys.readouterr().out
    (export / "tiny2" / "fold0" / "best.onnx").unlink()  # an export gone: made again
    assert main(["export", *experiment["args"]]) == 0
    assert "keeping it" not in capsys.readouterr().out and (export / "tiny2" / "fold0" / "best.onnx").exists()

    from segkit.inference import runtimes
    def broken(graph, example, path):
        raise RuntimeError("Exporting the operator 'aten::weird' to ONNX opset version 17 is not supported")

    monkeypatch.setitem(runtimes.EXPORTERS, "onnx", broken)
    assert main(["export", *experiment["args"], "--format", "onnx", "--tolerance", "0.01"]) == 2
    err = capsys.readouterr().err
    assert "models[tiny] fold 0 (best.pt): onnx export failed" in err and "aten::weird" in err


def test_the_bundle_writes_segkit_submits_file_byte_for_byte(experiment, tmp_path, capsys):
    bundle = tmp_path / "bundle"
    assert main(["package", *experiment["args"], "--out", str(bundle), "--no-wheels", "--weights", "fp32"]) == 0
    manifest = json.loads((bundle / "bundle.json").read_text())
    assert [m["name"] for m in manifest["models"]] and manifest["runtime"] == "eager"
    for name in ("config.yaml", "tune.json", "ensemble/choice.json", "ensemble/state.json", "infer.py", "install.py",
                 "notebook.ipynb", "packages.json"):
        assert (bundle / name).is_file(), name
    packages = {p["name"]: p for p in json.loads((bundle / "packages.json").read_text())["packages"]}
    assert packages["torch"]["carried"] is False and packages["segmentation-models-pytorch"]["supported"]
    assert sorted(manifest["files"]) == sorted(f for m in manifest["models"] for fs in m["folds"].values() for f in fs)
    assert all(f.endswith(".safetensors") for f in manifest["files"])
    out = tmp_path / "submission.csv"
    assert infer(bundle, experiment, out) == 0
    assert out.read_bytes() == experiment["submission"].read_bytes()
    assert not (tmp_path / ".segkit_work").exists()  # the work folder goes once the file is in
    # the plan under a generous budget keeps the whole TTA, and so the same bytes
    again = tmp_path / "again.csv"
    assert infer(bundle, experiment, again, "--time-budget", "2h") == 0
    assert "4 of 4 TTA views" in capsys.readouterr().out
    assert again.read_bytes() == out.read_bytes()
    # two devices, one process each, each writing its share of the images: the same file
    split = tmp_path / "split.csv"
    assert infer(bundle, experiment, split, "--devices", "cpu,cpu") == 0
    assert "on cpu, cpu" in capsys.readouterr().out and split.read_bytes() == out.read_bytes()


def test_fp16_weights_are_half_the_size_checked_at_packaging_and_a_changed_file_is_refused(experiment, tmp_path,
                                                                                          capsys):
    bundle = tmp_path / "bundle"
    assert main(["package", *experiment["args"], "--out", str(bundle), "--no-wheels"]) == 0
    assert "float16 weights within" in capsys.readouterr().out
    manifest = json.loads((bundle / "bundle.json").read_text())
    assert manifest["info"]["weights"] == "fp16" and set(manifest["info"]["weights_check"]) == {"tiny", "tiny2"}
    assert all(0 <= c["max_abs_diff"] <= 0.02 for c in manifest["info"]["weights_check"].values())
    run = experiment["tmp"] / "runs" / "demo"
    for rel in manifest["files"]:
        model, fold, name = rel.split("/")[1:]
        checkpoint = run / model / fold / name.replace(".safetensors", ".pt")
        assert (bundle / rel).stat().st_size <= 0.55 * checkpoint.stat().st_size, rel
    out = tmp_path / "submission.csv"
    assert infer(bundle, experiment, out) == 0
    want, got = experiment["submission"].read_text().splitlines(), out.read_text().splitlines()
    assert len(got) == len(want) and sum(a == b for a, b in zip(got, want)) >= 0.9 * len(want)
    # a model file that is not the one packaged: refused before any prediction
    first = bundle / sorted(manifest["files"])[0]
    data = bytearray(first.read_bytes())
    data[-1] ^= 0xFF
    first.write_bytes(bytes(data))
    out.unlink()
    assert infer(bundle, experiment, out) == 2
    err = capsys.readouterr().err
    assert str(first) in err and "sha256" in err and not out.exists()


@pytest.mark.parametrize("runtime", ["onnx", "torchscript"])
def test_a_bundle_of_exports_writes_a_valid_submission_close_to_segkit_submits(experiment, tmp_path, runtime):
    assert main(["export", *experiment["args"]]) == 0
    bundle = tmp_path / "bundle"
    assert main(["package", *experiment["args"], "--out", str(bundle), "--no-wheels", "--models", runtime]) == 0
    assert list((bundle / "models" / "tiny" / "fold0").glob("*.pt")) == []  # the exports only
    out = tmp_path / "submission.csv"
    assert infer(bundle, experiment, out) == 0
    want = experiment["submission"].read_text().splitlines()
    got = out.read_text().splitlines()
    assert len(got) == len(want) and got[0] == want[0]
    # float32 exports against the pipeline's bf16 / float32 PyTorch: most rows agree exactly
    assert sum(a == b for a, b in zip(got, want)) >= 0.5 * len(want)


def test_time_budget_plans_drop_tta_views_first_then_the_lighter_models():
    seconds = {"heavy": 0.1, "light": 0.1}
    full = {"heavy": 8, "light": 8}
    assert plan_views(["heavy", "light"], seconds, 100, None, full, True) == {"heavy": 8, "light": 8}
    assert plan_views(["heavy", "light"], seconds, 100, 160, full, True) == {"heavy": 8, "light": 8}
    assert plan_views(["heavy", "light"], seconds, 100, 100, full, True) == {"heavy": 8, "light": 2}
    assert plan_views(["heavy", "light"], seconds, 100, 50, full, True) == {"heavy": 4, "light": 1}
    assert plan_views(["heavy", "light"], seconds, 100, 15, full, True) == {"heavy": 1, "light": 0}
    with pytest.raises(BudgetError, match="cannot hold one TTA view of heavy, light"):
        plan_views(["heavy", "light"], seconds, 100, 15, full, False)  # a stack needs both models
    # a model with fewer views (a 3D network's flips beside a 2D one's d4) starts from its own
    assert plan_views(["heavy", "light"], seconds, 100, None, {"heavy": 8, "light": 4}, True) == {"heavy": 8,
                                                                                                 "light": 4}
    assert parse_budget("1h30m") == 5400 and parse_budget("90m") == 5400 and parse_budget("45s") == 45
    with pytest.raises(ConfigError, match="--time-budget"):
        parse_budget("soon")


def test_past_the_budget_the_rest_runs_at_the_least_that_still_submits():
    from types import SimpleNamespace

    from segkit.bundle.infer import Offline

    seconds = {"a": 0.1, "b": 0.1, "c": 0.1}
    for droppable, want in ((True, {"b": 0, "c": 0}), (False, {"b": 1, "c": 1})):
        views = {"a": 8, "b": 8, "c": 8}
        Offline.replan(SimpleNamespace(droppable=droppable, full={"b": 8, "c": 8}), ["b", "c"], views, seconds, 100,
                       left=-5.0)
        assert views == {"a": 8, **want}
    views = {"a": 8, "b": 8, "c": 8}
    Offline.replan(SimpleNamespace(droppable=True, full={"b": 8, "c": 8}), ["b", "c"], views, seconds, 100, left=100.0)
    assert views == {"a": 8, "b": 7, "c": 1}  # 85 s for b and c: c loses its views first, then b one


def test_dry_run_prints_the_plan_and_bad_input_leaves_nothing(experiment, tmp_path, capsys):
    bundle = tmp_path / "bundle"
    assert main(["package", *experiment["args"], "--out", str(bundle), "--no-wheels"]) == 0
    out = tmp_path / "submission.csv"
    assert infer(bundle, experiment, out, "--dry-run", "--images", "18000", "--time-budget", "9h") == 0
    printed = capsys.readouterr().out
    assert "for 18000 images" in printed and "tiny:" in printed and not out.exists()
    # a budget too small for one view of both models of a stack
    assert infer(bundle, experiment, out, "--time-budget", "0.001s") == 2
    assert "cannot hold one TTA view" in capsys.readouterr().err and not out.exists()
    # a sample id without an image
    test = tmp_path / "test"
    shutil.copytree(experiment["test"], test)
    first = sorted(test.iterdir())[0]
    first.unlink()
    from segkit.bundle.infer import main as offline

    args = ["--sample", str(experiment["sample"]), "--out", str(out), "--device", "cpu"]
    assert offline(["--test", str(test), *args], bundle=bundle) == 2
    assert f"id {first.stem!r} has no image in {test}" in capsys.readouterr().err and not out.exists()
    # an image of another channel count (5 bands; gray and RGB files the reader converts)
    import numpy as np

    np.save(first.with_suffix(".npy"), np.zeros((32, 32, 5), np.float32))
    assert offline(["--test", str(test), *args], bundle=bundle) == 2
    assert first.stem in capsys.readouterr().err and not out.exists()


def test_package_refuses_an_incomplete_experiment_and_leaves_no_bundle(experiment, tmp_path, capsys):
    run = experiment["tmp"] / "runs" / "demo"
    for gone, said in ((run / "ensemble" / "state.json", "state.json: missing"), (run / "tune.json", "tune.json"),
                       (run / "tiny2" / "fold1" / "best.pt", "tiny2/fold1/best.pt: missing")):
        gone.rename(gone.with_suffix(".away"))
        try:
            assert main(["package", *experiment["args"], "--out", str(tmp_path / "b"), "--no-wheels"]) == 2
            assert said in capsys.readouterr().err
        finally:
            gone.with_suffix(".away").rename(gone)
    assert not (tmp_path / "b").exists() and list(tmp_path.iterdir()) == []
    (tmp_path / "mine").mkdir()
    assert main(["package", *experiment["args"], "--out", str(tmp_path / "mine"), "--no-wheels"]) == 2
    assert "is not a segkit bundle" in capsys.readouterr().err


# The stand-in notebook's own versions where they are not this machine's: a CUDA torch and torchvision of another
# release, and a timm older than segkit supports (the bundle's goes beside it).
OTHER_VERSIONS = {"torch": "2.11.0+cu126", "torchvision": "0.26.0+cu126", "timm": "0.9.16"}
# What it lacks, as a notebook lacks smp: installed from the bundle's wheels.
LACKS = {"segmentation-models-pytorch", "albumentations", "albucore", "stringzilla", "simsimd"}


def notebook_python(tmp_path: Path) -> tuple[Path, Path]:
    """A stand-in for a GPU notebook's Python: a fresh venv holding what inference needs but ``LACKS`` (this
    machine's files, linked), some at ``OTHER_VERSIONS`` as their metadata says. Returns (its python, its
    site-packages)."""
    import importlib.metadata as metadata

    from segkit.bundle.targets import needs

    venv = tmp_path / "notebook"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    site = venv / "lib" / f"python{sys.version_info[0]}.{sys.version_info[1]}" / "site-packages"
    held = ["torch", "torchvision", "numpy", "pillow", "filelock", "fsspec", "jinja2", "markupsafe", "mpmath",
            "networkx", "sympy", "typing-extensions", "setuptools"]
    held += [p.name for p in needs("eager", "any") if p.name not in LACKS and p.name not in held]
    for old in site.glob("setuptools*"):  # the venv's own, older than the one torch asks for: this machine's instead
        shutil.rmtree(old)
    for name in held:
        dist = metadata.distribution(name)
        root = Path(str(dist.locate_file("")))
        for top in sorted({str(f).split("/")[0] for f in dist.files if not str(f).startswith("..")}):
            if top.endswith(".dist-info"):
                info = site / top
                shutil.copytree(root / top, info)
                if name in OTHER_VERSIONS:
                    version = OTHER_VERSIONS[name]
                    text = (info / "METADATA").read_text().replace(f"Version: {dist.version}", f"Version: {version}")
                    (info / "METADATA").write_text(re.sub(r"Requires-Dist: torch \(==[^)]*\)",
                                                          "Requires-Dist: torch (==2.11.0)", text))
                    info.rename(site / f"{name}-{version}.dist-info")
            elif not (site / top).exists():
                (site / top).symlink_to(root / top)
    return venv / "bin" / "python", site


def listing(folder: Path) -> dict[str, float]:
    """Every entry under ``folder`` (links not followed) with its modification time."""
    return {str(p.relative_to(folder)): p.lstat().st_mtime for p in folder.rglob("*")
            if "__pycache__" not in p.parts}


def readme_cells() -> list[str]:
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = text.split("<!-- notebook -->")[1].split("<!-- /notebook -->")[0]
    return [line for line in block.strip().strip("`").removeprefix("bash").strip().splitlines() if line]


@pytest.mark.slow
def test_the_readme_notebook_cells_install_beside_another_torch_and_write_the_same_submission(experiment, tmp_path):
    from segkit.stages.package import notebook_cells

    bundle = tmp_path / "bundle"
    assert main(["package", *experiment["args"], "--out", str(bundle), "--target", "any", "--weights", "fp32"]) == 0
    cells = readme_cells()
    assert cells == notebook_cells("/kaggle/input/BUNDLE")  # the README shows the cells the notebook holds
    notebook = json.loads((bundle / "notebook.ipynb").read_text())
    assert [c["source"] for c in notebook["cells"]] == notebook_cells("/kaggle/input/demo")
    wheels = sorted(p.name for p in (bundle / "wheels").glob("*.whl"))
    assert any(w.startswith("segkit-") for w in wheels) and any(w.startswith("timm-") for w in wheels)
    assert not any(w.startswith(("torch-", "torchvision-")) for w in wheels)

    python, site = notebook_python(tmp_path)
    before = listing(site)
    # No pip configuration and no index: the bundle's wheels alone; `python` is the notebook's.
    env = {"PATH": f"{python.parent}{os.pathsep}{os.environ['PATH']}", "HOME": str(tmp_path), "TMPDIR": str(tmp_path),
           "PIP_CONFIG_FILE": os.devnull, "PIP_NO_INDEX": "1", "HF_HUB_OFFLINE": "1",
           "NO_ALBUMENTATIONS_UPDATE": "1"}
    out = tmp_path / "submission.csv"
    subs = {"/kaggle/input/BUNDLE": str(bundle), "/kaggle/input/COMPETITION/test": str(experiment["test"]),
            "/kaggle/input/COMPETITION/sample_submission.csv": str(experiment["sample"]),
            "--out submission.csv": f"--out {out}", "--time-budget 8h": "--time-budget 8h --device cpu"}
    printed = []
    for cell in cells:
        for old, new in subs.items():
            cell = cell.replace(old, new)
        done = subprocess.run(cell.removeprefix("!"), shell=True, cwd=tmp_path, env=env, capture_output=True,
                              text=True, timeout=900)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
        printed.append(done.stdout)
    assert "package(s) into" in printed[0] and "torch 2.13.0" in printed[0]  # the guard's versions line
    installed = printed[0].split("package(s) into", 1)[1].splitlines()[0]
    assert "segmentation-models-pytorch" in installed and "albumentations" in installed  # what it lacks
    assert "timm 1.0.31" in installed and "scipy" not in installed  # beside its old timm; its own scipy serves
    assert "package(s) into" not in printed[1]  # installed once: infer.py finds it done
    assert out.read_bytes() == experiment["submission"].read_bytes()
    # nothing of the notebook changed: its torch still says it is its own, not one file added, removed or touched
    assert listing(site) == before
    version = subprocess.run([str(python), "-c", "import importlib.metadata as m; print(m.version('torch'))"],
                             env=env, capture_output=True, text=True)
    assert version.stdout.strip() == "2.11.0+cu126"
    # the segkit that ran is the bundle's wheel, beside the notebook; inference reaches no stage
    probe = ("import sys, runpy; runpy.run_path(sys.argv[1] + '/install.py')['ensure'](sys.argv[1], device='cpu'); "
             "import segkit, segkit.bundle.infer; print(segkit.__file__); print([m for m in sys.modules "
             "if m.startswith(('segkit.stages', 'segkit.ablate', 'segkit.pipeline'))])")
    done = subprocess.run([str(python), "-c", probe, str(bundle)], env=env, capture_output=True, text=True)
    where, training = done.stdout.strip().splitlines()[-2:]
    assert where.startswith(str(tmp_path / ".segkit-site-")) and training == "[]", done.stderr[-2000:]
    # segkit's wheel asks for what inference imports only: `pip install segkit` resolves from the wheels alone
    resolve = subprocess.run([str(python), "-m", "pip", "install", "--dry-run", "--no-index", "--find-links",
                              str(bundle / "wheels"), "segkit"], cwd=tmp_path, env=env, capture_output=True,
                             text=True, timeout=600)
    would = [line for line in resolve.stdout.splitlines() if line.startswith("Would install")]
    assert resolve.returncode == 0 and would and "segkit-" in would[0], resolve.stdout[-2000:] + resolve.stderr[-2000:]
    assert " torch-" not in would[0] and " numpy-" not in would[0]  # the notebook's copies serve
