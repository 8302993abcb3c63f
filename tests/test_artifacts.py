"""Atomic writes and the on-disk probability store."""

import os

import numpy as np
import pytest

from segkit.artifacts import atomic, probs
from segkit.errors import SegkitError


def test_atomic_path_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out" / "file.json"
    with pytest.raises(RuntimeError):
        with atomic.atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert not target.exists()
    assert list((tmp_path / "out").iterdir()) == []


def test_atomic_write_replaces_only_when_complete(tmp_path):
    target = tmp_path / "a.json"
    atomic.write_json(target, {"x": np.float32(1.5), "y": np.arange(2)})
    assert target.read_text().strip().startswith("{")
    with pytest.raises(TypeError):
        atomic.write_json(target, {"bad": object()})
    assert '"x": 1.5' in target.read_text()  # the earlier result survives a failed rewrite


def test_atomic_dir_and_clean_tmp(tmp_path):
    with atomic.atomic_dir(tmp_path / "d") as tmp:
        (tmp / "f").write_text("1")
    assert (tmp_path / "d" / "f").read_text() == "1"
    (tmp_path / ".x.abc.tmp").write_text("left over")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / ".y.tmp").mkdir()
    assert atomic.clean_tmp(tmp_path) == 2
    assert not list(tmp_path.rglob("*.tmp"))


def test_prob_store_round_trip_and_quantisation(tmp_path):
    rng = np.random.default_rng(0)
    writer = probs.ProbWriter(tmp_path / "s", ["a", "b"])
    arrays = {"i1": rng.random((2, 5, 7)).astype(np.float32), "i2": rng.random((2, 3, 3)).astype(np.float32)}
    for k, v in arrays.items():
        writer.write(k, v)
    assert not probs.ProbStore.is_complete(tmp_path / "s")
    store = writer.finish(["i1", "i2"])
    assert store.ids == ["i1", "i2"] and store.classes == ["a", "b"]
    for k, v in arrays.items():
        q = store[k]
        assert isinstance(q, np.memmap) and q.dtype == np.uint8 and q.shape == v.shape
        assert np.abs(store.read_float(k) - v).max() <= 0.5 / 255 + 1e-6


def test_prob_store_refuses_partial_and_bad_shapes(tmp_path):
    writer = probs.ProbWriter(tmp_path / "s", ["a"])
    writer.write("i1", np.zeros((1, 2, 2)))
    with pytest.raises(SegkitError, match="no probabilities"):
        writer.finish(["i1", "i2"])
    with pytest.raises(SegkitError, match="incomplete"):
        probs.ProbStore(tmp_path / "s")
    with pytest.raises(ValueError, match=r"expected \(1, H, W\)"):
        writer.write("i3", np.zeros((2, 2, 2)))
    with pytest.raises(SegkitError, match="not a plain file name"):
        writer.write(f"a{os.sep}b", np.zeros((1, 2, 2)))


def test_quantize_clips_and_handles_nan():
    q = probs.quantize(np.array([-0.5, 0.0, 0.5, 1.0, 2.0, np.nan]))
    assert q.tolist() == [0, 0, 128, 255, 255, 0]
