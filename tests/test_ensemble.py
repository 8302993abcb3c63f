"""Ensembling: each method on hand cases, the fold-aware stacker, and the stage end to end on hand-made stores."""

import json

import numpy as np
import pandas as pd
import pytest

from segkit.artifacts.probs import ProbStore, ProbWriter, quantize
from segkit.data import Competition
from segkit.ensemble import restore
from segkit.ensemble.averaging import fit_weights
from segkit.ensemble.base import METHODS, FitSample, Setup, sample_stride
from segkit.ensemble.voting import vote_share
from segkit.errors import ConfigError, DataError
from segkit.metrics import CompetitionMetric
from segkit.stages import ensemble, folds
from segkit.threshold import binarize


def dice(pred, truth):
    """Mean over classes of Dice, 1 when both are empty (the convention the tests rely on)."""
    out = []
    for p, t in zip(pred, truth):
        s = p.sum() + t.sum()
        out.append(1.0 if s == 0 else 2.0 * (p & t).sum() / s)
    return float(np.mean(out))


def setup_for(models=("a", "b"), classes=("fg",), mode="binary", folds_=(0, 1, 2), n_oof=0, **options):
    from segkit.config.schema import EnsembleConfig

    return Setup(models=list(models), classes=list(classes), mode=mode, folds=list(folds_),
                 metric=CompetitionMetric("dice", dice),
                 options=EnsembleConfig(**options), n_oof=n_oof)


def q(*values):
    """uint8 (1, 1, n) from probabilities."""
    return quantize(np.array(values, dtype=np.float32)[None, None])


def combine(name, probs, **setup_options):
    m = METHODS.get(name)(setup_for(models=[f"m{i}" for i in range(len(probs))], **setup_options))
    m.fit(FitSample(0))
    out = np.asarray(m.combine(probs, "x", None))
    return out / np.float32(255) if out.dtype == np.uint8 else out  # uint8 = already quantised


# ------------------------------------------------------------------------------------------------ averaging


def test_mean_gmean_rms_on_hand_cases():
    a, b = q(0.2, 1.0, 0.0), q(0.8, 1.0, 0.5)
    np.testing.assert_allclose(combine("mean", [a, b])[0, 0], [0.5, 1.0, 0.25], atol=2 / 255)
    np.testing.assert_allclose(combine("gmean", [a, b])[0, 0], [0.4, 1.0, np.sqrt(0.5 / 510)], atol=2 / 255)
    np.testing.assert_allclose(combine("rms", [a, b])[0, 0], [np.sqrt(0.34), 1.0, np.sqrt(0.125)], atol=2 / 255)


def test_mean_of_one_model_is_that_model_bit_for_bit():
    a = np.random.default_rng(0).integers(0, 256, (2, 5, 7), dtype=np.uint8)
    out = METHODS.get("mean")(setup_for(models=["a"], classes=["x", "y"])).combine([a], "x", None)
    assert out.dtype == np.uint8 and np.array_equal(out, a)


def test_gmean_multiclass_renormalises_with_background():
    # two models, two foreground classes: the background takes part, the output stays a sub-distribution
    a = quantize(np.array([[[0.6]], [[0.3]]], np.float32))
    b = quantize(np.array([[[0.2]], [[0.2]]], np.float32))
    out = combine("gmean", [a, b], classes=("c1", "c2"), mode="multiclass")
    pa, pb = np.array([0.1, 0.6, 0.3]), np.array([0.6, 0.2, 0.2])
    g = np.sqrt(pa * pb)
    np.testing.assert_allclose(out[:, 0, 0], (g / g.sum())[1:], atol=3 / 255)


