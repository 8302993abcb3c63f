"""The instance step of ``segkit tune``: the decoder and its parameters (``segkit.postprocess.instances``), chosen on
the OOF probabilities for the competition's object AP (IoU 0.5:0.95, per image, then averaged).

The search runs in two parts, each kept only where it gains (any positive mean gain, the slice-wise rule):

1. the objects' seeds: the decoder (connected components, or the watershed where a contour channel was trained),
   then the mask threshold, the seed threshold and the minimum seed size, one at a time in that order, each set to
   its best value with the others held (coordinate ascent from the defaults, p > 0.5);
2. the clean-up of the objects those make: every pair of minimum object size and growth back (``dilate``).

Honest evidence, as in the rest of tune: for every fold k the whole search is run again on the other folds'
images and fold k's images are scored with what it chose, so ``cv_nested`` never saw a label of the images it
scores; ``cv`` is the in-sample figure of the choice made on all. Each candidate decodes every image once and its
per-image AP is kept (a vector of floats), so the folds' searches share what they both try. ``max_images`` caps the
images the search decodes (an even sample over the folds); the probabilities and instance maps of those are held
in memory while it runs (uint8 and uint16: DSB's 664 images take about 0.3 GB).
"""

from __future__ import annotations

import time
from typing import Callable, Sequence

import numpy as np

from segkit.config.schema import InstanceTune
from segkit.metrics.competition import object_ap_labels
from segkit.postprocess.instances import DECODERS, DecodeParams, finish
from segkit.progress import bar

Finish = tuple[int, int]  # (min_size, dilate)


class Candidates:
    """Per-image object AP of decoder settings on the chosen images, each setting decoded once."""

    def __init__(self, probs: list[np.ndarray], truths: list[np.ndarray]):
        self.probs, self.truths = probs, truths
        self._cache: dict[tuple, np.ndarray] = {}
        self.decoded = 0

    def scores(self, params: DecodeParams, finishes: Sequence[Finish] = ((0, 0),)) -> np.ndarray:
        """(images, len(finishes)): the AP of every image with the seeding of ``params`` and each clean-up."""
        seeding = (params.decoder, params.mask, params.seed, params.min_seed)
        todo = [f for f in finishes if seeding + f not in self._cache]
        if todo:
            raw_of = DECODERS.get(params.decoder, "tune.instances")
            table = np.empty((len(self.probs), len(todo)))
            for i, (p, truth) in enumerate(bar(list(zip(self.probs, self.truths)), "tune: instance decoding")):
                raw = raw_of(p, params)
                for j, (size, dilate) in enumerate(todo):
                    table[i, j] = object_ap_labels(finish(raw, params.replace(min_size=size, dilate=dilate)), truth)
            self.decoded += len(self.probs)
            for j, f in enumerate(todo):
                self._cache[seeding + f] = table[:, j]
        return np.stack([self._cache[seeding + f] for f in finishes], axis=1)

    def of(self, params: DecodeParams) -> np.ndarray:
        """(images,): the AP of every image decoded with exactly ``params``."""
        return self.scores(params, [(params.min_size, params.dilate)])[:, 0]


