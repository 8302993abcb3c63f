"""What a recipe scores on real data, and what each of its tricks adds: ``segkit ablate`` (segkit.ablate explains
the rows), with the machine and the time it took, as BENCHMARKS.md records them.

    .venv/bin/python bench/quality.py --config configs/tgs_salt.yaml budget=cpu --folds 0
    .venv/bin/python bench/quality.py --config configs/dsb2018_nuclei.yaml budget=cpu --folds 0 --metrics iou

First the full recipe runs as ``segkit run`` would (all folds; resumed or reused when already complete), then the
baseline and the loss-only model train on ``--folds`` (default: all of them) with the recipe's epochs, and every
row is scored on the validation images of those folds. Writes runs/<experiment>/quality/quality.{md,json}.
Everything resumes: killed half-way, the same command goes on where it stopped.
"""

from __future__ import annotations

import os
import platform
import sys
import time

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

from segkit.cli import main  # noqa: E402  (after the environment is set)

if __name__ == "__main__":
    began = time.perf_counter()
    code = main(["ablate", *sys.argv[1:]])
    print(f"{platform.node()} ({os.cpu_count()} cores), {time.perf_counter() - began:.0f} s in all")
    sys.exit(code)
