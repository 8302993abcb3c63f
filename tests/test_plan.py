"""segkit plan: the rules on known fingerprints and a fake machine (working resolution, crop, network, folds, TTA,
minutes that sum to the budget, the least budget said when too small), and the command writing a config that
loads, each planned key with its reason."""

from __future__ import annotations

import pytest
from conftest import CONFIGS

from segkit.config import load_config
from segkit.config.schema import TrainConfig
from segkit.errors import ConfigError
from segkit.plan import rules
from segkit.plan.machine import LADDER, Speed


def spread(median: float, **more) -> dict:
    return {"n": 100, "median": median, "p5": median, "p95": 2 * median, **more}


def facts(side: int = 101, n: int = 4000, diameter: float = 40.0, p5: float = 30.0, empty: float = 0.38,
          stroke: float = 0.0) -> dict:
    return {"images": n, "height": spread(side), "width": spread(side), "aspect": spread(1.0), "empty_share": empty,
            "classes": {"salt": {"object_pixels": {"n": 100, "median": 900.0, "p5": p5},
                                 "object_diameter": spread(diameter), "stroke_width": spread(stroke or diameter)}}}


SPEEDS = {"unet_lite0": Speed(0.005, 0.0015, "none"), "unet_lite0_full": Speed(0.008, 0.002, "none"),
          "unet_lite2": Speed(0.015, 0.004, "none")}


def decided(plan: rules.Plan) -> dict:
    return {d.key: d.value for d in plan.decisions}


def decided_why(plan: rules.Plan, key: str) -> str:
    return next(d.why for d in plan.decisions if d.key == key)


def test_a_tgs_like_competition_on_a_cpu():
    plan = rules.plan(facts(), SPEEDS, LADDER["cpu"], 45 * 60, "cpu", 18000, "tgs", "binary", spent=60)
    keys = decided(plan)
    assert "data.resize" not in keys and keys["train.crop_size"] == 96 and keys["predict.tile_size"] == 96
    assert keys["folds.n_splits"] == 5 and keys["models"][0]["encoder"].startswith("tu-tf_efficientnet_lite")
    assert abs(sum(plan.minutes.values()) - 45) < 1e-6  # the stages sum to the budget
    assert keys["train.minutes"] * 5 == pytest.approx(plan.minutes["train (5 folds)"], abs=0.05)
    # each of the four 96 px tiles of a 101 px image is a forward: 18000 test images on 5 folds take 9-12 minutes
    # in one view, more than the 15 % share, so one view it is
    forward = SPEEDS[keys["models"][0]["name"]].predict
    assert keys["predict.tta"] == "none" and plan.stages["predict"] == pytest.approx(18000 * 5 * forward * 4 / 60)
    fewer = rules.plan(facts(), SPEEDS, LADDER["cpu"], 45 * 60, "cpu", 3000, "tgs", "binary", spent=60)
    tta = decided(fewer)["predict.tta"]
    assert tta == "hflip" and fewer.minutes[f"predict ({tta})"] <= 0.15 * 45 + 1e-9
    assert keys["train.loss_stages"][-1] == {"terms": {"lovasz": 1}}  # the metric is IoU per image
    assert keys["tune.min_areas"] == [0, 8, 15, 30, 60]
    assert all(d.why for d in plan.decisions)
    # a competition whose folds file exists keeps its folds
    kept = rules.plan(facts(), SPEEDS, LADDER["cpu"], 45 * 60, "cpu", 18000, "tgs", "binary", folds_file=3)
    assert decided(kept)["folds.n_splits"] == 3
    assert any(d.why.startswith("the folds file has 3 folds") for d in kept.decisions)
    # a bigger budget buys a bigger network, and the TTA it affords (d4 of lite2 on 4 tiles would take 192 minutes)
    more = decided(rules.plan(facts(), SPEEDS, LADDER["cpu"], 8 * 3600, "cpu", 18000, "tgs", "binary"))
    assert more["models"][0]["name"] == "unet_lite2" and more["predict.tta"] == "hflip"


