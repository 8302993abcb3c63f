"""One model on one fold, start to finish: build, train epoch by epoch (validating, checkpointing), then write the
fold's OOF probabilities from the best checkpoint.

Outputs in ``<run_dir>/<model>/fold<k>/`` (``segkit.artifacts.layout.FoldPaths``): ``metrics.csv`` (one row per epoch),
``last.pt``, ``best.pt``, ``snapshot<c>.pt`` (end of each LR cycle), ``summary.json``, the ``oof/`` probability store
and the fold's stamp. A fold is a unit of work (``segkit.artifacts.freshness``): finished and stamped with this config's
identity, it is skipped; killed, it resumes from ``last.pt``; finished under another config, it is refused with
what changed (a finished fold is never retrained silently).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Optional

import pandas as pd
import torch

from segkit.artifacts import atomic
from segkit.artifacts.freshness import FRESH, STALE, UNSTAMPED, Unit, differences, digest
from segkit.artifacts.layout import FoldPaths
from segkit.artifacts.probs import ProbWriter, manifest
from segkit.compute import distributed
from segkit.compute.device import grad_scaler, resolve_amp, resolve_device, training_layout
from segkit.compute.sizing import loader_workers
from segkit.config.schema import Config, ModelConfig, TrainConfig
from segkit.data import Competition
from segkit.data.folds import fold_ids, load_folds
from segkit.errors import ConfigError, SegkitError
from segkit.losses import LossSchedule
from segkit.metrics import get_metric
from segkit.models import build_model, check_output_size, checkpoint, dims_of, input_multiple, learns_objects
from segkit.models.weights import looks_like_path
from segkit.optim import build_optimizer, build_schedule, cycle_end_epochs, group_lrs
from segkit.stages.train import budget
from segkit.stages.train.averaging import Averaging, average_fold, remove_ingredients
from segkit.stages.train.data import ExtraTrainData, TrainData, pseudo_train_data
from segkit.stages.train.ema import build_ema
from segkit.stages.train.loop import Stepper, train_epoch
from segkit.stages.train.seeding import derive_seed, rng_state, seed_everything, set_deterministic, set_rng_state
from segkit.stages.train.validate import ImageValidation, Scores
from segkit.stages.train.volumetric import fold_volumes

HISTORY_COLUMNS = ["epoch", "lr", "encoder_lr", "train_loss", "val_loss", "dice", "iou", "score", "loss_terms",
                   "steps", "skipped", "seconds"]
MONITORS = {"score": "max", "dice": "max", "iou": "max", "val_loss": "min"}


# What a fold's identity may change without changing what the fold computes, so that a resume or a finished fold
# accepts the change: train keys that only affect speed or bookkeeping, and the model's own train overrides
# (already merged into the train section).
FREE_TRAIN_KEYS = frozenset({"workers", "pin_memory", "threads", "progress", "val_batch_size", "keep", "compile"})
FREE_MODEL_KEYS = frozenset({"train"})


def deciding(identity: dict) -> dict:
    """The part of a fold's identity that decides its outputs: what its stamp records and a resume compares.
    Encoder weights from a file count by the file's name: its folder differs from machine to machine."""
    out = dict(identity)
    out["model"] = {k: v for k, v in identity["model"].items() if k not in FREE_MODEL_KEYS}
    weights = out["model"].get("encoder_weights")
    if weights is not None and looks_like_path(weights):
        out["model"]["encoder_weights"] = Path(weights).name
    out["train"] = {k: v for k, v in identity["train"].items() if k not in FREE_TRAIN_KEYS}
    return out


def identity_changes(saved: dict, current: dict) -> list[str]:
    """What differs between two fold identities in a way that changes what the fold computes."""
    return differences(deciding(saved), deciding(current))


def fold_unit(where: str, paths: FoldPaths, identity: dict, val_ids: list[str], extra) -> Unit:
    """A fold as a unit of work: done when best.pt, summary.json and the OOF store are there and its stamp holds
    this identity, these validation ids and these pseudo labels."""
    inputs = {**deciding(identity), "val_ids": digest(sorted(val_ids)),
              "pseudo_labels": extra.identity if extra is not None else None}
    return Unit(where, paths.stamp, [paths.best, paths.summary, manifest(paths.oof)], inputs,
                marker=manifest(paths.oof))


