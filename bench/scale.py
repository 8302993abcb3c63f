"""Scale: how the stages after training grow with the number of images.

    .venv/bin/python bench/scale.py                                   # 1 000, 4 000, 12 000 images, 256 x 1600
    .venv/bin/python bench/scale.py --sizes 200 600 --methods mean    # a quicker look
    .venv/bin/python bench/scale.py --sizes 8 16 --shape 32 64 --json out.json   # the suite's smoke size

For every N a synthetic competition of Severstal's shape is made under ``--work`` (default: a temporary folder):
N train images of ``--shape`` with 4 classes in multilabel mode, about half of them without any defect, class 3 the
common and large one, as in Severstal's train set (the image files are hard links of one blank PNG: only their
headers are read after training); ``--test-share`` x N test images and a sample submission in Severstal's
``ImageId, ClassId, EncodedPixels`` layout. Then, for two models, probability stores as training and prediction
would leave them (each fold's OOF, the test store): a blurred, shifted copy of the truth made at 1/8 of the size
with smooth noise (faint patches) and false blobs, upsampled -- nothing is trained: the stages after training are
measured.

Each stage runs as ``segkit <stage>`` in a child process of its own, one after the other: ``folds``, then
``ensemble`` once per method of ``--methods`` (the last one stays: ``mean`` by default, what the tail is timed
with), ``tune`` (thresholds, min areas, the empty rule, morphology; nested over the folds), ``submit``,
``evaluate`` and ``report`` (``--no-tail``: only the ensembles; ``--workers``: the stages' ``cpu_workers``,
default ``auto``, every usable core). Per stage and N the table shows seconds, the child's peak resident memory
(``ru_maxrss`` from ``wait4``), the bytes written (files under the work folder modified during the stage) and the
growth exponent from the N before (log t2/t1 / log N2/N1: 1.0 is linear). ``tail`` sums ensemble mean, tune,
submit, evaluate and report.

The stores take N x 1.64 MB per model at 256 x 1600 x 4 (three stores with the ensemble's: about 65 GB at 12 000
images); each N's folder is removed when its row is done unless ``--keep``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
CLASSES = ["1", "2", "3", "4"]
# Severstal's train set: the share of images holding each class (about half hold none) ...
PRESENCE = (0.07, 0.02, 0.41, 0.06)
# ... and each class's defects: (count range, half-axes range in px at 256 x 1600), scaled with the shape
DEFECTS = (((1, 4), (6, 30)), ((1, 2), (6, 25)), ((1, 3), (20, 140)), ((1, 2), (25, 110)))
MODELS = ("model_a", "model_b")
TAIL = ("ensemble mean", "tune", "submit", "evaluate", "report")


# ---------------------------------------------------------------------------------------------- synthetic data


def truth(index: int, shape: tuple[int, int], seed: int = 0) -> np.ndarray:
    """uint8 (4, H, W) of 0/1: image ``index``'s defects, the same on every call."""
    rng = np.random.default_rng((seed, index))
    h, w = shape
    scale = h / 256
    mask = np.zeros((len(CLASSES), h, w), np.uint8)
    for c, share in enumerate(PRESENCE):
        if rng.random() >= share:
            continue
        (lo, hi), (amin, amax) = DEFECTS[c]
        for _ in range(int(rng.integers(lo, hi + 1))):
            centre = (int(rng.integers(0, w)), int(rng.integers(0, h)))
            axes = tuple(max(1, int(rng.integers(amin, amax) * scale)) for _ in range(2))
            cv2.ellipse(mask[c], centre, axes, float(rng.uniform(0, 180)), 0, 360, 1, -1)
    return mask


