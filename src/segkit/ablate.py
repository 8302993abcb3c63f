"""``segkit ablate``: what each trick of a recipe is worth: a plain baseline, the full pipeline, and one trick
added at a time.

The full pipeline is the recipe itself, run by ``segkit run`` (and reused when complete). Two more trainings of the
recipe's first model, on the same folds, epochs and augmentation, isolate the training-side tricks:

    baseline        random-init encoder, BCE alone, no TTA, p > 0.5, no clean-up        (quality/baseline)
    + loss          the recipe's loss (e.g. BCE + Dice, then Lovasz)                      (quality/loss)
    + pretrained    the recipe's encoder weights: the recipe's own first model (its best single epoch's weights, when
                    it trains with ``train.average``: quality/single_epoch)
    + averaging     (``train.average``) the recipe's own first model: SWA or the greedy soup of its last epochs
    + 2.5D context  (2.5D recipes) the rows above see single slices (quality/slices: the recipe's first model
                    with data.context 0); this one is the recipe's model with its neighbouring slices as channels
    + tiles         its best checkpoints re-predicting the images in tiles of ``predict.tile_size``, no TTA
                    (quality/tiles)
    + TTA           its out-of-fold predictions re-made with the recipe's TTA (``predict.repredict_oof``); with
                    orthogonal views (``data.volumes.predict_axes``), along ``data.volumes.axis`` alone
                    (quality/one_axis); with ``predict.tta_scales``, at the native scale alone (quality/one_scale)
    + multi-scale   (``predict.tta_scales``) the same views at every scale: the recipe's TTA OOF
    + views         (orthogonal views) the same averaged over every axis of ``predict_axes``: the recipe's OOF
    2.5D / 3D alone (a recipe with both kinds of network) each kind's models' TTA OOF alone, averaged
    + ensemble      the mean of every recipe model's TTA OOF (when the recipe has more than one)
    + threshold     tuned threshold, minimum area and empty-mask rule (segkit.stages.tune, morphology off)
    + morphology    the whole tune search (hole filling, opening, closing, keep-largest, ...)
    + pseudo        the pseudo-labelled round's models in place of the originals, tuned the same way

Rows add up: each keeps the tricks above it, and its delta is what the one new trick added. Every row is scored on
the same images, the validation images of the chosen folds (``folds``, default all), so a CPU-sized ablation can
train its extra baselines on one fold and still compare like with like. The last line is what ``segkit run``
itself reports (its chosen ensemble method and tuned post-processing) on those same images.

An instance recipe (``data.instances``) is scored in object AP instead, each row decoding the images into objects:
connected components of the mask channel (no TTA) -> + the contour channel and the watershed (defaults) -> + weight
averaging -> + TTA -> + multi-scale TTA -> + ensemble -> + the decoder tuned on every fold's OOF (nested), and segkit
run's own choice. With several networks (a U-Net and Mask R-CNN), each one alone under its own tuned decoder comes
before the tuned ensemble, which is their pixel-wise fusion. A detector first in the recipe has no loss row (it
trains on its own losses).

The tuned rows (threshold, morphology, pseudo, segkit run) are nested: the search runs on every fold's OOF (the
recipe's stores cover them all) and each scored image gets what the search chose on the other folds; the column
beside gives the main metric in-sample (chosen on all folds, the scored images included), the optimistic figure.

Outputs under ``<run_dir>/quality/`` (``segkit.artifacts.layout.QualityPaths``): ``baseline/`` and ``loss/``
(experiments of their own), ``tiles/<model>/`` (a probability store of the chosen folds' images), ``quality.json`` and
``quality.md`` (the table).

The ablation sits beside ``segkit.pipeline`` above the stages: it runs the pipeline and the train and predict
stages on its variant configs, reads their artifacts through the layout, and scores them with the competition's
metric object and the tune package's public search.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import pandas as pd

from segkit import pipeline
from segkit.artifacts import atomic
from segkit.artifacts.layout import round_name
from segkit.commands import BY_NAME, load
from segkit.compute.device import resolve_device
from segkit.compute.distributed import World
from segkit.config import Config
from segkit.data import Competition
from segkit.data.folds import fold_numbers, fold_of, ids_of, load_folds
from segkit.errors import ConfigError, SegkitError
from segkit.inference.repredict import predict_oof
from segkit.metrics import get_metric
from segkit.metrics.competition import object_ap_labels
from segkit.models import dims_of, learns_objects
from segkit.oof import MeanStore, StoreUnion, fold_oof, tta_oof
from segkit.postprocess.instances import DecodeParams, decode
from segkit.postprocess.masks import ClassParams
from segkit.postprocess.tuned import Tuned
from segkit.stages.tune import OOFStream, final_scores, tune
from segkit.stages.tune.instances import Candidates, nested, search

# A trick's delta within this of zero is reported as "no change": below the noise of one CV run.
NOISE = 0.001


# ---------------------------------------------------------------------------------------------------- the rows


@dataclass
class Row:
    name: str
    what: str
    scores: dict[str, float] = field(default_factory=dict)  # metric -> mean per-image score
    note: str = ""
    # tuned rows: the main metric with the choice made on the scored images themselves (their scores are nested)
    in_sample: float | None = None


def _variant(cfg: Config, name: str, weights: bool, loss: bool) -> Config:
    """The recipe with its runs under <run_dir>/quality/<name>/ and model 0 stripped of pretrained weights and/or
    its loss (BCE alone); a 2.5D recipe's variants see single slices (the context is a row of its own)."""
    tree = cfg.model_dump()
    tree["paths"]["runs"] = cfg.layout.quality.runs
    tree["experiment"] = name
    tree["data"]["context"] = 0
    first = tree["models"][0]
    if not weights:
        first["encoder_weights"] = None
    if not loss:
        for section in (tree["train"], first["train"]):
            for key in ("loss", "loss_stages", "loss_params", "class_weights"):
                section.pop(key, None)
        tree["train"]["loss"] = {"bce": 1.0}
    out = Config.model_validate(tree)
    out.source = cfg.source
    return out


