"""`segkit evaluate` on tiny fake runs: every metric of a known case (perfect predictions but for one empty and one
full prediction), the holdout split agreeing with `segkit submit`'s score, the unit kept when nothing changed and
made again when the tuning did, missing inputs named, and the table in the report."""

import json
import math

import numpy as np
import pandas as pd
import pytest
from test_submit import write_tune
from test_tune import fake_ensemble

from segkit.artifacts.probs import ProbWriter
from segkit.data import Competition
from segkit.errors import SegkitError
from segkit.stages.evaluate import TABLE, summarize


def perfect_stores(cfg, empty_id=None, full_id=None):
    """OOF (and test) stores whose probabilities are 200 on the truth and 50 off it (every AUC 1, masks at p > 0.5
    the truth), except an all-0 image (nothing predicted) and an all-255 one (everything predicted)."""
    comp = Competition(cfg.data, seed=cfg.seed)

    def probs(image_id):
        if not comp.holdout_ids and image_id in comp.test_ids:  # real test images: no truth, any probabilities
            return np.full((len(cfg.data.classes), *comp.image_size(image_id, "test")), 128, np.uint8)
        if image_id == empty_id:
            return np.zeros_like(comp.read_mask(image_id))
        if image_id == full_id:
            return np.full_like(comp.read_mask(image_id), 255)
        return np.where(comp.read_mask(image_id) > 0, 200, 50).astype(np.uint8)

    for folder, ids in ((cfg.layout.final_ensemble.oof, comp.train_ids), (cfg.layout.final_ensemble.test,
                                                                         comp.test_ids)):
        writer = ProbWriter(folder, cfg.data.classes)
        for image_id in ids:
            writer.write(image_id, probs(image_id))
        writer.finish(ids)
    return comp


def row(table, metric, split="oof", cls="object"):
    hit = table[(table["split"] == split) & (table["class"] == cls) & (table["metric"] == metric)]
    assert len(hit) == 1, (split, cls, metric)
    return hit.iloc[0]


def test_every_metric_on_a_known_case(demo_cfg, capsys):
    from segkit.stages import evaluate
    cfg = demo_cfg("data.holdout_fraction=0.25")
    comp = Competition(cfg.data, seed=cfg.seed)
    areas = {i: int(comp.read_mask(i).sum()) for i in comp.train_ids}
    busy = [i for i in comp.train_ids if 0 < areas[i] < 32 * 32]
    empty_id, full_id = busy[0], busy[1]
    perfect_stores(cfg, empty_id, full_id)
    write_tune(cfg, {"object": {}})  # p > 0.5, nothing else
    assert evaluate.run(cfg) == 0
    out = capsys.readouterr().out
    paths = cfg.layout.evaluate
    assert f"evaluate: wrote {paths.metrics}" in out and "evaluate: oof (18 images), class object" in out
    assert "evaluate: holdout (6 images)" in out

    table = pd.read_csv(paths.metrics, dtype={"class": str})
    assert list(table["metric"][:len(TABLE)]) == list(TABLE)
    n = len(comp.train_ids)
    t, diagonal = areas[full_id], math.hypot(31, 31)
    # the empty prediction scores the worst overlap and the diagonal; the full one covers the truth and 1024 px
    assert row(table, "dice")["mean"] == pytest.approx((n - 2 + 0 + 2 * t / (t + 1024)) / n)
    assert row(table, "iou")["mean"] == pytest.approx((n - 2 + 0 + t / 1024) / n)
    assert row(table, "voe")["mean"] == pytest.approx((1 + 1 - t / 1024) / n)
    assert row(table, "sensitivity")["mean"] == pytest.approx((n - 1) / n)
    assert row(table, "specificity")["mean"] == pytest.approx((n - 1) / n)  # the full prediction's is 0
    assert row(table, "mean_pixel_accuracy")["mean"] == pytest.approx((n - 2 + 0.5 + 0.5) / n)
    assert row(table, "pixel_accuracy")["mean"] == pytest.approx(
        (n - 2 + (1 - areas[empty_id] / 1024) + t / 1024) / n)
    assert row(table, "rvd")["mean"] == pytest.approx((-1 + (1024 - t) / t) / n)  # the bias, signed
    assert row(table, "abs_rvd")["mean"] == pytest.approx((1 + min((1024 - t) / t, 1)) / n)
    assert row(table, "rvd")["best"] == "0" and row(table, "hd")["best"] == "lower"
    assert row(table, "dice")["best"] == "higher" and row(table, "rvd")["n"] == n
    # ROC-AUC of the probabilities: 1 where the truth has both labels, 0.5 on the two constant maps
    two_labels = sum(0 < areas[i] < 1024 for i in comp.train_ids)
    auc = row(table, "roc_auc")
    assert auc["n"] == two_labels and auc["mean"] == pytest.approx((two_labels - 2 + 0.5 + 0.5) / two_labels)

    per_image = pd.read_csv(paths.per_image_oof, dtype={"id": str, "class": str}).set_index("id")
    assert len(per_image) == n and set(per_image.columns) >= {"class", "truth_px", "pred_px", *TABLE}
    assert per_image.loc[empty_id, "hd"] == pytest.approx(diagonal)
    assert per_image.loc[empty_id, "hd95"] == pytest.approx(diagonal)
    assert per_image.loc[full_id, "pred_px"] == 1024 and per_image.loc[full_id, "truth_px"] == t
    others = per_image.drop([empty_id, full_id])
    assert (others[["hd", "hd95", "assd", "voe", "abs_rvd"]] == 0).all().all() and (others["dice"] == 1).all()
    for metric in ("hd", "assd", "hd95"):
        assert row(table, metric)["mean"] == pytest.approx(per_image[metric].mean())
        assert row(table, metric)["median"] == 0.0
    assert row(table, "dice")["std"] == pytest.approx(per_image["dice"].std(ddof=1))
    # the holdout: perfect everywhere
    hold = pd.read_csv(paths.per_image_holdout, dtype={"id": str})
    assert sorted(hold["id"]) == sorted(comp.holdout_ids)
    assert row(table, "dice", "holdout")["mean"] == 1.0 and row(table, "hd95", "holdout")["mean"] == 0.0
    saved = json.loads(paths.json.read_text(), parse_constant=lambda c: pytest.fail(f"{c} in evaluate.json"))
    assert saved["images"] == {"oof": n, "holdout": 6} and len(saved["table"]) == 2 * len(TABLE)


