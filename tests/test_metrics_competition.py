"""Competition scores: hand-computed TGS and DSB cases, the registry, batch and threshold-sweep paths."""

import numpy as np
import pytest

from segkit.artifacts.probs import dequantize, quantize
from segkit.errors import ConfigError, DataError
from segkit.metrics import competition as cm


def image(*masks):
    """(K, H, W) bool from 2-D masks."""
    return np.stack(masks).astype(bool)


def square(size, r0, r1, c0, c1):
    m = np.zeros((size, size), bool)
    m[r0:r1, c0:c1] = True
    return m


def test_registry_names_aliases_and_direction():
    competitions = {"tgs", "map_iou", "dice", "iou", "object_ap", "pixel_accuracy"}
    assert competitions <= set(cm.metric_names())
    assert cm.get_metric("map_iou") is cm.get_metric("TGS")
    assert all(cm.get_metric(n).higher_is_better for n in competitions)
    assert not any(cm.get_metric(n).higher_is_better for n in ("hd95", "hd", "assd", "voe", "abs_rvd"))
    with pytest.raises(ConfigError, match="tune.metric: unknown metric 'lb'.*known: .*dice"):
        cm.get_metric("lb", key="tune.metric")


def test_tgs_by_hand():
    truth = image(square(20, 0, 10, 0, 10))  # 100 pixels
    # 60 of them predicted: IoU exactly 0.6 passes t = 0.50 and 0.55 only (IoU > t, strictly)
    assert cm.get_metric("tgs")(image(square(20, 0, 6, 0, 10)), truth) == pytest.approx(0.2)
    # 75 of 100: passes 0.50 .. 0.70 -> 5 of 10
    three_quarters = square(20, 0, 10, 0, 7) | square(20, 0, 5, 7, 8)
    assert cm.get_metric("tgs")(image(three_quarters), truth) == pytest.approx(0.5)
    # prediction 110 pixels holding the truth: IoU 100/110 = 0.909 passes 0.50 .. 0.90 -> 9 of 10
    assert cm.get_metric("tgs")(image(square(20, 0, 11, 0, 10)), truth) == pytest.approx(0.9)
    empty = image(np.zeros((20, 20), bool))
    assert cm.get_metric("tgs")(empty, empty) == 1.0
    assert cm.get_metric("tgs")(empty, truth) == 0.0
    assert cm.get_metric("tgs")(truth, empty) == 0.0
    assert cm.get_metric("tgs")(truth, truth) == 1.0
    # the data set scores the mean over images
    preds = np.stack([image(square(20, 0, 6, 0, 10)), empty, truth])
    truths = np.stack([truth, empty, empty])
    np.testing.assert_allclose(cm.score_many("tgs", preds, truths), [0.2, 1.0, 0.0])
    assert cm.score_dataset("map_iou", preds, truths) == pytest.approx(0.4)


def test_dice_and_iou_per_class_with_empty_one():
    pred = image(square(10, 0, 4, 0, 4), np.zeros((10, 10), bool), square(10, 0, 1, 0, 1))
    truth = image(square(10, 0, 4, 0, 2), np.zeros((10, 10), bool), np.zeros((10, 10), bool))
    # class 0: inter 8, areas 16 + 8 -> dice 16/24, iou 8/16; class 1 both empty -> 1; class 2 one empty -> 0
    assert cm.get_metric("dice")(pred, truth) == pytest.approx((16 / 24 + 1 + 0) / 3)
    assert cm.get_metric("iou")(pred, truth) == pytest.approx((0.5 + 1 + 0) / 3)
    assert cm.get_metric("pixel_accuracy")(pred, truth) == pytest.approx((92 / 100 + 1 + 99 / 100) / 3)


def test_object_ap_two_nuclei_by_hand():
    a = square(16, 1, 5, 1, 5)  # nucleus A, 16 px
    b = square(16, 8, 12, 8, 12)  # nucleus B, 16 px
    truth = image(a | b)
    # A found with 12 of its 16 px (IoU 0.75: a TP for t = 0.50 .. 0.70), B missed, one false speck elsewhere
    pred = image(square(16, 1, 5, 1, 4) | square(16, 13, 15, 1, 3))
    # t < 0.75: TP 1, FP 1, FN 1 -> 1/3 for 5 thresholds; t >= 0.75: TP 0, FP 2, FN 2 -> 0
    assert cm.object_ap(pred, truth) == pytest.approx(5 * (1 / 3) / 10)
    assert cm.object_ap(truth, truth) == 1.0
    # one blob covering both: IoU 16/32 = 0.5 with each, not above 0.5 -> nothing matches
    assert cm.object_ap(image(square(16, 1, 12, 1, 12)), truth) == 0.0
    empty = image(np.zeros((16, 16), bool))
    assert cm.object_ap(empty, empty) == 1.0
    assert cm.object_ap(empty, truth) == 0.0
    assert cm.get_metric("object_ap")(pred, truth) == pytest.approx(1 / 6)