def test_rank_removes_calibration_differences():
    rng = np.random.default_rng(0)
    setup = setup_for()
    m = METHODS.get("rank")(setup)
    base = rng.random((1, 20, 20)).astype(np.float32)
    a, b = quantize(base), quantize(base ** 3)  # same ordering, very different calibration
    m.observe("x", 0, [a, b], np.zeros_like(a))
    m.fit(FitSample(0))
    out = np.asarray(m.combine([a, b], "x", None))
    # same ranks in both models -> the output keeps the ordering of the input exactly
    order = np.argsort(base.ravel(), kind="stable")
    assert np.all(np.diff(out.ravel()[order]) >= -1e-6)
    assert 0.0 <= out.min() and out.max() <= 1.0
    # one model alone: rank averaging gives that model back
    single = METHODS.get("rank")(setup_for(models=["a"]))
    single.observe("x", 0, [a], np.zeros_like(a))
    single.fit(FitSample(0))
    np.testing.assert_allclose(single.combine([a], "x", None), a / 255.0, atol=1e-6)


def _sample_with(truths, probs_per_model, fold_of):
    s = FitSample(10**9)
    for i, t in enumerate(truths):
        s.offer(f"i{i}", fold_of[i], [p[i] for p in probs_per_model], t)
    return s


def test_weighted_mean_moves_weight_to_the_good_model_fold_aware():
    rng = np.random.default_rng(1)
    truths = [(rng.random((1, 16, 16)) < 0.3).astype(np.uint8) for _ in range(12)]
    good = [quantize(0.1 + 0.8 * t) for t in truths]
    noise = [quantize(rng.random(t.shape)) for t in truths]
    fold_of = [i % 3 for i in range(12)]
    sample = _sample_with(truths, [good, noise], fold_of)
    w, score = fit_weights(CompetitionMetric("dice", dice), sample.images, 2)
    assert w[0] > 0.5 + 1e-6 and score == pytest.approx(1.0)
    m = METHODS.get("wmean")(setup_for())
    m.fit(sample)
    assert set(m.weights) == {0, 1, 2, None}
    assert all(m.weights[k][0] > 0.5 for k in m.weights)
    assert np.isclose(m.weights[None].sum(), 1.0)
    assert m.params()["weights"]["a"] > 0.5


def test_fold_aware_weights_use_only_other_folds():
    # fold 0 images favour model a, the others model b: fold 0's weights must come from folds 1-2 (favour b)
    rng = np.random.default_rng(2)
    truths = [(rng.random((1, 16, 16)) < 0.4).astype(np.uint8) for _ in range(9)]
    fold_of = [i % 3 for i in range(9)]
    noisy = lambda t: quantize(rng.random(t.shape))  # noqa: E731
    a = [quantize(0.1 + 0.8 * t) if fold_of[i] == 0 else noisy(t) for i, t in enumerate(truths)]
    b = [noisy(t) if fold_of[i] == 0 else quantize(0.1 + 0.8 * t) for i, t in enumerate(truths)]
    m = METHODS.get("wmean")(setup_for())
    m.fit(_sample_with(truths, [a, b], fold_of))
    assert m.weights[0][1] > 0.5  # fitted without fold 0: b
    assert m.weights[None][1] > 0.5  # b wins on most images


def test_fit_sample_stays_in_budget_and_subsamples_big_sets():
    assert sample_stride(100, 1000, 10**6) == 1
    assert sample_stride(100, 1000, 25_000) == 2  # 100k values into 25k: every 2nd row and column
    assert sample_stride(12_000, 4 * 256 * 1600, 20_000_000) == 4  # never coarser than 4
    s = FitSample(budget=100, stride=2)
    img = np.arange(2 * 8 * 8, dtype=np.uint8).reshape(2, 8, 8)
    assert s.offer("a", 0, [img, img], img) and s.used == 32
    assert np.array_equal(s.images[0].probs[1], img[:, ::2, ::2])
    assert s.offer("b", 0, [img], img) and s.offer("c", 0, [img], img)
    assert not s.offer("d", 0, [img], img) and s.used == 96  # a 4th would pass the budget
    assert [i.image_id for i in s.without(0)] == [] and len(s.without(1)) == 3


# --------------------------------------------------------------------------------------------------- voting


