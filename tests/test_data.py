"""The competition data layer: image and mask files of every supported kind, csv/RLE masks, bad-data errors."""

from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import torch

from segkit.config.schema import DataConfig
from segkit.data import Competition, SegDataset, imageio, pad_collate, unpad
from segkit.data.augment import AUGMENTS, build_augment
from segkit.errors import ConfigError, DataError


def png(path: Path, arr: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, buf = cv2.imencode(path.suffix, arr)
    assert ok
    buf.tofile(path)
    return path


# ------------------------------------------------------------------------------------------------- image files
@pytest.mark.parametrize("ext", [".png", ".tif", ".jpg"])
def test_gray_image_read_as_three_channels(tmp_path, ext):
    arr = np.tile(np.arange(0, 250, 10, dtype=np.uint8), (4, 1))
    img = imageio.read_image(png(tmp_path / f"g{ext}", arr), channels=3)
    assert img.shape == (4, 25, 3) and img.dtype == np.float32
    assert np.allclose(img[..., 0], img[..., 2])
    if ext != ".jpg":
        assert np.allclose(img[..., 0], arr / 255)


def test_rgba_drops_alpha_and_keeps_rgb_order(tmp_path):
    bgra = np.zeros((3, 3, 4), np.uint8)
    bgra[..., 2] = 200  # red in OpenCV's BGR(A) order
    bgra[..., 3] = 255
    img = imageio.read_image(png(tmp_path / "c.png", bgra), channels=3)
    assert img.shape == (3, 3, 3)
    assert np.allclose(img[..., 0], 200 / 255) and np.allclose(img[..., 1:], 0)


def test_16bit_image_scaled_and_rgb_to_gray(tmp_path):
    arr = np.full((5, 6), 65535, np.uint16)
    arr[0, 0] = 0
    img = imageio.read_image(png(tmp_path / "d.png", arr), channels=1)
    assert img.shape == (5, 6, 1) and img.max() == pytest.approx(1.0) and img.min() == 0
    rgb = np.stack([np.full((2, 2), v, np.uint8) for v in (10, 100, 200)], -1)
    gray = imageio.read_image(png(tmp_path / "rgb.png", rgb), channels=1)
    assert gray.shape == (2, 2, 1) and 0 < gray.mean() < 1


def test_float_tiff_with_nan_is_an_error(tmp_path):
    arr = np.ones((4, 4), np.float32)
    arr[1, 1] = np.nan
    path = png(tmp_path / "nan.tif", arr)
    with pytest.raises(DataError, match="nan.tif.*NaN"):
        imageio.read_image(path, 1)


def test_zero_byte_and_truncated_files_name_the_file(tmp_path):
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(DataError, match="empty.png.*0 bytes"):
        imageio.read_image(empty, 3)
    good = png(tmp_path / "full.png", np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8))
    cut = tmp_path / "cut.png"
    cut.write_bytes(good.read_bytes()[:100])
    with pytest.raises(DataError, match="cut.png"):
        imageio.read_image(cut, 3)
    with pytest.raises(DataError, match="missing.png: file not found"):
        imageio.image_size(tmp_path / "missing.png")


# -------------------------------------------------------------------------------------------------- mask files
@pytest.mark.parametrize("fg,dtype", [(1, np.uint8), (255, np.uint8), (65535, np.uint16)])
def test_binary_masks_in_any_scale(tmp_path, fg, dtype):
    arr = np.zeros((4, 4), dtype)
    arr[1:3, 1:3] = fg
    mask = imageio.read_mask(png(tmp_path / "m.png", arr), "binary", 1)
    assert mask.shape == (1, 4, 4) and mask.dtype == np.uint8
    assert mask.sum() == 4 and set(np.unique(mask)) == {0, 1}


def test_jpeg_mask_noise_is_thresholded(tmp_path):
    arr = np.zeros((32, 32), np.uint8)
    arr[8:24, 8:24] = 255
    mask = imageio.read_mask(png(tmp_path / "m.jpg", arr), "binary", 1)
    assert abs(int(mask.sum()) - 256) <= 8


