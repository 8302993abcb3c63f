"""Scale, volumes: the 3D tail (tune's per-volume clean-up, evaluate's surface metrics in mm, submit's NIfTI
label volumes) from 64^3 to a 1024 x 1024 x 512 slab.

    .venv/bin/python bench/scale_volumes.py                              # 64^3, 256^3, 512^3, 1024x1024x512
    .venv/bin/python bench/scale_volumes.py --sizes 64 128 --json out.json

For every size a volume competition is made under ``--work`` (default: a temporary folder): two labelled cases
and one test case, plain ``.nii`` (uint8 images: the bench's own disk and time go to what is measured), each
holding an ellipsoid organ a quarter of the volume across and a few stray blobs; volumes above
``data.volumes.stream_above_mb`` are read slice by slice, as segkit reads any large case. Two models' probability
stores of the slices along the last axis (each fold's OOF, the test store) are made like ``bench/scale.py``'s: the
truth blurred and shifted at 1/8 of the size, with smooth noise and false blobs, upsampled. Nothing is trained.

Each stage runs as ``segkit <stage>`` in a child process of its own: ``folds``, ``ensemble`` (mean), ``tune``
(slice-wise search, then per class the volume threshold and the 3D clean-up on whole volumes, nested over the
two folds), ``submit`` (a label volume per test case) and ``evaluate`` (per-volume Dice, HD95, ASSD, NSD in mm).
The table shows, per stage and size, seconds, the child's peak resident memory (``ru_maxrss`` from ``wait4``),
the bytes written and the growth exponent in voxels from the size before (1.0: linear). Prediction's own memory on
a large volume is ``bench/volume_memory.py``'s.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
import scale  # noqa: E402  (the 2D bench's probabilities and measuring)

ROOT = Path(__file__).resolve().parents[1]
SHAPES = {64: (64, 64, 64), 128: (128, 128, 128), 256: (256, 256, 256), 512: (512, 512, 512),
          1024: (1024, 1024, 512)}
MODELS = scale.MODELS


def organ(shape: tuple[int, int, int], seed: int, z: slice) -> np.ndarray:
    """uint8 labels of slices ``z`` of a case: an ellipsoid (1) and a few small blobs (1) around it."""
    rng = np.random.default_rng(seed)
    sx, sy, sz = shape
    grid = np.ogrid[0:sx, 0:sy, z.start:z.stop]
    centre = [s * c for s, c in zip(shape, rng.uniform(0.4, 0.6, 3))]
    radii = [s * r for s, r in zip(shape, rng.uniform(0.18, 0.25, 3))]
    inside = sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii)) <= 1
    for _ in range(3):  # strays: what a 3D clean-up removes
        c = [s * u for s, u in zip(shape, rng.uniform(0.1, 0.9, 3))]
        r = max(2.0, min(shape) * 0.02)
        inside |= sum(((g - ci) / r) ** 2 for g, ci in zip(grid, c)) <= 1
    return inside.astype(np.uint8)


def write_case(image: Path, label: Path | None, shape: tuple[int, int, int], seed: int) -> None:
    """A case as plain .nii, written slab by slab through a memory map (the bench never holds a volume)."""
    import nibabel as nib

    for path, make in ((label, lambda lab: lab), (image, lambda lab: (60 + 100 * lab).astype(np.uint8))):
        if path is None:
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        raw = path.with_suffix(".npy")
        data = np.lib.format.open_memmap(raw, mode="w+", dtype=np.uint8, shape=shape)
        for z0 in range(0, shape[2], 32):
            z = slice(z0, min(z0 + 32, shape[2]))
            data[:, :, z] = make(organ(shape, seed, z))
        data.flush()
        nib.save(nib.Nifti1Image(data, np.diag([0.8, 0.8, 1.5, 1.0])), str(path))
        del data
        raw.unlink()


VOLUME_DATA = """  volumes: {images: imagesTr, labels: labelsTr, test_images: imagesTs, axis: 2, intensity: none}
  normalize: none
  classes: [organ]
  channels: 1
  train_csv: null
  test_images: null
  sample_submission: null"""


def write_stores(cfg_path: Path) -> None:
    """Each model's fold OOF stores and test store, slice by slice."""
    from segkit.artifacts.probs import ProbWriter
    from segkit.config import load_config
    from segkit.data import Competition

    cfg = load_config(cfg_path)
    comp = Competition(cfg.data, seed=cfg.seed)
    folds = pd.read_csv(cfg.layout.folds_file)
    fold_of = dict(zip(folds["id"].astype(str), folds["fold"].astype(int)))
    test = list(comp.test_ids)
    for m, name in enumerate(MODELS):
        writers = {k: ProbWriter(cfg.layout.fold(name, k).oof, ["organ"]) for k in sorted(set(fold_of.values()))}
        for i, slice_id in enumerate(fold_of):
            mask = comp.read_mask(slice_id)
            writers[fold_of[slice_id]].write(slice_id, scale.probs(mask, np.random.default_rng((1, m, i))))
        for k, writer in writers.items():
            writer.finish([i for i in fold_of if fold_of[i] == k])
        writer = ProbWriter(cfg.layout.model(name).test, ["organ"])
        volumes = comp.volume_set("test")
        for i, slice_id in enumerate(test):
            where = volumes.positions[slice_id]
            shape = volumes.shape(where.volume)
            z = where.index
            mask = organ(shape[:3], 99, slice(z, z + 1))[:, :, 0][None]
            writer.write(slice_id, scale.probs(mask, np.random.default_rng((2, m, i))))
        writer.finish(test)


