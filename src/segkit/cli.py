"""The ``segkit`` command: one sub-command per pipeline stage, each ``--config FILE`` plus ``key.sub=value``
overrides. Stage modules are imported only when their command runs, so ``segkit --help`` stays instant.

Errors of input (a file, csv row or config key) are ``SegkitError``s: printed as one ``error:`` line, exit 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Callable

from segkit.errors import SegkitError

# command -> (module, function, help). Config stages take (cfg, **options).
STAGES: dict[str, tuple[str, str, str]] = {
    "check": ("segkit.check", "run", "read every image and mask once; stop at the first bad file"),
    "folds": ("segkit.folds", "run", "build folds/<competition>.csv"),
    "train": ("segkit.train", "run", "train models x folds (all unless narrowed)"),
    "predict": ("segkit.predict", "run", "predict test images with TTA, per model"),
    "ensemble": ("segkit.ensemble", "run", "ensemble OOF and test probabilities"),
    "pseudo": ("segkit.pseudo", "run", "select confident test images as pseudo labels"),
    "tune": ("segkit.tune", "run", "choose thresholds, min areas, clean-up on OOF"),
    "submit": ("segkit.submit", "run", "write and validate submissions/<experiment>.csv"),
    "report": ("segkit.report", "run", "write runs/<experiment>/report/"),
    "run": ("segkit.pipeline", "run", "every stage in order, skipping what is complete"),
}


def _config_parser(sub, name: str, help_text: str) -> argparse.ArgumentParser:
    p = sub.add_parser(name, help=help_text, description=help_text)
    p.add_argument("--config", required=True, help="experiment YAML (configs/...)")
    p.add_argument("overrides", nargs="*", metavar="key.sub=value", help="config overrides")
    return p


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="segkit", description="Segmentation competitions, end to end.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = sub.add_parser("demo-data", help="write the built-in synthetic competition")
    demo.add_argument("--out", required=True)
    demo.add_argument("--n-train", type=int, default=None)
    demo.add_argument("--n-test", type=int, default=None)
    demo.add_argument("--size", type=int, default=None)
    demo.add_argument("--classes", type=int, default=None, help="1 = binary; more = multiclass")
    demo.add_argument("--seed", type=int, default=None)

    for name, (_, _, help_text) in STAGES.items():
        p = _config_parser(sub, name, help_text)
        if name in ("train", "run"):
            p.add_argument("--model", default=None, help="only this model (a name from models:)")
            p.add_argument("--fold", type=int, default=None, help="only this fold")

    score = sub.add_parser("score", help="score an RLE csv against a truth csv as the competition would")
    score.add_argument("submission")
    score.add_argument("--truth", required=True)
    score.add_argument("--metric", required=True)
    score.add_argument("--sample", default=None, help="sample_submission.csv (image sizes / id format)")
    score.add_argument("--shape", default=None, help="HxW of every image when no sample gives it, e.g. 101x101")
    score.add_argument("--images", default=None, help="folder of the images (their sizes), instead of --shape")
    score.add_argument("--order", choices=["F", "C"], default="F", help="RLE pixel order (F: Kaggle column-major)")
    score.add_argument("--relative", action="store_true", help="SIIM-style relative RLE starts")

    val = sub.add_parser("validate-submission", help="check a submission against the sample submission")
    val.add_argument("submission")
    val.add_argument("--sample", required=True)
    val.add_argument("--shape", default=None, help="HxW to check RLE runs against, e.g. 101x101")
    val.add_argument("--images", default=None, help="folder of the images (their sizes), instead of --shape")
    val.add_argument("--relative", action="store_true", help="SIIM-style relative RLE starts")
    return parser


def _call(module: str, func: str) -> Callable:
    # Each command imports only its own stage (and its dependencies: lightgbm, scipy, matplotlib...).
    return getattr(importlib.import_module(module), func)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _dispatch(args) or 0
    except SegkitError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def _dispatch(args: argparse.Namespace) -> int | None:
    if args.command == "demo-data":
        options = {k: v for k, v in vars(args).items() if k not in ("command", "out") and v is not None}
        return _call("segkit.demo", "write_competition")(args.out, **options) and 0
    if args.command == "score":
        return _call("segkit.score", "main")(args)
    if args.command == "validate-submission":
        return _call("segkit.validate", "main")(args)

    from segkit.config import load_config

    cfg = load_config(args.config, args.overrides)
    options = {k: getattr(args, k) for k in ("model", "fold") if getattr(args, k, None) is not None}
    module, func, _ = STAGES[args.command]
    return _call(module, func)(cfg, **options)


if __name__ == "__main__":
    raise SystemExit(main())
