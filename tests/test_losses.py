"""Every loss in every mode gives a finite value and gradient (fp32 and bf16 logits); weighted sums, stages, class
weights, the boundary loss's distance map, and config errors that name the key."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from segkit.config.schema import TrainConfig
from segkit.errors import ConfigError
from segkit.losses import LOSSES, LossSchedule, Target, build_loss, signed_distance

pytestmark = pytest.mark.usefixtures("one_torch_thread")

MODES = [("binary", 1), ("multilabel", 3), ("multiclass", 3)]


def make_batch(mode: str, k: int, seed: int = 0) -> tuple[torch.Tensor, int]:
    """(N, K, H, W) masks with one all-empty image; multiclass channels mutually exclusive."""
    g = torch.Generator().manual_seed(seed)
    if mode == "multiclass":
        labels = torch.randint(0, k + 1, (2, 16, 16), generator=g)
        mask = torch.stack([labels == c + 1 for c in range(k)], 1).float()
    else:
        mask = (torch.rand(2, k, 16, 16, generator=g) > 0.7).float()
    mask[1] = 0
    return mask, (k + 1 if mode == "multiclass" else k)


@pytest.mark.parametrize("mode,k", MODES)
@pytest.mark.parametrize("name", LOSSES.names())
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_every_loss_is_finite_with_a_gradient(name, mode, k, dtype):
    mask, channels = make_batch(mode, k)
    x = torch.randn(2, channels, 16, 16, requires_grad=True)
    weights = None if k == 1 else [1.0, 2.0, 0.5]
    loss = build_loss({name: 1.0}, mode, k, class_weights=weights)
    edges = torch.randn(2, 1, 16, 16)  # a network's edge logits: the dual_task term needs them, the others ignore them
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
        logits = x.to(dtype)  # what a bf16 network hands the loss
        total, parts = loss(logits, mask, edge_logits=edges.to(dtype))
    assert total.dtype == torch.float32 and torch.isfinite(total)
    total.backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert set(parts) == {name}


@pytest.mark.parametrize("mode,k", MODES)
def test_weighted_sum_and_aux_term(mode, k):
    mask, channels = make_batch(mode, k)
    logits = torch.randn(2, channels, 16, 16)
    both = build_loss({"bce": 1.0, "dice": 0.5}, mode, k, aux_weight=0.2)
    bce = build_loss({"bce": 1.0}, mode, k)(logits, mask)[0]
    dice = build_loss({"dice": 1.0}, mode, k)(logits, mask)[0]
    aux, has = torch.randn(2, k), (mask.amax((2, 3)) > 0).float()
    total, parts = both(logits, mask, aux, has)
    aux_bce = torch.nn.functional.binary_cross_entropy_with_logits(aux, has)
    assert torch.allclose(total, bce + 0.5 * dice + 0.2 * aux_bce, atol=1e-6)
    assert set(parts) == {"bce", "dice", "aux"}


def test_multiclass_target_is_a_label_map_with_background():
    mask = torch.zeros(1, 2, 2, 2)
    mask[0, 0, 0, 0] = 1
    mask[0, 1, 1, 1] = 1
    t = Target.of(mask, "multiclass")
    assert t.labels.tolist() == [[[1, 0], [0, 2]]]


def test_class_weights_change_the_loss_and_must_match_the_classes():
    mask, channels = make_batch("multilabel", 3)
    logits = torch.randn(2, channels, 16, 16)
    for name in ("bce", "dice", "focal", "lovasz", "boundary"):
        plain = build_loss({name: 1}, "multilabel", 3)(logits, mask)[0]
        weighted = build_loss({name: 1}, "multilabel", 3, class_weights=[5.0, 0.1, 0.1])(logits, mask)[0]
        assert not torch.isclose(plain, weighted), name
    with pytest.raises(ConfigError, match="class_weights: 2 weights for 3 classes"):
        build_loss({"bce": 1}, "multilabel", 3, class_weights=[1.0, 2.0])


def test_pos_weight_raises_the_cost_of_missed_positives():
    mask = torch.ones(1, 1, 4, 4)
    logits = torch.full((1, 1, 4, 4), -1.0)
    plain = build_loss({"bce": 1}, "binary", 1)(logits, mask)[0]
    heavy = build_loss({"bce": 1}, "binary", 1, params={"bce": {"pos_weight": 3.0}})(logits, mask)[0]
    assert torch.isclose(heavy, 3 * plain)


def test_balanced_bce_gives_rare_positives_the_weight_of_all_negatives():
    mask = torch.zeros(1, 1, 10, 10)
    mask[0, 0, 0, :5] = 1  # 5 % positives
    for name, ratio in (("bce", 5 / 95), ("balanced_bce", 1.0)):
        x = torch.zeros(1, 1, 10, 10, requires_grad=True)  # undecided everywhere: equal pull per unit weight
        build_loss({name: 1}, "binary", 1)(x, mask)[0].backward()
        pull_pos, pull_neg = x.grad[mask > 0].abs().sum(), x.grad[mask == 0].abs().sum()
        assert torch.isclose(pull_pos / pull_neg, torch.tensor(ratio), rtol=1e-4), name


@pytest.mark.parametrize("per_image", [False, True])
def test_batched_lovasz_hinge_equals_smp(per_image):
    import segmentation_models_pytorch as smp

    torch.manual_seed(0)
    mask = (torch.rand(4, 1, 12, 12) > 0.6).float()
    mask[1] = 0  # an empty image
    mask[2] = 1  # a full one
    logits = torch.randn(4, 1, 12, 12) * 2
    ours = build_loss({"lovasz": 1}, "binary", 1, params={"lovasz": {"per_image": per_image}})(logits, mask)[0]
    theirs = smp.losses.LovaszLoss("binary", per_image=per_image)(logits, mask)
    assert torch.allclose(ours, theirs, atol=1e-5)


def test_elu_lovasz_keeps_a_gradient_beyond_the_margin():
    mask = torch.zeros(1, 1, 4, 4)
    mask[..., :2] = 1
    x = (mask * 10 - 5).requires_grad_(True)  # every pixel right by a margin of 5
    for hinge, moves in (("relu", False), ("elu", True)):
        x.grad = None
        loss = build_loss({"lovasz": 1}, "binary", 1, params={"lovasz": {"hinge": hinge}})(x, mask)[0]
        loss.backward()
        assert bool((x.grad.abs() > 0).any()) is moves, hinge
    with pytest.raises(ConfigError, match="train.loss_params.lovasz"):
        build_loss({"lovasz": 1}, "binary", 1, params={"lovasz": {"hinge": "tanh"}})


def test_symmetric_lovasz_gives_every_pixel_of_an_empty_image_a_gradient():
    mask = torch.zeros(1, 1, 8, 8)
    grads = {}
    for symmetric in (False, True):
        x = torch.linspace(-2, 0.5, 64).reshape(1, 1, 8, 8).requires_grad_(True)
        params = {"lovasz": {"per_image": True, "symmetric": symmetric}}
        build_loss({"lovasz": 1}, "binary", 1, params=params)(x, mask)[0].backward()
        grads[symmetric] = x.grad
    # plain hinge on an empty image: only its highest logit is pushed down
    assert (grads[False] != 0).sum() == 1 and grads[False][0, 0, 7, 7] > 0
    # symmetric: the background term pushes down every logit that is not yet below -1
    assert (grads[True] > 0).sum() > 32
    # on a mask with both classes, a perfect margin costs nothing either way
    full = torch.zeros(1, 1, 8, 8)
    full[..., :4] = 1
    perfect = full * 4 - 2
    assert build_loss({"lovasz": 1}, "binary", 1, params={"lovasz": {"symmetric": True}})(perfect, full)[0] == 0
    with pytest.raises(ConfigError, match="train.loss_params.lovasz: symmetric"):
        build_loss({"lovasz": 1}, "multiclass", 2, params={"lovasz": {"symmetric": True}})


def test_signed_distance_is_negative_inside_positive_outside():
    m = np.zeros((1, 1, 9, 9), np.uint8)
    m[0, 0, 3:6, 3:6] = 1
    d = signed_distance(m)[0, 0]
    assert d[4, 4] < 0 and d[0, 0] > 0 and d[3, 3] <= 0
    assert d[0, 0] > d[2, 2] > 0  # grows with the distance to the object
    assert (signed_distance(np.zeros((1, 1, 4, 4), np.uint8)) == 1).all()
    assert (signed_distance(np.ones((1, 1, 4, 4), np.uint8)) == -1).all()


def test_boundary_loss_prefers_the_true_mask():
    mask = torch.zeros(1, 1, 16, 16)
    mask[0, 0, 4:12, 4:12] = 1
    loss = build_loss({"boundary": 1}, "binary", 1)
    good = loss(mask * 20 - 10, mask)[0]
    shifted = loss(torch.roll(mask, 4, dims=3) * 20 - 10, mask)[0]
    assert good < shifted


def test_loss_stages_switch_by_epoch():
    cfg = TrainConfig(epochs=6, loss_stages=[{"until_epoch": 2, "terms": {"bce": 1, "dice": 1}},
                                             {"terms": {"lovasz": 1}}])
    sched = LossSchedule(cfg, "binary", 1)
    assert [sched.for_epoch(e).names for e in (1, 2, 3, 6)] == [["bce", "dice"], ["bce", "dice"], ["lovasz"],
                                                                 ["lovasz"]]


def test_config_errors_name_the_key():
    with pytest.raises(ConfigError, match=r"train\.loss: unknown loss 'dcie'; known: .*dice"):
        build_loss({"dcie": 1}, "binary", 1)
    with pytest.raises(ConfigError, match=r"train\.loss_params\.focal"):
        build_loss({"focal": 1}, "binary", 1, params={"focal": {"gama": 2}})
    with pytest.raises(ConfigError, match=r"train\.loss_params\.tversky: not a loss term in use"):
        LossSchedule(TrainConfig(loss_params={"tversky": {"alpha": 0.7}}), "binary", 1)
    with pytest.raises(ValueError, match="until_epoch must increase"):
        TrainConfig(loss_stages=[{"until_epoch": 3, "terms": {"bce": 1}}, {"until_epoch": 2, "terms": {"dice": 1}}])
