"""An experiment's offline bundles side by side: what each carries (networks, wheels, all) and, with ``--score``,
the holdout score of the float16 weights against the float32 ones (the change fp16 makes).

    .venv/bin/python bench/bundle.py --config configs/demo.yaml --wheels
    .venv/bin/python bench/bundle.py --config configs/tgs_salt.yaml paths.runs=/work/wt_runs/runs \\
        paths.submissions=/work/wt_runs/subs --score

Rows: the checkpoints as a bundle carried them before (``*.pt`` with the training state), the weights as
safetensors in float32 and in float16 (``segkit package --no-wheels``); with ``--wheels`` the bundles for
``--target kaggle-gpu`` and ``--target any`` with their wheels, and the wheels a bundle carried before (every
package inference imports and their dependencies, torch and torchvision included: ``pip download``). With
``--score`` (a config with ``data.holdout_fraction``) the float32 and float16 bundles' infer.py predict the held-out
images, each submission is scored against ``holdout_truth.csv`` with the config's metric, and the float32 one is
compared with ``segkit submit``'s byte for byte. Everything is written to a temporary folder.
"""

from __future__ import annotations

import argparse
import importlib.metadata as metadata
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def size(folder: Path, pattern: str = "*") -> int:
    return sum(p.stat().st_size for p in Path(folder).rglob(pattern) if p.is_file())


def mib(n: int) -> str:
    return f"{n / 2**20:.1f}"


def old_wheels(into: Path) -> int:
    """The wheels a bundle carried before: the pinned inference packages with torch and torchvision, and every
    dependency pip resolves for them."""
    from segkit.bundle.targets import INFER_PACKAGES

    pins = [f"{n}=={metadata.version(n)}" for n in INFER_PACKAGES + ["torchvision"]]
    subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--dest", str(into), *pins], check=True)
    return size(into)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--wheels", action="store_true", help="also the bundles with wheels (minutes: pip)")
    parser.add_argument("--score", action="store_true", help="score fp16 against fp32 weights on the holdout")
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value")
    args = parser.parse_args(argv)

    from segkit.bundle.infer import main as infer
    from segkit.cli import main as segkit
    from segkit.config import load_config
    from segkit.data import Competition
    from segkit.data.folds import fold_numbers, load_folds
    from segkit.models.checkpoint import fold_checkpoints
    from segkit.tools.score import score_files

    cfg = load_config(args.config, args.overrides)
    common = ["--config", args.config, *args.overrides]
    comp = Competition(cfg.data, seed=cfg.seed)
    folds = fold_numbers(load_folds(cfg, comp))
    checkpoints = [c for m in cfg.models for k in folds for c in fold_checkpoints(cfg, m.name, k)]
    rows = [("checkpoints as bundles carried them (.pt, training state)", sum(c.stat().st_size for c in checkpoints),
             None, None)]
    work = Path(tempfile.mkdtemp(prefix="bundle-bench-"))
    bundles = {}
    for weights in ("fp32", "fp16"):
        out = work / f"b_{weights}"
        began = time.perf_counter()
        assert segkit(["package", *common, "--out", str(out), "--no-wheels", "--weights", weights]) == 0
        bundles[weights] = out
        rows.append((f"weights as safetensors, {weights} (--no-wheels)", size(out / "models"), size(out),
                     time.perf_counter() - began))
    if args.wheels:
        for target in ("kaggle-gpu", "any"):
            out = work / f"b_{target}"
            began = time.perf_counter()
            assert segkit(["package", *common, "--out", str(out), "--target", target]) == 0
            numpy = size(out / "wheels", "numpy-*.whl")
            rows.append((f"--target {target} (fp16), wheels {mib(size(out / 'wheels'))} MiB"
                         + (f" ({mib(numpy)} of them numpy)" if numpy else ""),
                         size(out / "models"), size(out), time.perf_counter() - began))
        began = time.perf_counter()
        before = old_wheels(work / "old_wheels")
        rows.append(("wheels as bundles carried them (torch, torchvision and all: pip download)", None, before,
                     time.perf_counter() - began))

    print(f"\nbundle sizes ({cfg.experiment}; python {platform.python_version()}):\n")
    print("| what | networks MiB | bundle MiB | seconds |\n|---|---|---|---|")
    for what, nets, total, seconds in rows:
        print(f"| {what} | {mib(nets) if nets is not None else ''} | {mib(total) if total is not None else ''} | "
              f"{f'{seconds:.0f}' if seconds is not None else ''} |")

    if args.score:
        truth = cfg.layout.holdout_truth
        submitted = cfg.layout.submission
        if not truth.exists() or not submitted.exists():
            sys.exit(f"--score: {truth} and {submitted} are needed (a config with data.holdout_fraction, submitted)")
        import pandas as pd

        frame = pd.read_csv(submitted, dtype=str)
        ids = frame.iloc[:, 0]
        sample = work / "holdout_sample.csv"  # the held-out ids as a sample submission, masks empty
        frame.assign(**{frame.columns[1]: ""}).to_csv(sample, index=False)
        images = cfg.data.path("train_images")
        print(f"\nholdout ({len(ids)} images of {images}), metric {cfg.metric}:\n")
        print("| weights | holdout score | seconds | the csv against `segkit submit`'s |\n|---|---|---|---|")
        shape = tuple(comp.image_size(str(ids[0]), "train"))  # a competition of one image size (TGS: 101 x 101)
        scores = {}
        for weights, bundle in bundles.items():
            out = work / f"sub_{weights}.csv"
            began = time.perf_counter()
            assert infer(["--test", str(images), "--sample", str(sample), "--out", str(out), "--device", "cpu"],
                         bundle=bundle) == 0
            took = time.perf_counter() - began
            scores[weights], _, _ = score_files(out, truth, cfg.metric, shape)
            same = "byte-identical" if out.read_bytes() == submitted.read_bytes() else \
                f"{sum(a != b for a, b in zip(out.read_text().splitlines(), submitted.read_text().splitlines()))} " \
                f"rows differ"
            print(f"| {weights} | {scores[weights]:.4f} | {took:.0f} | {same} |")
        print(f"\nfp16 - fp32: {scores['fp16'] - scores['fp32']:+.6f}")
    print(f"\n(work folder: {work})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
