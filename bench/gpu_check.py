"""The GPU path in one command, one table: training steps, the data pipeline, D4 TTA, and a slice of the TGS gpu
recipe run end to end (train, predict, ensemble, tune, submit) on CUDA.

    bash bench/gpu_prepare.sh                                  # on a CPU machine: wheels + data, sizes printed
    bash bench/gpu_check.sh --out DIR                          # on the GPU machine, under 8 minutes
    .venv/bin/python bench/gpu_check.py --dry-run --out DIR    # anywhere: tiny sizes on the CPU, seconds

Every row is appended to ``DIR/gpu_check.md`` as soon as it is measured, everything printed goes to
``DIR/gpu_check.log`` and the recipe slice logs to ``DIR/slice.log``, so a command cut off still returns what it
measured; a section that fails is a line of the table and the next one runs. ``--budget-seconds`` bounds the whole
check: a section that no longer fits is listed as skipped instead of being cut off half-way.

1. Training step of every network of the TGS and DSB gpu budgets at the budget's batch and input size: a bare
   fp32 loop (``model(x)``, BCE + Dice, ``backward``, AdamW) against segkit's loop (``segkit.stages.train.loop``, the
   recipe's loss, schedule and EMA) in bf16 + channels_last, and (last, as time allows) under ``torch.compile``;
   images/s and peak GPU memory. Synthetic batches already on the device: the loader is measured on its own.
2. The data pipeline alone, as training builds it (decode, augment, crop, collate, pinned memory) with the budget's
   workers (at most the machine's cores), over the carried data subsets, against section 1's images/s.
3. D4 TTA of the TGS network at 128 and 256 px: segkit's batched views against ttach's 8 sequential passes, both
   in bf16; images/s and the largest difference of their outputs.
4. The TGS gpu budget's first model on the TGS subset for a few epochs, every stage through ``segkit run``; fold
   0's validation score and seconds an epoch, and the whole 5-fold, 2-model recipe projected from them.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))  # segkit from this checkout: the GPU machine runs it uninstalled

import gpu_data  # noqa: E402  (bench/, beside this file)
import torch  # noqa: E402

import segkit  # noqa: E402,F401  (import fix for torchvision before smp)
from segkit.compute.device import amp_dtype, depthwise_float32_when_training, grad_scaler, resolve_amp  # noqa: E402
from segkit.compute.distributed import World  # noqa: E402
from segkit.compute.sizing import usable_cores  # noqa: E402
from segkit.config import load_config  # noqa: E402
from segkit.data import Competition  # noqa: E402
from segkit.inference.tta import TTAPredictor  # noqa: E402
from segkit.losses import LossSchedule  # noqa: E402
from segkit.models import build_model  # noqa: E402
from segkit.optim import build_optimizer, build_schedule  # noqa: E402
from segkit.stages.train.data import TrainData  # noqa: E402
from segkit.stages.train.ema import build_ema  # noqa: E402
from segkit.stages.train.loop import Stepper, train_epoch  # noqa: E402

CONFIGS = REPO / "configs"
RECIPES = ("tgs_salt", "dsb2018_nuclei")
TGS_TILE = 101
# The full TGS recipe, for the projection: 4000 labelled tiles, 10 % held out, 5 folds; two models; round 0 and
# one pseudo round train every fold again.
TGS_IMAGES, TGS_TRAIN_PER_FOLD, TGS_ROUNDS = 4000, 4000 * 0.9 * 0.8, 2


class Sizes:
    """What the check runs at: the budgets' own sizes on a GPU, tiny ones for the dry run."""

    def __init__(self, dry: bool):
        self.dry = dry
        self.warmup, self.steps = (1, 2) if dry else (5, 20)
        self.compile_warmup = 3
        self.tta_sizes, self.tta_batch, self.tta_rounds = ((32, 64), 2, 1) if dry else ((128, 256), 32, 10)
        self.loader_batches = 4 if dry else 60
        self.epochs = 3  # divides the gpu budget's 3 LR cycles

    def step_input(self, recipe: str, tcfg) -> tuple[int, int]:
        """(batch, px) of a training step: the budget's batch and crop (or TGS's tile padded to the stride)."""
        if self.dry:
            return 2, 64
        return tcfg.batch_size, tcfg.crop_size or math.ceil(TGS_TILE / tcfg.pad_to) * tcfg.pad_to


