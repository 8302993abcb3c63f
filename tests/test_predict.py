"""The predict stage on tiny random-init networks saved in the training code's checkpoint format."""

import json

import numpy as np
import pytest
import torch

from segkit.artifacts.probs import ProbStore, ProbWriter
from segkit.config.schema import ModelConfig
from segkit.data import Competition, SegDataset
from segkit.errors import ConfigError, DataError
from segkit.models import build_model, checkpoint
from segkit.stages import folds, predict

TINY = {"name": "tiny", "arch": "Unet", "encoder": "tu-resnet10t",
        "params": {"encoder_depth": 3, "decoder_channels": [16, 8, 4]}}
TINY_YAML = ("models=[{name: tiny, arch: Unet, encoder: tu-resnet10t, "
             "params: {encoder_depth: 3, decoder_channels: [16, 8, 4]}}]")


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny convolutions run fastest on one thread; on a shared 2-core box two threads are 5-25x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _save_fold(cfg, comp, frame, fold: int, seed: int, snapshots: int = 0):
    """A fold as training leaves it: best.pt (+ snapshots) of a random-init network and a complete oof/ store."""
    model_cfg = ModelConfig(**TINY)
    folder = cfg.run_dir / "tiny" / f"fold{fold}"
    for name, s in [("best.pt", seed)] + [(f"snapshot{c}.pt", seed + 100 * c) for c in range(1, snapshots + 1)]:
        torch.manual_seed(s)
        model = build_model(model_cfg, cfg.data.channels, cfg.data.mode, len(cfg.data.classes), pretrained=False)
        with torch.no_grad():  # a random head gives probabilities of 0.5 +- 0.01; spread them over (0, 1)
            for t in model.segmentation_head.parameters():
                t.mul_(30.0)
        payload = checkpoint.weights_payload(model.state_dict(), model_cfg.model_dump(mode="json"), cfg.data.mode,
                                             list(cfg.data.classes), cfg.data.channels, 32, epoch=1)
        checkpoint.save(folder / name, payload)
    ids = frame.loc[frame["fold"] == fold, "id"].tolist()
    w = ProbWriter(folder / "oof", cfg.data.classes)
    for i in ids:
        w.write(i, comp.read_mask(i).astype(np.float32))
    w.finish(ids)


@pytest.fixture
def trained(demo_cfg):
    def make(*overrides, snapshots=0):
        # float32 unless a test asks otherwise: these tests compare with a float32 forward at 1/255, and
        # `amp: auto` would pick bf16 on a CPU with native bf16 (see the bf16 test below)
        cfg = demo_cfg(TINY_YAML, "device=cpu", "predict.amp=none",
                       "predict.batch_size=4", *overrides)
        folds.run(cfg)
        comp = Competition(cfg.data, seed=cfg.seed)
        frame = folds.load_folds(cfg, comp)
        for k in sorted(frame["fold"].unique()):
            _save_fold(cfg, comp, frame, int(k), seed=10 + int(k), snapshots=snapshots)
        return cfg, comp, frame

    return make


def _plain(cfg, comp, ids, paths, split="test"):
    """Reference: a plain forward of each checkpoint, sigmoid, mean over checkpoints, cropped to size."""
    models = [checkpoint.load_model(p)[0] for p in paths]
    ds = SegDataset(comp, ids, split=split, augment=None, pad_to=32, with_mask=False)
    out = {}
    with torch.no_grad():
        for item in ds:
            x = item["image"][None]
            p = torch.stack([torch.sigmoid(m(x)) for m in models]).mean(0)[0]
            h, w = item["size"].tolist()
            out[item["id"]] = p[:, :h, :w].numpy()
    return out


def test_tta_none_equals_a_plain_forward_and_store_is_complete(trained):
    cfg, comp, frame = trained("predict.tta=none")
    assert predict.run(cfg) == 0
    store = ProbStore(cfg.run_dir / "tiny" / "test")
    assert store.ids == comp.test_ids and store.classes == list(cfg.data.classes)
    paths = [cfg.run_dir / "tiny" / f"fold{k}" / "best.pt" for k in range(3)]
    ref = _plain(cfg, comp, comp.test_ids, paths)
    for i in comp.test_ids:
        h, w = comp.image_size(i, "test")
        assert store[i].shape == (1, h, w)
        np.testing.assert_allclose(store.read_float(i), ref[i], atol=1 / 255 + 1e-6)