def variants(cfg: Config) -> dict[str, Config]:
    first = cfg.models[0]
    if first.arch.lower() != "unet":
        print(f"ablation: note: the recipe's first model is a {first.arch}, so the baseline is one too")
    out = {"baseline": _variant(cfg, "baseline", weights=False, loss=False)}
    if learns_objects(first):
        print(f"ablation: note: {first.arch} trains on its own losses, so there is no loss row")
    else:
        out["loss"] = _variant(cfg, "loss", weights=False, loss=True)
    if cfg.data.context:  # the recipe's own first model on single slices: what the neighbours add is the next row
        out["slices"] = _variant(cfg, "slices", weights=True, loss=True)
    return out


def fold_ids(cfg: Config, folds: Sequence[int], table: pd.DataFrame | None = None) -> tuple[list[str], list[int]]:
    """The ids of the chosen folds' images (all folds when ``folds`` is empty), and the folds."""
    table = load_folds(cfg, Competition(cfg.data, seed=cfg.seed)) if table is None else table
    have = fold_numbers(table)
    chosen = list(folds) if folds else have
    bad = [f for f in chosen if f not in have]
    if bad:
        raise ConfigError(f"--folds {bad}: the fold file {cfg.layout.folds_file} has folds {have}")
    return ids_of(table, chosen), chosen


def _repredict_first(cfg: Config, variant: Config, comp: Competition, folds: Sequence[int], table: pd.DataFrame,
                     folder: Path) -> None:
    """The recipe's first model re-predicting the chosen folds' images under ``variant`` (the recipe with a few
    prediction keys changed) into ``folder``: the store a row compares the recipe's own with."""
    predict_oof(variant, comp, cfg.models[0], table[table["fold"].isin(list(folds))], resolve_device(cfg.device),
                World(), folder=folder)


