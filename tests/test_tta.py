import pytest
import torch
from torch import nn

from segkit.errors import ConfigError
from segkit.inference.tta import (
    CPU_CHUNK,
    GMEAN_EPS,
    TTA,
    RunningMean,
    TTAPredictor,
    View,
    average_predictions,
    views_for,
)


def conv_net(in_ch=3, out_ch=2, seed=0):
    """A small conv net with padding, BatchNorm and a stride: not equivariant to flips or rotations."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(in_ch, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
        nn.Conv2d(4, 4, 3, stride=2, padding=1), nn.ReLU(),
        nn.Upsample(scale_factor=2), nn.Conv2d(4, out_ch, 3, padding=1),
    )


class Asym(nn.Module):
    """Output depends on the orientation: adds a ramp along W, so TTA visibly changes the result."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 3, padding=1)
        torch.manual_seed(1)
        nn.init.normal_(self.conv.weight)

    def forward(self, x):
        ramp = torch.linspace(-1, 1, x.shape[-1])
        return self.conv(x) + ramp


def test_registry_names_and_sizes():
    assert TTA.names() == ["d4", "flips", "hflip", "mirror3d", "none"]
    assert [len(views_for(n)) for n in ("none", "hflip", "flips", "d4", "mirror3d")] == [1, 2, 4, 8, 8]
    with pytest.raises(ConfigError, match="predict.tta.*d4"):
        views_for("d8")


def test_d4_views_are_distinct_and_form_the_group():
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    images = {tuple(v.forward(x).flatten().tolist()) for v in views_for("d4")}
    assert len(images) == 8  # all 8 symmetries of a square with distinct pixels


@pytest.mark.parametrize("view", views_for("d4"), ids=lambda v: v.name)
def test_inverse_restores_square_input_exactly(view):
    x = torch.randn(2, 3, 8, 8)
    assert torch.equal(view.inverse(view.forward(x)), x)


@pytest.mark.parametrize("view", views_for("d4", shape=(5, 7)), ids=lambda v: v.name)
def test_inverse_restores_non_square_input_for_shape_keeping_views(view):
    x = torch.randn(2, 3, 5, 7)
    y = view.forward(x)
    assert y.shape == x.shape
    assert torch.equal(view.inverse(y), x)


def test_non_square_drops_rotations():
    views = views_for("d4", shape=(2, 3, 5, 7))
    assert len(views) == 4 and all(v.k % 2 == 0 for v in views)
    assert len(views_for("d4", shape=(6, 6))) == 8


def test_flips_view_set():
    x = torch.randn(1, 1, 4, 6)
    both = View(hflip=True, vflip=True)
    assert torch.equal(both.forward(x), torch.rot90(x, 2, dims=(-2, -1)))
    assert [v.name for v in views_for("flips")] == ["identity", "hflip", "vflip", "hflip+vflip"]


@pytest.mark.parametrize("tta", ["none", "hflip", "flips", "d4"])
@pytest.mark.parametrize("shape", [(2, 3, 8, 8), (2, 3, 6, 10)])
def test_equivariant_model_unchanged_by_tta(tta, shape):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 2, 1), nn.Tanh(), nn.Conv2d(2, 2, 1))  # pointwise: commutes with D4
    x = torch.randn(*shape)
    plain = TTAPredictor(model, tta="none")(x)
    with_tta = TTAPredictor(model, tta=tta, chunk=3)(x)
    assert with_tta.shape == (shape[0], 2, *shape[2:])
    torch.testing.assert_close(with_tta, plain, atol=1e-6, rtol=0)
    torch.testing.assert_close(plain, torch.sigmoid(model(x)), atol=1e-6, rtol=0)


def reference_loop(model, x, views, activation, merge):
    """One view per forward call, merged with the textbook formulas."""
    outs = []
    with torch.no_grad():
        for v in views:
            y = v.inverse(model(v.forward(x)))
            outs.append(torch.sigmoid(y) if activation == "sigmoid" else torch.softmax(y, 1))
    s = torch.stack(outs)
    if merge == "mean":
        return s.mean(0)
    if merge == "max":
        return s.amax(0)
    g = s.clamp_min(GMEAN_EPS).log().mean(0).exp()
    return g / g.sum(1, keepdim=True) if activation == "softmax" else g


