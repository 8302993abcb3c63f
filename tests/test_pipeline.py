"""``segkit run`` end to end on the tiny demo: a second run on a finished experiment (pseudo rounds included) does
no work and changes no file; a run narrowed to one model and fold runs that slice and stops before the stages
that need every fold; a finished fold is never retrained under another config."""

from __future__ import annotations

import pytest
from conftest import CONFIGS

from segkit.cli import main

TINY = ("models=[{name: tiny, arch: Unet, encoder: tu-resnet10t, "
        "params: {encoder_depth: 3, decoder_channels: [16, 8, 4]}}]")


def args(demo_root, tmp_path, *extra: str) -> list[str]:
    return ["--config", str(CONFIGS / "demo.yaml"), f"data.root={demo_root}", f"paths.runs={tmp_path / 'runs'}",
            f"paths.folds={tmp_path / 'folds'}", f"paths.submissions={tmp_path / 'subs'}", TINY, "device=cpu",
            "folds.n_splits=2", "train.epochs=1", "train.batch_size=4", "train.max_steps_per_epoch=2",
            "train.progress=false", "train.keep=[best]", "predict.tta=hflip", "predict.repredict_oof=true",
            "ensemble.methods=[mean]", "tune.morph_radii=[1]", *extra]


def files(root) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_mtime_ns, p.stat().st_size) for p in root.rglob("*") if p.is_file()}


def test_a_second_run_on_a_finished_experiment_does_no_work(demo_root, tmp_path, capsys, one_torch_thread):
    run = ["run", *args(demo_root, tmp_path, "pseudo.rounds=1", "pseudo.confident_share=0")]
    assert main(run) == 0
    first = capsys.readouterr().out
    assert "tiny_pl1 fold 1" in first and "CV dice" in first
    before = files(tmp_path)
    assert any("ensemble_pl1/stamp.json" in p for p in before) and any("pseudo/round1/stamp.json" in p for p in before)
    assert main(run) == 0
    again = capsys.readouterr().out
    assert files(tmp_path) == before  # not one file written, touched or removed
    assert "epoch" not in again and "images/s" not in again and "wrote" not in again
    kept = [line for line in again.splitlines() if "up to date and complete; keeping it" in line]
    # check, folds, 2 x 2 folds, 2 test stores, round 0's 2 per-fold test stores (a round follows), 2 OOF
    # re-predictions, 2 ensembles, the round's labels, tune, submit, evaluate, report
    assert len(kept) == 19, "\n".join(kept)
    for unit in ("check:", "folds:", "models[tiny] fold 0", "models[tiny_pl1] fold 1", "predict: models[tiny] test",
                 "predict: models[tiny] fold 1 test", "OOF re-prediction", "ensemble:", "pseudo: round 1", "tune:",
                 "submit:", "evaluate:", "report:"):
        assert any(line.startswith(unit) or unit in line for line in kept), unit