def predict_tiles(cfg: Config, comp: Competition, folds: Sequence[int], table: pd.DataFrame) -> None:
    """The first model's best checkpoints re-predict their folds' images in tiles without TTA or snapshots, so the
    tiles row shows what tiling alone adds to the training OOF (made from whole padded images)."""
    plain = cfg.model_copy(update={"predict": cfg.predict.model_copy(update={"tta": "none", "snapshots": False})})
    _repredict_first(cfg, plain, comp, folds, table, cfg.layout.quality.tiles(cfg.models[0].name))


def averaged(cfg: Config) -> bool:
    """Whether the recipe's first model trains with weight averaging (its best.pt is then an average)."""
    return cfg.train_for(cfg.models[0]).average is not None


def multi_scale(cfg: Config) -> bool:
    return cfg.predict.tta_scales != [1.0]


def predict_single_epoch(cfg: Config, comp: Competition, folds: Sequence[int], table: pd.DataFrame) -> None:
    """The first model's folds predicted by their best single epoch (best_epoch.pt) without TTA, as the training
    OOF would have been without ``train.average``: the row before the averaging row."""
    single = cfg.model_copy(update={"predict": cfg.predict.model_copy(update={
        "checkpoint": "best_epoch", "tta": "none", "snapshots": False, "tta_scales": [1.0]})})
    _repredict_first(cfg, single, comp, folds, table, cfg.layout.quality.single_epoch(cfg.models[0].name))


def predict_one_scale(cfg: Config, comp: Competition, folds: Sequence[int], table: pd.DataFrame) -> None:
    """The first model's OOF re-predicted with the recipe's TTA at the native scale alone, so the multi-scale row
    shows what the other scales add on the same checkpoints."""
    one = cfg.model_copy(update={"predict": cfg.predict.model_copy(update={"tta_scales": [1.0]})})
    _repredict_first(cfg, one, comp, folds, table, cfg.layout.quality.one_scale(cfg.models[0].name))


def views(cfg: Config) -> bool:
    """Whether the recipe predicts volumes along more than one axis (its TTA row is then one axis alone)."""
    v = cfg.data.volumes
    return v is not None and v.prediction_axes != [v.axis]


def predict_one_axis(cfg: Config, comp: Competition, folds: Sequence[int], table: pd.DataFrame) -> None:
    """The first model's OOF re-predicted with the recipe's TTA along ``data.volumes.axis`` alone, so the views
    row shows what the other axes add on the same checkpoints."""
    spec = cfg.data.volumes.model_copy(update={"predict_axes": None})
    one = cfg.model_copy(update={"data": cfg.data.model_copy(update={"volumes": spec})})
    _repredict_first(cfg, one, comp, folds, table, cfg.layout.quality.one_axis(cfg.models[0].name))


def _tta_store(cfg: Config, model: str, ids: Sequence[str]) -> StoreUnion:
    try:
        return tta_oof(cfg.layout, model, ids)
    except SegkitError as err:
        raise SegkitError(f"{err}; the recipe needs predict.repredict_oof: true for the TTA rows") from None


