"""Post-processing steps on hand-made masks: thresholds, empty-mask rule, morphology, min area, largest component,
exclusive classes, and the checked parameter format of tune.json."""

import numpy as np
import pytest
from scipy import ndimage

from segkit.errors import ConfigError
from segkit.postprocess.masks import (
    ClassParams,
    apply_class,
    describe,
    fill_holes,
    keep_largest,
    morph,
    params_list,
    postprocess,
    remove_small,
    restrict_to_argmax,
)
from segkit.threshold import binarize, uint8_cut


def disk(shape, center, radius):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return ((yy - center[0]) ** 2 + (xx - center[1]) ** 2 <= radius**2).astype(np.uint8)


# -------------------------------------------------------------------------------------------------- thresholds


def test_threshold_is_strictly_greater_on_floats_and_uint8():
    p = np.array([[0.2, 0.5, 0.51, 0.6]], np.float32)
    assert binarize(p, 0.5).tolist() == [[0, 0, 1, 1]]
    q = np.array([[51, 52, 127, 128, 153, 154]], np.uint8)  # 127/255 < 0.5 < 128/255; 153/255 = 0.6 exactly
    assert binarize(q, 0.5).tolist() == [[0, 0, 0, 1, 1, 1]]
    assert binarize(q, 0.2).tolist() == [[0, 1, 1, 1, 1, 1]]  # 51/255 = 0.2 is not > 0.2
    assert binarize(q, 0.6).tolist() == [[0, 0, 0, 0, 0, 1]]
    assert uint8_cut(0.6) == 153 and uint8_cut(0.5) == 127 and uint8_cut(0.0) == 0


def test_empty_rule_drops_unless_enough_confident_pixels():
    prob = np.zeros((8, 8), np.float32)
    prob[2:6, 2:6] = 0.6  # 16 pixels above the low threshold
    prob[3:4, 3:8] = 0.9  # 5 confident pixels (two of them outside the 0.6 block)
    params = ClassParams(threshold=0.4, empty_top=0.8, empty_pixels=6)
    assert apply_class(prob, params).sum() == 0  # 5 < 6 confident pixels: class absent
    kept = apply_class(prob, params.replace(empty_pixels=5))
    assert kept.sum() == 16 + 2  # present: the whole region above the *low* threshold
    # without the rule, the same low threshold keeps it too; the rule only ever empties
    assert (apply_class(prob, ClassParams(threshold=0.4)) == kept).all()


# -------------------------------------------------------------------------------------------------- morphology


def test_fill_holes_matches_scipy_and_keeps_open_bays():
    ring = disk((15, 15), (7, 7), 5) - disk((15, 15), (7, 7), 2)
    filled = fill_holes(ring)
    assert (filled == disk((15, 15), (7, 7), 5)).all()
    bay = ring.copy()
    bay[7, 10:13] = 0  # a channel from the hole to the outside: not a hole any more
    bay[7, 12] = 0
    assert (fill_holes(bay) == ndimage.binary_fill_holes(bay)).all()
    rng = np.random.default_rng(3)
    for density in (0.3, 0.6, 0.8):
        m = (rng.random((21, 34)) < density).astype(np.uint8)
        assert (fill_holes(m) == ndimage.binary_fill_holes(m)).all()


def test_opening_removes_specks_closing_bridges_gaps():
    m = disk((20, 20), (10, 10), 5)
    speck = m.copy()
    speck[1, 1] = 1
    assert morph(speck, "opening", 1)[1, 1] == 0
    assert morph(speck, "opening", 1)[10, 10] == 1
    gap = m.copy()
    gap[10, :] = 0  # a one-pixel crack through the disk
    closed = morph(gap, "closing", 1)
    assert closed[10, 10] == 1 and closed[10, 8] == 1


def test_dilation_and_erosion_by_radius():
    point = np.zeros((11, 11), np.uint8)
    point[5, 5] = 1
    assert (morph(point, "dilation", 2) == disk((11, 11), (5, 5), 2)).all()
    assert morph(point, "dilation", 3).sum() > morph(point, "dilation", 2).sum()
    assert morph(disk((11, 11), (5, 5), 2), "erosion", 2).sum() == 1
    # an object touching the border is not eroded from outside the image
    full = np.ones((6, 6), np.uint8)
    assert morph(full, "erosion", 1).all()


