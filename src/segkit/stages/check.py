"""``segkit check``: read every train image, mask and test image once, before any training.

A broken file found at epoch 40 of fold 4 costs hours; found here it costs seconds. The first problem stops the
check with an error naming the file or csv row. A passed check leaves ``runs/<experiment>/data_check.json`` (image
counts, sizes, empty share) and ``fingerprint.json`` (the facts a recipe is planned from: ``segkit.data.fingerprint``,
made in the same pass over the images); it is a unit of work (``segkit.artifacts.freshness``), so ``segkit run``
checks once per experiment and again only when the data section of the config (or the seed, which draws the
holdout) changes.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
from tqdm import tqdm

from segkit.artifacts import atomic
from segkit.artifacts.freshness import Unit
from segkit.config import Config
from segkit.data import Competition, fingerprint
from segkit.data.fingerprint import Fingerprint
from segkit.errors import DataError


def check_competition(comp: Competition, progress: bool = True, seed: int = 0) -> tuple[dict, dict]:
    """(the check's summary, the data's fingerprint), reading every image once."""
    quiet = None if progress else True  # None: tqdm shows bars on a terminal only, not in logs
    fingerprint = Fingerprint(comp.classes, seed)
    sizes: Counter = Counter()
    coverage = 0.0
    sums = squares = None  # per input channel, over the train images: data.mean / data.std for normalize: dataset
    pixels = 0
    labelled = comp.train_ids + comp.holdout_ids
    for image_id in tqdm(labelled, desc="check train", disable=quiet, leave=False):
        image = comp.read_image(image_id)
        flat = image.reshape(-1, image.shape[2]).astype(np.float64)
        sums = flat.sum(0) + (0 if sums is None else sums)
        squares = (flat ** 2).sum(0) + (0 if squares is None else squares)
        pixels += flat.shape[0]
        mask = comp.read_mask(image_id)
        if mask.shape[1:] != image.shape[:2]:
            raise DataError(f"id {image_id!r}: mask {mask.shape[1:]} and image {image.shape[:2]} differ in size")
        fingerprint.add(image, mask)
        sizes[f"{image.shape[0]}x{image.shape[1]}"] += 1
        coverage += float(mask.mean())
    n = len(labelled)
    test_sizes: Counter = Counter()
    for image_id in tqdm(comp.test_ids, desc="check test", disable=quiet, leave=False):
        image = comp.read_image(image_id, "test")
        test_sizes[f"{image.shape[0]}x{image.shape[1]}"] += 1
    facts = fingerprint.result(groups=comp.groups(labelled),
                               volumes=comp.volume_set("train") if comp.cfg.volumes is not None else None)
    return {
        "train_images": len(comp.train_ids),
        "holdout_images": len(comp.holdout_ids),
        "test_images": len(comp.test_ids),
        "submission_rows": len(comp.sample_rows),
        "train_sizes": dict(sizes.most_common(10)),
        "test_sizes": dict(test_sizes.most_common(10)),
        "channel_mean": [round(float(v), 4) for v in sums / pixels],
        "channel_std": [round(float(v), 4) for v in np.sqrt(np.maximum(squares / pixels - (sums / pixels) ** 2, 0))],
        "empty_share": facts["empty_share"],
        "mean_coverage": round(coverage / max(n, 1), 6),
        "classes": comp.classes,
        "mode": comp.mode,
    }, facts


def check_unit(cfg: Config) -> Unit:
    layout = cfg.layout
    return Unit(f"check: {layout.data_check}", layout.stamp("check"), [layout.data_check, layout.fingerprint],
                {"data": cfg.data.model_dump(mode="json"), "seed": cfg.seed,
                 "fingerprint": fingerprint.VERSION})  # a newer fingerprint is made again, not refused


def run(cfg: Config) -> int:
    unit = check_unit(cfg)
    if unit.skip("data already checked"):
        return 0
    summary, facts = check_competition(Competition(cfg.data, seed=cfg.seed), seed=cfg.seed)
    with unit.writing():
        fingerprint.write(cfg.layout.fingerprint, facts)
        atomic.write_json(cfg.layout.data_check, summary)
    print("check: " + ", ".join(f"{k}={v}" for k, v in summary.items() if not isinstance(v, (dict, list))))
    print(f"check: train sizes {summary['train_sizes']}, test sizes {summary['test_sizes']}")
    print(f"check: input channels' mean {summary['channel_mean']}, std {summary['channel_std']} "
          f"(data.mean / data.std for normalize: dataset)")
    objects = ", ".join(f"{name} {c['objects_per_image_with_any'].get('median', 0)} per image with any, "
                        f"{c['object_diameter'].get('median', 0)} px across" for name, c in facts["classes"].items())
    print(f"check: objects (median): {objects} -> {cfg.layout.fingerprint}")
    return 0


__all__ = ["check_competition", "check_unit", "run"]
