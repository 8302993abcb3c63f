"""The README's "Extending segkit" recipes, followed literally: each recipe's module is copied from the README as it
is into a folder beside a config that holds the recipe's YAML, and a slice of the demo runs through it with the
`segkit` command. Also: the registry index lists every registry, and the README's index table is the code's."""

from __future__ import annotations

import ast
import importlib
import json
import re
import shutil
import sys

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import CONFIGS, REPO

from segkit.cli import main
from segkit.registry import INDEX, Registry

README = (REPO / "README.md").read_text()
TINY = {"name": "tiny", "arch": "Unet", "encoder": "tu-resnet10t", "encoder_weights": None,
        "params": {"encoder_depth": 3, "decoder_channels": [16, 8, 4]}}


def recipe(name: str) -> tuple[dict[str, str], dict]:
    """The recipe's modules ({file name: source}) and its YAML, as the README shows them."""
    block = re.search(rf"<!-- recipe: {name} -->\n(.*?)<!-- /recipe -->", README, re.S)
    assert block, f"README has no recipe {name!r}"
    modules = {}
    for code in re.findall(r"```python\n(.*?)```", block.group(1), re.S):
        first = code.splitlines()[0]
        assert first.startswith("# ") and first.endswith(".py"), first
        modules[first[2:]] = code
    (config,) = re.findall(r"```yaml\n(.*?)```", block.group(1), re.S)
    return modules, yaml.safe_load(config)


@pytest.fixture
def extension(demo_root, tmp_path):
    """Writes a recipe beside an experiment config; yields a function that gives the config's path. Every registry,
    the command registry and the imported modules are as they were after the test."""
    from segkit import commands

    registries = [getattr(importlib.import_module(e.where.split(":")[0]), e.where.split(":")[1]) for e in INDEX]
    saved = [(r, dict(r.items)) for r in registries if isinstance(r, Registry)]
    state = (list(commands.STAGES), list(commands.OTHERS), dict(commands.BY_NAME), dict(commands.ARTIFACTS))
    modules = set(sys.modules)

    def write(name: str, *settings: dict) -> str:
        sources, config = recipe(name)
        folder = tmp_path / "experiment"
        folder.mkdir(exist_ok=True)
        for file, code in sources.items():
            (folder / file).write_text(code)
        tree = {"base": str(CONFIGS / "demo.yaml"),
                "data": {"root": str(demo_root)},
                "paths": {"runs": str(tmp_path / "runs"), "folds": str(tmp_path / "folds"),
                          "submissions": str(tmp_path / "subs")},
                "models": [TINY], "device": "cpu", "folds": {"n_splits": 2},
                "train": {"epochs": 1, "batch_size": 4, "max_steps_per_epoch": 2, "progress": False,
                          "keep": ["best"]},
                "predict": {"tta": "hflip", "repredict_oof": False}, "tune": {"morph_radii": [1]},
                "ensemble": {"methods": ["mean"]}}
        for extra in (*settings, config):  # the recipe's own lines last: they are what is followed
            tree = _merge(tree, extra)
        path = folder / "experiment.yaml"
        path.write_text(yaml.safe_dump(tree))
        return str(path)

    yield write
    for registry, items in saved:
        registry._items.clear()
        registry._items.update(items)
    commands.STAGES[:], commands.OTHERS[:] = state[0], state[1]
    for target, old in ((commands.BY_NAME, state[2]), (commands.ARTIFACTS, state[3])):
        target.clear()
        target.update(old)
    for name in set(sys.modules) - modules:
        if name.startswith("my_"):
            del sys.modules[name]


def _merge(tree: dict, extra: dict) -> dict:
    out = dict(tree)
    for key, value in extra.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def test_a_loss(extension, tmp_path, capsys, one_torch_thread):
    config = extension("loss")
    assert main(["folds", "--config", config]) == 0
    calls = []
    from segkit.losses import LOSSES

    module = sys.modules["my_losses"]  # imported when the config loaded
    forward = module.LogCoshDice.forward
    module.LogCoshDice.forward = lambda self, logits, target: calls.append(1) or forward(self, logits, target)
    assert "log_cosh_dice" in LOSSES
    assert main(["train", "--fold", "0", "--config", config]) == 0
    assert calls  # the recipe's loss was computed on the training batches
    stamp = json.loads((tmp_path / "runs" / "demo" / "tiny" / "fold0" / "stamp.json").read_text())
    assert stamp["done"] and "log_cosh_dice" in json.dumps(stamp["inputs"])


def test_an_encoder(extension, tmp_path, capsys, one_torch_thread):
    config = extension("encoder")
    assert main(["run", "--model", "toy", "--fold", "0", "--config", config]) == 0
    assert (tmp_path / "runs" / "demo" / "toy" / "fold0" / "best.pt").exists()
    import torch

    from segkit.models.checkpoint import load_model

    model, meta = load_model(tmp_path / "runs" / "demo" / "toy" / "fold0" / "best.pt", torch.device("cpu"))
    keys = list(model.encoder.state_dict())
    # the recipe's network: one basic block a stage (resnet10t, the other tests' encoder, has a deep stem)
    assert any(".layer1.0." in k for k in keys) and not any(".layer1.1." in k for k in keys), keys[:5]
    assert not any("conv1.3" in k for k in keys) and meta["mode"] == "binary"


