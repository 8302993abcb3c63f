"""What a recipe scores on real data, and what each of its tricks adds (segkit.ablation explains the rows).

    .venv/bin/python bench/quality.py --config configs/tgs_salt.yaml budget=cpu --folds 0
    .venv/bin/python bench/quality.py --config configs/dsb2018_nuclei.yaml budget=cpu --folds 0 --metrics iou

First the full recipe runs as ``segkit run`` would (all folds; resumed or reused when already complete), then the
baseline and the loss-only model train on ``--folds`` (default: all of them) with the recipe's epochs, and every
row is scored on the validation images of those folds. Writes runs/<experiment>/quality/quality.{md,json}.
Everything resumes: killed half-way, the same command goes on where it stopped.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import segkit  # noqa: E402, F401  (import fixes for torchvision come first)
from segkit import ablation  # noqa: E402
from segkit.config import load_config  # noqa: E402
from segkit.errors import SegkitError  # noqa: E402


def _ints(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of fold numbers") from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--folds", type=_ints, default=[], help="folds the ablation trains and scores, e.g. 0,1 "
                        "(default: all)")
    parser.add_argument("--metrics", type=lambda s: s.split(","), default=[],
                        help="more metrics to report beside the config's, e.g. iou,pixel_accuracy")
    parser.add_argument("--no-variants", action="store_true",
                        help="skip the baseline and loss-only trainings: score only the recipe's own rows")
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
        began = time.perf_counter()
        table = ablation.run(cfg, args.folds, args.metrics, with_variants=not args.no_variants)
    except SegkitError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print()
    print(ablation.markdown(table, cfg.metric))
    print(f"{platform.node()} ({os.cpu_count()} cores), {time.perf_counter() - began:.0f} s in all")
    return 0


if __name__ == "__main__":
    sys.exit(main())