def test_unexpected_mask_values_in_binary_mode(tmp_path):
    arr = np.array([[0, 1], [2, 3]], np.uint8)
    with pytest.raises(DataError, match="m.png: binary mask expected.*0, 1, 2, 3"):
        imageio.read_mask(png(tmp_path / "m.png", arr), "binary", 1)


def test_multiclass_label_map(tmp_path):
    arr = np.array([[0, 1], [2, 2]], np.uint8)
    mask = imageio.read_mask(png(tmp_path / "m.png", arr), "multiclass", 2)
    assert mask.shape == (2, 2, 2)
    assert mask[0].tolist() == [[0, 1], [0, 0]] and mask[1].tolist() == [[0, 0], [1, 1]]
    with pytest.raises(DataError, match="0..1"):
        imageio.read_mask(tmp_path / "m.png", "multiclass", 1)


# ------------------------------------------------------------------------------------------- folder competition
def folder_competition(tmp_path: Path, n=4, size=(8, 10)) -> Path:
    rng = np.random.default_rng(0)
    for i in range(n):
        png(tmp_path / "img" / f"a{i}.png", rng.integers(0, 255, size, dtype=np.uint8))
        m = np.zeros(size, np.uint8)
        m[: i + 1, : i + 2] = 255
        png(tmp_path / "msk" / f"a{i}.png", m)
    return tmp_path


def test_folder_masks_competition(tmp_path):
    root = folder_competition(tmp_path)
    comp = Competition(DataConfig(root=root, train_images="img", train_masks="msk", test_images=None,
                                  sample_submission=None))
    assert comp.train_ids == ["a0", "a1", "a2", "a3"]
    assert comp.read_mask("a2").sum() == 3 * 4
    assert comp.read_image("a2").shape == (8, 10, 3)
    areas, pixels = comp.mask_stats("a1")
    assert areas.tolist() == [6] and pixels == 80


def test_missing_mask_and_size_mismatch(tmp_path):
    root = folder_competition(tmp_path)
    (root / "msk" / "a3.png").unlink()
    cfg = DataConfig(root=root, train_images="img", train_masks="msk", test_images=None, sample_submission=None)
    with pytest.raises(DataError, match="a3.png: no mask"):
        _ = Competition(cfg).train_ids
    png(root / "msk" / "a3.png", np.zeros((5, 5), np.uint8))
    with pytest.raises(DataError, match="a3.png: mask is 5x5, image is 8x10"):
        Competition(cfg).read_mask("a3")


def test_missing_root_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="data.root"):
        Competition(DataConfig(root=tmp_path / "nowhere"))


# ---------------------------------------------------------------------------------------------- csv competition
def csv_competition(tmp_path: Path, rows, classes=("a",), sep=None, class_column=None, **extra):
    for name in ("x", "y"):
        png(tmp_path / "train" / f"{name}.png", np.zeros((4, 3), np.uint8))
    pd.DataFrame(rows).to_csv(tmp_path / "train.csv", index=False)
    rle = {"id_column": "ImageId", "rle_column": "EncodedPixels", "id_class_sep": sep, "class_column": class_column}
    mode = "binary" if len(classes) == 1 else "multilabel"
    cfg = DataConfig(root=tmp_path, train_images="train", train_csv="train.csv", test_images=None,
                     sample_submission=None, rle=rle, classes=list(classes), mode=mode, **extra)
    return Competition(cfg)