@pytest.mark.parametrize("merge", ["mean", "gmean", "max"])
@pytest.mark.parametrize("chunk", [1, 2, 3, 5, 8, None])
def test_chunked_equals_one_view_loop(chunk, merge):
    model = conv_net()
    x = torch.randn(3, 3, 12, 12)
    activation = "softmax" if merge == "gmean" else "sigmoid"
    model.eval()
    expected = reference_loop(model, x, views_for("d4"), activation, merge)
    got = TTAPredictor(model, tta="d4", merge=merge, chunk=chunk, activation=activation)(x)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    # and TTA matters for this model, so the comparison above is not vacuous
    plain = TTAPredictor(model, tta="none", activation=activation)(x)
    assert (got - plain).abs().max() > 1e-3


def test_asymmetric_model_hflip_is_mean_of_two():
    model = Asym()
    x = torch.randn(2, 3, 6, 9)
    got = TTAPredictor(model, tta="hflip", activation=None)(x)
    with torch.no_grad():
        expected = (model(x) + torch.flip(model(torch.flip(x, [-1])), [-1])) / 2
    torch.testing.assert_close(got, expected)


class Fixed(nn.Module):
    """Returns a fixed map that depends only on which view is asked (the view is read off the input)."""

    def __init__(self, per_view):
        super().__init__()
        self.per_view = per_view  # {input pixel (0,0) value: output probs 2x2}

    def forward(self, x):
        return torch.stack([self.per_view[round(float(xi[0, 0, 0]))] for xi in x])


def test_gmean_and_max_hand_case():
    # input whose 4 corners carry 0,1,2,3: each hflip view puts a different corner at (0,0)
    x = torch.tensor([[[[0.0, 1.0], [2.0, 3.0]]]])
    a = torch.tensor([[[0.2, 0.8], [0.5, 0.0]]])
    b = torch.tensor([[[0.8, 0.2], [0.5, 1.0]]])  # hflip view sees corner 1; its output is flipped back
    model = Fixed({0: a, 1: torch.flip(b, [-1])})
    mx = TTAPredictor(model, tta="hflip", merge="max", activation=None)(x)
    torch.testing.assert_close(mx, torch.tensor([[[[0.8, 0.8], [0.5, 1.0]]]]))
    mean = TTAPredictor(model, tta="hflip", merge="mean", activation=None)(x)
    torch.testing.assert_close(mean, torch.tensor([[[[0.5, 0.5], [0.5, 0.5]]]]))
    g = TTAPredictor(model, tta="hflip", merge="gmean", activation=None)(x)
    # sqrt(0.2*0.8)=0.4 twice, sqrt(0.25)=0.5, and a zero is clamped: sqrt(1e-6 * 1) = 1e-3
    torch.testing.assert_close(g, torch.tensor([[[[0.4, 0.4], [0.5, 1e-3]]]]))


def test_softmax_gmean_sums_to_one():
    model = conv_net(out_ch=3)
    x = torch.randn(2, 3, 8, 8)
    p = TTAPredictor(model, tta="d4", merge="gmean", activation="softmax")(x)
    torch.testing.assert_close(p.sum(1), torch.ones(2, 8, 8))


def test_aux_output_tuple_and_result_is_editable():
    class WithLabel(nn.Module):
        def forward(self, x):
            return x[:, :1], x.mean((2, 3))

    p = TTAPredictor(WithLabel(), tta="flips")(torch.zeros(1, 2, 4, 4))
    p.mul_(2)  # not an inference tensor: in-place edits after the call are allowed
    torch.testing.assert_close(p, torch.ones(1, 1, 4, 4))


def test_bf16_autocast_and_channels_last_close_to_fp32():
    model = conv_net()
    x = torch.randn(2, 3, 16, 16)
    ref = TTAPredictor(model, tta="d4")(x)
    low = TTAPredictor(conv_net(), tta="d4", amp="bf16", channels_last=True, chunk=4)(x)
    assert low.dtype == torch.float32
    assert (low - ref).abs().max() < 2e-2


def test_bad_arguments_raise_config_error():
    with pytest.raises(ConfigError, match="tta_merge"):
        TTAPredictor(nn.Identity(), merge="median")
    with pytest.raises(ConfigError, match="predict.tta"):
        TTAPredictor(nn.Identity(), tta="d8")
    with pytest.raises(ConfigError, match="predict.amp"):
        TTAPredictor(nn.Identity(), amp="int8")
    with pytest.raises(ConfigError, match="tta_chunk"):
        TTAPredictor(nn.Identity(), chunk=0)