def test_vote_share_majority_and_ties():
    t, f = np.ones((1, 1, 1), bool), np.zeros((1, 1, 1), bool)
    assert vote_share([t, t, f])[0, 0, 0] == 170 and binarize(vote_share([t, t, f])).all()
    assert not binarize(vote_share([t, f, f])).any()
    tie = vote_share([t, f])
    assert tie[0, 0, 0] == 127 and not binarize(tie).any()  # a tie is not a majority at 0.5
    assert vote_share([t, t])[0, 0, 0] == 255 and vote_share([f, f])[0, 0, 0] == 0


def test_vote_uses_each_models_own_tuned_threshold():
    rng = np.random.default_rng(3)
    truths = [(rng.random((1, 16, 16)) < 0.4).astype(np.uint8) for _ in range(9)]
    fold_of = [i % 3 for i in range(9)]
    under = [quantize(0.05 + 0.3 * t) for t in truths]  # right ordering, but all below 0.5: needs t < 0.35
    good = [quantize(0.1 + 0.8 * t) for t in truths]
    m = METHODS.get("vote")(setup_for(models=["under", "good", "good2"]))
    m.fit(_sample_with(truths, [under, good, good], fold_of))
    assert m.thresholds[None][0, 0] < 0.35 and 0.1 <= m.thresholds[None][1, 0] < 0.9
    out = m.combine([under[0], good[0], good[0]], "i0", 0)
    assert np.array_equal(binarize(out), truths[0].astype(bool))
    assert out.max() == 255  # all three agree on the foreground once `under` is cut at its own threshold


# ------------------------------------------------------------------------------------------------- stacking


def test_stacker_never_trains_on_the_fold_it_predicts():
    rng = np.random.default_rng(4)
    setup = setup_for(n_oof=12, stack_pixels=2000, stack_rounds=10, stack_scales=[3], empty_classifier=True)
    setup.extra = pd.DataFrame({"z": np.arange(12.0), "note": ["x"] * 12}, index=[f"i{i}" for i in range(12)])
    m = METHODS.get("stack")(setup)
    assert "extra:z" in m.feature_names and "extra:note" not in m.feature_names  # numeric columns only
    ids_of = {0: set(), 1: set(), 2: set()}
    for i in range(12):
        truth = (rng.random((1, 12, 12)) < (0.3 if i % 4 else 0.0)).astype(np.uint8)
        probs = [quantize(np.clip(0.2 + 0.6 * truth + 0.2 * rng.standard_normal(truth.shape), 0, 1)) for _ in "ab"]
        m.observe(f"i{i}", i % 3, probs, truth)
        ids_of[i % 3].add(f"i{i}")
    m.fit(FitSample(0))
    every = set().union(*ids_of.values())
    for k in (0, 1, 2):
        seen = m.trained_on[(k, 0)]
        assert not seen & ids_of[k]
        assert seen == every - ids_of[k]
        assert not m.empty_trained_on[(k, 0)] & ids_of[k]
    assert (None, 0) not in m.boosters  # test = mean of the fold boosters by default
    out = m.combine(probs, "i11", 2)
    assert out.shape == (1, 12, 12) and 0 <= out.min() and out.max() <= 1
    test_out = m.combine(probs, "new", None)  # an id without extra columns: NaN features, still predicted
    assert test_out.shape == (1, 12, 12) and np.isfinite(test_out).all()
    assert m.rows == [[]] and len(m.image_ids) == 12  # the pixel sample is released after fitting
    assert "p:present" in m.feature_names and "top_features" in m.params()


def _stacker_on(truths, probs, fold_of):
    setup = setup_for(n_oof=len(truths), stack_pixels=4000, stack_rounds=10, stack_scales=[3], empty_classifier=True,
                      stack_params={"min_data_in_leaf": 5})
    m = METHODS.get("stack")(setup)
    for i, (t, p) in enumerate(zip(truths, probs)):
        m.observe(f"i{i}", fold_of[i], p, t)
    m.fit(FitSample(0))
    return m