def test_an_ensemble_method(extension, tmp_path, capsys, one_torch_thread):
    second = dict(TINY, name="tiny2", params={"encoder_depth": 3, "decoder_channels": [8, 8, 4]})
    config = extension("ensemble", {"models": [TINY, second]})
    assert main(["run", "--config", config]) == 0
    choice = json.loads((tmp_path / "runs" / "demo" / "ensemble" / "choice.json").read_text())
    table = pd.read_csv(tmp_path / "runs" / "demo" / "ensemble" / "cv.csv")
    assert choice["method"] == "median" and {"mean", "median"} <= set(table["method"])
    assert (tmp_path / "subs" / "demo.csv").exists()
    from segkit.ensemble import is_subsettable

    assert is_subsettable("median")  # an offline time budget may drop a model under it


def test_a_post_processing_step(extension, tmp_path, capsys, one_torch_thread):
    config = extension("postprocess")
    assert main(["run", "--config", config]) == 0
    tuned = json.loads((tmp_path / "runs" / "demo" / "tune.json").read_text())
    assert "clear_border" in [s["step"] for s in tuned["steps"]]
    from segkit.postprocess.masks import ClassParams, postprocess

    probs = np.zeros((1, 12, 12), np.float32)
    probs[0, :3, :3] = 0.9  # touches the border
    probs[0, 5:8, 5:8] = 0.9
    masks = postprocess(probs, [ClassParams(morphology=(("clear_border", 0),))])
    assert masks[0, :3, :3].sum() == 0 and masks[0, 5:8, 5:8].all()


def test_a_data_source(extension, demo_root, tmp_path, capsys, one_torch_thread):
    root = tmp_path / "data"
    shutil.copytree(demo_root, root)
    from segkit.config import load_config
    from segkit.data import Competition

    plain = Competition(load_config(CONFIGS / "demo.yaml", [f"data.root={root}"]).data)
    (root / "train" / "masks_npy").mkdir()
    for image_id in plain.labelled_ids:
        np.save(root / "train" / "masks_npy" / f"{image_id}.npy", plain.read_mask(image_id))
    config = extension("source", {"data": {"root": str(root)}})
    assert main(["run", "--model", "tiny", "--fold", "0", "--config", config]) == 0
    assert (tmp_path / "runs" / "demo" / "tiny" / "fold0" / "best.pt").exists()
    comp = Competition(load_config(config).data)
    assert type(comp.source).__name__ == "NpyMasks"
    first = plain.labelled_ids[0]
    assert (comp.read_mask(first) == plain.read_mask(first)).all()
    (root / "train" / "masks_npy" / f"{first}.npy").unlink()
    assert main(["check", "--config", config, "paths.runs=" + str(tmp_path / "other")]) == 2
    assert f"{first}.npy: no mask for image" in capsys.readouterr().err


def test_a_stage(extension, tmp_path, capsys, one_torch_thread):
    config = extension("stage")
    assert main(["run", "--model", "tiny", "--fold", "0", "--config", config]) == 0
    out = capsys.readouterr().out
    assert out.index("== folds") < out.index("== fold-sizes") < out.index("== train")
    table = pd.read_csv(tmp_path / "runs" / "demo" / "extensions" / "fold_sizes" / "fold_sizes.csv")
    assert list(table["fold"]) == [0, 1] and table["images"].sum() == 24
    assert main(["fold-sizes", "--config", config]) == 0
    assert "up to date and complete; keeping it" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["fold-sizes", "--help", "--config", config])
    assert "count each fold's images" in capsys.readouterr().out


def test_every_registry_is_in_the_index():
    """A registry made anywhere in the package is listed in segkit.registry.INDEX, and every entry of the index
    names a registry (or the function that adds a stage or command) that exists."""
    made = set()
    for path in (REPO / "src" / "segkit").rglob("*.py"):
        module = ".".join(path.relative_to(REPO / "src").with_suffix("").parts).removesuffix(".__init__")
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.Assign, ast.AnnAssign)) and isinstance(node.value, ast.Call) \
                    and getattr(node.value.func, "id", None) == "Registry":
                target = node.targets[0] if isinstance(node, ast.Assign) else node.target
                made.add(f"{module}:{target.id}")
    listed = {e.where for e in INDEX}
    assert made - listed == set(), made - listed
    for entry in INDEX:
        module, attr = entry.where.split(":")
        assert getattr(importlib.import_module(module), attr) is not None, entry.where


def test_readme_index_is_the_registry_index():
    from segkit.registry import index_table

    block = re.search(r"<!-- registries -->\n(.*?)<!-- /registries -->", README, re.S)
    assert block and block.group(1).strip() == index_table().strip()


def test_a_config_with_imports_is_not_packaged(extension, tmp_path):
    config = extension("postprocess")
    assert main(["package", "--config", config, "--out", str(tmp_path / "bundle")]) == 2
    assert not (tmp_path / "bundle").exists()


def test_an_import_that_is_not_there_is_a_config_error(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"base": str(CONFIGS / "demo.yaml"), "imports": ["no_such_module_here"]}))
    assert main(["check", "--config", str(path)]) == 2
    assert "imports[0]: no module 'no_such_module_here'" in capsys.readouterr().err