def probs(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A model's uint8 probabilities for ``mask``: made at 1/8 of the size (fast), upsampled."""
    k, h, w = mask.shape
    sh, sw = max(1, h // 8), max(1, w // 8)
    out = np.empty(mask.shape, np.uint8)
    for c in range(k):
        small = cv2.resize(mask[c].astype(np.float32), (sw, sh), interpolation=cv2.INTER_AREA)
        small = np.roll(small, tuple(int(v) for v in rng.integers(-1, 2, 2)), axis=(0, 1))
        p = 0.8 * cv2.GaussianBlur(small, (0, 0), 1.0)
        # smooth noise, mostly near 0 as a trained model's background is, with faint patches (1 % of pixels > 0.3)
        noise = cv2.GaussianBlur(rng.standard_normal((sh, sw)).astype(np.float32), (0, 0), 2.0)
        p += 0.05 * np.maximum(noise / max(float(noise.std()), 1e-6), 0) ** 2
        if rng.random() < 0.25:  # a false blob
            cv2.circle(p, (int(rng.integers(0, sw)), int(rng.integers(0, sh))), int(rng.integers(1, 4)), 0.6, -1)
        full = cv2.resize(np.clip(p, 0, 1), (w, h), interpolation=cv2.INTER_LINEAR)
        out[c] = np.rint(full * 255)
    return out


def write_competition(root: Path, n: int, n_test: int, shape: tuple[int, int]) -> tuple[list[str], list[str]]:
    from segkit.data import rle

    blank = root / "blank.png"
    root.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(blank), np.zeros(shape, np.uint8))
    train = [f"tr{i:06d}" for i in range(n)]
    test = [f"te{i:06d}" for i in range(n_test)]
    for split, ids in (("train", train), ("test", test)):
        folder = root / split / "images"
        folder.mkdir(parents=True, exist_ok=True)
        for image_id in ids:
            os.link(blank, folder / f"{image_id}.png")
    rows = []
    for i, image_id in enumerate(train):
        mask = truth(i, shape)
        for c in range(len(CLASSES)):
            if mask[c].any():
                rows.append((image_id, CLASSES[c], rle.encode(mask[c])))
    pd.DataFrame(rows, columns=["ImageId", "ClassId", "EncodedPixels"]).to_csv(root / "train.csv", index=False)
    pd.DataFrame([(i, c, "") for i in test for c in CLASSES], columns=["ImageId", "ClassId", "EncodedPixels"]
                 ).to_csv(root / "sample_submission.csv", index=False)
    return train, test


# The data section of the Severstal-shaped competition's config (under data.root)
SEVERSTAL_DATA = f"""  train_csv: train.csv
  mode: multilabel
  classes: {CLASSES}
  channels: 1
  rle: {{id_column: ImageId, rle_column: EncodedPixels, class_column: ClassId}}"""


def write_config(work: Path, data: Path, name: str = "scale", data_keys: str = SEVERSTAL_DATA,
                 n_splits: int = 5) -> Path:
    """The competition's config: its data section, two models' names (nothing trains them), runs under ``work``."""
    cfg = work / f"{name}.yaml"
    models = "\n".join(f"  - {{name: {m}, arch: Unet, encoder: resnet18}}" for m in MODELS)
    cfg.write_text(f"""base: {ROOT / 'configs' / 'base.yaml'}
competition: {name}
experiment: {name}
metric: dice
paths: {{runs: {work / 'runs'}, folds: {work / 'folds'}, submissions: {work / 'submissions'}}}
data:
  root: {data}
{data_keys}
folds: {{n_splits: {n_splits}}}
models:
{models}
""")
    return cfg


def write_stores(cfg_path: Path, train: list[str], test: list[str], shape: tuple[int, int]) -> None:
    """Each model's fold OOF stores and test store, as training and prediction leave them."""
    from segkit.artifacts.probs import ProbWriter
    from segkit.config import load_config

    cfg = load_config(cfg_path)
    folds = pd.read_csv(cfg.layout.folds_file)
    fold_of = dict(zip(folds["id"].astype(str), folds["fold"].astype(int)))
    for m, name in enumerate(MODELS):
        writers = {k: ProbWriter(cfg.layout.fold(name, k).oof, CLASSES) for k in sorted(set(fold_of.values()))}
        for i, image_id in enumerate(train):
            writers[fold_of[image_id]].write(image_id, probs(truth(i, shape), np.random.default_rng((1, m, i))))
        for k, writer in writers.items():
            writer.finish([i for i in train if fold_of[i] == k])
        writer = ProbWriter(cfg.layout.model(name).test, CLASSES)
        for i, image_id in enumerate(test):
            writer.write(image_id, probs(truth(10**7 + i, shape), np.random.default_rng((2, m, i))))
        writer.finish(test)


# ---------------------------------------------------------------------------------------------- measuring


def written_since(folder: Path, start_ns: int) -> int:
    """Bytes of the files under ``folder`` modified since ``start_ns``."""
    total = 0
    for dirpath, _, files in os.walk(folder):
        for f in files:
            st = os.stat(os.path.join(dirpath, f))
            if st.st_mtime_ns >= start_ns:
                total += st.st_size
    return total


def run_stage(args: list[str], log: Path, env: dict, in_process: bool = False) -> tuple[float, float]:
    """(seconds, peak RSS in MB) of one child command; its output goes to ``log``. ``in_process``: run
    ``segkit.cli.main`` here instead (the suite's smoke run: no interpreter start per stage; the RSS is then this
    process's peak so far, not the stage's)."""
    t0 = time.perf_counter()
    if in_process:
        import contextlib
        import resource

        from segkit.cli import main as segkit_main  # here: only the in-process run needs the CLI loaded

        with open(log, "w") as out, contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            code = segkit_main(args[3:])
        if code:
            raise SystemExit(f"segkit {' '.join(args[3:])} failed (exit {code}); see {log}")
        return time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    with open(log, "w") as out:
        child = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, env=env)
        _, status, usage = os.wait4(child.pid, 0)
    seconds = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(args)} failed (exit {os.waitstatus_to_exitcode(status)}); see {log}:\n"
                         + log.read_text()[-3000:])
    return seconds, usage.ru_maxrss / 1024  # Linux: kilobytes


