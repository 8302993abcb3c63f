"""Kill ``segkit run`` with SIGKILL at random moments across its stages, restart it each time, and check that it
ends exactly where an uninterrupted run ends: the same CV, the same submission bytes, no temporary leftovers.

Deterministic mode on CPU makes "the same" exact. The run is tiny (24 images of 32 px, 2 folds, 2 epochs) so the
whole test stays around a minute or two on two cores.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from conftest import CONFIGS

TINY_MODEL = ("models=[{name: tiny, arch: Unet, encoder: resnet18, "
              "params: {encoder_depth: 3, decoder_channels: [32, 16, 8]}}]")


def command(demo_root: Path, out: Path) -> list[str]:
    return [
        sys.executable, "-m", "segkit", "run", "--config", str(CONFIGS / "demo.yaml"),
        f"data.root={demo_root}", f"paths.runs={out / 'runs'}", f"paths.folds={out / 'folds'}",
        f"paths.submissions={out / 'subs'}", TINY_MODEL, "folds.n_splits=2", "train.epochs=2",
        "train.batch_size=8", "train.deterministic=true", "train.threads=1", "train.progress=false",
        "train.schedule.warmup_epochs=0", "predict.tta=flips", "ensemble.methods=[mean]",
        "tune.thresholds=[0.3, 0.5, 0.7]", "tune.min_areas=[0, 10]",
    ]


def env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}


def outcome(out: Path) -> tuple[float, bytes]:
    tune = json.loads((out / "runs" / "demo" / "tune.json").read_text())
    return tune["cv"], (out / "subs" / "demo.csv").read_bytes()


def test_sigkill_anywhere_then_resume_matches_uninterrupted(demo_root, tmp_path):
    clean = tmp_path / "clean"
    start = time.perf_counter()
    proc = subprocess.run(command(demo_root, clean), env=env(), capture_output=True, text=True, timeout=600)
    full = time.perf_counter() - start
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    expected = outcome(clean)

    killed = tmp_path / "killed"
    rng = np.random.default_rng(0)
    kills = 0
    log = []
    for attempt in range(12):
        p = subprocess.Popen(command(demo_root, killed), env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True)
        if kills < 4:
            # Kill somewhere between start-up and the end of an uninterrupted run; later attempts skip finished
            # stages, so successive kills land further along the pipeline.
            delay = float(rng.uniform(0.15, 0.7) * full)
            try:
                p.wait(timeout=delay)
            except subprocess.TimeoutExpired:
                p.send_signal(signal.SIGKILL)
                p.wait()
                kills += 1
                log.append(f"killed after {delay:.1f}s")
                continue
        stdout = p.communicate(timeout=600)[0]
        assert p.returncode == 0, stdout[-3000:]
        log.append(f"finished (attempt {attempt})")
        break
    assert kills >= 2, log
    assert outcome(killed) == expected, log
    leftovers = [p for p in killed.rglob("*") if p.name.endswith(".tmp")]
    assert not leftovers, leftovers
