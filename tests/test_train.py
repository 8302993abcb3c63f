"""Training folds on the tiny demo competition: outputs, skip when complete, resume equals an uninterrupted run,
determinism, NaN policy, checkpoint keeping, multiclass, DDP's code path with a world of one, batch plans."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from segkit.artifacts.probs import ProbStore
from segkit.errors import SegkitError
from segkit.models import checkpoint
from segkit.stages import folds as folds_stage
from segkit.stages.train import run, train_fold
from segkit.stages.train.sampler import BatchPlan, split_counts

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY_MODEL = ("models=[{name: tiny, arch: Unet, encoder: tu-mobilenetv3_small_050, "
              "params: {encoder_depth: 3, decoder_channels: [16, 8, 8]}}]")
FAST = ["train.epochs=2", "train.batch_size=4", "train.deterministic=true", "train.progress=false",
        "train.schedule.warmup_epochs=0.5", "train.keep=[best, last, snapshots]", TINY_MODEL]


@pytest.fixture
def make_cfg(demo_cfg):
    def make(*overrides: str):
        cfg = demo_cfg(*FAST, *overrides)
        if not cfg.folds_file.exists():
            folds_stage.run(cfg)
        return cfg

    return make


def history(folder: Path) -> pd.DataFrame:
    return pd.read_csv(folder / "metrics.csv").drop(columns=["seconds"])


def test_a_fold_writes_everything_and_is_skipped_once_complete(make_cfg, capsys):
    cfg = make_cfg()
    assert run(cfg, fold=0) == 0
    out = cfg.layout.fold("tiny", 0).dir
    metrics = pd.read_csv(out / "metrics.csv")
    assert list(metrics.columns[:8]) == ["epoch", "lr", "encoder_lr", "train_loss", "val_loss", "dice", "iou", "score"]
    assert metrics["epoch"].tolist() == [1, 2] and metrics[["train_loss", "val_loss", "dice"]].notna().all().all()
    assert {"last.pt", "best.pt", "summary.json"} <= {p.name for p in out.iterdir()}

    store = ProbStore(out / "oof")
    folds = pd.read_csv(cfg.folds_file, dtype={"id": str})
    assert sorted(store.ids) == sorted(folds.loc[folds["fold"] == 0, "id"])
    first = store[store.ids[0]]
    assert first.dtype == np.uint8 and first.shape == (1, 32, 32)  # original size, K channels

    summary = json.loads((out / "summary.json").read_text())
    best = checkpoint.load(out / "best.pt")
    assert summary["best_epoch"] == best["epoch"]
    assert summary["score"] == pytest.approx(metrics.loc[metrics["epoch"] == best["epoch"], "score"].item())

    model, meta = checkpoint.load_model(out / "best.pt")
    assert meta["classes"] == ["object"] and not model.training
    with torch.no_grad():
        assert model(torch.zeros(1, 1, 32, 32)).shape == (1, 1, 32, 32)

    stamp = (out / "best.pt").stat().st_mtime_ns
    capsys.readouterr()
    run(cfg, fold=0)
    assert "complete; keeping it" in capsys.readouterr().out
    assert (out / "best.pt").stat().st_mtime_ns == stamp


def test_val_every_validates_only_those_epochs_and_the_last(make_cfg, capsys):
    cfg = make_cfg("train.epochs=3", "train.val_every=2")
    run(cfg, fold=0)
    metrics = pd.read_csv(cfg.layout.fold("tiny", 0).dir / "metrics.csv")
    assert metrics["score"].isna().tolist() == [True, False, False]  # epoch 2 by val_every, 3 as the last
    assert checkpoint.load(cfg.layout.fold("tiny", 0).dir / "best.pt")["epoch"] in (2, 3)
    lines = [line for line in capsys.readouterr().out.splitlines() if " epoch " in line and "/3:" in line]
    assert ["(not validated)" in line for line in lines] == [True, False, False]
    assert "nan" not in lines[0]


@pytest.mark.parametrize("monitor", ["score", "loss"])
def test_oof_holds_best_pt_predictions_with_one_pass_less_when_the_last_epoch_is_best(make_cfg, monkeypatch,
                                                                                       tmp_path, monitor):
    """The last epoch's validation writes the OOF store; a second pass with best.pt runs only when an earlier
    epoch was the best, and either way the store holds exactly what best.pt predicts."""
    from segkit.artifacts.probs import ProbWriter
    from segkit.compute.distributed import World
    from segkit.data import Competition
    from segkit.stages.train import validate as validate_module
    from segkit.stages.train.data import val_loader
    from segkit.stages.train.validate import evaluate

    calls = []
    monkeypatch.setattr(validate_module, "evaluate", lambda *a, **k: calls.append(1) or evaluate(*a, **k))
    cfg = make_cfg(f"train.monitor={monitor}", "train.epochs=3", "train.lr=0.05")
    summary = train_fold(cfg, cfg.models[0], 0)
    assert len(calls) == 3 + (summary["best_epoch"] != 3)

    out = cfg.layout.fold("tiny", 0).dir
    model, meta = checkpoint.load_model(out / "best.pt")
    if cfg.train.channels_last:  # the memory format the fold validated in: the same kernels, the same bits
        model = model.to(memory_format=torch.channels_last)
    store = ProbStore(out / "oof")
    again = ProbWriter(tmp_path / "again", meta["classes"])
    loader = val_loader(Competition(cfg.data, seed=cfg.seed), cfg.train, list(store.ids), World())
    evaluate(model, loader, None, meta["mode"], lambda p, t: 0.0, torch.device("cpu"), cfg.train.amp,
             cfg.train.channels_last, 0.5, writer=again)
    for image_id in store.ids:
        assert np.array_equal(store[image_id], np.load(again.path(image_id)))


class Killed(Exception):
    pass


def train_killed_after_first_epoch(monkeypatch, *args, **kwargs) -> None:
    """``train_fold(*args, **kwargs)``, killed right after the first epoch's last.pt is written."""
    real_save = checkpoint.save

    def save_then_die(path, payload):
        real_save(path, payload)
        if Path(path).name == "last.pt":
            raise Killed

    monkeypatch.setattr(checkpoint, "save", save_then_die)
    with pytest.raises(Killed):
        train_fold(*args, **kwargs)
    monkeypatch.setattr(checkpoint, "save", real_save)