def test_native_sizes_cost_their_mean_area():
    """A few large images lift what predicting and validating native sizes costs far above the median image's
    (DSB: a mean of 154 000 pixels against the median's 65 536)."""
    nuclei = facts(side=256, diameter=20, n=600)
    kept = {"predict.tta": "none"}  # one view, whatever the budget
    by_median = rules.plan(nuclei, SPEEDS, LADDER["cpu"], 30 * 60, "cpu", 66, "dice", "binary", given=kept)
    nuclei["area"] = spread(256 * 256, mean=154000)
    by_mean = rules.plan(nuclei, SPEEDS, LADDER["cpu"], 30 * 60, "cpu", 66, "dice", "binary", given=kept)
    # (the planned minutes are rounded to hundredths)
    assert by_mean.stages["predict"] == pytest.approx(by_median.stages["predict"] * 154000 / 65536, rel=0.01)
    assert by_mean.stages["train"] < by_median.stages["train"]  # what prediction takes, training gives up
    # re-predicting the OOF images with the TTA (for tuning) is prediction too: each of the 600 once
    again = rules.plan(nuclei, SPEEDS, LADDER["cpu"], 30 * 60, "cpu", 66, "dice", "binary", given=kept,
                       repredict_oof=True)
    assert again.stages["predict"] == pytest.approx(by_mean.stages["predict"] * (66 * 5 + 600) / (66 * 5), abs=0.02)
    assert "and 600 OOF images once" in decided_why(again, "predict.tta")
    # the folds share the labelled images less the held-out ones, which the fingerprint counts too
    held = rules.plan(nuclei, SPEEDS, LADDER["cpu"], 30 * 60, "cpu", 66, "dice", "binary", given=kept,
                      repredict_oof=True, train_images=540)
    assert "and 540 OOF images once" in decided_why(held, "predict.tta")


def test_reading_the_data_is_costed_beside_the_networks(demo_root):
    """A random batch times the network alone: reading and augmenting a crop, and reading a whole image to predict
    or validate it, cost on top (DSB's run stepped at 98 ms an image where its network took 62)."""
    from segkit.data import Competition
    from segkit.plan.machine import Reading, reading

    nuclei = facts(side=256, diameter=20, n=600)
    nuclei["area"] = spread(256 * 256, mean=150000)
    kept = {"predict.tta": "none"}
    free = rules.plan(nuclei, SPEEDS, LADDER["cpu"], 45 * 60, "cpu", 66, "dice", "binary", given=kept)
    read = Reading(train=0.004, pixel=2e-8)
    costed = rules.plan(nuclei, SPEEDS, LADDER["cpu"], 45 * 60, "cpu", 66, "dice", "binary", given=kept, reading=read)
    # every predicted image is read once, at its native mean area
    assert costed.stages["predict"] - free.stages["predict"] == pytest.approx(66 * 5 * 2e-8 * 150000 / 60, abs=0.01)
    assert costed.epochs < free.epochs
    assert "and 4.0 reading it" in decided_why(costed, "models")
    cfg = load_config(str(CONFIGS / "demo.yaml"), [f"data.root={demo_root}"])
    comp = Competition(cfg.data)
    measured = reading(comp, comp.train_ids, 32, "light", samples=4)
    assert measured.train > 0 and 0 < measured.pixel < 1e-3


def test_a_small_fold_takes_smaller_batches():
    """An epoch takes whole batches: ISBI's 24 sections a fold at batch 16 made one step of 16 an epoch."""
    assert rules.batch_size("cpu", 478, 160).value == 16
    small = rules.batch_size("cpu", 24, 256)
    assert small.value == 8 and "3 steps an epoch" in small.why
    assert rules.batch_size("cpu", 3, 256).value == 2
    sections = facts(side=512, diameter=300, stroke=5, n=30)
    assert decided(rules.plan(sections, SPEEDS, LADDER["cpu"], 20 * 60, "cpu", 30, "dice", "binary",
                              folds_file=5))["train.batch_size"] == 8


