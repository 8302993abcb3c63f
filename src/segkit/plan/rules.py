"""The rules of ``segkit plan``: from the data's fingerprint, the machine's measured speeds and a time budget to a
recipe, each decision with the fact or figure behind it.

The budget is spent in this order: what the planning itself took, prediction of the test images (the most TTA
views that fit ``PREDICT_SHARE`` of the budget: every fold predicts every test image, and with
``predict.repredict_oof`` each fold its validation images again), the stages after it
(``OTHER_SHARE``, at least a minute), and the rest for training, split evenly over the folds as ``train.minutes``.
The network is the largest of the ladder that trains ``GOOD_EPOCHS`` epochs in a fold's minutes; failing that, the
smallest that trains ``LEAST_EPOCHS``, with three folds if five leave too little; failing that, an error saying
the least budget that works.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Optional

from segkit.config.schema import PredictConfig
from segkit.errors import ConfigError
from segkit.inference.tiling import tiles_per_image
from segkit.plan.machine import Candidate, Reading, Speed

MAX_CONTEXT_RATIO = 4.0  # slice spacing over in-plane spacing up to which neighbouring slices join as channels
OBJECT_CONTEXT = 3.0  # a crop holds the largest typical object (95th percentile) three times across
MIN_CROP = 64
MIN_CROP_AREA = 0.6  # a crop that sees less of a small image loses most of its context: the whole image, padded
MIN_OBJECT_PX = 6  # an object narrower than this at the working size is at risk from a stride-32 encoder
LONG_SIDE = {"cpu": 256, "cuda": 512}  # the working long side a machine affords for large images
CROP = {"cpu": 256, "cuda": 384}  # the largest training crop
BATCH = {"cpu": 16, "cuda": 32}
MIN_STEPS = 3  # steps an epoch at the least: ISBI's 24 sections a fold at batch 16 made one step of 16 an epoch
PREDICT_SHARE = 0.15
OTHER_SHARE = 0.05
GOOD_EPOCHS = 12
LEAST_EPOCHS = 3
VALIDATIONS = 2  # a fold's validation passes, half-way and at the end: a pass over DSB's native images costs an epoch
TTA_VIEWS = [("d4", 8), ("flips", 4), ("hflip", 2), ("none", 1)]  # each view set holds the ones after it
# The data's symmetries are the user's call, not the fingerprint's (a seismic section has an up; a fundus image has
# no preferred rotation): where the base config sets these itself, the plan keeps its augmentation, and takes no
# TTA view outside its TTA (the views that fit the budget among them: DSB's D4 over its native images would take a
# quarter of a 46-minute budget)
GIVEN = ("train.augment", "predict.tta")
KEPT = "the base config's own choice, kept (the data's symmetries are the user's call)"
# The loss is the recipe's too, whether its file or its budget sets it (DSB's hand recipe gains 0.019 Dice on fold 0
# from its Lovasz stage, which a plan that chose BCE + Dice by rule threw away); ``train.epochs`` comes with loss
# stages as the epochs their switches were written for
RECIPE = ("train.loss", "train.loss_stages")
# What a base's budget sets is kept in the plan, which replaces the budget (``budget: null``), except what the plan
# sizes itself or does not cost: a pseudo-label round trains every fold again
NOT_KEPT = ("experiment", "models", "pseudo", "train.epochs", "predict.tta")
IOU_METRICS = ("tgs", "iou", "object_ap", "map_iou")  # rewarded per image by IoU: Lovasz optimises it directly


@dataclass
class Decision:
    key: str  # dotted config key
    value: Any
    why: str


@dataclass
class Plan:
    decisions: list[Decision]
    minutes: dict[str, float]  # stage -> minutes, summing to the budget
    model: str
    epochs: int  # the estimate for one fold (the run derives its own from train.minutes)
    run: float = 0.0  # minutes of the budget left to `segkit run` (the budget less the planning)
    stages: dict[str, float] = field(default_factory=dict)  # stage -> planned minutes (config key plan.stages)


def _median(facts: dict, key: str) -> float:
    return float(facts[key]["median"])


def smallest_object(facts: dict) -> Optional[tuple[str, float, float, float]]:
    """(class, median size px, 5th percentile and median of area px) of the class with the smallest objects. The
    size is the smaller of the median object's diameter and the class's median stroke width: a membrane network's
    equal-area disc is large, the membrane thin."""
    found = [(name, min(c["object_diameter"]["median"], c["stroke_width"]["median"]), c["object_pixels"]["p5"],
              c["object_pixels"]["median"]) for name, c in facts["classes"].items() if c["object_pixels"].get("n")]
    return min(found, key=lambda x: x[1]) if found else None


def working_resolution(facts: dict, kind: str) -> tuple[Optional[dict], float, str]:
    """(data.resize or None, the working long side, why)."""
    long = max(_median(facts, "height"), _median(facts, "width"))
    small = smallest_object(facts)
    cap = LONG_SIDE[kind]
    if long > cap:
        side = cap
        why = f"images' median long side {long:.0f} px, more than this machine trains well ({cap})"
        if small and small[1] * side / long < MIN_OBJECT_PX:
            side = min(long, math.ceil(MIN_OBJECT_PX * long / small[1] / 32) * 32)
            why += f"; raised so that {small[0]} ({small[1]:.0f} px across: median object or stroke) keeps " \
                   f"{MIN_OBJECT_PX} px"
        if side < long:
            return {"longest": int(side)}, side, why
        return None, long, why + ": kept native, the shapes need it"
    if small and small[1] < MIN_OBJECT_PX and long <= 128:
        return ({"scale": 2.0}, long * 2,
                f"{small[0]} is {small[1]:.1f} px across (median object or stroke) in {long:.0f} px images: "
                f"enlarged 2x")
    return None, long, f"images' median long side {long:.0f} px: native"


def working_side(facts: dict, kind: str, axis: Optional[int] = None) -> float:
    """The working long side: a volume's slices keep their voxel grid, images follow ``working_resolution``."""
    if axis is not None:
        return max(_median(facts, "height"), _median(facts, "width"))
    return working_resolution(facts, kind)[1]


