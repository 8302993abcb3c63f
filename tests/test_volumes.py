"""NIfTI volume competitions: volumes cut into slices (ids, per-volume normalisation, label maps, stacks,
grouping), refused inputs, label volumes written with the source's affine, per-volume scores in mm, and a whole
run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import CONFIGS

from segkit.config import load_config
from segkit.data import Competition
from segkit.errors import DataError

nib = pytest.importorskip("nibabel")

TINY = ("models=[{name: tiny, arch: Unet, encoder: tu-resnet10t, "
        "params: {encoder_depth: 3, decoder_channels: [16, 8, 4]}}]")
SHAPE = (20, 24, 10)
AFFINE = np.diag([1.5, 1.0, 2.0, 1.0])
AFFINE[:3, 3] = [10.0, -4.0, 7.5]


def write_case(folder: Path, name: str, rng, labels_folder: Path | None = None, dtype=np.float32) -> None:
    """A volume with two touching boxes (class 1 over class 2) brighter than the background."""
    label = np.zeros(SHAPE, np.uint8)
    x0, y0, z0 = rng.integers(2, 6), rng.integers(2, 6), rng.integers(1, 3)
    label[x0:x0 + 8, y0:y0 + 6, z0:z0 + 6] = 1
    label[x0:x0 + 8, y0 + 6:y0 + 12, z0:z0 + 6] = 2
    image = (rng.normal(100, 20, SHAPE) + 80 * (label == 1) + 160 * (label == 2)) * rng.uniform(0.5, 50)
    folder.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(image.astype(dtype), AFFINE), str(folder / f"{name}.nii.gz"))
    if labels_folder is not None:
        labels_folder.mkdir(parents=True, exist_ok=True)
        nib.save(nib.Nifti1Image(label, AFFINE), str(labels_folder / f"{name}.nii.gz"))


def write_competition(root: Path) -> Path:
    """Six labelled cases in imagesTr/ + labelsTr/ and two test cases in imagesTs/."""
    rng = np.random.default_rng(0)
    for i in range(6):
        write_case(root / "imagesTr", f"case_{i:03d}", rng, root / "labelsTr")
    for i in range(6, 8):
        write_case(root / "imagesTs", f"case_{i:03d}", rng)
    return root


@pytest.fixture(scope="module")
def volume_root(tmp_path_factory) -> Path:
    return write_competition(tmp_path_factory.mktemp("volumes"))


def _args(root: Path, tmp_path: Path, *extra: str) -> list[str]:
    return ["--config", str(CONFIGS / "demo.yaml"), f"data.root={root}", f"paths.runs={tmp_path / 'runs'}",
            f"paths.folds={tmp_path / 'folds'}", f"paths.submissions={tmp_path / 'subs'}",
            "data.volumes={images: imagesTr, labels: labelsTr, test_images: imagesTs}", "data.mode=multiclass",
            "data.classes=[anterior, posterior]", "data.normalize=none", "data.train_csv=null",
            "data.test_images=null", "data.sample_submission=null", *extra]


def _cfg(root, tmp_path, *extra):
    args = _args(root, tmp_path, *extra)
    return load_config(args[1], args[2:])


def test_volumes_are_cut_into_slices_that_are_images(volume_root, tmp_path):
    cfg = _cfg(volume_root, tmp_path, "data.context=1")
    comp = Competition(cfg.data)
    assert comp.train_ids[:2] == ["case_000_s000", "case_000_s001"] and len(comp.train_ids) == 6 * SHAPE[2]
    assert comp.test_ids[0] == "case_006_s000" and len(comp.test_ids) == 2 * SHAPE[2]
    image = comp.read_image("case_001_s004")
    assert image.shape == (SHAPE[0], SHAPE[1], 3) and cfg.data.input_channels == 3
    volume = np.stack([comp.read_image(f"case_001_s{i:03d}")[..., 1] for i in range(SHAPE[2])], axis=2)
    assert abs(volume.mean()) < 1e-4 and volume.std() == pytest.approx(1, abs=1e-3)  # z-scored per volume
    mask = comp.read_mask("case_001_s004")
    truth = np.asarray(nib.load(volume_root / "labelsTr" / "case_001.nii.gz").dataobj)[:, :, 4]
    assert mask.shape == (2, SHAPE[0], SHAPE[1]) and np.array_equal(mask[1], truth == 2)
    assert comp.groups(["case_000_s003", "case_004_s009"]) == ["case_000", "case_004"]
    assert comp.volume_set().spacing("case_000") == (1.5, 1.0, 2.0)
    along0 = Competition(_cfg(volume_root, tmp_path, "data.volumes.axis=0").data)
    assert along0.image_size("case_000_s000") == (SHAPE[1], SHAPE[2])


def test_folds_and_holdout_keep_volumes_whole(volume_root, tmp_path):
    from segkit.stages.folds import build_folds

    cfg = _cfg(volume_root, tmp_path, "folds.n_splits=3", "data.holdout_fraction=0.2")
    comp = Competition(cfg.data)
    held = {i.rsplit("_s", 1)[0] for i in comp.holdout_ids}
    assert len(held) == 1 and len(comp.holdout_ids) == SHAPE[2] and comp.test_ids == comp.holdout_ids
    frame = build_folds(comp, cfg)
    assert frame.groupby("group")["fold"].nunique().max() == 1 and len(frame) == 5 * SHAPE[2]


@pytest.mark.parametrize("stream_above_mb", [512, 0], ids=["decoded", "streamed"])
def test_bad_volumes_are_refused_naming_the_file(tmp_path, stream_above_mb):
    rng = np.random.default_rng(1)
    root = tmp_path / "bad"
    write_case(root / "imagesTr", "a", rng, root / "labelsTr")
    write_case(root / "imagesTr", "b", rng, root / "labelsTr")

    def read(name: str):
        comp = Competition(_cfg(root, tmp_path, f"data.volumes.stream_above_mb={stream_above_mb}").data)
        return comp.read_mask(f"{name}_s000")

    nib.save(nib.Nifti1Image(np.zeros((5, 5, 10), np.uint8), AFFINE), str(root / "labelsTr" / "a.nii.gz"))
    with pytest.raises(DataError, match=r"labelsTr/a.nii.gz: label volume \(5, 5, 10\) and image .* differ in shape"):
        read("a")
    nib.save(nib.Nifti1Image(np.zeros(SHAPE, np.uint8), np.eye(4)), str(root / "labelsTr" / "a.nii.gz"))
    with pytest.raises(DataError, match=r"labelsTr/a.nii.gz: its affine differs from the image's"):
        read("a")
    bad = np.zeros(SHAPE, np.uint8)
    bad[0, 0, 0] = 3
    nib.save(nib.Nifti1Image(bad, AFFINE), str(root / "labelsTr" / "a.nii.gz"))
    with pytest.raises(DataError, match=r"labelsTr/a.nii.gz: label value 3 is not a class"):
        read("a")
    image = np.asarray(nib.load(root / "imagesTr" / "b.nii.gz").dataobj).copy()
    image[3, 3, 3] = np.nan
    nib.save(nib.Nifti1Image(image, AFFINE), str(root / "imagesTr" / "b.nii.gz"))
    with pytest.raises(DataError, match=r"imagesTr/b.nii.gz: image contains NaN"):
        read("b")
    (root / "labelsTr" / "b.nii.gz").unlink()
    with pytest.raises(DataError, match=r"imagesTr/b.nii.gz: no label volume b.nii.gz"):
        read("b")


def test_label_volumes_round_trip_with_the_source_affine(volume_root, tmp_path):
    from segkit.data.volumes import assemble, write_labels

    source = volume_root / "imagesTr" / "case_000.nii.gz"
    labels = np.random.default_rng(0).integers(0, 3, SHAPE).astype(np.uint8)
    slices = [labels[:, :, i] for i in range(SHAPE[2])]
    assert np.array_equal(assemble(slices, 2), labels)
    assert np.array_equal(assemble([labels[i] for i in range(SHAPE[0])], 0), labels)
    write_labels(tmp_path / "out.nii.gz", labels, AFFINE, like=source)
    back = nib.load(tmp_path / "out.nii.gz")
    assert np.array_equal(np.asarray(back.dataobj), labels) and back.get_data_dtype() == np.uint8
    assert np.allclose(back.affine, AFFINE) and back.header.get_zooms()[:3] == (1.5, 1.0, 2.0)


def test_volume_scores_in_mm():
    from segkit.metrics.volume_scores import volume_scores

    truth = np.zeros((1, 10, 10, 10), bool)
    truth[0, 2:6, 2:6, 2:6] = True
    same = volume_scores(truth, truth, (1, 1, 1))
    assert same["dice"][0] == 1 and same["nsd"][0] == 1 and same["hd95"][0] == 0
    shifted = np.roll(truth, 1, axis=1)
    one = volume_scores(shifted, truth, (1, 1, 1), tolerance=1.0)
    wide = volume_scores(shifted, truth, (3, 1, 1), tolerance=1.0)
    assert one["dice"][0] == pytest.approx(0.75) and one["nsd"][0] == 1.0  # every surface voxel within 1 mm
    assert wide["hd95"][0] == pytest.approx(3.0) and wide["nsd"][0] < 1.0  # the shift is 3 mm along x
    empty = volume_scores(np.zeros_like(truth), truth, (1, 1, 1))
    assert empty["dice"][0] == 0 and np.isinf(empty["hd95"][0]) and empty["nsd"][0] == 0


def test_a_volume_competition_runs_end_to_end(volume_root, tmp_path, capsys, one_torch_thread):
    from segkit.cli import main

    args = _args(volume_root, tmp_path, TINY, "device=cpu", "data.context=1", "folds.n_splits=2", "train.epochs=2",
                 "train.batch_size=8", "train.pad_to=8", "train.progress=false", "train.keep=[best]",
                 "predict.tta=hflip", "ensemble.methods=[mean]", "tune.morph_radii=[1]", "train.loss={ce: 1}")
    assert main(["run", *args]) == 0
    out = capsys.readouterr().out
    assert "per volume (mean over volumes" in out and "label volumes" in out
    cfg = load_config(args[1], args[2:])
    per_volume = pd.read_csv(cfg.layout.evaluate.per_volume("oof"))
    assert len(per_volume) == 6 * 2 and {"dice", "nsd", "hd95", "assd", "rvd"} <= set(per_volume.columns)
    import json

    cleanup = json.loads(cfg.layout.tune.json.read_text())["volume_cleanup"]
    assert cleanup["volumes"] == 6 and set(cleanup["nested"]) == {"0", "1"}
    # evaluate scores each OOF volume with its fold's nested choices, slice-wise and 3D: tune's nested estimate
    assert per_volume["dice"].mean() == pytest.approx(cleanup["cv_nested"], abs=1e-9)
    assert "tune: per-volume dice, threshold and 3D clean-up:" in out
    for case in ("case_006", "case_007"):
        written = nib.load(cfg.layout.submission_volumes / f"{case}.nii.gz")
        assert written.shape == SHAPE and np.allclose(written.affine, AFFINE)
        assert set(np.unique(np.asarray(written.dataobj))) <= {0, 1, 2}
    sub = pd.read_csv(cfg.layout.submission, keep_default_na=False)
    assert len(sub) == 2 * SHAPE[2] * 2 and sub["id"].iloc[:2].tolist() == ["case_006_s000_anterior",
                                                                          "case_006_s000_posterior"]
    # packaged, the NIfTI test cases in: the same rows and the same label volumes, 3D clean-up included
    from segkit.bundle.infer import main as offline

    bundle, offline_dir = tmp_path / "bundle", tmp_path / "offline"
    assert main(["package", *args, "--out", str(bundle), "--no-wheels", "--weights", "fp32"]) == 0
    assert offline(["--test", str(volume_root / "imagesTs"), "--out", str(offline_dir / "submission.csv"),
                    "--volumes", str(offline_dir / "volumes"), "--device", "cpu"], bundle=bundle) == 0
    assert (offline_dir / "submission.csv").read_bytes() == cfg.layout.submission.read_bytes()
    for case in ("case_006", "case_007"):
        made = nib.load(offline_dir / "volumes" / f"{case}.nii.gz")
        want = nib.load(cfg.layout.submission_volumes / f"{case}.nii.gz")
        assert np.array_equal(np.asarray(made.dataobj), np.asarray(want.dataobj)) and np.allclose(made.affine, AFFINE)


def test_3d_cleanup_keeps_the_largest_body_or_drops_small_ones():
    from segkit.postprocess.volumes import VolumeParams, clean_volume

    masks = np.zeros((2, 12, 12, 12), np.uint8)
    masks[0, 1:6, 1:6, 1:6] = 1  # 125 voxels
    masks[0, 9:11, 9:11, 9:11] = 1  # 8 voxels, apart
    masks[0, 6, 6, 6] = 1  # touches the big box diagonally: the same component
    masks[1, 2:4, 2:4, 2:4] = 1
    largest = clean_volume(masks, [VolumeParams(largest=True), VolumeParams()])
    assert largest[0].sum() == 126 and np.array_equal(largest[1], masks[1])
    small = clean_volume(masks, [VolumeParams(min_volume=10), VolumeParams(min_volume=10)])
    assert small[0].sum() == 126 and small[1].sum() == 0
    assert clean_volume(masks, [VolumeParams(), VolumeParams()]) is masks


def test_the_volume_step_chooses_a_threshold_and_a_3d_cleanup_per_class():
    from segkit.postprocess.masks import ClassParams
    from segkit.postprocess.volumes import VolumeParams
    from segkit.stages.tune.volumes import candidates, choose, chosen_params, shifts_of

    table = np.zeros((4, 2, 2, 3))  # volumes, classes, threshold shifts (0 first), 3D candidates
    table[:, :, 0, 0] = 0.5  # the slice-wise choice alone
    table[:, 0, 0, 1] = [0.6, 0.6, 0.4, 0.4]  # class 0, largest: helps volumes 0 and 1 only
    table[:, 0, 0, 2] = 0.45
    table[:, 1, 1, 0] = 0.55  # class 1: the shifted threshold helps everywhere
    assert choose(table, np.array([0, 1])) == [(0, 1), (1, 0)]
    assert choose(table, np.array([2, 3])) == [(0, 0), (1, 0)]  # nothing beats doing nothing there for class 0
    shifts = shifts_of([0.1, -0.1])
    assert shifts == [0.0, -0.1, 0.1]
    params = [ClassParams(threshold=0.45), ClassParams(threshold=0.5)]
    picked = chosen_params(params, [(0, 1), (1, 0)], shifts, candidates([10]))
    assert picked == [VolumeParams(largest=True), VolumeParams(threshold=0.4)]
    assert picked[1].changes and not picked[1].active and picked[1].describe() == "p>0.40, no 3D clean-up"


def test_a_per_slice_sample_submission_names_slices_and_classes(volume_root, tmp_path):
    """The UW-Madison form: one row per slice and class, the class in a column of its own."""
    rows = [(f"case_006_slice_{i:04d}", cls) for i in range(SHAPE[2]) for cls in ("anterior", "posterior")]
    sample = tmp_path / "sample.csv"
    pd.DataFrame({"id": [r[0] for r in rows], "class": [r[1] for r in rows], "segmentation": ""}).to_csv(
        sample, index=False)
    cfg = _cfg(volume_root, tmp_path, f"data.sample_submission={sample}", "data.rle.class_column=class",
               "data.volumes.slice_id='{volume}_slice_{index:04d}'")
    comp = Competition(cfg.data)
    assert comp.test_ids == [f"case_006_slice_{i:04d}" for i in range(SHAPE[2])]  # case_007 is not asked for
    assert [(r.image_id, r.class_index) for r in comp.sample_rows[:2]] == [("case_006_slice_0000", 0),
                                                                           ("case_006_slice_0000", 1)]
    assert comp.sample_columns == ["id", "class", "segmentation"]
    pd.DataFrame({"id": ["case_009_slice_0000"], "class": ["anterior"], "segmentation": ""}).to_csv(sample,
                                                                                                   index=False)
    with pytest.raises(DataError, match=r"id 'case_009_slice_0000' is no slice of a test volume"):
        Competition(cfg.data).test_ids


def test_orthogonal_views_cut_cases_along_every_axis(volume_root, tmp_path):
    from segkit.errors import ConfigError

    cfg = _cfg(volume_root, tmp_path, "data.context=1", "data.volumes.train_axes=[2, 0]",
               "data.volumes.predict_axes=[0, 2]")
    comp = Competition(cfg.data)
    volumes = comp.volume_set()
    assert len(comp.train_ids) == 6 * SHAPE[2]  # the fold file's ids stay the slices along axis 2
    stack = np.stack([comp.read_image(f"case_001_s{i:03d}")[..., 1] for i in range(SHAPE[2])], axis=2)
    first = comp.read_image("case_001@axis0_0000")
    assert first.shape == (SHAPE[1], SHAPE[2], 3)
    assert np.allclose(first[..., 1], stack[0]) and np.allclose(first[..., 0], stack[1])  # index -1 mirrors to 1
    mask = comp.read_mask("case_001@axis0_0005")
    truth = np.asarray(nib.load(volume_root / "labelsTr" / "case_001.nii.gz").dataobj)[5]
    assert np.array_equal(mask[0], truth == 1) and comp.image_size("case_001@axis0_0005") == (SHAPE[1], SHAPE[2])
    trains = comp.training_slices(volumes.slices_of("case_002"))
    assert len(trains) == SHAPE[2] + SHAPE[0] and trains[-1] == "case_002@axis0_0019"  # that case's views only
    with pytest.raises(ConfigError, match=r"predict_axes: axis 1 is not among train_axes \[2, 0\]"):
        _cfg(volume_root, tmp_path, "data.volumes.train_axes=[2, 0]", "data.volumes.predict_axes=[1]")
    with pytest.raises(ConfigError, match=r"train_axes: \[0\] leaves out axis 2"):
        _cfg(volume_root, tmp_path, "data.volumes.train_axes=[0]")


def test_views_are_averaged_voxel_by_voxel_back_into_the_slices(volume_root, tmp_path):
    """A stand-in network that outputs each voxel's label (and, in a second channel, the view's axis) per slice:
    the views agree on the first channel, so its mean is the label volume itself, laid out along axis 2 again;
    the second is the mean of the axes' numbers."""
    from segkit.inference.views import predict_views

    cfg = _cfg(volume_root, tmp_path, "data.volumes.train_axes=[0, 1, 2]", "data.volumes.predict_axes=[0, 1, 2]")
    volumes = Competition(cfg.data).volume_set()
    labels = np.asarray(nib.load(volume_root / "labelsTr" / "case_003.nii.gz").dataobj)

    def predict_slices(ids, into, label):
        axis = int(label.rsplit(" ", 1)[1])
        for i in ids:
            view = np.take(labels, int(i.rsplit("_", 1)[1].lstrip("s")), axis=axis) * 100
            into.write(i, np.stack([view, np.full_like(view, 10 * axis)]).astype(np.uint8))
        return len(ids)

    class Out(dict):
        def has(self, i):
            return i in self

        def write(self, i, q):
            self[i] = q

    out = Out()
    assert predict_views(volumes, [0, 1, 2], volumes.slices_of("case_003")[:1], out, predict_slices) == SHAPE[2]
    assert list(out) == volumes.slices_of("case_003")
    for j, slice_id in enumerate(out):
        assert np.array_equal(out[slice_id][0], labels[:, :, j] * 100) and (out[slice_id][1] == 10).all()