def _explain(changes: list[str]) -> str:
    """The first few changes, with the two that are no config key said in words."""
    named = []
    for c in changes:
        if c.startswith("val_ids"):
            c = "its validation images (the fold file changed)"
        elif c.startswith("pseudo_labels"):
            c = "its pseudo labels (selected again)"
        named.append(c)
    return "; ".join(named[:3])


def monitor_of(cfg: Config, tcfg: TrainConfig, metric) -> tuple[str, str]:
    """(metrics column, 'max' | 'min') that picks best.pt."""
    name = tcfg.monitor or "score"
    name = {"loss": "val_loss", cfg.metric: "score"}.get(name, name)
    if name not in MONITORS:
        raise ConfigError(f"train.monitor: {tcfg.monitor!r}; use score (= {cfg.metric}), dice, iou or loss")
    if name == "score" and not getattr(metric, "higher_is_better", True):
        return name, "min"
    return name, MONITORS[name]


def _better(value: float, best: Optional[float], mode: str) -> bool:
    if best is None or (math.isnan(best) and not math.isnan(value)):
        return True
    if math.isnan(value):
        return False
    return value > best if mode == "max" else value < best


def _fmt(x: float) -> str:
    return "nan" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.4f}"


def train_fold(
    cfg: Config,
    model_cfg: ModelConfig,
    fold: int,
    out_dir: Optional[Path] = None,
    extra: Optional[ExtraTrainData] = None,
) -> dict:
    """Train (or resume, or skip) one fold; returns its summary (best epoch, scores). ``extra``: images mixed
    into every batch (default: the pseudo labels of ``pseudo.round``,
    ``segkit.stages.train.data.pseudo_train_data``)."""
    tcfg = cfg.train_for(model_cfg)
    paths = FoldPaths(Path(out_dir)) if out_dir else cfg.layout.fold(model_cfg.name, fold)
    where = f"models[{model_cfg.name}] fold {fold}"
    comp = Competition(cfg.data, seed=cfg.seed)
    train_ids, val_ids = fold_ids(load_folds(cfg, comp), fold)
    if not train_ids or not val_ids:
        raise ConfigError(f"{where}: {len(train_ids)} training and {len(val_ids)} validation images")
    mode, classes = comp.mode, comp.classes
    if extra is None:  # pseudo-labelled test images of the config's round (pseudo.round >= 1), if any
        extra = pseudo_train_data(cfg, comp, fold)
    # The identity keeps the config's own words (amp: auto), so a fold resumed on another machine is not refused
    # for a precision that machine chose; everything that runs uses the resolved one.
    identity = {"model": model_cfg.model_dump(mode="json"), "train": tcfg.model_dump(mode="json"),
                "seed": cfg.seed, "metric": cfg.metric, "mode": mode, "classes": classes,
                "extra": {"images": len(extra.ids), "share": extra.share} if extra is not None else None}
    if cfg.data.volumes is not None and cfg.data.volumes.train_axes is not None:
        identity["train_axes"] = cfg.data.volumes.training_axes  # the slices a fold trains on
    unit = fold_unit(where, paths, identity, val_ids, extra)
    status = unit.status()
    if status in (FRESH, UNSTAMPED):
        note = "" if status == FRESH else "no stamp: made before stamps were kept, not checked against the config"
        print(unit.kept(note), flush=True)
        return json.loads(paths.summary.read_text())
    if status == STALE:
        raise SegkitError(f"{where}: {paths.dir} was trained under another config ({_explain(unit.changes())}); "
                          f"restore the config, or delete {paths.dir} to train this fold afresh")
    device = resolve_device(cfg.device)
    tcfg = tcfg.model_copy(update={"amp": resolve_amp(tcfg.amp, device),
                                   "workers": loader_workers(tcfg.workers, device)})
    world = distributed.setup(device)
    set_deterministic(tcfg.deterministic)
    if tcfg.threads:
        torch.set_num_threads(tcfg.threads)
    if device.type == "cuda" and not tcfg.deterministic:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    base_seed = derive_seed(cfg.seed, fold)
    seed_everything(base_seed)  # the same initial weights for every run of this fold

    saved = checkpoint.load(paths.last) if paths.last.exists() else None
    dims = dims_of(model_cfg)
    # a 3D network's channels are the modalities; a 2.5D one's also hold the neighbouring slices (data.context)
    channels = cfg.data.channels if dims == 3 else cfg.data.input_channels
    multiple = input_multiple(model_cfg, tcfg.pad_to)
    model = build_model(model_cfg, channels, mode, len(classes), pretrained=saved is None).to(device)
    check_output_size(model, channels, multiple, f"models[{model_cfg.name}]", dims)
    model = training_layout(model, tcfg.channels_last, tcfg.amp, device, dims)
    model = distributed.sync_batchnorm(model, world, tcfg.sync_bn, device)
    metric = get_metric(cfg.metric, key="metric")
    scoring = Scores(metric, tcfg.threshold)
    volumetric_meta = None
    if dims == 3:
        if extra is not None:
            raise ConfigError(f"{where}: pseudo labels (pseudo.round) train 2D and 2.5D models only")
        data, validation, volumetric_meta = fold_volumes(cfg, comp, model_cfg, tcfg, train_ids, val_ids, base_seed,
                                                         world, scoring, where)
    else:
        data = TrainData(comp, tcfg, comp.training_slices(train_ids), base_seed, world, extra,
                         objects=learns_objects(model_cfg))
        validation = ImageValidation.of(comp, tcfg, val_ids, scoring, world)
    aux_weight = model_cfg.aux_weight if model_cfg.aux_head else 0.0
    losses = LossSchedule(tcfg, mode, len(classes), aux_weight).to(device)  # by epoch, whatever their number
    if tcfg.minutes is not None:  # the epochs that fit the minutes here (or those a resumed fold recorded)
        tcfg = tcfg.model_copy(update={"epochs": _epochs_in_minutes(model, data, validation, tcfg, losses, device,
                                                                    world, saved, where)})
    monitor, monitor_mode = monitor_of(cfg, tcfg, metric)
    optimizer = build_optimizer(model, tcfg)
    schedule = build_schedule(optimizer, tcfg, math.ceil(len(data) / tcfg.accumulate), monitor_mode)
    scaler = grad_scaler(device, tcfg.amp)
    ema = build_ema(model, tcfg.ema)
    snapshots = cycle_end_epochs(tcfg) if "snapshots" in tcfg.keep else []
    averaging = Averaging.of(tcfg)

    history: list[dict] = []
    best_value: Optional[float] = None
    start = 1
    if saved is not None:
        # The checkpoint's identity says what config it was trained under; the fold's stamp (when there is one)
        # adds the validation images and the pseudo labels it trained with.
        changes = identity_changes(saved["train_state"]["identity"], identity)
        if not changes and unit.saved() is not None and not unit.resumable():
            changes = unit.changes()
        if changes:
            raise SegkitError(f"{where}: {paths.last} was written under another config ({_explain(changes)}); "
                              f"restore the config, or delete {paths.dir} to train this fold afresh")
        state = saved["train_state"]
        model.load_state_dict(state["model"] if state["model"] is not None else saved["model"])
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        scaler.load_state_dict(state["scaler"])
        if ema is not None:
            ema.load_state_dict(state["ema"])
        set_rng_state(state["rng"])
        history, best_value, start = state["history"], state["best_value"], saved["epoch"] + 1
        if world.is_main:
            print(f"{where}: resuming after epoch {saved['epoch']} from {paths.last}", flush=True)
    if world.is_main:
        unit.begin()
    distributed.barrier(world)

    forward_model = distributed.wrap(model, world, device)
    if tcfg.compile:
        forward_model = torch.compile(forward_model)
    stepper = Stepper(model, forward_model, optimizer, schedule, scaler, ema, tcfg, device, where)
    eval_model = ema.module if ema is not None else model

    def payload(epoch: int, scores: dict) -> dict:
        return checkpoint.weights_payload(eval_model.state_dict(), identity["model"], mode, classes, channels,
                                          multiple, epoch, scores, volumetric_meta)

    final_row: Optional[dict] = None  # the last epoch's validation row, when this process ran it
    for epoch in range(start, tcfg.epochs + 1):
        began = time.perf_counter()
        seed_everything(derive_seed(base_seed, epoch, world.rank))
        loss_fn = losses.for_epoch(epoch)
        lr, enc_lr = group_lrs(optimizer.param_groups)
        stats = train_epoch(stepper, data.loader(epoch), loss_fn, epoch, world, tcfg.progress)
        row = {"epoch": epoch, "lr": lr, "encoder_lr": enc_lr, "train_loss": stats.loss, "val_loss": math.nan,
               "dice": math.nan, "iou": math.nan, "score": math.nan,
               "loss_terms": "+".join(f"{w:g}*{n}" for n, w in loss_fn.weights.items()),
               "steps": stats.steps, "skipped": stats.skipped}
        improved = False
        validated = (epoch % tcfg.val_every == 0 or epoch == tcfg.epochs
                     or (averaging is not None and averaging.validates(epoch)))
        if validated:
            # The last epoch's validation writes its probabilities as the OOF store as it goes: when that epoch
            # is also the best (the usual case at the end of a decaying schedule), _write_oof keeps them instead
            # of predicting every validation image a second time.
            writer = ProbWriter(paths.oof, classes) if epoch == tcfg.epochs else None
            row.update(validation.evaluate(eval_model, loss_fn, device, tcfg.amp, writer=writer,
                                           progress=tcfg.progress and world.is_main))
            if writer is not None:
                final_row = row
            schedule.observe(row[monitor])
            improved = _better(row[monitor], best_value, monitor_mode)
            if improved:
                best_value = row[monitor]
        row["seconds"] = round(time.perf_counter() - began, 2)
        history.append(row)
        if world.is_main:
            scores = {k: row[k] for k in ("val_loss", "dice", "iou", "score")}
            if improved:
                checkpoint.save(paths.best, payload(epoch, scores))
            if epoch in snapshots:
                checkpoint.save(paths.snapshot(snapshots.index(epoch) + 1), payload(epoch, scores))
            if averaging is not None and averaging.keeps(epoch):
                checkpoint.save(paths.ingredient(epoch), payload(epoch, scores))
            atomic.write_csv(paths.metrics, pd.DataFrame(history, columns=HISTORY_COLUMNS))
            last = payload(epoch, scores)
            last["train_state"] = {
                # The raw weights differ from the payload's only under EMA; otherwise they are not stored twice.
                "model": model.state_dict() if ema is not None else None,
                "optimizer": optimizer.state_dict(), "schedule": schedule.state_dict(),
                "scaler": scaler.state_dict(), "ema": ema.state_dict() if ema is not None else None,
                "sampler": data.plan.state_dict(), "rng": rng_state(), "history": history,
                "best_value": best_value, "identity": identity, "epochs": tcfg.epochs,
            }
            checkpoint.save(paths.last, last)  # last: its presence marks the epoch as complete
            own = f" {cfg.metric} {_fmt(row['score'])}" if cfg.metric not in ("dice", "iou") else ""
            val = (f"val {_fmt(row['val_loss'])} dice {_fmt(row['dice'])} iou {_fmt(row['iou'])}{own}"
                   f"{' *' if improved else ''}") if validated else "(not validated)"
            print(f"{where} epoch {epoch}/{tcfg.epochs}: lr {lr:.2e} train {_fmt(stats.loss)} {val}  "
                  f"{row['seconds']:.1f}s" + (f"  ({stats.skipped} skipped)" if stats.skipped else ""), flush=True)
        distributed.barrier(world)

    average = None
    if averaging is not None:
        halves = None
        if averaging.method == "soup" and dims == 2 and len(val_ids) >= 2:
            halves = tuple(ImageValidation.of(comp, tcfg, ids, scoring, world)
                           for ids in (val_ids[0::2], val_ids[1::2]))
        average = average_fold(averaging, paths, model, validation, losses.for_epoch(tcfg.epochs), data, tcfg,
                               device, monitor, monitor_mode, world.is_main, where, halves)
        distributed.barrier(world)
    return _write_oof(cfg, model_cfg, fold, paths, unit, model, validation, losses.for_epoch(tcfg.epochs),
                      device, tcfg, world, train_ids, val_ids, history, monitor, final_row, average)


