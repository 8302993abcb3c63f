"""``segkit export``: every checkpoint the ensemble predicts with, as TorchScript and / or ONNX, checked.

For each model x fold, the checkpoints ``segkit predict`` uses (``predict.checkpoint`` plus the cycle snapshots
with ``predict.snapshots``) are wrapped with the config's normalisation and their activation
(``segkit.inference.runtimes.ProbabilityGraph``: images as read in, probabilities out) and written to
``runs/<experiment>/export/<model>/fold<k>/``. Each export is then run by its own runtime (``torch.jit``, ONNX
Runtime) on real test images, padded to the network stride as prediction pads them, at their size and again at a
larger size and another batch size. The largest difference of probabilities from the PyTorch model in float32
must stay within ``--tolerance`` (1e-3), else the command stops naming the model, fold and checkpoint, as it does
when an operator does not export. Every export's ``.json`` holds its model's meta (mode, classes, channels, stride)
and its check; ``export.json`` lists them all and is written last.

One unit of work (``segkit.artifacts.freshness``): skipped while the checkpoints, formats and normalisation are those
it was made from.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from segkit.artifacts import atomic
from segkit.artifacts.freshness import Unit, fingerprints
from segkit.config import Config
from segkit.data import Competition, pad_to_multiple
from segkit.data.folds import fold_numbers, load_folds
from segkit.errors import ConfigError, SegkitError
from segkit.inference.runtimes import EXPORTERS, FORMATS, SUFFIX, ProbabilityGraph, loader, meta_path, write_meta
from segkit.models import check_exportable
from segkit.models.checkpoint import dims_in, fold_checkpoints, load_model

TOLERANCE = 1e-3
CHECK_IMAGES = 4


class ExportError(SegkitError):
    """A network that does not export, or whose export gives other probabilities than PyTorch."""


def formats_of(name: str) -> list[str]:
    if name == "both":
        return list(FORMATS)
    if name not in FORMATS:
        raise ConfigError(f"--format: {name!r}; one of {', '.join(FORMATS)}, both")
    return [name]


def check_batches(cfg: Config, comp: Competition, meta: dict, n: int = CHECK_IMAGES) -> list[torch.Tensor]:
    """Real test images as prediction feeds them (as read, reflection-padded to the stride): the first ``n`` of
    one size in a batch, and the first of them padded one stride step further in each direction (another size
    and batch size, which a dynamic export must take too). A 3D network's: a window of the first test case."""
    pad_to = int(meta.get("pad_to", 32))
    if dims_in(meta) == 3:
        return window_batches(comp, meta["patch_size"], pad_to)
    ids = comp.test_ids[:n]
    images = [pad_to_multiple(comp.read_image(i, "test"), pad_to) for i in ids]
    same = [im for im in images if im.shape == images[0].shape]
    batch = torch.from_numpy(np.ascontiguousarray(np.stack(same).transpose(0, 3, 1, 2)))
    larger = torch.nn.functional.pad(batch[:1], (0, 2 * pad_to, 0, pad_to), mode="replicate")
    return [batch, larger]


def window_batches(comp: Competition, patch: list[int], pad_to: int) -> list[torch.Tensor]:
    """A 3D network's sliding window as prediction feeds it: the first test case's first window (zero-padded where
    the case is smaller), and that window one stride step larger along every axis with a batch of two."""
    volumes = comp.volume_set("test")
    image, _ = volumes.volume(next(iter(volumes.cases)))
    window = torch.from_numpy(image)[(slice(None), *(slice(0, p) for p in patch))]
    short = [p - n for p, n in zip(patch, window.shape[1:])]
    window = torch.nn.functional.pad(window, tuple(x for n in reversed(short) for x in (0, n)))[None]
    larger = torch.nn.functional.pad(window, (0, pad_to) * 3, mode="replicate")
    return [window.contiguous(), torch.cat([larger, larger.flip(-1)])]


def export_one(graph: ProbabilityGraph, batches: list[torch.Tensor], fmt: str, path: Path, what: str) -> dict:
    """Write ``graph`` as ``fmt`` to ``path`` (atomically), check it on ``batches``; returns its record."""
    path.parent.mkdir(parents=True, exist_ok=True)
    began = time.perf_counter()
    try:
        with atomic.atomic_path(path) as tmp:
            record = EXPORTERS[fmt](graph, batches[0], Path(tmp))
    except Exception as err:  # noqa: BLE001 - whatever the exporter raises, the message names the network
        raise ExportError(f"{what}: {fmt} export failed: {type(err).__name__}: "
                          f"{(str(err).splitlines() or [''])[0]}") from err
    record["seconds"] = round(time.perf_counter() - began, 2)
    if not record["dynamic"]:
        print(f"export: {what}: {fmt} takes {'x'.join(map(str, record['shape'][2:]))} batches of "
              f"{record['shape'][0]} only (no dynamic sizes: {record['why']})")
    return record


