"""The bad-input corpus: every case must end with exit status 2 and one ``error:`` line naming the file, csv row or
config key — never a traceback, never a half-written output, never a changed earlier result.

Cases are generated here from the tiny demo competition (no committed binaries) and run through ``segkit.cli.main``
in-process: the same code path as the console script, without paying interpreter start-up per case.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
import pandas as pd
import pytest
from conftest import CONFIGS

from segkit import cli

TRAIN_ID = "tr00003"  # a train image with a non-empty mask in the tiny demo (seed 1)


def png(path: Path, arr: np.ndarray) -> None:
    cv2.imencode(path.suffix, arr)[1].tofile(path)


def edit_csv(path: Path, fn: Callable[[pd.DataFrame], pd.DataFrame]) -> None:
    fn(pd.read_csv(path, dtype=str, keep_default_na=False)).to_csv(path, index=False)


def set_rle(root: Path, text: str, image_id: str = TRAIN_ID) -> None:
    def change(frame: pd.DataFrame) -> pd.DataFrame:
        frame.loc[frame["id"] == image_id, "rle_mask"] = text
        return frame

    edit_csv(root / "train.csv", change)


def to_mask_folder(root: Path) -> list[str]:
    """Rewrite the csv masks as a folder of PNGs; returns the overrides that select it."""
    from segkit.config.schema import DataConfig
    from segkit.data import Competition

    comp = Competition(DataConfig(root=root, train_csv="train.csv", classes=["object"]))
    (root / "masks").mkdir()
    for image_id in comp.train_ids:
        png(root / "masks" / f"{image_id}.png", comp.read_mask(image_id)[0] * 255)
    return ["data.train_csv=null", "data.train_masks=masks"]


def write_config(root: Path, text: str) -> list[str]:
    (root / "exp.yaml").write_text(text)
    return [f"--config={root / 'exp.yaml'}"]


# name -> (corrupt(root) -> extra CLI args or overrides, expected text in the error line[, command])
CASES: dict[str, tuple] = {
    "truncated png": (lambda r: (r / f"train/images/{TRAIN_ID}.png").write_bytes(
        (r / f"train/images/{TRAIN_ID}.png").read_bytes()[:60]), f"{TRAIN_ID}.png"),
    "zero-byte image": (lambda r: (r / f"train/images/{TRAIN_ID}.png").write_bytes(b""), "0 bytes"),
    "text file as image": (lambda r: (r / f"train/images/{TRAIN_ID}.png").write_text("hello"),
                           "not a readable image"),
    "NaN in float image": (lambda r: ((r / f"train/images/{TRAIN_ID}.png").unlink(), png(
        r / f"train/images/{TRAIN_ID}.tif", np.full((32, 32), np.nan, np.float32))), "NaN"),
    "two images one id": (lambda r: png(r / f"train/images/{TRAIN_ID}.jpg", np.zeros((32, 32), np.uint8)),
                          "share the id"),
    "truncated test image": (lambda r: (r / "test/images/te00002.png").write_bytes(
        (r / "test/images/te00002.png").read_bytes()[:50]), "te00002.png"),
    "rle odd tokens": (lambda r: set_rle(r, "1 2 5"), "train.csv row 5"),
    "rle out of range": (lambda r: set_rle(r, "1000 100"), "train.csv row 5"),
    "rle overlapping": (lambda r: set_rle(r, "1 10 5 3"), "train.csv row 5"),
    "rle negative length": (lambda r: set_rle(r, "4 -2"), "train.csv row 5"),
    "rle non-integer": (lambda r: set_rle(r, "4 x"), "train.csv row 5"),
    "csv duplicate id": (lambda r: edit_csv(r / "train.csv", lambda f: pd.concat([f, f.iloc[[3]]])),
                         "duplicate row for id"),
    "csv missing column": (lambda r: edit_csv(r / "train.csv", lambda f: f.rename(columns={"rle_mask": "x"})),
                           "missing column"),
    "csv not utf-8": (lambda r: (r / "train.csv").write_bytes(b"id,rle_mask\n\xff\xfe,1 1\n"), "not UTF-8"),
    "csv empty file": (lambda r: (r / "train.csv").write_bytes(b""), "train.csv: empty csv"),
    "csv id without image": (lambda r: edit_csv(r / "train.csv", lambda f: pd.concat(
        [f, pd.DataFrame({"id": ["ghost"], "rle_mask": [""]})])), "'ghost' has no image"),
    "sample id without test image": (lambda r: edit_csv(r / "sample_submission.csv", lambda f: pd.concat(
        [f, pd.DataFrame({"id": ["ghost"], "rle_mask": [""]})])), "'ghost' has no image"),
    "sample duplicate id": (lambda r: edit_csv(r / "sample_submission.csv", lambda f: pd.concat([f, f.iloc[[0]]])),
                            "sample_submission.csv row 10: duplicate id"),
    "empty test folder": (lambda r: ([p.unlink() for p in (r / "test/images").iterdir()],
                                     ["data.sample_submission=null"])[1], "test/images: the test set is empty"),
    "mask wrong size": (lambda r: (to_mask_folder(r), png(r / f"masks/{TRAIN_ID}.png", np.zeros((8, 8), np.uint8))
                                   )[0], "mask is 8x8, image is 32x32"),
    "mask unexpected values": (lambda r: (to_mask_folder(r), png(
        r / f"masks/{TRAIN_ID}.png", np.arange(1024).reshape(32, 32).astype(np.uint8) % 3))[0],
        f"{TRAIN_ID}.png: binary mask expected"),
    "16-bit mask with several values": (lambda r: (to_mask_folder(r), png(
        r / f"masks/{TRAIN_ID}.png", (np.arange(1024).reshape(32, 32) % 5 * 1000).astype(np.uint16)))[0],
        "binary mask expected"),
    "missing mask": (lambda r: (to_mask_folder(r), (r / f"masks/{TRAIN_ID}.png").unlink())[0],
                     f"{TRAIN_ID}.png: no mask"),
    "multiclass label out of range": (lambda r: (to_mask_folder(r), png(
        r / f"masks/{TRAIN_ID}.png", np.full((32, 32), 7, np.uint8)))[0] + [
        "data.mode=multiclass", "data.classes=[a, b]"], "integers 0..2"),
    "unknown config key": (lambda r: ["train.learning_rate=0.1"], "train.learning_rate: unknown key"),
    "wrong config type": (lambda r: ["train.epochs=ten"], "train.epochs"),
    "config file key typo": (lambda r: write_config(r, f"base: {CONFIGS / 'demo.yaml'}\ndatta: {{}}\n"),
                             "exp.yaml: datta: unknown key"),
    "bad yaml": (lambda r: write_config(r, "train: [oops\n"), "not valid YAML"),
    "missing data root": (lambda r: [f"data.root={r / 'nowhere'}"], "data.root"),
    "missing train csv": (lambda r: ["data.train_csv=nope.csv"], "data.train_csv: path does not exist"),
    "override without value": (lambda r: ["train.lr"], "key.sub=value"),
    "override bad list index": (lambda r: ["models.9.encoder=x"], "not an index"),
    "unknown mode": (lambda r: ["data.mode=panoptic"], "data.mode"),
    "extra csv duplicate id": (lambda r: (pd.DataFrame({"id": ["a", "a"], "z": [1, 2]}).to_csv(
        r / "extra.csv", index=False), ["data.extra_csv=extra.csv", "data.group_column=z"])[1],
        "extra.csv: duplicate id 'a'", "folds"),
    "group column missing": (lambda r: (pd.DataFrame({"id": ["a"], "z": [1]}).to_csv(r / "extra.csv", index=False),
                                        ["data.extra_csv=extra.csv", "data.group_column=patient"])[1],
                             "data.group_column", "folds"),
    "unknown architecture": (lambda r: ["models.0.arch=NoSuchNet"], "models[unet_r18].arch: unknown architecture "
                             "'NoSuchNet'", "train"),
    "unknown loss": (lambda r: ["train.loss={bce: 1, lovasz_typo: 1}"], "unknown loss 'lovasz_typo'", "train"),
    "unknown augmentation": (lambda r: ["models.1.train={augment: wild}"], "models[fpn_r18] train.augment", "train"),
    "encoder an architecture cannot take": (lambda r: ["models.0.arch=SegNet"],
                                            "models[unet_r18].encoder: SegNet takes 'resnet18' as no encoder", "train"),
    "pretrained weights for a network that has none": (lambda r: [
        "models.0.arch=FCDenseNet", "models.0.encoder=fcdensenet56", "models.0.encoder_weights=imagenet"],
        "models[unet_r18].encoder_weights: FCDenseNet builds its own encoder", "train"),
    "an FCN output stride the encoder cannot give": (lambda r: ["models.0.arch=FCN", "models.0.params={variant: 4s}"],
                                                     "variant", "train"),
    "edge loss on a network without edges": (lambda r: ["train.loss={bce: 1, dual_task: 1}"],
                                             "dual_task trains a network's edge output; Unet has none", "train"),
    "aux head on a classic network": (lambda r: ["models.0.arch=FCN", "models.0.aux_head=true"],
                                      "models[unet_r18].aux_head: FCN has no image-level head", "train"),
    "TTA scale of zero": (lambda r: ["predict.tta_scales=[1, 0]"], "predict.tta_scales", "predict"),
    "averaging the cycles of a one-cycle schedule": (lambda r: ["train.average={method: swa, at: cycles}"],
                                                     "average.at: cycles", "train"),
    "unwritable runs folder": (lambda r: ((r / "afile").write_text("x"), [f"paths.runs={r / 'afile' / 'runs'}"])[1],
                               "cannot write"),
    "fold file from other data": (lambda r: ((r / "folds").mkdir(exist_ok=True), pd.DataFrame(
        {"id": ["x"], "fold": [0]}).to_csv(r / "folds" / "demo.csv", index=False))[0] and [],
        "does not match the train set", "folds"),
}


@pytest.fixture
def case_root(demo_root, tmp_path) -> Path:
    root = tmp_path / "comp"
    shutil.copytree(demo_root, root)
    return root


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_gives_one_line_error(name, case_root, capsys):
    corrupt, expected, *command = CASES[name]
    command = command[0] if command else "check"
    out = case_root / "out"
    (out / "runs" / "demo").mkdir(parents=True)
    (out / "runs" / "demo" / "earlier_result.json").write_text('{"kept": true}')
    before = snapshot(out)
    extra = corrupt(case_root)
    extra = extra if isinstance(extra, list) else []  # corruptors return overrides, or whatever their last call did
    config = [a for a in extra if a.startswith("--config=")] or [f"--config={CONFIGS / 'demo.yaml'}"]
    overrides = [a for a in extra if not a.startswith("--config=")]
    paths = [f"data.root={case_root}", f"paths.runs={out / 'runs'}", f"paths.folds={case_root / 'folds'}",
             f"paths.submissions={out / 'subs'}"]
    # Later overrides win, so a case's own data.root / paths.runs replace the defaults.
    code = cli.main([command, *config, *paths, *overrides])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, f"{name}: exit {code}, stderr {err}"
    assert len(err) == 1 and err[0].startswith("error: "), err
    assert expected in err[0], err[0]
    assert snapshot(out) == before  # nothing written, nothing overwritten
    assert not list(case_root.rglob("*.tmp"))


def test_corpus_is_big_enough():
    assert len(CASES) >= 30


def test_console_script_exit_status(case_root):
    """The installed console script itself (a real process) exits 2 with the one-line message."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "segkit", "folds", "--config", str(CONFIGS / "demo.yaml"),
                           "train.epochs=zero"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("error: ")
    assert "Traceback" not in proc.stderr
