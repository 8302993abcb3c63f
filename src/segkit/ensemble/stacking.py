"""LightGBM stacking: a second-level model that predicts each pixel from the models' probabilities around it.

Training data is a random subsample of OOF pixels (``ensemble.stack_pixels`` per class, spread evenly over the
OOF images, drawn while the OOF streams past), with the features of ``features.py``. The subsample is the only
thing held in memory.

Fold-aware, so its CV is honest: for every fold k a booster is trained only on pixels of the other folds' images
and predicts fold k's OOF images; ``trained_on`` records which image ids each booster saw. Test images get the mean
of the fold boosters (``stack_test: folds``) or a booster fitted on all OOF pixels (``stack_test: refit``).

Optional image-level classifier (``ensemble.empty_classifier``): a small LightGBM on per-image statistics (and the
extra columns) predicting whether a class is present at all — the trick several winners used against false
positives on empty images. With ``ensemble.empty_gate`` a class whose probability of being present is below the
gate is blanked, and with three folds or more the probability is also a pixel feature of the stacker, fitted with
nested folds: the feature fold k's booster trains on comes, for an image of fold j, from a classifier trained
without folds j and k, so no second-level model behind fold k's booster is fitted on fold k's labels. (The
first-level OOF probabilities of fold j's images come from networks that trained on fold k, as in any stack; with
two folds no classifier is left to nest, so the feature is left out.)
"""

from __future__ import annotations

import hashlib
import os
import re
from typing import Optional

import numpy as np

from segkit.ensemble.base import METHODS, FitSample, Method, as_float
from segkit.ensemble.features import (
    extra_columns,
    extra_values,
    image_stat_names,
    image_stats,
    pixel_feature_names,
    pixel_features,
)
from segkit.errors import ConfigError

PIXEL_PARAMS = dict(
    objective="binary", learning_rate=0.1, num_leaves=31, min_data_in_leaf=100, feature_fraction=0.8,
    bagging_fraction=0.8, bagging_freq=1, lambda_l2=1.0, max_bin=63, verbose=-1, deterministic=True,
    force_row_wise=True,
)
EMPTY_PARAMS = dict(
    objective="binary", learning_rate=0.05, num_leaves=7, min_data_in_leaf=10, feature_fraction=0.9,
    lambda_l2=1.0, verbose=-1, deterministic=True, force_row_wise=True,
)
EMPTY_ROUNDS = 100
# Below this many rows LightGBM's thread start-up and synchronisation cost more than the work (measured here:
# 4000 rows x 15 rounds take 0.1 s on one thread, 0.2-0.9 s on two busy cores), so small jobs run on one thread.
PARALLEL_ROWS = 100_000