def context(facts: dict, axis: int) -> Decision:
    """``data.context`` of a volume competition cut into slices along ``axis``: neighbouring slices as channels
    when they lie about as close as the pixels (they show the same structures), single slices when far apart."""
    spacing = [facts["volumes"]["spacing"][f"axis{a}"]["median"] for a in range(3)]
    ratio = spacing[axis] / min(s for a, s in enumerate(spacing) if a != axis)
    if ratio <= MAX_CONTEXT_RATIO:
        return Decision("data.context", 1, f"slices {spacing[axis]:.2f} apart, {ratio:.1f}x the in-plane spacing: "
                                           f"a slice and its two neighbours as channels (2.5D)")
    return Decision("data.context", 0, f"slices {ratio:.1f}x farther apart than the in-plane pixels: single slices "
                                       f"(far-apart sections need not show the same structures)")


def short_side(facts: dict, side: float) -> float:
    """The working short side of an image whose long side is ``side`` (the median aspect)."""
    aspect = _median(facts, "aspect")
    return side / max(aspect, 1 / aspect)


def largest_object(facts: dict, side: float) -> float:
    """The 95th percentile of object diameters (the largest class's), in working pixels (0 when no objects)."""
    native = max(_median(facts, "height"), _median(facts, "width"))
    found = [c["object_diameter"]["p95"] for c in facts["classes"].values() if c["object_diameter"].get("n")]
    return max(found, default=0.0) * side / native


