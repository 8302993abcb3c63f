"""The ``segkit`` command: one sub-command per entry of the command registry (``segkit.commands``): the pipeline's
stages, ``run`` for all of them, ``ablate``, ``export``, ``package`` and the stand-alone tools (demo-data, score,
validate-submission). Config commands take ``--config FILE`` plus ``key.sub=value`` overrides; every name the config
picks is checked (``segkit.catalog``) before any work starts, and a command that writes the experiment holds its
lock (``segkit.artifacts.lock``) while it runs. Command modules are imported only when their command runs, so
``segkit --help`` stays instant.

Errors of input (a file, csv row or config key) are ``SegkitError``s: printed as one ``error:`` line, exit 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from segkit.artifacts.layout import pattern
from segkit.commands import BY_NAME, STAGES, Command, commands, load
from segkit.errors import SegkitError


def _add(sub, command: Command, layout) -> argparse.ArgumentParser:
    description = command.describe(layout)
    if command.name == "run":
        description += (f"; --model / --fold run the stages that work on that slice "
                        f"({', '.join(s.name for s in STAGES if s.scope != 'all')}) and stop before the first "
                        f"that needs every fold")
    p = sub.add_parser(command.name, help=command.help, description=description)
    if command.config:
        p.add_argument("--config", required=True, help="experiment YAML (configs/...)")
        p.add_argument("overrides", nargs="*", metavar="key.sub=value", help="config overrides")
    if command.narrows:
        p.add_argument("--model", default=None, help="only this model (a name from models:)")
        p.add_argument("--fold", type=int, default=None, help="only this fold")
    for option in command.options:
        p.add_argument(*option.flags, **option.kwargs)
    return p


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="segkit", description="Segmentation competitions, end to end.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    layout = pattern()
    for command in commands():
        _add(sub, command, layout)
    return parser


def _read_config_early(argv: list[str]):
    """A config's ``imports`` may add commands (a stage of its own): the config is read, and its modules imported,
    before the parser is built. Returns (path, overrides, config), or None where there is no config or it does not
    read (the command reads it again and reports the error)."""
    for i, arg in enumerate(argv):
        path = argv[i + 1] if arg == "--config" and i + 1 < len(argv) else \
            arg.split("=", 1)[1] if arg.startswith("--config=") else None
        if path:
            overrides = [a for a in argv if "=" in a and not a.startswith("-")]
            try:
                return path, overrides, _module("segkit.config").load_config(path, overrides)
            except (SegkitError, OSError):
                return None
    return None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        early = _read_config_early(argv)
        args = build_parser().parse_args(argv)
        return _dispatch(BY_NAME[args.command], args, argv, early) or 0
    except SegkitError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def _module(name: str):
    # Each command imports only its own module (and its dependencies: torch, lightgbm, matplotlib...).
    return importlib.import_module(name)


def _dispatch(command: Command, args: argparse.Namespace, argv: list[str], early=None) -> int | None:
    if not command.config:
        return load(command)(args)
    if early is not None and early[:2] == (args.config, args.overrides):
        cfg = early[2]  # read once
    else:
        cfg = _module("segkit.config").load_config(args.config, args.overrides)
    if command.name not in ("run", "ablate"):  # those check the config themselves, through segkit.pipeline
        _module("segkit.catalog").check(cfg)
    options = {o.dest: getattr(args, o.dest) for o in command.options}
    options.update({k: getattr(args, k) for k in ("model", "fold") if getattr(args, k, None) is not None})
    if not command.locks:
        return load(command)(cfg, **options)
    lock = _module("segkit.artifacts.lock")
    with lock.ExperimentLock(cfg.layout.lock, command="segkit " + " ".join(argv)):
        return load(command)(cfg, **options)


if __name__ == "__main__":
    raise SystemExit(main())