class Report:
    """The table, written as it grows, and the same lines on stdout."""

    def __init__(self, out: Path):
        out.mkdir(parents=True, exist_ok=True)
        self.path = out / "gpu_check.md"
        self.path.write_text("")

    def line(self, text: str = "") -> None:
        print(text, flush=True)
        with self.path.open("a") as f:
            f.write(text + "\n")

    def table(self, title: str, columns: list[str]) -> None:
        self.line(f"\n### {title}\n")
        self.line("| " + " | ".join(columns) + " |")
        self.line("|" + "|".join("---" if i == 0 else "---:" for i in range(len(columns))) + "|")

    def row(self, *cells) -> None:
        self.line("| " + " | ".join(str(c) for c in cells) + " |")


class Clock:
    def __init__(self, budget: float):
        self.began, self.budget = time.perf_counter(), budget

    def left(self) -> float:
        return self.budget - (time.perf_counter() - self.began)


def rate(x: float) -> str:
    """Images/s to three significant figures (a dry run on a busy CPU gives well under one)."""
    return f"{x:.0f}" if x >= 100 else f"{x:.3g}"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak(device: torch.device) -> str:
    return f"{torch.cuda.max_memory_allocated(device) / 2**30:.2f}" if device.type == "cuda" else "-"


def environment(device: torch.device, dry: bool) -> list[str]:
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                                text=True, timeout=10).stdout.strip() or "-"
    except (OSError, subprocess.SubprocessError):
        commit = "-"
    lines = [f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; segkit {commit}; "
             f"{'dry run (tiny sizes, CPU)' if dry else 'full sizes'}",
             f"- python {platform.python_version()}, torch {torch.__version__}, CUDA {torch.version.cuda}, "
             f"cuDNN {torch.backends.cudnn.version()}; {usable_cores()} cores"]
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        lines.append(f"- GPU: {p.name}, {p.total_memory / 2**30:.0f} GiB, {p.multi_processor_count} SMs")
    else:
        from segkit.compute.device import cpu_has_native_bf16

        lines.append(f"- CPU: {platform.processor() or platform.machine()}, native bf16: {cpu_has_native_bf16()}")
    return lines


def networks(device: torch.device):
    """(recipe, config, model config) of every network of the TGS and DSB gpu budgets."""
    for recipe in RECIPES:
        cfg = load_config(CONFIGS / f"{recipe}.yaml", ["budget=gpu", f"device={device.type}"])
        for m in cfg.models:
            yield recipe, cfg, m


def synthetic_batches(n: int, batch: int, size: int, channels: int, device: torch.device,
                      channels_last: bool) -> list[dict]:
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(n):
        x = torch.randn(batch, channels, size, size, generator=g).to(device)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        m = (torch.rand(batch, 1, size, size, generator=g) > 0.7).float().to(device)
        out.append({"image": x, "mask": m, "has_mask": m.amax((2, 3)), "id": [str(i) for i in range(batch)],
                    "size": torch.tensor([[size, size]] * batch)})
    return out