class Scorer:
    """Scores a store on its ids with every requested metric: raw (p > 0.5) or after a tune search."""

    def __init__(self, cfg: Config, metrics: Sequence[str], comp: Competition):
        self.cfg = cfg
        self.comp = comp
        self.exclusive = cfg.data.mode == "multiclass"
        self.metrics = [get_metric(m, key="--metrics") for m in dict.fromkeys([cfg.metric, *metrics])]

    def _source(self, store) -> OOFStream:
        return OOFStream(store, self.comp.read_mask, self.exclusive, ids=store.ids)

    def _all(self, source: OOFStream, params: list[ClassParams], metrics=None) -> dict[str, float]:
        return {m.name: float(final_scores(source, m, params, self.exclusive)["score"].mean())
                for m in (self.metrics if metrics is None else metrics)}

    def raw(self, store) -> dict[str, float]:
        return self._all(self._source(store), [ClassParams()] * len(self.cfg.data.classes))

    def tuned(self, store, morphology: bool, ids: Sequence[str], folds: dict[str, int]
              ) -> tuple[dict[str, float], float, dict]:
        """Scores on ``ids`` after the tune search (morphology steps on or off) on every image of ``store``, which
        covers every fold: nested (each fold scored with what the search chose on the other folds), the main
        metric in-sample (chosen on all folds, these included), and the choice made on all folds."""
        tcfg = self.cfg.tune if morphology else self.cfg.tune.model_copy(
            update={"morphology": False, "keep_largest": False})
        source = self._source(store)
        searched = tune(source, list(self.cfg.data.classes), self.metrics[0], tcfg,
                        folds=[folds[i] for i in source.ids])
        wanted = set(ids)
        rows = [n for n, i in enumerate(source.ids) if i in wanted]
        per_image, nested, result = searched.per_image, searched.nested_params, searched.record
        if nested is None:
            raise ConfigError("the tuned rows need at least two folds in the fold file (a nested estimate)")
        scores = {self.metrics[0].name: float(per_image["nested"][rows].mean())}
        mine = OOFStream(store, self.comp.read_mask, self.exclusive, ids=[source.ids[n] for n in rows])
        params = [ClassParams.from_dict(result["classes"][c]) for c in self.cfg.data.classes]
        for m in self.metrics[1:]:
            scored = final_scores(mine, m, params, self.exclusive, [nested[n] for n in rows])
            scores[m.name] = float(scored["nested"].mean())
        return scores, float(per_image["score"][rows].mean()), result["summary"]


def pipeline_scores(cfg: Config, ids: Sequence[str]) -> tuple[dict[str, float], float | None] | None:
    """segkit run's own tuned CV (tune/oof_scores.csv) restricted to ``ids``, the main metric only: nested where
    tune made the nested estimate, and the in-sample score beside it."""
    path = cfg.layout.tune.scores
    if not path.exists():
        return None
    frame = pd.read_csv(path, dtype={"id": str})
    frame = frame[frame["id"].isin(set(ids))]
    if not len(frame):
        return None
    if "nested" in frame:
        return {cfg.metric: float(frame["nested"].mean())}, float(frame["score"].mean())
    return {cfg.metric: float(frame["score"].mean())}, None