def test_min_area_and_largest_component():
    m = np.zeros((10, 10), np.uint8)
    m[0:2, 0:2] = 1  # 4 px
    m[5:8, 5:8] = 1  # 9 px
    m[0, 9] = 1  # 1 px
    assert remove_small(m, 5).sum() == 9
    assert remove_small(m, 4).sum() == 13
    assert remove_small(m, 0).sum() == 14
    assert (keep_largest(m) == (remove_small(m, 5))).all()
    assert apply_class(m.astype(np.float32), ClassParams(min_area=4, keep_largest=True)).sum() == 9
    assert apply_class(m.astype(np.float32), ClassParams(min_area=10, keep_largest=True)).sum() == 0
    diagonal = np.eye(4, dtype=np.uint8)  # 8-connected: one component of 4 pixels
    assert remove_small(diagonal, 4).sum() == 4


def test_chain_order_morphology_before_min_area():
    # two 5x5 squares joined by a one-pixel bridge: opening cuts the bridge, then min area sees two parts
    m = np.zeros((7, 13), np.float32)
    m[1:6, 0:5] = 1
    m[1:6, 8:13] = 1
    m[3, 5:8] = 1
    single = apply_class(m, ClassParams(min_area=30))
    assert single.sum() == 53  # still one 53-pixel component
    split = apply_class(m, ClassParams(min_area=30, morphology=(("opening", 1),)))
    assert split.sum() == 0  # each half is < 30 px once the bridge is gone


# ---------------------------------------------------------------------------------------------- whole images


def test_postprocess_per_class_params_by_name():
    probs = np.zeros((2, 6, 6), np.float32)
    probs[0, :3] = 0.4
    probs[1, 3:] = 0.7
    params = {"a": {"threshold": 0.3}, "b": {"threshold": 0.8}}
    out = postprocess(probs, params, classes=["a", "b"])
    assert out.dtype == np.uint8 and out.shape == (2, 6, 6)
    assert out[0].sum() == 18 and out[1].sum() == 0
    with pytest.raises(ConfigError, match="no parameters for class"):
        postprocess(probs, {"a": {}}, classes=["a", "b"])


def test_exclusive_classes_never_overlap():
    probs = np.zeros((2, 8, 8), np.float32)
    probs[0, :, :5] = 0.6
    probs[1, :, 3:] = 0.7  # columns 3-4 are claimed by both; class 1 is more probable there
    free = postprocess(probs, [ClassParams(), ClassParams()])
    assert (free.sum(0) > 1).any()
    excl = postprocess(probs, [ClassParams(), ClassParams()], exclusive=True)
    assert excl.sum(0).max() == 1
    assert excl[1, :, 3:5].all() and not excl[0, :, 3:5].any()
    # dilation pushes class 0 back into class 1's pixels: the more probable class keeps them
    grown = postprocess(probs, [ClassParams(morphology=(("dilation", 2),)), ClassParams()], exclusive=True)
    assert grown.sum(0).max() == 1 and grown[1, :, 3:].all()
    assert restrict_to_argmax(probs)[0, 0, 4] == 0


# ---------------------------------------------------------------------------------------------- parameter format


def test_params_round_trip_and_errors():
    p = ClassParams(threshold=0.35, min_area=20, empty_top=0.8, empty_pixels=50,
                    morphology=(("fill_holes", 0), ("opening", 2)), keep_largest=True)
    assert ClassParams.from_dict(p.to_dict()) == p
    assert "empty if <50 px >0.80" in describe(p) and "opening(2)" in describe(p)
    assert params_list([p.to_dict()]) == [p]
    for bad, match in [({"threshold": 1.5}, "threshold"), ({"thresh": 0.5}, "unknown key"),
                       ({"min_area": -1}, "min_area"), ({"morphology": [["blur", 1]]}, "unknown operation"),
                       ({"morphology": ["opening"]}, r"morphology\[0\]"), ({"keep_largest": "yes"}, "keep_largest")]:
        with pytest.raises(ConfigError, match=match):
            ClassParams.from_dict(bad, "tune.json.salt")


