"""Inputs beyond gray and RGB: any channel count (.npy arrays, multi-page TIFF, one file a channel), the
normalisations, and 2.5D stacks (a slice and its neighbours as channels, the ends of a volume, grouped and
contiguous-block folds, a whole run)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from conftest import CONFIGS

from segkit.config import load_config
from segkit.data import Competition
from segkit.errors import ConfigError, DataError

TINY = ("models=[{name: tiny, arch: Unet, encoder: tu-resnet10t, "
        "params: {encoder_depth: 3, decoder_channels: [16, 8, 4]}}]")
STACK_PATTERN = r"v(?P<volume>\d+)_s(?P<index>\d+)"


def _config(tmp_path: Path, root: Path, *overrides: str):
    return load_config(CONFIGS / "demo.yaml", [f"data.root={root}", f"paths.runs={tmp_path / 'runs'}",
                                               f"paths.folds={tmp_path / 'folds'}",
                                               f"paths.submissions={tmp_path / 'subs'}", *overrides])


def _labelled(root: Path, ids: list[str], image_writer) -> None:
    """train/images via ``image_writer(path_stem, k)``, masks and a train.csv-free demo layout."""
    (root / "train" / "images").mkdir(parents=True)
    (root / "train" / "masks").mkdir(parents=True)
    for k, image_id in enumerate(ids):
        image_writer(root / "train" / "images" / image_id, k)
        mask = np.zeros((16, 16), np.uint8)
        mask[4:9, 3 + k % 5:9 + k % 5] = 255
        cv2.imwrite(str(root / "train" / "masks" / f"{image_id}.png"), mask)


def _bands(k: int, n: int) -> np.ndarray:
    return np.stack([np.full((16, 16), 10 * c + k, np.uint8) for c in range(n)], axis=2)


@pytest.mark.parametrize("kind", ["npy", "tiff pages", "channel files"])
def test_images_of_any_channel_count_read_as_that_many_channels(tmp_path, kind):
    n = 5
    root = tmp_path / "data"

    def write(stem: Path, k: int) -> None:
        bands = _bands(k, n)
        if kind == "npy":
            np.save(stem.with_suffix(".npy"), bands)
        elif kind == "tiff pages":
            assert cv2.imwritemulti(str(stem.with_suffix(".tif")), [bands[:, :, c] for c in range(n)])
        else:
            for c in range(n):
                cv2.imwrite(f"{stem}_b{c}.png", bands[:, :, c])

    _labelled(root, [f"im{k}" for k in range(4)], write)
    extra = [f"data.channel_suffixes=[{', '.join(f'_b{c}' for c in range(n))}]"] if kind == "channel files" else []
    cfg = _config(tmp_path, root, f"data.channels={n}", "data.normalize=image", "data.test_images=null",
                  "data.sample_submission=null", "data.train_masks=train/masks", "data.train_csv=null", *extra)
    comp = Competition(cfg.data)
    assert sorted(comp.train_ids) == [f"im{k}" for k in range(4)]
    image = comp.read_image("im2")
    assert image.shape == (16, 16, n) and image.dtype == np.float32
    assert np.allclose(image[0, 0], (10 * np.arange(n) + 2) / 255.0)  # uint8 scaled to [0, 1], however stored
    wrong = _config(tmp_path, root, "data.channels=4", "data.normalize=image", "data.test_images=null",
                    "data.sample_submission=null", "data.train_masks=train/masks", "data.train_csv=null",
                    *(["data.channel_suffixes=[_b0, _b1, _b2, _b3]"] if kind == "channel files" else []))
    if kind != "channel files":  # four of the five band files are a valid 4-channel image
        with pytest.raises(DataError, match=r"im0\.(npy|tif): 5-channel image, data.channels is 4"):
            Competition(wrong.data).read_image("im0")


def test_a_nan_and_a_pickled_npy_are_refused_naming_the_file(tmp_path):
    from segkit.data import imageio

    bad = np.zeros((8, 8, 2), np.float32)
    bad[3, 3, 1] = np.nan
    np.save(tmp_path / "nan.npy", bad)
    with pytest.raises(DataError, match=r"nan\.npy: image contains NaN"):
        imageio.read_image(tmp_path / "nan.npy", 2)
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(DataError, match=r"obj\.npy: not a plain numeric \.npy array"):
        imageio.read_image(tmp_path / "obj.npy", 2)


def test_normalisations():
    from segkit.config.schema import DataConfig
    from segkit.data.normalize import Normalizer, clip_percentiles

    rng = np.random.default_rng(0)
    image = rng.random((20, 30, 4), dtype=np.float32) * np.array([1, 5, 10, 100], np.float32)
    z = Normalizer(DataConfig(channels=4, normalize="image"))(image)
    assert np.allclose(z.reshape(-1, 4).mean(0), 0, atol=1e-5) and np.allclose(z.reshape(-1, 4).std(0), 1, atol=1e-4)
    d = Normalizer(DataConfig(channels=4, normalize="dataset", mean=[0, 1, 2, 3], std=[1, 2, 4, 8]))(image)
    assert np.allclose(d[..., 3], (image[..., 3] - 3) / 8)
    assert Normalizer(DataConfig(channels=4, normalize="none"))(image) is image
    spiky = image.copy()
    spiky[0, 0] = 1e6  # one outlier voxel, as raw MRI has
    clipped = clip_percentiles(spiky, 1, 99)
    assert clipped.min() == 0 and clipped.max() == 1 and np.median(clipped[..., 3]) == pytest.approx(0.5, abs=0.05)
    with pytest.raises(ValueError, match="imagenet statistics are for 1 or 3 input channels"):
        DataConfig(channels=4)
    with pytest.raises(ValueError, match="std: normalize: dataset needs 4 values"):
        DataConfig(channels=4, normalize="dataset", mean=[0] * 4)


def test_an_augmentation_that_cannot_take_the_channels_is_named(tmp_path, demo_root):
    from segkit import catalog

    catalog.check(_config(tmp_path, demo_root, "train.augment=heavy"))  # one channel: every augmentation works
    cfg = _config(tmp_path, demo_root, "data.channels=4", "data.normalize=image", "train.augment=heavy")
    with pytest.raises(ConfigError, match=r"train.augment: heavy's FloatCLAHE does not work on 4-channel images"):
        catalog.check(cfg)
    catalog.check(_config(tmp_path, demo_root, "data.channels=4", "data.normalize=image", "train.augment=medium"))


# ------------------------------------------------------------------------------------------------- 2.5D stacks


def test_neighbours_at_the_ends_of_a_volume_are_mirrored_or_repeated():
    from segkit.config.schema import DataConfig
    from segkit.data.stacks import Position, Stacks

    where = {f"s{i}": Position("a", i) for i in range(5)}

    def stack(**kw) -> Stacks:
        cfg = DataConfig(channels=1, slices={"pattern": "s(?P<index>.)"}, normalize="none", **kw)
        return Stacks(cfg, where, "here")

    assert stack(context=2).neighbours("s0") == ["s2", "s1", "s0", "s1", "s2"]
    assert stack(context=2).neighbours("s4") == ["s2", "s3", "s4", "s3", "s2"]
    assert stack(context=2, context_ends="repeat").neighbours("s0") == ["s0", "s0", "s0", "s1", "s2"]
    assert stack(context=1, context_stride=2).neighbours("s4") == ["s2", "s4", "s2"]
    assert stack(context=1).neighbours("s2") == ["s1", "s2", "s3"]
    del where["s3"]
    with pytest.raises(DataError, match=r"here: volume 'a' has no slice 3 \(needed beside slice 2"):
        stack(context=1).neighbours("s2")
    one = Stacks(DataConfig(channels=1, slices={"pattern": "s(?P<index>.)"}, context=3, normalize="none"),
                 {"s7": Position("b", 7)}, "here")
    assert one.neighbours("s7") == ["s7"] * 7  # a volume of one slice


def write_stacks(root: Path, volumes: int, slices: int, seed: int = 0, size: int = 32) -> list[str]:
    """Volumes of ``slices`` slices, each holding a ball: images vXX_sYY.png, masks of the same names."""
    rng = np.random.default_rng(seed)
    ids = []
    for split, first in (("train", 0), ("test", volumes)):
        n = volumes if split == "train" else 1
        (root / split / "images").mkdir(parents=True, exist_ok=True)
        (root / split / "masks").mkdir(parents=True, exist_ok=True)
        for v in range(first, first + n):
            centre = rng.uniform(10, size - 10, 3) * [slices / size, 1, 1]
            radius = rng.uniform(5, 9)
            z, y, x = np.ogrid[:slices, :size, :size]
            ball = ((z - centre[0]) * 2) ** 2 + (y - centre[1]) ** 2 + (x - centre[2]) ** 2 < radius ** 2
            for i in range(slices):
                image_id = f"v{v:02d}_s{i:02d}"
                noise = rng.normal(0, 25, (size, size))
                pixels = np.clip(60 + 120 * ball[i] + noise, 0, 255).astype(np.uint8)
                cv2.imwrite(str(root / split / "images" / f"{image_id}.png"), pixels)
                cv2.imwrite(str(root / split / "masks" / f"{image_id}.png"), ball[i].astype(np.uint8) * 255)
                if split == "train":
                    ids.append(image_id)
                else:
                    with (root / "sample_submission.csv").open("a") as f:
                        f.write(("id,rle_mask\n" if f.tell() == 0 else "") + f"{image_id},\n")
    return ids


@pytest.fixture(scope="module")
def stack_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("stacks")
    write_stacks(root, volumes=4, slices=8)
    return root


def _stack_config(tmp_path, root, *overrides):
    return _config(tmp_path, root, "data.train_masks=train/masks", "data.train_csv=null",
                   f"data.slices={{pattern: '{STACK_PATTERN}'}}", "data.context=1", "data.normalize=image",
                   "folds.n_splits=2", *overrides)


def test_a_25d_image_is_its_slice_and_the_neighbours_as_channels(tmp_path, stack_root):
    cfg = _stack_config(tmp_path, stack_root, "data.context_stride=2")
    comp = Competition(cfg.data)
    assert cfg.data.input_channels == 3
    flat = Competition(_stack_config(tmp_path, stack_root, "data.context=0").data)
    image = comp.read_image("v01_s03")
    expected = np.concatenate([flat.read_image(f"v01_s0{i}") for i in (1, 3, 5)], axis=2)
    assert image.shape == (32, 32, 3) and np.array_equal(image, expected)
    assert np.array_equal(comp.read_image("v01_s00")[..., 0], flat.read_image("v01_s02")[..., 0])  # mirrored
    assert comp.read_image("v04_s07", "test").shape == (32, 32, 3)  # test volumes stack alike
    assert comp.groups(["v00_s01", "v03_s05"]) == ["00", "03"]


def test_volumes_never_span_two_folds_and_blocks_are_contiguous(tmp_path, stack_root):
    from segkit.stages.folds import build_folds

    cfg = _stack_config(tmp_path, stack_root)
    grouped = build_folds(Competition(cfg.data), cfg)
    assert grouped.groupby("group")["fold"].nunique().max() == 1
    blocks = build_folds(Competition(cfg.data), _stack_config(tmp_path, stack_root, "folds.split=blocks"))
    for volume, rows in blocks.groupby("group"):
        order = rows.sort_values("id")["fold"].tolist()
        assert order == [0] * 4 + [1] * 4, volume  # slices 0-3 fold 0, 4-7 fold 1: each volume cut in two runs
    held = Competition(_stack_config(tmp_path, stack_root, "data.holdout_fraction=0.25").data)
    assert {i[:3] for i in held.holdout_ids} == {held.holdout_ids[0][:3]} and len(held.holdout_ids) == 8


def test_invert_masks_takes_black_as_the_foreground(tmp_path, stack_root):
    plain = Competition(_stack_config(tmp_path, stack_root).data).read_mask("v00_s04")
    inverted = Competition(_stack_config(tmp_path, stack_root, "data.invert_masks=true").data).read_mask("v00_s04")
    assert np.array_equal(inverted, 1 - plain)


def test_a_25d_competition_runs_end_to_end(tmp_path, stack_root, capsys, one_torch_thread):
    from segkit.cli import main

    args = ["--config", str(CONFIGS / "demo.yaml"), f"data.root={stack_root}", f"paths.runs={tmp_path / 'runs'}",
            f"paths.folds={tmp_path / 'folds'}", f"paths.submissions={tmp_path / 'subs'}", TINY, "device=cpu",
            "data.train_masks=train/masks", "data.train_csv=null", f"data.slices={{pattern: '{STACK_PATTERN}'}}",
            "data.context=1", "data.normalize=image", "folds.n_splits=2", "folds.split=blocks", "train.epochs=2",
            "train.batch_size=4", "train.progress=false", "train.keep=[best]", "predict.tta=hflip",
            "ensemble.methods=[mean]", "tune.morph_radii=[1]"]
    assert main(["run", *args]) == 0
    out = capsys.readouterr().out
    assert "CV dice" in out
    sub = pd.read_csv(tmp_path / "subs" / "demo.csv", keep_default_na=False)
    assert sub["id"].tolist() == [f"v04_s{i:02d}" for i in range(8)]
    import torch

    from segkit.models import checkpoint
    _, meta = checkpoint.load_model(Path(tmp_path / "runs" / "demo" / "tiny" / "fold0" / "best.pt"),
                                    torch.device("cpu"))
    assert meta["channels"] == 3
