from pathlib import Path

import pytest
from conftest import CONFIGS

from segkit.config import load_config, parse_overrides
from segkit.errors import ConfigError


def write(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def test_demo_inherits_base_and_states_differences():
    cfg = load_config(CONFIGS / "demo.yaml")
    assert cfg.competition == "demo"
    assert cfg.folds.n_splits == 3  # from demo.yaml
    assert cfg.train.optimizer == "adamw"  # from base.yaml
    assert cfg.data.rle.order == "F"
    assert [m.name for m in cfg.models] == ["unet_r18", "fpn_r18"]
    assert cfg.folds_file == Path("folds/demo.csv")
    assert cfg.submission_file == Path("submissions/demo.csv")


def test_overrides_are_typed_and_reach_lists():
    cfg = load_config(CONFIGS / "demo.yaml", ["train.lr=3e-4", "train.amp=bf16", "models.1.encoder=resnet34",
                                               "data.root=/somewhere/else"])
    assert cfg.train.lr == pytest.approx(3e-4)
    assert cfg.train.amp == "bf16"
    assert cfg.models[1].encoder == "resnet34"
    assert cfg.data.root == Path("/somewhere/else")


def test_parse_overrides_rejects_missing_equals():
    with pytest.raises(ConfigError, match="key.sub=value"):
        parse_overrides(["train.lr"])


def test_unknown_key_names_key_and_file(tmp_path):
    base = write(tmp_path, "base.yaml", "train:\n  lr: 0.1\n")
    exp = write(tmp_path, "exp.yaml", "base: base.yaml\ntrain:\n  lrr: 0.1\n")
    with pytest.raises(ConfigError) as err:
        load_config(exp)
    assert "train.lrr" in str(err.value) and "unknown key" in str(err.value)
    assert str(exp) in str(err.value)
    assert base.exists()


def test_wrong_type_names_the_file_that_set_it(tmp_path):
    base = write(tmp_path, "base.yaml", "train:\n  epochs: many\n")
    exp = write(tmp_path, "exp.yaml", "base: base.yaml\nseed: 3\n")
    with pytest.raises(ConfigError) as err:
        load_config(exp)
    assert "train.epochs" in str(err.value) and str(base) in str(err.value) and "'many'" in str(err.value)


def test_command_line_override_blamed_on_command_line():
    with pytest.raises(ConfigError, match="command line: train.batch_size"):
        load_config(CONFIGS / "demo.yaml", ["train.batch_size=-3"])


def test_bad_override_index_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="not an index"):
        load_config(CONFIGS / "demo.yaml", ["models.7.encoder=resnet18"])
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")


def test_circular_base_and_bad_yaml(tmp_path):
    write(tmp_path, "a.yaml", "base: b.yaml\n")
    write(tmp_path, "b.yaml", "base: a.yaml\n")
    with pytest.raises(ConfigError, match="circular"):
        load_config(tmp_path / "a.yaml")
    write(tmp_path, "bad.yaml", "train: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(tmp_path / "bad.yaml")


def test_model_train_overrides_merge_and_validate(tmp_path):
    exp = write(tmp_path, "exp.yaml", "models:\n  - {name: a, train: {lr: 0.5}}\n  - {name: b, train: {lr: fast}}\n")
    cfg = load_config(exp)
    assert cfg.train_for(cfg.models[0]).lr == 0.5
    assert cfg.train_for(cfg.models[0]).epochs == cfg.train.epochs
    with pytest.raises(ConfigError, match=r"models\[b\].train: lr"):
        cfg.train_for(cfg.models[1])


def test_a_loss_mapping_replaces_the_bases_loss(tmp_path):
    (tmp_path / "c.yaml").write_text(f"base: {CONFIGS / 'base.yaml'}\ntrain: {{loss: {{focal: 1}}}}\n")
    cfg = load_config(tmp_path / "c.yaml", ["models=[{name: m, train: {loss: {lovasz: 1}}}]"])
    assert cfg.train.loss == {"focal": 1} and cfg.train_for(cfg.models[0]).loss == {"lovasz": 1}
    # the options go with the loss: a file's own loss_params replace the base's whole, `{}` drops them
    (tmp_path / "b.yaml").write_text(f"base: {CONFIGS / 'base.yaml'}\n"
                                     "train: {loss: {lovasz: 1}, loss_params: {lovasz: {per_image: true}}}\n")
    (tmp_path / "d.yaml").write_text("base: b.yaml\ntrain: {loss: {dice: 1}, loss_params: {}}\n")
    assert load_config(tmp_path / "d.yaml").train.loss_params == {}


def test_duplicate_model_names_rejected(tmp_path):
    exp = write(tmp_path, "exp.yaml", "models:\n  - {name: a}\n  - {name: a}\n")
    with pytest.raises(ConfigError, match="duplicate"):
        load_config(exp)


def test_missing_data_path_names_key(demo_cfg):
    cfg = demo_cfg("data.train_csv=nope.csv")
    with pytest.raises(ConfigError, match="data.train_csv: path does not exist"):
        cfg.data.path("train_csv")


def test_every_shipped_config_loads_and_passes_the_check_in_every_budget():
    import yaml

    from segkit import catalog

    for path in sorted(CONFIGS.glob("*.yaml")):
        catalog.check(load_config(path))  # every name it picks too: a planned config's losses over its base's
        for budget in (yaml.safe_load(path.read_text()) or {}).get("budgets", {}):
            cfg = load_config(path, [f"budget={budget}"])
            assert cfg.budget == budget
            catalog.check(cfg)


BUDGETS = """base: {base}
experiment: x
budget: cpu
budgets:
  cpu: {{experiment: x_cpu, train: {{epochs: 3}}}}
  gpu: {{experiment: x_gpu, train: {{epochs: 30, batch_size: 64}}, models: [{{name: big, encoder: resnet50}}]}}
"""


def test_budget_from_file_then_command_line_then_overrides(tmp_path):
    path = tmp_path / "b.yaml"
    path.write_text(BUDGETS.format(base=CONFIGS / "base.yaml"))
    cpu = load_config(path)
    assert (cpu.experiment, cpu.budget, cpu.train.epochs, cpu.train.batch_size) == ("x_cpu", "cpu", 3, 8)
    gpu = load_config(path, ["budget=gpu", "train.epochs=5"])  # the budget first, other overrides on top
    assert (gpu.experiment, gpu.budget, gpu.train.epochs, gpu.train.batch_size) == ("x_gpu", "gpu", 5, 64)
    assert [m.name for m in gpu.models] == ["big"]  # lists are replaced, not merged


def test_unknown_budget_and_bad_budget_value_name_their_source(tmp_path):
    path = tmp_path / "b.yaml"
    path.write_text(BUDGETS.format(base=CONFIGS / "base.yaml"))
    with pytest.raises(ConfigError, match=r"command line: budget: 'tpu' is not one of the file's budgets \(cpu, gpu\)"):
        load_config(path, ["budget=tpu"])
    path.write_text(BUDGETS.format(base=CONFIGS / "base.yaml").replace("epochs: 30", "epochs: -1"))
    with pytest.raises(ConfigError, match=r"b\.yaml \(budget gpu\): train\.epochs"):
        load_config(path, ["budget=gpu"])
    with pytest.raises(ConfigError, match="budget: 'cpu' is not one of the file's budgets \\(none defined\\)"):
        load_config(CONFIGS / "demo.yaml", ["budget=cpu"])
