"""Submissions: rows, ids and columns exactly as the sample (binary, compound per-class ids, id + class column),
the validator on malformed files (each problem with its row), never replacing a good file with a broken one, and
the offline scorer on a hand-computed TGS case."""

import json
import shutil

import pandas as pd
import pytest
from conftest import CONFIGS, SHARED
from test_tune import fake_ensemble

from segkit.artifacts.probs import ProbStore
from segkit.cli import main as cli
from segkit.data import rle
from segkit.errors import DataError
from segkit.postprocess.masks import params_list, postprocess

TGS = SHARED / "tgs-salt"


def write_tune(cfg, classes: dict) -> None:
    cfg.run_dir.mkdir(parents=True, exist_ok=True)
    (cfg.run_dir / "tune.json").write_text(json.dumps({"version": 1, "metric": cfg.metric, "cv": 0.75,
                                                       "cv_baseline": 0.7, "classes": classes}))


def read(path) -> pd.DataFrame:
    return pd.read_csv(path, dtype=str, keep_default_na=False)


# ------------------------------------------------------------------------------------------------------ submit


def test_binary_submission_matches_sample_and_tuned_masks(demo_cfg, demo_root, capsys):
    from segkit.stages import submit
    cfg = demo_cfg()
    fake_ensemble(cfg)
    params = {"threshold": 0.45, "min_area": 3, "morphology": [["closing", 1]]}
    write_tune(cfg, {"object": params})
    assert submit.run(cfg) == 0
    out = capsys.readouterr().out
    assert str(cfg.submission_file) in out and "CV 0.7500" in out
    sub, sample = read(cfg.submission_file), read(demo_root / "sample_submission.csv")
    assert list(sub.columns) == list(sample.columns) and list(sub["id"]) == list(sample["id"])
    store = ProbStore(cfg.run_dir / "ensemble" / "test")
    nonempty = 0
    for image_id, text in zip(sub["id"], sub["rle_mask"]):
        want = postprocess(store[image_id], params_list([params]))[0]
        assert (rle.decode(text, want.shape) == want).all()
        nonempty += bool(text)
    assert nonempty > 0
    assert cli(["validate-submission", str(cfg.submission_file), "--sample", str(demo_root / "sample_submission.csv"),
                "--images", str(demo_root / "test" / "images")]) == 0


def multiclass_cfg(root, tmp_path, *extra):
    from segkit.config import load_config

    return load_config(CONFIGS / "demo.yaml", [
        f"data.root={root}", f"paths.runs={tmp_path / 'runs'}", f"paths.submissions={tmp_path / 'subs'}",
        "data.mode=multiclass", "data.classes=[round,streak]", "data.rle.id_class_sep=_", *extra])


def test_compound_per_class_ids_in_sample_order(demo_multiclass_root, tmp_path):
    from segkit.stages import submit, tune
    cfg = multiclass_cfg(demo_multiclass_root, tmp_path, "tune.morph_radii=[1]", f"paths.folds={tmp_path}")
    fake_ensemble(cfg)
    assert tune.run(cfg) == 0  # exclusive classes: searched on argmax-restricted probabilities
    tuned = json.loads((cfg.run_dir / "tune.json").read_text())
    assert set(tuned["classes"]) == {"round", "streak"} and tuned["cv"] >= tuned["cv_baseline"] - 1e-12
    assert submit.run(cfg) == 0
    sub, sample = read(cfg.submission_file), read(demo_multiclass_root / "sample_submission.csv")
    assert list(sub["id"]) == list(sample["id"]) and sub["id"].iloc[1].endswith("_2")
    store = ProbStore(cfg.run_dir / "ensemble" / "test")
    masks = {}
    for row_id, text in zip(sub["id"], sub["rle_mask"]):
        image_id, cls = row_id.rsplit("_", 1)
        masks.setdefault(image_id, {})[cls] = rle.decode(text, store[image_id].shape[1:])
    for image_id, per in masks.items():
        assert (per["1"] & per["2"]).sum() == 0  # exclusive classes never share a pixel


def test_id_and_class_column_sample(demo_multiclass_root, tmp_path):
    """Severstal's layout: ImageId, ClassId, EncodedPixels — one row per image and class, ClassId kept verbatim."""
    from segkit.stages import submit
    root = tmp_path / "comp"
    shutil.copytree(demo_multiclass_root, root)
    for name in ("train.csv", "sample_submission.csv"):
        frame = read(root / name)
        parts = frame["id"].str.rsplit("_", n=1, expand=True)
        pd.DataFrame({"ImageId": parts[0] + ".png", "ClassId": parts[1], "EncodedPixels": frame["rle_mask"]}
                     ).to_csv(root / name, index=False)
    for split in ("train", "test"):  # ids with the extension, as Severstal's are
        for p in (root / split / "images").iterdir():
            p.rename(p.with_name(p.stem + ".png.png"))
    cfg = multiclass_cfg(root, tmp_path, "data.rle.id_class_sep=null", "data.rle.id_column=ImageId",
                         "data.rle.rle_column=EncodedPixels", "data.rle.class_column=ClassId")
    fake_ensemble(cfg)
    write_tune(cfg, {"round": {}, "streak": {}})
    assert submit.run(cfg) == 0
    sub, sample = read(cfg.submission_file), read(root / "sample_submission.csv")
    assert list(sub.columns) == ["ImageId", "ClassId", "EncodedPixels"]
    assert sub[["ImageId", "ClassId"]].equals(sample[["ImageId", "ClassId"]])
    assert sub["EncodedPixels"].str.len().sum() > 0