def test_working_resolutions_follow_image_and_object_sizes():
    assert rules.working_resolution(facts(side=101), "cpu")[0] is None
    resize, side, why = rules.working_resolution(facts(side=1000, diameter=100), "cpu")
    assert resize == {"longest": 256} and side == 256
    resize, side, why = rules.working_resolution(facts(side=1000, diameter=10), "cpu")
    assert resize == {"longest": 608} and "keeps 6 px" in why  # small objects: less shrinking
    assert rules.working_resolution(facts(side=64, diameter=3), "cpu")[0] == {"scale": 2.0}
    # a membrane network: one large object, 4 px thin; halving would leave 2 px: native
    resize, side, why = rules.working_resolution(facts(side=512, diameter=300, stroke=4), "cpu")
    assert resize is None and side == 512 and "kept native" in why


def test_small_objects_take_smaller_crops():
    nuclei = facts(side=256, diameter=20, n=600)  # DSB: 95th percentile 40 px across: 3x is 120, so 128 px crops
    plan = rules.plan(nuclei, SPEEDS, LADDER["cpu"], 45 * 60, "cpu", 66, "dice", "binary")
    crop = next(d for d in plan.decisions if d.key == "train.crop_size")
    assert crop.value == 128 and "3x the largest typical object (40 px" in crop.why
    large = rules.crop_size(facts(side=256, diameter=200), 256, "cpu")
    assert large.value == 256 and "within the working image" in large.why  # large objects: the image's own limit


@pytest.mark.parametrize("folds_file", [None, 5])
def test_a_budget_too_small_says_the_least_that_works(folds_file):
    with pytest.raises(ConfigError, match=r"--budget: 1.0 minutes cannot train 3 epochs .* about \d+ minutes") as e:
        rules.plan(facts(), SPEEDS, LADDER["cpu"], 60, "cpu", 18000, "tgs", "binary", folds_file=folds_file)
    least = int(str(e.value).split("about ")[1].split()[0])
    plan = rules.plan(facts(), SPEEDS, LADDER["cpu"], least * 60, "cpu", 18000, "tgs", "binary", folds_file=folds_file)
    assert plan.epochs >= 3  # the budget it names is enough
    with pytest.raises(ConfigError):  # and not by much
        rules.plan(facts(), SPEEDS, LADDER["cpu"], (least - 2) * 60, "cpu", 18000, "tgs", "binary",
                   folds_file=folds_file)


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
    # the run's share of the budget, for `segkit run` to hold its stages against
    assert 19 < cfg.plan.minutes <= 20 and set(cfg.plan.stages) == {"train", "predict"}
    assert cfg.plan.stages["train"] == pytest.approx(cfg.train.minutes * cfg.folds.n_splits, abs=0.05)
    assert main(args) == 2 and "exists" in capsys.readouterr().err  # not replaced without --force
    assert main([*args, "--force"]) == 0


def test_a_gpu_plan_from_a_fake_device_profile():
    gpu = {"unet_lite0": Speed(0.0004, 0.0001, "bf16"), "unet_lite2": Speed(0.0009, 0.0002, "bf16"),
           "fpn_lite2": Speed(0.0008, 0.0002, "bf16")}
    plan = rules.plan(facts(side=1024, diameter=300, n=12000), gpu, LADDER["cuda"], 20 * 60, "cuda", 3000, "dice",
                      "binary")
    keys = decided(plan)
    assert keys["data.resize"] == {"longest": 512} and keys["train.crop_size"] == 384
    assert keys["train.batch_size"] == 32 and keys["train.loss"] == {"bce": 1, "dice": 1}
    assert keys["models"][0]["name"] in gpu and abs(sum(plan.minutes.values()) - 20) < 1e-6