def search(cands: Candidates, rows: np.ndarray, grid: InstanceTune, contour: bool) -> tuple[DecodeParams, list]:
    """The choice made on ``rows`` of the candidates' images, and its steps (for tune.json)."""
    best = DecodeParams(decoder="components")
    score = float(cands.scores(best)[rows].mean())
    steps = [{"step": "components p>0.5", "cv": score, "kept": True}]

    def consider(name: str, options: list[DecodeParams]) -> None:
        nonlocal best, score
        means = [float(cands.scores(o)[rows].mean()) for o in options]
        j = int(np.argmax(means))
        kept = means[j] > score
        if kept:
            best, score = options[j], means[j]
        steps.append({"step": name, "cv": means[j], "kept": kept, "value": options[j].to_json()})

    if contour:
        consider("watershed", [best.replace(decoder="watershed")])
    consider("mask threshold", [best.replace(mask=t) for t in grid.masks])
    if best.decoder == "watershed":
        consider("seed threshold", [best.replace(seed=t) for t in grid.seeds])
        consider("min seed size", [best.replace(min_seed=s) for s in grid.min_seeds])
    finishes = [(s, d) for s in grid.min_sizes for d in grid.dilations]
    table = cands.scores(best, finishes)[rows].mean(0)
    j = int(np.argmax(table))
    kept = table[j] > score
    if kept:
        best, score = best.replace(min_size=finishes[j][0], dilate=finishes[j][1]), float(table[j])
    steps.append({"step": "min object size, growth", "cv": float(table[j]), "kept": bool(kept),
                  "value": {"min_size": finishes[j][0], "dilate": finishes[j][1]}})
    return best, steps


def nested(cands: Candidates, keys: np.ndarray, grid: InstanceTune, contour: bool,
           scored: Sequence[int] | None = None) -> tuple[np.ndarray, dict[int, DecodeParams]]:
    """Per image, its AP with what the search chose on the other folds' images, for the folds ``scored`` (default:
    every fold of ``keys``, the images' folds; the others' images are NaN), and each fold's choice."""
    out = np.full(len(keys), np.nan)
    picks = {}
    for k in sorted(set(keys.tolist()) if scored is None else scored):
        rows = keys == k
        picks[k], _ = search(cands, np.flatnonzero(~rows), grid, contour)
        out[rows] = cands.of(picks[k])[rows]
    return out, picks


def sample(ids: Sequence[str], folds: Sequence[int] | None, cap: int | None) -> list[int]:
    """Indices of at most ``cap`` of ``ids``: every fold alike (a fixed stride through each fold's images)."""
    if cap is None or len(ids) <= cap:
        return list(range(len(ids)))
    keys = np.asarray(folds if folds is not None else np.zeros(len(ids), int))
    out = []
    for k in np.unique(keys):
        members = np.flatnonzero(keys == k)
        take = max(1, round(cap * len(members) / len(ids)))
        out += members[np.linspace(0, len(members) - 1, take).round().astype(int)].tolist()
    return sorted(set(out))


def _compact(labels: np.ndarray) -> np.ndarray:
    return labels.astype(np.uint16) if labels.max() < 2**16 else labels


def tune_instances(ids: Sequence[str], folds: Sequence[int] | None, read_probs: Callable[[str], np.ndarray],
                   read_instances: Callable[[str], np.ndarray], grid: InstanceTune, contour: bool) -> dict:
    """The step's choice on every (sampled) OOF image and, with folds, its nested estimate; for tune.json."""
    began = time.perf_counter()
    chosen = sample(ids, folds, grid.max_images)
    probs = [np.asarray(read_probs(ids[i])) for i in chosen]
    truths = [_compact(read_instances(ids[i])) for i in chosen]
    cands = Candidates(probs, truths)
    every = np.arange(len(chosen))
    params, steps = search(cands, every, grid, contour)
    per_image = cands.of(params)
    out = {"images": len(chosen), "params": params.to_json(), "summary": params.describe(), "steps": steps,
           "cv": float(per_image.mean()), "components_p0.5": float(cands.scores(DecodeParams("components")).mean()),
           "cv_nested": None, "nested": {}, "ids": [ids[i] for i in chosen]}
    if folds is not None and len(set(folds)) > 1:
        per_fold, picks = nested(cands, np.asarray([folds[i] for i in chosen]), grid, contour)
        out["nested"] = {str(k): pick.to_json() for k, pick in picks.items()}
        out["cv_nested"] = float(per_fold.mean())
        out["per_image_nested"] = per_fold.tolist()
    out["per_image"] = per_image.tolist()
    out["seconds"] = round(time.perf_counter() - began, 1)
    out["decoded_images"] = cands.decoded
    return out