def test_stacker_fold_k_never_sees_a_function_of_fold_k_labels():
    """The leak test of the empty-image classifier: change which of fold 0's images hold an object. Everything
    fold 0's booster trained on (its p:present column included) and what it predicts for fold 0's images stay
    the same; the features fold 1's booster saw do change (so the change reaches the classifiers)."""
    rng = np.random.default_rng(7)
    fold_of = [i % 3 for i in range(24)]
    truths = [(rng.random((1, 12, 12)) < (0.3 if i % 2 else 0.0)).astype(np.uint8) for i in range(24)]
    probs = [[quantize(np.clip(0.25 + 0.5 * t + 0.2 * rng.standard_normal(t.shape), 0, 1)) for _ in "ab"]
             for t in truths]
    other = [np.ones_like(t) if f == 0 else t for t, f in zip(truths, fold_of)]  # fold 0: every image full
    a, b = _stacker_on(truths, probs, fold_of), _stacker_on(other, probs, fold_of)
    assert a.features_seen[(0, 0)] == b.features_seen[(0, 0)]
    for i in range(0, 24, 3):
        assert np.array_equal(a.combine(probs[i], f"i{i}", 0), b.combine(probs[i], f"i{i}", 0))
    assert a.features_seen[(1, 0)] != b.features_seen[(1, 0)]  # fold 1's booster saw fold 0


def test_with_two_folds_the_present_probability_gates_but_is_no_feature():
    """Two folds leave no third to nest the image classifier in: its probability is not a pixel feature (it would
    be a constant in training and a real probability at prediction), while empty_gate still uses it."""
    m = METHODS.get("stack")(setup_for(folds_=(0, 1), empty_classifier=True, empty_gate=0.5))
    assert m.with_empty and not m.present_feature and "p:present" not in m.feature_names
    assert "p:present" in METHODS.get("stack")(setup_for(empty_classifier=True)).feature_names


def test_stacker_learns_a_recalibration():
    # one model that is right but scaled into [0, 0.45]: at 0.5 it predicts nothing, the stacker must fix that
    rng = np.random.default_rng(5)
    setup = setup_for(models=["a"], n_oof=12, stack_pixels=3000, stack_rounds=30, stack_scales=[3],
                      empty_classifier=False, stack_params={"min_data_in_leaf": 5})
    m = METHODS.get("stack")(setup)
    data = []
    for i in range(12):
        truth = (rng.random((1, 16, 16)) < 0.4).astype(np.uint8)
        probs = [quantize(0.05 + 0.4 * truth)]
        m.observe(f"i{i}", i % 3, probs, truth)
        data.append((probs, truth, i % 3))
    m.fit(FitSample(0))
    probs, truth, fold = data[0]
    assert not binarize(probs[0]).any()
    out = quantize(m.combine(probs, "i0", fold))
    assert dice(binarize(out), truth.astype(bool)) > 0.95


# ----------------------------------------------------------------------------------------------- the stage


def fake_probs(truth, quality, rng):
    """Truth pulled towards 0.5 and blurred by noise: ``quality`` 1 = perfect, 0 = noise around 0.5."""
    t = truth.astype(np.float32)
    return np.clip(0.5 + quality * (t - 0.5) + 0.3 * rng.standard_normal(t.shape), 0, 1)


def _write_model(cfg, comp, frame, name, quality, rng):
    """OOF per fold + test store of a fake model."""
    for k, part in frame.groupby("fold"):
        w = ProbWriter(cfg.run_dir / name / f"fold{k}" / "oof", cfg.data.classes)
        for image_id in part["id"]:
            w.write(image_id, fake_probs(comp.read_mask(image_id), quality, rng))
        w.finish(part["id"])
    w = ProbWriter(cfg.run_dir / name / "test", cfg.data.classes)
    for image_id in comp.test_ids:
        h, wd = comp.image_size(image_id, "test")
        w.write(image_id, rng.random((1, h, wd)))
    w.finish(comp.test_ids)


