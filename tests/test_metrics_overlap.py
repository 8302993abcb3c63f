"""Overlap scores from confusion counts: hand-computed cases, the empty rule, reductions, ROC-AUC."""

import math

import numpy as np
import pytest

from segkit.errors import ConfigError, DataError
from segkit.metrics import overlap as ov
from segkit.metrics import roc_auc


def masks(*pairs):
    """Stack (pred, truth) pairs of 2-D 0/1 lists into (N=1, K, H, W) bool arrays."""
    pred = np.array([p for p, _ in pairs], dtype=bool)[None]
    truth = np.array([t for _, t in pairs], dtype=bool)[None]
    return pred, truth


# pred 3 pixels, truth 3 pixels, 2 shared, 3x3 image: tp 2, fp 1, fn 1, tn 5
P = [[1, 1, 0], [0, 1, 0], [0, 0, 0]]
T = [[1, 1, 0], [0, 0, 0], [1, 0, 0]]


def test_confusion_counts_by_hand():
    pred, truth = masks((P, T))
    c = ov.confusion(pred, truth)
    assert (c.tp, c.fp, c.fn, c.tn) == ([[2]], [[1]], [[1]], [[5]])


@pytest.mark.parametrize(
    "name, expected",
    [
        ("pixel_accuracy", 7 / 9),
        ("iou", 2 / 4),
        ("jaccard", 2 / 4),
        ("dice", 4 / 6),
        ("f1", 4 / 6),
        ("precision", 2 / 3),
        ("recall", 2 / 3),
        ("sensitivity", 2 / 3),
        ("specificity", 5 / 6),
        ("mean_pixel_accuracy", (2 / 3 + 5 / 6) / 2),
        ("volume_overlap_error", 1 - 2 / 4),
        ("relative_volume_difference", 0.0),
        ("abs_relative_volume_difference", 0.0),
    ],
)
def test_scores_by_hand(name, expected):
    pred, truth = masks((P, T))
    assert ov.overlap_score(name, pred, truth)[0, 0] == pytest.approx(expected)


def test_volume_difference_sign():
    pred = np.zeros((1, 1, 4, 4), bool)
    truth = pred.copy()
    pred[..., :2, :] = True  # 8 pixels
    truth[..., :1, :] = True  # 4 pixels
    assert ov.relative_volume_difference(pred, truth)[0, 0] == pytest.approx(1.0)
    assert ov.relative_volume_difference(truth, pred)[0, 0] == pytest.approx(-0.5)
    assert ov.abs_relative_volume_difference(truth, pred)[0, 0] == pytest.approx(0.5)


def test_both_empty_follows_the_empty_rule():
    empty = np.zeros((1, 1, 5, 5), bool)
    for name in ("iou", "dice", "precision", "recall"):
        assert ov.overlap_score(name, empty, empty)[0, 0] == 1.0
        assert math.isnan(ov.overlap_score(name, empty, empty, empty="nan")[0, 0])
        assert ov.overlap_score(name, empty, empty, empty=0.0)[0, 0] == 0.0
    assert ov.volume_overlap_error(empty, empty)[0, 0] == 0.0
    assert ov.relative_volume_difference(empty, empty)[0, 0] == 0.0
    assert ov.pixel_accuracy(empty, empty)[0, 0] == 1.0
    assert ov.mean_pixel_accuracy(empty, empty)[0, 0] == 1.0  # only background in truth: its accuracy alone


def test_one_empty_scores_the_worst_value():
    empty = np.zeros((1, 1, 4, 4), bool)
    one = empty.copy()
    one[0, 0, 1, 1] = True
    assert ov.dice(one, empty)[0, 0] == 0.0 and ov.dice(empty, one)[0, 0] == 0.0
    assert ov.iou(one, empty, empty="nan")[0, 0] == 0.0  # wrong, so not undefined
    assert ov.precision(empty, one)[0, 0] == 0.0  # nothing predicted, something missed
    assert ov.recall(one, empty)[0, 0] == 0.0  # nothing to find, something predicted
    assert ov.relative_volume_difference(one, empty)[0, 0] == math.inf
    assert ov.volume_overlap_error(one, empty)[0, 0] == 1.0
    assert ov.pixel_accuracy(one, empty)[0, 0] == pytest.approx(15 / 16)


def test_single_pixel_and_full_image():
    one = np.zeros((1, 1, 3, 3), bool)
    one[0, 0, 1, 1] = True
    assert ov.dice(one, one)[0, 0] == 1.0 and ov.specificity(one, one)[0, 0] == 1.0
    full = np.ones((1, 1, 3, 3), bool)
    # the truth fills the image: specificity is 0/0, right prediction -> best, else worst
    assert ov.specificity(full, full)[0, 0] == 1.0
    assert ov.specificity(one, full)[0, 0] == 0.0
    assert ov.iou(one, full)[0, 0] == pytest.approx(1 / 9)
    assert ov.mean_pixel_accuracy(one, full)[0, 0] == pytest.approx(1 / 9)  # background absent from truth


