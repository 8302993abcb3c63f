"""Real multi-process DDP on the CPU: ``torchrun --nproc_per_node 2`` (Gloo) trains the tiny demo's folds and
predicts its test set, each rank traced by tests/ddp_rank.py. Rank 1 is killed with SIGKILL as fold 0's second
epoch begins; torchrun takes the other rank down, and a relaunch resumes the fold from its last checkpoint."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from conftest import CONFIGS

HERE = Path(__file__).resolve().parent
EPOCHS = 3
TINY = ("models=[{name: tiny, arch: Unet, encoder: tu-resnet10t, "
        "params: {encoder_depth: 3, decoder_channels: [16, 8, 4]}}]")

pytestmark = pytest.mark.slow


def _args(demo_root, tmp_path) -> list[str]:
    # float32 in training and prediction: the comparisons below are exact on either CPU kind
    return ["--config", str(CONFIGS / "demo.yaml"), f"data.root={demo_root}", f"paths.runs={tmp_path / 'runs'}",
            f"paths.folds={tmp_path / 'folds'}", f"paths.submissions={tmp_path / 'subs'}", TINY, "device=cpu",
            f"train.epochs={EPOCHS}", "train.batch_size=4", "train.amp=none", "predict.amp=none",
            "train.progress=false", "train.keep=[best, last]", "train.sync_bn=true", "train.threads=1",
            "predict.tta=hflip", "predict.snapshots=false", "predict.batch_size=3"]


def _torchrun(tmp_path: Path, name: str, command: list[str], **env) -> SimpleNamespace:
    trace = tmp_path / f"trace_{name}"
    trace.mkdir()
    environ = dict(os.environ, SEGKIT_TEST_TRACE=str(trace), OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1",
                   SEGKIT_PROGRESS="0", **env)
    out = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          str(HERE / "ddp_rank.py"), *command], capture_output=True, text=True, env=environ,
                         timeout=300)
    events = {r: [json.loads(line) for line in (trace / f"rank{r}.jsonl").read_text().splitlines()]
              for r in (0, 1) if (trace / f"rank{r}.jsonl").exists()}
    return SimpleNamespace(rc=out.returncode, log=out.stdout + out.stderr, events=events)


@pytest.fixture(scope="module")
def ddp(demo_root, tmp_path_factory):
    from segkit.cli import main
    from segkit.config import load_config

    tmp = tmp_path_factory.mktemp("ddp")
    args = _args(demo_root, tmp)
    assert main(["folds", *args]) == 0
    killed = _torchrun(tmp, "killed", ["train", "--fold", "0", *args], SEGKIT_TEST_KILL_AT_EPOCH="2")
    resumed = _torchrun(tmp, "resumed", ["train", *args])
    predicted = _torchrun(tmp, "predict", ["predict", *args])
    return SimpleNamespace(cfg=load_config(args[1], args[2:]), args=args, killed=killed, resumed=resumed,
                           predicted=predicted)


def _folds(cfg) -> dict[int, tuple[list[str], list[str]]]:
    from segkit.data import Competition
    from segkit.data.folds import fold_ids, load_folds

    table = load_folds(cfg, Competition(cfg.data, seed=cfg.seed))
    return {k: fold_ids(table, k) for k in sorted(table["fold"].unique())}


def test_a_killed_rank_takes_the_launch_down_and_a_relaunch_resumes_the_fold(ddp):
    assert ddp.killed.rc != 0, ddp.killed.log
    assert any(e["event"] == "killed" for e in ddp.killed.events[1])
    assert "fold 0 epoch 1/3" in ddp.killed.log and "fold 0 epoch 2/3" not in ddp.killed.log
    assert ddp.resumed.rc == 0, ddp.resumed.log[-3000:]
    assert "models[tiny] fold 0: resuming after epoch 1" in ddp.resumed.log
    epochs = {(e["where"], e["epoch"]) for e in ddp.resumed.events[0] if e["event"] == "batch"}
    assert ("models[tiny] fold 0", 1) not in epochs and ("models[tiny] fold 0", 2) in epochs
    import pandas as pd

    history = pd.read_csv(ddp.cfg.layout.fold("tiny", 0).metrics)
    assert history["epoch"].tolist() == [1, 2, 3]


def test_every_training_image_is_seen_once_an_epoch_across_the_ranks(ddp):
    folds = _folds(ddp.cfg)
    launches = [ddp.killed, ddp.resumed]
    checked = 0
    for launch in launches:
        seen: dict[tuple, dict[int, list[str]]] = defaultdict(lambda: defaultdict(list))
        for rank, events in launch.events.items():
            for e in events:
                if e["event"] == "batch":
                    seen[(e["where"], e["epoch"])][rank] += e["ids"]
        for (where, epoch), by_rank in seen.items():
            if launch is ddp.killed and epoch > 1:  # the epoch rank 1 died in: rank 0 alone got into it
                assert set(by_rank) == {0}
                continue
            fold = int(where.rsplit(" ", 1)[1])
            assert set(by_rank) == {0, 1}, (where, epoch)
            assert not set(by_rank[0]) & set(by_rank[1])  # the ranks' shares are disjoint
            everything = by_rank[0] + by_rank[1]
            # 16 training images, batches of 4 on 2 ranks: every image once, none dropped
            assert Counter(everything) == Counter(folds[fold][0]), (where, epoch)
            checked += 1
    assert checked == 1 + EPOCHS * 3 - 1  # fold 0's epoch 1 before the kill, its 2 and 3 after, folds 1 and 2


def test_checkpoints_and_manifests_are_written_once_by_rank_zero(ddp):
    for launch in (ddp.killed, ddp.resumed, ddp.predicted):
        assert not [e for e in launch.events.get(1, []) if e["event"] in ("checkpoint", "manifest")]
    saves = Counter((e["path"], e["epoch"]) for launch in (ddp.killed, ddp.resumed)
                    for e in launch.events[0] if e["event"] == "checkpoint")
    assert saves and max(saves.values()) == 1
    last = ddp.cfg.layout.fold("tiny", 0).last
    assert [epoch for (path, epoch) in saves if path == str(last)] == [1, 2, 3]
    manifests = Counter(e["folder"] for e in ddp.resumed.events[0] if e["event"] == "manifest")
    assert sorted(manifests) == sorted(str(ddp.cfg.layout.fold("tiny", k).oof) for k in range(3))
    assert set(manifests.values()) == {1}


def test_the_gathered_validation_score_is_a_single_process_evaluation_of_the_checkpoint(ddp):
    import torch

    from segkit.artifacts.probs import ProbStore
    from segkit.compute.distributed import World
    from segkit.data import Competition
    from segkit.losses import LossSchedule
    from segkit.metrics import get_metric
    from segkit.models import checkpoint
    from segkit.stages.train.data import val_loader
    from segkit.stages.train.validate import evaluate

    cfg = ddp.cfg
    comp = Competition(cfg.data, seed=cfg.seed)
    tcfg = cfg.train_for(cfg.models[0])
    for k, (_, val_ids) in _folds(cfg).items():
        paths = cfg.layout.fold("tiny", k)
        summary = json.loads(paths.summary.read_text())
        model, meta = checkpoint.load_model(paths.best, torch.device("cpu"))
        loss = LossSchedule(tcfg, meta["mode"], len(meta["classes"])).for_epoch(EPOCHS)
        single = evaluate(model, val_loader(comp, tcfg, val_ids, World()), loss, meta["mode"],
                          get_metric(cfg.metric), torch.device("cpu"))
        for key in ("dice", "iou", "score"):
            assert single[key] == pytest.approx(summary[key], abs=1e-9), (k, key)
        # The loss is not per image: its Dice term pools each batch, and the ranks batch other images together
        # (ids[r::2]) than one process does, so it agrees only closely.
        assert single["val_loss"] == pytest.approx(summary["val_loss"], rel=1e-2)
        assert sorted(ProbStore(paths.oof).ids) == sorted(val_ids)  # both ranks' images are in the store


def test_predict_under_torchrun_shards_the_test_images_and_equals_one_process(ddp, capsys):
    from segkit.artifacts.probs import ProbStore
    from segkit.cli import main
    from segkit.data import Competition

    assert ddp.predicted.rc == 0, ddp.predicted.log[-3000:]
    cfg = ddp.cfg
    test = cfg.layout.model("tiny").test
    writes = {r: [e["id"] for e in events if e["event"] == "write" and e["folder"] == str(test)]
              for r, events in ddp.predicted.events.items()}
    ids = Competition(cfg.data, seed=cfg.seed).test_ids
    assert writes[0] and writes[1] and not set(writes[0]) & set(writes[1])  # one writer per file
    assert sorted(writes[0] + writes[1]) == sorted(ids)
    sharded = {i: np.array(ProbStore(test)[i]) for i in ids}
    cfg.layout.model("tiny").test_stamp.unlink()  # predict the store again, in this one process
    for f in test.iterdir():
        f.unlink()
    assert main(["predict", *ddp.args]) == 0
    store = ProbStore(test)
    assert all(np.array_equal(store[i], sharded[i]) for i in ids)
