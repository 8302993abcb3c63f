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
    # the probe's own seconds come out of the fold's minutes (ISBI's: 30 s of 146)
    probed = epochs_for(10, 0.5, 100, 20.0, 2, 1, spent=45.0)  # 8.92 fit
    assert probed.epochs == 9 and "after 45 s of probing" in probed.text
    with pytest.raises(ConfigError, match="give at least 2.1"):
        epochs_for(1.2, 0.5, 100, 20.0, 2, 1, spent=45.0)


class Sized:
    """A validation set of mixed sizes, smallest first (as a mixed-size validation loader orders it)."""

    def __init__(self, sides: list[int]):
        self.sides = sides

    def __len__(self) -> int:
        return len(self.sides)

    def __getitem__(self, i: int) -> int:
        return self.sides[i]

    def working_size(self, i: int) -> tuple[int, int]:
        return self.sides[i], self.sides[i]


def test_validation_is_timed_across_its_sizes_not_on_its_smallest_batches(monkeypatch):
    """Nine small images and three large ones, a pass costing its pixels: the estimate sees the large ones."""
    from torch.utils.data import DataLoader

    from segkit.stages.train import budget

    sides = [100] * 9 + [400] * 3
    loader = DataLoader(Sized(sides), batch_size=3, collate_fn=list)
    clock = {"now": 0.0}
    monkeypatch.setattr(budget.time, "perf_counter", lambda: clock["now"])

    def validate(batches):  # a second per 10 000 pixels it is shown
        clock["now"] += sum(max(batch) ** 2 * len(batch) for batch in batches) / 1e4

    whole = sum(s * s for s in sides) / 1e4  # 57 s
    assert budget.time_validation(validate, loader) == pytest.approx(whole)
    # scaled by pixels, not by batches: the first batch alone (3 s) times four batches would say 12 s
    assert budget.time_validation(validate, loader, batches=1) == pytest.approx(whole)


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