def test_reductions():
    # image 0: class 0 iou 1/2, class 1 both empty; image 1: class 0 iou 1, class 1 iou 0
    pred = np.zeros((2, 2, 2, 2), bool)
    truth = pred.copy()
    pred[0, 0, 0, :] = True
    truth[0, 0, 0, 0] = True
    pred[1, 0, 1, 1] = truth[1, 0, 1, 1] = True
    pred[1, 1, 0, 0] = True
    truth[1, 1, 1, 0] = True
    np.testing.assert_allclose(ov.iou(pred, truth), [[0.5, 1.0], [1.0, 0.0]])
    np.testing.assert_allclose(ov.iou(pred, truth, reduction="image"), [0.75, 0.5])
    np.testing.assert_allclose(ov.iou(pred, truth, reduction="class"), [0.75, 0.5])
    assert ov.iou(pred, truth, reduction="mean") == pytest.approx(0.625)
    np.testing.assert_allclose(ov.iou(pred, truth, reduction="image", empty="nan"), [0.5, 0.5])
    # pooled: class 0 tp 2 fp 1 fn 0 -> 2/3; class 1 tp 0 fp 1 fn 1 -> 0; micro 2/5
    np.testing.assert_allclose(ov.iou(pred, truth, reduction="class_pooled"), [2 / 3, 0.0])
    assert ov.iou(pred, truth, reduction="macro") == pytest.approx(1 / 3)
    assert ov.iou(pred, truth, reduction="micro") == pytest.approx(2 / 5)
    assert math.isnan(ov.iou(pred[:1, 1:], truth[:1, 1:], reduction="mean", empty="nan"))
    with pytest.raises(ConfigError, match="reduction"):
        ov.iou(pred, truth, reduction="weighted")


def test_counts_agree_with_smp_get_stats_and_torch_inputs():
    import segmentation_models_pytorch as smp
    import torch

    rng = np.random.default_rng(0)
    for shape in [(3, 2, 9, 7), (2, 3, 8, 8), (2, 1, 4, 6, 5)]:  # odd sizes take the summing path
        probs = rng.random(shape).astype(np.float32)
        truth = rng.random(shape) < 0.4
        ours = ov.confusion(probs, truth, threshold=0.5)
        stats = smp.metrics.get_stats(
            torch.from_numpy(probs), torch.from_numpy(truth).long(), "multilabel", threshold=0.5
        )
        for mine, theirs in zip((ours.tp, ours.fp, ours.fn, ours.tn), stats):
            np.testing.assert_array_equal(mine, theirs.numpy())
        via_torch = ov.confusion(torch.from_numpy(probs), torch.from_numpy(truth), threshold=0.5)
        np.testing.assert_array_equal(via_torch.tp, ours.tp)
        np.testing.assert_array_equal(via_torch.tn, ours.tn)


def test_overlap_scores_share_one_count_and_accept_uint8_masks():
    rng = np.random.default_rng(1)
    pred = (rng.random((4, 2, 16, 16)) < 0.5).astype(np.uint8)
    truth = (rng.random((4, 2, 16, 16)) < 0.5).astype(np.uint8)
    every = ov.overlap_scores(pred, truth, reduction="mean")
    assert set(every) == {n for n in ov.OVERLAP_SCORES if n not in ov.ALIASES}
    assert every["dice"] == pytest.approx(ov.dice(pred.astype(bool), truth.astype(bool), reduction="mean"))
    assert ov.higher_is_better("dice") and not ov.higher_is_better("volume_overlap_error")


def test_bad_inputs_raise_one_line_errors():
    a = np.zeros((1, 1, 4, 4), bool)
    with pytest.raises(DataError, match="differs"):
        ov.dice(a, np.zeros((1, 1, 4, 5), bool))
    with pytest.raises(DataError, match="threshold"):
        ov.dice(a.astype(np.float32), a)
    with pytest.raises(DataError, match="spatial"):
        ov.dice(a[0, 0], a[0, 0])
    with pytest.raises(ConfigError, match="unknown overlap score"):
        ov.overlap_score("dise", a, a)
    with pytest.raises(ConfigError, match="empty"):
        ov.dice(a, a, empty="skip")


def test_roc_auc_matches_sklearn_and_uint8_matches_float():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(2)
    truth = rng.random((3, 2, 12, 10)) < 0.3
    q = np.clip(rng.normal(90 + 60 * truth, 40), 0, 255).astype(np.uint8)  # ties on purpose
    probs = q.astype(np.float64) / 255
    per = roc_auc(probs, truth)
    for i in range(3):
        for k in range(2):
            assert per[i, k] == pytest.approx(roc_auc_score(truth[i, k].ravel(), probs[i, k].ravel()))
    np.testing.assert_allclose(roc_auc(q, truth), per)
    assert roc_auc(q, truth, reduction="micro") == pytest.approx(roc_auc_score(truth.ravel(), probs.ravel()))
    pooled = roc_auc(probs, truth, reduction="class_pooled")
    assert pooled[1] == pytest.approx(roc_auc_score(truth[:, 1].ravel(), probs[:, 1].ravel()))
    np.testing.assert_allclose(roc_auc(q, truth, reduction="class_pooled"), pooled)
    assert roc_auc(probs, truth, reduction="macro") == pytest.approx(pooled.mean())
    assert roc_auc(probs, truth, reduction="mean") == pytest.approx(per.mean())


def test_roc_auc_undefined_for_one_label_truth():
    probs = np.random.default_rng(3).random((2, 1, 4, 4))
    truth = np.zeros((2, 1, 4, 4), bool)
    truth[1, 0, :2] = True
    per = roc_auc(probs, truth)
    assert math.isnan(per[0, 0]) and not math.isnan(per[1, 0])
    assert roc_auc(probs, truth, reduction="mean") == pytest.approx(per[1, 0])  # NaN skipped
