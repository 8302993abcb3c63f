"""Peak memory of predicting one large volume: read slice by slice (``StreamedCase``) against decoded whole.

    .venv/bin/python bench/volume_memory.py [--size 512] [--work DIR] [--batch 4]

Makes a competition of its own under ``--work`` (default: a temporary folder): two small labelled cases to train a
tiny network on (one epoch, a few steps: the weights do not matter here), and one test volume of ``size``^3
float32 voxels in a plain ``.nii`` file. Then ``segkit predict`` runs in a child process three times, one after the
other, and each child's peak resident memory (``ru_maxrss`` from ``wait4``) is read:

- floor: the same prediction of a 32^3 test volume: the interpreter, torch, the network and the loader;
- streamed: the large volume with ``data.volumes.stream_above_mb`` at its default, read slice by slice;
- decoded: the large volume with the limit raised above its size, so it is decoded whole (the reference).

The slices are 2.5D stacks (``data.context: 1``) predicted ``--batch`` at a time without TTA; the uint8 store goes
to disk slice by slice in both runs. Prints one table: peak RSS, its excess over the floor, and the seconds.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
TINY = ("models=[{name: tiny, arch: Unet, encoder: tu-resnet10t, "
        "params: {encoder_depth: 3, decoder_channels: [16, 8, 4]}}]")


def write_competition(root: Path, size: int) -> None:
    import nibabel as nib

    rng = np.random.default_rng(0)
    affine = np.eye(4)
    for folder in ("imagesTr", "labelsTr", "imagesTs", "imagesSmall"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    for i in range(2):
        label = np.zeros((32, 32, 8), np.uint8)
        label[8:20, 8:20, 2:6] = 1
        image = rng.normal(100, 20, label.shape).astype(np.float32) + 80 * label
        nib.save(nib.Nifti1Image(image, affine), str(root / "imagesTr" / f"train_{i}.nii.gz"))
        nib.save(nib.Nifti1Image(label, affine), str(root / "labelsTr" / f"train_{i}.nii.gz"))
    small = rng.normal(100, 20, (32, 32, 32)).astype(np.float32)
    nib.save(nib.Nifti1Image(small, affine), str(root / "imagesSmall" / "small.nii"))
    big = np.lib.format.open_memmap(root / "big.npy", mode="w+", dtype=np.float32, shape=(size, size, size))
    for z in range(0, size, 16):  # written in slabs: the bench itself never holds the volume
        big[:, :, z:z + 16] = rng.normal(100, 20, (size, size, min(16, size - z)))
    big.flush()
    nib.save(nib.Nifti1Image(big, affine), str(root / "imagesTs" / "big.nii"))
    del big
    (root / "big.npy").unlink()


def segkit(args: list[str]) -> tuple[int, float, int]:
    """Runs ``segkit ARGS`` in a child; its exit code, seconds and peak RSS in MiB."""
    began = time.perf_counter()
    child = subprocess.Popen([sys.executable, "-m", "segkit", *args], cwd=ROOT, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    out = child.stdout.read()
    _, status, usage = os.wait4(child.pid, 0)
    code = os.waitstatus_to_exitcode(status)
    if code:
        print(out[-4000:])
    return code, time.perf_counter() - began, usage.ru_maxrss // 1024  # Linux: KiB


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--batch", type=int, default=4)
    args = parser.parse_args(argv)
    work = args.work or Path(tempfile.mkdtemp(prefix="segkit_volume_memory_"))
    data = work / "data"
    if not (data / "imagesTs" / "big.nii").exists():
        print(f"writing the competition under {data} ({args.size}^3 float32 test volume)", flush=True)
        write_competition(data, args.size)
    common = ["--config", str(ROOT / "configs" / "demo.yaml"), f"data.root={data}", f"paths.runs={work / 'runs'}",
              f"paths.folds={work / 'folds'}", f"paths.submissions={work / 'subs'}", TINY, "device=cpu",
              "data.volumes={images: imagesTr, labels: labelsTr, test_images: imagesTs}", "data.normalize=none",
              "data.classes=[organ]", "data.train_csv=null", "data.test_images=null", "data.sample_submission=null",
              "data.context=1", "folds.n_splits=2", "train.epochs=1", "train.max_steps_per_epoch=2",
              "train.batch_size=4", "train.pad_to=8", "train.progress=false", "train.keep=[best]",
              "train.threads=2", "predict.tta=none", f"predict.batch_size={args.batch}", "predict.snapshots=false"]
    for stage in ("folds", "train"):
        code, seconds, _ = segkit([stage, *common])
        if code:
            return code
    rows = []
    runs = [("floor: 32^3 volume", ["data.volumes.test_images=imagesSmall"]),
            (f"streamed: {args.size}^3 (the default)", []),
            (f"decoded whole: {args.size}^3 (reference)", ["data.volumes.stream_above_mb=1000000"])]
    for name, extra in runs:
        shutil.rmtree(work / "runs" / "demo" / "tiny" / "test", ignore_errors=True)  # predicted afresh each time
        code, seconds, peak = segkit(["predict", *common, *extra])
        if code:
            return code
        rows.append((name, peak, seconds))
        print(f"{name}: peak RSS {peak} MiB in {seconds:.1f} s", flush=True)
    floor = rows[0][1]
    volume_mib = args.size ** 3 * 4 / 2**20
    print(f"\n{platform.node()} ({os.cpu_count()} cores); float32 test volume {volume_mib:.0f} MiB, "
          f"slices {args.size}x{args.size} as 3-slice stacks, batch {args.batch}, no TTA")
    print("| run | peak RSS MiB | over the floor MiB | seconds |\n|---|---:|---:|---:|")
    for name, peak, seconds in rows:
        print(f"| {name} | {peak} | {peak - floor} | {seconds:.1f} |")
    streamed, decoded = rows[1][1] - floor, rows[2][1] - floor
    print(f"\nstreamed / decoded excess over the floor: {streamed / max(decoded, 1):.2f}")
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
