"""bench/gpu_check.py's dry run: the GPU check's every section on the CPU at tiny sizes, so the one command the
scarce GPU time is spent on cannot rot between GPU runs."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
from conftest import REPO

pytestmark = pytest.mark.slow


def _sections(text: str) -> dict[str, list[list[str]]]:
    """Section title -> its table's rows (cells), header and rule left out."""
    out: dict[str, list[list[str]]] = {}
    title = None
    for line in text.splitlines():
        if line.startswith("### "):
            title = line[4:].split(".", 1)[0]
            out[title] = []
        elif title and line.startswith("|") and not line.startswith("|---"):
            out[title].append([c.strip() for c in line.strip("|").split("|")])
    return {k: rows[1:] for k, rows in out.items()}


def test_the_dry_run_measures_every_section_and_runs_the_recipe_end_to_end(tmp_path):
    # No time budget to speak of: on a busy CI machine the dry run may take minutes, and a section skipped for
    # time would hide what it is there to exercise.
    out = subprocess.run([sys.executable, str(REPO / "bench" / "gpu_check.py"), "--dry-run", "--out",
                          str(tmp_path / "out"), "--work", str(tmp_path / "work"), "--budget-seconds", "3000",
                          "--slice-seconds", "2000"], capture_output=True, text=True,
                         timeout=900, env=dict(os.environ, SEGKIT_PROGRESS="0"))
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    table = (tmp_path / "out" / "gpu_check.md").read_text()
    sections = _sections(table)
    assert set(sections) == {"1", "2", "3", "4", "1b"}

    steps = sections["1"]
    networks = {(r[0], r[1]) for r in steps}
    assert len(networks) == 5  # TGS's two gpu-budget networks, DSB's three
    for recipe, network in networks:
        loops = {r[3]: float(r[4]) for r in steps if (r[0], r[1]) == (recipe, network)}
        assert "bare fp32" in loops and any(k.startswith("segkit") for k in loops) and min(loops.values()) > 0

    tgs = next(r for r in sections["2"] if r[0] == "tgs_salt")
    assert float(tgs[5]) > 0 and float(tgs[7]) > 0  # loader images/s, and its ratio to the step's

    tta = sections["3"]
    assert {r[0] for r in tta} == {"32", "64"} and len(tta) == 4
    for r in tta:
        assert float(r[3]) > 0
        # the same eight views merged alike: equal to bf16 rounding of the outputs' scale
        assert float(r[5]) <= 0.02 * max(float(r[6]), 1.0), r

    recipe = {r[0]: r[1] for r in sections["4"]}
    assert recipe["exit"].startswith("0 after"), (tmp_path / "out" / "slice.log").read_text()[-3000:]
    assert re.match(r"tgs \d\.\d{4}, dice \d\.\d{4} after 3 epochs", recipe["fold 0"])
    assert "projected full recipe" in recipe
    logged = [r[1] for r in sections["4"] if r[0] == "log"]
    assert any(line.startswith("submit: wrote") for line in logged)
    assert any(re.search(r"CV tgs: \d\.\d{4} nested", line) for line in logged)
    assert (tmp_path / "out" / "slice.log").exists()
    assert "CV tgs" in (tmp_path / "out" / "gpu_check.log").read_text()  # what the check printed, as it went
    assert not list((tmp_path / "out").rglob("*.pt"))  # the runs stay in --work: $OUT brings back a few files


def test_a_failing_section_is_a_line_of_the_table_and_the_check_goes_on(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "bench"))
    import gpu_check

    report = gpu_check.Report(tmp_path)
    assert gpu_check.guarded(report, "3. D4 TTA", lambda: 1 / 0, default={}) == {}
    assert gpu_check.guarded(report, "4. recipe slice", lambda: 7) == 7
    assert "**3. D4 TTA failed**: ZeroDivisionError: division by zero" in (tmp_path / "gpu_check.md").read_text()
