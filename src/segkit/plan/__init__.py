"""``segkit plan --config DATA.yaml --budget 45m --out configs/NAME.yaml``: a recipe planned from the data, the
machine and a time budget.

Three steps: the data's fingerprint (``segkit.data.fingerprint``: the experiment's ``fingerprint.json``, which the
check stage makes here when it is missing or stale), the machine probe (``segkit.plan.machine``: each candidate
network's training and prediction speed here, at the planned crop size, and what reading the data costs), and the
rules (``segkit.plan.rules``). The output is a config whose ``base`` is the given one and whose every planned key
carries a comment saying why; its budget is in ``train.minutes`` (epochs are derived from the speed measured when
each fold starts), and the printed table of minutes per stage sums to the budget.
"""

from __future__ import annotations

import os
import platform
import time
from datetime import date
from pathlib import Path

import yaml

from segkit.artifacts import atomic
from segkit.bundle.infer import parse_budget
from segkit.compute.device import cpu_has_native_bf16, resolve_amp, resolve_device
from segkit.config import Config
from segkit.config.loader import COMMAND_LINE
from segkit.data import Competition, fingerprint
from segkit.data.folds import fold_numbers, load_folds
from segkit.errors import ConfigError, DataError
from segkit.models import dims_of, learns_objects
from segkit.plan import rules
from segkit.plan.machine import LADDER, probe, reading
from segkit.stages import check


def facts_of(cfg: Config) -> dict:
    """The experiment's fingerprint, made by its check stage unless it is already there and up to date: planning
    again at another budget reads the file instead of every image."""
    check.run(cfg)
    return fingerprint.read(cfg.layout.fingerprint)


def own_tree(cfg: Config) -> dict:
    """The config file's own keys as written (no base, no budget merged)."""
    return (yaml.safe_load(Path(cfg.source).read_text()) or {}) if cfg.source else {}


def given_by(cfg: Config) -> dict:
    """The keys of ``rules.GIVEN`` that the command line or the config file itself sets, outside its budgets (the
    planned config replaces the budgets, ``budget: null``, so a budget's TTA gives way to the file's own), and the
    keys of ``rules.RECIPE`` that the file, its budget or the command line sets (with ``train.epochs``, which loss
    stages were written for)."""
    tree = own_tree(cfg)
    out = {}
    for key in rules.GIVEN:
        section, name = key.split(".")
        if cfg.origins.get(key) == COMMAND_LINE:
            out[key] = getattr(getattr(cfg, section), name)
        elif name in (tree.get(section) or {}):
            out[key] = tree[section][name]
    for key in rules.RECIPE:
        if any(_own(cfg, where) for k, where in cfg.origins.items() if k == key or k.startswith(f"{key}.")):
            value = getattr(cfg.train, key.split(".")[1])
            out[key] = [s.model_dump(exclude_none=True) for s in value] if key == "train.loss_stages" else value
    if out.get("train.loss_stages"):
        out["train.epochs"] = cfg.train.epochs
    return out


def _own(cfg: Config, where: str) -> bool:
    """Whether a key's origin is the config file itself (its budgets included) or the command line, not a base."""
    if where == COMMAND_LINE:
        return True
    return Path(where.split(" (budget ")[0]).resolve() == Path(cfg.source).resolve()


def machine_name(kind: str) -> str:
    if kind == "cuda":
        import torch  # here: only a GPU plan names its GPU

        return f"GPU {torch.cuda.get_device_name(0)}"
    return f"CPU {platform.processor() or platform.machine()}, {os.cpu_count()} cores, " \
           f"{'with' if cpu_has_native_bf16() else 'without'} native bf16"


def render(plan: rules.Plan, base: str, experiment: str, command: str, where: str) -> str:
    """The planned config: its base, then each planned key with the reason beside it."""
    lines = [f"# Planned by `{command}` on {where}, {date.today().isoformat()}.",
             "# Minutes per stage: " + ", ".join(f"{k} {v:.1f}" for k, v in plan.minutes.items())
             + f" (sum {sum(plan.minutes.values()):.1f}).",
             f"base: {base}",
             "budget: null  # this plan is the budget: what the base's budget set and the plan keeps is copied in",
             f"experiment: {experiment}"]
    sections: dict[str, list[rules.Decision]] = {}
    for d in plan.decisions:
        sections.setdefault(d.key.split(".")[0], []).append(d)
    for section, decisions in sections.items():
        if section == "models":
            d = decisions[0]
            lines.append(f"models:  # {d.why}")
            lines += [f"  - {_flow(m)}" for m in d.value]
            continue
        lines.append(f"{section}:")
        for d in decisions:
            lines.append(f"  {d.key.split('.', 1)[1]}: {_flow(d.value)}  # {d.why}")
    lines += ["plan:  # `segkit run` prints each stage's time against these minutes, and warns when it heads past them",
              f"  minutes: {plan.run:.1f}  # the budget less the planning",
              f"  stages: {_flow(plan.stages)}  # the later stages share the rest"]
    return "\n".join(lines) + "\n"


