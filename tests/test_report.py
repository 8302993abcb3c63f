"""`segkit report` on a tiny fake run folder: markdown tables and PNG plots from whatever artifacts exist."""

import json

import numpy as np
import pandas as pd
import pytest
from test_tune import fake_ensemble

from segkit.stages.report import md_table, pick_examples, score_by_size


def fake_training(cfg, model: str, folds=(0, 1)) -> None:
    for fold in folds:
        epochs = np.arange(1, 5)
        frame = pd.DataFrame({"epoch": epochs, "lr": 1e-3 / epochs, "train_loss": 1 / epochs,
                              "val_loss": 1.2 / epochs + 0.05 * (epochs == 4),
                              "dice": [0.5, 0.7, 0.8 + fold / 100, 0.75],
                              "iou": [0.4, 0.55, 0.66, 0.6]})
        path = cfg.run_dir / model / f"fold{fold}" / "metrics.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        frame.to_csv(path, index=False)


def test_report_from_a_full_fake_run(demo_cfg, capsys):
    from segkit.stages import report, tune
    cfg = demo_cfg("tune.morph_radii=[1]")
    fake_training(cfg, "unet_r18")
    fake_ensemble(cfg)
    pd.DataFrame({"method": ["mean", "vote"], "cv": [0.81, 0.79]}).to_csv(cfg.run_dir / "ensemble" / "cv.csv",
                                                                            index=False)
    (cfg.run_dir / "ensemble" / "choice.json").write_text(json.dumps({"method": "mean", "cv": 0.81}))
    tune.run(cfg)
    assert report.run(cfg) == 0
    out_dir = cfg.run_dir / "report"
    text = (out_dir / "report.md").read_text()
    for heading in ("## Training", "## Ensemble", "## Post-processing", "## Final CV", "## Score by mask size",
                    "## OOF examples"):
        assert heading in text
    assert "| unet_r18 | 0 | 4 | 3 | 0.8000 |" in text  # best epoch 3 by dice
    assert "| unet_r18 | 1 | 4 | 3 | 0.8100 |" in text and "| unet_r18 | mean |" in text
    assert "| mean | 0.8100 |" in text and "Chosen: method: mean" in text
    assert "| baseline | p>0.50 |" in text and "| threshold |" in text
    tuned = json.loads((cfg.run_dir / "tune.json").read_text())
    assert f"{tuned['cv']:.4f}" in text
    assert "No submission" in text and "best `" in text and "worst `" in text
    for name in ("training_unet_r18.png", "threshold_object.png", "min_area_object.png", "examples.png"):
        data = (out_dir / name).read_bytes()
        assert data[:4] == b"\x89PNG" and len(data) > 2000, name
        assert f"]({name})" in text
    assert "report.md" in capsys.readouterr().out


def test_report_with_nothing_yet_only_notes(demo_cfg):
    from segkit.stages import report
    cfg = demo_cfg()
    assert report.run(cfg) == 0
    text = (cfg.run_dir / "report" / "report.md").read_text()
    assert "No training metrics" in text and "No ensemble CV table" in text and "No tune.json" in text
    assert "No ensemble OOF store" in text and "No per-image OOF scores" in text
    assert not list((cfg.run_dir / "report").glob("*.png"))


def test_examples_skip_trivially_right_empty_images():
    scores = pd.DataFrame({"id": list("abcdefg"), "score": [1.0, 1.0, 0.2, 0.9, 0.5, 0.7, 0.6],
                           "truth_px": [0, 0, 10, 12, 30, 8, 0], "pred_px": [0, 0, 4, 12, 40, 9, 3]})
    picks = pick_examples(scores)
    assert [p[:2] for p in picks] == [("best", "d"), ("median", "g"), ("worst", "c")]
    assert [p[1] for p in pick_examples(scores.assign(score=-scores["score"]), higher_is_better=False)] == \
        ["d", "g", "c"]
    assert "| a | 1.5000 |" in md_table(pd.DataFrame({"x": ["a"], "y": [1.5]}))


def test_score_by_size_says_where_the_cv_is_lost():
    rng = np.random.default_rng(0)
    truth = np.r_[np.zeros(40, int), rng.integers(1, 10000, 60)]
    scores = pd.DataFrame({"id": [str(i) for i in range(100)], "truth_px": truth,
                           "score": np.where(truth == 0, 0.95, np.clip(truth / 10000, 0, 1))})
    table = score_by_size(scores, bins=3)
    assert table["true mask"].tolist()[0] == "empty" and table["images"].tolist()[0] == 40
    assert table["images"].sum() == 100 and len(table) == 4
    assert table["CV lost"].sum() == pytest.approx(1 - scores["score"].mean())
    assert table["mean score"].iloc[1:].is_monotonic_increasing  # small to large masks; here scores grow so
    lows = [int(label.split("-")[0]) for label in table["true mask"].iloc[1:]]
    assert lows == sorted(lows) and lows[0] == truth[truth > 0].min()
    assert "CV lost" not in score_by_size(scores, higher_is_better=False).columns
