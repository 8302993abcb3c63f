"""The built-in synthetic competition: small enough for CPU, shaped like a real Kaggle one.

Layout written under ``out``::

    train/images/<id>.png     grayscale textures
    train.csv                 id,rle_mask (Kaggle RLE, column-major); multiclass: <id>_<k> compound ids, k = 1..K
    test/images/<id>.png
    sample_submission.csv     test ids with an empty rle_mask column
    test_truth.csv            the hidden test labels (what the competition would score against)

What makes it worth tuning on: every image has a textured background with low-contrast distractor blobs, about a
third of the images hold no object at all, objects vary from a few pixels to a quarter of the image with ragged
borders and a weak intensity shift, so losses that care about small and empty masks, D4 TTA (textures have no
orientation) and tuned thresholds / minimum areas all move the score. In the multiclass variant the classes differ
by shape (round blobs vs. elongated streaks) and texture.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from segkit.artifacts import atomic
from segkit.data import rle

DEFAULTS = dict(n_train=240, n_test=80, size=96, classes=1, seed=0)
EMPTY_SHARE = 1 / 3


def _texture(rng: np.random.Generator, size: int, scale: float) -> np.ndarray:
    """Band-limited noise: white noise blurred at ``scale`` pixels, normalised to zero mean, unit std."""
    noise = rng.standard_normal((size, size)).astype(np.float32)
    tex = cv2.GaussianBlur(noise, (0, 0), sigmaX=scale)
    return (tex - tex.mean()) / (tex.std() + 1e-6)


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    img = 0.35 * _texture(rng, size, rng.uniform(1.0, 2.5)) + 0.5 * _texture(rng, size, rng.uniform(4, 10))
    for _ in range(2):  # slow stripes, like seismic layers or illumination gradients
        angle, freq, phase = rng.uniform(0, np.pi), rng.uniform(1, 4), rng.uniform(0, 2 * np.pi)
        img += 0.4 * np.sin(2 * np.pi * freq * (xx * np.cos(angle) + yy * np.sin(angle)) + phase)
    return img


def _blob(rng: np.random.Generator, size: int, radius: float, elongation: float) -> np.ndarray:
    """A filled star-shaped polygon with a ragged border (radial noise)."""
    cy, cx = rng.uniform(0, size, 2)
    n = 24
    theta = np.linspace(0, 2 * np.pi, n, endpoint=False)
    r = radius * (1 + 0.25 * np.convolve(rng.standard_normal(n + 4), np.ones(5) / 5, mode="valid")[:n])
    rot = rng.uniform(0, np.pi)
    x = r * elongation * np.cos(theta)
    y = r / elongation * np.sin(theta)
    pts = np.stack([cx + x * np.cos(rot) - y * np.sin(rot), cy + x * np.sin(rot) + y * np.cos(rot)], 1)
    mask = np.zeros((size, size), np.uint8)
    cv2.fillPoly(mask, [np.round(pts).astype(np.int32)], 1)
    return mask


def _sample(rng: np.random.Generator, size: int, classes: int) -> tuple[np.ndarray, np.ndarray]:
    """One image (uint8 H x W) and its label map (0 = background, k = class k)."""
    img = _background(rng, size)
    labels = np.zeros((size, size), np.uint8)
    for _ in range(rng.integers(1, 4)):  # distractors: same brightness shift, coarser texture
        d = _blob(rng, size, rng.uniform(0.05, 0.18) * size, rng.uniform(1, 1.6)).astype(bool)
        img[d] += 0.6 + 0.4 * _texture(rng, size, 6)[d]
    if rng.random() >= EMPTY_SHARE:
        for _ in range(rng.integers(1, 4)):
            k = int(rng.integers(1, classes + 1))
            tiny = rng.random() < 0.25
            radius = rng.uniform(1.5, 3.5) if tiny else rng.uniform(0.05, 0.25) * size
            elongation = rng.uniform(2.0, 3.0) if k % 2 == 0 else rng.uniform(1.0, 1.4)
            obj = _blob(rng, size, radius, elongation).astype(bool) & (labels == 0)
            # Objects: a fine, high-contrast texture plus a modest brightness shift.
            img[obj] += 0.7 + 0.9 * _texture(rng, size, 0.7 + 0.3 * k)[obj]
            labels[obj] = k
    img += 0.25 * rng.standard_normal(img.shape).astype(np.float32)
    img = np.clip((img - img.mean()) / (4 * img.std() + 1e-6) + 0.5, 0, 1)
    return (img * 255).round().astype(np.uint8), labels


def _rle_rows(image_id: str, labels: np.ndarray, classes: int) -> list[tuple[str, str]]:
    if classes == 1:
        return [(image_id, rle.encode(labels > 0))]
    return [(f"{image_id}_{k}", rle.encode(labels == k)) for k in range(1, classes + 1)]


def write_competition(out: str | Path, **options) -> Path:
    """Write the demo competition under ``out`` (see the module docstring). Deterministic for a seed."""
    unknown = set(options) - set(DEFAULTS)
    if unknown:
        raise TypeError(f"unknown options {sorted(unknown)}")
    opts = {**DEFAULTS, **options}
    out = Path(out)
    rng = np.random.default_rng(opts["seed"])
    for split in ("train", "test"):
        (out / split / "images").mkdir(parents=True, exist_ok=True)
    tables: dict[str, list[tuple[str, str]]] = {"train": [], "test": []}
    for split, n in (("train", opts["n_train"]), ("test", opts["n_test"])):
        for i in range(n):
            image_id = f"{split[:2]}{i:05d}"
            image, labels = _sample(rng, opts["size"], opts["classes"])
            with atomic.atomic_path(out / split / "images" / f"{image_id}.png") as tmp:
                cv2.imencode(".png", image)[1].tofile(tmp)
            tables[split] += _rle_rows(image_id, labels, opts["classes"])
    columns = ["id", "rle_mask"]
    atomic.write_csv(out / "train.csv", pd.DataFrame(tables["train"], columns=columns))
    atomic.write_csv(out / "test_truth.csv", pd.DataFrame(tables["test"], columns=columns))
    sample = pd.DataFrame({"id": [r[0] for r in tables["test"]], "rle_mask": ""})
    atomic.write_csv(out / "sample_submission.csv", sample)
    print(f"demo competition: {opts['n_train']} train + {opts['n_test']} test images of {opts['size']}px, "
          f"{opts['classes']} class(es) -> {out}")
    return out
def main(args) -> int:
    """``segkit demo-data``: the competition under ``--out``, with the options given (the others: DEFAULTS)."""
    options = {k: v for k, v in vars(args).items() if k not in ("command", "out") and v is not None}
    write_competition(args.out, **options)
    return 0


