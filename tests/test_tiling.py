import pytest
import torch
from torch import nn

from segkit.errors import ConfigError
from segkit.inference.tiling import (
    GAUSSIAN_FLOOR,
    predict_tiled,
    stack_groups,
    tile_boxes,
    tile_starts,
    tile_weights,
    tiles_per_image,
)
from segkit.inference.tta import TTAPredictor


def conv_model(seed=0):
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 2, 3, padding=1), nn.Sigmoid())
    return net.eval()


def pointwise(batch):
    # per-pixel function: tiling cannot change it, so any difference from the plain result is a seam
    return torch.sigmoid(torch.stack([batch[:, 0] * 2 - batch[:, 1], batch[:, 2].sin()], dim=1))


@pytest.mark.parametrize("blend", ["gaussian", "linear"])
@pytest.mark.parametrize("tile", [16, (12, 20), 7])
def test_weights_positive_peak_one(blend, tile):
    w = tile_weights(tile, blend, overlap=0.5)
    th, tw = (tile, tile) if isinstance(tile, int) else tile
    assert w.shape == (th, tw) and w.dtype == torch.float32
    assert (w > 0).all()
    assert w.max() == pytest.approx(1.0)
    assert torch.equal(w, torch.flip(w, [0])) and torch.equal(w, torch.flip(w, [1]))  # symmetric


def test_gaussian_weights_shape():
    w = tile_weights(64, "gaussian")
    assert w.min() == pytest.approx(GAUSSIAN_FLOOR)  # clipped at the corners, not zero
    assert w[32, 32] > 0.99 and w[32, 0] < 0.01  # sigma = 64/8: centre ~1, border small
    lin = tile_weights(64, "linear", overlap=0.25)
    assert (lin[16:48, 16:48] == 1).all() and lin[0, 32] < 0.1  # flat centre, ramp over the 16-px overlap


def test_tile_starts_cover_with_overlap():
    for length in (5, 32, 33, 100, 257):
        for overlap in (0.0, 0.25, 0.5, 0.9):
            starts = tile_starts(length, 32, overlap)
            assert starts[0] == 0 and starts[-1] == max(length - 32, 0)
            gaps = [b - a for a, b in zip(starts, starts[1:])]
            assert all(0 < g <= max(32 * (1 - overlap), 1) + 1 for g in gaps)
    assert tile_starts(32, 32, 0.5) == [0]
    assert len(tile_boxes(100, 40, 32, 0.5)) == len(tile_starts(100, 32, 0.5)) * len(tile_starts(40, 32, 0.5))
    with pytest.raises(ConfigError, match="tile_overlap"):
        tile_starts(100, 32, 1.0)


@pytest.mark.parametrize("blend", ["gaussian", "linear"])
def test_single_tile_equals_plain_prediction(blend):
    model = conv_model()
    image = torch.randn(3, 24, 24)
    with torch.no_grad():
        plain = model(image[None])[0]
    tiled = predict_tiled(model, image, tile=24, overlap=0.5, blend=blend)
    assert (tiled - plain).abs().max() < 1e-6


@pytest.mark.parametrize("blend", ["gaussian", "linear"])
@pytest.mark.parametrize("overlap", [0.0, 0.5, 0.75])
def test_pointwise_model_no_seams_on_large_odd_image(blend, overlap):
    image = torch.randn(3, 203, 157)  # not a multiple of the tile in either axis
    tiled = predict_tiled(pointwise, image, tile=32, overlap=overlap, blend=blend, batch_size=5)
    plain = pointwise(image[None])[0]
    assert tiled.shape == plain.shape == (2, 203, 157)
    assert (tiled - plain).abs().max() < 2e-6


def test_overlapping_tiles_of_conv_model_close_to_plain_inside():
    # a 3x3-conv model only differs from the plain pass near tile borders (zero padding); blended weights keep
    # those border pixels from dominating, so the result stays close everywhere
    model = conv_model()
    image = torch.randn(3, 70, 90)
    with torch.no_grad():
        plain = model(image[None])[0]
    tiled = predict_tiled(model, image, tile=32, overlap=0.5, batch_size=3)
    assert tiled.shape == plain.shape
    assert (tiled - plain).abs().mean() < 5e-3


@pytest.mark.parametrize("pad_mode", ["reflect", "replicate", "constant"])
def test_image_smaller_than_tile_is_padded_and_cropped(pad_mode):
    image = torch.randn(3, 10, 40)  # smaller than the tile in H, larger in W
    tiled = predict_tiled(pointwise, image, tile=16, overlap=0.5, pad_mode=pad_mode)
    assert tiled.shape == (2, 10, 40)
    assert (tiled - pointwise(image[None])[0]).abs().max() < 2e-6
    tiny = torch.randn(3, 3, 2)  # reflect impossible: falls back to replicating the edge
    assert predict_tiled(pointwise, tiny, tile=8, pad_mode=pad_mode).shape == (2, 3, 2)


def test_batching_does_not_change_result_and_calls_are_bounded():
    model = conv_model()
    image = torch.randn(3, 50, 60)
    sizes = []

    def fn(batch):
        sizes.append(batch.shape[0])
        with torch.no_grad():
            return model(batch)

    one = predict_tiled(fn, image, tile=20, overlap=0.5, batch_size=1)
    n_tiles = len(sizes)
    sizes.clear()
    many = predict_tiled(fn, image, tile=20, overlap=0.5, batch_size=4)
    assert max(sizes) == 4 and sum(sizes) == n_tiles == len(tile_boxes(50, 60, 20, 0.5))
    torch.testing.assert_close(one, many, atol=1e-6, rtol=0)