def check_one(graph: ProbabilityGraph, network, batches: list[torch.Tensor], record: dict, what: str, fmt: str,
              tolerance: float) -> float:
    """The largest difference of probabilities between ``network`` and the float32 PyTorch graph."""
    worst = 0.0
    with torch.inference_mode():
        for x in batches if record["dynamic"] else batches[:1]:
            ref = graph(x)
            try:
                out = network(x)
            except Exception as err:  # noqa: BLE001 - a runtime that cannot run what was exported
                raise ExportError(f"{what}: the {fmt} export does not run on a {tuple(x.shape)} batch: "
                                  f"{type(err).__name__}: {(str(err).splitlines() or [''])[0]}") from err
            worst = max(worst, float((out.float() - ref).abs().max()))
    if not worst <= tolerance:
        raise ExportError(f"{what}: the {fmt} export differs from PyTorch by {worst:.2e} in probability "
                          f"(> --tolerance {tolerance:g})")
    return worst


def export_unit(cfg: Config, checkpoints: dict, formats: list[str], tolerance: float) -> Unit:
    paths = cfg.layout.export
    data = cfg.data
    inputs = {"formats": formats, "tolerance": tolerance,
              "normalize": [data.normalize, data.mean, data.std, data.input_channels],
              "checkpoints": {f"{m}/{k}": fingerprints(c) for (m, k), c in checkpoints.items()}}
    files = [f for (m, k), c in checkpoints.items() for ckpt in c for fmt in formats
             for f in (paths.file(m, k, ckpt, SUFFIX[fmt]), meta_path(paths.file(m, k, ckpt, SUFFIX[fmt])))]
    return Unit(f"export: {paths.dir}", paths.stamp, files + [paths.json], inputs)


def run(cfg: Config, format: str = "both", tolerance: float = TOLERANCE) -> int:
    formats = formats_of(format)
    if not cfg.models:
        raise ConfigError("models: no model to export")
    for m in cfg.models:
        check_exportable(m)
    comp = Competition(cfg.data, seed=cfg.seed)
    folds = fold_numbers(load_folds(cfg, comp))
    checkpoints = {(m.name, k): fold_checkpoints(cfg, m.name, k) for m in cfg.models for k in folds}
    paths = cfg.layout.export
    unit = export_unit(cfg, checkpoints, formats, tolerance)
    if unit.skip():
        return 0
    with unit.writing():
        device = torch.device("cpu")  # exports are traced on the CPU: the files run anywhere
        listing: dict = {"formats": formats, "tolerance": tolerance, "models": {}}
        batches: dict = {}  # per kind of input (2D or 3D, stride, window)
        for (model, k), files in checkpoints.items():
            for checkpoint in files:
                what = f"models[{model}] fold {k} ({checkpoint.name})"
                net, meta = load_model(checkpoint, device)
                graph = ProbabilityGraph(net, cfg.data, meta["mode"]).eval()
                kind = (dims_in(meta), meta.get("pad_to", 32), tuple(meta.get("patch_size") or ()))
                if kind not in batches:
                    batches[kind] = check_batches(cfg, comp, meta)
                inputs = batches[kind]
                entry = {"checkpoint": checkpoint.name, "files": {}}
                for fmt in formats:
                    path = paths.file(model, k, checkpoint, SUFFIX[fmt])
                    record = export_one(graph, inputs, fmt, path, what)
                    write_meta(path, meta, record)  # the loader reads it
                    network, _ = loader(fmt)(path, device)
                    record["max_abs_diff"] = check_one(graph, network, inputs, record, what, fmt, tolerance)
                    record["checked_on"] = [list(x.shape) for x in inputs]
                    write_meta(path, meta, record)
                    entry["files"][fmt] = str(path.relative_to(paths.dir))
                    print(f"export: {what} -> {path} ({path.stat().st_size / 2**20:.1f} MiB, max |dp| "
                          f"{record['max_abs_diff']:.1e} on {sum(len(x) for x in inputs)} inputs)")
                listing["models"].setdefault(model, {}).setdefault(str(k), []).append(entry)
        atomic.write_json(paths.json, listing)
    print(f"export: {sum(len(v) for v in checkpoints.values())} checkpoint(s) x {', '.join(formats)} -> {paths.dir}")
    return 0


__all__ = ["ExportError", "TOLERANCE", "check_batches", "formats_of", "run"]
