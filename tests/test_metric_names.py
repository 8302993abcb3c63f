"""The toolbox's scores as competition metrics: hand-computed values and directions, the counts paths (batch,
threshold sweep, per (image, class)) against a plain numpy reference, the refusal of the signed RVD, and
``segkit score --metric`` on masks that need the mask-by-mask path."""

import math

import numpy as np
import pandas as pd
import pytest

from segkit.cli import main as cli
from segkit.data import rle
from segkit.errors import ConfigError
from segkit.metrics import counts_at_thresholds, get_metric, metric_names, overlap_counts, roc_auc

NEW = ("mean_pixel_accuracy", "sensitivity", "specificity", "voe", "abs_rvd", "assd", "hd", "hd95", "roc_auc")
COUNTED = ("mean_pixel_accuracy", "sensitivity", "specificity", "voe", "abs_rvd", "roc_auc")


def box(size, r0, r1, c0, c1):
    m = np.zeros((size, size), bool)
    m[r0:r1, c0:c1] = True
    return m


def test_names_aliases_and_directions():
    assert set(NEW) <= set(metric_names())
    for name, alias in (("sensitivity", "recall"), ("voe", "volume_overlap_error"),
                        ("abs_rvd", "abs_relative_volume_difference"), ("hd", "hausdorff")):
        assert get_metric(alias) is get_metric(name)
    higher = {n for n in NEW if get_metric(n).higher_is_better}
    assert higher == {"mean_pixel_accuracy", "sensitivity", "specificity", "roc_auc"}
    for name in NEW:
        assert get_metric(name).sign == (1.0 if name in higher else -1.0)
        assert get_metric(name).has_fast_sweep == (name in COUNTED)  # the distances need the masks


def test_counted_metrics_by_hand():
    truth = box(10, 0, 4, 0, 5)  # 20 pixels
    pred = box(10, 0, 4, 0, 4) | box(10, 8, 9, 0, 6)  # 16 of them + 6 false: tp 16, fp 6, fn 4, tn 74
    empty = np.zeros((10, 10), bool)
    one = {"sensitivity": 16 / 20, "specificity": 74 / 80, "mean_pixel_accuracy": (0.8 + 74 / 80) / 2,
           "voe": 1 - 16 / 26, "abs_rvd": 2 / 20, "roc_auc": (0.8 + 74 / 80) / 2}
    for name, want in one.items():
        assert get_metric(name)(pred[None], truth[None]) == pytest.approx(want), name
        # a second class where both masks are empty scores the best value; the image is the mean of the two
        best = 1.0 if get_metric(name).higher_is_better else 0.0
        assert get_metric(name)(np.stack([pred, empty]), np.stack([truth, empty])) == pytest.approx(
            (want + best) / 2), name
    # empty truth, 5 false pixels: sensitivity is wrong and undefined (0), only the background counts for MPA
    spot = box(10, 9, 10, 0, 5)
    assert get_metric("sensitivity")(spot[None], empty[None]) == 0.0
    assert get_metric("mean_pixel_accuracy")(spot[None], empty[None]) == pytest.approx(0.95)
    assert get_metric("roc_auc")(spot[None], empty[None]) == pytest.approx(0.475)
    assert get_metric("voe")(spot[None], empty[None]) == 1.0
    assert get_metric("abs_rvd")(spot[None], empty[None]) == 1.0  # infinitely off: the cap
    # a truth filling the image: specificity is 1 only if the prediction fills it too
    full = np.ones((10, 10), bool)
    assert get_metric("specificity")(full[None], full[None]) == 1.0
    assert get_metric("specificity")((full & ~spot)[None], full[None]) == 0.0
    assert get_metric("sensitivity")((full & ~spot)[None], full[None]) == pytest.approx(0.95)
    # |RVD| 4 (20 pixels predicted for 4) is capped at 1, the value of predicting nothing
    small = box(10, 0, 2, 0, 2)
    assert get_metric("abs_rvd")(box(10, 0, 4, 0, 5)[None], small[None]) == 1.0
    assert get_metric("abs_rvd")(empty[None], small[None]) == 1.0
    assert get_metric("abs_rvd")(box(10, 0, 2, 0, 3)[None], small[None]) == pytest.approx(0.5)


def test_surface_metrics_by_hand():
    truth = box(20, 0, 4, 0, 4)  # 12 surface pixels
    pred = truth.copy()
    pred[3, 13] = True  # one stray pixel 10 px from the truth's surface (3, 3)
    # pred -> truth: 12 zeros and a 10; truth -> pred: 12 zeros
    assert get_metric("hd")(pred[None], truth[None]) == pytest.approx(10.0)
    assert get_metric("assd")(pred[None], truth[None]) == pytest.approx(10 / 25)
    # MONAI: max of the directed 95th percentiles; 13 values: index 0.95 * 12 = 11.4 -> 0 + 0.4 * 10
    assert get_metric("hd95")(pred[None], truth[None]) == pytest.approx(4.0)
    empty = np.zeros((20, 20), bool)
    diagonal = math.hypot(19, 19)
    for name in ("assd", "hd", "hd95"):
        assert get_metric(name)(empty[None], empty[None]) == 0.0
        assert get_metric(name)(truth[None], empty[None]) == pytest.approx(diagonal)
        assert get_metric(name)(empty[None], truth[None]) == pytest.approx(diagonal)
        assert get_metric(name)(np.stack([pred, truth]), np.stack([truth, truth])) == pytest.approx(
            get_metric(name)(pred[None], truth[None]) / 2)