def test_a_run_trains_and_predicts_along_several_axes(volume_root, tmp_path, capsys, one_torch_thread):
    from segkit.artifacts.probs import ProbStore
    from segkit.cli import main

    args = _args(volume_root, tmp_path, TINY, "device=cpu", "folds.n_splits=2", "train.epochs=1",
                 "train.batch_size=8", "train.pad_to=8", "train.progress=false", "train.keep=[best]",
                 "train.crop_size=null", "predict.tta=none", "predict.repredict_oof=true", "ensemble.methods=[mean]",
                 "tune.morph_radii=[1]", "train.loss={ce: 1}", "data.volumes.train_axes=[2, 0]",
                 "data.volumes.predict_axes=[2, 0]")
    assert main(["run", *args]) == 0
    cfg = load_config(args[1], args[2:])
    summary = pd.read_json(cfg.layout.fold("tiny", 0).summary, typ="series")
    assert summary["train_images"] == 3 * SHAPE[2]  # the fold file's ids; the views come on top of them
    history = pd.read_csv(cfg.layout.fold("tiny", 0).metrics)
    assert history["steps"].iloc[0] == 3 * (SHAPE[2] + SHAPE[0]) // 8  # slices along axes 2 and 0, full batches
    store = ProbStore(cfg.layout.model("tiny").oof_tta)
    assert len(store.ids) == 6 * SHAPE[2] and store[store.ids[0]].shape == (2, SHAPE[0], SHAPE[1])
    assert ProbStore(cfg.layout.model("tiny").test).ids == [f"case_00{c}_s{i:03d}" for c in (6, 7)
                                                             for i in range(SHAPE[2])]
    assert "case_006 along axis 0" not in capsys.readouterr().out  # per-case bars never reach a log
    assert (cfg.layout.submission_volumes / "case_007.nii.gz").exists()


