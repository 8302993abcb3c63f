"""Time of decoding one image's objects: the watershed and connected components on a synthetic 1024x1024 image of
``--objects`` touching nuclei, one thread.

    .venv/bin/python bench/instances.py [--size 1024] [--objects 300] [--repeats 15]

The probabilities are what a good model gives: the instance map's mask and contour targets
(``segkit.data.instances.targets``, contour width 2), blurred and quantised to uint8 like a store. Every decoder
setting is timed ``--repeats`` times on the same image (the first call, which imports scikit-image, is not
counted) and the median printed, with the objects found and their object AP against the map.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

import numpy as np


def nuclei(size: int, objects: int, seed: int = 0) -> np.ndarray:
    """int32 labels of ``objects`` discs of radius 6-14 px, placed at random; later discs cover earlier ones where
    they meet, so many touch."""
    rng = np.random.default_rng(seed)
    labels = np.zeros((size, size), np.int32)
    for k in range(1, objects + 1):
        r = int(rng.integers(6, 15))
        cy, cx = rng.integers(r, size - r, 2)
        yy, xx = np.ogrid[cy - r:cy + r + 1, cx - r:cx + r + 1]
        disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        labels[cy - r:cy + r + 1, cx - r:cx + r + 1][disc] = k
    return labels


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--objects", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import cv2
    from scipy import ndimage

    from segkit.config.schema import InstanceSpec
    from segkit.data.instances import targets
    from segkit.metrics.competition import object_ap_labels
    from segkit.postprocess.instances import DecodeParams, decode

    cv2.setNumThreads(1)
    labels = nuclei(args.size, args.objects)
    present = len(np.unique(labels)) - 1
    probs = targets(labels, InstanceSpec(labels="x", contour_width=2)).astype(np.float32)
    probs = np.stack([ndimage.gaussian_filter(p, 1.0) for p in probs])
    probs = np.round(probs * 255).astype(np.uint8)
    settings = {"connected components, p>0.5": DecodeParams("components"),
                "watershed, defaults": DecodeParams("watershed"),
                "watershed, min seed 8, min size 16, grown 1 px": DecodeParams("watershed", min_seed=8, min_size=16,
                                                                              dilate=1)}
    print(f"{platform.node()} ({os.cpu_count()} cores), one thread; {args.size}x{args.size}, {present} objects "
          f"visible of {args.objects} placed; median of {args.repeats}")
    print("| decoder | median s | objects found | object AP |\n|---|---:|---:|---:|")
    for name, params in settings.items():
        decode(probs, params)  # the first call imports what the decoder needs
        times, found = [], None
        for _ in range(args.repeats):
            began = time.perf_counter()
            found = decode(probs, params)
            times.append(time.perf_counter() - began)
        print(f"| {name} | {statistics.median(times):.3f} | {int(found.max())} | "
              f"{object_ap_labels(found, labels):.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
