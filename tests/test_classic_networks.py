"""The classic networks (segkit.models.classic): output shapes, gradients, ONNX export at a second size, the errors
for bad settings, and Gated-SCNN's boundary target and dual-task loss. Tiny widths and 64 px inputs throughout."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from segkit.losses import Target, boundary_map
from segkit.models.classic import FCN, FastFCN, FCDenseNet, GatedSCNN, SegNet
from segkit.models.classic.segnet import unpool

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = "tu-mobilenetv3_small_050"
NETWORKS = {
    "fcn8s": lambda classes: FCN(TINY, classes=classes, encoder_depth=3),
    "fcn16s_head": lambda classes: FCN(TINY, classes=classes, encoder_depth=3, variant="16s", head_channels=16),
    "segnet": lambda classes: SegNet("vgg11", classes=classes, encoder_depth=3),
    "fcdensenet": lambda classes: FCDenseNet("fcdensenet56", classes=classes, encoder_depth=2, growth_rate=4,
                                             first_channels=8),
    "fastfcn": lambda classes: FastFCN(TINY, classes=classes, encoder_depth=3, jpu_channels=16, head_channels=16),
    "fastfcn_aspp": lambda classes: FastFCN(TINY, classes=classes, encoder_depth=3, jpu_channels=16,
                                            head_channels=16, head="aspp"),
    "gscnn": lambda classes: GatedSCNN(TINY, classes=classes, encoder_depth=3, shape_channels=8, aspp_channels=16),
}


def masks_of(output):
    return output["masks"] if isinstance(output, dict) else output


@pytest.mark.parametrize("classes", [1, 3])
@pytest.mark.parametrize("name", list(NETWORKS))
def test_shapes_and_gradients(name, classes):
    torch.manual_seed(0)
    model = NETWORKS[name](classes)

    model.eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 64, 64))
    assert isinstance(out, torch.Tensor) and out.shape == (1, classes, 64, 64)

    model.train()
    out = model(torch.randn(2, 3, 64, 96))
    masks = masks_of(out)
    assert masks.shape == (2, classes, 64, 96)
    loss = (masks * torch.randn_like(masks)).mean()
    if isinstance(out, dict):
        loss = loss + (out["edges"] * torch.randn_like(out["edges"])).mean()
    loss.backward()

    grads = {n: p.grad for n, p in model.named_parameters()}
    assert all(torch.isfinite(g).all() for g in grads.values() if g is not None)
    # Everything the network adds to the encoder is used and learns...
    head = {n: g for n, g in grads.items() if not n.startswith("encoder.")}
    assert head and all(g is not None and g.abs().sum() > 0 for g in head.values()), name
    # ... and the gradient reaches the encoder (smp's timm encoders hold stages past encoder_depth that get none).
    assert any(g is not None and g.abs().sum() > 0 for n, g in grads.items() if n.startswith("encoder."))


def test_gscnn_returns_edges_in_training_only():
    model = NETWORKS["gscnn"](2)
    out = model.train()(torch.randn(2, 3, 64, 64))
    assert set(out) == {"masks", "edges"}
    assert out["masks"].shape == (2, 2, 64, 64) and out["edges"].shape == (2, 1, 64, 64)
    with torch.no_grad():
        out = model.eval()(torch.randn(1, 3, 64, 64))
    assert isinstance(out, torch.Tensor) and out.shape == (1, 2, 64, 64)


@pytest.mark.parametrize("name", list(NETWORKS))
def test_onnx_export_runs_at_another_size(name, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    model = NETWORKS[name](3)
    with torch.no_grad():  # batch norm statistics away from their initial 0 / 1, so they matter in the comparison
        model.train()(torch.randn(2, 3, 64, 64) * 2 + 1)
    model.eval()
    path = tmp_path / f"{name}.onnx"
    axes = {0: "batch", 2: "height", 3: "width"}
    torch.onnx.export(model, (torch.randn(1, 3, 64, 64),), str(path), dynamo=False, opset_version=17,
                      dynamic_axes={"images": axes, "probabilities": axes}, input_names=["images"],
                      output_names=["probabilities"])
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for shape in [(1, 3, 64, 64), (2, 3, 96, 128)]:
        x = torch.randn(*shape)
        with torch.no_grad():
            expected = model(x).numpy()
        got = session.run(None, {"images": x.numpy()})[0]
        assert got.shape == expected.shape == (shape[0], 3, *shape[2:])
        assert expected.std() > 1e-3  # not a trivially constant output
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4)


@pytest.mark.parametrize(
    "build, parameter, hint",
    [
        (lambda: SegNet("resnet34"), "encoder_name", "vgg16_bn"),
        (lambda: FCDenseNet("fcdensenet56", encoder_weights="imagenet"), "encoder_weights", "None"),
        (lambda: FCDenseNet("resnet34"), "encoder_name", "fcdensenet103"),
        (lambda: FCDenseNet("fcdensenet56", encoder_depth=6), "encoder_depth", "1 to 5"),
        (lambda: FCN(TINY, variant="4s"), "variant", "32s, 16s, 8s"),
        (lambda: FCN(TINY, encoder_depth=2), "encoder_depth", "between 3 and 5"),
        (lambda: FastFCN(TINY, head="psp"), "head", "fcn, aspp"),
        (lambda: FastFCN(TINY, encoder_depth=2), "encoder_depth", "between 3 and 5"),
        (lambda: GatedSCNN(TINY, encoder_depth=2), "encoder_depth", "between 3 and 5"),
    ],
)
def test_bad_settings_name_the_parameter(build, parameter, hint):
    with pytest.raises(ValueError) as error:
        build()
    assert parameter in str(error.value) and hint in str(error.value)


def test_segnet_unpool_matches_max_unpool():
    x = torch.randn(2, 3, 8, 12)
    pooled, indices = F.max_pool2d(x, 2, 2, return_indices=True)
    expected = F.max_unpool2d(pooled, indices, 2, 2, output_size=x.shape[-2:])
    torch.testing.assert_close(unpool(pooled, indices, x.shape), expected)


def test_fcdensenet_variants_have_the_papers_sizes():
    # The paper gives 1.5M, 3.5M and 9.4M parameters (rounded; for 11 CamVid classes, not 1).
    sizes = {name: sum(p.numel() for p in FCDenseNet(name).parameters()) / 1e6
             for name in ("fcdensenet56", "fcdensenet67", "fcdensenet103")}
    assert 1.3 < sizes["fcdensenet56"] < 1.6 and 3.3 < sizes["fcdensenet67"] < 3.6
    assert 9.2 < sizes["fcdensenet103"] < 9.5


def square_mask(n=1, size=16, lo=4, hi=12):
    mask = torch.zeros(n, 1, size, size)
    mask[:, :, lo:hi, lo:hi] = 1
    return mask


def dual_task(mode: str, classes: int, **weights):
    from segkit.losses import LOSSES

    return LOSSES.get("dual_task")(mode, classes, **weights)


def test_boundary_map_of_a_square_is_a_ring():
    boundary = boundary_map(square_mask())
    assert boundary.shape == (1, 1, 16, 16) and boundary.dtype == torch.float32
    # the ring: pixels within one step (8-neighbourhood) of the square's edge, inside and outside it
    expected = torch.zeros(16, 16)
    expected[3:13, 3:13] = 1
    expected[5:11, 5:11] = 0
    torch.testing.assert_close(boundary[0, 0], expected)
    # a mask that fills the image has no boundary (the image's border is not one)
    assert boundary_map(torch.ones(1, 2, 8, 8)).sum() == 0


@pytest.mark.parametrize("mode", ["binary", "multiclass"])
def test_dual_task_loss_is_differentiable_and_zero_without_edges(mode):
    torch.manual_seed(0)
    mask = square_mask(n=2)
    if mode == "multiclass":  # two foreground classes: the square's left and right halves
        mask = torch.cat([mask * (torch.arange(16) < 8), mask * (torch.arange(16) >= 8)], dim=1)
    channels = mask.shape[1] + (mode == "multiclass")
    mask_logits = torch.randn(2, channels, 16, 16, requires_grad=True)
    edge_logits = torch.randn(2, 1, 16, 16, requires_grad=True)
    term = dual_task(mode, mask.shape[1], attention_threshold=0.5)
    for part in ({"attention": 0, "consistency": 0}, {"edge": 0, "consistency": 0}, {"edge": 0, "attention": 0}):
        assert dual_task(mode, mask.shape[1], attention_threshold=0.5, **part)(
            mask_logits, Target.of(mask, mode, edge_logits)) > 0  # every part counts
    total = term(mask_logits, Target.of(mask, mode, edge_logits))
    assert total.dtype == torch.float32 and torch.isfinite(total)
    total.backward()
    assert mask_logits.grad.abs().sum() > 0 and edge_logits.grad.abs().sum() > 0
    # in eval mode the network gives no edges: validation's loss gets nothing from the term
    assert term(mask_logits, Target.of(mask, mode)) == 0


def test_dual_task_loss_rewards_edges_on_the_boundary_and_masks_whose_boundary_is_true():
    mask = square_mask()
    flat = torch.zeros(1, 1, 16, 16)
    edge_only, consistency_only = dual_task("binary", 1, attention=0, consistency=0), dual_task("binary", 1, edge=0,
                                                                                                attention=0)
    boundary = boundary_map(mask)
    assert edge_only(flat, Target.of(mask, "binary", (boundary * 2 - 1) * 6)) < edge_only(
        flat, Target.of(mask, "binary", flat)) / 10
    sharp = consistency_only((mask * 2 - 1) * 8, Target.of(mask, "binary", flat))
    assert sharp < consistency_only(flat + 0.1, Target.of(mask, "binary", flat)) / 10


def test_gscnn_with_the_dual_task_loss_trains_a_step_through_the_training_loop_helper():
    from segkit.losses import build_loss
    from segkit.stages.train.loop import batch_loss

    torch.manual_seed(0)
    model = NETWORKS["gscnn"](1).train()
    loss_fn = build_loss({"bce": 1, "dual_task": 1}, "binary", 1)
    batch = {"image": torch.randn(2, 3, 64, 64), "mask": square_mask(n=2, size=64, lo=16, hi=40)}
    with_edges, _ = batch_loss(loss_fn, model(batch["image"]), batch)
    without, _ = batch_loss(build_loss({"bce": 1}, "binary", 1), model(batch["image"]), batch)
    assert with_edges > without  # the edge terms were added
    with_edges.backward()
    assert model.edge.weight.grad.abs().sum() > 0  # the shape stream's edge head is trained


def test_gscnn_at_an_input_scale_returns_its_edges_at_the_input_size_too():
    from segkit.config.schema import ModelConfig
    from segkit.models import build_model

    cfg = ModelConfig(name="g", arch="GatedSCNN", encoder=TINY, input_scale=2,
                      params={"encoder_depth": 3, "shape_channels": 8, "aspp_channels": 16})
    out = build_model(cfg, 1, "binary", 1).train()(torch.randn(2, 1, 64, 64))
    assert out["masks"].shape == out["edges"].shape == (2, 1, 64, 64)


def test_the_classic_networks_run_end_to_end_with_segkit_run(demo_root, tmp_path, one_torch_thread):
    """``segkit run`` from a config: every classic network trains its folds (GatedSCNN with its dual_task loss),
    predicts the test images with TTA, and the ensemble of all five is tuned and submitted."""
    from conftest import CONFIGS

    from segkit.cli import main

    models = ("models=[{name: fcn, arch: FCN, encoder: tu-mobilenetv3_small_050, params: {encoder_depth: 3}},"
              " {name: segnet, arch: SegNet, encoder: vgg11, params: {encoder_depth: 2}},"
              " {name: tiramisu, arch: FCDenseNet, encoder: fcdensenet56,"
              "  params: {encoder_depth: 2, growth_rate: 4, first_channels: 8}},"
              " {name: fastfcn, arch: FastFCN, encoder: tu-mobilenetv3_small_050,"
              "  params: {encoder_depth: 3, jpu_channels: 16, head_channels: 16}},"
              " {name: gscnn, arch: GatedSCNN, encoder: tu-mobilenetv3_small_050,"
              "  params: {encoder_depth: 3, shape_channels: 8, aspp_channels: 16},"
              "  train: {loss: {bce: 1, dice: 1, dual_task: 1}}}]")
    code = main(["run", "--config", str(CONFIGS / "demo.yaml"), f"data.root={demo_root}",
                 f"paths.runs={tmp_path / 'runs'}", f"paths.folds={tmp_path / 'folds'}",
                 f"paths.submissions={tmp_path / 'subs'}", models, "device=cpu", "folds.n_splits=2",
                 "train.epochs=1", "train.batch_size=4", "train.max_steps_per_epoch=2", "train.progress=false",
                 "train.keep=[best]", "predict.tta=hflip", "ensemble.methods=[mean]", "tune.morph_radii=[1]"])
    assert code == 0
    assert (tmp_path / "subs" / "demo.csv").exists()
    for name in ("fcn", "segnet", "tiramisu", "fastfcn", "gscnn"):
        assert (tmp_path / "runs" / "demo" / name / "test" / "manifest.json").exists(), name
    losses = (tmp_path / "runs" / "demo" / "gscnn" / "fold0" / "metrics.csv").read_text()
    assert "dual_task" in losses  # the edge loss took part in GatedSCNN's training