def test_volumes_keep_their_grid_and_take_context_from_their_spacing():
    def volumes(spacing):
        return {**facts(side=50, n=8000, diameter=12, p5=20),
                "height": spread(36), "aspect": spread(50 / 36),
                "volumes": {"spacing": {f"axis{a}": spread(s) for a, s in enumerate(spacing)}}}

    near = decided(rules.plan(volumes([1.0, 1.0, 1.0]), SPEEDS, LADDER["cpu"], 45 * 60, "cpu", 900, "dice",
                              "multiclass", axis=2))
    assert near["data.context"] == 1 and "data.resize" not in near
    assert near["train.crop_size"] == 64  # a 32 px crop would see 57 % of a 36 x 50 slice: the whole slice, padded
    assert near["train.loss"] == {"ce": 1, "dice": 1}
    far = rules.context(volumes([0.004, 0.004, 0.05]), axis=2)  # ISBI's 4 x 4 x 50 nm sections
    assert far.value == 0 and "12.5x" in far.why


def test_min_areas_start_from_real_objects_not_specks():
    polyps = facts(side=600, diameter=200, p5=1, n=900)
    polyps["classes"]["salt"]["object_pixels"]["median"] = 90000.0
    keys = decided(rules.plan(polyps, SPEEDS, LADDER["cpu"], 45 * 60, "cpu", 100, "dice", "binary"))
    assert keys["tune.min_areas"] == [0, 225, 450, 900, 1800]  # a hundredth of the 90000 px median: not 1 px


def test_the_loss_a_recipe_sets_is_kept_its_stages_moved_to_the_planned_epochs():
    """The loss is the recipe's call: a plan keeps its terms (DSB's Lovasz stage) and moves its switches from the
    epochs they were written for to the planned ones."""
    staged = [{"until_epoch": 4, "terms": {"bce": 1, "dice": 1}}, {"terms": {"lovasz": 1, "bce": 0.5}}]
    lovasz = {"lovasz": {"per_image": True}}
    plan = rules.plan(facts(), SPEEDS, LADDER["cpu"], 45 * 60, "cpu", 3000, "dice", "binary",
                      given={"train.loss_stages": staged, "train.epochs": 10}, loss_params=lovasz)
    keys = decided(plan)
    assert plan.epochs != 10 and keys["train.loss_stages"] == [{"until_epoch": round(4 * plan.epochs / 10),
                                                                "terms": {"bce": 1, "dice": 1}}, staged[1]]
    assert f"moved from its 10 epochs to the plan's {plan.epochs}" in decided_why(plan, "train.loss_stages")
    assert "train.loss" not in keys and "train.loss_params" not in keys  # Lovasz is still used: its options stay
    # however few epochs fit, the switches stay in order and the last stage still runs
    three = [{"until_epoch": 4, "terms": {"bce": 1}}, {"until_epoch": 6, "terms": {"dice": 1}},
             {"terms": {"lovasz": 1}}]
    assert [s.get("until_epoch") for s in rules.stages_moved(three, 10, 3).value] == [1, 2, None]
    # a single loss the recipe sets is kept as it is, over the metric's rule (TGS would stage Lovasz)
    own = decided(rules.plan(facts(), SPEEDS, LADDER["cpu"], 45 * 60, "cpu", 3000, "tgs", "binary",
                             given={"train.loss": {"focal": 1}}))
    assert own["train.loss"] == {"focal": 1} and own["train.loss_stages"] == []


def test_what_the_base_budget_sets_is_kept_but_what_the_plan_sizes():
    cpu = {"experiment": "x_cpu", "models": [{"name": "unet_r18"}], "pseudo": {"rounds": 1},
           "train": {"epochs": 10, "lr": 0.002, "crop_size": 96, "schedule": {"name": "cosine", "warmup_epochs": 0.5}},
           "predict": {"tta": "hflip", "snapshots": False}}
    kept = rules.budget_kept("cpu", cpu, {"train.crop_size"})
    assert {d.key: d.value for d in kept} == {"train.lr": 0.002, "predict.snapshots": False,
                                              "train.schedule": {"name": "cosine", "warmup_epochs": 0.5}}
    assert all(d.why == "the base's cpu budget's, kept" for d in kept)
    assert rules.budget_kept(None, {}, set()) == []