def test_broken_submission_never_replaces_a_good_one(demo_cfg, monkeypatch):
    from segkit.stages import submit
    cfg = demo_cfg()
    fake_ensemble(cfg)
    write_tune(cfg, {"object": {}})
    submit.run(cfg)
    good = cfg.submission_file.read_bytes()
    write_tune(cfg, {"object": {"threshold": 0.4}})  # a new tuning: the submission is made again ...
    from segkit.submission import build
    monkeypatch.setattr(build, "_encode", lambda mask, order, relative: "5 3 1 2")  # ... with unsorted runs
    with pytest.raises(DataError, match=r"invalid.*left as it was(.|\n)*row 2 .*sorted"):
        submit.run(cfg)
    assert cfg.submission_file.read_bytes() == good
    assert [p.name for p in cfg.submission_file.parent.iterdir()] == [cfg.submission_file.name]


def test_holdout_submission_scores_like_the_scorer(demo_cfg, capsys):
    from segkit.stages import submit
    cfg = demo_cfg("data.holdout_fraction=0.25")
    comp = fake_ensemble(cfg)
    write_tune(cfg, {"object": {"threshold": 0.55}})
    assert submit.run(cfg) == 0
    printed = capsys.readouterr().out
    assert list(read(cfg.submission_file)["id"]) == comp.holdout_ids
    holdout = float(printed.split("holdout dice ")[1].split()[0])
    truth = cfg.run_dir / "holdout_truth.csv"
    assert cli(["score", str(cfg.submission_file), "--truth", str(truth), "--metric", "dice", "--shape", "32x32"]) == 0
    scored = float(capsys.readouterr().out.split("dice: ")[1].split()[0])
    assert scored == pytest.approx(holdout, abs=1e-4)


# --------------------------------------------------------------------------------------------------- validator


@pytest.fixture
def sample(tmp_path):
    path = tmp_path / "sample.csv"
    pd.DataFrame({"id": list("abcdefg"), "rle_mask": "1 1"}).to_csv(path, index=False)
    return path


def write_sub(tmp_path, rows, columns=("id", "rle_mask")) -> str:
    path = tmp_path / "sub.csv"
    pd.DataFrame(rows, columns=list(columns)).to_csv(path, index=False)
    return str(path)


def test_validator_reports_each_problem_with_its_row(tmp_path, sample, capsys):
    sub = write_sub(tmp_path, [
        ("a", "1 3"),  # row 2: fine
        ("b", "1 2 3"),  # row 3: odd token count
        ("c", "5 2 1 2"),  # row 4: unsorted
        ("d", "1 4 3 2"),  # row 5: overlapping
        ("e", "15 5"),  # row 6: past the last pixel of 4x4
        ("e", "1 1"),  # row 7: duplicate
        ("zz", "1 1"),  # row 8: not in the sample
        ("g", "1 x"),  # row 9: not an integer
    ])  # f is missing
    assert cli(["validate-submission", sub, "--sample", str(sample), "--shape", "4x4"]) == 1
    out = capsys.readouterr().out
    expected = [r"row 3 \(id 'b'\): RLE has an odd number of tokens", r"row 4 \(id 'c'\).*sorted",
                r"row 5 \(id 'd'\).*overlaps", r"row 6 \(id 'e'\).*past the last pixel",
                r"row 7 \(id 'e'\): duplicate id \(first at row 6\)", r"row 8 \(id 'zz'\): id not in the sample",
                r"row 9 \(id 'g'\).*'x'.*not an integer", r"id 'f' \(sample row 7\): missing"]
    import re

    for pattern in expected:
        assert re.search(pattern, out), pattern
    assert "row 2 " not in out and "8 problem(s)" in out
    # without the image size, only the form is checked: the run past the end goes unnoticed
    assert cli(["validate-submission", sub, "--sample", str(sample)]) == 1
    out = capsys.readouterr().out
    assert "row 6 " not in out and "image sizes unknown" in out and "7 problem(s)" in out