def test_the_ablation_rows_split_tta_along_one_axis_from_the_views(volume_root, tmp_path, one_torch_thread):
    from segkit import ablate
    from segkit.artifacts.probs import ProbStore

    args = _args(volume_root, tmp_path, TINY, "device=cpu", "folds.n_splits=2", "train.epochs=1",
                 "train.batch_size=8", "train.pad_to=8", "train.progress=false", "train.keep=[best]",
                 "train.crop_size=null", "predict.tta=hflip", "predict.repredict_oof=true", "ensemble.methods=[mean]",
                 "tune.morph_radii=[1]", "train.loss={ce: 1}", "data.volumes.train_axes=[2, 1]",
                 "data.volumes.predict_axes=[2, 1]")
    cfg = load_config(args[1], args[2:])
    table = {r.name: r for r in ablate.run(cfg, with_variants=False)}
    one, both = table["+ TTA"], table["+ orthogonal views"]
    assert one.what.endswith("slices along axis 2 alone") and "[2, 1]" in both.what
    assert one.scores["dice"] != both.scores["dice"]
    assert both.scores["dice"] == ablate.Scorer(cfg, [], Competition(cfg.data)).raw(
        ablate.tta_oof(cfg.layout, "tiny", list(ProbStore(cfg.layout.model("tiny").oof_tta).ids)))["dice"]
    assert len(ProbStore(cfg.layout.quality.one_axis("tiny")).ids) == 6 * SHAPE[2]


