"""What every ensembling method shares: the registry, the method interface and the in-memory fit sample.

A method sees the models' probabilities of one image at a time, as the uint8 (K, H, W) arrays the stores hold, and
returns the ensemble's probabilities for it. Methods that learn something (weights, thresholds, a stacker) do it
*fold-aware*: for an OOF image of fold k, ``combine(..., fold=k)`` uses only what was learnt on the other folds,
and ``fold=None`` (test images) uses what was learnt on all of them. So every method's OOF CV is honest and the
methods can be compared on it.

Life of a method: ``observe`` is called for every OOF image (streaming, in a random order), then ``fit`` once with
a bounded in-memory sample of whole OOF images, then ``combine`` per image. Fits score with the competition
metric object (``Setup.metric``; ``gain`` is its mean signed so that higher is better) and binarise with the
pipeline's rule, p > t (``segkit.threshold``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from segkit.artifacts.probs import dequantize
from segkit.errors import DataError
from segkit.metrics import CompetitionMetric
from segkit.registry import Registry

METHODS: Registry[type["Method"]] = Registry("ensemble method")


@dataclass
class Setup:
    """What a method may know about the experiment when it is built."""

    models: list[str]
    classes: list[str]
    mode: str  # binary | multilabel | multiclass
    folds: list[int]
    metric: CompetitionMetric
    seed: int = 42
    options: object = None  # the EnsembleConfig
    extra: object = None  # per-image columns (pandas DataFrame indexed by id) or None
    n_oof: int = 0  # OOF images that observe() will see


@dataclass
class SampleImage:
    image_id: str
    fold: int
    probs: list[np.ndarray]  # per model uint8 (K, H, W), copied into RAM
    truth: np.ndarray  # uint8 (K, H, W)


MAX_STRIDE = 4


def sample_stride(n_images: int, image_pixels: int, budget: int) -> int:
    """Subsampling step (1..MAX_STRIDE per axis) that lets every OOF image fit in the budget, if a step of at most
    MAX_STRIDE can: fitting weights on many images at reduced resolution beats a few at full resolution (a
    12k-image 256x1600x4 set at 20M values would otherwise fit on 12 images), but a coarser grid would erase
    the small objects the metric cares about."""
    need = n_images * image_pixels / max(budget, 1)
    return int(min(MAX_STRIDE, max(1, np.ceil(np.sqrt(need)))))


@dataclass
class FitSample:
    """Whole OOF images held in RAM for fitting, within a budget of pixel values per model, every ``stride``-th
    row and column of each."""

    budget: int
    stride: int = 1
    images: list[SampleImage] = field(default_factory=list)
    used: int = 0

    def offer(self, image_id: str, fold: int, probs: list[np.ndarray], truth: np.ndarray) -> bool:
        s = self.stride
        truth = np.asarray(truth)[:, ::s, ::s]
        size = int(np.prod(truth.shape))
        if self.used + size > self.budget:
            return False
        self.images.append(SampleImage(image_id, fold, [np.array(p[:, ::s, ::s]) for p in probs], np.array(truth)))
        self.used += size
        return True

    def without(self, fold: Optional[int]) -> list[SampleImage]:
        """The images a fit for ``fold`` may use: all but that fold's (all of them for fold=None, i.e. test)."""
        return [s for s in self.images if s.fold != fold]


class Method:
    """Base class: a registered method overrides ``combine`` and, if it learns anything, ``observe``/``fit``, and
    saves what test images need in ``state`` / ``load_state``. Its facts are class attributes, read by the stage
    and the offline bundle without building it."""

    name = ""
    uses_sample = False  # fit() reads the in-memory sample of whole OOF images
    # still defined on a subset of the models it was fitted on (what an offline time budget may drop): the
    # averages, whose only learnt state is per-model weights (``restrict`` maps the state onto the subset)
    subsettable = False
    # combine may run in forked worker processes (segkit.compute.pool); not where it calls into a library whose
    # thread pool does not survive a fork (LightGBM's OpenMP)
    forks = True

    def __init__(self, setup: Setup):
        self.setup = setup

    @classmethod
    def learns(cls) -> bool:
        """Whether the method learns from the OOF (samples it, observes it or fits): the stage's fitting pass over
        the OOF is skipped when no method does."""
        return cls.uses_sample or cls.observe is not Method.observe or cls.fit is not Method.fit

    def observe(self, image_id: str, fold: int, probs: list[np.ndarray], truth: np.ndarray) -> None:
        """Called once per OOF image before ``fit`` (streaming; nothing is kept unless the method samples it)."""

    def fit(self, sample: FitSample) -> None:
        """Learn parameters, one set per fold (fitted without it) and one on everything (``None``, for test)."""

    def combine(self, probs: list[np.ndarray], image_id: str, fold: Optional[int]) -> np.ndarray:
        """Ensemble probabilities of one image: float (K, H, W) in [0, 1], or uint8 already quantised."""
        raise NotImplementedError

    def params(self) -> dict:
        """What was learnt, JSON-serialisable, for choice.json."""
        return {}

    def state(self) -> dict:
        """Everything ``combine(..., fold=None)`` needs, JSON-serialisable and exact (no rounding): what an offline
        bundle restores to combine hidden test images as the ensemble stage combined the test store."""
        return {}

    def load_state(self, state: dict) -> None:
        """Restore what ``state`` gave, so that test images combine as they did in the fitted method."""

    def restrict(self, state: dict, fitted: list[str], kept: list[str]) -> dict:
        """``state`` (fitted on the models ``fitted``) for the subset ``kept``; only for subsettable methods."""
        return state


class SingleModel(Method):
    """One model's probabilities passed through (``ensemble.choose: model:<name>``); not registered, named by the
    model instead."""

    subsettable = True  # defined whatever other models are there (build_method checks its own is)

    def __init__(self, setup: Setup, model: str):
        super().__init__(setup)
        self.name = MODEL_PREFIX + model
        self.index = setup.models.index(model)

    def combine(self, probs, image_id, fold):
        return np.asarray(probs[self.index])


MODEL_PREFIX = "model:"


def build_method(name: str, setup: Setup, key: str = "ensemble.methods") -> Method:
    """The method ``name`` names (a registered method, or ``model:<name>``), built for ``setup``, unfitted."""
    if name.startswith(MODEL_PREFIX):
        model = name[len(MODEL_PREFIX):]
        if model not in setup.models:
            raise DataError(f"{key}: the chosen model {model!r} is not among {setup.models}")
        return SingleModel(setup, model)
    method = METHODS.get(name, key=key)(setup)
    method.name = name
    return method


def is_subsettable(name: str) -> bool:
    """Whether the method ``name`` stays defined on a subset of its models, as an offline time budget may drop
    them (a single model is planned without drops: its plan keeps the models the ensemble was fitted on)."""
    return not name.startswith(MODEL_PREFIX) and METHODS.get(name, key="ensemble method").subsettable


def as_float(probs: list[np.ndarray]) -> np.ndarray:
    """(M, K, H, W) float32 probabilities from M uint8 arrays."""
    return dequantize(np.stack(probs))