def instance_rows(cfg: Config, runs: dict[str, Config], folds: Sequence[int], ids: Sequence[str],
                  comp: Competition, table: pd.DataFrame) -> Iterator[Row]:
    """An instance recipe's rows, in object AP on ``ids``: connected components of the mask channel, the
    watershed from the contour channel, TTA, the ensemble, and the decoder tuned on every fold's OOF (nested:
    each scored image with what the search chose on the other folds)."""
    first = cfg.models[0].name
    truths = {i: comp.instance_map(i) for i in ids}

    def ap(store, params: DecodeParams) -> dict[str, float]:
        return {"object_ap": float(np.mean([object_ap_labels(decode(np.asarray(store[i]), params), truths[i])
                                            for i in ids]))}

    components, watershed = DecodeParams("components"), DecodeParams("watershed")
    for name, row in (("baseline", "baseline"), ("loss", "+ loss")):
        if name in runs:
            yield Row(row, "its mask channel's connected components, p > 0.5",
                      ap(fold_oof(runs[name].layout, first, folds, ids), components))
    own = fold_oof(cfg.layout, first, folds, ids)
    # with train.average the rows before the averaging row see the best single epoch's predictions
    single = StoreUnion([cfg.layout.quality.single_epoch(first)], ids) if averaged(cfg) else own
    yield Row("connected components", "the recipe's model, its mask channel's components at p > 0.5, no TTA",
              ap(single, components))
    contour = "contour" in cfg.data.instances.targets
    if contour:
        yield Row("+ contour, watershed", f"seeds where P(mask) - P(contour) > 0.5 (contour band "
                  f"{cfg.data.instances.contour_width} px), flooding P(mask) > 0.5", ap(single, watershed))
    decoder = watershed if contour else components
    yield from averaging_rows(cfg, lambda: ap(own, decoder))
    what = f"predict.tta: {cfg.predict.tta} ({cfg.predict.tta_merge})"
    if multi_scale(cfg):
        yield Row("+ TTA", f"{what} at the native scale",
                  ap(StoreUnion([cfg.layout.quality.one_scale(first)], ids), decoder))
        yield Row("+ multi-scale TTA", f"predict.tta_scales: {cfg.predict.tta_scales}",
                  ap(_tta_store(cfg, first, ids), decoder))
    else:
        yield Row("+ TTA", what, ap(_tta_store(cfg, first, ids), decoder))
    every = list(table["id"])
    names = [m.name for m in cfg.models]
    if len(names) > 1:
        yield Row("+ ensemble", f"mean of {len(names)} models", ap(MeanStore([_tta_store(cfg, m, ids)
                                                                               for m in names]), decoder))
    fold = fold_of(table)
    keys = np.array([fold[i] for i in every])
    wanted = np.isin(np.array(every), list(ids))
    truths_every = [comp.instance_map(i) for i in every]

    def tuned(store, row: str, what: str) -> Row:
        """The decoder searched on every fold's OOF of ``store``; each wanted image scored with the other folds'
        choice (nested), and in-sample beside it."""
        cands = Candidates([np.asarray(store[i]) for i in every], truths_every)
        per_fold, _ = nested(cands, keys, cfg.tune.instances, contour, scored=sorted(set(keys[wanted].tolist())))
        pick, _ = search(cands, np.arange(len(every)), cfg.tune.instances, contour)
        return Row(row, f"{what}{pick.describe()} (chosen on all folds)", {"object_ap": float(per_fold[wanted].mean())},
                   in_sample=float(cands.of(pick)[wanted].mean()))

    if len(names) > 1:  # each network alone under its own tuned decoder: what the ensemble row is read against
        for m in cfg.models:
            yield tuned(_tta_store(cfg, m.name, every), f"{m.name} alone, tuned", f"{m.arch}: ")
    store = MeanStore([_tta_store(cfg, m, every) for m in names]) if len(names) > 1 else \
        _tta_store(cfg, first, every)
    yield tuned(store, "+ tuned decoder", "")
    yield Row("+ distance channel", "", note="not built: the targets are mask and contour")
    saved = Tuned.read_if_any(cfg.layout.tune.json, cfg.data.classes)
    scored = saved.per_image_nested() if saved is not None else {}
    if scored:
        mine = [scored[i] for i in ids if i in scored]
        if mine:
            yield Row("segkit run", f"tune's own choice, on the {len(mine)} of these images its sample holds",
                      {"object_ap": float(np.mean(mine))})


