"""The ablation (``segkit ablate``, bench/quality.py): its extra runs, its stores and its table."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import CONFIGS

from segkit import ablate as ablation
from segkit.artifacts.probs import ProbWriter
from segkit.errors import ConfigError, SegkitError
from segkit.oof import MeanStore, StoreUnion

TINY = ("{name: %s, arch: %s, encoder: tu-resnet10t, encoder_weights: %s, "
        "params: {encoder_depth: 3, decoder_channels: [16, 8, 4]}}")


def _cfg(demo_cfg, *extra):
    models = ", ".join([TINY % ("unet", "Unet", "null"), TINY % ("fpn", "Unet", "null")])
    return demo_cfg(f"models=[{models}]", "device=cpu", "train.epochs=1", "train.max_steps_per_epoch=1",
                    "train.batch_size=4", "train.progress=false", "train.keep=[best]", "predict.tta=hflip",
                    "predict.snapshots=false", "predict.repredict_oof=true", "ensemble.methods=[mean]",
                    "tune.morph_radii=[1]", *extra)


def test_variants_strip_weights_and_loss_and_live_under_quality(demo_cfg, tmp_path):
    cfg = demo_cfg("models.0.encoder_weights=/no/such.pth", "models.0.train={loss: {lovasz: 1}}",
                   "train.loss_params={lovasz: {per_image: true}}",
                   "train.loss_stages=[{until_epoch: 2, terms: {dice: 1}}, {terms: {lovasz: 1}}]")
    runs = ablation.variants(cfg)
    base, loss = runs["baseline"], runs["loss"]
    assert base.models[0].encoder_weights is None and loss.models[0].encoder_weights is None
    assert cfg.models[0].encoder_weights == "/no/such.pth"  # the recipe itself is untouched
    assert base.train_for(base.models[0]).loss == {"bce": 1.0}
    assert base.train_for(base.models[0]).loss_stages == []
    assert loss.train_for(loss.models[0]).loss == {"lovasz": 1}
    assert len(loss.train.loss_stages) == 2
    assert base.run_dir == cfg.run_dir / "quality" / "baseline"
    assert base.folds_file == cfg.folds_file  # same folds as the recipe


def _store(folder, ids, values):
    writer = ProbWriter(folder, ["object"])
    for image_id, v in zip(ids, values):
        writer.write(image_id, np.full((1, 2, 2), v, np.float32))
    return writer.finish(ids)


def test_loss_row_names_the_stages_and_the_loss_options(demo_cfg):
    cfg = demo_cfg("train.loss_params={lovasz: {per_image: true, symmetric: true, hinge: relu}, focal: {}}",
                   "train.loss_stages=[{until_epoch: 4, terms: {bce: 1, dice: 1}}, {terms: {lovasz: 1}}]")
    assert ablation._describe_loss(cfg) == ("bce+dice to epoch 4, then "
                                            "lovasz (per_image, symmetric, hinge=relu)")
    plain = demo_cfg("train.loss={focal: 1, dice: 1}", "train.loss_params={focal: {gamma: 2}}")
    assert ablation._describe_loss(plain) == "focal (gamma=2)+dice"


def test_stores_merge_folds_and_mean_rounds_like_a_store(tmp_path):
    _store(tmp_path / "a", ["x"], [0.2])
    _store(tmp_path / "b", ["y"], [0.9])
    merged = StoreUnion([tmp_path / "a", tmp_path / "b"], ["y", "x"])
    assert merged.ids == ["y", "x"] and merged["x"][0, 0, 0] == round(0.2 * 255)
    other = StoreUnion([tmp_path / "b", tmp_path / "a"], ["y", "x"])
    mean = MeanStore([merged, other])
    assert mean["y"][0, 0, 0] == round(0.9 * 255)
    with pytest.raises(SegkitError, match="no probabilities for 1 image"):
        StoreUnion([tmp_path / "a"], ["x", "z"])


def test_markdown_marks_each_trick_by_its_delta():
    rows = [ablation.Row("baseline", "b", {"tgs": 0.70}), ablation.Row("+ loss", "l", {"tgs": 0.75}),
            ablation.Row("+ TTA", "t", {"tgs": 0.7495}), ablation.Row("+ ensemble", "", note="not in this recipe"),
            ablation.Row("+ morphology", "m", {"tgs": 0.74}), ablation.Row("segkit run", "r", {"tgs": 0.74})]
    text = ablation.markdown(rows, "tgs").splitlines()
    assert "| +0.0500 | helps |" in text[3] and "no change" in text[4] and "not in this recipe" in text[5]
    assert "| -0.0095 | hurts |" in text[6] and "helps" not in text[7] and "hurts" not in text[7]


def test_ablation_needs_tta_oof(demo_cfg):
    with pytest.raises(ConfigError, match="predict.repredict_oof"):
        ablation.run(demo_cfg())


def test_ablation_end_to_end_on_one_fold(demo_cfg, one_torch_thread):
    cfg = _cfg(demo_cfg)
    with pytest.raises(ConfigError, match="--folds"):
        ablation.run(cfg, folds=[7], train_only=True)
    table = ablation.run(cfg, folds=[1], metrics=["iou"])
    names = [r.name for r in table]
    assert names == ["baseline", "+ loss", "+ pretrained encoder", "+ weight averaging", "+ tiles", "+ TTA",
                     "+ ensemble", "+ threshold / min area", "+ morphology", "+ pseudo-labels", "segkit run"]
    assert all(table[i].note.startswith("not in this recipe") and not table[i].scores for i in (3, 4))
    for r in table[:3] + table[5:-2]:
        assert set(r.scores) == {"dice", "iou"} and all(0 <= v <= 1 for v in r.scores.values()), r
    assert table[-2].note.startswith("not in this recipe") and not table[-2].scores
    # Only fold 1 of the extra runs was trained, and every row is scored on fold 1's images.
    assert (cfg.run_dir / "quality" / "baseline" / "unet" / "fold1" / "best.pt").exists()
    assert not (cfg.run_dir / "quality" / "baseline" / "unet" / "fold0").exists()
    saved = json.loads((cfg.run_dir / "quality" / "quality.json").read_text())
    assert saved["folds"] == [1] and saved["n_images"] == 8 and len(saved["rows"]) == len(table)
    assert (cfg.run_dir / "quality" / "quality.md").read_text().count("\n") == len(table) + 2
    # The tuned rows are nested (each image scored with what the search chose on the other folds), with the
    # in-sample score beside them; the untuned rows have none.
    assert all(r.in_sample is not None and 0 <= r.in_sample <= 1 for r in table[7:9] + table[-1:])
    assert all(r.in_sample is None for r in table[:7])
    assert "dice in-sample" in (cfg.run_dir / "quality" / "quality.md").read_text()
    # Without the variants the recipe's own rows are scored again from the finished run, and agree.
    again = ablation.run(cfg, folds=[1], metrics=["iou"], with_variants=False)
    assert [r.note.startswith("not trained") for r in again[:2]] == [True, True]
    assert [r.scores for r in again[2:]] == [r.scores for r in table[2:]]


def test_tiles_row_re_predicts_the_chosen_fold_in_tiles_without_tta(demo_cfg, one_torch_thread):
    from segkit.artifacts.probs import ProbStore

    # 32 px images, a network of stride 8 padded to 16, tiles of 16: four tiles an image
    cfg = _cfg(demo_cfg, "train.pad_to=16", "predict.tile_size=16", "predict.tile_blend=linear")
    table = {r.name: r for r in ablation.run(cfg, folds=[1], with_variants=False)}
    assert table["+ tiles"].what == "predict.tile_size: 16 (linear, overlap 0.5)"
    store = ProbStore(cfg.run_dir / "quality" / "tiles" / "unet")
    assert sorted(store.ids) == sorted(ablation.fold_ids(cfg, [1])[0])
    assert json.loads((store.folder / "fold1.stamp.json").read_text())["inputs"]["tta"] == "none"
    # tiles without TTA differ from the whole-image training OOF and from the TTA'd tiles
    tiles, plain = table["+ tiles"].scores["dice"], table["+ pretrained encoder"].scores["dice"]
    assert 0 <= tiles <= 1 and tiles != plain and tiles != table["+ TTA"].scores["dice"]


def test_weight_averaging_and_multi_scale_rows_score_what_each_adds_on_the_same_checkpoints(demo_cfg,
                                                                                             one_torch_thread):
    from segkit.artifacts.probs import ProbStore

    cfg = _cfg(demo_cfg, "train.epochs=2", "train.average={method: swa, window: 1.0}", "predict.tta_scales=[1, 1.5]",
               "models=[" + TINY % ("unet", "Unet", "null") + "]")
    table = {r.name: r for r in ablation.run(cfg, folds=[1], with_variants=False)}
    names = list(table)
    assert names.index("+ pretrained encoder") + 1 == names.index("+ weight averaging")
    assert names.index("+ TTA") + 1 == names.index("+ multi-scale TTA")
    assert table["+ weight averaging"].what == "train.average: swa of the last 1 of the epochs"
    assert table["+ multi-scale TTA"].what == "predict.tta_scales: [1.0, 1.5]"
    single = ProbStore(cfg.run_dir / "quality" / "single_epoch" / "unet")
    one_scale = ProbStore(cfg.run_dir / "quality" / "one_scale" / "unet")
    assert sorted(single.ids) == sorted(one_scale.ids) == sorted(ablation.fold_ids(cfg, [1])[0])
    stamp = json.loads((single.folder / "fold1.stamp.json").read_text())["inputs"]
    assert stamp["tta"] == "none" and "best_epoch.pt" in json.dumps(stamp)
    # each row scores its own store: the best single epoch is not the average, one scale is not two
    assert table["+ pretrained encoder"].scores != table["+ weight averaging"].scores
    assert table["+ TTA"].scores != table["+ multi-scale TTA"].scores


def test_pseudo_row_scores_the_round_models(demo_cfg, one_torch_thread):
    cfg = _cfg(demo_cfg, "pseudo.rounds=1", "pseudo.confident_share=0", "models.1.encoder_weights=null")
    table = {r.name: r for r in ablation.run(cfg, folds=[0])}
    assert (cfg.run_dir / "unet_pl1" / "oof_tta").is_dir()
    assert table["+ pseudo-labels"].what.startswith("1 round(s)")
    assert 0 <= table["+ pseudo-labels"].scores["dice"] <= 1
    # The pipeline's own tuned ensemble after the round is the last line.
    assert set(table["segkit run"].scores) == {"dice"}


def test_a_25d_recipe_ablates_on_single_slices_and_adds_the_context_as_a_row(tmp_path):
    from segkit.config import load_config

    cfg = load_config(CONFIGS / "isbi2012_membrane.yaml", [f"paths.runs={tmp_path}"])
    runs = ablation.variants(cfg)
    assert set(runs) == {"baseline", "loss", "slices"}
    assert all(v.data.context == 0 and v.data.input_channels == 1 for v in runs.values())
    slices = runs["slices"]
    assert slices.models[0].encoder_weights == cfg.models[0].encoder_weights  # the recipe's model, one slice
    assert slices.train.loss == cfg.train.loss and runs["baseline"].train.loss == {"bce": 1.0}
    assert slices.layout.run_dir != cfg.layout.run_dir
    flat = load_config(CONFIGS / "tgs_salt.yaml", [f"paths.runs={tmp_path}"])
    assert set(ablation.variants(flat)) == {"baseline", "loss"}