def test_large_volumes_are_read_slice_by_slice_like_decoded_ones(volume_root, tmp_path):
    """Above data.volumes.stream_above_mb a case is never decoded whole: its slices along every axis, and its
    labels, are read from the file, normalised like a decoded case's (the percentiles here are exact: the sample
    is the whole of so small a volume)."""
    from segkit.data.volume_readers import DecodedCase, StreamedCase

    extra = ("data.clip_percentiles=[1, 99]", "data.volumes.train_axes=[2, 0, 1]")
    decoded = Competition(_cfg(volume_root, tmp_path, *extra).data).volume_set()
    streamed = Competition(_cfg(volume_root, tmp_path, *extra, "data.volumes.stream_above_mb=0").data).volume_set()
    for slice_id in ("case_002_s000", "case_002_s007", "case_002@axis0_0003", "case_002@axis1_0023"):
        assert np.allclose(streamed.image(slice_id), decoded.image(slice_id), atol=1e-5)
        assert np.array_equal(streamed.label(slice_id), decoded.label(slice_id))
    assert isinstance(decoded.reader("case_002"), DecodedCase)
    reader = streamed.reader("case_002")
    assert isinstance(reader, StreamedCase) and not hasattr(reader, "image")
    assert len(reader._recent) == reader.kept == 2  # no context: the slice and the next one