def test_resume_continues_exactly_like_an_uninterrupted_run(make_cfg, monkeypatch, tmp_path):
    # Every piece of state a resume must restore is in play: EMA, bf16, accumulation, clipping, a positive-share
    # sampler, cosine restarts with snapshots, and a staged loss.
    extra = ["train.ema=0.9", "train.amp=bf16", "train.accumulate=2", "train.clip_grad=1.0",
             "train.positive_share=0.5", "train.schedule.name=cosine_restarts", "train.schedule.cycles=2",
             "train.loss_stages=[{until_epoch: 1, terms: {bce: 1, dice: 1}}, {terms: {lovasz: 1}}]"]
    cfg = make_cfg(*extra)
    model_cfg = cfg.models[0]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    train_fold(cfg, model_cfg, 0, out_dir=straight)

    train_killed_after_first_epoch(monkeypatch, cfg, model_cfg, 0, out_dir=resumed)
    assert checkpoint.load(resumed / "last.pt")["epoch"] == 1 and not (resumed / "oof").exists()
    train_fold(cfg, model_cfg, 0, out_dir=resumed)

    pd.testing.assert_frame_equal(history(straight), history(resumed))  # deterministic and resumed alike
    assert history(straight)["loss_terms"].tolist() == ["1*bce+1*dice", "1*lovasz"]
    for name in ("best.pt", "last.pt", "snapshot1.pt", "snapshot2.pt"):
        a, b = checkpoint.load(straight / name)["model"], checkpoint.load(resumed / name)["model"]
        assert all(torch.equal(a[k], b[k]) for k in a), name
    a, b = ProbStore(straight / "oof"), ProbStore(resumed / "oof")
    assert all(np.array_equal(a[i], b[i]) for i in a.ids)


def test_a_changed_config_refuses_to_resume(make_cfg, monkeypatch, tmp_path):
    cfg = make_cfg("train.epochs=1")
    train_killed_after_first_epoch(monkeypatch, cfg, cfg.models[0], 0, out_dir=tmp_path / "f")
    changed = make_cfg("train.epochs=1", "train.lr=0.01")
    with pytest.raises(SegkitError, match=r"another config \(train\.lr: 0\.002 -> 0\.01\)"):
        train_fold(changed, changed.models[0], 0, out_dir=tmp_path / "f")


def test_a_killed_fold_does_not_resume_on_other_validation_images(make_cfg, monkeypatch, tmp_path):
    """The checkpoint's identity says nothing of which images the fold validates on; the fold's stamp does."""
    from segkit.stages import folds as folds_module
    cfg = make_cfg("train.epochs=2")
    train_killed_after_first_epoch(monkeypatch, cfg, cfg.models[0], 0)
    cfg.folds_file.unlink()
    folds_module.run(make_cfg("train.epochs=2", "folds.seed=7"))  # the fold file rebuilt: other folds
    with pytest.raises(SegkitError, match="another config .its validation images .the fold file changed"):
        train_fold(cfg, cfg.models[0], 0)


