"""segkit plan: the rules on known fingerprints and a fake machine (working resolution, crop, network, folds, TTA,
minutes that sum to the budget, the least budget said when too small), and the command writing a config that
loads, each planned key with its reason."""

from __future__ import annotations

import pytest
from conftest import CONFIGS

from segkit.config import load_config
from segkit.errors import ConfigError
from segkit.plan import rules
from segkit.plan.machine import LADDER, Speed


def spread(median: float, **more) -> dict:
    return {"n": 100, "median": median, "p5": median, **more}


def facts(side: int = 101, n: int = 4000, diameter: float = 40.0, p5: float = 30.0, empty: float = 0.38) -> dict:
    return {"images": n, "height": spread(side), "width": spread(side), "aspect": spread(1.0), "empty_share": empty,
            "classes": {"salt": {"object_pixels": {"n": 100, "median": 900.0, "p5": p5},
                                 "object_diameter": spread(diameter)}}}


SPEEDS = {"unet_lite0": Speed(0.005, 0.0015, "none"), "unet_lite0_full": Speed(0.008, 0.002, "none"),
          "unet_lite2": Speed(0.015, 0.004, "none")}


def decided(plan: rules.Plan) -> dict:
    return {d.key: d.value for d in plan.decisions}


def test_a_tgs_like_competition_on_a_cpu():
    plan = rules.plan(facts(), SPEEDS, LADDER["cpu"], 45 * 60, "cpu", 18000, "tgs", "binary", spent=60)
    keys = decided(plan)
    assert "data.resize" not in keys and keys["train.crop_size"] == 96 and keys["predict.tile_size"] == 96
    assert keys["folds.n_splits"] == 5 and keys["models"][0]["encoder"].startswith("tu-tf_efficientnet_lite")
    assert abs(sum(plan.minutes.values()) - 45) < 1e-6  # the stages sum to the budget
    assert keys["train.minutes"] * 5 == pytest.approx(plan.minutes["train (5 folds)"], abs=0.05)
    assert plan.minutes[f"predict ({keys['predict.tta']})"] <= 0.15 * 45 + 1e-9
    assert keys["train.loss_stages"][-1] == {"terms": {"lovasz": 1}}  # the metric is IoU per image
    assert keys["tune.min_areas"] == [0, 8, 15, 30, 60]
    assert all(d.why for d in plan.decisions)
    # a competition whose folds file exists keeps its folds
    kept = rules.plan(facts(), SPEEDS, LADDER["cpu"], 45 * 60, "cpu", 18000, "tgs", "binary", folds_file=3)
    assert decided(kept)["folds.n_splits"] == 3
    assert any(d.why.startswith("the folds file has 3 folds") for d in kept.decisions)
    # a bigger budget buys a bigger network
    more = decided(rules.plan(facts(), SPEEDS, LADDER["cpu"], 8 * 3600, "cpu", 18000, "tgs", "binary"))
    assert more["models"][0]["name"] == "unet_lite2" and more["predict.tta"] == "d4"


def test_working_resolutions_follow_image_and_object_sizes():
    assert rules.working_resolution(facts(side=101), "cpu")[0] is None
    resize, side, why = rules.working_resolution(facts(side=1000, diameter=100), "cpu")
    assert resize == {"longest": 256} and side == 256
    resize, side, why = rules.working_resolution(facts(side=1000, diameter=10), "cpu")
    assert resize == {"longest": 608} and "keeps 6 px" in why  # small objects: less shrinking
    assert rules.working_resolution(facts(side=64, diameter=3), "cpu")[0] == {"scale": 2.0}


def test_a_budget_too_small_says_the_least_that_works():
    with pytest.raises(ConfigError, match=r"--budget: 1.0 minutes cannot train 3 epochs .* about \d+ minutes"):
        rules.plan(facts(), SPEEDS, LADDER["cpu"], 60, "cpu", 18000, "tgs", "binary")


def test_the_command_writes_a_config_that_loads_with_its_reasons(demo_root, tmp_path, monkeypatch, capsys):
    import segkit.plan
    from segkit.cli import main

    monkeypatch.setattr(segkit.plan, "probe", lambda ladder, *a, **k: {c.name: SPEEDS[c.name] for c in ladder})
    out = tmp_path / "configs" / "planned.yaml"
    args = ["plan", "--config", str(CONFIGS / "demo.yaml"), f"data.root={demo_root}",
            f"paths.runs={tmp_path / 'runs'}", f"paths.folds={tmp_path / 'folds'}", "--budget", "20m", "--out",
            str(out), "--device", "cpu"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "plan: minutes per stage" in printed and "(budget 20.0)" in printed
    text = out.read_text()
    assert text.startswith("# Planned by `segkit plan") and "budget: null" in text
    planned = [line for line in text.splitlines() if line.startswith("  ") and not line.startswith("  - ")]
    assert planned and all("  # " in line for line in planned)  # every planned key says why
    cfg = load_config(str(out), [f"data.root={demo_root}"])
    assert cfg.train.minutes and cfg.experiment == "demo_plan" and cfg.models[0].name in SPEEDS
    assert main(args) == 2 and "exists" in capsys.readouterr().err  # not replaced without --force
    assert main([*args, "--force"]) == 0


def test_a_gpu_plan_from_a_fake_device_profile():
    gpu = {"unet_lite0": Speed(0.0004, 0.0001, "bf16"), "unet_lite2": Speed(0.0009, 0.0002, "bf16"),
           "fpn_lite2": Speed(0.0008, 0.0002, "bf16")}
    plan = rules.plan(facts(side=1024, diameter=60, n=12000), gpu, LADDER["cuda"], 20 * 60, "cuda", 3000, "dice",
                      "binary")
    keys = decided(plan)
    assert keys["data.resize"] == {"longest": 512} and keys["train.crop_size"] == 384
    assert keys["train.batch_size"] == 32 and keys["train.loss"] == {"bce": 1, "dice": 1}
    assert keys["models"][0]["name"] in gpu and abs(sum(plan.minutes.values()) - 20) < 1e-6