def threads_for(rows: int, configured: Optional[int]) -> int:
    """LightGBM num_threads: the configured number; else one thread for small jobs, and half the cores for big
    ones. OpenMP threads spin while they wait, so on a shared box all cores is a trap: 133k rows x 30 rounds took
    5 s on one thread and 21-27 s on both cores of a busy 2-core machine."""
    if configured:
        return int(configured)
    return 1 if rows < PARALLEL_ROWS else max(1, (os.cpu_count() or 1) // 2)


class Constant:
    """Stands in for a booster when the training labels are all one value (LightGBM cannot fit that)."""

    def __init__(self, value: float):
        self.value = float(value)

    def predict(self, x, **_):
        return np.full(len(x), self.value, dtype=np.float64)


def lgb_names(names: list[str]) -> list[str]:
    """LightGBM rejects JSON punctuation in feature names; numbered so two cleaned names never collide."""
    return [f"f{i}_" + re.sub(r"[^0-9A-Za-z_]", "_", n) for i, n in enumerate(names)]


class Booster:
    """A trained LightGBM booster that predicts with a thread count suited to the batch size."""

    def __init__(self, booster, threads: Optional[int]):
        self.booster = booster
        self.threads = threads

    def predict(self, x):
        return self.booster.predict(x, num_threads=threads_for(len(x), self.threads))

    def feature_importance(self, importance_type: str = "gain"):
        return self.booster.feature_importance(importance_type=importance_type)


def booster_state(model) -> dict:
    """A trained booster (or Constant) as JSON: LightGBM's own text model, which holds its thresholds exactly."""
    if isinstance(model, Constant):
        return {"constant": model.value}
    return {"lightgbm": model.booster.model_to_string(), "threads": model.threads}


def booster_from(state: dict):
    if "constant" in state:
        return Constant(state["constant"])
    import lightgbm as lgb  # here: as in train_booster, only ensembles that stack pay for it

    return Booster(lgb.Booster(model_str=state["lightgbm"]), state["threads"])


def train_booster(x: np.ndarray, y: np.ndarray, params: dict, rounds: int, names: list[str]):
    if len(y) == 0:
        return Constant(0.0)
    if y.min() == y.max():
        return Constant(float(y[0]))
    import lightgbm as lgb  # here: a second to import, paid only by ensembles that stack

    configured = params.get("num_threads")
    params = {**params, "num_threads": threads_for(len(y), configured)}
    data = lgb.Dataset(x, label=y.astype(np.float32), feature_name=lgb_names(names), free_raw_data=True)
    return Booster(lgb.train(params, data, num_boost_round=rounds), configured)


@METHODS.register("stack")
class Stacker(Method):
    forks = False  # LightGBM predicts with OpenMP threads, which a forked worker may wait on forever

    def __init__(self, setup):
        super().__init__(setup)
        opts = setup.options
        self.scales = [int(s) for s in opts.stack_scales]
        self.rounds = int(opts.stack_rounds)
        self.refit = opts.stack_test == "refit"
        self.with_empty = bool(opts.empty_classifier)
        # the image classifier's probability as a pixel feature needs a third fold to nest it (see the module doc)
        self.present_feature = self.with_empty and len(setup.folds) >= 3
        self.gate = opts.empty_gate
        if self.gate is not None and not self.with_empty:
            raise ConfigError("ensemble.empty_gate: needs ensemble.empty_classifier: true")
        threads = {"num_threads": opts.threads} if opts.threads else {}
        seed = {"seed": setup.seed}
        self.pixel_params = {**PIXEL_PARAMS, **seed, **threads, **opts.stack_params}
        self.empty_params = {**EMPTY_PARAMS, **seed, **threads}
        self.extra_cols = extra_columns(setup.extra)
        self.per_image = max(1, int(opts.stack_pixels) // max(setup.n_oof, 1))
        self.rng = np.random.default_rng(setup.seed)
        k_count = len(setup.classes)
        # streamed-in training data
        self.image_ids: list[str] = []
        self.image_folds: list[int] = []
        self.image_rows: list[np.ndarray] = []  # per image (K, S + E): statistics + extra columns
        self.image_present: list[np.ndarray] = []  # per image (K,) truth has this class
        self.rows: list[list[np.ndarray]] = [[] for _ in range(k_count)]
        self.labels: list[list[np.ndarray]] = [[] for _ in range(k_count)]
        self.row_image: list[list[np.ndarray]] = [[] for _ in range(k_count)]
        # fitted
        self.boosters: dict[tuple[Optional[int], int], object] = {}
        self.empty_models: dict[tuple[Optional[int], int], object] = {}
        self.trained_on: dict[tuple[Optional[int], int], set[str]] = {}
        self.empty_trained_on: dict[tuple[Optional[int], int], set[str]] = {}
        # a digest of the p:present column each booster trained on (what the nested-folds test compares)
        self.features_seen: dict[tuple[Optional[int], int], Optional[str]] = {}

    # ------------------------------------------------------------------------------------------------- names
    @property
    def image_feature_names(self) -> list[str]:
        return image_stat_names(self.setup.models) + [f"extra:{c}" for c in self.extra_cols]

    @property
    def feature_names(self) -> list[str]:
        names = pixel_feature_names(self.setup.models, len(self.setup.classes), self.scales)
        names += self.image_feature_names
        return names + (["p:present"] if self.present_feature else [])

    # ---------------------------------------------------------------------------------------------- collect
    def _image_rows(self, p: np.ndarray, image_id: str) -> np.ndarray:
        extra = extra_values(self.setup.extra, self.extra_cols, image_id)
        stats = image_stats(p)
        return np.concatenate([stats, np.broadcast_to(extra, (stats.shape[0], len(extra)))], axis=1)

    def observe(self, image_id, fold, probs, truth):
        p = as_float(probs)
        rows = self._image_rows(p, image_id)
        h, w = p.shape[-2:]
        index = self.rng.choice(h * w, size=min(self.per_image, h * w), replace=False)
        image_index = len(self.image_ids)
        for k in range(p.shape[1]):
            self.rows[k].append(pixel_features(p, k, self.scales, rows[k], index))
            self.labels[k].append(np.asarray(truth[k]).reshape(-1)[index].astype(np.uint8))
            self.row_image[k].append(np.full(len(index), image_index, dtype=np.int32))
        self.image_ids.append(image_id)
        self.image_folds.append(int(fold))
        self.image_rows.append(rows)
        self.image_present.append(np.asarray(truth).reshape(truth.shape[0], -1).any(1))

    # -------------------------------------------------------------------------------------------------- fit
    def fit(self, sample: FitSample):
        if not self.image_ids:
            raise RuntimeError("stack: no OOF images were observed")
        folds = np.array(self.image_folds)
        ids = np.array(self.image_ids, dtype=object)
        image_x = np.stack(self.image_rows)  # (N, K, S + E)
        present = np.stack(self.image_present)  # (N, K)
        for k in range(len(self.setup.classes)):
            x = np.concatenate(self.rows[k])
            y = np.concatenate(self.labels[k])
            row_image = np.concatenate(self.row_image[k])
            self.rows[k], self.labels[k], self.row_image[k] = [], [], []  # the concatenated copy replaces them
            present_of = self._fit_empty(k, image_x[:, k], present[:, k], folds, ids) if self.with_empty else {}
            if self.present_feature:
                x = np.concatenate([x, np.zeros((len(x), 1), np.float32)], axis=1)  # p:present, filled per booster
            row_fold = folds[row_image]
            for fold in [*self.setup.folds, *([None] if self.refit else [])]:
                if self.present_feature:
                    x[:, -1] = present_of[fold][row_image]
                train = row_fold != fold if fold is not None else np.ones(len(y), bool)
                self.boosters[(fold, k)] = train_booster(x[train], y[train], self.pixel_params, self.rounds,
                                                         self.feature_names)
                self.trained_on[(fold, k)] = set(ids[np.unique(row_image[train])])
                self.features_seen[(fold, k)] = (hashlib.sha1(x[train, -1].tobytes()).hexdigest()
                                                 if self.present_feature else None)
            del x, y

    def _fit_empty(self, k: int, x: np.ndarray, y: np.ndarray, folds: np.ndarray,
                   ids: np.ndarray) -> dict[Optional[int], np.ndarray]:
        """Fold-aware image-level classifiers for class k, and the P(present) feature of every OOF image as each
        pixel booster sees it in training.

        The classifier that predicts fold f's images (at combine time) is trained without fold f. The booster of
        fold f trains on the other folds' images, and their feature must not be a function of fold f's labels
        either: an image of fold j gets it from a classifier trained without folds j *and* f (nested folds). The
        refit booster (test only) sees each image's feature from the classifier trained without its own fold."""
        names = self.image_feature_names

        def fit(train: np.ndarray):
            return train_booster(x[train], y[train].astype(np.uint8), self.empty_params, EMPTY_ROUNDS, names)

        out: dict[Optional[int], np.ndarray] = {None: np.zeros(len(y), dtype=np.float64)}
        for fold in self.setup.folds:
            train = folds != fold
            self.empty_models[(fold, k)] = fit(train)
            self.empty_trained_on[(fold, k)] = set(ids[train])
            if (~train).any():
                out[None][~train] = self.empty_models[(fold, k)].predict(x[~train])
        if not self.present_feature:
            return out
        pairs: dict[frozenset, object] = {}  # the classifier without folds {j, k} serves both j and k
        for outer in self.setup.folds:
            feature = np.full(len(y), np.nan)  # fold `outer`'s own rows are not in its booster's training set
            for fold in self.setup.folds:
                rows = folds == fold
                if fold != outer and rows.any():
                    key = frozenset((fold, outer))
                    if key not in pairs:
                        pairs[key] = fit((folds != fold) & (folds != outer))
                    feature[rows] = pairs[key].predict(x[rows])
            out[outer] = feature
        if self.refit:
            self.empty_models[(None, k)] = fit(np.ones(len(y), bool))
        return out

    # ------------------------------------------------------------------------------------------------ apply
    def _predict(self, table: dict, fold: Optional[int], k: int, x: np.ndarray) -> np.ndarray:
        if fold is not None or (None, k) in table:
            return table[(fold, k)].predict(x)
        # test without a refit model: the mean of the fold models
        return np.mean([table[(f, k)].predict(x) for f in self.setup.folds], axis=0)

    def combine(self, probs, image_id, fold):
        p = as_float(probs)
        rows = self._image_rows(p, image_id)
        k_count, h, w = p.shape[1:]
        out = np.empty((k_count, h, w), dtype=np.float32)
        for k in range(k_count):
            row = rows[k]
            present = None
            if self.with_empty:
                present = float(self._predict(self.empty_models, fold, k, row[None])[0])
                if self.present_feature:
                    row = np.concatenate([row, np.float32([present])])
            if self.gate is not None and present < self.gate:
                out[k] = 0.0
                continue
            x = pixel_features(p, k, self.scales, row)
            out[k] = self._predict(self.boosters, fold, k, x).reshape(h, w)
        return out

    def _test_entries(self, table: dict) -> dict:
        """The entries of ``table`` that test images use (``_predict`` with fold None), keyed "<fold>:<class>"."""
        keys = [(f, k) for (f, k) in table if f is None]
        if not keys:  # no refit: test images take the mean of the fold models
            keys = list(table)
        return {f"{'' if f is None else f}:{k}": booster_state(table[(f, k)]) for f, k in keys}

    def state(self):
        return {"boosters": self._test_entries(self.boosters), "empty_models": self._test_entries(self.empty_models)}

    def load_state(self, state):
        def table(entries: dict) -> dict:
            out = {}
            for key, value in entries.items():
                fold, k = key.split(":")
                out[(int(fold) if fold else None, int(k))] = booster_from(value)
            return out

        self.boosters, self.empty_models = table(state["boosters"]), table(state["empty_models"])

    def params(self):
        out = {"pixels_per_image": self.per_image, "features": self.feature_names,
               "test": "refit" if self.refit else "folds"}
        importance = {}
        for (fold, k), booster in self.boosters.items():
            if hasattr(booster, "feature_importance"):
                gain = booster.feature_importance(importance_type="gain")
                for name, g in zip(self.feature_names, gain):
                    importance[name] = importance.get(name, 0.0) + float(g)
        if importance:
            total = sum(importance.values()) or 1.0
            top = sorted(importance.items(), key=lambda kv: -kv[1])[:10]
            out["top_features"] = {n: round(g / total, 4) for n, g in top}
        return out