def _flow(value) -> str:
    return yaml.safe_dump(value, default_flow_style=True, sort_keys=False, width=10_000).strip().removesuffix("...") \
        .strip()


def run(cfg: Config, budget: str, out: str, device: str = "auto", force: bool = False) -> int:
    began = time.perf_counter()
    seconds = parse_budget(budget)
    if not seconds:
        raise ConfigError("--budget: give the time the run may take, e.g. 45m or 2h")
    target = Path(out)
    if target.exists() and not force:
        raise DataError(f"--out {target}: exists; give a new file, or --force to replace it")
    if not cfg.source:
        raise ConfigError("plan: --config must be a file (the planned config names it as its base)")
    comp = Competition(cfg.data, seed=cfg.seed)
    facts = facts_of(cfg)
    dev = resolve_device(device, key="--device")
    kind = "cuda" if dev.type == "cuda" else "cpu"
    ladder = LADDER[kind]
    others = [f"{m.name} ({m.arch})" for m in cfg.models if dims_of(m) == 3 or learns_objects(m)]
    if others:  # the ladder is of 2D segmentation networks: the plan cannot cost these
        print(f"plan: note: {', '.join(others)} not planned: the planned recipe trains the ladder's 2D segmentation "
              f"networks instead (a detector's or a 3D network's time is not probed)", flush=True)
    axis = cfg.data.volumes.axis if cfg.data.volumes is not None else None
    # the probe's network sees what the plan will give it: the planned crop, and a volume's planned context
    channels = cfg.data.input_channels if axis is None else \
        cfg.data.channels * (2 * rules.context(facts, axis).value + 1)
    crop = rules.crop_size(facts, rules.working_side(facts, kind, axis), kind).value
    folds = cfg.layout.folds_file
    existing = len(fold_numbers(load_folds(cfg, comp))) if folds.exists() else None  # kept: it is shared, committed
    batch = rules.batch_size(kind, rules.fold_images(len(comp.train_ids), existing), crop).value
    print(f"plan: probing {len(ladder)} networks at {crop} px, batch {batch}, on {dev}", flush=True)
    # trained as the run will train it: the base's precision, memory format, optimizer and EMA at the planned batch
    tcfg = cfg.train.model_copy(update={"batch_size": batch, "amp": resolve_amp(cfg.train.amp, dev)})
    speeds = probe(ladder, channels, len(cfg.data.classes), crop, tcfg, dev, cfg.predict.channels_last)
    for name, s in speeds.items():
        print(f"plan:   {name}: {s.train * 1000:.1f} ms per training image, {s.predict * 1000:.1f} ms per "
              f"prediction ({'float32' if s.precision == 'none' else s.precision})", flush=True)
    given = given_by(cfg)
    read = reading(comp, comp.train_ids, crop, rules.augment(facts, given).value)
    print(f"plan:   reading the data: {read.train * 1000:.1f} ms per training crop, "
          f"{read.pixel * 1e9:.0f} ms per native megapixel", flush=True)
    spent = time.perf_counter() - began
    planned = rules.plan(facts, speeds, ladder, seconds, kind, len(comp.test_ids), cfg.metric, cfg.data.mode, spent,
                         folds_file=existing, axis=axis, given=given,
                         loss_params=cfg.train.loss_params, repredict_oof=cfg.predict.repredict_oof, reading=read,
                         train_images=len(comp.train_ids))
    tree = own_tree(cfg)
    budgets = tree.get("budgets") or {}
    planned.decisions += rules.budget_kept(cfg.budget, budgets.get(cfg.budget), {d.key for d in planned.decisions})
    base = os.path.relpath(Path(cfg.source).resolve(), target.resolve().parent)
    command = f"segkit plan --config {cfg.source} --budget {budget}"
    text = render(planned, base, f"{tree.get('experiment', cfg.experiment)}_plan", command, machine_name(kind))
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic.atomic_path(target) as tmp:
        tmp.write_text(text)
    width = max(len(k) for k in planned.minutes)
    print("plan: minutes per stage")
    for k, v in planned.minutes.items():
        print(f"  {k:<{width}}  {v:7.1f}")
    print(f"  {'total':<{width}}  {sum(planned.minutes.values()):7.1f}  (budget {seconds / 60:.1f})")
    print(f"plan: wrote {target}: {planned.model}, about {planned.epochs} epochs a fold; run it with "
          f"`segkit run --config {target}`")
    return 0


__all__ = ["render", "run"]