def test_kept_when_current_and_made_again_when_the_tuning_changes(demo_cfg, capsys):
    from segkit.stages import evaluate
    cfg = demo_cfg()
    perfect_stores(cfg)
    write_tune(cfg, {"object": {}})
    assert evaluate.run(cfg) == 0
    paths = cfg.layout.evaluate
    before = {p.name: p.stat().st_mtime_ns for p in paths.dir.iterdir()}
    assert set(before) == {"metrics.csv", "per_image_oof.csv", "evaluate.json", "stamp.json"}  # no holdout
    capsys.readouterr()
    assert evaluate.run(cfg) == 0
    out = capsys.readouterr().out
    assert "up to date and complete; keeping it" in out and "wrote" not in out
    assert {p.name: p.stat().st_mtime_ns for p in paths.dir.iterdir()} == before
    write_tune(cfg, {"object": {"threshold": 0.9}})  # 200 / 255 = 0.78: nothing predicted any more
    assert evaluate.run(cfg) == 0
    assert "wrote" in capsys.readouterr().out
    table = pd.read_csv(paths.metrics, dtype={"class": str})
    assert row(table, "sensitivity")["mean"] < 1.0 and row(table, "roc_auc")["mean"] == 1.0  # AUC ignores tuning


def test_holdout_agrees_with_submit_on_noisy_predictions(demo_cfg, capsys):
    from segkit.stages import evaluate, submit
    cfg = demo_cfg("data.holdout_fraction=0.25")
    fake_ensemble(cfg)
    write_tune(cfg, {"object": {"threshold": 0.55, "min_area": 3}})
    assert submit.run(cfg) == 0
    holdout = float(capsys.readouterr().out.split("holdout dice ")[1].split()[0])
    assert evaluate.run(cfg) == 0
    table = pd.read_csv(cfg.layout.evaluate.metrics, dtype={"class": str})
    assert row(table, "dice", "holdout")["mean"] == pytest.approx(holdout, abs=5e-5)
    assert 0 < row(table, "dice")["mean"] < 1 and row(table, "hd95")["mean"] > 0