def _epochs_in_minutes(model, data, validation, tcfg: TrainConfig, losses: LossSchedule, device, world,
                       saved: Optional[dict], where: str) -> int:
    """``train.minutes`` as epochs: measured on this machine before a fold's first epoch (rank 0's measure for
    every rank), or the number a resumed fold's ``last.pt`` recorded."""
    if saved is not None and saved["train_state"].get("epochs"):
        return int(saved["train_state"]["epochs"])
    epochs = None
    if world.is_main:
        began = time.perf_counter()
        loss_fn = losses.for_epoch(1)
        step = budget.time_steps(model, data.loader(1), loss_fn, device, tcfg)
        val = validation.seconds(model, loss_fn, device, tcfg.amp) * world.size  # rank 0 times its share
        cycles = tcfg.schedule.cycles if tcfg.schedule.name in ("cosine_restarts", "cyclic") else 1
        plan = budget.epochs_for(tcfg.minutes, step, len(data), val, tcfg.val_every, cycles,
                                 spent=time.perf_counter() - began)
        print(f"{where}: {plan.text}", flush=True)
        epochs = plan.epochs
    return int(distributed.broadcast(world, epochs))


def _write_oof(cfg, model_cfg, fold, paths: FoldPaths, unit: Unit, model, validation, loss_fn, device, tcfg,
               world, train_ids, val_ids, history, monitor, final_row: Optional[dict],
               average: Optional[dict] = None) -> dict:
    """Predict the fold's validation images with best.pt into the OOF store (unless ``final_row``, the last
    epoch's validation, already wrote them with the very weights of best.pt); then tidy up the checkpoints.
    ``average``: what ``average_fold`` made of the run (best.pt is then the average)."""
    began = time.perf_counter()
    best = checkpoint.load(paths.best)
    writer = ProbWriter(paths.oof, best["classes"])
    if final_row is not None and final_row["epoch"] == best["epoch"] and "averaged" not in best:
        scores = final_row
    else:
        model.load_state_dict(best["model"])
        scores = validation.evaluate(model, loss_fn, device, tcfg.amp, writer=writer)
    distributed.barrier(world)
    summary = {
        "model": model_cfg.name, "fold": fold, "metric": cfg.metric, "monitor": monitor,
        "best_epoch": average["best_epoch"] if average else best["epoch"], "epochs": tcfg.epochs,
        "train_images": len(train_ids), "val_images": len(val_ids),
        **{k: scores[k] for k in ("val_loss", "dice", "iou", "score")},
        "train_seconds": round(sum(r.get("seconds", 0.0) for r in history), 1),
        **({"average": average} if average is not None else {}),
    }
    if world.is_main:
        atomic.write_json(paths.summary, summary)
        unit.done()
        writer.finish(val_ids)  # the fold's completion marker
        if "last" not in tcfg.keep and paths.last.exists():
            paths.last.unlink()
        remove_ingredients(paths)
        chosen = f"{average['method']} of {len(average['ingredients'])}" if average else f"best epoch {best['epoch']}"
        print(f"models[{model_cfg.name}] fold {fold}: {chosen}, {cfg.metric} "
              f"{_fmt(scores['score'])}; OOF of {len(val_ids)} images -> {paths.oof} "
              f"({time.perf_counter() - began:.1f}s)", flush=True)
    distributed.barrier(world)
    return summary