def rows(cfg: Config, runs: dict[str, Config], folds: Sequence[int], ids: Sequence[str],
         metrics: Sequence[str], comp: Competition, table: pd.DataFrame) -> Iterator[Row]:
    if cfg.data.instances is not None:
        yield from instance_rows(cfg, runs, folds, ids, comp, table)
        return
    scorer = Scorer(cfg, metrics, comp)
    first = cfg.models[0].name
    base_models = [m.name for m in cfg.models]
    trained = [("baseline", "baseline", "one model, random-init encoder, BCE, no TTA, p > 0.5, no clean-up"),
               ("loss", "+ loss", _describe_loss(cfg))]
    for name, row, what in trained:
        if name in runs:
            yield Row(row, what, scorer.raw(fold_oof(runs[name].layout, first, folds, ids)))
        else:
            yield Row(row, what, note="not trained in this run (--no-variants)")
    weights = cfg.models[0].encoder_weights
    own = fold_oof(cfg.layout, first, folds, ids)
    # with train.average the rows before the averaging row see the best single epoch's predictions
    single = StoreUnion([cfg.layout.quality.single_epoch(first)], ids) if averaged(cfg) else own
    epoch = "; the best single epoch" if averaged(cfg) else ""
    d = cfg.data
    if d.context:
        if "slices" in runs:
            yield Row("+ pretrained encoder", f"encoder_weights: {weights}; single slices",
                      scorer.raw(fold_oof(runs["slices"].layout, first, folds, ids)))
        else:
            yield Row("+ pretrained encoder", "", note="not trained in this run (--no-variants)")
        yield Row("+ 2.5D context", f"data.context: {d.context} (stride {d.context_stride}, ends "
                  f"{d.context_ends}): {2 * d.context + 1} slices as channels{epoch}", scorer.raw(single))
    else:
        yield Row("+ pretrained encoder", f"encoder_weights: {weights}{epoch}", scorer.raw(single))
    yield from averaging_rows(cfg, lambda: scorer.raw(own))
    tile = cfg.predict.tile_size
    if tile is None:
        yield Row("+ tiles", "", note="not in this recipe: predict.tile_size is unset")
    else:
        what = f"predict.tile_size: {tile} ({cfg.predict.tile_blend}, overlap {cfg.predict.tile_overlap})"
        yield Row("+ tiles", what, scorer.raw(StoreUnion([cfg.layout.quality.tiles(first)], ids)))
    tta = _tta_store(cfg, first, ids)
    what = f"predict.tta: {cfg.predict.tta} ({cfg.predict.tta_merge})"
    if views(cfg):
        v = d.volumes
        yield Row("+ TTA", f"{what}; slices along axis {v.axis} alone",
                  scorer.raw(StoreUnion([cfg.layout.quality.one_axis(first)], ids)))
        yield Row("+ orthogonal views", f"data.volumes.predict_axes: {v.prediction_axes} averaged per voxel "
                  f"(trained along {v.training_axes})", scorer.raw(tta))
    elif multi_scale(cfg):
        yield Row("+ TTA", f"{what} at the native scale", scorer.raw(StoreUnion([cfg.layout.quality.one_scale(first)],
                                                                                ids)))
        yield Row("+ multi-scale TTA", f"predict.tta_scales: {cfg.predict.tta_scales}", scorer.raw(tta))
    else:
        yield Row("+ TTA", what, scorer.raw(tta))
    yield from kind_rows(cfg, scorer, ids)
    if len(base_models) > 1:
        store = MeanStore([_tta_store(cfg, m, ids) for m in base_models])
        yield Row("+ ensemble", f"mean of {len(base_models)} models: {', '.join(base_models)}", scorer.raw(store))
    else:
        store = tta
        yield Row("+ ensemble", "", note="not in this recipe: one model")
    # The tuned rows tune on every fold's images (the recipe's stores cover them all) and score the chosen folds'
    # images nested: each with what the search chose on the other folds.
    every = list(table["id"])
    folds_of = fold_of(table)
    store = MeanStore([_tta_store(cfg, m, every) for m in base_models]) if len(base_models) > 1 else \
        _tta_store(cfg, first, every)
    scores, in_sample, summary = scorer.tuned(store, False, ids, folds_of)
    yield Row("+ threshold / min area", _summary(summary), scores, in_sample=in_sample)
    scores, in_sample, summary = scorer.tuned(store, True, ids, folds_of)
    yield Row("+ morphology", _summary(summary), scores, in_sample=in_sample)
    if cfg.pseudo.rounds:
        r = cfg.pseudo.rounds
        pl = MeanStore([_tta_store(cfg, round_name(m, r), every) for m in base_models])
        scores, in_sample, summary = scorer.tuned(pl, True, ids, folds_of)
        yield Row("+ pseudo-labels", f"{r} round(s); " + _summary(summary), scores, in_sample=in_sample)
    else:
        yield Row("+ pseudo-labels", "", note="not in this recipe: pseudo.rounds is 0")
    full = pipeline_scores(cfg, ids)
    if full is not None:
        yield Row("segkit run", "the pipeline's own choice: ensemble method + tuned post-processing", full[0],
                  in_sample=full[1])


