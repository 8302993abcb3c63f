"""segkit.compute.pool: per-image passes spread over forked processes give what one process gives, in order, and a
worker's error reaches the caller; the stages after training write the same artifacts with one worker or two."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from segkit.compute import pool
from segkit.errors import DataError

REPO = Path(__file__).resolve().parents[1]


def test_map_indices_keeps_order_and_runs_closures_in_workers():
    offset = np.arange(100) * 3  # a closure over an object never pickled: the fork inherits it
    n = pool.MIN_ITEMS + 37
    got = pool.map_indices(lambda i: (i, int(offset[i]), __import__("os").getpid()), n, 2)
    assert [g[:2] for g in got] == [(i, 3 * i) for i in range(n)]
    assert len({g[2] for g in got}) == 2  # two processes did the work ...
    assert __import__("os").getpid() not in {g[2] for g in got}  # ... neither of them this one
    assert pool.map_indices(lambda i: i * i, 5, 2) == [0, 1, 4, 9, 16]  # few items: this process, same answer


def test_a_workers_error_reaches_the_caller():
    def fail(i):
        if i == 40:
            raise DataError("image 40: broken")
        return i

    with pytest.raises(DataError, match="image 40: broken"):
        pool.map_indices(fail, 64, 2)
    assert pool._TASK is None  # a failed pass leaves no task behind


def test_workers_setting():
    assert pool.workers(1) == 1 and pool.workers(0) == 1 and pool.workers(3) == 3
    assert pool.workers("auto") >= 1


def test_stages_write_the_same_with_one_worker_or_two(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "bench"))
    monkeypatch.setenv("SEGKIT_PROGRESS", "0")
    import scale

    from segkit.cli import main

    shape = (32, 64)
    train, test = scale.write_competition(tmp_path / "data", 48, 36, shape)
    cfg = scale.write_config(tmp_path, tmp_path / "data")
    assert main(["folds", "--config", str(cfg)]) == 0
    scale.write_stores(cfg, train, test, shape)
    runs = tmp_path / "runs" / "scale"

    def outputs(workers: int) -> dict:
        for stage in ("ensemble", "tune", "evaluate"):
            assert main([stage, "--config", str(cfg), f"cpu_workers={workers}", "ensemble.methods=[mean,vote]",
                         "ensemble.choose=vote"]) == 0
        tuned = json.loads((runs / "tune.json").read_text())
        tuned.pop("seconds")
        got = {"tune": tuned, "scores": pd.read_csv(runs / "tune" / "oof_scores.csv"),
               "evaluate": pd.read_csv(runs / "evaluate" / "per_image_oof.csv"),
               "cv": pd.read_csv(runs / "ensemble" / "cv.csv").drop(columns="seconds"),
               "stores": {p.name: np.load(p) for p in sorted((runs / "ensemble" / "oof").glob("*.npy"))}}
        for stale in ("ensemble", "tune", "evaluate"):  # the next run must do the work again
            (runs / stale / "stamp.json").unlink()
        return got

    one, two = outputs(1), outputs(2)
    assert one["tune"] == two["tune"]
    for key in ("scores", "evaluate", "cv"):
        pd.testing.assert_frame_equal(one[key], two[key])
    assert one["stores"].keys() == two["stores"].keys() and len(one["stores"]) == 48
    assert all(np.array_equal(one["stores"][k], two["stores"][k]) for k in one["stores"])
