"""Instance competitions: objects from label maps or a per-object csv (and the inputs refused), targets that
separate touching objects, the decoders, per-object RLE rows and their checks, scoring, and a whole run."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from conftest import CONFIGS

from segkit.config import load_config
from segkit.data import Competition, rle
from segkit.errors import ConfigError, DataError

TINY = ("models=[{name: tiny, arch: Unet, encoder: tu-resnet10t, "
        "params: {encoder_depth: 3, decoder_channels: [16, 8, 4]}}]")
SIZE = 48


def touching_pair(size: int = SIZE) -> np.ndarray:
    """Two discs that touch along a line, and a third apart."""
    labels = np.zeros((size, size), np.int32)
    yy, xx = np.mgrid[:size, :size]
    labels[(yy - 20) ** 2 + (xx - 14) ** 2 <= 64] = 1
    labels[((yy - 20) ** 2 + (xx - 29) ** 2 <= 64) & (labels == 0)] = 2
    labels[(yy - 38) ** 2 + (xx - 38) ** 2 <= 25] = 3
    return labels


def write_competition(root: Path, n: int = 16, seed: int = 0) -> None:
    """Images of a few bright discs, some touching, with 16-bit instance maps and a per-object csv."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    (root / "instances").mkdir()
    rows = []
    for i in range(n):
        labels = np.zeros((SIZE, SIZE), np.int32)
        yy, xx = np.mgrid[:SIZE, :SIZE]
        k = 0
        for _ in range(rng.integers(2, 5)):
            cy, cx, r = rng.integers(8, SIZE - 8), rng.integers(8, SIZE - 8), rng.integers(4, 7)
            disc = ((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r) & (labels == 0)
            if disc.sum() > 10:
                k += 1
                labels[disc] = k
        image = (rng.normal(40, 10, (SIZE, SIZE)) + 150 * (labels > 0)).clip(0, 255).astype(np.uint8)
        cv2.imwrite(str(root / "images" / f"img{i:02d}.png"), image)
        cv2.imwrite(str(root / "instances" / f"img{i:02d}.png"), labels.astype(np.uint16))
        rows += [(f"img{i:02d}", text) for text in rle.encode_labels(labels)] or [(f"img{i:02d}", "")]
    pd.DataFrame(rows, columns=["ImageId", "EncodedPixels"]).to_csv(root / "objects.csv", index=False)


@pytest.fixture(scope="module")
def instance_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("instances")
    write_competition(root)
    return root


def _args(root: Path, tmp_path: Path, *extra: str) -> list[str]:
    return ["--config", str(CONFIGS / "demo.yaml"), f"data.root={root}", f"paths.runs={tmp_path / 'runs'}",
            f"paths.folds={tmp_path / 'folds'}", f"paths.submissions={tmp_path / 'subs'}", "data.train_images=images",
            "data.train_csv=null", "data.classes=null", "data.instances={labels: instances}",
            "data.test_images=null", "data.sample_submission=null", "data.rle.id_column=ImageId",
            "data.rle.rle_column=EncodedPixels", *extra]


def _cfg(root, tmp_path, *extra):
    args = _args(root, tmp_path, *extra)
    return load_config(args[1], args[2:])


def test_targets_separate_touching_objects():
    from scipy import ndimage

    from segkit.config.schema import InstanceSpec
    from segkit.data.instances import targets

    labels = touching_pair()
    mask, contour = targets(labels, InstanceSpec(labels="x", contour_width=1))
    assert np.array_equal(mask, labels > 0)
    assert ndimage.label(mask)[1] == 2  # the touching pair is one blob of the mask ...
    interior = mask & ~contour
    parts, n = ndimage.label(interior)
    assert n == 3  # ... and two interiors apart
    assert all(len(np.unique(labels[parts == k])) == 1 for k in range(1, n + 1))  # each inside one object
    edge = np.zeros((8, 8), np.int32)
    edge[:, :3] = 1  # an object cut by the frame: its border is where it meets the background only
    assert not targets(edge, InstanceSpec(labels="x", contour_width=1))[1][:, 0].any()


def test_instances_from_maps_or_a_csv_agree(instance_root, tmp_path):
    maps = Competition(_cfg(instance_root, tmp_path).data)
    csv = Competition(_cfg(instance_root, tmp_path, "data.instances={csv: objects.csv}").data)
    assert maps.train_ids == csv.train_ids and len(maps.train_ids) == 16
    assert maps.cfg.classes == ["mask", "contour"] and maps.cfg.mode == "multilabel"
    for image_id in maps.train_ids[:4]:
        a, b = maps.instance_map(image_id), csv.instance_map(image_id)
        assert np.array_equal(a, b) and a.max() >= 2
        assert np.array_equal(maps.read_mask(image_id), csv.read_mask(image_id))
    with pytest.raises(ConfigError, match="leave data.classes unset"):
        _cfg(instance_root, tmp_path, "data.classes=[nuclei]")


def test_bad_instances_are_refused_naming_the_image_and_rows(instance_root, tmp_path):
    from segkit.data.instances import objects_from_rows, read_label_map

    square = np.zeros((10, 10), np.uint8)
    square[2:6, 2:6] = 1
    moved = np.roll(square, 2, axis=1)
    rows = [(rle.encode(square), "objects.csv row 2"), (rle.encode(moved), "objects.csv row 3")]
    with pytest.raises(DataError, match=r"objects.csv row 3: this object of image 'a' overlaps the one of "
                                        r"objects.csv row 2 \(8 px\)"):
        objects_from_rows(rows, (10, 10), "F", False, "error", "a")
    later = objects_from_rows(rows, (10, 10), "F", False, "later_wins", "a")
    assert (later == 2).sum() == 16 and (later == 1).sum() == 8
    with pytest.raises(rle.RLEError, match="objects.csv row 2: RLE run 1 .* runs past the last pixel"):
        objects_from_rows([("95 10", "objects.csv row 2")], (10, 10), "F", False, "error", "a")
    path = tmp_path / "float.tif"
    cv2.imwrite(str(path), np.full((4, 4), 1.5, np.float32))
    with pytest.raises(DataError, match=r"float.tif: label value 1.5 is not an object id"):
        read_label_map(path)
    frame = pd.read_csv(instance_root / "objects.csv", keep_default_na=False)
    frame = frame[frame["ImageId"] != "img03"]
    frame.to_csv(tmp_path / "partial.csv", index=False)
    comp = Competition(_cfg(instance_root, tmp_path, f"data.instances={{csv: {tmp_path / 'partial.csv'}}}").data)
    with pytest.raises(DataError, match=r"partial.csv: no row for image 'img03'"):
        comp.train_ids


def test_the_watershed_splits_what_connected_components_merge():
    from segkit.config.schema import InstanceSpec
    from segkit.data.instances import targets
    from segkit.metrics.competition import object_ap_labels
    from segkit.postprocess.instances import DecodeParams, decode

    labels = touching_pair()
    probs = (targets(labels, InstanceSpec(labels="x", contour_width=1)) * 255).astype(np.uint8)
    merged = decode(probs, DecodeParams("components"))
    split = decode(probs, DecodeParams("watershed"))
    assert merged.max() == 2 and split.max() == 3
    assert object_ap_labels(split, labels) == 1.0 > object_ap_labels(merged, labels)
    small = decode(probs, DecodeParams("watershed", min_size=90))
    assert small.max() == 2 and set(np.unique(small)) == {0, 1, 2}  # the small disc dropped, renumbered
    grown = decode(probs, DecodeParams("watershed", mask=0.5, dilate=1))
    assert (grown > 0).sum() > (split > 0).sum()
    with pytest.raises(ConfigError, match="needs a contour channel"):
        decode(probs[:1], DecodeParams("watershed"))


def test_objects_are_written_one_row_each_and_checked(tmp_path):
    from segkit.submission.validate import validate_instances_frame
    from segkit.tools.score import score_instances

    labels = touching_pair()
    texts = rle.encode_labels(labels)
    assert texts == [rle.encode(labels == k) for k in (1, 2, 3)]
    sample = pd.DataFrame({"ImageId": ["a", "b"], "EncodedPixels": ["1 1", "1 1"]})
    sub = pd.DataFrame({"ImageId": ["a"] * 3 + ["b"], "EncodedPixels": texts + [""]})
    report, counts = validate_instances_frame(sub, sample, tmp_path / "sub.csv", shapes=(SIZE, SIZE))
    assert report.ok and counts == {"a": 3, "b": 0}
    bad = pd.DataFrame({"ImageId": ["a"] * 3 + ["b", "b"],
                        "EncodedPixels": [texts[0], texts[1], rle.encode((labels == 1) | (labels == 3)), "",
                                          texts[2]]})
    report, _ = validate_instances_frame(bad, sample, tmp_path / "sub.csv", shapes=(SIZE, SIZE))
    assert any("image a: the objects of rows 2 and 4 overlap" in p for p in report.problems)
    assert any("row 5 (id b): an empty row beside 1 object(s)" in p for p in report.problems)
    report, _ = validate_instances_frame(sub[sub["ImageId"] == "a"], sample, tmp_path / "sub.csv")
    assert any("id b (sample row 3): missing from the submission" in p for p in report.problems)
    sub.to_csv(tmp_path / "sub.csv", index=False)
    sub.to_csv(tmp_path / "truth.csv", index=False)
    assert score_instances(tmp_path / "sub.csv", tmp_path / "truth.csv", (SIZE, SIZE))[0] == 1.0
    union = pd.DataFrame({"ImageId": ["a", "b"], "EncodedPixels": [rle.encode(labels > 0), ""]})
    union.to_csv(tmp_path / "union.csv", index=False)
    value = score_instances(tmp_path / "union.csv", tmp_path / "truth.csv", (SIZE, SIZE))[0]
    assert value == 0.5  # image a: a row is one object, connected or not, so the union matches none of three


def test_an_instance_competition_runs_end_to_end(instance_root, tmp_path, capsys, one_torch_thread):
    from segkit.cli import main
    from segkit.submission.validate import validate_instances

    args = _args(instance_root, tmp_path, TINY, "device=cpu", "folds.n_splits=2", "train.epochs=2",
                 "train.batch_size=8", "train.pad_to=8", "train.progress=false", "train.keep=[best]",
                 "predict.tta=hflip", "ensemble.methods=[mean]", "tune.morph_radii=[1]", "data.holdout_fraction=0.25",
                 "tune.instances={masks: [0.4, 0.5], seeds: [0.3, 0.5], min_seeds: [0, 4], min_sizes: [0, 8], "
                 "dilations: [0, 1]}")
    assert main(["run", *args]) == 0
    out = capsys.readouterr().out
    assert "tune: instances: " in out and "CV object AP:" in out and "objects (means over images" in out
    cfg = load_config(args[1], args[2:])
    import json

    tuned = json.loads(cfg.layout.tune.json.read_text())["instances"]
    assert tuned["images"] == 12 and set(tuned["nested"]) == {"0", "1"} and 0 <= tuned["cv_nested"] <= 1
    objects = pd.read_csv(cfg.layout.evaluate.objects("oof"))
    assert len(objects) == 12 and objects["ap"].mean() == pytest.approx(tuned["cv_nested"], abs=1e-9)
    held = pd.read_csv(cfg.layout.evaluate.objects("holdout"))
    sub = pd.read_csv(cfg.layout.submission, keep_default_na=False)
    truth = pd.read_csv(cfg.layout.holdout_truth, keep_default_na=False)
    assert list(sub.columns) == ["ImageId", "EncodedPixels"] and set(sub["ImageId"]) == set(truth["ImageId"])
    assert len(truth) == sum(int(np.asarray(cv2.imread(str(instance_root / "instances" / f"{i}.png"),
                                                      cv2.IMREAD_UNCHANGED)).max()) for i in set(truth["ImageId"]))
    sample = pd.DataFrame({"ImageId": list(dict.fromkeys(truth["ImageId"])), "EncodedPixels": ""})
    report, counts = validate_instances(cfg.layout.submission, sample, shapes=(SIZE, SIZE))
    assert report.ok and sum(counts.values()) == sum(sub["EncodedPixels"] != "")
    assert main(["score", str(cfg.layout.submission), "--truth", str(cfg.layout.holdout_truth), "--metric",
                 "object_ap", "--instances", "--shape", f"{SIZE}x{SIZE}"]) == 0
    report = cfg.layout.report.markdown.read_text()
    assert "## Objects" in report and "![object examples](object_examples.png)" in report
    scored = capsys.readouterr().out
    assert f"object_ap: {held['ap'].mean():.6f} (4 rows" in scored  # what evaluate and submit report
    # As an offline bundle, on the held-out images with the submission as the sample (an image's id repeats, one
    # row per object): the same file, byte for byte.
    from segkit.bundle.infer import main as offline

    assert main(["package", *args, "--out", str(tmp_path / "bundle"), "--no-wheels", "--weights", "fp32"]) == 0
    again = tmp_path / "bundle.csv"
    assert offline(["--test", str(instance_root / "images"), "--sample", str(cfg.layout.submission), "--out",
                    str(again), "--device", "cpu"], bundle=tmp_path / "bundle") == 0
    assert again.read_bytes() == cfg.layout.submission.read_bytes()


def test_the_ablation_of_an_instance_recipe_is_in_object_ap(instance_root, tmp_path, one_torch_thread):
    from segkit import ablate

    args = _args(instance_root, tmp_path, TINY, "device=cpu", "folds.n_splits=2", "train.epochs=2",
                 "train.batch_size=8", "train.pad_to=8", "train.progress=false", "train.keep=[best]",
                 "predict.tta=hflip", "predict.repredict_oof=true", "ensemble.methods=[mean]",
                 "data.holdout_fraction=0.25", "tune.morphology=false",
                 "train.average={method: swa, window: 1.0}", "predict.tta_scales=[1, 1.5]",
                 "tune.instances={masks: [0.5], seeds: [0.5], min_seeds: [0], min_sizes: [0, 8], dilations: [0]}")
    cfg = load_config(args[1], args[2:])
    table = {r.name: r for r in ablate.run(cfg, with_variants=False)}
    assert list(table) == ["connected components", "+ contour, watershed", "+ weight averaging", "+ TTA",
                           "+ multi-scale TTA", "+ tuned decoder", "+ distance channel", "segkit run"]
    # the rows before averaging decode the best single epoch's predictions, the TTA row the native scale alone
    assert (cfg.layout.quality.single_epoch("tiny") / "manifest.json").exists()
    assert (cfg.layout.quality.one_scale("tiny") / "manifest.json").exists()
    assert all(0 <= r.scores["object_ap"] <= 1 for r in table.values() if r.scores)
    assert table["segkit run"].scores["object_ap"] == pytest.approx(table["+ tuned decoder"].scores["object_ap"])
    assert "| object_ap in-sample |" in cfg.layout.quality.markdown.read_text()