def averaging_rows(cfg: Config, score: Callable[[], dict[str, float]]) -> Iterator[Row]:
    """The weight averaging row: ``score()`` scores the recipe's own first model, whose best.pt is the average."""
    average = cfg.train_for(cfg.models[0]).average
    if average is None:
        yield Row("+ weight averaging", "", note="not in this recipe: train.average is unset")
        return
    window = f"{average.window:g} of the epochs" if average.at == "epochs" else "LR cycles"
    yield Row("+ weight averaging", f"train.average: {average.method} of the last {window}", score())


def kind_rows(cfg: Config, scorer: "Scorer", ids: Sequence[str]) -> Iterator[Row]:
    """A recipe with 2D (or 2.5D) and 3D networks: each kind's models alone (their TTA OOF, averaged), so that the
    ensemble row below reads against the better of the two on the same folds."""
    kinds: dict[int, list[str]] = {}
    for m in cfg.models:
        kinds.setdefault(dims_of(m), []).append(m.name)
    if len(kinds) < 2:
        return
    flat = "2.5D" if cfg.data.context else "2D"
    for dims, label in ((2, flat), (3, "3D")):
        names = kinds[dims]
        store = MeanStore([_tta_store(cfg, m, ids) for m in names]) if len(names) > 1 else \
            _tta_store(cfg, names[0], ids)
        yield Row(f"{label} alone", f"mean of {', '.join(names)}" if len(names) > 1 else names[0], scorer.raw(store))


def _describe_loss(cfg: Config) -> str:
    """The loss as the table shows it, e.g. ``bce+dice to epoch 4, then lovasz (per_image, symmetric)``."""
    t = cfg.train_for(cfg.models[0])

    def terms(names) -> str:
        return "+".join(name + _describe_options(t.loss_params.get(name, {})) for name in names)

    if t.loss_stages:
        return ", then ".join(terms(s.terms) + (f" to epoch {s.until_epoch}" if s.until_epoch else "")
                              for s in t.loss_stages)
    return terms(t.loss)


def _describe_options(options: dict) -> str:
    """A loss term's options: true flags by name, other values as key=value."""
    shown = [k if v is True else f"{k}={v}" for k, v in options.items() if v is not False and v is not None]
    return f" ({', '.join(shown)})" if shown else ""


def _summary(summary: dict) -> str:
    return "; ".join(f"{k}: {v}" for k, v in summary.items()) if len(summary) > 1 else next(iter(summary.values()))


# ------------------------------------------------------------------------------------------------------ driver