def bare_loop(model: torch.nn.Module, batches: list[dict]) -> None:
    """The loop a notebook writes: fp32, BCE + soft Dice, AdamW."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.train()
    for b in batches:
        logits = model(b["image"])
        p = torch.sigmoid(logits)
        dice = 1 - (2 * (p * b["mask"]).sum() + 1) / (p.sum() + b["mask"].sum() + 1)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, b["mask"]) + dice
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)


def segkit_stepper(cfg, m, model: torch.nn.Module, device: torch.device, n_steps: int, compile: bool):
    """segkit's training step for the recipe's model ``m``: its loss (first stage), optimizer, schedule and EMA,
    in the precision ``amp: auto`` picks here, channels_last."""
    tcfg = cfg.train_for(m).model_copy(update={"amp": resolve_amp("auto", device), "channels_last": True,
                                               "progress": False})
    model = model.to(memory_format=torch.channels_last)
    if device.type == "cpu" and amp_dtype(tcfg.amp) == torch.bfloat16:
        depthwise_float32_when_training(model)
    optimizer = build_optimizer(model, tcfg)
    schedule = build_schedule(optimizer, tcfg, n_steps, "max")
    losses = LossSchedule(tcfg, cfg.data.mode, len(cfg.data.classes), m.aux_weight if m.aux_head else 0.0)
    forward = torch.compile(model) if compile else model
    stepper = Stepper(model, forward, optimizer, schedule, grad_scaler(device, tcfg.amp), build_ema(model, tcfg.ema),
                      tcfg, device, f"models[{m.name}]")
    loss_fn = losses.to(device).for_epoch(1)

    def run(batches: list[dict]) -> None:
        train_epoch(stepper, batches, loss_fn, 1, progress=False)

    return run, tcfg.amp


def timed_rate(run, warm: list[dict], timed: list[dict], device: torch.device) -> tuple[float, str]:
    """(images/s over ``timed`` after running ``warm``, peak GPU GiB)."""
    reset_peak(device)
    run(warm)
    sync(device)
    began = time.perf_counter()
    run(timed)
    sync(device)
    images = sum(len(b["id"]) for b in timed)
    return images / (time.perf_counter() - began), peak(device)


def build(cfg, m, device: torch.device) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(m, cfg.data.input_channels, cfg.data.mode, len(cfg.data.classes), pretrained=False).to(device)


def section_steps(report: Report, sizes: Sizes, device: torch.device, clock: Clock, compiled: bool) -> dict:
    """Section 1 (or, ``compiled``, its torch.compile rows); returns {(recipe, model): segkit images/s}."""
    title = "1b. training step under torch.compile (segkit's loop)" if compiled else "1. training step"
    report.table(title, ["recipe", "network", "batch x px", "loop", "images/s", "peak GPU GiB", "x bare fp32"])
    rates: dict = {}
    first_of: set[str] = set()
    for recipe, cfg, m in networks(device):
        if compiled and recipe in first_of:
            continue  # compiling takes about a minute a network: the first network of each recipe stands for it
        first_of.add(recipe)
        tcfg = cfg.train_for(m)
        batch, px = sizes.step_input(recipe, tcfg)
        net = f"{m.arch} {m.encoder}" + (" scSE" if m.decoder_attention else "")
        if compiled and sizes.dry:
            report.row(recipe, net, f"{batch} x {px}", "segkit + compile", "skipped: dry run", "-", "-")
            continue
        if clock.left() < (150 if compiled else 30):
            report.row(recipe, net, f"{batch} x {px}", "-", f"skipped: {clock.left():.0f} s of the budget left",
                       "-", "-")
            continue
        try:
            rates[(recipe, m.name)] = network_rows(report, sizes, device, cfg, m, recipe, net, batch, px, compiled)
        except Exception as err:  # noqa: BLE001  (one network's failure is its row; the others still run)
            traceback.print_exc()
            report.row(recipe, net, f"{batch} x {px}", "-", f"failed: {type(err).__name__}", "-", "-")
        reset_peak(device)
    return rates


def network_rows(report: Report, sizes: Sizes, device: torch.device, cfg, m, recipe: str, net: str, batch: int,
                 px: int, compiled: bool) -> float:
    """The bare fp32 loop's row (left out under ``compiled``) and segkit's; returns segkit's images/s."""
    channels = cfg.data.input_channels
    plain = synthetic_batches(sizes.warmup + sizes.steps, batch, px, channels, device, channels_last=False)
    bare = build(cfg, m, device)
    bare_rate, bare_peak = timed_rate(lambda b: bare_loop(bare, b), plain[:sizes.warmup], plain[sizes.warmup:],
                                      device)
    del plain
    if not compiled:
        report.row(recipe, net, f"{batch} x {px}", "bare fp32", rate(bare_rate), bare_peak, "1.00")
    cl = synthetic_batches(sizes.warmup + sizes.steps, batch, px, channels, device, channels_last=True)
    warm = cl[:sizes.compile_warmup] if compiled else cl[:sizes.warmup]  # compiling happens in the warm-up
    run, amp = segkit_stepper(cfg, m, build(cfg, m, device), device, len(cl), compiled)
    ours, top = timed_rate(run, warm, cl[sizes.warmup:], device)
    precision = "float32" if amp == "none" else amp
    loop = f"segkit {precision} + channels_last" + (" + compile" if compiled else "")
    report.row(recipe, net, f"{batch} x {px}", loop, rate(ours), top, f"{ours / bare_rate:.2f}")
    return ours


