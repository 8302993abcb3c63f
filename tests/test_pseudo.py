"""Pseudo-labelling: the confident-image rule, the labels written, that they never reach a validation fold, and
that fold k's labels never depend on fold k's own truth."""

import numpy as np
import pandas as pd
import pytest
import torch

from segkit.artifacts.probs import ProbStore, ProbWriter, quantize
from segkit.data import Competition
from segkit.errors import DataError
from segkit.stages import folds, pseudo
from segkit.stages.train import data as train_data


@pytest.fixture
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny convolutions: one thread beats two on a shared 2-core box
    yield
    torch.set_num_threads(before)


def q(values):
    return quantize(np.asarray(values, dtype=np.float32).reshape(1, 1, -1))


def test_confident_share_on_hand_cases():
    assert pseudo.confident_share(q([0.0, 0.1, 0.9, 1.0]), 0.2, 0.8) == 1.0
    assert pseudo.confident_share(q([0.0, 0.5, 0.5, 1.0]), 0.2, 0.8) == 0.5
    assert pseudo.confident_share(q([0.3, 0.7]), 0.2, 0.8) == 0.0
    assert pseudo.confident_share(q([0.3, 0.7]), 0.4, 0.6) == 1.0  # the band is the config's
    assert pseudo.binarize(q([0.49, 0.5, 0.9]), 0.5).tolist() == [[[0, 255, 255]]]
    # multiclass: the most probable of background and the K classes, never two labels on one pixel
    two = quantize(np.array([[[0.45, 0.1, 0.2]], [[0.40, 0.2, 0.5]]], np.float32))
    assert pseudo.binarize(two, 0.3, "multiclass").tolist() == [[[255, 0, 0]], [[0, 0, 255]]]


def _fold_test_stores(cfg, comp, make):
    """Every model's per-fold test stores (what predict writes when a pseudo round follows), all alike."""
    if not cfg.layout.folds_file.exists():
        folds.run(cfg)
    for m in cfg.models:
        for k in folds.fold_numbers(folds.load_folds(cfg, comp)):
            w = ProbWriter(cfg.layout.model(m.name).test_fold(k), cfg.data.classes)
            for n, image_id in enumerate(comp.test_ids):
                h, wd = comp.image_size(image_id, "test")
                w.write(image_id, make(n, h, wd))
            w.finish(comp.test_ids)