def run(cfg: Config, folds: Sequence[int] = (), metrics: Sequence[str] = (), train_only: bool = False,
        with_variants: bool = True) -> list[Row]:
    """The whole ablation; ``with_variants=False`` skips the baseline and loss-only trainings (their rows are
    left empty), ``train_only`` stops before scoring."""
    if not cfg.models:
        raise ConfigError("models: no model configured")
    if not cfg.predict.repredict_oof:
        raise ConfigError("predict.repredict_oof: must be true for the ablation (the TTA rows score the "
                          "re-predicted out-of-fold images)")
    timings: dict[str, float] = {}
    began = time.perf_counter()
    code = pipeline.run(cfg)
    if code:
        raise SegkitError(f"segkit run --config {cfg.source} stopped with exit code {code}")
    timings["pipeline"] = time.perf_counter() - began
    comp = Competition(cfg.data, seed=cfg.seed)
    table = load_folds(cfg, comp)
    ids, chosen = fold_ids(cfg, folds, table)
    runs = variants(cfg) if with_variants else {}
    train = load(BY_NAME["train"])
    for name, vcfg in runs.items():
        began = time.perf_counter()
        for k in chosen:
            print(f"== ablation: {name} fold {k}", flush=True)
            train(vcfg, model=cfg.models[0].name, fold=k)
        timings[name] = time.perf_counter() - began
    # the first model's re-predictions the rows compare with, each made when the recipe has the trick
    references = [("tiles", cfg.predict.tile_size is not None, predict_tiles),
                  ("one_axis", views(cfg), predict_one_axis),
                  ("one_scale", not views(cfg) and multi_scale(cfg), predict_one_scale),
                  ("single_epoch", averaged(cfg), predict_single_epoch)]
    for name, wanted, predict in references:
        if wanted:
            began = time.perf_counter()
            predict(cfg, comp, chosen, table)
            timings[name] = time.perf_counter() - began
    if train_only:
        return []
    result = []
    for row in rows(cfg, runs, chosen, ids, metrics, comp, table):
        result.append(row)
        print(f"ablation: {row.name:<24} " + "  ".join(f"{m} {v:.4f}" for m, v in row.scores.items())
              + (f"  (in-sample {row.in_sample:.4f})" if row.in_sample is not None else "")
              + (f"  ({row.note})" if row.note else ""), flush=True)
    write(cfg, result, chosen, len(ids), timings)
    return result


def write(cfg: Config, table: list[Row], folds: Sequence[int], n_images: int, timings: dict) -> Path:
    out = cfg.layout.quality
    main = "object_ap" if cfg.data.instances is not None else cfg.metric
    payload = {"experiment": cfg.experiment, "budget": cfg.budget, "config": cfg.source, "folds": list(folds),
               "n_images": n_images, "metric": main, "seconds": {k: round(v, 1) for k, v in timings.items()},
               "rows": [{"name": r.name, "what": r.what, "scores": r.scores, "in_sample": r.in_sample,
                         "note": r.note} for r in table]}
    atomic.write_json(out.json, payload)
    atomic.write_text(out.markdown, markdown(table, main))
    print(f"ablation: wrote {out.markdown} and {out.json.name}")
    return out.dir


def main(cfg: Config, folds: Sequence[int] = (), metrics: Sequence[str] = (), with_variants: bool = True,
         train_only: bool = False) -> int:
    """``segkit ablate``: the ablation, and its table printed."""
    table = run(cfg, folds=folds, metrics=metrics, with_variants=with_variants, train_only=train_only)
    if table:
        print("\n" + markdown(table, "object_ap" if cfg.data.instances is not None else cfg.metric))
    return 0


def markdown(table: list[Row], main: str) -> str:
    """The table; a tuned row's scores are nested (chosen without the scored fold), its in-sample score beside."""
    metrics = list(dict.fromkeys(m for r in table for m in r.scores))
    head = "| step | " + " | ".join(metrics) + f" | {main} in-sample | Δ {main} | verdict | what |\n"
    head += "|---|" + "---:|" * len(metrics) + "---:|---:|---|---|\n"
    lines, previous = [], None
    for r in table:
        cells = [f"{r.scores[m]:.4f}" if m in r.scores else "" for m in metrics]
        delta, verdict = "", r.note
        score = r.scores.get(main)
        if score is not None and previous is not None and r.name != "segkit run":
            d = score - previous
            delta = f"{d:+.4f}"
            verdict = "helps" if d > NOISE else ("hurts" if d < -NOISE else "no change")
        if score is not None and r.name != "segkit run":
            previous = score
        own = f"{r.in_sample:.4f}" if r.in_sample is not None else ""
        lines.append(f"| {r.name} | " + " | ".join(cells) + f" | {own} | {delta} | {verdict} | {r.what} |")
    return head + "\n".join(lines) + "\n"


__all__ = ["Row", "Scorer", "fold_ids", "main", "markdown", "rows", "run", "variants"]