def test_composes_with_tta():
    model = nn.Sequential(nn.Conv2d(3, 1, 1)).eval()  # pointwise: TTA and tiling both leave it unchanged
    image = torch.randn(3, 45, 61)
    tta = TTAPredictor(model, tta="d4")
    tiled = predict_tiled(tta, image, tile=16, overlap=0.5)
    with torch.no_grad():
        plain = torch.sigmoid(model(image[None]))[0]
    assert (tiled - plain).abs().max() < 2e-6
    tiled.add_(1)  # a normal tensor the caller may edit


def test_a_stack_of_images_shares_the_batches_and_equals_one_image_at_a_time():
    model = conv_model(seed=4)
    images = torch.randn(5, 3, 23, 21)  # TGS-like: a little larger than the tile, 4 tiles each
    sizes = []

    def fn(batch):
        sizes.append(batch.shape[0])
        with torch.no_grad():
            return model(batch)

    stacked = predict_tiled(fn, images, tile=16, overlap=0.5, blend="linear", batch_size=12)
    assert tiles_per_image(23, 21, 16, 0.5) == 4
    # 12 // 5 = 2 boxes of all 5 images per call: 4 boxes in two calls of 10 tiles
    assert sizes == [10, 10]
    assert stacked.shape == (5, 2, 23, 21)
    for k in range(5):
        alone = predict_tiled(fn, images[k], tile=16, overlap=0.5, blend="linear", batch_size=12)
        torch.testing.assert_close(stacked[k], alone, atol=1e-6, rtol=0)
    sizes.clear()
    predict_tiled(fn, images, tile=16, overlap=0.5, batch_size=2)  # fewer slots than images: one box a call
    assert sizes == [5, 5, 5, 5]
    # smaller than the tile: padded to it, and still one tile each
    assert predict_tiled(fn, images[:, :, :9, :9], tile=16).shape == (5, 2, 9, 9)
    assert tiles_per_image(9, 9, 16, 0.5) == 1
    # stacks that fill a batch: 4 tiles an image, 12 tiles a batch, so 3 images a stack
    assert stack_groups(list("abcdefg"), (23, 21), 16, 0.5, 12) == [list("abc"), list("def"), ["g"]]
    assert stack_groups(list("ab"), (23, 21), 16, 0.5, 3) == [["a"], ["b"]]  # an image alone fills the batch


def test_bad_predictor_output_and_arguments():
    with pytest.raises(ValueError, match="expected"):
        predict_tiled(lambda b: b[:, :, :4, :4], torch.randn(3, 20, 20), tile=8)
    with pytest.raises(ValueError, match="C, H, W"):
        predict_tiled(pointwise, torch.randn(1, 1, 3, 20, 20), tile=8)
    with pytest.raises(ConfigError, match="tile_blend"):
        predict_tiled(pointwise, torch.randn(3, 20, 20), tile=8, blend="cosine")
    with pytest.raises(ConfigError, match="batch_size"):
        predict_tiled(pointwise, torch.randn(3, 20, 20), tile=8, batch_size=0)


def test_a_3d_window_slides_over_a_volume_like_a_tile_over_an_image():
    """A 3D tile is a sliding window: a constant network gives a constant map, a pointwise one is exact (no seams),
    and windows batched together give what one window at a time gives."""
    torch.manual_seed(0)
    volume = torch.rand(2, 13, 21, 18)  # (C, D, H, W), no side a multiple of the window's
    w = tile_weights((8, 12, 10))
    assert w.shape == (8, 12, 10) and (w > 0).all() and w.max() == pytest.approx(1.0)
    assert all(torch.equal(w, torch.flip(w, [axis])) for axis in range(3))

    def constant(batch):
        return torch.full((batch.shape[0], 1, *batch.shape[2:]), 0.3)

    out = predict_tiled(constant, volume, (8, 12, 10), overlap=0.5)
    assert out.shape == (1, 13, 21, 18) and torch.allclose(out, torch.full_like(out, 0.3))

    def voxelwise(batch):
        return torch.sigmoid(batch[:, :1] * 3 - batch[:, 1:])

    exact = voxelwise(volume[None])[0]
    calls = []

    def counted(batch):
        calls.append(batch.shape[0])
        return voxelwise(batch)

    one = predict_tiled(counted, volume, (8, 12, 10), overlap=0.5, batch_size=1)
    windows = len(calls)
    assert windows == 3 * 3 * 3 and set(calls) == {1}
    calls.clear()
    batched = predict_tiled(counted, volume, (8, 12, 10), overlap=0.5, batch_size=8)
    assert max(calls) == 8 and len(calls) == -(-windows // 8)
    assert torch.allclose(one, exact, atol=1e-6) and torch.allclose(batched, one, atol=1e-6)
    # a volume smaller than the window is padded to it and cropped back
    small = volume[:, :5, :7, :6]
    assert torch.allclose(predict_tiled(voxelwise, small, (8, 12, 10)), voxelwise(small[None])[0], atol=1e-6)
    with pytest.raises(ValueError, match="3D tile expects one"):
        predict_tiled(voxelwise, volume[0, 0], (8, 12, 10))
