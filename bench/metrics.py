"""Benchmark segkit.metrics against the reference libraries, side by side in one run.

    .venv/bin/pip install -r bench/requirements.txt   # medpy, monai, surface-distance: bench-only
    .venv/bin/python bench/metrics.py [--quick]

1. Surface distances (HD95 of one mask pair) at 512^2, 1024^2 and 128^3 (anisotropic spacing) against medpy,
   MONAI and DeepMind's surface-distance; each library's number is checked against ours under the matching
   convention. 2. Confusion counts against smp.metrics.get_stats. 3. Competition scoring of a TGS-sized set
   (4000 images 101^2) and a threshold sweep, against a per-image loop as competition notebooks write it.

Everything runs single-threaded (torch too) so the libraries compare like for like on a shared box; each
timing is the median of interleaved repeats, so load that comes and goes hits every library alike.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
import warnings

os.environ.setdefault("OMP_NUM_THREADS", "1")
warnings.filterwarnings("ignore")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from scipy import ndimage as ndi  # noqa: E402

import segkit  # noqa: E402, F401  (import fixes for torchvision come first)
from segkit import metrics as M  # noqa: E402
from segkit.artifacts.probs import dequantize, quantize  # noqa: E402

torch.set_num_threads(1)


def organ_pair(shape, rng, fill=0.2):
    """Smooth blobby truth; prediction with a jittered boundary, a missed lobe and a false-positive speck."""
    field = ndi.gaussian_filter(rng.standard_normal(shape), sigma=max(shape) / 10)
    level = np.quantile(field, 1 - fill)
    truth = field > level
    jitter = ndi.gaussian_filter(rng.standard_normal(shape), sigma=max(shape) / 60)
    pred = field + 0.25 * field.std() * jitter / jitter.std() > level
    centre = tuple(int(s * 0.7) for s in shape)
    miss = np.zeros(shape, bool)
    miss[tuple(slice(c - s // 16, c + s // 16) for c, s in zip(centre, shape))] = True
    pred &= ~miss
    speck = tuple(slice(int(s * 0.05), int(s * 0.05) + 3) for s in shape)
    pred[speck] = True
    return pred, truth


def timed(fn, repeats):
    out = None
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return out, times


def interleaved(fns: dict, repeats: int) -> tuple[dict, dict]:
    """Run each function once per round, `repeats` rounds: returns (last outputs, median seconds)."""
    outs = {name: fn() for name, fn in fns.items()}  # warm-up: numba cache load, imports, allocations
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            outs[name], t = timed(fn, 1)
            times[name] += t
    return outs, {name: statistics.median(t) for name, t in times.items()}


def bench_surface(quick: bool) -> None:
    import surface_distance as deepmind
    from medpy.metric import binary as medpy
    from monai.metrics import compute_average_surface_distance, compute_hausdorff_distance

    cases = [
        ("512x512", (512, 512), (1.0, 1.0)),
        ("1024x1024", (1024, 1024), (1.0, 1.0)),
        ("128^3", (128, 128, 128), (2.0, 0.8, 0.8)),
    ]
    rng = np.random.default_rng(0)
    print("\n### Surface distances: HD95 of one pair (ms, median; ratio = their time / ours)\n")
    print(
        "| case | surface px (pred/truth) | segkit | medpy | MONAI | surface-distance | medpy/segkit "
        "| MONAI/segkit | s-d/segkit | faster of MONAI, s-d / segkit |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    checks = []
    for label, shape, spacing in cases:
        pred, truth = organ_pair(shape, rng)
        tp, tt = torch.from_numpy(pred)[None, None], torch.from_numpy(truth)[None, None]
        repeats = 3 if quick else (5 if len(shape) == 2 else 3)
        fns = {
            "segkit": lambda: M.hd95(pred, truth, spacing),
            "medpy": lambda: medpy.hd95(pred, truth, voxelspacing=spacing),
            "monai": lambda: float(
                compute_hausdorff_distance(
                    tp, tt, include_background=True, percentile=95, spacing=list(spacing)
                )[0, 0]
            ),
            "deepmind": lambda: deepmind.compute_robust_hausdorff(
                deepmind.compute_surface_distances(truth, pred, spacing), 95
            ),
        }
        outs, med = interleaved(fns, repeats)
        d = M.surface_distances(pred, truth, spacing)
        n_surface = f"{d.pred_to_truth.size}/{d.truth_to_pred.size}"
        ms = {k: v * 1e3 for k, v in med.items()}
        best_anchor = min(ms["monai"], ms["deepmind"])
        print(
            f"| {label} | {n_surface} | {ms['segkit']:.1f} | {ms['medpy']:.0f} | {ms['monai']:.0f} "
            f"| {ms['deepmind']:.0f} | {ms['medpy'] / ms['segkit']:.1f}x | {ms['monai'] / ms['segkit']:.1f}x "
            f"| {ms['deepmind'] / ms['segkit']:.1f}x | {best_anchor / ms['segkit']:.1f}x |"
        )
        monai_assd = float(
            compute_average_surface_distance(
                tp, tt, include_background=True, symmetric=True, spacing=list(spacing)
            )[0, 0]
        )
        dm = deepmind.compute_surface_distances(truth, pred, spacing)
        dm_avg = deepmind.compute_average_surface_distance(dm)
        checks.append(
            (
                label,
                [
                    ("HD95 medpy conv.", d.hd95("medpy"), outs["medpy"]),
                    ("HD95 monai conv.", d.hd95("monai"), outs["monai"]),
                    ("HD95 monai conv. vs surface-distance", d.hd95("monai"), outs["deepmind"]),
                    ("HD", d.hausdorff(), medpy.hd(pred, truth, voxelspacing=spacing)),
                    ("ASSD vs medpy", d.assd(), medpy.assd(pred, truth, voxelspacing=spacing)),
                    ("ASSD vs MONAI", d.assd(), monai_assd),
                    ("ASD pred->truth vs medpy", d.asd(), medpy.asd(pred, truth, voxelspacing=spacing)),
                    ("ASD pred->truth vs surface-distance", d.asd(), dm_avg[1]),
                ],
            )
        )
    print("\n### Agreement (segkit vs reference, same convention unless noted)\n")
    print("| case | quantity | segkit | reference | abs diff |")
    print("|---|---|---|---|---|")
    for label, rows in checks:
        for what, ours, theirs in rows:
            print(
                f"| {label} | {what} | {ours:.6f} | {float(theirs):.6f} | {abs(ours - float(theirs)):.2e} |"
            )


def bench_confusion(quick: bool) -> None:
    import segmentation_models_pytorch as smp

    rng = np.random.default_rng(1)
    shape = (32, 4, 256, 256) if quick else (64, 4, 256, 256)
    pred = rng.random(shape) < 0.3
    truth = rng.random(shape) < 0.3
    tp_, tt_ = torch.from_numpy(pred), torch.from_numpy(truth)
    tl_, ttl_ = tp_.long(), tt_.long()
    fns = {
        "segkit": lambda: M.confusion(pred, truth).tp,
        "smp bool": lambda: smp.metrics.get_stats(tp_, tt_, mode="multilabel")[0].numpy(),
        "smp int64": lambda: smp.metrics.get_stats(tl_, ttl_, mode="multilabel")[0].numpy(),
    }
    outs, med = interleaved(fns, 3 if quick else 5)
    assert all((o == outs["segkit"]).all() for o in outs.values())
    print(f"\n### Confusion counts of {shape} bool masks (ms, median; identical counts)\n")
    print("| segkit | smp.get_stats (bool tensors) | smp.get_stats (int64 tensors) | ratios |")
    print("|---|---|---|---|")
    ms = {k: v * 1e3 for k, v in med.items()}
    print(
        f"| {ms['segkit']:.1f} | {ms['smp bool']:.1f} | {ms['smp int64']:.1f} "
        f"| {ms['smp bool'] / ms['segkit']:.1f}x, {ms['smp int64'] / ms['segkit']:.1f}x |"
    )


def notebook_tgs(pred: np.ndarray, truth: np.ndarray) -> float:
    """The TGS metric for one image as competition notebooks wrote it: float IoU, loop over thresholds."""
    p, t = pred.sum(), truth.sum()
    if p == 0 and t == 0:
        return 1.0
    if p == 0 or t == 0:
        return 0.0
    inter = np.logical_and(pred, truth).sum()
    iou = inter / (p + t - inter)
    return float(np.mean([iou > thr for thr in np.arange(0.5, 1.0, 0.05)]))


def bench_competition(quick: bool) -> None:
    rng = np.random.default_rng(2)
    n = 1000 if quick else 4000
    field = ndi.gaussian_filter(rng.standard_normal((n, 101, 101)), sigma=(0, 12, 12))
    field /= field.std(axis=(1, 2), keepdims=True)
    truth = (field > 0.3)[:, None]
    truth[: n // 3] = False  # a third of TGS images have no salt
    noise = ndi.gaussian_filter(rng.standard_normal((n, 101, 101)), sigma=(0, 4, 4))
    probs = 1 / (1 + np.exp(-3 * (field + 0.5 * noise / noise.std() - 0.3)))
    q = quantize(probs[:, None])
    pred = q >= 128
    thresholds = [round(0.05 * i, 2) for i in range(2, 19)]  # tune's default grid: 17 thresholds
    tgs = M.get_metric("tgs")

    def notebook_sweep():
        levels = dequantize(q)
        return np.array(
            [[notebook_tgs(levels[i, 0] >= t, truth[i, 0]) for i in range(n)] for t in thresholds]
        )

    fns_one = {
        "segkit score_many": lambda: tgs.score_many(pred, truth),
        "segkit per-image loop": lambda: np.array([tgs(pred[i], truth[i]) for i in range(n)]),
        "notebook loop": lambda: np.array([notebook_tgs(pred[i, 0], truth[i, 0]) for i in range(n)]),
    }
    outs, med = interleaved(fns_one, 3)
    assert np.allclose(outs["segkit score_many"], outs["notebook loop"])
    fns_sweep = {
        "segkit score_thresholds": lambda: tgs.score_thresholds(q, truth, thresholds),
        "segkit score_many per threshold": lambda: np.stack(
            [tgs.score_many(dequantize(q) >= np.float32(t), truth) for t in thresholds]
        ),
        "notebook loop": notebook_sweep,
    }
    outs2, med2 = interleaved(fns_sweep, 1 if quick else 2)
    assert np.allclose(outs2["segkit score_thresholds"], outs2["notebook loop"])
    print(f"\n### TGS metric on {n} images of 101x101 (ms, median; identical scores)\n")
    print("| task | segkit vectorised | segkit per-image | notebook-style loop | notebook / vectorised |")
    print("|---|---|---|---|---|")
    ms = {k: v * 1e3 for k, v in med.items()}
    print(
        f"| score one set of masks | {ms['segkit score_many']:.1f} | {ms['segkit per-image loop']:.0f} "
        f"| {ms['notebook loop']:.0f} | {ms['notebook loop'] / ms['segkit score_many']:.0f}x |"
    )
    ms2 = {k: v * 1e3 for k, v in med2.items()}
    print(
        f"| sweep {len(thresholds)} thresholds (uint8 probs) | {ms2['segkit score_thresholds']:.1f} "
        f"| {ms2['segkit score_many per threshold']:.0f} (score_many per threshold) "
        f"| {ms2['notebook loop']:.0f} | {ms2['notebook loop'] / ms2['segkit score_thresholds']:.0f}x |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats and a smaller TGS set")
    args = parser.parse_args()
    print(
        f"# segkit.metrics bench — {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"numpy {np.__version__}, torch threads {torch.get_num_threads()}"
    )
    bench_surface(args.quick)
    bench_confusion(args.quick)
    bench_competition(args.quick)


if __name__ == "__main__":
    main()
