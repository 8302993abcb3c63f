"""Weight averaging: SWA and greedy soups of a fold's last epochs (best.pt becomes the average, the best epoch kept
beside it, a killed fold redoes the same average), checkpoint averaging for prediction (predict.snapshot_merge:
weights), multi-scale TTA, and the bad settings each refuses."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from segkit.errors import ConfigError, SegkitError
from segkit.inference.tta import TTAPredictor, scaled_size
from segkit.models import checkpoint
from segkit.stages import folds as folds_stage
from segkit.stages.train import averaging, train_fold
from segkit.stages.train import fold as fold_module

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY_MODEL = ("models=[{name: tiny, arch: Unet, encoder: tu-mobilenetv3_small_050, "
              "params: {encoder_depth: 3, decoder_channels: [16, 8, 8]}}]")
FAST = ["train.epochs=3", "train.batch_size=4", "train.deterministic=true", "train.progress=false",
        "train.max_steps_per_epoch=3", TINY_MODEL]


@pytest.fixture
def make_cfg(demo_cfg):
    def make(*overrides: str):
        cfg = demo_cfg(*FAST, *overrides)
        if not cfg.folds_file.exists():
            folds_stage.run(cfg)
        return cfg

    return make


def test_swa_averages_the_window_recomputes_batchnorm_and_keeps_the_best_epoch(make_cfg):
    cfg = make_cfg("train.average={method: swa, window: 0.5}")
    summary = train_fold(cfg, cfg.models[0], 0)
    paths = cfg.layout.fold("tiny", 0)
    best, single = checkpoint.load(paths.best), checkpoint.load(paths.best_epoch)
    assert best["averaged"] == ["epoch 2", "epoch 3"] and best["average"] == "swa"
    assert "averaged" not in single and summary["best_epoch"] == single["epoch"]
    assert summary["average"]["method"] == "swa" and not summary["average"]["in_sample"]
    assert summary["score"] == pytest.approx(best["scores"]["score"])
    assert not paths.ingredients()  # removed once the fold is done
    # BatchNorm statistics were measured again: no longer the mean of the ingredients' (nor any one epoch's)
    bn = next(k for k in best["model"] if k.endswith("running_var"))
    assert not torch.equal(best["model"][bn], single["model"][bn])


def test_a_greedy_soup_never_scores_below_its_best_ingredient_and_says_it_is_in_sample(make_cfg):
    cfg = make_cfg("train.average={method: soup, window: 1.0}")
    summary = train_fold(cfg, cfg.models[0], 0)
    avg = summary["average"]
    assert avg["in_sample"] and 1 <= len(avg["ingredients"]) <= 3
    assert avg["scores"]["score"] >= avg["best_epoch_scores"]["score"] - 1e-9
    # the honest figures beside: soup and best single epoch, each chosen on one half of the images, scored on the other
    assert set(avg["cross_fit"]) == {"soup", "best_single"}
    assert all(0 <= v <= 1 for v in avg["cross_fit"].values())
    best = checkpoint.load(cfg.layout.fold("tiny", 0).best)
    assert best["averaged"] == avg["ingredients"]


def test_a_fold_killed_after_its_average_was_written_redoes_the_same_average(make_cfg, monkeypatch, tmp_path):
    cfg = make_cfg("train.average={method: swa, window: 0.5}")
    whole = train_fold(cfg, cfg.models[0], 0, out_dir=tmp_path / "whole")

    def die(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(fold_module, "_write_oof", die)
    with pytest.raises(KeyboardInterrupt):
        train_fold(cfg, cfg.models[0], 0, out_dir=tmp_path / "killed")
    assert checkpoint.load(tmp_path / "killed" / "best.pt")["averaged"]  # the average was already in best.pt
    monkeypatch.undo()
    again = train_fold(cfg, cfg.models[0], 0, out_dir=tmp_path / "killed")
    assert again["average"] == whole["average"] and again["score"] == pytest.approx(whole["score"])
    a, b = (checkpoint.load(tmp_path / d / "best.pt")["model"] for d in ("whole", "killed"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_average_settings_that_cannot_work_are_refused_when_the_config_loads(make_cfg):
    with pytest.raises(ConfigError, match="train: .*average.at: cycles"):
        make_cfg("train.average={method: soup, at: cycles}")
    with pytest.raises(ConfigError, match="train.average.method"):
        make_cfg("train.average={method: mean}")
    with pytest.raises(ConfigError, match="predict.tta_scales.*must be > 0"):
        make_cfg("predict.tta_scales=[1, 0]")
    with pytest.raises(ConfigError, match="predict.tta_scales.*twice"):
        make_cfg("predict.tta_scales=[1, 1]")
    cycles = make_cfg("train.epochs=4", "train.schedule={name: cosine_restarts, cycles: 2}",
                      "train.average={method: swa, at: cycles}")
    assert averaging.Averaging.of(cycles.train).epochs == (2, 4)
    assert averaging.Averaging.of(make_cfg("train.epochs=10", "train.average={method: swa}").train).epochs == (
        8, 9, 10)


def _payload(model: nn.Module, arch: str = "Unet") -> dict:
    return checkpoint.weights_payload(model.state_dict(), {"name": "m", "arch": arch}, "binary", ["fg"], 1, 32, 1)


def test_checkpoint_average_is_the_mean_of_floats_and_refuses_two_architectures():
    torch.manual_seed(0)
    a, b = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2)), nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2))
    b[1].num_batches_tracked += 5
    mean = checkpoint.average([_payload(a), _payload(b)], ["a", "b"])
    assert torch.allclose(mean["model"]["0.weight"], (a[0].weight + b[0].weight).detach() / 2)
    assert mean["model"]["1.num_batches_tracked"] == a[1].num_batches_tracked and mean["averaged"] == ["a", "b"]
    with pytest.raises(SegkitError, match="b is another network than a.*FPN"):
        checkpoint.average([_payload(a), _payload(b, arch="FPN")], ["a", "b"])


def test_snapshot_merge_weights_predicts_with_one_network_made_again_when_a_source_changes(make_cfg):
    cfg = make_cfg("train.epochs=2", "train.schedule={name: cosine_restarts, cycles: 2}",
                   "predict.snapshot_merge=weights")
    train_fold(cfg, cfg.models[0], 0)
    paths = cfg.layout.fold("tiny", 0)
    sources = [paths.best, *paths.snapshots()]
    assert len(sources) == 3
    (mean_path,) = checkpoint.fold_checkpoints(cfg, "tiny", 0)
    assert mean_path == paths.snapshot_average
    mean = checkpoint.load(mean_path)
    loaded = [checkpoint.load(p)["model"] for p in sources]
    key = next(k for k in mean["model"] if k.endswith("weight") and mean["model"][k].is_floating_point())
    assert torch.allclose(mean["model"][key], sum(m[key] for m in loaded) / 3, atol=1e-6)
    made = mean_path.stat().st_mtime_ns
    assert checkpoint.fold_checkpoints(cfg, "tiny", 0) == [mean_path] and mean_path.stat().st_mtime_ns == made
    checkpoint.save(paths.snapshot(1), checkpoint.load(paths.snapshot(2)))  # a source changed
    checkpoint.fold_checkpoints(cfg, "tiny", 0)
    assert mean_path.stat().st_mtime_ns != made
    model, _ = checkpoint.load_model(mean_path)
    assert json.dumps(checkpoint.load(mean_path)["averaged"]) == json.dumps([p.name for p in sources])
    assert not model.training


class SizeSpy(nn.Module):
    """A 1x1 convolution that records the sizes it is called at."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 1)
        self.sizes: list[tuple[int, int]] = []

    def forward(self, x):
        self.sizes.append(tuple(x.shape[2:]))
        return self.conv(x)