def _reference(name, pred, truth):
    """Plain numpy, one class at a time, with the documented empty rules."""
    out = []
    for p, t in zip(pred, truth):
        tp, fp = int((p & t).sum()), int((p & ~t).sum())
        fn, tn = int((~p & t).sum()), int((~p & ~t).sum())
        sens = tp / (tp + fn) if tp + fn else float(fp == 0)
        spec = tn / (tn + fp) if tn + fp else float(fn == 0)
        if name == "sensitivity":
            out.append(sens)
        elif name == "specificity":
            out.append(spec)
        elif name == "roc_auc":
            out.append((sens + spec) / 2)
        elif name == "mean_pixel_accuracy":
            out.append(np.mean([v for v, present in ((sens, tp + fn), (spec, tn + fp)) if present]))
        elif name == "voe":
            union = tp + fp + fn
            out.append((fp + fn) / union if union else 0.0)
        elif name == "abs_rvd":
            out.append(min(abs(fp - fn) / (tp + fn), 1.0) if tp + fn else float(fp > 0))
    return float(np.mean(out))


@pytest.mark.parametrize("name", COUNTED)
def test_counts_paths_equal_the_per_image_reference(name):
    rng = np.random.default_rng(3)
    probs = rng.random((12, 2, 9, 11)).astype(np.float32)
    probs[2] = 0.0  # nothing predicted
    probs[3, 1] = 1.0  # everything predicted
    truths = rng.random((12, 2, 9, 11)) > 0.6
    truths[[2, 4], 0] = False  # empty truths, predicted empty and not
    truths[5, 1] = True  # a truth that fills the image
    metric = get_metric(name)
    preds = probs >= 0.5
    want = np.array([_reference(name, p, t) for p, t in zip(preds, truths)])
    np.testing.assert_allclose(metric.score_many(preds, truths), want)
    np.testing.assert_allclose([metric.per_image(p, t) for p, t in zip(preds, truths)], want)
    # the tuner's sweep: every threshold from one histogram pass
    thresholds = [0.2, 0.5, 0.9]
    swept = metric.score_thresholds(probs, truths, thresholds)
    for row, thr in zip(swept, thresholds):
        np.testing.assert_allclose(row, [_reference(name, p >= thr, t) for p, t in zip(probs, truths)])
    # per (image, class) from count arrays, as the tuner's tables ask for them
    c = overlap_counts(preds, truths)
    per_pair = metric.stats(c.inter, c.pred_area, c.truth_area, np.broadcast_to(c.pixels[:, None], c.inter.shape))
    np.testing.assert_allclose(per_pair.mean(axis=1), want)
    assert counts_at_thresholds(probs, truths, thresholds).inter.shape == (3, 12, 2)


def test_mask_auc_is_the_auc_of_the_mask_as_scores():
    rng = np.random.default_rng(5)
    pred = rng.random((1, 1, 16, 16)) > 0.5
    truth = rng.random((1, 1, 16, 16)) > 0.4
    real = roc_auc(pred.astype(np.float32), truth)[0, 0]
    assert get_metric("roc_auc")(pred[0], truth[0]) == pytest.approx(real)


@pytest.mark.parametrize("name", ["rvd", "RVD", "relative_volume_difference"])
def test_signed_rvd_is_refused_with_a_pointer_to_abs_rvd(name):
    with pytest.raises(ConfigError, match=r"^metric: '.*' \(the signed relative volume difference\) is not a "
                                          r"metric.*use 'abs_rvd'"):
        get_metric(name, key="metric")


def test_config_metric_rvd_is_an_error_naming_key_and_abs_rvd(demo_root, tmp_path, capsys):
    from conftest import CONFIGS

    code = cli(["check", "--config", str(CONFIGS / "demo.yaml"), f"data.root={demo_root}",
                f"paths.runs={tmp_path / 'runs'}", "metric=rvd"])
    err = capsys.readouterr().err
    assert code == 2 and "metric: 'rvd'" in err and "'abs_rvd'" in err
    assert not (tmp_path / "runs").exists()  # refused before any work


def _write(path, rows):
    pd.DataFrame({"id": [r[0] for r in rows],
                  "rle_mask": [rle.encode(m.astype(np.uint8)) if m is not None else "" for _, m in rows]}
                 ).to_csv(path, index=False)
    return str(path)


def test_score_cli_takes_the_new_names(tmp_path, capsys):
    square = box(20, 0, 4, 0, 4)
    stray = square.copy()
    stray[3, 13] = True
    truth = _write(tmp_path / "truth.csv", [("a", square), ("b", square), ("c", None)])
    sub = _write(tmp_path / "sub.csv", [("a", square), ("b", stray), ("c", square)])
    shape = ["--shape", "20x20"]
    assert cli(["score", sub, "--truth", truth, "--metric", "hd95", *shape]) == 0
    # 0 (exact), 4 (the stray pixel), the diagonal (a prediction on an empty truth)
    want = (0 + 4.0 + math.hypot(19, 19)) / 3
    assert f"hd95: {want:.6f} (3 rows" in capsys.readouterr().out
    assert cli(["score", sub, "--truth", truth, "--metric", "sensitivity", *shape]) == 0
    assert f"sensitivity: {2 / 3:.6f} (3 rows" in capsys.readouterr().out  # 1, 1, and 0 on the empty truth
    assert cli(["score", sub, "--truth", truth, "--metric", "rvd", *shape]) == 2
    assert "--metric: 'rvd'" in capsys.readouterr().err