def section_loader(report: Report, sizes: Sizes, device: torch.device, data: Path, rates: dict) -> None:
    report.table("2. data pipeline alone (decode + augment + collate)", [
        "recipe", "images", "workers", "batch", "first batch s", "images/s", "step images/s", "loader / step"])
    for recipe, folder in (("tgs_salt", data / "tgs"), ("dsb2018_nuclei", data / "dsb")):
        if not folder.exists():
            report.row(recipe, "no data subset here (bench/gpu_prepare.sh)", "-", "-", "-", "-", "-", "-")
            continue
        cfg = load_config(CONFIGS / f"{recipe}.yaml", ["budget=gpu", f"data.root={folder}", "data.holdout_fraction=0",
                                                      f"device={device.type}"])
        m = cfg.models[0]
        workers = min(cfg.train_for(m).workers, usable_cores())  # the budget's 14 on a 16-core GPU machine
        tcfg = cfg.train_for(m).model_copy(update={"workers": workers, "pin_memory": device.type == "cuda"})
        if sizes.dry:
            tcfg = tcfg.model_copy(update={"batch_size": 4})
        comp = Competition(cfg.data, seed=cfg.seed)
        train = TrainData(comp, tcfg, comp.train_ids, seed=0, world=World())
        began = time.perf_counter()
        first = None
        images = batches = 0
        epoch = 1
        while batches < sizes.loader_batches:
            for b in train.loader(epoch):  # a new loader each epoch, as training makes it (its workers restart)
                if first is None:
                    first = time.perf_counter() - began
                    began = time.perf_counter()
                    continue
                images += len(b["id"])
                batches += 1
                if batches >= sizes.loader_batches:
                    break
            epoch += 1
        loaded = images / (time.perf_counter() - began)
        step = rates.get((recipe, m.name))
        ratio = f"{loaded / step:.2f}" if step else "-"
        report.row(recipe, len(comp.train_ids), workers, tcfg.batch_size, f"{first:.1f}", rate(loaded),
                   rate(step) if step else "-", ratio)


def section_tta(report: Report, sizes: Sizes, device: torch.device) -> None:
    report.table("3. D4 TTA, 8 views (TGS network, inference)", [
        "px", "batch", "variant", "images/s", "x ttach", "max abs diff vs ttach", "max abs output"])
    recipe, cfg, m = next(networks(device))
    model = build(cfg, m, device).eval().to(memory_format=torch.channels_last)
    amp = resolve_amp("auto", device, "predict.amp")
    dtype = amp_dtype(amp)
    try:
        import ttach
    except ImportError:
        ttach = None
    for px in sizes.tta_sizes:
        x = torch.randn(sizes.tta_batch, cfg.data.input_channels, px, px, device=device)
        ours = TTAPredictor(model, tta="d4", merge="mean", activation=None, amp=amp, channels_last=True)
        variants = {f"segkit, {ours.chunk_for(device, 8)} views a call": lambda: ours(x)}
        if ttach is not None:
            wrapped = ttach.SegmentationTTAWrapper(model, ttach.aliases.d4_transform(), merge_mode="mean")

            def theirs():
                with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                    return wrapped(x.contiguous(memory_format=torch.channels_last)).float()

            variants["ttach, 8 sequential passes"] = theirs
        outputs, rates = {}, {}
        with torch.inference_mode():
            for name, fn in variants.items():
                outputs[name] = fn()  # the warm-up call (cuDNN autotune) gives the output compared below
                times = []
                for _ in range(sizes.tta_rounds):
                    sync(device)
                    began = time.perf_counter()
                    fn()
                    sync(device)
                    times.append(time.perf_counter() - began)
                rates[name] = sizes.tta_batch / statistics.median(times)
        reference = "ttach, 8 sequential passes"
        for name in variants:
            if reference in outputs:
                diff = f"{(outputs[name] - outputs[reference]).abs().max().item():.2e}"
                times_ttach = f"{rates[name] / rates[reference]:.2f}"
            else:
                diff = times_ttach = "ttach not installed"
            report.row(px, sizes.tta_batch, name, rate(rates[name]), times_ttach, diff,
                       f"{outputs[name].abs().max().item():.1f}")