def _nan_at(monkeypatch, call: int):
    from segkit.losses import SegLoss

    real = SegLoss.forward
    count = {"n": 0}

    def forward(self, logits, mask, aux=None, has=None, edges=None):
        total, parts = real(self, logits, mask, aux, has, edges)
        if torch.is_grad_enabled():
            count["n"] += 1
            if count["n"] == call:
                total = total * float("nan")
        return total, parts

    monkeypatch.setattr(SegLoss, "forward", forward)


def test_nan_loss_stops_with_the_place_and_keeps_the_last_good_checkpoint(make_cfg, monkeypatch, tmp_path):
    cfg = make_cfg()
    _nan_at(monkeypatch, call=5)  # 4 batches per epoch: the first step of epoch 2
    with pytest.raises(SegkitError, match=r"models\[tiny\] fold 0: loss is nan at epoch 2 step 1"):
        train_fold(cfg, cfg.models[0], 0, out_dir=tmp_path / "f")
    assert checkpoint.load(tmp_path / "f" / "last.pt")["epoch"] == 1


def test_nan_policy_skip_drops_the_step_and_goes_on(make_cfg, monkeypatch, tmp_path):
    cfg = make_cfg("train.nan_policy=skip", "train.epochs=1")
    _nan_at(monkeypatch, call=2)
    train_fold(cfg, cfg.models[0], 0, out_dir=tmp_path / "f")
    metrics = pd.read_csv(tmp_path / "f" / "metrics.csv")
    assert metrics["skipped"].tolist() == [1] and metrics["steps"].tolist() == [3]
    assert np.isfinite(metrics["train_loss"]).all()


def test_only_the_asked_checkpoints_are_kept(make_cfg, tmp_path):
    cfg = make_cfg("train.keep=[best]", "train.epochs=2", "train.schedule.name=cyclic", "train.schedule.cycles=2")
    train_fold(cfg, cfg.models[0], 1, out_dir=tmp_path / "f")
    assert {p.name for p in (tmp_path / "f").glob("*.pt")} == {"best.pt"}


def test_extra_images_take_their_share_of_every_batch(make_cfg, monkeypatch, tmp_path):
    from segkit.data import Competition
    from segkit.stages.train import ExtraTrainData
    from segkit.stages.train import data as train_data

    cfg = make_cfg("train.epochs=1", "train.amp=fp16")
    test_ids = Competition(cfg.data).test_folder.ids()
    extra = ExtraTrainData(test_ids, lambda i: np.zeros((1, 32, 32), np.uint8), share=0.5)
    plans = []
    real_init = train_data.BatchPlan.__init__

    def spy(self, *a, **k):
        real_init(self, *a, **k)
        plans.append(self)

    monkeypatch.setattr(train_data.BatchPlan, "__init__", spy)
    train_fold(cfg, cfg.models[0], 0, out_dir=tmp_path / "f", extra=extra)
    plan = plans[0]
    n_real = len(plan.pools[0])
    assert plan.counts == [2, 2] and all(sum(i >= n_real for i in b) == 2 for b in plan.plan())
    assert ProbStore.is_complete(tmp_path / "f" / "oof")


def test_multiclass_fold(demo_multiclass_root, tmp_path):
    from conftest import CONFIGS

    from segkit.config import load_config

    cfg = load_config(CONFIGS / "demo.yaml", [
        f"data.root={demo_multiclass_root}", f"paths.runs={tmp_path / 'runs'}", f"paths.folds={tmp_path / 'folds'}",
        "data.mode=multiclass", "data.classes=[round, streak]", "data.rle.id_class_sep=_", *FAST,
        "train.epochs=1", "train.loss={ce: 1, dice: 1, lovasz: 1}", "train.class_weights=[1, 2]",
    ])
    folds_stage.run(cfg)
    summary = train_fold(cfg, cfg.models[0], 0)
    store = ProbStore(cfg.layout.fold("tiny", 0).dir / "oof")
    probs = store.read_float(store.ids[0])
    assert probs.shape == (2, 32, 32) and probs.sum(0).max() <= 1 + 2 / 255  # softmax foreground channels
    assert 0 <= summary["dice"] <= 1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_code_path_with_a_world_of_one(make_cfg, monkeypatch, tmp_path):
    import torch.distributed as dist

    from segkit.compute import distributed
    for key, value in {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
                       "MASTER_PORT": str(_free_port())}.items():
        monkeypatch.setenv(key, value)
    cfg = make_cfg("train.epochs=1", "train.sync_bn=true")
    try:
        train_fold(cfg, cfg.models[0], 2, out_dir=tmp_path / "f")
        assert dist.is_initialized() and dist.get_backend() == "gloo"
        world = distributed.setup(torch.device("cpu"))
        assert distributed.gather(world, 3) == [3]
    finally:
        distributed.teardown()
    assert not dist.is_initialized()
    assert ProbStore.is_complete(tmp_path / "f" / "oof")