def test_the_metric_object_binarises_uint8_maps_by_the_pipelines_rule():
    from segkit.metrics import get_metric

    scorer = get_metric("dice")
    q8 = np.array([[[127, 128, 200]]], np.uint8)
    assert binarize(q8).tolist() == binarize(q8, 0.5).tolist() == [[[False, True, True]]]
    truth = np.array([[[0, 1, 1]]], np.uint8)
    by_threshold = scorer.score_above([q8], [truth], [0.5, 0.7, 0.9])[:, 0]
    assert by_threshold == pytest.approx([1.0, 2 / 3, 0.0])
    assert scorer(binarize(q8), truth.astype(bool)) == pytest.approx(dice(binarize(q8), truth.astype(bool)))


@pytest.fixture
def stage_cfg(demo_cfg):
    def make(*overrides, models=(("good", 0.7), ("poor", 0.4))):
        model_list = "[" + ",".join(f"{{name: {n}}}" for n, _ in models) + "]"
        cfg = demo_cfg(f"models={model_list}", "ensemble.stack_rounds=15", "ensemble.stack_pixels=4000",
                       "ensemble.stack_scales=[3,9]", *overrides)
        folds.run(cfg)
        comp = Competition(cfg.data, seed=cfg.seed)
        frame = folds.load_folds(cfg, comp)
        rng = np.random.default_rng(0)
        for name, quality in models:
            if not (cfg.run_dir / name / "test").exists():
                _write_model(cfg, comp, frame, name, quality, rng)
        return cfg, comp, frame

    return make


def test_stage_writes_every_method_and_the_chosen_stores(stage_cfg, capsys):
    cfg, comp, frame = stage_cfg("ensemble.methods=[all]")
    assert ensemble.run(cfg) == 0
    out = cfg.run_dir / "ensemble"
    table = pd.read_csv(out / "cv.csv")
    assert set(METHODS.names()) <= set(table["method"])
    assert {"model:good", "model:poor"} <= set(table["method"])
    assert {"fold0", "fold1", "fold2", "cv"} <= set(table.columns)
    assert table["cv"].between(0, 1).all()
    printed = capsys.readouterr().out
    assert all(name in printed for name in METHODS.names())
    choice = json.loads((out / "choice.json").read_text())
    methods = table[table["method"].isin(METHODS.names())]
    assert choice["cv"] == pytest.approx(methods["cv"].max())
    assert choice["method"] in set(methods.loc[methods["cv"] == methods["cv"].max(), "method"])
    oof, test = ProbStore(out / "oof"), ProbStore(out / "test")
    assert sorted(oof.ids) == sorted(frame["id"]) and test.ids == comp.test_ids
    assert oof[frame["id"][0]].shape == comp.read_mask(frame["id"][0]).shape
    # the stored OOF reproduces the table's CV for the chosen method
    scores = [dice(binarize(oof[i]), comp.read_mask(i).astype(bool)) for i in frame["id"]]
    assert np.mean(scores) == pytest.approx(choice["cv"])
    # a second run finds everything complete and keeps it
    mtime = (out / "choice.json").stat().st_mtime_ns
    assert ensemble.run(cfg) == 0
    assert "keeping it" in capsys.readouterr().out
    assert (out / "choice.json").stat().st_mtime_ns == mtime


def test_chosen_mean_is_the_mean_and_inputs_change_redoes(stage_cfg, capsys):
    cfg, comp, frame = stage_cfg("ensemble.methods=[mean,vote]", "ensemble.choose=mean")
    ensemble.run(cfg)
    out = cfg.run_dir / "ensemble"
    assert json.loads((out / "choice.json").read_text())["method"] == "mean"
    i = frame["id"][3]
    k = int(frame["fold"][3])
    a = ProbStore(cfg.run_dir / "good" / f"fold{k}" / "oof")[i].astype(np.float32)
    b = ProbStore(cfg.run_dir / "poor" / f"fold{k}" / "oof")[i].astype(np.float32)
    assert np.array_equal(ProbStore(out / "oof")[i], np.rint((a + b) / 2).astype(np.uint8))
    # a re-predicted (TTA) OOF store of one model is preferred over its fold stores, and invalidates the output
    w = ProbWriter(cfg.run_dir / "good" / "oof_tta", cfg.data.classes)
    for image_id in frame["id"]:
        w.write(image_id, comp.read_mask(image_id).astype(np.float32))
    w.finish(frame["id"])
    ensemble.run(cfg)
    assert "good [oof_tta]" in capsys.readouterr().out
    expected = np.rint((comp.read_mask(i).astype(np.float32) * 255 + b) / 2).astype(np.uint8)
    assert np.array_equal(ProbStore(out / "oof")[i], expected)


