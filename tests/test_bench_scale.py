"""bench/scale.py at its smoke size: every stage after training runs on a synthetic Severstal-shaped competition
at two sizes and the table comes out whole, so the scale bench cannot rot between its long runs."""

from __future__ import annotations

import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_the_smoke_size_fills_every_row_of_the_table(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "bench"))
    monkeypatch.setenv("SEGKIT_PROGRESS", "0")
    import scale

    out = tmp_path / "rows.json"
    assert scale.main(["--sizes", "6", "12", "--shape", "32", "64", "--methods", "vote", "mean", "--in-process",
                       "--work", str(tmp_path), "--json", str(out)]) == 0
    rows = json.loads(out.read_text())
    stages = ["folds", "ensemble vote", "ensemble mean", "tune", "submit", "evaluate", "report", "tail"]
    assert [(r["n"], r["stage"]) for r in rows] == [(n, s) for n in (6, 12) for s in stages]
    for r in rows:
        assert r["seconds"] > 0 and r["peak_rss_mb"] > 0, r
    # the growth exponent compares a size with the one before it: none for the first
    assert all(r["growth"] is None for r in rows if r["n"] == 6)
    assert all(isinstance(r["growth"], float) for r in rows if r["n"] == 12)
    # the stages wrote what they own: the ensemble's stores, the tuning, the submission
    written = {r["stage"]: r["written_mb"] for r in rows if r["n"] == 12}
    assert written["ensemble mean"] > 0 and written["tune"] > 0 and written["submit"] > 0
    assert not list(tmp_path.glob("*/n*")), "each size's folder is removed when its rows are done"


def test_the_volume_bench_runs_the_3d_tail_at_its_smallest_size(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "bench"))
    monkeypatch.setenv("SEGKIT_PROGRESS", "0")
    import scale_volumes

    out = tmp_path / "rows.json"
    assert scale_volumes.main(["--sizes", "64", "--in-process", "--work", str(tmp_path), "--json", str(out)]) == 0
    rows = json.loads(out.read_text())
    assert [r["stage"] for r in rows] == ["folds", "ensemble", "tune", "submit", "evaluate"]
    assert all(r["size"] == "64x64x64" and r["seconds"] > 0 for r in rows)
    written = {r["stage"]: r["written_mb"] for r in rows}
    assert written["submit"] > 0  # the test case's label volume