def test_batch_plan_shares_determinism_and_sharding():
    assert split_counts([0.25, 0.75], 6) == [2, 4] and sum(split_counts([1 / 3] * 3, 8)) == 8
    pos, neg = list(range(0, 5)), list(range(5, 40))
    plan = BatchPlan([pos, neg], batch_size=8, seed=1, shares=[0.5, 0.5])
    batches = list(plan)
    assert len(batches) == 5 and all(sum(i < 5 for i in b) == 4 for b in batches)  # a small pool is cycled
    assert batches == list(BatchPlan([pos, neg], batch_size=8, seed=1, shares=[0.5, 0.5]))
    plan.set_epoch(1)
    assert list(plan) != batches

    whole = BatchPlan([list(range(20))], batch_size=3, seed=0)
    assert len(whole) == 6 and len({i for b in whole for i in b}) == 18  # no repeats; partial batch dropped
    ranks = [BatchPlan([list(range(20))], batch_size=3, seed=0, rank=r, world_size=2) for r in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]) == 3
    seen = [i for r in ranks for b in r for i in b]
    assert len(seen) == len(set(seen)) == 18
    assert len(BatchPlan([list(range(20))], batch_size=3, seed=0, max_batches=2)) == 2


def test_cli_trains_one_model_and_fold(make_cfg, demo_root, tmp_path):
    from conftest import CONFIGS

    from segkit.cli import main

    cfg = make_cfg()
    code = main(["train", "--config", str(CONFIGS / "demo.yaml"), "--model", "tiny", "--fold", "9",
                 f"data.root={demo_root}", f"paths.runs={cfg.paths.runs}", f"paths.folds={cfg.paths.folds}",
                 *FAST])
    assert code == 2  # an unknown fold is a one-line error, not a traceback
    assert os.environ.get("RANK") is None


def test_auto_precision_trains_in_float32_on_a_cpu_without_native_bf16(make_cfg, monkeypatch, tmp_path):
    from segkit.compute import device
    monkeypatch.setattr(device, "cpu_has_native_bf16", lambda: False)
    runs = {}
    for amp in ("none", "auto"):
        cfg = make_cfg("train.epochs=1", f"train.amp={amp}")
        train_fold(cfg, cfg.models[0], 0, out_dir=tmp_path / amp)
        runs[amp] = history(tmp_path / amp)
    pd.testing.assert_frame_equal(runs["auto"], runs["none"])  # the very same float32 run
    # The checkpoint keeps the config's word, so another machine may resume the fold in its own precision.
    assert checkpoint.load(tmp_path / "auto" / "last.pt")["train_state"]["identity"]["train"]["amp"] == "auto"


def test_auto_precision_trains_in_bf16_on_a_cpu_with_native_bf16(make_cfg, monkeypatch, tmp_path):
    """The other CPU kind's branch of `auto`, exercised whatever this machine is: bf16 autocast runs on every CPU
    (emulated where it is not native), so `auto` on a CPU said to have native bf16 must be the bf16 run."""
    from segkit.compute import device
    monkeypatch.setattr(device, "cpu_has_native_bf16", lambda: True)
    runs = {}
    for amp in ("bf16", "auto", "none"):
        cfg = make_cfg("train.epochs=1", f"train.amp={amp}")
        train_fold(cfg, cfg.models[0], 0, out_dir=tmp_path / amp)
        runs[amp] = history(tmp_path / amp)
    pd.testing.assert_frame_equal(runs["auto"], runs["bf16"])
    assert not runs["bf16"]["train_loss"].equals(runs["none"]["train_loss"])  # bf16 really ran


def test_a_scaled_network_trains_and_comes_back_scaled_from_its_checkpoint(make_cfg, tmp_path):
    cfg = make_cfg("train.epochs=1", "models.0.input_scale=2")
    train_fold(cfg, cfg.models[0], 0, out_dir=tmp_path / "f")
    model, meta = checkpoint.load_model(tmp_path / "f" / "best.pt")
    assert meta["model_cfg"]["input_scale"] == 2
    seen = []
    model.encoder.register_forward_pre_hook(lambda m, args: seen.append(tuple(args[0].shape[-2:])))
    with torch.no_grad():
        assert model(torch.zeros(1, 1, 32, 32)).shape == (1, 1, 32, 32)
    assert seen == [(64, 64)]  # the encoder saw the input at twice its size