def test_missing_inputs_name_the_file_and_the_stage(demo_cfg):
    from segkit.stages import evaluate
    cfg = demo_cfg()
    with pytest.raises(SegkitError, match=r"tune\.json: missing; run `segkit tune"):
        evaluate.run(cfg)
    write_tune(cfg, {"object": {}})
    with pytest.raises(SegkitError, match=r"ensemble/oof: no complete ensemble OOF store; run `segkit ensemble`"):
        evaluate.run(cfg)


def test_all_classes_row_is_the_per_image_class_mean():
    frame = pd.DataFrame({"id": ["a", "a", "b", "b"], "class": ["x", "y", "x", "y"],
                          **{name: [1.0, 0.0, 0.5, math.nan] for name in TABLE}})
    table = pd.DataFrame(summarize(frame, "oof", ["x", "y"]))
    assert row(table, "dice", cls="x")["mean"] == 0.75 and row(table, "dice", cls="y")["n"] == 1
    every = row(table, "dice", cls="all")  # a: (1 + 0) / 2, b: 0.5 (its NaN class skipped)
    assert every["mean"] == 0.5 and every["n"] == 2 and every["median"] == 0.5


def test_report_shows_the_evaluation(demo_cfg):
    from segkit.stages import evaluate, report
    cfg = demo_cfg()
    assert report.run(cfg) == 0
    assert "No evaluation table" in cfg.layout.report.markdown.read_text()
    perfect_stores(cfg)
    write_tune(cfg, {"object": {}})
    assert evaluate.run(cfg) == 0
    assert report.run(cfg) == 0  # the table is an input of the report: it is written again
    text = cfg.layout.report.markdown.read_text()
    assert "## Evaluation" in text and "No evaluation table" not in text
    assert "| dice | higher | 1.0000 | 0.0000 | 1.0000 | 24 |" in text and "| rvd | 0 |" in text  # 24 OOF images


def test_oof_table_is_out_of_fold_its_metric_row_is_the_nested_cv(demo_cfg, capsys):
    """After a real tune, each OOF image is scored with what tuning chose without its fold: the OOF row of the
    competition metric equals tune.json's cv_nested, not its in-sample cv."""
    from segkit.stages import evaluate, folds
    from segkit.stages import tune as tune_stage
    cfg = demo_cfg("tune.morph_radii=[1]", "tune.min_gain=0")
    folds.run(cfg)
    fake_ensemble(cfg, folds_for=cfg.models[0].name)
    assert tune_stage.run(cfg) == 0
    tuned = json.loads(cfg.layout.tune.json.read_text())
    assert evaluate.run(cfg) == 0
    assert "OOF parameters nested" in capsys.readouterr().out
    table = pd.read_csv(cfg.layout.evaluate.metrics, dtype={"class": str})
    assert row(table, "dice")["mean"] == pytest.approx(tuned["cv_nested"], abs=1e-9)


def test_each_fold_is_scored_with_its_own_nested_choice(demo_cfg):
    """A hand-made tune.json whose nested choice for fold 0 predicts nothing on these probabilities: fold 0's OOF
    images come out empty, the other folds' and the holdout (the submission's parameters) exact."""
    from segkit.stages import evaluate, folds
    cfg = demo_cfg("data.holdout_fraction=0.25")
    folds.run(cfg)
    comp = perfect_stores(cfg)
    write_tune(cfg, {"object": {}})
    tuned = json.loads(cfg.layout.tune.json.read_text())
    tuned["nested"] = {"0": {"classes": {"object": {"threshold": 0.9}}},  # 0.9 > 200/255: nothing above it
                       "1": {"classes": {"object": {}}}, "2": {"classes": {"object": {}}}}
    cfg.layout.tune.json.write_text(json.dumps(tuned))
    assert evaluate.run(cfg) == 0
    per_image = pd.read_csv(cfg.layout.evaluate.per_image_oof, dtype={"id": str})
    frame = folds.load_folds(cfg, comp)
    fold0 = per_image["id"].isin(set(frame.loc[frame["fold"] == 0, "id"]))
    assert (per_image.loc[fold0, "pred_px"] == 0).all()
    assert (per_image.loc[~fold0, "pred_px"] == per_image.loc[~fold0, "truth_px"]).all()
    holdout = pd.read_csv(cfg.layout.evaluate.per_image_holdout, dtype={"id": str})
    assert (holdout["pred_px"] == holdout["truth_px"]).all()
