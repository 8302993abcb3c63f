"""train.minutes: a fold's epochs from the minutes it may take here (the arithmetic, the refusal of a budget too
small, and a fold that trains as many epochs as its last.pt records)."""

from __future__ import annotations

import pandas as pd
import pytest
from conftest import CONFIGS

from segkit.errors import ConfigError
from segkit.stages.train.budget import epochs_for

TINY = ("models=[{name: tiny, arch: Unet, encoder: tu-resnet10t, params: {encoder_depth: 3, decoder_channels: "
        "[16, 8, 4]}}]")


def test_epochs_that_fit_the_minutes_validation_and_whole_cycles_included():
    # 100 steps of 0.5 s and 20 s of validation every 2 epochs: 60 s an epoch, the last validation on top
    plan = epochs_for(10, 0.5, 100, 20.0, 2, 1)  # 9.67 epochs fit: 10 (+3 %) is nearer than 9 (-7 %)
    assert plan.epochs == 10 and plan.epoch_seconds == 60.0 and "10 epochs" in plan.text
    assert epochs_for(9.5, 0.5, 100, 20.0, 2, 1).epochs == 9  # 9.17 fit
    assert epochs_for(10, 0.5, 100, 20.0, 2, 4).epochs == 8  # whole cycles of a cyclic schedule: 2.4 of 4 epochs
    with pytest.raises(ConfigError, match="give at least 1.4"):  # 0.87 of an epoch fits: not rounded up to one
        epochs_for(1.2, 0.5, 100, 20.0, 2, 1)
    with pytest.raises(ConfigError, match=r"train.minutes: 0.5 minutes hold no epoch here .* give at least 1.4"):
        epochs_for(0.5, 0.5, 100, 20.0, 2, 1)


def test_a_fold_trains_the_epochs_it_derived_and_records_them(demo_root, tmp_path, one_torch_thread, capsys):
    from segkit.cli import main
    from segkit.config import load_config
    from segkit.models import checkpoint

    args = ["--config", str(CONFIGS / "demo.yaml"), f"data.root={demo_root}", f"paths.runs={tmp_path / 'runs'}",
            f"paths.folds={tmp_path / 'folds'}", TINY, "device=cpu", "folds.n_splits=2", "train.minutes=0.05",
            "train.batch_size=4", "train.pad_to=8", "train.progress=false", "train.keep=[best, last]",
            "train.val_every=4"]
    assert main(["folds", *args]) == 0
    assert main(["train", *args]) == 0
    out = capsys.readouterr().out
    assert "train.minutes 0.05: " in out
    cfg = load_config(args[1], args[2:])
    paths = cfg.layout.fold("tiny", 0)
    saved = checkpoint.load(paths.last)
    rows = pd.read_csv(paths.metrics)
    assert len(rows) >= 1 and saved["train_state"]["epochs"] == len(rows)
    assert f"epoch {len(rows)}/{len(rows)}:" in out
    # a resumed fold keeps the epochs its last.pt recorded, whatever this machine would measure now
    from segkit.stages.train.fold import _epochs_in_minutes

    saved["train_state"]["epochs"] = 7
    assert _epochs_in_minutes(None, None, None, cfg.train, None, "cpu", None, saved, "x") == 7