def test_selection_rule_writes_only_confident_images(demo_cfg):
    cfg = demo_cfg()
    comp = Competition(cfg.data, seed=cfg.seed)

    def make(n, h, w):
        p = np.zeros((1, h, w), np.float32)
        p[:, : h // 2] = 0.95  # confident: half foreground, half background
        uncertain = {0: 0, 1: int(0.02 * h * w), 2: int(0.04 * h * w), 3: h * w}.get(n, 0)
        p.reshape(-1)[:uncertain] = 0.5  # image 1: 98 % confident, image 2: 96 %, image 3: nothing confident
        return p

    _fold_test_stores(cfg, comp, make)
    out = pseudo.select(cfg)
    assert out == cfg.run_dir / "pseudo" / "round1"
    table = pd.read_csv(out / "selection.csv", dtype={"id": str})
    assert sorted(table["fold"].unique()) == [0, 1, 2]  # one selection per fold
    table = table[table["fold"] == 0]
    chosen = set(table.loc[table["selected"], "id"])
    ids = comp.test_ids
    assert ids[0] in chosen and ids[1] in chosen and ids[2] not in chosen and ids[3] not in chosen
    store = ProbStore(cfg.layout.pseudo(1).labels(0))
    assert set(store.ids) == chosen
    mask = store[ids[0]]
    h = mask.shape[1]
    assert set(np.unique(mask)) == {0, 255} and (mask[:, : h // 2] == 255).all() and (mask[:, h // 2:] == 0).all()
    # max_images keeps the most confident
    capped = cfg.model_copy(update={"pseudo": cfg.pseudo.model_copy(update={"max_images": 1})})  # a new selection
    pseudo.select(capped)
    top = ProbStore(cfg.layout.pseudo(1).labels(2))
    assert len(top.ids) == 1 and top.ids[0] != ids[1]


def test_training_hook_mixes_labels_and_never_leaks_into_validation(demo_cfg):
    from segkit.compute.distributed import World
    from segkit.data.folds import fold_ids
    from segkit.stages.train.data import TrainData

    cfg = demo_cfg("pseudo.batch_share=0.25", "train.batch_size=8")
    folds.run(cfg)
    comp = Competition(cfg.data, seed=cfg.seed)
    _fold_test_stores(cfg, comp, lambda n, h, w: np.full((1, h, w), 0.99 if n % 2 else 0.01, np.float32))
    pseudo.select(cfg)
    assert train_data.pseudo_train_data(cfg, comp, 0) is None  # round 0 trains without them
    r1 = cfg.model_copy(update={"pseudo": cfg.pseudo.model_copy(update={"round": 1})})
    extra = train_data.pseudo_train_data(r1, comp, 0)
    assert sorted(extra.ids) == sorted(comp.test_ids) and extra.share == 0.25 and extra.split == "test"
    mask = extra.mask_reader(comp.test_ids[1])
    assert mask.dtype == np.uint8 and mask.max() == 1
    frame = folds.load_folds(cfg, comp)
    assert not set(extra.ids) & set(frame["id"])  # no pseudo image has a fold
    for k in sorted(frame["fold"].unique()):
        train_ids, val_ids = fold_ids(frame, int(k))
        assert not set(val_ids) & set(extra.ids)
        data = TrainData(comp, cfg.train, train_ids, seed=0, world=World(), extra=extra)
        batch = next(iter(data.plan))
        pseudo_rows = [i for i in batch if i >= len(train_ids)]
        assert len(pseudo_rows) == 2  # 25 % of a batch of 8
        item = data.dataset[pseudo_rows[0]]
        assert item["id"] in extra.ids and "mask" in item
    ds = train_data.pseudo_dataset(r1, comp, 1)
    assert len(ds) == len(comp.test_ids) and ds.split == "test"


def test_labels_selected_again_alike_are_the_same_labels_to_training(demo_cfg, capsys):
    """A round's selection is made again when a test store it read was rewritten; if the labels come out the same,
    the folds trained on them are still up to date (their fingerprint is the labels' content, not a file time)."""
    import os

    cfg = demo_cfg("pseudo.confident_share=0")
    comp = Competition(cfg.data, seed=cfg.seed)
    _fold_test_stores(cfg, comp, lambda n, h, w: np.full((1, h, w), 0.9 if n % 2 else 0.1, np.float32))
    pseudo.select(cfg)
    r1 = pseudo.round_config(cfg, 1)
    first = train_data.pseudo_train_data(r1, comp, 0).identity
    marker = cfg.layout.model(cfg.models[0].name).test_fold(0) / "manifest.json"
    os.utime(marker, ns=(marker.stat().st_atime_ns, marker.stat().st_mtime_ns + 10**9))  # the ensemble redone
    capsys.readouterr()
    pseudo.select(cfg)
    assert "keeping it" not in capsys.readouterr().out  # the selection was made again ...
    assert train_data.pseudo_train_data(r1, comp, 0).identity == first  # ... to the same labels
    assert isinstance(first, str) and len(first) == 40


def test_a_pseudo_label_on_a_train_id_is_refused(demo_cfg):
    cfg = demo_cfg("pseudo.round=1")
    comp = Competition(cfg.data, seed=cfg.seed)
    leak = comp.train_ids[0]
    w = ProbWriter(cfg.layout.pseudo(1).labels(0), cfg.data.classes)
    w.write(leak, comp.read_mask(leak).astype(np.float32))
    w.finish([leak])
    with pytest.raises(DataError, match="is a train id"):
        train_data.pseudo_train_data(cfg, comp, 0)


def test_missing_round_labels_are_a_clear_error(demo_cfg):
    cfg = demo_cfg("pseudo.round=2")
    with pytest.raises(DataError, match="round2.*fold 1.*segkit pseudo"):
        train_data.pseudo_train_data(cfg, Competition(cfg.data, seed=cfg.seed), 1)


def test_round_config_names_new_models():
    from segkit.config.schema import Config

    cfg = Config(models=[{"name": "unet"}, {"name": "fpn"}])
    r2 = pseudo.round_config(pseudo.round_config(cfg, 1), 2)
    assert [m.name for m in r2.models] == ["unet_pl2", "fpn_pl2"] and r2.pseudo.round == 2
    assert [m.name for m in cfg.models] == ["unet", "fpn"] and cfg.pseudo.round == 0


def test_a_pseudo_round_trains_validates_on_train_folds_only(demo_cfg, one_thread):
    """One real fold of round 1: the OOF it writes holds exactly that fold's train ids, no pseudo id."""
    from segkit.stages.train import train_fold

    cfg = demo_cfg("models=[{name: tiny, arch: Unet, encoder: tu-resnet10t, "
                   "params: {encoder_depth: 3, decoder_channels: [16, 8, 4]}}]", "device=cpu",
                   "train.epochs=1", "train.max_steps_per_epoch=1", "train.batch_size=4", "train.progress=false",
                   "pseudo.batch_share=0.5")
    folds.run(cfg)
    comp = Competition(cfg.data, seed=cfg.seed)
    _fold_test_stores(cfg, comp, lambda n, h, w: np.full((1, h, w), 0.99, np.float32))
    pseudo.select(cfg)
    r1 = pseudo.round_config(cfg, 1)
    extra = train_data.pseudo_train_data(r1, comp, 0)
    train_fold(r1, r1.models[0], 0, extra=extra)
    frame = folds.load_folds(cfg, comp)
    oof = ProbStore(r1.run_dir / "tiny_pl1" / "fold0" / "oof")
    assert sorted(oof.ids) == sorted(frame.loc[frame["fold"] == 0, "id"])
    assert not set(oof.ids) & set(comp.test_ids)


TINY = ("models=[{name: tiny, arch: Unet, encoder: tu-resnet10t, params: {encoder_depth: 3, "
        "decoder_channels: [16, 8, 4]}}]", "device=cpu", "train.epochs=1", "train.max_steps_per_epoch=2",
        "train.batch_size=4", "train.progress=false", "train.keep=[best]", "predict.tta=none",
        "predict.repredict_oof=false", "pseudo.rounds=1", "pseudo.confident_share=0")


def _round_labels(cfg) -> dict[int, dict]:
    """Train every fold of round 0, predict the test images fold by fold, select round 1: fold -> {id: labels}."""
    from segkit.stages import predict as predict_stage
    from segkit.stages import train as train_stage
    assert train_stage.run(cfg) == 0 and predict_stage.run(cfg) == 0
    pseudo.select(cfg, 1)
    comp = Competition(cfg.data, seed=cfg.seed)
    out = {}
    for k in folds.fold_numbers(folds.load_folds(cfg, comp)):
        store = ProbStore(cfg.layout.pseudo(1).labels(k))
        out[k] = {i: np.array(store[i]) for i in store.ids}
    return out


def test_fold_k_labels_do_not_depend_on_fold_k_truth(demo_root, demo_cfg, tmp_path, one_thread):
    """The leak test: give fold 0's (validation) images other masks and train everything again. The labels fold
    0's round-1 model trains on are unchanged, bit for bit; those of fold 1, whose labels come from a model that
    trained on fold 0's images, change (so the change is one the models do see)."""
    import shutil

    from segkit.data import rle
    cfg = demo_cfg(*TINY)
    folds.run(cfg)
    before = _round_labels(cfg)
    frame = folds.load_folds(cfg, Competition(cfg.data, seed=cfg.seed))
    fold0 = set(frame.loc[frame["fold"] == 0, "id"])
    other = tmp_path / "other_truth"
    shutil.copytree(demo_root, other)
    train = pd.read_csv(other / "train.csv", dtype=str, keep_default_na=False)
    full = rle.encode(np.ones((32, 32), np.uint8))
    train.loc[train["id"].isin(fold0), "rle_mask"] = full  # fold 0's truth: every pixel foreground
    train.to_csv(other / "train.csv", index=False)
    changed = demo_cfg(*TINY, f"data.root={other}", f"paths.runs={tmp_path / 'runs_other'}")
    assert changed.layout.folds_file == cfg.layout.folds_file  # the same folds, only fold 0's masks differ
    after = _round_labels(changed)
    assert before[0].keys() == after[0].keys()
    assert all(np.array_equal(before[0][i], after[0][i]) for i in before[0])
    assert any(not np.array_equal(before[1][i], after[1][i]) for i in before[1])


def test_labels_of_an_unfinished_selection_are_refused(demo_cfg):
    """A selection killed after some folds' stores were rewritten: training refuses every fold's labels until the
    selection is made again."""
    import json

    cfg = demo_cfg("pseudo.confident_share=0")
    comp = Competition(cfg.data, seed=cfg.seed)
    _fold_test_stores(cfg, comp, lambda n, h, w: np.full((1, h, w), 0.9, np.float32))
    pseudo.select(cfg)
    r1 = pseudo.round_config(cfg, 1)
    assert train_data.pseudo_train_data(r1, comp, 0) is not None
    stamp = cfg.layout.pseudo(1).stamp
    record = json.loads(stamp.read_text())
    stamp.write_text(json.dumps({**record, "done": False}))  # what unit.begin() leaves until the selection is done
    with pytest.raises(DataError, match="did not finish"):
        train_data.pseudo_train_data(r1, comp, 0)
    pseudo.select(cfg)
    assert train_data.pseudo_train_data(r1, comp, 0) is not None