def test_object_ap_labels_keeps_touching_instances_apart():
    truth = np.zeros((6, 8), np.int32)
    truth[:, :4] = 7
    truth[:, 4:] = 3  # two touching nuclei that connected components would merge
    pred = truth.copy()
    assert cm.object_ap_labels(pred, truth) == 1.0
    merged = (truth > 0).astype(np.int32)
    assert cm.object_ap_labels(merged, truth) == 0.0  # IoU 0.5 with each
    assert cm.object_ap(image(truth > 0), image(truth > 0)) == 1.0
    with pytest.raises(DataError, match="label maps"):
        cm.object_ap_labels(truth > 0, truth > 0)


def test_score_many_matches_per_image_and_takes_lists_of_sizes():
    rng = np.random.default_rng(0)
    preds = rng.random((6, 2, 9, 11)) < 0.3
    truths = rng.random((6, 2, 9, 11)) < 0.3
    truths[0] = False
    preds[1] = False
    truths[1] = False
    for name in cm.metric_names():
        metric = cm.get_metric(name)
        many = metric.score_many(preds, truths)
        np.testing.assert_allclose(many, [metric(p, t) for p, t in zip(preds, truths)])
    sized = [rng.random((1, s, s + 3)) < 0.4 for s in (5, 8, 13)]
    flipped = [m[:, ::-1] for m in sized]
    np.testing.assert_allclose(
        cm.score_many("dice", sized, flipped), [cm.get_metric("dice")(p, t) for p, t in zip(sized, flipped)]
    )
    assert cm.score_many("dice", sized, sized).tolist() == [1.0, 1.0, 1.0]
    with pytest.raises(DataError, match="image 1"):
        cm.score_many("iou", sized, [sized[0], sized[0], sized[2]])
    with pytest.raises(DataError, match=r"\(K, H, W\)"):
        cm.get_metric("dice")(preds[0, 0], truths[0, 0])  # one class's (H, W) mask: K is missing
    with pytest.raises(DataError, match=r"\(K, H, W\)"):
        cm.score_many("tgs", preds[:, 0], truths[:, 0])


@pytest.mark.parametrize("quantized", [False, True])
def test_threshold_sweep_matches_thresholding_each_time(quantized):
    rng = np.random.default_rng(1)
    probs = rng.random((5, 2, 10, 12)).astype(np.float32)
    truths = rng.random((5, 2, 10, 12)) < 0.35
    truths[2, 1] = False
    if quantized:
        probs = quantize(probs)
    levels = dequantize(probs) if quantized else probs
    thresholds = [0.7, 0.2, 51 / 255, 0.5, 0.0, 1.0]  # unsorted, and one exactly on a quantization level
    for name in ("tgs", "dice", "iou", "pixel_accuracy", "object_ap"):
        metric = cm.get_metric(name)
        for min_area in (0, 20):
            swept = cm.score_thresholds(name, probs, truths, thresholds, min_area=min_area)
            for j, t in enumerate(thresholds):
                masks = levels >= np.float32(t)
                small = masks.reshape(5, 2, -1).sum(-1) < min_area
                masks[small] = False
                np.testing.assert_allclose(swept[j], metric.score_many(masks, truths), err_msg=f"{name} {t}")


def test_counts_and_min_area_by_hand():
    probs = np.array([[[0.9, 0.6], [0.4, 0.1]]], np.float32)[None]  # (1, 1, 2, 2)
    truth = np.array([[[1, 1], [0, 0]]], bool)[None]
    c = cm.counts_at_thresholds(probs, truth, [0.5, 0.95, 0.1])
    np.testing.assert_array_equal(c.pred_area[:, 0, 0], [2, 0, 4])
    np.testing.assert_array_equal(c.inter[:, 0, 0], [2, 0, 2])
    np.testing.assert_array_equal(c.truth_area[:, 0, 0], [2, 2, 2])
    dropped = c.with_min_area(3)
    np.testing.assert_array_equal(dropped.pred_area[:, 0, 0], [0, 0, 4])
    np.testing.assert_allclose(cm.score_counts("dice", c)[:, 0], [1.0, 0.0, 4 / 6])
    with pytest.raises(ConfigError, match="needs the masks"):
        cm.score_counts("object_ap", c)
