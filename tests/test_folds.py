import numpy as np
import pandas as pd
import pytest
from conftest import CONFIGS, SHARED

from segkit.data import Competition
from segkit.errors import DataError
from segkit.stages import folds


def test_coverage_strata_puts_empty_alone():
    cov = np.array([0, 0, 0.1, 0.2, 0.3, 0.9])
    strata = folds.coverage_strata(cov, bins=2)
    assert strata[:2].tolist() == [0, 0]
    assert set(strata[2:].tolist()) == {1, 2} and strata[5] == 2


def test_demo_folds_cover_every_id_once_and_are_deterministic(demo_cfg, capsys):
    cfg = demo_cfg()
    assert folds.run(cfg) == 0
    frame = pd.read_csv(cfg.folds_file, dtype={"id": str})
    comp = Competition(cfg.data)
    assert sorted(frame["id"]) == sorted(comp.train_ids)
    assert sorted(frame["fold"].unique()) == [0, 1, 2]
    assert "mean coverage %" in capsys.readouterr().out
    again = folds.build_folds(comp, cfg)
    assert again["fold"].tolist() == frame["fold"].tolist()
    # Empty images spread over the folds (stratified), not piled into one.
    empties = frame[frame["coverage"] == 0].groupby("fold").size()
    assert empties.max() - empties.min() <= 1


def test_existing_fold_file_is_kept_and_checked(demo_cfg):
    cfg = demo_cfg()
    folds.run(cfg)
    before = cfg.folds_file.read_text()
    folds.run(cfg)
    assert cfg.folds_file.read_text() == before
    frame = pd.read_csv(cfg.folds_file, dtype=str).iloc[1:]
    frame.to_csv(cfg.folds_file, index=False)
    with pytest.raises(DataError, match="does not match the train set: 1 train ids missing"):
        folds.run(cfg)


def test_fold_count_change_needs_a_new_file(demo_cfg):
    folds.run(demo_cfg())
    with pytest.raises(DataError, match="has 3 folds but folds.n_splits is 4"):
        folds.run(demo_cfg("folds.n_splits=4"))


def test_grouped_folds_keep_groups_together(demo_cfg, demo_root, tmp_path):
    ids = Competition(demo_cfg().data).train_ids
    extra = pd.DataFrame({"id": ids, "patient": [f"p{i // 3}" for i in range(len(ids))]})
    extra.to_csv(demo_root / "patients.csv", index=False)
    cfg = demo_cfg("data.extra_csv=patients.csv", "data.group_column=patient")
    frame = folds.build_folds(Competition(cfg.data), cfg)
    assert (frame.groupby("group")["fold"].nunique() == 1).all()
    assert frame["fold"].nunique() == 3


def test_multiclass_folds_stratify_by_class_presence(demo_multiclass_root, tmp_path):
    from segkit.config import load_config

    cfg = load_config(CONFIGS / "demo.yaml", [f"data.root={demo_multiclass_root}", "data.mode=multiclass",
                                              "data.classes=[a, b]", "data.rle.id_class_sep=_",
                                              f"paths.folds={tmp_path}"])
    frame = folds.build_folds(Competition(cfg.data), cfg)
    assert set(frame["stratum"].str.len()) == {2}
    assert len(frame) == 18 and frame["fold"].between(0, 2).all()


def test_too_few_images_for_folds(demo_cfg):
    cfg = demo_cfg("folds.n_splits=50")
    with pytest.raises(DataError, match="folds.n_splits"):
        folds.build_folds(Competition(cfg.data), cfg)


@pytest.mark.skipif(not (SHARED / "tgs-salt" / "train.csv").exists(), reason="TGS data not present")
def test_tgs_folds_balanced_within_two_points(tmp_path):
    from segkit.config import load_config

    cfg = load_config(CONFIGS / "tgs_salt.yaml", [f"data.root={SHARED / 'tgs-salt'}", f"paths.folds={tmp_path}"])
    comp = Competition(cfg.data, seed=cfg.seed)
    table = folds.summary(folds.build_folds(comp, cfg))
    whole = table.iloc[-1]
    per_fold = table.iloc[:-1]
    assert len(per_fold) == 5
    assert (abs(per_fold["empty %"] - whole["empty %"]) <= 2).all()
    assert (abs(per_fold["mean coverage %"] - whole["mean coverage %"]) <= 2).all()