def test_3d_cleanup_on_the_box_equals_the_whole_volume_labelling():
    """The clean-up labels only the foreground's box: the same components, in the same order (a tie between two
    largest bodies goes to the same one), as labelling the whole volume."""
    from scipy import ndimage

    from segkit.postprocess.volumes import FULL, VolumeParams, clean_class

    def whole(mask, params):
        labels, n = ndimage.label(mask, structure=FULL)
        sizes = np.bincount(labels.ravel())[1:]
        keep = np.zeros(n + 1, bool)
        if params.largest:
            keep[1 + int(np.argmax(sizes))] = True
        else:
            keep[1:] = sizes >= params.min_volume
        return keep[labels].astype(np.uint8)

    rng = np.random.default_rng(3)
    for i in range(12):
        mask = np.zeros((20, 24, 16), np.uint8)
        for _ in range(int(rng.integers(1, 5))):
            x, y, z = rng.integers(2, 14, 3)
            size = int(rng.integers(1, 4)) if i % 3 else 2  # every third volume: equal bodies, a tie for largest
            mask[x:x + size, y:y + size, z:z + size] = 1
        for params in (VolumeParams(largest=True), VolumeParams(min_volume=8)):
            got = clean_class(mask, params)
            assert np.array_equal(got, whole(mask, params)), (i, params)
            assert got is not mask and mask.any()  # a new array; the input is left as it was
    empty = np.zeros((5, 5, 5), np.uint8)
    assert not clean_class(empty, VolumeParams(largest=True)).any()