def test_the_loss_given_comes_from_the_file_or_its_budget_not_a_base(demo_root, tmp_path):
    from segkit.plan import given_by

    own = tmp_path / "staged.yaml"
    own.write_text(f"base: {CONFIGS / 'demo.yaml'}\nbudget: cpu\nbudgets: {{cpu: {{train: {{epochs: 10, loss_stages: "
                   f"[{{until_epoch: 4, terms: {{bce: 1}}}}, {{terms: {{lovasz: 1}}}}]}}}}}}\n")
    given = given_by(load_config(str(own), [f"data.root={demo_root}"]))
    assert given["train.loss_stages"] == [{"until_epoch": 4, "terms": {"bce": 1.0}}, {"terms": {"lovasz": 1.0}}]
    assert given["train.epochs"] == 10 and "train.loss" not in given  # base.yaml's default loss is not the file's
    assert given_by(load_config(str(CONFIGS / "demo.yaml"), [f"data.root={demo_root}", "train.loss={dice: 1}"])
                    )["train.loss"] == {"dice": 1}


def test_a_run_holds_its_stages_against_the_planned_budget(capsys):
    from segkit.config import Config
    from segkit.pipeline import StageClock

    cfg = Config.model_validate({"plan": {"minutes": 10, "stages": {"train": 7, "predict": 1}}})
    clock = StageClock(cfg)
    assert clock.stage("train", 9 * 60) == " (planned 7.0 min: +29%)" and clock.stage("tune", 5) == ""
    clock.began -= 11 * 60  # training ended at 11 minutes: with predict's 1 and the rest's 2, about 14 of 10
    clock.forecast(["predict", "ensemble", "tune"])
    said = capsys.readouterr().out
    assert "training ended at 11.0 min of the planned 10.0" in said and "near 14.0 min (+40%)" in said
    clock.summary()
    assert "took 11.0 min of the planned 10.0 (+10.0%)\n" in capsys.readouterr().out  # within the planner's 15 %
    clock.began -= 2 * 60
    clock.summary()
    assert "(+30.0%, outside the planner's +-15%)" in capsys.readouterr().out
    with pytest.raises(ConfigError, match="plan.stages.trian: not a stage"):
        StageClock(Config.model_validate({"plan": {"minutes": 10, "stages": {"trian": 7}}}))


def test_an_unreadable_image_is_named_and_nothing_is_written(demo_root, tmp_path, capsys):
    import shutil

    from segkit.cli import main

    root = tmp_path / "data"
    shutil.copytree(demo_root, root)
    broken = sorted((root / "train" / "images").iterdir())[3]
    broken.write_bytes(b"not an image")
    out = tmp_path / "planned.yaml"
    code = main(["plan", "--config", str(CONFIGS / "demo.yaml"), f"data.root={root}", f"paths.runs={tmp_path / 'r'}",
                 f"paths.folds={tmp_path / 'folds'}", "--budget", "20m", "--out", str(out), "--device", "cpu"])
    assert code == 2 and broken.name in capsys.readouterr().err and not out.exists()


def test_the_probe_times_the_step_the_run_will_take(monkeypatch):
    """The plan's probe times a candidate with the run's own step timer, in the run's memory format and batch."""
    import torch

    from segkit.plan import machine

    seen = {}

    def spy(net, batches, loss, device, tcfg, steps):
        conv = next(p for p in net.parameters() if p.dim() == 4)
        seen.update(batch=tcfg.batch_size, channels_last=conv.is_contiguous(memory_format=torch.channels_last))
        return real(net, batches, loss, device, tcfg, 1)

    real = machine.time_steps
    monkeypatch.setattr(machine, "time_steps", spy)
    tcfg = TrainConfig(batch_size=2, channels_last=True, amp="none")
    speeds = machine.probe(LADDER["cpu"][:1], 3, 1, 32, tcfg, torch.device("cpu"), predict_channels_last=True)
    assert seen == {"batch": 2, "channels_last": True}
    assert speeds["unet_lite0"].train > 0 and speeds["unet_lite0"].predict > 0