def slice_overrides(sizes: Sizes, device: torch.device, data: Path, work: Path) -> list[str]:
    cfg = load_config(CONFIGS / "tgs_salt.yaml", ["budget=gpu"])
    first = cfg.models[0].model_dump(mode="json", exclude_defaults=True)
    overrides = ["budget=gpu", f"data.root={data}", f"paths.runs={work / 'runs'}", f"paths.folds={work / 'folds'}",
                 f"paths.submissions={work / 'submissions'}", f"device={device.type}", f"train.epochs={sizes.epochs}",
                 "pseudo.rounds=0", f"models=[{json.dumps(first)}]"]
    if sizes.dry:
        overrides += ["train.batch_size=4", "train.max_steps_per_epoch=2", "train.workers=0", "predict.workers=0",
                      "train.pin_memory=false", "predict.batch_size=8", "ensemble.methods=[mean]"]
    return overrides


def section_slice(report: Report, sizes: Sizes, device: torch.device, data: Path, out: Path, work: Path,
                  seconds: float, rates: dict) -> None:
    report.table("4. TGS gpu budget, first model, a few epochs, end to end", ["what", "value"])
    if seconds < 60:
        report.row("skipped", f"{seconds:.0f} s of the budget left")
        return
    overrides = slice_overrides(sizes, device, data, work)
    command = [sys.executable, "-m", "segkit", "run", "--config", str(CONFIGS / "tgs_salt.yaml"), *overrides]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")]),
               SEGKIT_PROGRESS="0")
    log = out / "slice.log"
    began = time.perf_counter()
    with log.open("w") as f:
        f.write(" ".join(command) + "\n")
        f.flush()
        try:
            rc = subprocess.run(command, stdout=f, stderr=subprocess.STDOUT, env=env, timeout=seconds).returncode
        except subprocess.TimeoutExpired:
            rc = "cut off"
    wall = time.perf_counter() - began
    text = log.read_text()
    report.row("command", f"`segkit run --config configs/tgs_salt.yaml {' '.join(overrides[1:])}`"
               .replace(str(work), "WORK").replace(str(data), "DATA").replace("|", "\\|"))
    report.row("exit", f"{rc} after {wall:.0f} s (limit {seconds:.0f} s)")
    exp = load_config(CONFIGS / "tgs_salt.yaml", overrides)
    model = exp.models[0].name
    summary_path = exp.layout.fold(model, 0).summary
    if summary_path.exists():
        summary = json.loads(summary_path.read_text())
        report.row("fold 0", f"{exp.metric} {summary['score']:.4f}, dice {summary['dice']:.4f} after "
                   f"{summary['epochs']} epochs ({summary['train_images']} training images)")
        import pandas as pd

        history = pd.read_csv(exp.layout.fold(model, 0).metrics)
        steady = history["seconds"].iloc[1:] if len(history) > 1 else history["seconds"]
        per_epoch = float(steady.mean())
        report.row("fold 0 seconds an epoch", f"{per_epoch:.1f} (epochs 2 on: the first has cuDNN's autotuning)")
        trained = sum(json.loads(exp.layout.fold(model, k).summary.read_text())["train_seconds"]
                      for k in range(exp.folds.n_splits) if exp.layout.fold(model, k).summary.exists())
        full_epochs = load_config(CONFIGS / "tgs_salt.yaml", ["budget=gpu"]).train.epochs
        scale = TGS_TRAIN_PER_FOLD / summary["train_images"]
        models = load_config(CONFIGS / "tgs_salt.yaml", ["budget=gpu"]).models
        lite0 = rates.get(("tgs_salt", models[0].name))
        relative = [lite0 / rates[("tgs_salt", mm.name)] if lite0 and ("tgs_salt", mm.name) in rates else 1.0
                    for mm in models]
        train_min = per_epoch * scale * full_epochs * 5 * sum(relative) * TGS_ROUNDS / 60
        rest_min = max(wall - trained, 0) * (TGS_IMAGES / max(len(Competition(exp.data).train_ids), 1)) \
            * len(models) * TGS_ROUNDS / 60
        dry = " (dry run: capped epochs of tiny batches, no projection)" if sizes.dry else ""
        report.row("projected full recipe", f"{train_min + rest_min:.0f} min{dry}: training {train_min:.0f} min "
                   f"(fold 0's epoch x {scale:.1f} images x {full_epochs} epochs x 5 folds x "
                   f"{' + '.join(f'{r:.2f}' for r in relative)} (the models' step times relative to the first) x "
                   f"{TGS_ROUNDS} rounds) + the other stages {rest_min:.0f} min (this slice's, scaled to 4000 "
                   f"images, {len(models)} models, {TGS_ROUNDS} rounds)")
    else:
        report.row("fold 0", "no summary: see slice.log")
    for line in text.splitlines():
        if re.search(r"\bCV \w+: ", line) or "submission" in line.lower() and "wrote" in line.lower():
            report.row("log", line.strip().replace("|", "\\|"))