def test_multi_scale_tta_runs_every_view_at_each_scale_and_merges_at_the_native_size():
    torch.manual_seed(0)
    spy = SizeSpy()
    x = torch.linspace(0, 1, 64 * 96).view(1, 1, 64, 96)  # smooth: resizing it back and forth changes little
    plain = TTAPredictor(spy, tta="flips", amp="none", chunk=4)(x)
    spy.sizes.clear()
    multi = TTAPredictor(spy, tta="flips", amp="none", chunk=4, scales=[0.5, 1, 1.5], multiple=32)(x)
    assert spy.sizes == [(32, 64), (64, 96), (96, 160)]  # one forward of the 4 flips at each scale
    assert multi.shape == plain.shape and torch.allclose(multi, plain, atol=0.02)
    assert scaled_size((101, 64), 1.25, 32) == (128, 96) and scaled_size((40, 40), 0.25, 32) == (32, 32)
    assert torch.equal(TTAPredictor(spy, tta="d4", amp="none", scales=[1])(x),
                       TTAPredictor(spy, tta="d4", amp="none")(x))


def test_a_greedy_soup_keeps_an_ingredient_only_when_the_mean_with_it_does_not_score_worse():
    def payload(w: float) -> dict:
        p = checkpoint.weights_payload({"w": torch.tensor([w])}, {"arch": "X"}, "binary", ["fg"], 1, 32, 1)
        return {**p, "scores": {"score": -(w - 1.3) ** 2}}

    def evaluate(p: dict, part) -> dict:
        return {"score": -(float(p["model"]["w"]) - 1.3) ** 2}

    soup = averaging.Soup({"a": payload(1.0), "b": payload(0.0), "c": payload(2.0)}, "score", "max", evaluate)
    names, row = soup.greedy()
    assert names == ["a", "c"] and row["score"] == pytest.approx(-(1.5 - 1.3) ** 2)  # b would pull the mean to 1.0
    assert float(soup.mean(names)["model"]["w"]) == pytest.approx(1.5)


def test_an_export_of_snapshot_merged_weights_is_one_network_a_fold(make_cfg):
    from segkit.stages import export
    from segkit.stages.train import run as train_run

    cfg = make_cfg("folds.n_splits=2", "train.epochs=2", "train.schedule={name: cosine_restarts, cycles: 2}",
                   "predict.snapshot_merge=weights")
    assert train_run(cfg) == 0
    assert export.run(cfg, format="onnx") == 0
    exported = sorted(str(p.relative_to(cfg.layout.export.dir)) for p in cfg.layout.export.dir.rglob("*.onnx"))
    assert exported == ["tiny/fold0/weights_mean.onnx", "tiny/fold1/weights_mean.onnx"]  # a network a fold, not 3


def test_a_store_s_stamp_records_the_tta_scales_so_changing_them_predicts_again(make_cfg):
    from segkit.inference.outputs import store_inputs

    plain, multi = make_cfg(), make_cfg("predict.tta_scales=[1, 1.5]")
    assert "tta_scales" not in store_inputs(plain, {}, "test")  # stores stamped before the key stay fresh
    assert store_inputs(multi, {}, "test")["tta_scales"] == [1.0, 1.5]
    merged = make_cfg("predict.snapshot_merge=weights")
    assert store_inputs(merged, {}, "test")["snapshot_merge"] == "weights"