def test_a_case_is_filled_slice_by_slice_as_assemble_stacks_it():
    from types import SimpleNamespace

    from segkit.data.volumes import assemble
    from segkit.postprocess.volumes import fill_case

    rng = np.random.default_rng(0)
    slices = {f"s{i}": rng.integers(0, 2, (2, 6, 7)).astype(np.uint8) for i in range(5)}
    for axis in (0, 1, 2):
        volumes = SimpleNamespace(axis=axis, slices_of=lambda case: list(slices))
        filled = fill_case(volumes, "case", slices.__getitem__)
        assert np.array_equal(filled, assemble(list(slices.values()), axis))
        assert filled.flags.c_contiguous


def test_the_volume_step_scores_every_3d_rule_from_one_labelling():
    from segkit.metrics.volume_scores import overlap
    from segkit.postprocess.volumes import VolumeParams, clean_volume
    from segkit.stages.tune.volumes import candidates, option_dice

    rng = np.random.default_rng(5)
    options = candidates([5, 20, 60])
    for i in range(10):
        pred = np.zeros((18, 20, 14), np.uint8)
        for _ in range(int(rng.integers(0, 5))):  # the first volumes may hold nothing
            x, y, z = rng.integers(0, 14, 3)
            s = int(rng.integers(1, 5))
            pred[x:x + s, y:y + s, z:z + s] = 1
        truth = np.roll(pred, 1, axis=0) if i % 2 else (rng.random(pred.shape) < 0.02).astype(np.uint8)
        expected = [overlap(clean_volume(pred[None], [o]), truth[None])[0][0] for o in options]
        assert np.allclose(option_dice(pred, truth, options), expected, rtol=0, atol=1e-12), i
    assert VolumeParams() in options  # the slice-wise choice alone is one of them
