"""Mask R-CNN (``segkit.models.maskrcnn``): its portable ops against references, the objects it learns from an
augmented label map, its losses, its rendered detections, the config it is refused in, and a whole instance run
through the offline bundle."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from test_instances import SIZE, _args, _cfg, write_competition

from segkit.config.schema import ModelConfig
from segkit.data import instances
from segkit.errors import ConfigError
from segkit.models import build_model
from segkit.models.maskrcnn import MaskRCNN, greedy_nms, grid_roi_align

TINY_PARAMS = {"encoder_depth": 3, "fpn_channels": 16, "box_channels": 32, "proposals": 50, "rois_per_image": 32}
TINY = ("models=[{name: det, arch: MaskRCNN, encoder: tu-resnet10t, "
        "params: {encoder_depth: 3, fpn_channels: 16, box_channels: 32, proposals: 50, rois_per_image: 32}}]")


def tiny(classes: int = 2) -> MaskRCNN:
    torch.manual_seed(0)
    cfg = ModelConfig(name="det", arch="MaskRCNN", encoder="tu-resnet10t", params=TINY_PARAMS)
    return build_model(cfg, channels=1, mode="multilabel", num_classes=classes)


def test_roi_align_on_a_ramp_is_the_ramp_at_the_bins_centres():
    """Bilinear sampling is exact on a linear map, so every bin is the ramp's value at the bin's centre."""
    h, w = 30, 40
    yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32),
                            indexing="ij")
    ramp = torch.stack([2 * yy + xx, yy - 3 * xx])[None].repeat(2, 1, 1, 1)
    rois = torch.tensor([[0, 4.0, 6.0, 18.0, 20.0], [1, 10.5, 3.25, 35.0, 27.5], [1, 2.0, 2.0, 2.5, 2.5]])
    out = grid_roi_align(ramp, rois, (7, 5), spatial_scale=1.0, sampling_ratio=2)
    assert out.shape == (3, 2, 7, 5)
    for k, (_, x0, y0, x1, y1) in enumerate(rois.tolist()):
        bw, bh = max(x1 - x0, 1) / 5, max(y1 - y0, 1) / 7  # the legacy rule: at least a pixel
        cy = y0 + (torch.arange(7) + 0.5) * bh
        cx = x0 + (torch.arange(5) + 0.5) * bw
        want = torch.stack([2 * cy[:, None] + cx[None], cy[:, None] - 3 * cx[None]])
        torch.testing.assert_close(out[k], want, atol=1e-4, rtol=1e-5)
    # a list of boxes per image is the same as the (K, 5) form; gradients reach the features
    feats = ramp.clone().requires_grad_(True)
    listed = grid_roi_align(feats, [rois[:1, 1:], rois[1:, 1:]], 7, 0.5, 2)
    torch.testing.assert_close(listed, grid_roi_align(ramp, rois, 7, 0.5, 2))
    listed.sum().backward()
    assert feats.grad.abs().sum() > 0


def test_greedy_nms_keeps_what_the_definition_keeps():
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 50, (200, 2))
    boxes = torch.tensor(np.concatenate([xy, xy + rng.uniform(2, 15, (200, 2))], 1), dtype=torch.float32)
    scores = torch.tensor(rng.uniform(0, 1, 200), dtype=torch.float32)
    from torchvision.ops import box_iou

    iou = box_iou(boxes, boxes)
    order = torch.argsort(scores, descending=True).tolist()
    want: list[int] = []
    for i in order:
        if all(iou[i, j] <= 0.4 for j in want):
            want.append(i)
    assert greedy_nms(boxes, scores, 0.4).tolist() == want
    assert greedy_nms(boxes[:0], scores[:0], 0.4).numel() == 0


def test_objects_are_the_connected_parts_of_each_label():
    labels = np.zeros((20, 30), np.int32)
    labels[2:6, 3:8] = 1
    labels[10:15, 20:26] = 1  # the same label apart: a reflected copy, another object
    labels[12:18, 2:4] = 7
    labels[0, 29] = 3  # a sliver under min_area
    boxes, masks = instances.objects(labels)
    assert boxes.tolist() == [[3, 2, 8, 6], [20, 10, 26, 15], [2, 12, 4, 18]]  # in raster order
    assert masks.shape == (3, 20, 30) and masks.dtype == np.uint8
    assert [int(m.sum()) for m in masks] == [20, 30, 12]
    none_b, none_m = instances.objects(np.zeros((5, 5), np.int32))
    assert none_b.shape == (0, 4) and none_m.shape == (0, 5, 5)


def test_the_training_set_of_a_detector_holds_the_augmented_objects(tmp_path):
    from segkit.data import Competition, SegDataset, pad_collate

    write_competition(tmp_path / "c", n=4)
    cfg = _cfg(tmp_path / "c", tmp_path)
    comp = Competition(cfg.data, seed=0)
    ds = SegDataset(comp, comp.train_ids[:2], "train", augment="medium", crop_size=32, pad_to=8, objects=True)
    batch = pad_collate([ds[0], ds[1]])
    assert "mask" not in batch and len(batch["objects"]) == 2
    for o in batch["objects"]:
        boxes, masks = o["boxes"], o["masks"]
        assert masks.shape[1:] == (32, 32) and len(boxes) == len(masks)
        for box, mask in zip(boxes.long().tolist(), masks):  # each box is its mask's extent
            ys, xs = np.nonzero(mask.numpy())
            assert box == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]


def test_mask_rcnn_trains_on_its_own_losses_and_renders_its_detections():
    from segkit.stages.train.loop import batch_loss, network_inputs

    model = tiny().train()
    labels = np.zeros((32, 32), np.int32)
    labels[4:12, 4:12], labels[12:20, 6:14], labels[20:28, 20:30] = 1, 2, 3
    boxes, masks = instances.objects(labels)
    batch = {"image": torch.randn(2, 1, 32, 32),
             "objects": [{"boxes": torch.from_numpy(boxes), "masks": torch.from_numpy(masks)},
                         {"boxes": torch.zeros(0, 4), "masks": torch.zeros(0, 32, 32, dtype=torch.uint8)}]}
    out = model(*network_inputs(batch))
    loss, parts = batch_loss(None, out, batch)  # a detector's loss is its own: no loss function is used
    assert set(parts) == {"loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg", "loss_mask"}
    assert torch.isfinite(loss) and float(loss) == pytest.approx(sum(parts.values()), rel=1e-5)
    loss.backward()
    assert model.roi_heads.mask_predictor.mask_fcn_logits.weight.grad.abs().sum() > 0
    assert next(model.encoder.parameters()).grad.abs().sum() > 0
    model.eval()
    with torch.no_grad():
        rendered = model(batch["image"])
    assert rendered.shape == (2, 2, 32, 32) and torch.isfinite(rendered).all()


def test_a_detection_renders_as_its_mask_and_its_own_edge_band():
    model = tiny()
    mask = torch.zeros(1, 28, 28)
    mask[0, 4:24, 4:24] = 1.0  # a square inside its box
    det = {"boxes": torch.tensor([[0.0, 8.0, 28.0, 36.0]]), "scores": torch.tensor([0.8]), "masks": mask[None]}
    p = torch.sigmoid(model._render([det], (40, 40)))[0]
    assert p.shape == (2, 40, 40)
    inside = p[0] > 0.5
    assert inside[20, 14] and not inside[20, 35] and not inside[2, 14]  # in the square; beyond it
    assert p[0][20, 14] == pytest.approx(0.8, abs=1e-3)  # the score times the mask
    band = p[1] > 0.5
    # bin j of the mask is at x0 + (j + 0.5) * width / 28 (RoIAlign, aligned=False): here pixel i reads bin i - 0.5
    # across, (i - 8) - 0.5 down, so the square's first pixels are x = 5 and y = 13
    assert band[20, 5] and band[13, 14] and not band[20, 14] and not inside[20, 4] and not inside[12, 14]
    assert band.sum() < inside.sum() and not (band & ~inside).any()
    # an object the frame cuts has no contour along the frame (as segkit.data.instances.contour draws it)
    det = {"boxes": torch.tensor([[0.0, 0.0, 10.0, 10.0]]), "scores": torch.tensor([1.0]),
           "masks": torch.ones(1, 1, 28, 28)}
    p = torch.sigmoid(model._render([det], (40, 40)))[0]
    assert p[1][0, 5] < 0.5 and p[1][5, 0] < 0.5 and p[1][9, 5] > 0.5 and p[1][5, 9] > 0.5


def test_mask_rcnn_is_refused_where_it_cannot_work(tmp_path):
    from segkit.catalog import check

    write_competition(tmp_path / "c", n=4)
    semantic = _cfg(tmp_path / "c", tmp_path, TINY, "data.instances=null", "data.train_masks=instances",
                    "data.classes=[nuclei]")
    with pytest.raises(ConfigError, match=r"models\[det\]\.arch: MaskRCNN detects objects; it needs an instance"):
        check(semantic)
    wide = _cfg(tmp_path / "c", tmp_path, TINY, "data.instances={labels: instances, contour_width: 3}")
    with pytest.raises(ConfigError, match=r"params.contour_width: 2 px, but data.instances.contour_width is 3"):
        check(wide)
    check(_cfg(tmp_path / "c", tmp_path, TINY))  # the instance competition itself is fine
    from segkit.models import check_exportable

    with pytest.raises(ConfigError, match="MaskRCNN has no ONNX or TorchScript export"):
        check_exportable(_cfg(tmp_path / "c", tmp_path, TINY).models[0])


def test_a_mask_rcnn_instance_run_submits_objects_and_its_bundle_agrees(tmp_path, capsys, one_torch_thread):
    from segkit.bundle.infer import main as offline
    from segkit.cli import main

    write_competition(tmp_path / "c", n=12)
    args = _args(tmp_path / "c", tmp_path, TINY, "device=cpu", "folds.n_splits=2", "train.epochs=2",
                 "train.batch_size=4", "train.pad_to=8", "train.progress=false", "train.keep=[best]",
                 "train.crop_size=32", "predict.tta=hflip", "ensemble.methods=[mean]", "tune.morph_radii=[1]",
                 "data.holdout_fraction=0.25",
                 "tune.instances={masks: [0.3, 0.5], seeds: [0.3], min_seeds: [0], min_sizes: [0, 8], "
                 "dilations: [0]}")
    assert main(["run", *args]) == 0
    assert "tune: instances: " in capsys.readouterr().out
    from segkit.config import load_config

    cfg = load_config(args[1], args[2:])
    sub = pd.read_csv(cfg.layout.submission, keep_default_na=False)
    truth = pd.read_csv(cfg.layout.holdout_truth, keep_default_na=False)
    assert list(sub.columns) == ["ImageId", "EncodedPixels"] and set(sub["ImageId"]) == set(truth["ImageId"])
    assert main(["export", *args]) == 2  # refused, naming the network (nothing traced)
    assert "MaskRCNN has no ONNX or TorchScript export" in capsys.readouterr().err
    assert main(["package", *args, "--out", str(tmp_path / "bundle"), "--no-wheels", "--weights", "fp32"]) == 0
    again = tmp_path / "bundle.csv"
    assert offline(["--test", str(tmp_path / "c" / "images"), "--sample", str(cfg.layout.submission), "--out",
                    str(again), "--device", "cpu"], bundle=tmp_path / "bundle") == 0
    assert again.read_bytes() == cfg.layout.submission.read_bytes()
    assert SIZE == 48


def test_the_ablation_of_a_unet_and_mask_rcnn_has_each_alone_and_their_fusion(tmp_path, one_torch_thread):
    from segkit import ablate
    from segkit.config import load_config

    write_competition(tmp_path / "c", n=12)
    both = ("models=[{name: unet, arch: Unet, encoder: tu-resnet10t, params: {encoder_depth: 3, decoder_channels: "
            "[16, 8, 4]}}, {name: det, arch: MaskRCNN, encoder: tu-resnet10t, params: {encoder_depth: 3, "
            "fpn_channels: 16, box_channels: 32, proposals: 50, rois_per_image: 32}}]")
    args = _args(tmp_path / "c", tmp_path, both, "device=cpu", "folds.n_splits=2", "train.epochs=1",
                 "train.batch_size=4", "train.pad_to=8", "train.progress=false", "train.keep=[best]",
                 "train.crop_size=32", "predict.tta=hflip", "predict.repredict_oof=true", "ensemble.methods=[mean]",
                 "data.holdout_fraction=0.25",
                 "tune.morphology=false",
                 "tune.instances={masks: [0.5], seeds: [0.5], min_seeds: [0], min_sizes: [0], dilations: [0]}")
    cfg = load_config(args[1], args[2:])
    table = {r.name: r for r in ablate.run(cfg, with_variants=False)}
    assert ["unet alone, tuned", "det alone, tuned", "+ tuned decoder"] == \
        [n for n in table if n.endswith("tuned") or n == "+ tuned decoder"]
    assert "+ ensemble" in table and table["det alone, tuned"].what.startswith("MaskRCNN: ")
    for name in ("unet alone, tuned", "det alone, tuned", "+ tuned decoder"):  # nested, and in-sample beside
        assert 0 <= table[name].scores["object_ap"] <= 1 and table[name].in_sample is not None


def test_a_weaker_overlapping_detection_does_not_cut_the_stronger_ones_interior():
    """Half a nucleus detected beside the whole one: its edge runs through the whole one's interior, where the
    stronger detection owns the pixels, so the contour there stays the stronger one's (none: it is interior)."""
    model = tiny()
    whole = {"boxes": torch.tensor([[4.0, 4.0, 36.0, 36.0]]), "scores": torch.tensor([0.9]),
             "masks": torch.ones(1, 1, 28, 28)}
    half = {"boxes": torch.tensor([[4.0, 4.0, 20.0, 36.0]]), "scores": torch.tensor([0.6]),
            "masks": torch.ones(1, 1, 28, 28)}
    for first, second in ((whole, half), (half, whole)):  # whatever the order
        both = {k: torch.cat([first[k], second[k]]) for k in whole}
        p = torch.sigmoid(model._render([both], (40, 40)))[0]
        assert p[1][20, 19] < 0.5 and p[1][20, 20] < 0.5  # the half's right edge, inside the whole one
        assert p[1][20, 4] > 0.5 and p[0][20, 19] == pytest.approx(0.9, abs=1e-3)
