"""The working resolution (data.resize): sizes, the resizing of images, masks and probabilities, the config's
refusals, and a run whose networks see every image at another size while every store, score and RLE stays at the
native size."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import CONFIGS

from segkit.config import load_config
from segkit.data import Competition, SegDataset
from segkit.data.resize import resize_image, resize_mask, to_native, working_size
from segkit.errors import ConfigError

TINY = ("models=[{name: tiny, arch: Unet, encoder: tu-resnet10t, params: {encoder_depth: 3, decoder_channels: "
        "[16, 8, 4]}}]")


def spec(size=None, scale=None, longest=None):
    return SimpleNamespace(size=size, scale=scale, longest=longest)


def test_working_sizes():
    assert working_size(101, 101, None) == (101, 101)
    assert working_size(101, 101, spec(size=(128, 96))) == (128, 96)
    assert working_size(100, 60, spec(scale=2.5)) == (250, 150)
    assert working_size(1072, 1920, spec(longest=640)) == (357, 640)  # aspect kept


def test_images_masks_and_probabilities_resize_both_ways():
    rng = np.random.default_rng(0)
    image = rng.random((20, 30, 5)).astype(np.float32)
    assert resize_image(image, (10, 15)).shape == (10, 15, 5) and resize_image(image[..., :1], (40, 60)).shape == \
        (40, 60, 1)
    assert np.allclose(resize_image(np.full((20, 30, 3), 0.25, np.float32), (7, 9)), 0.25)
    mask = np.zeros((20, 30, 2), np.uint8)
    mask[5:15, 10:20, 1] = 1
    down = resize_mask(mask, (10, 15))
    assert down.shape == (10, 15, 2) and set(np.unique(down)) <= {0, 1} and down[..., 1].sum() == 25
    assert np.array_equal(resize_mask(resize_mask(mask, (40, 60)), (20, 30)), mask)  # x2 and back: exact
    probs = torch.rand(2, 10, 15)
    back = to_native(probs, (20, 30))
    assert back.shape == (2, 20, 30) and to_native(probs, (10, 15)) is probs
    assert float(back.min()) >= float(probs.min()) - 1e-6 and float(back.max()) <= float(probs.max()) + 1e-6


def test_the_config_takes_one_way_and_no_volumes(demo_root):
    base = ["--config", str(CONFIGS / "demo.yaml"), f"data.root={demo_root}"]
    assert load_config(base[1], base[2:] + ["data.resize={longest: 64}"]).data.resize.longest == 64
    with pytest.raises(ConfigError, match="give one of size, scale or longest"):
        load_config(base[1], base[2:] + ["data.resize={scale: 2, longest: 64}"])
    with pytest.raises(ConfigError, match="resize: volumes keep their voxel grid"):
        load_config(base[1], base[2:] + ["data.resize={scale: 2}", "data.volumes={images: x}", "data.train_csv=null"])


def test_items_are_at_the_working_size_with_their_native_size_and_mask(demo_root):
    cfg = load_config(str(CONFIGS / "demo.yaml"), [f"data.root={demo_root}", "data.resize={scale: 1.5}"])
    comp = Competition(cfg.data)
    image_id = comp.train_ids[0]
    item = SegDataset(comp, [image_id], pad_to=8, native_mask=True)[0]
    assert item["size"].tolist() == [48, 48] and item["native"].tolist() == [32, 32]
    assert item["image"].shape == (1, 48, 48) and item["mask"].shape == (1, 48, 48)
    assert np.array_equal(item["native_mask"][0].numpy(), comp.read_mask(image_id)[0].astype(np.float32))


@pytest.mark.parametrize("resize", ["{longest: 48}"])
def test_a_run_at_a_working_resolution_stores_and_submits_at_the_native_size(demo_root, tmp_path, resize,
                                                                             one_torch_thread, capsys):
    from segkit.artifacts.probs import ProbStore
    from segkit.cli import main
    from segkit.submission.validate import validate_submission

    args = ["--config", str(CONFIGS / "demo.yaml"), f"data.root={demo_root}", f"paths.runs={tmp_path / 'runs'}",
            f"paths.folds={tmp_path / 'folds'}", f"paths.submissions={tmp_path / 'subs'}", TINY, "device=cpu",
            f"data.resize={resize}", "folds.n_splits=2", "train.epochs=2", "train.batch_size=4", "train.pad_to=8",
            "train.progress=false", "train.keep=[best]", "predict.tta=hflip", "ensemble.methods=[mean]",
            "tune.morph_radii=[1]"]
    assert main(["run", *args]) == 0
    cfg = load_config(args[1], args[2:])
    comp = Competition(cfg.data)
    oof = ProbStore(cfg.layout.fold("tiny", 0).oof)
    test = ProbStore(cfg.layout.model("tiny").test)
    for store, split in ((oof, "train"), (test, "test")):
        image_id = store.ids[0]
        assert store[image_id].shape == (1, *comp.image_size(image_id, split))  # native: 32 x 32
    report = validate_submission(cfg.layout.submission, demo_root / "sample_submission.csv", shapes=(32, 32))
    assert report.ok, report.summary()