def measure(size: int, args, base: Path) -> list[dict]:
    shape = SHAPES[size]
    work = base / f"v{size}"
    shutil.rmtree(work, ignore_errors=True)
    data = work / "data"
    t0 = time.perf_counter()
    for c in range(2):
        write_case(data / "imagesTr" / f"case{c}.nii", data / "labelsTr" / f"case{c}.nii", shape, c)
    write_case(data / "imagesTs" / "test0.nii", None, shape, 99)
    cfg = scale.write_config(work, data, "vols", VOLUME_DATA, n_splits=2)
    env = dict(os.environ, PYTHONUNBUFFERED="1", SEGKIT_PROGRESS="0")
    segkit = [sys.executable, "-m", "segkit"]
    rows = []
    for stage in ("folds", "ensemble", "tune", "submit", "evaluate"):
        if stage == "ensemble":
            write_stores(cfg)
            print(f"  {size}: data and stores made in {time.perf_counter() - t0:.0f} s", flush=True)
        start = time.time_ns()
        overrides = [f"cpu_workers={args.workers}"] if args.workers else []
        seconds, rss = scale.run_stage(segkit + [stage, "--config", str(cfg), *overrides], work / f"{stage}.log", env,
                                       args.in_process)
        rows.append({"size": "x".join(map(str, shape)), "voxels": int(np.prod(shape)), "stage": stage,
                     "seconds": seconds, "peak_rss_mb": rss,
                     "written_mb": scale.written_since(work, start) / 2**20})
        print(f"  {size} {stage:<10} {seconds:8.1f} s {rss:8.0f} MB", flush=True)
    if not args.keep:
        shutil.rmtree(work)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 256, 512, 1024], choices=sorted(SHAPES))
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--workers", default=None, help="cpu_workers for every stage (default: auto)")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--in-process", action="store_true",
                        help="run the stages in this process (quick; peak RSS is then not per stage)")
    args = parser.parse_args(argv)
    print(f"{platform.processor() or platform.machine()}: {os.cpu_count()} cores; sizes {args.sizes}", flush=True)
    with tempfile.TemporaryDirectory(dir=args.work) as tmp:
        rows = []
        for size in args.sizes:
            rows += measure(size, args, Path(tmp))
    scale.show(scale.table(rows, "voxels"), args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