def test_a_redo_killed_half_way_is_not_taken_for_done(stage_cfg, monkeypatch, capsys):
    """Killed while the outputs of other settings are being replaced, with the settings then put back: the
    ensemble must be made again, not kept with a mix of old and new stores."""
    cfg, comp, frame = stage_cfg("ensemble.methods=[mean,vote]", "ensemble.choose=mean")
    ensemble.run(cfg)
    other = cfg.model_copy(update={"ensemble": cfg.ensemble.model_copy(update={"choose": "vote"})})
    real = ensemble.write_store

    def killed_on_test(folder, *args):
        if folder.name == "test":
            raise KeyboardInterrupt
        return real(folder, *args)

    monkeypatch.setattr(ensemble, "write_store", killed_on_test)
    with pytest.raises(KeyboardInterrupt):
        ensemble.run(other)  # the OOF store is the vote's now, the test store still the mean's
    monkeypatch.setattr(ensemble, "write_store", real)
    capsys.readouterr()
    ensemble.run(cfg)
    assert "keeping it" not in capsys.readouterr().out
    assert json.loads((cfg.run_dir / "ensemble" / "choice.json").read_text())["method"] == "mean"


def test_one_model_mean_is_that_model(stage_cfg):
    cfg, comp, frame = stage_cfg("ensemble.methods=[mean]", models=(("solo", 0.7),))
    ensemble.run(cfg)
    out = ProbStore(cfg.run_dir / "ensemble" / "test")
    src = ProbStore(cfg.run_dir / "solo" / "test")
    assert all(np.array_equal(out[i], src[i]) for i in comp.test_ids)


def test_missing_or_stale_inputs_are_clear_errors(stage_cfg):
    cfg, comp, frame = stage_cfg("ensemble.methods=[mean]")
    (cfg.run_dir / "poor" / "fold1" / "oof" / "manifest.json").unlink()
    with pytest.raises(DataError, match=r"poor.*fold\(s\) \[1\]"):
        ensemble.run(cfg)
    with pytest.raises(ConfigError, match="ensemble.methods.*known"):
        ensemble.run(cfg.model_copy(update={"ensemble": cfg.ensemble.model_copy(update={"methods": ["median"]})}))


def test_multiclass_stage_runs_every_method(demo_multiclass_root, tmp_path):
    from conftest import CONFIGS

    from segkit.config import load_config

    cfg = load_config(CONFIGS / "demo.yaml", [
        f"data.root={demo_multiclass_root}", "data.mode=multiclass", "data.classes=[round,streak]",
        "data.rle.id_class_sep=_",
        f"paths.runs={tmp_path / 'runs'}", f"paths.folds={tmp_path / 'folds'}", "models=[{name: a},{name: b}]",
        "ensemble.methods=[all]", "ensemble.stack_rounds=10", "ensemble.stack_pixels=3000", "ensemble.stack_scales=[3]",
    ])
    folds.run(cfg)
    comp = Competition(cfg.data, seed=cfg.seed)
    frame = folds.load_folds(cfg, comp)
    rng = np.random.default_rng(7)

    def softmaxish(truth, quality):
        p = fake_probs(truth, quality, rng)
        total = p.sum(0, keepdims=True)
        return np.where(total > 1, p / np.maximum(total, 1e-6), p)  # foreground channels sum to at most 1

    for name, quality in (("a", 0.7), ("b", 0.5)):
        for k, part in frame.groupby("fold"):
            w = ProbWriter(cfg.run_dir / name / f"fold{k}" / "oof", cfg.data.classes)
            for i in part["id"]:
                w.write(i, softmaxish(comp.read_mask(i), quality))
            w.finish(part["id"])
        w = ProbWriter(cfg.run_dir / name / "test", cfg.data.classes)
        for i in comp.test_ids:
            h, wd = comp.image_size(i, "test")
            w.write(i, softmaxish(np.zeros((2, h, wd), np.uint8), quality))
        w.finish(comp.test_ids)
    ensemble.run(cfg)
    table = pd.read_csv(cfg.run_dir / "ensemble" / "cv.csv")
    assert set(METHODS.names()) <= set(table["method"]) and table["cv"].notna().all()
    store = ProbStore(cfg.run_dir / "ensemble" / "test")
    assert store[comp.test_ids[0]].shape[0] == 2
    gmean = METHODS.get("gmean")(setup_for(classes=("round", "streak"), mode="multiclass"))
    out = gmean.combine([store[comp.test_ids[0]], store[comp.test_ids[0]]], "x", None)
    assert out.sum(0).max() <= 1.0 + 1e-5  # renormalised with the background: still a sub-distribution