def test_boxed_steps_equal_the_whole_image_operation():
    """The built-in steps run on the foreground's box only; the result must be the whole image's, also for objects
    at the image's edges and corners, for several objects far apart, and for an empty mask."""
    import cv2

    from segkit.postprocess.masks import MASK_STEPS, _kernel

    ops = {"opening": cv2.MORPH_OPEN, "closing": cv2.MORPH_CLOSE, "dilation": cv2.MORPH_DILATE,
           "erosion": cv2.MORPH_ERODE}
    rng = np.random.default_rng(0)
    masks = [np.zeros((40, 90), np.uint8)]
    for _ in range(30):
        m = np.zeros((40, 90), np.uint8)
        for _ in range(int(rng.integers(1, 4))):
            cy, cx = int(rng.integers(-3, 43)), int(rng.integers(-3, 93))  # some past the edges
            cv2.ellipse(m, (cx, cy), (int(rng.integers(1, 9)), int(rng.integers(1, 9))), float(rng.uniform(0, 180)),
                        0, 360, 1, -1)
        y, x = int(rng.integers(0, 30)), int(rng.integers(0, 80))
        part = m[y:y + 10, x:x + 10]
        part[rng.random(part.shape) < 0.1] ^= 1  # specks and pinholes in a corner of the box
        masks.append(m)
    boxed = sum(0 < cv2.boundingRect(m)[2] * cv2.boundingRect(m)[3] < m.size / 2 for m in masks)
    assert boxed > 10  # most masks' boxes are small: the boxed path is what is compared
    for m in masks:
        for name, op in ops.items():
            for r in (1, 2, 3):
                assert np.array_equal(morph(m, name, r), cv2.morphologyEx(m, op, _kernel(r))), (name, r)
        assert np.array_equal(morph(m, "fill_holes"), fill_holes(m))
        assert np.array_equal(morph(m, "fill_holes"), ndimage.binary_fill_holes(m).astype(np.uint8))
    assert MASK_STEPS.get("closing").radius and not MASK_STEPS.get("fill_holes").radius


def test_component_overlaps_on_the_box_equal_the_whole_labelling():
    from segkit.components import component_overlaps, components_in

    rng = np.random.default_rng(1)
    for i in range(40):
        mask = np.zeros((30, 70), np.uint8)
        if i:  # the first stays empty
            y, x = int(rng.integers(0, 25)), int(rng.integers(0, 60))
            mask[y:y + int(rng.integers(1, 8)), x:x + int(rng.integers(1, 12))] = rng.random((1, 1)) < 2
            mask[rng.random(mask.shape) < 0.005 * (i % 3)] = 1  # sometimes specks anywhere
        truth = (rng.random(mask.shape) < 0.3).astype(bool)
        _, _, areas, inters = components_in(mask, truth)
        got_areas, got_inters = component_overlaps(mask, truth)
        assert (got_areas[0], got_inters[0]) == (areas[0], inters[0])  # the background
        # the same components, maybe numbered in another order
        assert sorted(zip(got_areas[1:], got_inters[1:])) == sorted(zip(areas[1:], inters[1:]))


def test_bounding_box_is_the_same_through_opencv_and_numpy():
    from segkit.components import bounding_box

    rng = np.random.default_rng(2)
    for _ in range(20):
        mask = np.zeros((12, 17), np.uint8)
        y, x = rng.integers(0, 12), rng.integers(0, 17)
        mask[y:y + int(rng.integers(1, 5)), x:x + int(rng.integers(1, 5))] = 1
        for margin in (0, 2):
            fast = bounding_box(mask, margin)  # 2-D uint8: OpenCV
            assert fast == bounding_box(mask.astype(np.int32), margin)  # any other dtype: numpy
            assert fast == bounding_box(mask.view(bool), margin)
            assert bounding_box(mask[None], margin)[1:] == fast  # a 3-D array: numpy
            ys, xs = np.nonzero(mask)
            assert fast == (slice(max(ys.min() - margin, 0), min(ys.max() + 1 + margin, 12)),
                            slice(max(xs.min() - margin, 0), min(xs.max() + 1 + margin, 17)))
    assert bounding_box(np.zeros((4, 4), np.uint8)) is None and bounding_box(np.zeros((2, 4, 4), bool)) is None