def test_default_chunk_by_device():
    p = TTAPredictor(nn.Identity())
    assert p.chunk_for(torch.device("cuda"), 8) == 8
    assert p.chunk_for(torch.device("cpu"), 8) == CPU_CHUNK
    assert p.chunk_for(torch.device("cpu"), 1) == 1
    assert TTAPredictor(nn.Identity(), chunk=20).chunk_for(torch.device("cpu"), 8) == 8


def test_model_put_in_eval_mode():
    model = conv_net().train()
    TTAPredictor(model)
    assert not model.training


def test_average_predictions_streams_a_generator():
    x = torch.randn(2, 3, 8, 8)
    models = [conv_net(seed=s) for s in range(3)]
    loaded = []

    def lazily():
        for m in models:
            loaded.append(m)
            yield TTAPredictor(m, tta="hflip")

    got = average_predictions(lazily(), x)
    expected = torch.stack([TTAPredictor(m, tta="hflip")(x) for m in models]).mean(0)
    torch.testing.assert_close(got, expected)
    assert len(loaded) == 3
    weighted = average_predictions((TTAPredictor(m, tta="none") for m in models[:2]), x, weights=[3, 1])
    p0, p1 = (TTAPredictor(m, tta="none")(x) for m in models[:2])
    torch.testing.assert_close(weighted, (3 * p0 + p1) / 4)


def test_running_mean_rejects_shape_change():
    m = RunningMean()
    m.add(torch.ones(2, 2))
    m.add(torch.zeros(2, 2))
    torch.testing.assert_close(m.value, torch.full((2, 2), 0.5))
    with pytest.raises(ValueError, match="shape"):
        m.add(torch.ones(3))


def test_auto_precision_is_chosen_by_the_batch_device(monkeypatch):
    from segkit.compute import device
    model = conv_net()
    x = torch.randn(2, 3, 12, 12)
    plain = TTAPredictor(model, tta="hflip", amp="none")(x)
    in_bf16 = TTAPredictor(model, tta="hflip", amp="bf16")(x)
    assert not torch.equal(plain, in_bf16)  # the two precisions are told apart
    monkeypatch.setattr(device, "cpu_has_native_bf16", lambda: False)
    assert torch.equal(TTAPredictor(model, tta="hflip", amp="auto")(x), plain)
    monkeypatch.setattr(device, "cpu_has_native_bf16", lambda: True)
    assert torch.equal(TTAPredictor(model, tta="hflip", amp="auto")(x), in_bf16)


def test_a_network_that_activates_itself_merges_like_its_logits():
    """An exported network gives probabilities: with ``activated`` it is not activated twice, and gmean still
    renormalises its softmax."""
    torch.manual_seed(0)
    net = torch.nn.Conv2d(2, 3, 3, padding=1)
    x = torch.rand(2, 2, 8, 8)
    for merge in ("mean", "gmean", "max"):
        want = TTAPredictor(net, tta="d4", merge=merge, activation="softmax")(x)
        got = TTAPredictor(lambda t: torch.softmax(net(t), dim=1), tta="d4", merge=merge, activation="softmax",
                           activated=True)(x)
        assert torch.allclose(want, got, atol=1e-6), merge


def test_mirror3d_flips_the_three_axes_of_a_volume():
    """nnU-Net's mirroring: the 8 flips of (D, H, W), each undone exactly; a voxelwise network is unchanged by it, an
    oriented one gets the mean of its 8 mirrored outputs; an image batch is refused (its D axis is the channels)."""
    views = views_for("mirror3d")
    x = torch.rand(2, 1, 5, 6, 7)
    assert len({tuple(v.forward(x).flatten().tolist()) for v in views}) == 8
    assert all(torch.equal(v.inverse(v.forward(x)), x) for v in views)
    voxelwise = nn.Conv3d(1, 2, 1)
    assert torch.allclose(TTAPredictor(voxelwise, tta="mirror3d")(x), torch.sigmoid(voxelwise(x)), atol=1e-6)

    class Oriented(nn.Module):
        def forward(self, v):
            return v + torch.linspace(-1, 1, v.shape[-3])[:, None, None]  # a ramp along D

    merged = TTAPredictor(Oriented(), tta="mirror3d", activation=None)(x)
    assert torch.allclose(merged, x, atol=1e-6)  # the ramp and its mirror cancel: only the input is left
    with pytest.raises(ConfigError, match="needs \\(N, C, D, H, W\\) batches"):
        TTAPredictor(nn.Conv2d(3, 1, 1), tta="mirror3d")(torch.rand(1, 3, 8, 8))
