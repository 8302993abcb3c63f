"""RLE codec: segkit.data.rle against the usual numpy encoder/decoder, side by side in one process.

    .venv/bin/python bench/rle.py
    .venv/bin/python bench/rle.py --size 2048 --rounds 21

Masks: ``blobs`` (a few random filled ellipses, what a segmentation model predicts), ``noise`` (every pixel a
coin flip: ~half a million runs, where the cost is building and parsing the string) and a 101x101 tile (TGS
size, where per-call overhead dominates). Each round times every variant once, in turn, so load from other
processes on a shared machine hits all of them alike; the table shows medians over rounds. Outputs are checked
against the reference before timing. numba's one-time costs (compiling into an empty cache, loading a warm
cache) are measured in fresh subprocesses and printed below the table; the timed calls are warm.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

from segkit.data import rle

# --- the reference: the numpy RLE functions most Kaggle kernels start from ---


def reference_encode(mask: np.ndarray) -> str:
    """Column-major pixels, padded with background at both ends; run edges are where neighbours differ."""
    pixels = np.concatenate([[0], mask.T.flatten(), [0]])
    edges = np.where(pixels[1:] != pixels[:-1])[0] + 1
    edges[1::2] -= edges[::2]  # odd entries become lengths: end - start
    return " ".join(str(x) for x in edges)


def reference_decode(text: str, shape: tuple[int, int]) -> np.ndarray:
    """Split the string, set each run in a flat float buffer, fold it back column-major."""
    numbers = text.split()
    starts = np.asarray(numbers[0::2], dtype=int) - 1
    lengths = np.asarray(numbers[1::2], dtype=int)
    flat = np.zeros(shape[0] * shape[1])
    for start, length in zip(starts, lengths):
        flat[start:start + length] = 1
    return flat.reshape(shape, order="F")


# --- masks ---


def blobs_mask(size: int, count: int, rng: np.random.Generator) -> np.ndarray:
    rows, cols = np.ogrid[:size, :size]
    mask = np.zeros((size, size), np.uint8)
    for _ in range(count):
        cy, cx = rng.uniform(0, size, 2)
        ry, rx = rng.uniform(size / 30, size / 5, 2)
        angle = rng.uniform(0, np.pi)
        dy, dx = rows - cy, cols - cx
        u = dy * np.cos(angle) + dx * np.sin(angle)
        v = -dy * np.sin(angle) + dx * np.cos(angle)
        mask[(u / ry) ** 2 + (v / rx) ** 2 <= 1] = 1
    return mask


def noise_mask(size: int, rng: np.random.Generator) -> np.ndarray:
    return (rng.random((size, size)) < 0.5).astype(np.uint8)


# --- timing ---


def time_rounds(variants: dict, rounds: int) -> dict[str, float]:
    """Median seconds per call of each variant, over interleaved rounds."""
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, fn in variants.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(ts) for name, ts in times.items()}


ONE_TIME_PROBE = """
import time, numpy as np
from segkit.data import rle
m = np.zeros((64, 64), np.uint8); m[5:20, 7:30] = 1
t0 = time.perf_counter()
for order in "FC":
    rle.decode(rle.encode(m, order), m.shape, order)
    rle.decode(rle.encode(np.asfortranarray(m), order), m.shape, order)
rle.validate("1 2", m.shape)
print(time.perf_counter() - t0)
"""


def one_time_cost(cache_dir: str) -> float:
    env = dict(os.environ, NUMBA_CACHE_DIR=cache_dir)
    out = subprocess.run([sys.executable, "-c", ONE_TIME_PROBE], env=env, check=True, capture_output=True,
                         text=True)
    return float(out.stdout.strip().splitlines()[-1])


def bench_mask(name: str, mask: np.ndarray, goals: dict, rounds: int) -> list[tuple]:
    """Check segkit against the reference on one mask, then time both; one table row per operation."""
    shape = mask.shape
    text = reference_encode(mask)
    # Correctness first (this also warms the compiled kernels up).
    assert rle.encode(mask) == text, f"{name}: encode differs from the reference"
    assert np.array_equal(rle.decode(text, shape), reference_decode(text, shape)), f"{name}: decode differs"
    relative = rle.encode(mask, "C", relative=True)
    assert np.array_equal(rle.decode(relative, shape, "C", relative=True), mask), f"{name}: C/relative"
    label = f"{name} {shape[0]}x{shape[1]}, {len(text.split()) // 2} runs"
    enc = time_rounds({"ref": lambda: reference_encode(mask), "segkit": lambda: rle.encode(mask)}, rounds)
    dec = time_rounds(
        {"ref": lambda: reference_decode(text, shape), "segkit": lambda: rle.decode(text, shape),
         "validate": lambda: rle.validate(text, shape)},
        rounds,
    )
    rows = []
    for op, t in (("encode", enc), ("decode", dec)):
        rows.append((op, label, t["ref"], t["segkit"], goals.get((op, name))))
    rows.append(("validate", label, None, dec["validate"], None))
    return rows


def print_table(rows: list[tuple]) -> None:
    print("| op | mask | reference ms | segkit ms | speedup | goal | met |")
    print("|---|---|---:|---:|---:|---:|---|")
    for op, label, ref, ours, goal in rows:
        ref_ms = "-" if ref is None else f"{ref * 1e3:.3f}"
        ratio = "-" if ref is None else f"{ref / ours:.1f}x"
        want = "-" if goal is None else f"{goal:.0f}x"
        met = "-" if goal is None else ("yes" if ref / ours >= goal else "NO")
        print(f"| {op} | {label} | {ref_ms} | {ours * 1e3:.3f} | {ratio} | {want} | {met} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--blobs", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-one-time", action="store_true", help="don't measure compile / cache-load cost")
    args = ap.parse_args()

    rng = np.random.default_rng(args.seed)
    goals = {("encode", "blobs"): 3.0, ("encode", "noise"): 5.0,
             ("decode", "blobs"): 3.0, ("decode", "noise"): 3.0}
    rows = bench_mask("blobs", blobs_mask(args.size, args.blobs, rng), goals, args.rounds)
    rows += bench_mask("noise", noise_mask(args.size, rng), goals, args.rounds)
    # A TGS-sized tile: here the per-call overhead dominates (informative, no goal).
    rows += bench_mask("one blob", blobs_mask(101, 1, rng), goals, 100 * args.rounds)

    print(f"median over interleaved rounds ({args.rounds}; 101x101: {100 * args.rounds}), warm kernels")
    print_table(rows)
    if not args.skip_one_time:
        with tempfile.TemporaryDirectory() as cache:
            cold = one_time_cost(cache)
            warm = one_time_cost(cache)
        print(f"one-time numba cost in a fresh process (first encode/decode/validate of each kind): "
              f"{cold:.1f} s compiling into an empty cache, {warm:.2f} s loading the cache")


if __name__ == "__main__":
    main()
