"""Which keep rule should ``tune.min_gain`` default to? Every rule's search on a finished run's ensemble OOF, with
its in-sample CV (chosen and scored on the same images), its nested CV (each fold scored with what a search on the
other folds chose) and, where the run has a holdout, the holdout score of the parameters chosen on all folds.

    .venv/bin/python bench/tune_rules.py --config configs/demo.yaml --test-truth data/demo/test_truth.csv
    .venv/bin/python bench/tune_rules.py --config configs/tgs_salt.yaml --rules 0,0.0005,most_folds,fold_se

The run must be complete up to the ensemble (``segkit run``); nothing is written. A good rule has the highest
nested CV; the gap between in-sample and nested is the optimism of the search, which the holdout confirms or not.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import numpy as np  # noqa: E402  (after the environment is set)
import pandas as pd  # noqa: E402

from segkit.artifacts.probs import ProbStore  # noqa: E402
from segkit.config import load_config  # noqa: E402
from segkit.data import Competition, rle  # noqa: E402
from segkit.data.folds import load_folds  # noqa: E402
from segkit.metrics import get_metric  # noqa: E402
from segkit.postprocess.masks import ClassParams  # noqa: E402
from segkit.stages.tune import OOFStream, final_scores, tune  # noqa: E402
from segkit.stages.tune.stage import folds_of  # noqa: E402


def rule(text: str):
    try:
        return float(text)
    except ValueError:
        return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--rules", default="0,0.0005,0.001,most_folds,fold_se",
                        help="comma-separated tune.min_gain values (numbers or rule names)")
    parser.add_argument("--test-truth", help="a csv (id, rle) of the test images' hidden masks (the demo has one)")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    cfg = load_config(args.config, args.overrides)
    comp = Competition(cfg.data, seed=cfg.seed)
    metric = get_metric(cfg.metric)
    exclusive = cfg.data.mode == "multiclass"
    store = ProbStore(cfg.layout.final_ensemble.oof)
    source = OOFStream(store, comp.read_mask, exclusive)
    folds = folds_of(store.ids, load_folds(cfg, comp))
    if folds is None:
        raise SystemExit(f"{cfg.layout.folds_file}: the OOF images need a fold each for a nested estimate")
    holdout = None
    if comp.holdout_ids:
        holdout = OOFStream(ProbStore(cfg.layout.final_ensemble.test), comp.read_mask, exclusive,
                            ids=comp.holdout_ids)
    elif args.test_truth:
        test = ProbStore(cfg.layout.final_ensemble.test)
        truth = dict(pd.read_csv(args.test_truth, dtype=str, keep_default_na=False).itertuples(index=False))

        def read(image_id: str) -> np.ndarray:
            return rle.decode(truth[image_id], test[image_id].shape[1:], order=cfg.data.rle.order)[None]

        holdout = OOFStream(test, read, exclusive, ids=list(truth))
    classes = list(cfg.data.classes)
    print(f"{cfg.experiment}: {len(source)} OOF images in {len(set(folds))} folds, metric {metric.name}"
          + (f", holdout {len(holdout)} images" if holdout else "")
          + f"; {platform.node()}, {os.cpu_count()} cores")
    print("| tune.min_gain | steps kept | in-sample CV | nested CV | holdout | seconds | chosen on all folds |")
    print("|---|---:|---:|---:|---:|---:|---|")
    def holdout_score(params: list[ClassParams]) -> str:
        return f"{final_scores(holdout, metric, params, exclusive)['score'].mean():.4f}" if holdout is not None else ""

    untuned = [ClassParams() for _ in classes]
    baseline = final_scores(source, metric, untuned, exclusive)["score"].mean()
    print(f"| untuned (p > 0.5) | 0 | {baseline:.4f} | {baseline:.4f} | {holdout_score(untuned)} | | p>0.50 |")
    for text in args.rules.split(","):
        began = time.perf_counter()
        result = tune(source, classes, metric, cfg.tune.model_copy(update={"min_gain": rule(text)}), folds=folds)
        kept = sum(1 for s in result["steps"][1:] if s["kept"])
        score = holdout_score([ClassParams.from_dict(result["classes"][c]) for c in classes])
        print(f"| {text} | {kept} | {result['cv']:.4f} | {result['cv_nested']:.4f} | {score} | "
              f"{time.perf_counter() - began:.1f} | {'; '.join(result['summary'].values())} |", flush=True)


if __name__ == "__main__":
    main()
