"""The data the GPU check takes along (the GPU machine sees nothing outside the repo's folder): a subset of TGS
Salt and of DSB 2018 in their competitions' own layouts, or, for the dry run, a synthetic set shaped like TGS.

    .venv/bin/python bench/gpu_data.py --out .gpu_data [--tiles 1000] [--dsb 64]

Subsets take every k-th id in id order, so they are the same on every machine and spread over the whole set.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import numpy as np
import pandas as pd

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets"


def _every_kth(ids: list[str], n: int) -> list[str]:
    ids = sorted(ids)
    step = max(len(ids) // n, 1)
    return ids[::step][:n]


def subset_tgs(out: Path, n: int, source: Path = SHARED / "tgs-salt") -> Path:
    """``n`` TGS tiles: images/, train.csv and depths.csv, as configs/tgs_salt.yaml reads them."""
    train = pd.read_csv(source / "train.csv", keep_default_na=False)
    ids = _every_kth(train["id"].tolist(), n)
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    for i in ids:
        shutil.copyfile(source / "images" / f"{i}.png", out / "images" / f"{i}.png")
    train[train["id"].isin(ids)].to_csv(out / "train.csv", index=False)
    depths = pd.read_csv(source / "depths.csv")
    depths[depths["id"].isin(ids)].to_csv(out / "depths.csv", index=False)
    return out


def subset_dsb(out: Path, n: int, source: Path = SHARED / "dsb2018-nuclei") -> Path:
    """``n`` DSB images with their union masks: images/ and masks/, as configs/dsb2018_nuclei.yaml reads them."""
    ids = _every_kth([p.stem for p in (source / "images").glob("*.png")], n)
    out = Path(out)
    for folder in ("images", "masks"):
        (out / folder).mkdir(parents=True, exist_ok=True)
        for i in ids:
            shutil.copyfile(source / folder / f"{i}.png", out / folder / f"{i}.png")
    return out


def synthetic_tgs(out: Path, n: int = 40, seed: int = 0) -> Path:
    """A TGS-shaped competition of ``n`` synthetic 101 px tiles (the demo's shapes): images/, train.csv (RLE) and
    depths.csv, so the dry run drives the TGS recipe's own config unchanged but for its data root."""
    from segkit.data.demo import write_competition

    out = Path(out)
    demo = write_competition(out / "_demo", n_train=n, n_test=1, size=101, seed=seed)
    shutil.move(str(demo / "train" / "images"), str(out / "images"))
    shutil.move(str(demo / "train.csv"), str(out / "train.csv"))
    shutil.rmtree(demo)
    ids = pd.read_csv(out / "train.csv")["id"].unique()
    rng = np.random.default_rng(seed)
    pd.DataFrame({"id": ids, "z": rng.integers(50, 950, len(ids))}).to_csv(out / "depths.csv", index=False)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--tiles", type=int, default=1000, help="TGS tiles (0: none)")
    ap.add_argument("--dsb", type=int, default=64, help="DSB images (0: none)")
    args = ap.parse_args()
    if args.out.exists():
        shutil.rmtree(args.out)
    if args.tiles:
        print(f"TGS: {args.tiles} tiles -> {subset_tgs(args.out / 'tgs', args.tiles)}")
    if args.dsb:
        print(f"DSB: {args.dsb} images -> {subset_dsb(args.out / 'dsb', args.dsb)}")


if __name__ == "__main__":
    main()