class Tee:
    """stdout / stderr copied to the check's log as they are written, so a cut-off command's log comes back."""

    def __init__(self, stream, log):
        self.stream, self.log = stream, log

    def write(self, text: str) -> int:
        self.log.write(text)
        self.log.flush()
        return self.stream.write(text)

    def flush(self) -> None:
        self.stream.flush()

    def __getattr__(self, name):
        return getattr(self.stream, name)


def guarded(report: Report, title: str, fn, *args, default=None):
    """Run one section; a failure is a line of the table (its traceback in the log) and the next section runs:
    the GPU minutes of the sections after it are not lost with it."""
    try:
        return fn(*args)
    except Exception as err:  # noqa: BLE001  (any failure of a section is reported, not raised)
        traceback.print_exc()
        report.line(f"\n**{title} failed**: {type(err).__name__}: {str(err)[:300]}")
        return default


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True, help="folder for gpu_check.md, gpu_check.log and slice.log")
    ap.add_argument("--data", type=Path, default=REPO / ".gpu_data", help="bench/gpu_prepare.sh's data subsets")
    ap.add_argument("--work", type=Path, default=None, help="the slice's runs (default: a temporary folder)")
    ap.add_argument("--dry-run", action="store_true", help="tiny sizes on the CPU, synthetic TGS-shaped data")
    ap.add_argument("--budget-seconds", type=float, default=450)
    ap.add_argument("--slice-seconds", type=float, default=200)
    args = ap.parse_args()

    dry = args.dry_run
    device = torch.device("cpu") if dry or not torch.cuda.is_available() else torch.device("cuda", 0)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    elif not dry:
        raise SystemExit("no CUDA GPU here: run with --dry-run")
    sizes, clock = Sizes(dry), Clock(args.budget_seconds)
    report = Report(args.out)
    log = (args.out / "gpu_check.log").open("w")
    sys.stdout, sys.stderr = Tee(sys.stdout, log), Tee(sys.stderr, log)
    work = args.work or Path(tempfile.mkdtemp(prefix="gpu_check_"))
    data = args.data
    if dry:
        data = work / "data"
        gpu_data.synthetic_tgs(data / "tgs")
    report.line("## segkit GPU check")
    for line in environment(device, dry):
        report.line(line)
    rates = guarded(report, "1. training step", section_steps, report, sizes, device, clock, False, default={})
    guarded(report, "2. data pipeline", section_loader, report, sizes, device, data, rates)
    guarded(report, "3. D4 TTA", section_tta, report, sizes, device)
    guarded(report, "4. recipe slice", section_slice, report, sizes, device, data / "tgs", args.out, work,
            min(args.slice_seconds, clock.left() - 30), rates)
    guarded(report, "1b. torch.compile", section_steps, report, sizes, device, clock, True)
    report.line(f"\nchecked in {time.perf_counter() - clock.began:.0f} s")


if __name__ == "__main__":
    main()