def test_rle_csv_with_compound_ids_and_missing_rows(tmp_path):
    rows = {"ImageId": ["x.png_1", "x.png_2"], "EncodedPixels": ["1 2", "5 3"]}
    comp = csv_competition(tmp_path, rows, classes=("a", "b"), sep="_")
    mask = comp.read_mask("x.png")
    # column-major: pixels 1-2 are (0,0),(1,0); pixels 5-7 are (0,1),(1,1),(2,1)
    assert mask[0].sum() == 2 and mask[0][0, 0] == 1 and mask[0][1, 0] == 1
    assert mask[1][:3, 1].tolist() == [1, 1, 1]
    assert comp.read_mask("y").sum() == 0  # no row = empty mask
    assert comp.train_ids == ["x", "y"]


def test_rle_csv_class_column_names_or_numbers(tmp_path):
    rows = {"ImageId": ["x", "x"], "ClassId": ["b", "1"], "EncodedPixels": ["1 1", "2 1"]}
    comp = csv_competition(tmp_path, rows, classes=("a", "b"), class_column="ClassId")
    mask = comp.read_mask("x")
    assert mask[1][0, 0] == 1 and mask[0][1, 0] == 1


@pytest.mark.parametrize("rows,match", [
    ({"ImageId": ["x", "x"], "EncodedPixels": ["1 1", "3 1"]}, "train.csv row 3: duplicate row"),
    ({"ImageId": ["zz"], "EncodedPixels": ["1 1"]}, "train.csv row 2: id 'zz' has no image"),
    ({"ImageId": ["x"], "Pixels": ["1 1"]}, "missing column"),
])
def test_bad_csv_rows_named(tmp_path, rows, match):
    with pytest.raises(DataError, match=match):
        _ = csv_competition(tmp_path, rows).train_ids


def test_bad_rle_names_row(tmp_path):
    comp = csv_competition(tmp_path, {"ImageId": ["x", "y"], "EncodedPixels": ["", "1 2 3"]})
    with pytest.raises(DataError, match="train.csv row 3"):
        comp.read_mask("y")


def test_non_utf8_csv(tmp_path):
    png(tmp_path / "train" / "x.png", np.zeros((4, 3), np.uint8))
    (tmp_path / "train.csv").write_bytes("ImageId,EncodedPixels\nx,1 1\n\xff\xfe\n".encode("latin-1"))
    cfg = DataConfig(root=tmp_path, train_images="train", train_csv="train.csv", rle={"id_column": "ImageId",
                     "rle_column": "EncodedPixels"}, test_images=None, sample_submission=None)
    with pytest.raises(DataError, match="train.csv: not UTF-8"):
        _ = Competition(cfg).train_ids


# -------------------------------------------------------------------------------------------- demo + test set
def test_demo_competition_and_sample(demo_cfg):
    cfg = demo_cfg()
    comp = Competition(cfg.data)
    assert len(comp.train_ids) == 24 and len(comp.test_ids) == 8
    assert comp.sample_columns == ["id", "rle_mask"]
    assert [r.image_id for r in comp.sample_rows] == comp.test_ids
    masks = [comp.read_mask(i) for i in comp.train_ids]
    empty = sum(m.sum() == 0 for m in masks)
    assert 0 < empty < len(masks)
    assert comp.read_image(comp.test_ids[0], "test").shape == (32, 32, 1)


def test_sample_id_without_test_image(demo_root, tmp_path):
    import shutil

    root = tmp_path / "c"
    shutil.copytree(demo_root, root)
    sample = pd.read_csv(root / "sample_submission.csv", dtype=str, keep_default_na=False)
    sample.loc[len(sample)] = ["ghost", ""]
    sample.to_csv(root / "sample_submission.csv", index=False)
    cfg = DataConfig(root=root, train_csv="train.csv", classes=["object"])
    with pytest.raises(DataError, match="'ghost' has no image"):
        _ = Competition(cfg).test_ids


def test_empty_test_folder(demo_root, tmp_path):
    (tmp_path / "empty").mkdir()
    cfg = DataConfig(root=demo_root, train_csv="train.csv", test_images=str(tmp_path / "empty"),
                     sample_submission=None, classes=["object"])
    with pytest.raises(DataError, match="test set is empty"):
        _ = Competition(cfg).test_ids