def measure(n: int, args, base: Path) -> list[dict]:
    work = base / f"n{n}"
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    shape = tuple(args.shape)
    t0 = time.perf_counter()
    train, test = write_competition(work / "data", n, max(1, round(n * args.test_share)), shape)
    cfg = write_config(work, work / "data")
    env = dict(os.environ, PYTHONUNBUFFERED="1", SEGKIT_PROGRESS="0")
    segkit = [sys.executable, "-m", "segkit"]
    steps = [("folds", ["folds"])]
    steps += [(f"ensemble {m}", ["ensemble", f"ensemble.methods=[{m}]"]) for m in args.methods]
    if not args.no_tail:
        steps += [(s, [s]) for s in ("tune", "submit", "evaluate", "report")]
    rows = []
    for label, command in steps:
        if label == "ensemble " + args.methods[0]:
            write_stores(cfg, train, test, shape)
            print(f"  n={n}: data and stores made in {time.perf_counter() - t0:.0f} s", flush=True)
        stage, overrides = command[0], command[1:]
        if stage == "ensemble":  # each method from scratch: two sets of ensemble stores would not fit the disk at 12k
            shutil.rmtree(work / "runs" / "scale" / "ensemble", ignore_errors=True)
        start = time.time_ns()
        overrides += [f"cpu_workers={args.workers}"] if args.workers else []
        seconds, rss = run_stage(segkit + [stage, "--config", str(cfg), *overrides],
                                 work / f"{label.replace(' ', '_')}.log", env, args.in_process)
        rows.append({"n": n, "stage": label, "seconds": seconds, "peak_rss_mb": rss,
                     "written_mb": written_since(work, start) / 2**20})
        print(f"  n={n} {label:<15} {seconds:8.1f} s {rss:8.0f} MB", flush=True)
    tail = [r for r in rows if r["stage"] in TAIL]
    if len(tail) == len(TAIL):
        rows.append({"n": n, "stage": "tail", "seconds": sum(r["seconds"] for r in tail),
                     "peak_rss_mb": max(r["peak_rss_mb"] for r in tail),
                     "written_mb": sum(r["written_mb"] for r in tail)})
    if not args.keep:
        shutil.rmtree(work)
    return rows


def table(rows: list[dict], size: str = "n") -> pd.DataFrame:
    """The rows with each stage's growth exponent from the size before (in column ``size``)."""
    frame = pd.DataFrame(rows)
    frame["growth"] = np.nan
    for _, part in frame.groupby("stage", sort=False):
        prev = None
        for idx, rec in part.sort_values(size).iterrows():
            if prev is not None and prev["seconds"] > 0 and rec["seconds"] > 0:
                frame.loc[idx, "growth"] = math.log(rec["seconds"] / prev["seconds"]) / math.log(rec[size] / prev[size])
            prev = rec
    return frame


def show(frame: pd.DataFrame, json_path: Path | None) -> None:
    """The table printed, and written as JSON rows where asked."""
    with pd.option_context("display.float_format", "{:.2f}".format, "display.width", 200):
        print(frame.to_string(index=False))
    if json_path:
        json_path.write_text(json.dumps(frame.replace({np.nan: None}).to_dict("records"), indent=1))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 4000, 12000])
    parser.add_argument("--shape", type=int, nargs=2, default=[256, 1600], metavar=("H", "W"))
    parser.add_argument("--test-share", type=float, default=0.1)
    parser.add_argument("--methods", nargs="+", default=["vote", "stack", "mean"],
                        help="ensemble methods, one run each; the last one's stores are what the tail reads")
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--json", type=Path, default=None, help="write the rows here too")
    parser.add_argument("--no-tail", action="store_true", help="only folds and the ensemble methods")
    parser.add_argument("--workers", default=None, help="cpu_workers for every stage (default: the config's, auto)")
    parser.add_argument("--in-process", action="store_true",
                        help="run the stages in this process (quick; peak RSS is then not per stage)")
    args = parser.parse_args(argv)
    if not args.no_tail:
        args.methods = [m for m in args.methods if m != "mean"] + ["mean"]  # the tail reads the mean's stores
    from segkit.compute.device import cpu_has_native_bf16  # here: after argparse, so --help needs no torch

    bf16 = "with" if cpu_has_native_bf16() else "without"
    print(f"{platform.processor() or platform.machine()}: {os.cpu_count()} cores, {bf16} native bf16; "
          f"shape {args.shape}, sizes {args.sizes}", flush=True)
    with tempfile.TemporaryDirectory(dir=args.work) as tmp:
        rows = []
        for n in sorted(args.sizes):
            rows += measure(n, args, Path(tmp))
    show(table(rows), args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
