"""3D patch augmentation, MONAI's dictionary transforms against TorchIO's, on the same pipeline and patches.

Both run the transforms segkit's ``medium`` preset holds that both libraries have: a mirror along each axis
(p 0.5), an affine of up to 15 degrees and 15 % scale (p 0.2, and a second run with it always on, since it is the
costly one), gamma (p 0.3) and Gaussian noise (p 0.15), on an image and its label patch. Reported: milliseconds a
patch (median of 5 rounds of 20 patches, the two libraries' rounds alternating), and the ratio TorchIO / MONAI.

    PYTHONPATH=<folder with torchio> .venv/bin/python bench/augment3d.py

TorchIO is not one of segkit's requirements: install it beside them for this comparison
(``pip install --target DIR torchio simpleitk deprecated humanize jaxtyping rich typer``).
"""

from __future__ import annotations

import math
import statistics
import time

import torch

torch.set_num_threads(2)
PATCHES = {"hippocampus 40x56x40": (40, 56, 40), "la2018 96x72x48": (96, 72, 48)}
ROUNDS, N = 5, 20


def monai_pipeline(patch, affine_p: float):
    from monai import transforms as T
    from monai.data import set_track_meta

    set_track_meta(False)
    both = ("image", "label")
    t = T.Compose([*(T.RandFlipd(both, prob=0.5, spatial_axis=a) for a in range(3)),
                   T.RandAffined(both, prob=affine_p, rotate_range=(math.radians(15),) * 3, scale_range=(0.15,) * 3,
                                 mode=("bilinear", "nearest"), padding_mode="zeros", spatial_size=patch),
                   T.RandAdjustContrastd("image", gamma=(0.7, 1.5), prob=0.3),
                   T.RandGaussianNoised("image", std=0.1, prob=0.15)])

    def run(image, label, seed):
        t.set_random_state(seed=seed)
        out = t({"image": image, "label": label})
        return out["image"], out["label"]
    return run


def torchio_pipeline(patch, affine_p: float):
    import torchio as tio

    t = tio.Compose([tio.RandomFlip(axes=(0, 1, 2), flip_probability=0.5),
                     tio.RandomAffine(scales=0.15, degrees=15, p=affine_p, image_interpolation="linear"),
                     tio.RandomGamma(log_gamma=(math.log(0.7), math.log(1.5)), p=0.3),
                     tio.RandomNoise(std=0.1, p=0.15)])

    def run(image, label, seed):
        torch.manual_seed(seed)
        subject = tio.Subject(image=tio.ScalarImage(tensor=image), label=tio.LabelMap(tensor=label))
        out = t(subject)
        return out["image"].data, out["label"].data
    return run


def timed(runs: dict, patch) -> dict:
    """Milliseconds a patch of each pipeline in ``runs``, the rounds alternating between them so that a drift in the
    machine's speed meets every pipeline alike."""
    image = torch.randn(1, *patch)
    label = (torch.rand(1, *patch) > 0.9).to(torch.uint8)
    for run in runs.values():
        run(image, label, 0)
    rounds: dict = {name: [] for name in runs}
    for r in range(ROUNDS):
        for name, run in runs.items():
            began = time.perf_counter()
            for s in range(N):
                run(image, label, r * N + s)
            rounds[name].append((time.perf_counter() - began) / N * 1000)
    return {name: statistics.median(v) for name, v in rounds.items()}


def main() -> None:
    try:
        import torchio  # noqa: F401
        have_tio = True
    except ImportError:
        have_tio = False
        print("TorchIO is not installed: MONAI alone (see the docstring)")
    print(f"{'patch':24} {'affine p':>8} {'MONAI ms':>9} {'TorchIO ms':>11} {'TorchIO/MONAI':>14}")
    for name, patch in PATCHES.items():
        for p in (0.2, 1.0):
            runs = {"monai": monai_pipeline(patch, p)}
            if have_tio:
                runs["torchio"] = torchio_pipeline(patch, p)
            ms = timed(runs, patch)
            m, t = ms["monai"], ms.get("torchio", float("nan"))
            print(f"{name:24} {p:8.1f} {m:9.1f} {t:11.1f} {t / m:14.2f}")


if __name__ == "__main__":
    main()
