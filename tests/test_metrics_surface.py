"""Surface distances: exact agreement with brute force, conventions, empty masks, surface definition."""

import math

import numpy as np
import pytest
from scipy import ndimage as ndi
from scipy.spatial.distance import cdist

from segkit.errors import ConfigError, DataError
from segkit.metrics import nearest
from segkit.metrics import surface as sf


def brute_force(pred, truth, spacing, connectivity=1):
    """Directed surface distances from pairwise distances between the two surface point sets."""
    structure = ndi.generate_binary_structure(pred.ndim, connectivity)
    border = [m & ~ndi.binary_erosion(m, structure=structure, border_value=0) for m in (pred, truth)]
    pairwise = cdist(np.argwhere(border[0]) * spacing, np.argwhere(border[1]) * spacing)
    return pairwise.min(axis=1), pairwise.min(axis=0)


def random_shape(rng, shape):
    """Smooth-ish blobs with holes and specks, so surfaces have many distances, ties and far pieces."""
    field = ndi.gaussian_filter(rng.standard_normal(shape), 1.5)
    return (field > 0.1) | (rng.random(shape) < 0.01)


@pytest.mark.parametrize("method", sf.METHODS)
@pytest.mark.parametrize("shape", [(40, 33), (14, 17, 12)])
def test_distances_match_brute_force(shape, method):
    rng = np.random.default_rng(sum(shape))
    for _ in range(3):
        spacing = rng.uniform(0.3, 3.0, size=len(shape))  # anisotropic
        pred, truth = random_shape(rng, shape), random_shape(rng, shape)
        d = sf.surface_distances(pred, truth, spacing, method=method)
        ref_pt, ref_tp = brute_force(pred, truth, spacing)
        np.testing.assert_allclose(d.pred_to_truth, ref_pt, rtol=0, atol=1e-6)
        np.testing.assert_allclose(d.truth_to_pred, ref_tp, rtol=0, atol=1e-6)
        both = np.concatenate([ref_pt, ref_tp])
        assert d.hausdorff() == pytest.approx(both.max(), abs=1e-6)
        assert d.hd95(convention="medpy") == pytest.approx(np.percentile(both, 95), abs=1e-6)
        assert d.hd95(convention="monai") == pytest.approx(
            max(np.percentile(ref_pt, 95), np.percentile(ref_tp, 95)), abs=1e-6
        )
        assert d.asd() == pytest.approx(ref_pt.mean(), abs=1e-6)
        assert d.assd() == pytest.approx(both.mean(), abs=1e-6)


def test_far_voxels_fall_back_to_the_tree(monkeypatch):
    rng = np.random.default_rng(7)
    pred, truth = np.zeros((40, 30), bool), np.zeros((40, 30), bool)
    pred[:6, :8] = rng.random((6, 8)) < 0.6
    truth[30:, 20:] = rng.random((10, 10)) < 0.6
    spacing = np.array([0.7, 1.3])
    ref_pt, ref_tp = brute_force(pred, truth, spacing)
    monkeypatch.setattr(nearest, "ROW_BUDGET", 5)  # every voxel here is more than 2 rows from the other mask
    d = sf.surface_distances(pred, truth, spacing)
    np.testing.assert_allclose(d.pred_to_truth, ref_pt, rtol=0, atol=1e-6)
    np.testing.assert_allclose(d.truth_to_pred, ref_tp, rtol=0, atol=1e-6)


@pytest.mark.parametrize("far_path", ["slice maps", "k-d tree"])
def test_three_d_far_apart_and_thin_slices(monkeypatch, far_path):
    monkeypatch.setattr(nearest, "WINDOW_LEVELS", 1)  # most queries here are far
    monkeypatch.setattr(nearest, "TREE_BUILD_VOXELS", 10**9 if far_path == "slice maps" else 0)
    monkeypatch.setattr(nearest, "TREE_QUERY_VOXELS", 0)
    rng = np.random.default_rng(8)
    pred, truth = np.zeros((9, 25, 20), bool), np.zeros((9, 25, 20), bool)
    pred[0, :3, :3] = True  # a lone corner speck
    pred[4:, 5:15, 5:12] = rng.random((5, 10, 7)) < 0.7
    truth[1:3, 18:, 14:] = True
    truth[7, 2, 19] = True
    spacing = np.array([3.0, 0.5, 0.9])
    ref_pt, ref_tp = brute_force(pred, truth, spacing)
    d = sf.surface_distances(pred, truth, spacing)
    np.testing.assert_allclose(d.pred_to_truth, ref_pt, rtol=0, atol=1e-6)
    np.testing.assert_allclose(d.truth_to_pred, ref_tp, rtol=0, atol=1e-6)


def test_one_dimensional_and_connectivity_options():
    line_a = np.array([0, 1, 1, 1, 0, 0, 0, 0], bool)
    line_b = np.array([0, 0, 0, 0, 0, 1, 1, 0], bool)
    d = sf.surface_distances(line_a, line_b, spacing=0.5)
    np.testing.assert_allclose(d.pred_to_truth, [2.0, 1.0])  # surface voxels 1 and 3 to voxel 5
    rng = np.random.default_rng(3)
    pred, truth = random_shape(rng, (20, 20)), random_shape(rng, (20, 20))
    d8 = sf.surface_distances(pred, truth, (1.0, 2.0), connectivity=2)
    ref_pt, _ = brute_force(pred, truth, np.array([1.0, 2.0]), connectivity=2)
    np.testing.assert_allclose(d8.pred_to_truth, ref_pt, atol=1e-9)


