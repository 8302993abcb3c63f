"""3D networks on volume competitions: MONAI's networks by name, patches dealt from a per-fold case cache with a
share forced onto foreground, 3D augmentation, whole cases predicted in a sliding window and stored slice by slice,
deep supervision, a 3D model beside a 2.5D one through a whole run, its export and its offline bundle, and the
inputs refused naming the case and the key."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from test_volumes import AFFINE, SHAPE, write_case, write_competition
from test_volumes import _args as volume_args

from segkit.config import load_config
from segkit.config.schema import ModelConfig, TrainConfig
from segkit.errors import ConfigError, DataError

nib = pytest.importorskip("nibabel")
pytest.importorskip("monai")

DYN = "{name: dyn, arch: DynUNet, params: {levels: 3, filters: [8, 16, 32]}, train: {patch_size: [16, 16, 8], " \
      "batch_size: 2, augment: medium, loss: {ce: 1, dice: 1}}}"
TINY_2D = "{name: tiny, arch: Unet, encoder: tu-resnet10t, params: {encoder_depth: 3, decoder_channels: [16, 8, 4]}}"


@pytest.fixture(scope="module")
def volume_root(tmp_path_factory) -> Path:
    return write_competition(tmp_path_factory.mktemp("volumes3d"))


def _args(root: Path, tmp_path: Path, *extra: str) -> list[str]:
    return volume_args(root, tmp_path, "device=cpu", "folds.n_splits=2", "train.epochs=2", "train.progress=false",
                       "train.keep=[best]", *extra)


def _cfg(root, tmp_path, *extra):
    args = _args(root, tmp_path, *extra)
    return load_config(args[1], args[2:])


# ------------------------------------------------------------------------------------------------- networks
@pytest.mark.parametrize("arch,params", [
    ("DynUNet", {"levels": 3, "filters": [4, 8, 16]}),
    ("SegResNet", {"init_filters": 8, "blocks_down": [1, 1, 1], "blocks_up": [1, 1]}),
    ("UNet3D", {"channels": [4, 8, 16], "strides": [2, 2], "num_res_units": 1}),
    ("SwinUNETR", {"feature_size": 12, "depths": [1, 1, 1, 1]}),
])
def test_every_3d_network_maps_a_volume_to_logits_of_its_size_and_learns(arch, params, one_torch_thread):
    from segkit.models import ARCHS, build_model, check_output_size, dims_of, input_multiple

    model_cfg = ModelConfig(name="m", arch=arch, params=params)
    assert ARCHS.get(arch).dims == 3 and dims_of(model_cfg) == 3
    net = build_model(model_cfg, 2, "multiclass", 2)
    multiple = input_multiple(model_cfg, 32)
    check_output_size(net, 2, multiple, "models[m]", dims=3)
    x = torch.randn(1, 2, multiple, multiple, 2 * multiple)
    out = net(x)
    assert out.shape == (1, 3, multiple, multiple, 2 * multiple)
    out.mean().backward()
    assert all(p.grad is not None for p in net.parameters() if p.requires_grad)


def test_3d_params_segkit_sets_or_that_do_not_apply_are_refused():
    from segkit.models import build_model

    with pytest.raises(ConfigError, match=r"models\[m\]\.params: \['in_channels'\] are set by segkit"):
        build_model(ModelConfig(name="m", arch="DynUNet", params={"in_channels": 3}), 1, "binary", 1)
    with pytest.raises(ConfigError, match=r"models\[m\]\.aux_head: not for DynUNet, a 3D network"):
        build_model(ModelConfig(name="m", arch="DynUNet", aux_head=True), 1, "binary", 1)
    with pytest.raises(ConfigError, match=r"models\[m\]\.params\.kernel_size: 2 levels"):
        build_model(ModelConfig(name="m", arch="DynUNet", params={"strides": [1, 2, 2], "kernel_size": [3, 3]}),
                    1, "binary", 1)


def test_deep_supervision_weighs_the_heads_by_halves():
    from segkit.losses import LossSchedule

    loss = LossSchedule(TrainConfig(loss={"ce": 1.0}), "multiclass", 2).for_epoch(1)
    torch.manual_seed(0)
    mask = torch.zeros(2, 2, 4, 4, 4)
    mask[:, 0, :2] = 1
    heads = torch.randn(2, 3, 3, 4, 4, 4)  # (N, 1 + 2 heads, classes + background, D, H, W)
    total, parts = loss(heads, mask)
    each = [float(loss(heads[:, i], mask)[0]) for i in range(3)]
    assert float(total) == pytest.approx((each[0] + each[1] / 2 + each[2] / 4) / 1.75, rel=1e-5)
    assert parts["ce"] == pytest.approx(each[0], rel=1e-5)  # the logged part is the main head's


# ---------------------------------------------------------------------------------------------- patches
def test_an_epoch_deals_every_case_once_with_the_last_third_of_each_batch_on_foreground():
    from segkit.stages.train.volumetric import PatchPlan

    plan = PatchPlan(cases=12, batch_size=6, seed=3)
    plan.set_epoch(1)
    batches = list(plan)
    assert len(batches) == 2 and sorted(k[0] for b in batches for k in b) == list(range(12))
    assert all([k[1] for k in b] == [False] * 4 + [True] * 2 for b in batches)
    assert list(plan) == batches  # a pure function of (seed, epoch): a resumed fold deals the same batches
    plan.set_epoch(2)
    assert list(plan) != batches
    two = PatchPlan(cases=5, batch_size=2, seed=0)
    assert all(sum(k[1] for k in b) == 1 for b in two)  # at least one forced patch in a batch of two
    ranks = [list(PatchPlan(12, 3, 3, rank=r, world_size=2)) for r in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]) == 2 and not {k for b in ranks[0] for k in b} & {k for b in ranks[1]
                                                                                           for k in b}


def test_patches_come_from_cases_cached_at_the_working_spacing(volume_root, tmp_path, capsys):
    from segkit.data import Competition
    from segkit.data.augment3d import Augment3D
    from segkit.stages.train.volumetric import CaseCache, PatchDataset, working_spacing

    cfg = _cfg(volume_root, tmp_path)
    volumes = Competition(cfg.data).volume_set()
    assert working_spacing(cfg, volumes) == (1.5, 1.0, 2.0)
    target = (3.0, 1.0, 2.0)  # half the voxels along axis 0: 20 -> 10, smaller than the patch's 16
    cache = CaseCache(volumes, target, (16, 16, 8), "models[dyn] fold 0")
    ds = PatchDataset(cache, ["case_000", "case_001"], 2, Augment3D("none", (16, 16, 8)))
    forced = [ds[(0, True, seed)] for seed in range(12)]
    assert "case 'case_000' is (10, 24, 10) voxels" in capsys.readouterr().out
    item = forced[0]
    assert item["image"].shape == (1, 16, 16, 8) and item["mask"].shape == (2, 16, 16, 8)
    assert all(f["mask"].sum() > 0 for f in forced)  # every forced patch holds foreground
    assert cache["case_000"].image.shape == (1, 16, 24, 10)  # resampled to 10, padded with zeros to 16
    assert cache["case_000"].image[:, 10:].abs().max() == 0 and cache["case_000"].labels[10:].max() == 0
    assert cache["case_000"] is cache["case_000"]  # decoded and resampled once a fold
    again = ds[(1, False, 5)]
    assert torch.equal(again["image"], ds[(1, False, 5)]["image"])  # the patch's seed decides it
    # the fold's loader decodes every case before its first batch (the speed probe then times steady steps)
    from segkit.compute.distributed import World
    from segkit.stages.train.volumetric import PatchTrainData

    cache = CaseCache(volumes, (1.5, 1.0, 2.0), (16, 16, 8), "models[dyn] fold 0")
    data = PatchTrainData(cache, ["case_002", "case_003", "case_004"], 2, TrainConfig(batch_size=2),
                          Augment3D("flips", (16, 16, 8)), 0, World())
    loader = data.loader(1)
    assert set(cache._cases) == {"case_002", "case_003", "case_004"} and len(data) == 1
    batch = next(iter(loader))
    assert batch["image"].shape == (2, 1, 16, 16, 8) and batch["mask"].shape == (2, 2, 16, 16, 8)


def test_3d_augmentation_keeps_shapes_and_labels_and_follows_its_seed():
    from segkit.data.augment3d import Augment3D

    torch.manual_seed(0)
    image = torch.randn(1, 16, 16, 8)
    labels = torch.zeros(1, 16, 16, 8, dtype=torch.uint8)
    labels[:, 4:10, 4:10, 2:6] = 2
    aug = Augment3D("heavy", (16, 16, 8), (0, 1))
    outs = [aug.apply(image, labels, seed) for seed in range(8)]
    assert all(i.shape == image.shape and lab.shape == labels.shape for i, lab in outs)
    assert all(set(torch.unique(lab).round().tolist()) <= {0.0, 2.0} for _, lab in outs)
    assert any(not torch.equal(i, image) for i, _ in outs)
    assert torch.equal(aug.apply(image, labels, 3)[0], outs[3][0])
    flips = Augment3D("flips", (16, 16, 8))
    flipped = [flips.apply(image, labels, s)[0] for s in range(16)]
    assert all(any(torch.equal(f, image.flip(list(d))) for d in ([], [1], [2], [3], [1, 2], [1, 3], [2, 3], [1, 2, 3]))
               for f in flipped)
    with pytest.raises(ConfigError, match="train.augment: 'd4' is no 3D augmentation"):
        Augment3D("d4", (16, 16, 8))


# ----------------------------------------------------------------------------------------------- a run
def test_a_3d_model_beside_a_2d_one_runs_exports_and_packages(volume_root, tmp_path, capsys, one_torch_thread):
    from segkit.artifacts.probs import ProbStore
    from segkit.bundle.infer import main as offline
    from segkit.cli import main

    args = _args(volume_root, tmp_path, f"models=[{TINY_2D}, {DYN}]", "data.context=1", "train.batch_size=8",
                 "train.pad_to=8", "predict.tta=hflip", "predict.tta_3d=mirror3d", "predict.repredict_oof=true",
                 "ensemble.methods=[mean]", "tune.morph_radii=[1]", "train.loss={ce: 1}")
    assert main(["run", *args]) == 0
    out = capsys.readouterr().out
    assert "predict: models[dyn]: 2 checkpoint(s) over 2 fold(s), TTA mirror3d" in out
    assert "predict: dyn test: 2 cases, 20 slices" in out
    cfg = load_config(args[1], args[2:])
    best = torch.load(cfg.layout.fold("dyn", 0).best, weights_only=True)
    assert best["dims"] == 3 and best["patch_size"] == [16, 16, 8] and best["spacing"] == [1.5, 1.0, 2.0]
    assert best["channels"] == 1  # the modalities: the 2.5D neighbours are the 2D model's channels alone
    # the 3D model's predictions are slices of the cases, like the 2.5D model's: the same ids, the same sizes
    oof = ProbStore(cfg.layout.fold("dyn", 0).oof)
    flat = ProbStore(cfg.layout.fold("tiny", 0).oof)
    assert sorted(oof.ids) == sorted(flat.ids) and oof[oof.ids[0]].shape == (2, SHAPE[0], SHAPE[1])
    test = ProbStore(cfg.layout.model("dyn").test)
    assert len(test.ids) == 2 * SHAPE[2]
    cv = pd.read_csv(cfg.layout.ensemble.cv)
    assert {"model:tiny", "model:dyn"} <= set(cv.iloc[:, 0])
    for case in ("case_006", "case_007"):
        written = nib.load(cfg.layout.submission_volumes / f"{case}.nii.gz")
        assert written.shape == SHAPE and np.allclose(written.affine, AFFINE)
    # the ablation's rows of each kind alone, on the same images, beside the ensemble of both
    from segkit.ablate import Scorer, kind_rows
    from segkit.data import Competition

    comp = Competition(cfg.data)
    rows = list(kind_rows(cfg, Scorer(cfg, [], comp), comp.train_ids))
    assert [r.name for r in rows] == ["2.5D alone", "3D alone"] and [r.what for r in rows] == ["tiny", "dyn"]
    assert all(0 <= r.scores["dice"] <= 1 for r in rows)
    # exported with a dynamic depth, height and width, checked against PyTorch on two window sizes
    assert main(["export", *args, "--format", "onnx"]) == 0
    listing = json.loads(cfg.layout.export.json.read_text())
    record = json.loads((cfg.layout.export.dir / (listing["models"]["dyn"]["0"][0]["files"]["onnx"] + ".json"))
                        .read_text())
    assert record["dims"] == 3 and record["export"]["dynamic"] and record["export"]["max_abs_diff"] < 1e-3
    assert record["export"]["checked_on"] == [[1, 1, 16, 16, 8], [2, 1, 20, 20, 12]]
    # packaged, the NIfTI test cases in: the same rows and label volumes
    bundle, offline_dir = tmp_path / "bundle", tmp_path / "offline"
    assert main(["package", *args, "--out", str(bundle), "--no-wheels", "--weights", "fp32"]) == 0
    assert offline(["--test", str(volume_root / "imagesTs"), "--out", str(offline_dir / "submission.csv"),
                    "--volumes", str(offline_dir / "volumes"), "--device", "cpu"], bundle=bundle) == 0
    assert (offline_dir / "submission.csv").read_bytes() == cfg.layout.submission.read_bytes()


# -------------------------------------------------------------------------------------------- bad input
def test_a_zero_spacing_in_a_header_is_refused_naming_the_case(tmp_path):
    from segkit.data import Competition

    rng = np.random.default_rng(2)
    root = tmp_path / "zero"
    write_case(root / "imagesTr", "a", rng, root / "labelsTr")
    write_case(root / "imagesTr", "b", rng, root / "labelsTr")
    source = root / "imagesTr" / "b.nii.gz"
    plain = root / "imagesTr" / "b.nii"
    nib.save(nib.load(source), str(plain))
    source.unlink()
    raw = bytearray(plain.read_bytes())
    raw[84:88] = np.float32(0.0).tobytes()  # pixdim[2], the second axis's voxel size (NIfTI-1 header offset 76)
    plain.write_bytes(bytes(raw))
    comp = Competition(_cfg(root, tmp_path).data)
    with pytest.raises(DataError, match=r"imagesTr/b.nii: case 'b': the header's voxel spacing \(pixdim\) is "
                                        r"\(1.5, 0.0, 2.0\)"):
        comp.volume_set().spacing("a")


def test_3d_configs_that_cannot_work_are_refused_before_any_work(volume_root, tmp_path):
    from segkit.catalog import check

    def refused(match: str, *extra: str) -> None:
        with pytest.raises(ConfigError, match=match):
            check(_cfg(volume_root, tmp_path, *extra))

    refused(r"models\[dyn\]\.train\.patch_size: \[16, 16, 6\]: every side must be a multiple of 4",
            "models=[{name: dyn, arch: DynUNet, params: {levels: 3}, train: {patch_size: [16, 16, 6]}}]")
    refused(r"models\[dyn\]\.train\.patch_size: DynUNet is a 3D network; give its training patch",
            "models=[{name: dyn, arch: DynUNet}]")
    refused(r"data.normalize: none \(each case is normalised on its own; it is 'image'\)",
            f"models=[{DYN}]", "data.normalize=image")
    refused(r"models\[dyn\] train.augment: 'd4' is no 3D augmentation",
            "models=[{name: dyn, arch: DynUNet, params: {levels: 3}, train: {patch_size: [16, 16, 8], "
            "augment: d4}}]")
    refused(r"predict.tta_3d: unknown", f"models=[{DYN}]", "predict.tta_3d=mirror")
    check(_cfg(volume_root, tmp_path, f"models=[{DYN}]"))  # and the good one passes


def test_a_listed_holdout_holds_out_whole_cases_and_names_a_bad_line(volume_root, tmp_path):
    from segkit.data import Competition

    listing = tmp_path / "test.list"
    listing.write_text("case_002\ncase_004\n")
    comp = Competition(_cfg(volume_root, tmp_path, f"data.holdout_list={listing}",
                            "data.volumes.test_images=null").data)
    assert {i.rsplit("_s", 1)[0] for i in comp.holdout_ids} == {"case_002", "case_004"}
    assert len(comp.holdout_ids) == 2 * SHAPE[2] and not set(comp.holdout_ids) & set(comp.train_ids)
    listing.write_text("case_002\ncase_099\n")
    comp = Competition(_cfg(volume_root, tmp_path, f"data.holdout_list={listing}").data)
    with pytest.raises(DataError, match=r"test.list: line 2: 'case_099' is no volume of this competition"):
        comp.holdout_ids


def test_a_3d_fold_averages_its_last_epochs_too(volume_root, tmp_path, one_torch_thread):
    """train.average on a 3D network: a soup of its last epochs, validated in the sliding window (instance norm:
    no BatchNorm to measure again), best.pt the average."""
    from segkit.models import checkpoint
    from segkit.stages import folds as folds_stage
    from segkit.stages.train import train_fold

    cfg = _cfg(volume_root, tmp_path, f"models=[{DYN}]", "train.average={method: soup, window: 1.0}")
    folds_stage.run(cfg)
    summary = train_fold(cfg, cfg.models[0], 0)
    paths = cfg.layout.fold("dyn", 0)
    assert summary["average"]["method"] == "soup" and "cross_fit" not in summary["average"]  # 2D only
    assert checkpoint.load(paths.best)["averaged"] == summary["average"]["ingredients"]
    assert paths.best_epoch.exists() and not paths.ingredients()
