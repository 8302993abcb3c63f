"""The ``segkit`` command: one sub-command per pipeline stage (``segkit.commands``), ``run`` for all of them,
``ablate`` for what each trick of a recipe is worth, and the stand-alone tools (demo-data, score,
validate-submission). Config commands take ``--config FILE`` plus ``key.sub=value`` overrides; every name the config
picks is checked (``segkit.catalog``) before any work starts. Stage modules are imported only when their command
runs, so ``segkit --help`` stays instant.

Errors of input (a file, csv row or config key) are ``SegkitError``s: printed as one ``error:`` line, exit 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from segkit.errors import SegkitError
from segkit.artifacts.layout import pattern
from segkit.commands import BY_NAME, STAGES, load

RUN_HELP = "every stage in order, skipping what is complete"
TOOLS = {"score": "segkit.tools.score", "validate-submission": "segkit.submission.validate"}
ABLATE_HELP = "what each trick of a recipe is worth: a baseline, the recipe, one trick added at a time"
EXPORT_HELP = "every checkpoint the ensemble predicts with as TorchScript / ONNX, checked against PyTorch"
PACKAGE_HELP = "an offline bundle for a code competition: models, config, tuning, ensemble, wheels, infer.py"


def _config_parser(sub, name: str, help_text: str, description: str = "", narrows: bool = False):
    p = sub.add_parser(name, help=help_text, description=description or help_text)
    p.add_argument("--config", required=True, help="experiment YAML (configs/...)")
    p.add_argument("overrides", nargs="*", metavar="key.sub=value", help="config overrides")
    if narrows:
        p.add_argument("--model", default=None, help="only this model (a name from models:)")
        p.add_argument("--fold", type=int, default=None, help="only this fold")
    return p


def _ints(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of fold numbers") from None


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

    layout = pattern()
    for stage in STAGES:
        reads, writes = stage.describe(layout)
        text = f"{stage.help}. Reads {', '.join(reads)}; writes {', '.join(writes)}."
        _config_parser(sub, stage.name, stage.help, text, narrows=stage.narrows)
    _config_parser(sub, "run", RUN_HELP, f"{RUN_HELP}; --model / --fold run the stages that work on that slice "
                   f"({', '.join(s.name for s in STAGES if s.scope != 'all')}) and stop before the first that "
                   f"needs every fold", narrows=True)
    ablate = _config_parser(sub, "ablate", ABLATE_HELP, f"{ABLATE_HELP} (runs/<experiment>/quality/)")
    ablate.add_argument("--folds", type=_ints, default=[], help="folds the ablation trains and scores, e.g. 0,1 "
                        "(default: all)")
    ablate.add_argument("--metrics", type=lambda s: s.split(","), default=[],
                        help="more metrics to report beside the config's, e.g. iou,pixel_accuracy")
    ablate.add_argument("--no-variants", action="store_true",
                        help="skip the baseline and loss-only trainings: score only the recipe's own rows")
    ablate.add_argument("--train-only", action="store_true", help="train and predict, do not score")

    export = _config_parser(sub, "export", EXPORT_HELP, f"{EXPORT_HELP} (runs/<experiment>/export/)")
    export.add_argument("--format", default="both", choices=["torchscript", "onnx", "both"])
    export.add_argument("--tolerance", type=float, default=1e-3,
                        help="largest difference of probabilities from PyTorch (float32) an export may have")
    package = _config_parser(sub, "package", PACKAGE_HELP, f"{PACKAGE_HELP}; the README's \"Submitting to a code "
                             f"competition\" shows how a notebook runs it")
    package.add_argument("--out", required=True, help="the bundle's folder (must not exist, or be an earlier bundle)")
    package.add_argument("--models", default="eager", choices=["eager", "torchscript", "onnx"],
                         help="which files the bundle carries: the checkpoints (eager, the default: the submission "
                         "equals `segkit submit`'s byte for byte) or the exports of `segkit export`")
    package.add_argument("--no-wheels", action="store_true", help="leave out the wheels (the target has the packages)")
    package.add_argument("--python-version", default=None,
                         help="wheels for this Python (e.g. 3.12) instead of the running one's")

    score = sub.add_parser("score", help="score an RLE csv against a truth csv as the competition would")
    score.add_argument("submission")
    score.add_argument("--truth", required=True)
    score.add_argument("--metric", required=True, help="a metric name: tgs, dice, iou, object_ap, hd95, abs_rvd, "
                       "... (the README's Metrics section lists them all)")
    score.add_argument("--sample", default=None, help="sample_submission.csv (image sizes / id format)")
    score.add_argument("--shape", default=None, help="HxW of every image when no sample gives it, e.g. 101x101")
    score.add_argument("--images", default=None, help="folder of the images (their sizes), instead of --shape")
    score.add_argument("--order", choices=["F", "C"], default="F", help="RLE pixel order (F: Kaggle column-major)")
    score.add_argument("--relative", action="store_true", help="SIIM-style relative RLE starts")
    score.add_argument("--instances", action="store_true", help="one row per object (DSB): each image's rows are "
                       "its objects, scored as label maps (object_ap)")

    val = sub.add_parser("validate-submission", help="check a submission against the sample submission")
    val.add_argument("submission")
    val.add_argument("--sample", required=True)
    val.add_argument("--shape", default=None, help="HxW to check RLE runs against, e.g. 101x101")
    val.add_argument("--images", default=None, help="folder of the images (their sizes), instead of --shape")
    val.add_argument("--relative", action="store_true", help="SIIM-style relative RLE starts")
    val.add_argument("--instances", action="store_true", help="one row per object (DSB, Airbus): objects of an "
                     "image may not overlap; an image without objects has one empty row")
    return parser


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


def _tool(module: str, func: str = "main"):
    # Each command imports only its own module (and its dependencies: torch, lightgbm, matplotlib...).
    return getattr(importlib.import_module(module), func)


def _dispatch(args: argparse.Namespace) -> int | None:
    if args.command == "demo-data":
        options = {k: v for k, v in vars(args).items() if k not in ("command", "out") and v is not None}
        return _tool("segkit.data.demo", "write_competition")(args.out, **options) and 0
    if args.command in TOOLS:
        return _tool(TOOLS[args.command])(args)

    cfg = _tool("segkit.config", "load_config")(args.config, args.overrides)
    if args.command not in ("run", "ablate"):  # those check the config themselves, through segkit.pipeline
        _tool("segkit.catalog", "check")(cfg)
    options = {k: getattr(args, k) for k in ("model", "fold") if getattr(args, k, None) is not None}
    if args.command == "run":
        return _tool("segkit.pipeline", "run")(cfg, **options)
    if args.command == "export":
        return _tool("segkit.stages.export", "run")(cfg, format=args.format, tolerance=args.tolerance)
    if args.command == "package":
        return _tool("segkit.stages.package", "run")(cfg, out=args.out, models=args.models, wheels=not args.no_wheels,
                                             python_version=args.python_version)
    if args.command == "ablate":
        ablate = importlib.import_module("segkit.ablate")
        table = ablate.run(cfg, folds=args.folds, metrics=args.metrics, with_variants=not args.no_variants,
                           train_only=args.train_only)
        if table:
            print("\n" + ablate.markdown(table, "object_ap" if cfg.data.instances is not None else cfg.metric))
        return 0
    return load(BY_NAME[args.command])(cfg, **options)


if __name__ == "__main__":
    raise SystemExit(main())