def test_surface_definition():
    m = np.zeros((5, 6), bool)
    m[:4, 1:5] = True  # touches the top border
    s = sf.mask_surface(m)
    expected = m.copy()
    expected[1:3, 2:4] = (
        False  # only pixels with all four neighbours inside are interior; row 0 is on the border
    )
    np.testing.assert_array_equal(s, expected)
    full = sf.mask_surface(m, connectivity=2)
    assert full.sum() >= s.sum()
    np.testing.assert_array_equal(full, m & ~ndi.binary_erosion(m, np.ones((3, 3)), border_value=0))


def test_hand_cases():
    a = np.zeros((10, 10), bool)
    b = a.copy()
    a[2, 3] = True
    b[6, 6] = True
    assert sf.hausdorff(a, b) == pytest.approx(5.0)
    assert sf.hausdorff(a, b, spacing=(2.0, 1.0)) == pytest.approx(math.hypot(8.0, 3.0))
    # a 4x4 square and the same square shifted one pixel right
    a = np.zeros((10, 10), bool)
    a[2:6, 2:6] = True
    b = np.roll(a, 1, axis=1)
    assert sf.hausdorff(a, b) == pytest.approx(1.0)
    # 12 surface pixels each: of a's, the 6 on b's top and bottom rows are 0 away; its left column (4) and the
    # two right-column pixels now inside b are 1 away; the same the other way round
    assert sf.assd(a, b) == pytest.approx(6 / 12)
    assert sf.average_surface_distance(a, b) == pytest.approx(6 / 12)
    assert sf.hd95(a, b) == pytest.approx(1.0)


def test_conventions_differ_where_directions_differ():
    # truth: a big square; pred: the same square plus one far speck, seen from few pred surface voxels
    truth = np.zeros((40, 40), bool)
    truth[5:25, 5:25] = True
    pred = truth.copy()
    pred[35, 35] = True
    d = sf.surface_distances(pred, truth)
    speck = math.hypot(11, 11)  # corner (24, 24) to (35, 35)
    assert d.hausdorff() == pytest.approx(speck)
    # monai: pred->truth has 76 zeros and one far value: its 95th percentile is 0; truth->pred all 0
    assert d.hd95("monai") == pytest.approx(0.0)
    both = np.concatenate([d.pred_to_truth, d.truth_to_pred])
    assert d.hd95("medpy") == pytest.approx(np.percentile(both, 95))
    assert d.assd() == pytest.approx(speck / 153)
    with pytest.raises(ConfigError, match="convention"):
        d.hd95("deepmind")


def test_empty_masks():
    empty = np.zeros((6, 8), bool)
    one = empty.copy()
    one[2, 2] = True
    for name in sf.SURFACE_SCORES:
        assert sf.surface_distances(empty, empty).score(name) == 0.0
        assert sf.surface_distances(one, empty).score(name) == math.inf
        assert sf.surface_distances(empty, one).score(name, empty_fill=99.0) == 99.0
    diagonal = math.hypot(5 * 2.0, 7 * 0.5)
    assert sf.hd95(empty, one, (2.0, 0.5), empty_fill="diagonal") == pytest.approx(diagonal)
    assert sf.surface_distances(one, empty).empty == "truth"
    with pytest.raises(ConfigError, match="empty_fill"):
        sf.hd95(empty, one, empty_fill="max")


def test_surface_scores_batched_and_bad_inputs():
    rng = np.random.default_rng(5)
    preds = rng.random((2, 2, 12, 12)) < 0.3
    truths = rng.random((2, 2, 12, 12)) < 0.3
    truths[1, 1] = False
    out = sf.surface_scores(preds, truths, (1.0, 1.5), empty_fill=-1.0)
    assert set(out) == set(sf.SURFACE_SCORES) and out["hd95"].shape == (2, 2)
    assert out["assd"][0, 1] == pytest.approx(sf.assd(preds[0, 1], truths[0, 1], (1.0, 1.5)))
    assert out["hausdorff"][1, 1] == -1.0
    with pytest.raises(DataError, match="spacing"):
        sf.hd95(preds[0, 0], truths[0, 0], spacing=(1.0, 2.0, 3.0))
    with pytest.raises(DataError, match="differs"):
        sf.hd95(preds[0, 0], truths[0, 0, :5])
    with pytest.raises(ConfigError, match="method"):
        sf.surface_distances(preds[0, 0], truths[0, 0], method="fast")


def test_agrees_with_medpy_when_installed():
    binary = pytest.importorskip("medpy.metric.binary")
    rng = np.random.default_rng(11)
    pred, truth = random_shape(rng, (10, 24, 20)), random_shape(rng, (10, 24, 20))
    spacing = (2.5, 0.8, 1.1)
    d = sf.surface_distances(pred, truth, spacing)
    assert d.hd95("medpy") == pytest.approx(binary.hd95(pred, truth, spacing), abs=1e-9)
    assert d.hausdorff() == pytest.approx(binary.hd(pred, truth, spacing), abs=1e-9)
    assert d.asd() == pytest.approx(binary.asd(pred, truth, spacing), abs=1e-9)
    assert d.assd() == pytest.approx(binary.assd(pred, truth, spacing), abs=1e-9)