def test_the_probe_offers_no_network_the_device_cannot_hold(monkeypatch, capsys):
    import torch

    from segkit.plan import machine

    def fake(c, *args):
        if c.name != "unet_lite0":
            raise torch.OutOfMemoryError("CUDA out of memory")
        return SPEEDS[c.name]

    monkeypatch.setattr(machine, "_time", fake)
    tcfg = TrainConfig(batch_size=32)
    speeds = machine.probe(LADDER["cpu"], 3, 1, 256, tcfg, torch.device("cpu"))
    assert list(speeds) == ["unet_lite0"] and "unet_lite0_full: a batch of 32" in capsys.readouterr().out
    with pytest.raises(ConfigError, match="not even unet_lite0_full trains a batch of 32"):
        machine.probe(LADDER["cpu"][1:], 3, 1, 256, tcfg, torch.device("cpu"))


def test_the_data_symmetries_a_config_sets_itself_are_kept(demo_root, tmp_path):
    from segkit.plan import given_by

    own = tmp_path / "seismic.yaml"
    own.write_text(f"base: {CONFIGS / 'demo.yaml'}\ntrain: {{augment: hflip}}\nbudget: cpu\n"
                   f"budgets: {{cpu: {{predict: {{tta: flips}}}}}}\n")
    cfg = load_config(str(own), [f"data.root={demo_root}"])
    assert given_by(cfg) == {"train.augment": "hflip"}  # the budget's TTA is not the file's own: replaced
    assert given_by(load_config(str(own), [f"data.root={demo_root}", "predict.tta=none"]))["predict.tta"] == "none"
    # the file's own value under a budget that overrides it: the planned config drops the budget, so the file's
    own.write_text(own.read_text().replace("{augment: hflip}", "{augment: hflip}\npredict: {tta: hflip}"))
    assert given_by(load_config(str(own), [f"data.root={demo_root}"]))["predict.tta"] == "hflip"
    # a given TTA bounds the views: never one outside it however large the budget, fewer where it does not fit
    seismic = {"train.augment": "hflip", "predict.tta": "hflip"}
    plan = rules.plan(facts(), SPEEDS, LADDER["cpu"], 8 * 3600, "cpu", 1000, "tgs", "binary", given=seismic)
    keys = decided(plan)
    assert keys["train.augment"] == "hflip" and keys["predict.tta"] == "hflip"
    assert decided_why(plan, "train.augment") == rules.KEPT
    assert decided_why(plan, "predict.tta").startswith("the base config allows hflip")
    tight = rules.plan(facts(), SPEEDS, LADDER["cpu"], 45 * 60, "cpu", 18000, "tgs", "binary", given=seismic)
    assert decided(tight)["predict.tta"] == "none"
    # the views kept are what the predict minutes were planned for
    two, eight = (rules.plan(facts(), SPEEDS, LADDER["cpu"], 8 * 3600, "cpu", 1000, "tgs", "binary",
                             given={"predict.tta": tta}) for tta in ("hflip", "d4"))
    assert decided(eight)["predict.tta"] == "d4"
    assert eight.stages["predict"] == pytest.approx(4 * two.stages["predict"], rel=0.05)
    # a single planned loss clears whatever loss stages the base config had
    dice = decided(rules.plan(facts(), SPEEDS, LADDER["cpu"], 45 * 60, "cpu", 18000, "dice", "binary"))
    assert dice["train.loss"] == {"bce": 1, "dice": 1} and dice["train.loss_stages"] == []
    # ... and the base's options of the terms it no longer uses (a loss schedule refuses options of unused terms)
    lovasz = {"lovasz": {"per_image": True}}
    dropped = decided(rules.plan(facts(), SPEEDS, LADDER["cpu"], 45 * 60, "cpu", 18000, "dice", "binary",
                                 loss_params=lovasz))
    assert dropped["train.loss_params"] == {}
    staged = decided(rules.plan(facts(), SPEEDS, LADDER["cpu"], 45 * 60, "cpu", 18000, "tgs", "binary",
                                loss_params=lovasz))
    assert "train.loss_params" not in staged  # Lovasz is still staged: its options stay the base's