def test_validator_accepts_a_good_file_and_caps_long_reports(tmp_path, sample, capsys):
    good = write_sub(tmp_path, [(c, "" if c == "a" else "3 2 9 1") for c in "gfedcba"])
    assert cli(["validate-submission", good, "--sample", str(sample), "--shape", "4x4"]) == 0
    out = capsys.readouterr().out
    assert "valid (7 rows)" in out and "not in the sample's order" in out
    many = write_sub(tmp_path, [(f"x{i}", "") for i in range(30)])
    assert cli(["validate-submission", many, "--sample", str(sample)]) == 1
    out = capsys.readouterr().out
    assert "37 problem(s)" in out and "... and 17 more" in out


def test_validator_one_line_errors_for_unreadable_files(tmp_path, sample, capsys):
    bad = tmp_path / "latin.csv"
    bad.write_bytes(b"id,rle_mask\n\xe9t\xe9,1 1\n")
    assert cli(["validate-submission", str(bad), "--sample", str(sample)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "not UTF-8" in err and "\n" not in err
    cols = write_sub(tmp_path, [("a", "1 1")], columns=("id", "mask"))
    assert cli(["validate-submission", cols, "--sample", str(sample)]) == 2
    err = capsys.readouterr().err
    assert "missing column(s) ['rle_mask']" in err
    assert cli(["validate-submission", str(tmp_path / "nope.csv"), "--sample", str(sample)]) == 2
    assert cli(["validate-submission", cols, "--sample", str(sample), "--shape", "4by4"]) == 2
    assert "expected HxW" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------------ scorer


@pytest.mark.skipif(not (TGS / "train.csv").exists(), reason="TGS data not in ../shared/datasets")
@pytest.mark.parametrize("sizes", ["--shape", "--images"])
def test_scorer_on_hand_computed_tgs_case(tmp_path, capsys, sizes):
    truth = read(TGS / "train.csv").set_index("id")
    ids = ["575d24d81d", "a266a2a9df", "782ae9b7e7", "9842f69f8d", "50d3073821", "28f865caaa"]
    assert truth.loc["a266a2a9df", "rle_mask"] == "5051 5151"
    assert truth.loc["50d3073821", "rle_mask"] == "1 2121 9293 909"
    truth_path = tmp_path / "truth.csv"
    truth.loc[ids].reset_index().to_csv(truth_path, index=False)
    preds = {
        "575d24d81d": "",  # both empty: 1
        "a266a2a9df": "5051 4000",  # IoU 4000/5151 = 0.777: passes t = 0.50 .. 0.75, 6 of 10: 0.6
        "782ae9b7e7": "",  # salt missed: 0
        "9842f69f8d": "1 10",  # salt invented: 0
        "50d3073821": "1 2121",  # IoU 2121/3030 = 0.7 exactly: passes 0.50 .. 0.65 (not 0.70): 0.4
        "28f865caaa": "",  # both empty: 1
    }
    sub = tmp_path / "sub.csv"
    pd.DataFrame({"id": list(preds)[::-1], "rle_mask": list(preds.values())[::-1]}).to_csv(sub, index=False)
    size_arg = ["--shape", "101x101"] if sizes == "--shape" else ["--images", str(TGS / "images")]
    assert cli(["score", str(sub), "--truth", str(truth_path), "--metric", "tgs", *size_arg]) == 0
    out = capsys.readouterr().out
    assert "tgs: 0.500000 (6 rows" in out  # (1 + 0.6 + 0 + 0 + 0.4 + 1) / 6


def test_scorer_errors_and_sample_check(tmp_path, sample, capsys):
    truth = write_sub(tmp_path, [("a", "1 3"), ("b", "")])
    truth_path = tmp_path / "truth.csv"
    shutil.move(truth, truth_path)
    sub = write_sub(tmp_path, [("a", "1 3")])
    assert cli(["score", sub, "--truth", str(truth_path), "--metric", "dice", "--shape", "4x4"]) == 2
    assert "1 truth id(s) have no row" in capsys.readouterr().err
    sub = write_sub(tmp_path, [("a", "2 2"), ("b", ""), ("c", "1 1")])
    assert cli(["score", sub, "--truth", str(truth_path), "--metric", "dice"]) == 2
    assert "--shape HxW or --images" in capsys.readouterr().err
    assert cli(["score", sub, "--truth", str(truth_path), "--metric", "dice", "--shape", "4x4"]) == 0
    out = capsys.readouterr().out
    assert "dice: 0.900000 (2 rows" in out and "1 submission id(s) not in the truth" in out  # (2*2/5 + 1) / 2
    assert cli(["score", sub, "--truth", str(truth_path), "--metric", "nope", "--shape", "4x4"]) == 2
    assert "unknown metric 'nope'" in capsys.readouterr().err
    assert cli(["score", sub, "--truth", str(truth_path), "--metric", "dice", "--shape", "4x4",
                "--sample", str(sample)]) == 1  # d..g missing from the submission
    assert "not scored" in capsys.readouterr().out