def crop_size(facts: dict, side: float, kind: str) -> Decision:
    """``train.crop_size``: the largest multiple of 32 within the working image's short side and ``CROP``, and no
    larger than ``OBJECT_CONTEXT`` times the largest typical object (small objects need no large crops, and a
    smaller crop trains more of them a second); or, for an image so small that such a crop would see less than
    ``MIN_CROP_AREA`` of it, the smallest multiple of 32 that holds the whole image (padded by reflection)."""
    short = short_side(facts, side)
    crop = int(min(short, CROP[kind]) // 32 * 32)
    if side <= CROP[kind] and crop * crop < MIN_CROP_AREA * side * short:
        return Decision("train.crop_size", int(math.ceil(side / 32) * 32),
                        f"the whole working image ({side:.0f} x {short:.0f} px) padded to a multiple of 32")
    if crop < 32:
        raise ConfigError(f"plan: images of {side:.0f} px at the working size are too small to crop; set "
                          f"data.resize to enlarge them")
    objects = largest_object(facts, side)
    if objects and max(MIN_CROP, math.ceil(OBJECT_CONTEXT * objects / 32) * 32) < crop:
        return Decision("train.crop_size", max(MIN_CROP, math.ceil(OBJECT_CONTEXT * objects / 32) * 32),
                        f"{OBJECT_CONTEXT:g}x the largest typical object ({objects:.0f} px across, 95th percentile)")
    return Decision("train.crop_size", crop, f"the largest multiple of 32 within the working image ({short:.0f} px "
                                             f"short side) and {CROP[kind]} px")


def _loss_params_kept(decisions: list[Decision], base: dict[str, dict]) -> Optional[Decision]:
    """The base's loss parameters narrowed to the planned terms (a base's Lovasz options would otherwise outlive
    its Lovasz), or None when all of them are still in use."""
    used: set[str] = set()
    for d in decisions:
        if d.key == "train.loss":
            used |= set(d.value)
        elif d.key == "train.loss_stages":
            used |= {term for stage in d.value for term in stage["terms"]}
    kept = {name: opts for name, opts in base.items() if name.lower() in used}
    if len(kept) == len(base):
        return None
    return Decision("train.loss_params", kept, f"the base's options of {', '.join(sorted(kept))} kept" if kept
                    else "the base's options were for terms the plan does not use")


def fold_images(train_images: int, folds_file: Optional[int] = None) -> int:
    """The images a fold trains on: the folds file's folds, or the five the plan tries first (the batch is chosen
    before the folds; three folds train on fewer images a fold, never more)."""
    folds = folds_file or 5
    return train_images * (folds - 1) // folds


def batch_size(kind: str, images: int, crop: int) -> Decision:
    """``train.batch_size``: the machine's (``BATCH``), or smaller where a fold's ``images`` would make fewer than
    ``MIN_STEPS`` steps an epoch (an epoch takes whole batches: the rest of the images wait for the next)."""
    if images // BATCH[kind] >= MIN_STEPS:
        return Decision("train.batch_size", BATCH[kind], f"{kind} batch at crops of {crop} px")
    batch = max(2, images // MIN_STEPS)
    return Decision("train.batch_size", batch, f"{images} training images a fold: {images // batch} steps an epoch "
                                               f"at the least")


def augment(facts: dict, given: dict[str, Any]) -> Decision:
    """``train.augment``: the base config's own, or by the data's size (fewer images, stronger augmentation)."""
    if "train.augment" in given:
        return Decision("train.augment", given["train.augment"], KEPT)
    n = int(facts["images"])
    return Decision("train.augment", "medium" if n < 1000 else "light", f"{n} labelled images")


def stages_moved(stages: list[dict], written: int, epochs: int) -> Decision:
    """The base's loss stages with their switches moved from the ``written`` epochs to the plan's ``epochs`` (DSB's
    BCE + Dice to epoch 4 of 10 is to epoch 5 of 13), each at least an epoch after the one before and, where the plan
    trains two or more, before the last."""
    moved, last = [], 0
    for stage in stages:
        if stage.get("until_epoch") is None:
            moved.append(stage)
            continue
        until = max(last + 1, min(round(stage["until_epoch"] * epochs / written), epochs - 1))
        moved.append({**stage, "until_epoch": until})
        last = until
    why = "the base config's loss stages, kept" + (
        f", their switches moved from its {written} epochs to the plan's {epochs}" if written != epochs else "")
    return Decision("train.loss_stages", moved, why)


def budget_kept(name: Optional[str], overrides: dict, decided: set[str]) -> list[Decision]:
    """What the base's budget ``name`` sets (``overrides``, as its file writes them) that the plan neither decides
    nor leaves out (``NOT_KEPT``), one decision per key under a section: the planned config sets ``budget: null``,
    and DSB's cpu budget held its learning rate (2e-3, twice base.yaml's) and its threads."""
    out = []
    for section, keys in (overrides or {}).items():
        if section in NOT_KEPT or not isinstance(keys, dict):
            continue
        out += [Decision(f"{section}.{key}", value, f"the base's {name} budget's, kept")
                for key, value in keys.items() if f"{section}.{key}" not in (*NOT_KEPT, *decided)]
    return out


def plan(facts: dict, speeds: dict[str, Speed], ladder: list[Candidate], budget: float, kind: str, n_test: int,
         metric: str, mode: str, spent: float = 0.0, folds_file: Optional[int] = None,
         axis: Optional[int] = None, given: Optional[dict[str, Any]] = None,
         loss_params: Optional[dict[str, dict]] = None, repredict_oof: bool = False,
         reading: Optional[Reading] = None, train_images: Optional[int] = None) -> Plan:
    """The recipe for ``budget`` seconds (``spent`` of them already gone to planning). ``folds_file``: the number
    of folds of the competition's existing folds file, which the plan keeps (it is committed, and shared);
    ``axis``: the axis a volume competition's slices are cut along (volumes keep their voxel grid: no resize);
    ``given``: the ``GIVEN`` keys the base config itself sets and the ``RECIPE`` keys its file or budget sets, kept
    as they are (a given loss's stages moved to the planned epochs); ``loss_params``: the base's
    parameters of its loss terms, kept for the terms the plan still uses; ``repredict_oof``: the base's
    ``predict.repredict_oof`` (the labelled images predicted again with the TTA, once each); ``reading``: what
    reading the data costs here, on top of the networks' ``speeds`` (none when not given); ``train_images``: the
    labelled images the folds share (default: the fingerprint's, which counts a held-out share too)."""
    given = given or {}
    decisions: list[Decision] = []
    resize = None  # volumes keep their voxel grid
    if axis is not None:
        decisions.append(context(facts, axis))
    else:
        resize, _, why = working_resolution(facts, kind)
        if resize is not None:
            decisions.append(Decision("data.resize", resize, why))
    side = working_side(facts, kind, axis)
    short = short_side(facts, side)
    decisions.append(crop_size(facts, side, kind))
    crop = decisions[-1].value
    whole = crop >= short and crop >= side
    n = train_images or int(facts["images"])
    decisions.append(batch_size(kind, fold_images(n, folds_file), crop))
    # a working image in crops: what predicting one costs. Native sizes cost their mean area, which a few large
    # images lift far above the median's (DSB: 2.4x); a resized set is about its working side by its short side
    native = facts.get("area", {}).get("mean") if resize is None else None
    area = (native or side * short) / (crop * crop)
    if not whole and side <= 1.5 * crop:
        # overlapping tiles cost a forward each: Kvasir's 256 x 222 px at 192 px is 4 tiles, not 1.5 crops of area
        area = tiles_per_image(round(short), round(side), crop, PredictConfig().tile_overlap)
        decisions.append(Decision("predict.tile_size", crop, f"images only a little larger ({side:.0f} px) than the "
                                                             f"{crop} px crops: predicted as blended tiles of it"))
        decisions.append(Decision("predict.tile_blend", "linear", "tiles blended linearly"))
    other = max(60.0, OTHER_SHARE * budget)
    read = reading or Reading(0.0, 0.0)
    # an image is read once at its native size, whatever its working size and however many TTA views it gets
    read_image = read.pixel * facts.get("area", {}).get("mean", _median(facts, "height") * _median(facts, "width"))

    def train_image(s: Speed) -> float:
        """Seconds a training image costs: a CPU reads and augments it on the cores that train, a GPU's loader
        workers read while it trains."""
        return s.train + read.train if kind == "cpu" else max(s.train, read.train)

    def predicted(folds: int) -> int:
        """Images a recipe of ``folds`` folds predicts: every test image on every fold, the OOF ones once (DSB's
        598 re-predicted took longer than its 66 test images on 5 folds)."""
        return n_test * folds + (n if repredict_oof else 0)

    def fits(folds: int, candidate: Candidate, views: int) -> tuple[float, float, float]:
        """(predict seconds, train seconds per fold, epochs) for a recipe."""
        s = speeds[candidate.name]
        predict = predicted(folds) * (views * s.predict * area + read_image)
        per_fold = (budget - spent - predict - other) / folds
        epoch = n * (folds - 1) / folds * train_image(s)
        val = n / folds * (s.predict * area + read_image)
        # VALIDATIONS passes a fold (train.val_every below), or every epoch when fewer fit
        epochs = (per_fold - VALIDATIONS * val) / epoch
        if epochs < VALIDATIONS:
            epochs = per_fold / (epoch + val)
        return predict, per_fold, max(epochs, 0.0)

    names = [name for name, _ in TTA_VIEWS]
    allowed = TTA_VIEWS[names.index(given["predict.tta"]):] if given.get("predict.tta") in names else TTA_VIEWS

    def tta_for(folds: int, candidate: Candidate) -> tuple[str, int]:
        """The most views of ``candidate`` that fit the predict share among those allowed (one at the least); a
        given TTA outside the chain of ``TTA_VIEWS`` as it is."""
        if "predict.tta" in given and given["predict.tta"] not in names:
            return given["predict.tta"], 8
        return next(((name, v) for name, v in allowed
                     if fits(folds, candidate, v)[0] <= PREDICT_SHARE * budget), allowed[-1])

    reached = [c for c in ladder if c.name in speeds]
    chosen = None
    for folds in (folds_file,) if folds_file else (5, 3):
        # each network with the TTA it can afford: a larger one predicts slower, so may take fewer views
        options = [(c, *tta_for(folds, c)) for c in reached]
        good = [o for o in options if fits(folds, o[0], o[2])[2] >= GOOD_EPOCHS]
        smallest = options[0]
        pick = good[-1] if good else (smallest if fits(folds, smallest[0], smallest[2])[2] >= LEAST_EPOCHS else None)
        if pick is not None:
            chosen = (folds, pick[0], pick[2], pick[1])
            break
    if chosen is None:
        folds, s = folds_file or 3, speeds[reached[0].name]
        # fits() run backwards for one view: planning, prediction, LEAST_EPOCHS epochs and VALIDATIONS passes a
        # fold, and the later stages' share of the budget itself (OTHER_SHARE of it, at least a minute)
        image = s.predict * area + read_image
        fixed = spent + predicted(folds) * image + folds * (
            LEAST_EPOCHS * n * (folds - 1) / folds * train_image(s) + VALIDATIONS * n / folds * image)
        need = max(fixed + 60.0, fixed / (1 - OTHER_SHARE))
        raise ConfigError(f"--budget: {budget / 60:.1f} minutes cannot train {LEAST_EPOCHS} epochs of the smallest "
                          f"network ({reached[0].name}) on {folds} folds here; the least budget that works is about "
                          f"{math.ceil(need / 60)} minutes")
    folds, pick, views, tta = chosen
    predict, per_fold, fit = fits(folds, pick, views)
    epochs = max(1, round(fit))  # what train.minutes will derive: the nearest whole number
    speed = speeds[pick.name]
    decisions.append(Decision("folds.n_splits", folds, f"{'the folds file has ' if folds_file else ''}{folds} "
                                                       f"folds: about {epochs} epochs of {pick.name} per fold"))
    decisions.append(Decision("models", [pick.model()],
                              f"the largest of the ladder that trains {GOOD_EPOCHS}+ epochs per fold here "
                              f"({speed.train * 1000:.1f} ms per training image at {crop} px"
                              f"{f' and {read.train * 1000:.1f} reading it' if read.train else ''}, "
                              f"{'float32' if speed.precision == 'none' else speed.precision})"
                              if fit >= GOOD_EPOCHS else f"the smallest of the ladder: the budget holds "
                              f"{epochs} epochs of it"))
    decisions.append(Decision("train.minutes", round(per_fold / 60, 2),
                              f"each of {folds} folds: the budget left after prediction and the later stages"))
    decisions.append(Decision("train.val_every", math.ceil(epochs / VALIDATIONS),
                              "two validations a fold, half-way and at the end (a pass over native-size images "
                              "can cost an epoch)"))
    empty = facts["empty_share"]
    decisions.append(augment(facts, given))
    if given.get("train.loss_stages"):
        decisions.append(stages_moved(given["train.loss_stages"], given.get("train.epochs") or epochs, epochs))
    elif "train.loss" in given:
        decisions.append(Decision("train.loss", given["train.loss"], "the base config's own loss, kept"))
    elif mode == "multiclass":
        decisions.append(Decision("train.loss", {"ce": 1, "dice": 1}, "multiclass: cross-entropy with Dice"))
    elif metric in IOU_METRICS and epochs >= 2 * LEAST_EPOCHS:
        half = max(1, epochs // 2)
        decisions.append(Decision("train.loss_stages", [{"until_epoch": half, "terms": {"bce": 1, "dice": 1}},
                                                        {"terms": {"lovasz": 1}}],
                                  f"metric {metric} rewards IoU per image: Lovasz after {half} epochs of BCE + Dice"))
    else:
        decisions.append(Decision("train.loss", {"bce": 1, "dice": 1},
                                  f"BCE + Dice{f' ({empty:.0%} of images empty)' if empty else ''}"))
    if not any(d.key == "train.loss_stages" for d in decisions):
        decisions.append(Decision("train.loss_stages", [], "one loss for the whole fold, whatever the base staged"))
    params = _loss_params_kept(decisions, loss_params or {})
    if params is not None:
        decisions.append(params)
    what = f"{views} view(s) of {n_test} test images on {folds} folds" + (f" and {n} OOF images once"
                                                                          if repredict_oof else "")
    why = f"{what} take about {predict / 60:.1f} min" + (
        f", within {PREDICT_SHARE:.0%} of the budget" if predict <= PREDICT_SHARE * budget else "")
    if "predict.tta" in given:
        why = f"the base config allows {given['predict.tta']} (the data's symmetries are the user's call); {why}"
    decisions.append(Decision("predict.tta", tta, why))
    small = smallest_object(facts)
    if small:
        name, _, p5, median = small
        # A 5th percentile far below the median is annotation specks (Kvasir's masks: 1 px), not the smallest
        # real objects: the grid then starts from a hundredth of the median area
        base = max(p5, median / 100)
        areas = sorted({0, *(int(round(base * f)) for f in (0.25, 0.5, 1.0, 2.0))})
        why = f"around the 5th percentile of {name}'s object areas ({p5:.0f} px)" if base == p5 else \
            f"around a hundredth of {name}'s median object area ({median:.0f} px): its 5th percentile " \
            f"({p5:.0f} px) is specks"
        decisions.append(Decision("tune.min_areas", areas, why))
    minutes = {"planning (fingerprint, probe)": spent / 60, f"train ({folds} folds)": per_fold * folds / 60,
               f"predict ({tta})": predict / 60, "ensemble, tune, submit": other / 60}
    return Plan(decisions, minutes, pick.name, epochs, (budget - spent) / 60,
                {"train": round(per_fold * folds / 60, 2), "predict": round(predict / 60, 2)})


__all__ = ["GIVEN", "RECIPE", "Decision", "Plan", "augment", "batch_size", "budget_kept", "context", "crop_size",
           "fold_images", "largest_object", "plan", "short_side", "smallest_object", "stages_moved",
           "working_resolution", "working_side"]