def test_d4_tta_changes_output_and_snapshots_weigh_within_their_fold(trained):
    cfg, comp, frame = trained("predict.tta=d4", snapshots=1)
    per_fold = {k: predict.fold_checkpoints(cfg, "tiny", k) for k in range(3)}
    assert [p.name for p in per_fold[0]] == ["best.pt", "snapshot1.pt"]
    paths = [c for k in range(3) for c in per_fold[k]]
    predict.run(cfg)
    store = ProbStore(cfg.run_dir / "tiny" / "test")
    ref = _plain(cfg, comp, comp.test_ids, paths)
    diffs = [np.abs(store.read_float(i) - ref[i]).max() for i in comp.test_ids]
    assert max(diffs) > 2 / 255  # a random network is not D4-equivariant: TTA must show
    # snapshots off: best.pt only
    assert [p.name for p in predict.fold_checkpoints(cfg.model_copy(update={
        "predict": cfg.predict.model_copy(update={"snapshots": False})}), "tiny", 0)] == ["best.pt"]


def test_fold_stores_come_from_the_same_pass_and_average_to_the_model_store(trained, capsys):
    """A finished experiment that adds a pseudo round: predict writes each fold's own test store (fold k's
    checkpoint alone) and leaves the model's store as it was, since that store is the mean of the fold stores,
    quantised fold by fold, with or without them."""
    from segkit.artifacts.probs import mean_uint8

    cfg, comp, frame = trained("predict.tta=none")
    assert predict.run(cfg) == 0
    folder = cfg.run_dir / "tiny" / "test"
    made = (folder / "manifest.json").stat().st_mtime_ns
    assert not (cfg.run_dir / "tiny" / "test_folds").exists()  # no round follows: no fold stores
    with_round = cfg.model_copy(update={"pseudo": cfg.pseudo.model_copy(update={"rounds": 1})})
    capsys.readouterr()
    assert predict.run(with_round) == 0
    assert "models[tiny] test" in capsys.readouterr().out  # kept, not predicted again
    assert (folder / "manifest.json").stat().st_mtime_ns == made
    parts = [ProbStore(cfg.layout.model("tiny").test_fold(k)) for k in range(3)]
    model = ProbStore(folder)
    for i in comp.test_ids:
        assert np.array_equal(model[i], mean_uint8([p[i] for p in parts]))
    for k in range(3):  # fold k's store is fold k's network alone
        alone = _plain(cfg, comp, comp.test_ids, [cfg.run_dir / "tiny" / f"fold{k}" / "best.pt"])
        assert all(np.abs(parts[k].read_float(i) - alone[i]).max() <= 0.5 / 255 + 1e-6 for i in comp.test_ids)
    capsys.readouterr()
    assert predict.run(with_round) == 0
    assert capsys.readouterr().out.count("up to date and complete; keeping it") == 4  # model + 3 fold stores


def test_resumes_after_losing_half_the_images(trained, capsys):
    cfg, comp, frame = trained("predict.tta=hflip")
    predict.run(cfg)
    folder = cfg.run_dir / "tiny" / "test"
    before = {i: np.array(ProbStore(folder)[i]) for i in comp.test_ids}
    (folder / "manifest.json").unlink()
    lost = comp.test_ids[::2]
    for i in lost:
        (folder / f"{i}.npy").unlink()
    capsys.readouterr()
    predict.run(cfg)
    assert f"{len(lost)} of {len(comp.test_ids)} test images to do" in capsys.readouterr().out
    after = ProbStore(folder)
    assert all(np.array_equal(after[i], before[i]) for i in comp.test_ids)
    predict.run(cfg)
    assert "complete; keeping it" in capsys.readouterr().out
    # another TTA is another source: the store is predicted afresh
    source = json.loads((folder / "stamp.json").read_text())["inputs"]
    assert source["tta"] == "hflip"
    predict.run(cfg.model_copy(update={"predict": cfg.predict.model_copy(update={"tta": "none"})}))
    assert json.loads((folder / "stamp.json").read_text())["inputs"]["tta"] == "none"


def test_repredicted_oof_uses_each_folds_own_checkpoint(trained):
    cfg, comp, frame = trained("predict.tta=none", "predict.repredict_oof=true")
    predict.run(cfg)
    store = ProbStore(cfg.run_dir / "tiny" / "oof_tta")
    assert sorted(store.ids) == sorted(frame["id"])
    for k in range(3):
        ids = frame.loc[frame["fold"] == k, "id"].tolist()[:2]
        ref = _plain(cfg, comp, ids, [cfg.run_dir / "tiny" / f"fold{k}" / "best.pt"], split="train")
        for i in ids:
            np.testing.assert_allclose(store.read_float(i), ref[i], atol=1 / 255 + 1e-6)