def test_choose_can_name_a_single_model_and_bad_names_fail_first(stage_cfg):
    cfg, comp, frame = stage_cfg("ensemble.methods=[mean]", "ensemble.choose=model:good")
    ensemble.run(cfg)
    out = ProbStore(cfg.run_dir / "ensemble" / "test")
    src = ProbStore(cfg.run_dir / "good" / "test")
    assert all(np.array_equal(out[i], src[i]) for i in comp.test_ids)
    bad = cfg.model_copy(update={"ensemble": cfg.ensemble.model_copy(update={"choose": "stack"})})
    with pytest.raises(ConfigError, match="ensemble.choose.*stack"):
        ensemble.run(bad)


# ------------------------------------------------------------------------------------------- test-time state

def _fitted(name: str, setup):
    rng = np.random.default_rng(3)
    truths = [(rng.random((1, 16, 16)) > 0.6).astype(np.uint8) for _ in range(12)]
    probs = [[quantize(np.clip(t + rng.normal(0, s, t.shape), 0, 1).astype(np.float32)) for s in (0.3, 0.6)]
             for t in truths]
    method, sample = METHODS.get(name)(setup), FitSample(10**9)
    for i, (t, p) in enumerate(zip(truths, probs)):
        sample.offer(f"i{i}", i % 3, p, t)
        method.observe(f"i{i}", i % 3, p, t)
    method.fit(sample)
    return method, probs


@pytest.mark.parametrize("name", METHODS.names())
def test_every_method_restores_its_test_combination_exactly(name):
    setup = setup_for(n_oof=12, stack_pixels=2000, stack_rounds=5, stack_scales=[3], empty_classifier=True,
                      stack_params={"min_data_in_leaf": 5})
    fitted, probs = _fitted(name, setup)
    state = json.loads(json.dumps(fitted.state()))  # through JSON, as state.json holds it
    restored = restore(setup, {"method": name, "models": setup.models}, state)
    for i, p in enumerate(probs):
        want, got = np.asarray(fitted.combine(p, f"i{i}", None)), np.asarray(restored.combine(p, f"i{i}", None))
        assert want.dtype == got.dtype and np.array_equal(want, got)


def test_a_restored_weighted_mean_renormalises_over_the_models_kept_and_a_stack_refuses():
    setup = setup_for(n_oof=12, stack_pixels=2000, stack_rounds=5, stack_scales=[3])
    state = {"weights": [0.75, 0.25]}
    one = restore(setup_for(models=("b",)), {"method": "wmean", "models": ["a", "b"]}, state)
    assert one.weights[None].tolist() == [1.0]
    fitted, _ = _fitted("stack", setup)
    with pytest.raises(DataError, match="needs every model it was fitted on"):
        restore(setup_for(models=("a",)), {"method": "stack", "models": ["a", "b"]}, fitted.state())