def test_a_narrowed_run_does_its_slice_and_stops_before_the_stages_that_need_every_fold(demo_root, tmp_path, capsys,
                                                                                       one_torch_thread):
    from segkit.artifacts.probs import ProbStore
    from segkit.config import load_config

    assert main(["run", "--model", "tiny", "--fold", "0", *args(demo_root, tmp_path)]) == 0
    out = capsys.readouterr().out
    cfg = load_config(CONFIGS / "demo.yaml", args(demo_root, tmp_path)[2:])
    paths = cfg.layout.model("tiny")
    assert ProbStore.is_complete(paths.fold(0).oof) and not paths.fold(1).dir.exists()
    assert (paths.oof_tta / "fold0.stamp.json").exists() and not ProbStore.is_complete(paths.oof_tta)
    assert "models[tiny] fold 0: " in out and "(training OOF)" in out and "(TTA OOF)" in out
    assert "ensemble, tune, submit, evaluate, report: not run" in out and "model tiny and fold 0" in out
    assert not cfg.layout.ensemble.dir.exists() and not cfg.layout.tune.json.exists()
    # the whole run then does the rest: fold 1, the test store, and the OOF store once both folds are in
    assert main(["run", *args(demo_root, tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "models[tiny] fold 0: up to date and complete; keeping it" in out
    assert "fold 0 OOF re-prediction" not in out.replace("fold 0 OOF re-prediction: up", "")
    assert ProbStore.is_complete(paths.oof_tta) and cfg.layout.submission.exists()
    assert main(["train", "--fold", "7", *args(demo_root, tmp_path)]) == 2  # a fold the fold file lacks


def test_a_finished_fold_is_never_retrained_under_another_config(demo_root, tmp_path, capsys, one_torch_thread):
    assert main(["folds", *args(demo_root, tmp_path)]) == 0
    assert main(["train", "--fold", "0", *args(demo_root, tmp_path)]) == 0
    best = (tmp_path / "runs" / "demo" / "tiny" / "fold0" / "best.pt").stat().st_mtime_ns
    capsys.readouterr()
    assert main(["train", "--fold", "0", *args(demo_root, tmp_path, "train.lr=0.01")]) == 2
    err = capsys.readouterr().err
    assert "trained under another config (train.lr: 0.002 -> 0.01)" in err and "delete" in err
    assert (tmp_path / "runs" / "demo" / "tiny" / "fold0" / "best.pt").stat().st_mtime_ns == best
    # what only changes speed or bookkeeping is not a change of what the fold computes
    assert main(["train", "--fold", "0", *args(demo_root, tmp_path, "train.workers=0", "train.progress=true")]) == 0
    assert "keeping it" in capsys.readouterr().out


@pytest.mark.parametrize("override,message", [
    ("predict.tta=d5", "predict.tta: unknown tta 'd5'"),
    ("ensemble.methods=[mean, medain]", "ensemble.methods: unknown ensemble method 'medain'"),
    ("ensemble.stack_params={num_leafs: 7}", "ensemble.stack_params: unknown LightGBM parameter 'num_leafs'"),
    ("models.0.encoder=resnet19", "models[tiny].encoder: unknown encoder 'resnet19'"),
    ("models.0.encoder=tu-resnet10z", "models[tiny].encoder: unknown encoder 'tu-resnet10z'"),
    # a timm encoder: timm refuses the name when the network is built (on the meta device, before any work)
    ("models.0.params.decoder_chanels=[8]", "unexpected keyword argument 'decoder_chanels'"),
    # an smp encoder would drop it without a word
    ("models=[{name: b, encoder: resnet18, params: {decoder_chanels: [8]}}]",
     "models[b].params: Unet takes no 'decoder_chanels' (smp would ignore it)"),
    ("models.0.params.decoder_channels=[16, 8]", "models[tiny]: cannot build Unet"),
    ("metric=dicee", "metric: unknown metric 'dicee'"),
    ("train.monitor=dise", "train.monitor: 'dise'"),
    ("ensemble.choose=stak", "ensemble.choose: 'stak'"),
])
def test_every_config_name_is_checked_before_any_work(demo_root, tmp_path, capsys, override, message):
    assert main(["run", *args(demo_root, tmp_path, override)]) == 2
    err = capsys.readouterr().err
    assert message in err and "command line" in err, err  # the key, and where it was set
    assert not (tmp_path / "runs").exists() and not (tmp_path / "folds").exists()  # nothing was done


def test_a_typo_in_a_config_file_names_the_file(demo_root, tmp_path, capsys):
    exp = tmp_path / "exp.yaml"
    exp.write_text(f"base: {CONFIGS / 'demo.yaml'}\npredict:\n  tta: flip\n")
    assert main(["predict", "--config", str(exp), f"data.root={demo_root}", f"paths.runs={tmp_path / 'runs'}"]) == 2
    assert f"{exp}: predict.tta: unknown tta 'flip'" in capsys.readouterr().err


def test_lightgbm_parameter_names_come_from_lightgbm():
    from segkit.catalog import lightgbm_parameters
    from segkit.ensemble.stacking import EMPTY_PARAMS, PIXEL_PARAMS

    known = lightgbm_parameters()
    assert set(PIXEL_PARAMS) | set(EMPTY_PARAMS) <= known  # segkit's own defaults pass the check
    assert {"num_leaves", "min_child_samples", "reg_lambda", "eta"} <= known and "num_leafs" not in known


def test_auto_sizes_resolve_on_the_cpu_and_a_missing_gpu_is_refused(demo_root, tmp_path, capsys, one_torch_thread):
    import torch

    auto = ("train.workers=auto", "predict.workers=auto", "predict.batch_size=auto")
    assert main(["run", *args(demo_root, tmp_path, *auto)]) == 0
    assert (tmp_path / "subs" / "demo.csv").exists()
    capsys.readouterr()
    if not torch.cuda.is_available():  # refused before any stage, a finished experiment included
        for command in ("train", "run"):
            assert main([command, *args(demo_root, tmp_path, "device=cuda")]) == 2
            err = capsys.readouterr().err
            assert "device: 'cuda' asked for but no CUDA GPU is available" in err and "command line" in err
