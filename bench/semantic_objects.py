"""Object AP of a semantic recipe: the connected components of its tuned-free union mask (p > 0.5, 8-neighbour),
scored against an instance recipe's objects, on the same images; the row the instance ablation starts from.

    .venv/bin/python bench/semantic_objects.py --semantic configs/dsb2018_nuclei.yaml \\
        --instances configs/dsb2018_instances.yaml [key.sub=value ...]

Reads the semantic experiment's final ensemble OOF store (``segkit run`` of that config must be complete) and the
instance recipe's instance maps; the overrides apply to both configs (e.g. ``paths.runs=...``). Prints the mean
object AP over the OOF images, the precision at IoU 0.5 and 0.75, and the split and merged objects per image.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

import numpy as np


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--semantic", required=True)
    parser.add_argument("--instances", required=True)
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value")
    args = parser.parse_args(argv)
    from segkit.artifacts.probs import ProbStore
    from segkit.config import load_config
    from segkit.data import Competition
    from segkit.metrics.competition import object_scores
    from segkit.postprocess.instances import DecodeParams, decode

    semantic = load_config(args.semantic, args.overrides)
    instances = load_config(args.instances, args.overrides)
    store = ProbStore(semantic.layout.final_ensemble.oof)
    comp = Competition(instances.data, seed=instances.seed)
    began = time.perf_counter()
    rows = [object_scores(decode(np.asarray(store[i]), DecodeParams("components")), comp.instance_map(i))
            for i in store.ids]
    mean = {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}
    print(f"{platform.node()} ({os.cpu_count()} cores); {semantic.experiment} OOF ({store.folder}), "
          f"{len(rows)} images, {time.perf_counter() - began:.0f} s")
    print("| decoder | object AP | AP@0.50 | AP@0.75 | true / image | pred / image | split / image | merged / image |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    print(f"| connected components, p > 0.5 | {mean['ap']:.4f} | {mean['ap50']:.4f} | {mean['ap75']:.4f} | "
          f"{mean['true_objects']:.1f} | {mean['pred_objects']:.1f} | {mean['split']:.2f} | {mean['merged']:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
