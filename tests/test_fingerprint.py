"""The data's fingerprint (segkit check's fingerprint.json): known answers on hand-made images and masks, and the
file the check writes for a competition."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import CONFIGS

from segkit.data import fingerprint
from segkit.data.fingerprint import Fingerprint, stroke_width
from segkit.errors import DataError


def squares(h: int, w: int, boxes: list[tuple[int, int, int]], classes: int = 1, k: int = 0) -> np.ndarray:
    """A (classes, h, w) mask with square objects (y, x, side) in class k."""
    mask = np.zeros((classes, h, w), np.uint8)
    for y, x, side in boxes:
        mask[k, y:y + side, x:x + side] = 1
    return mask


def test_known_objects_sizes_and_shares():
    fp = Fingerprint(["a", "b"], seed=0)
    image = np.full((20, 30, 3), 0.5, np.float32)
    fp.add(image, squares(20, 30, [], classes=2))  # empty
    fp.add(image, squares(20, 30, [(1, 1, 4)], classes=2))  # one 16-pixel object
    fp.add(image, squares(20, 30, [(1, 1, 3), (10, 10, 3)], classes=2))  # two of 9 pixels
    two = squares(20, 30, [(2, 2, 5)], classes=2) | squares(20, 30, [(12, 20, 2)], classes=2, k=1)
    fp.add(image[:10], two[:, :10])  # a smaller image: a 5x5 square in a, a 2x2 one in b cut off -> b empty here
    facts = fp.result(groups=["g1", "g1", "g2", "g3"])
    a, b = facts["classes"]["a"], facts["classes"]["b"]
    assert facts["images"] == 4 and facts["empty_share"] == 0.25 and facts["groups"] == 3 and facts["sizes"] == 2
    assert facts["height"]["min"] == 10 and facts["height"]["max"] == 20 and facts["width"]["median"] == 30
    assert facts["area"]["mean"] == (3 * 600 + 300) / 4 and facts["area"]["median"] == 600
    assert a["objects_per_image"]["mean"] == 1.0 and a["objects_per_image_with_any"]["median"] == 1.0
    assert a["object_pixels"]["n"] == 4 and a["object_pixels"]["median"] == 12.5 and a["object_pixels"]["max"] == 25
    assert a["image_share"] == 0.75 and b["image_share"] == 0.0 and b["object_pixels"] == {"n": 0}
    assert a["pixel_share"] == pytest.approx((16 + 18 + 25) / (3 * 600 + 300), abs=1e-6)
    assert a["object_diameter"]["max"] == pytest.approx(np.sqrt(4 * 25 / np.pi), abs=0.05)
    assert facts["channels"] == 3 and facts["intensity"]["channel0"]["p50"] == 0.5
    assert facts["coverage_when_not_empty"]["n"] == 3


def test_a_line_is_as_thin_as_it_looks():
    line = np.zeros((40, 40), bool)
    line[10:13, 2:38] = True  # 3 px wide, 36 long: the disc of its area is 11.7 px across
    assert stroke_width(line) == 3.0
    square = np.zeros((20, 20), bool)
    square[5:10, 5:10] = True
    assert stroke_width(square) == 5.0
    fp = Fingerprint(["m"], seed=0)
    fp.add(np.zeros((40, 40, 1), np.float32), line[None].astype(np.uint8))
    m = fp.result()["classes"]["m"]
    assert m["stroke_width"]["median"] == 3.0 and m["object_diameter"]["median"] > 11


def test_touching_squares_are_one_object_and_a_diagonal_touch_too():
    fp = Fingerprint(["a"])
    mask = squares(10, 10, [(0, 0, 2), (0, 2, 2), (5, 5, 2), (7, 7, 1)])  # side by side; corner to corner
    fp.add(np.zeros((10, 10, 1), np.float32), mask)
    assert fp.result()["classes"]["a"]["objects_per_image"]["max"] == 2.0  # 8-connected


def test_nothing_to_read_and_a_file_of_another_version_are_errors(tmp_path):
    with pytest.raises(DataError, match="no labelled images"):
        Fingerprint(["a"]).result()
    with pytest.raises(DataError, match="missing; run `segkit check` first"):
        fingerprint.read(tmp_path / "fingerprint.json")
    (tmp_path / "fingerprint.json").write_text(json.dumps({"version": 0}))
    with pytest.raises(DataError, match="fingerprint version 0"):
        fingerprint.read(tmp_path / "fingerprint.json")


def test_the_check_writes_the_fingerprint_beside_its_summary(demo_root, tmp_path, capsys):
    from segkit.cli import main
    from segkit.config import load_config

    args = ["--config", str(CONFIGS / "demo.yaml"), f"data.root={demo_root}", f"paths.runs={tmp_path / 'runs'}"]
    assert main(["check", *args]) == 0
    assert "check: objects (median): object" in capsys.readouterr().out
    cfg = load_config(args[1], args[2:])
    facts = fingerprint.read(cfg.layout.fingerprint)
    summary = json.loads(cfg.layout.data_check.read_text())
    assert facts["images"] == summary["train_images"] + summary["holdout_images"]
    assert facts["empty_share"] == summary["empty_share"] and facts["channels"] == 1
    assert facts["classes"]["object"]["object_pixels"]["n"] > 0
