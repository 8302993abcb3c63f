"""Resampling a volume competition to its working spacing: the target rule, and round trips that keep the voxels'
places in the world (affine), the label values and the grid."""

import numpy as np
import pytest

from segkit.data.spacing import resample, resampled_affine, resampled_shape, target_spacing


def test_the_target_is_the_median_and_a_thick_axis_its_10th_percentile():
    assert target_spacing([[1.0, 0.8, 0.8], [1.2, 0.7, 0.7], [1.1, 0.9, 0.9]]) == pytest.approx((1.1, 0.8, 0.8))
    thick = [5.0, 5.0, 5.0, 5.0, 5.0, 5.0, 4.0, 3.0, 2.5, 2.5]  # median 5 > 3 x 0.7
    rows = [[z, 0.7, 0.7] for z in thick]
    assert target_spacing(rows) == pytest.approx((np.percentile(thick, 10), 0.7, 0.7))
    # never finer than the other axes: a few sub-millimetre slices do not make the whole set 0.5 mm thick
    assert target_spacing([[z, 1.0, 1.0] for z in [0.5, 0.5, 4.0, 4.0, 4.0, 4.0, 4.0]])[0] == pytest.approx(1.0)
    with pytest.raises(ValueError):
        target_spacing([])


def test_a_resampled_volume_keeps_its_place_in_the_world():
    affine = np.array([[0.0, 0.0, -1.5, 40.0], [0.0, 0.8, 0.0, -12.0], [2.5, 0.0, 0.0, 7.0], [0, 0, 0, 1]])
    shape, spacing = (12, 20, 16), (2.5, 0.8, 1.5)
    new = resampled_shape(shape, spacing, (1.0, 1.0, 1.0))
    assert new == (30, 16, 24)
    moved = resampled_affine(affine, shape, new)
    assert np.allclose(np.abs(moved[:3, :3]).sum(0), [1.0, 1.0, 1.0])  # the new spacing, axis by axis
    # the grid's outer corners (voxel edges) stay where they were, and a round trip gives the affine back
    for a, b in (([-0.5] * 3, [-0.5] * 3), ([n - 0.5 for n in shape], [n - 0.5 for n in new])):
        assert np.allclose(affine @ [*a, 1], moved @ [*b, 1])
    assert np.allclose(resampled_affine(moved, new, shape), affine)
    # and the values go with the places: a volume holding each voxel's world x, resampled, holds the new voxels'
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1)
    world_x = (grid @ affine[:3, :3].T + affine[:3, 3])[..., 0].astype(np.float32)
    out = resample(world_x, new).numpy()
    new_grid = np.stack(np.meshgrid(*[np.arange(n) for n in new], indexing="ij"), -1)
    want = (new_grid @ moved[:3, :3].T + moved[:3, 3])[..., 0]
    inside = (slice(2, -2),) * 3  # trilinear is exact for a linear field away from the clamped border
    assert np.allclose(out[inside], want[inside], atol=1e-3)


def test_labels_keep_their_values_and_channels_resample_together():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, size=(6, 8, 10)).astype(np.uint8)
    up = resample(labels, (12, 16, 20), labels=True)
    assert up.dtype.is_floating_point is False and set(np.unique(up.numpy())) <= {0, 1, 2}
    assert np.array_equal(resample(up, (6, 8, 10), labels=True).numpy(), labels)  # an integer factor: exact
    probs = rng.random((2, 6, 8, 10)).astype(np.float32)
    both = resample(probs, (9, 8, 5))
    assert tuple(both.shape) == (2, 9, 8, 5)
    assert np.allclose(both[1].numpy(), resample(probs[1], (9, 8, 5)).numpy())
    assert resample(probs, (6, 8, 10)) is not None and np.array_equal(resample(probs, (6, 8, 10)).numpy(), probs)