def test_holdout_is_disjoint_deterministic_and_has_a_sample(demo_cfg):
    cfg = demo_cfg("data.holdout_fraction=0.25")
    a, b = Competition(cfg.data, seed=3), Competition(cfg.data, seed=3)
    assert a.holdout_ids == b.holdout_ids and len(a.holdout_ids) == 6
    assert not set(a.holdout_ids) & set(a.train_ids)
    assert a.test_ids == a.holdout_ids
    assert [r.row_id for r in a.sample_rows] == a.holdout_ids
    assert a.read_image(a.test_ids[0], "test").shape == (32, 32, 1)


# ----------------------------------------------------------------------------------------------------- dataset
def test_dataset_pads_to_stride_and_unpads(demo_cfg):
    comp = Competition(demo_cfg("data.channels=3").data)
    ds = SegDataset(comp, comp.train_ids[:4], augment="heavy", pad_to=24)
    item = ds[0]
    assert item["image"].shape == (3, 48, 48) and item["mask"].shape == (1, 48, 48)
    assert item["size"].tolist() == [32, 32]
    assert unpad(item["mask"], item["size"]).shape == (1, 32, 32)
    assert item["has_mask"].shape == (1,)
    assert torch.isfinite(item["image"]).all()
    assert set(item["mask"].unique().tolist()) <= {0.0, 1.0}


def test_dataset_mask_matches_competition_without_augment(demo_cfg):
    comp = Competition(demo_cfg().data)
    ds = SegDataset(comp, comp.train_ids, augment=None, pad_to=1)
    for k in range(3):
        item = ds[k]
        assert np.array_equal(item["mask"].numpy().astype(np.uint8), comp.read_mask(comp.train_ids[k]))
        assert item["has_mask"].item() == float(comp.read_mask(comp.train_ids[k]).any())
    test = SegDataset(comp, comp.test_ids, split="test")
    assert "mask" not in test[0]


def test_pad_collate_mixes_sizes():
    items = [{"image": torch.ones(1, 4, 6), "mask": torch.ones(1, 4, 6), "has_mask": torch.ones(1),
              "id": "a", "size": torch.tensor([4, 6])},
             {"image": torch.ones(1, 8, 2), "mask": torch.ones(1, 8, 2), "has_mask": torch.zeros(1),
              "id": "b", "size": torch.tensor([8, 2])}]
    batch = pad_collate(items)
    assert batch["image"].shape == (2, 1, 8, 6) and batch["mask"].shape == (2, 1, 8, 6)
    assert batch["image"][0, 0, 4:].sum() == 0 and batch["id"] == ["a", "b"]


def test_augment_registry_and_crop():
    assert {"none", "light", "hflip", "medium", "heavy"} <= set(AUGMENTS.names())
    with pytest.raises(ConfigError, match="train.augment: unknown augmentation 'wild'"):
        build_augment("wild")
    aug = build_augment("medium", crop_size=16)
    img = np.random.default_rng(0).random((40, 30, 3)).astype(np.float32)
    out = aug(image=img, mask=np.zeros((40, 30, 1), np.uint8))
    assert out["image"].shape == (16, 16, 3) and out["mask"].shape == (16, 16, 1)
    assert build_augment("none") is None


def test_by_size_groups_like_sizes_and_keeps_one_size_sets_in_order(tmp_path):
    from segkit.data import by_size

    class Sizes:
        def __init__(self, sizes):
            self.sizes = sizes

        def image_size(self, image_id, split="train"):
            return self.sizes[image_id]

    mixed = Sizes({"a": (512, 512), "b": (256, 256), "c": (512, 512), "d": (256, 320)})
    assert by_size(mixed, ["a", "b", "c", "d"]) == ["b", "d", "a", "c"]
    same = Sizes({"z": (101, 101), "y": (101, 101)})
    assert by_size(same, ["z", "y"]) == ["z", "y"]