# 64 px: 9 tiles an image, more than a batch of 3, so one image at a time; 40 px: 4 tiles an image, so a batch of 8
# tiles two images together (segkit.inference.tiling.stack_groups)
@pytest.mark.parametrize("size,batch_size", [(64, 3), (40, 8)])
def test_tiled_prediction_for_images_larger_than_the_tile(demo_cfg, tmp_path, size, batch_size):
    from segkit.data.demo import write_competition
    from segkit.inference.tiling import predict_tiled

    root = write_competition(tmp_path / "big", n_train=6, n_test=5, size=size, seed=3)
    cfg = demo_cfg(f"data.root={root}", TINY_YAML, "device=cpu", "predict.amp=none", "predict.tta=none",
                   "predict.tile_size=32",
                   "predict.tile_overlap=0.5", f"predict.batch_size={batch_size}")
    folds.run(cfg)
    comp = Competition(cfg.data, seed=cfg.seed)
    frame = folds.load_folds(cfg, comp)
    for k in range(3):
        _save_fold(cfg, comp, frame, k, seed=20 + k)
    assert predict.run(cfg) == 0
    store = ProbStore(cfg.run_dir / "tiny" / "test")
    models = [checkpoint.load_model(cfg.run_dir / "tiny" / f"fold{k}" / "best.pt")[0] for k in range(3)]
    ds = SegDataset(comp, comp.test_ids, split="test", augment=None, pad_to=32, with_mask=False)
    plain = _plain(cfg, comp, comp.test_ids, [cfg.run_dir / "tiny" / f"fold{k}" / "best.pt" for k in range(3)])
    for item in ds:
        i = item["id"]
        assert store[i].shape == (1, size, size)
        with torch.no_grad():
            ref = predict_tiled(lambda b: torch.stack([torch.sigmoid(m(b)) for m in models]).mean(0),
                                item["image"][:, :size, :size], 32, overlap=0.5, blend="gaussian", batch_size=3)
        np.testing.assert_allclose(store.read_float(i), ref.numpy(), atol=1 / 255 + 1e-6)
        assert np.abs(store.read_float(i) - plain[i]).max() > 2 / 255  # tiles, not one whole-image pass
    with pytest.raises(ConfigError, match="tile_size"):
        predict.run(cfg.model_copy(update={"predict": cfg.predict.model_copy(update={"tile_size": 48})}))


def test_bf16_prediction_is_bf16_close_to_float32_and_auto_follows_the_cpu(trained, monkeypatch, tmp_path):
    """bf16 autocast runs on every CPU (in hardware or emulated), so both precisions are tested on either kind:
    bf16 must differ from float32 (it really ran) by no more than bf16's rounding, and `auto` must give the
    float32 store on a CPU without native bf16 and the bf16 store on one with it."""
    from segkit.compute import device
    stores = {}
    for amp in ("none", "bf16"):
        cfg, comp, frame = trained("predict.tta=none", f"predict.amp={amp}", f"paths.runs={tmp_path / amp}")
        predict.run(cfg)
        store = ProbStore(cfg.run_dir / "tiny" / "test")
        stores[amp] = {i: store.read_float(i) for i in comp.test_ids}
    diff = max(np.abs(stores["bf16"][i] - stores["none"][i]).max() for i in comp.test_ids)
    assert 1 / 255 < diff < 0.05  # seen: 0.010
    for native, like in ((False, "none"), (True, "bf16")):
        monkeypatch.setattr(device, "cpu_has_native_bf16", lambda native=native: native)
        cfg, comp, frame = trained("predict.tta=none", "predict.amp=auto", f"paths.runs={tmp_path / f'auto_{native}'}")
        predict.run(cfg)
        store = ProbStore(cfg.run_dir / "tiny" / "test")
        assert all(np.array_equal(store.read_float(i), stores[like][i]) for i in comp.test_ids), native


def test_unfinished_fold_is_an_error(trained):
    cfg, comp, frame = trained()
    (cfg.run_dir / "tiny" / "fold2" / "oof" / "manifest.json").unlink()
    with pytest.raises(DataError, match="fold 2 of model 'tiny' has not finished"):
        predict.run(cfg)
