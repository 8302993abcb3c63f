"""Tuning: the keep-only-if-better rule on OOF built so that a step helps or hurts, the fast summary paths against
the plain per-mask path, and the `segkit tune` stage on the tiny demo."""

import json

import cv2
import numpy as np
import pandas as pd
import pytest

from segkit.artifacts.probs import ProbWriter
from segkit.config.schema import TuneConfig
from segkit.errors import ConfigError, SegkitError
from segkit.metrics import CompetitionMetric, ObjectOverlaps, get_metric
from segkit.postprocess.masks import ClassParams, apply_class
from segkit.stages.tune import Greedy, KeepRule, OOFStream, final_scores, tune
from segkit.stages.tune.candidates import Staged, score_params
from segkit.stages.tune.tables import summarize

resolve_metric = get_metric


def make_source(tmp_path, probs: dict, truths: dict, classes=("obj",)) -> OOFStream:
    writer = ProbWriter(tmp_path / "oof", list(classes))
    for image_id, p in probs.items():
        writer.write(image_id, p)
    store = writer.finish(list(probs))
    return OOFStream(store, lambda i: truths[i])


def square(size, y, x, side):
    m = np.zeros((size, size), np.uint8)
    m[y:y + side, x:x + side] = 1
    return m


def step(result, name):
    return next(s for s in result["steps"] if s["step"] == name)


SMALL = dict(thresholds=[0.3, 0.4, 0.5, 0.55, 0.65, 0.8], min_areas=[0, 10, 50], empty_pixels=[1, 10, 40],
             morph_radii=[1])


# --------------------------------------------------------------------------------------------- keep-only-if-better


def test_greedy_keeps_only_strict_improvements():
    one = np.ones(4)
    g = Greedy(["a", "b", "c"], CompetitionMetric("x", None, True), KeepRule(0.01))
    g.start(np.full((4, 3), 0.5))
    g.offer("s", [(ClassParams(threshold=0.3), 0.52 * one, "better"), (ClassParams(threshold=0.3), 0.505 * one,
                                                                          "too little"),
                  (ClassParams(threshold=0.3), 0.4 * one, "worse")])
    kept = {c: v["kept"] for c, v in g.steps[-1]["classes"].items()}
    assert kept == {"a": True, "b": False, "c": False}
    assert g.params[0].threshold == 0.3 and g.params[1] == ClassParams() and g.params[2] == ClassParams()
    low = Greedy(["a"], CompetitionMetric("loss", None, False), KeepRule(0.0))  # lower is better
    low.start(np.full((4, 1), 0.5))
    low.offer("s", [(ClassParams(threshold=0.3), 0.6 * one, "worse")])
    assert not low.steps[-1]["kept"]
    low.offer("s", [(ClassParams(threshold=0.3), 0.4 * one, "better")])
    assert low.steps[-1]["kept"] and low.params[0].threshold == 0.3


def test_keep_rules_judge_the_gain_fold_by_fold():
    """A gain carried by one fold out of four: kept by a plain mean rule, refused by most_folds and fold_se; a
    small gain on every fold: kept by both."""
    folds = np.repeat([0, 1, 2, 3], 5)
    lucky = np.where(folds == 0, 0.08, -0.01)  # mean +0.0125, positive on one fold only
    steady = np.full(20, 0.002)
    assert KeepRule(0.0).keeps(lucky, folds)
    assert not KeepRule("most_folds").keeps(lucky, folds)
    assert not KeepRule("fold_se").keeps(lucky, folds)
    assert KeepRule("most_folds").keeps(steady + np.where(folds == 1, -0.003, 0.0), folds)  # 3 of 4 folds
    assert KeepRule("fold_se").keeps(steady, folds)
    assert not KeepRule("most_folds").keeps(-steady, folds)
    with pytest.raises(ConfigError, match="tune.min_gain"):
        KeepRule("sometimes")


def test_every_step_rejected_on_perfect_thin_predictions(tmp_path):
    """Exact predictions of thin lines and tiny dots: every clean-up (opening, erosion, min area...) hurts, none
    may be kept, and the parameters stay the untuned defaults."""
    probs, truths = {}, {}
    rng = np.random.default_rng(0)
    for i in range(6):
        t = np.zeros((24, 24), np.uint8)
        t[rng.integers(2, 20), 2:22] = 1  # a one-pixel line
        t[rng.integers(0, 24), rng.integers(0, 24)] = 1  # a dot
        probs[f"i{i}"], truths[f"i{i}"] = t[None].astype(np.float32) * 0.9, t[None]
    result = tune(make_source(tmp_path, probs, truths), ["obj"], resolve_metric("dice"), TuneConfig(**SMALL)).record
    assert result["cv_baseline"] == pytest.approx(1.0) and result["cv"] == pytest.approx(1.0)
    assert not any(s.get("kept") for s in result["steps"][1:])
    assert ClassParams.from_dict(result["classes"]["obj"]) == ClassParams()
    opening = step(result, "opening")["classes"]["obj"]
    assert opening["score"] < opening["score_before"]  # it was tried, it hurt, it was rejected


def test_min_area_kept_when_it_removes_false_specks(tmp_path):
    probs, truths = {}, {}
    rng = np.random.default_rng(1)
    for i in range(8):
        t = square(24, *rng.integers(2, 14, 2), 6)
        p = t.astype(np.float32) * 0.9
        for _ in range(3):  # 2x2 confident specks away from the object
            y, x = rng.integers(0, 22, 2)
            if not t[max(y - 1, 0):y + 3, max(x - 1, 0):x + 3].any():
                p[y:y + 2, x:x + 2] = 0.9
        probs[f"i{i}"], truths[f"i{i}"] = p[None], t[None]
    result = tune(make_source(tmp_path, probs, truths), ["obj"], resolve_metric("dice"), TuneConfig(**SMALL)).record
    assert not step(result, "threshold")["kept"]  # every threshold gives the same masks: no improvement
    assert step(result, "min_area")["kept"]
    assert result["classes"]["obj"]["min_area"] == 10  # 50 would remove the 36-pixel objects too
    assert result["cv"] == pytest.approx(1.0) and result["cv_baseline"] < 0.95


def test_empty_rule_kept_when_confident_core_separates_empty_images(tmp_path):
    """Empty images carry a faint 36-px blob (p = 0.6); objects have a confident core (0.95) and a faint rim
    (0.6). One threshold either keeps the faint blobs or cuts the rims; min area can't tell them apart (same
    size); the empty rule (top 0.8, bottom below 0.6) gets every image right."""
    probs, truths = {}, {}
    for i in range(10):
        y, x = 3 + i, 12 - i
        blob = square(24, y, x, 6).astype(np.float32)
        if i % 2:
            p, t = blob * 0.6, np.zeros((24, 24), np.uint8)
        else:
            p, t = blob * 0.6, blob.astype(np.uint8)
            p[y + 1:y + 5, x + 1:x + 5] = 0.95
        probs[f"i{i}"], truths[f"i{i}"] = p[None], t[None]
    result = tune(make_source(tmp_path, probs, truths), ["obj"], resolve_metric("dice"), TuneConfig(**SMALL)).record
    assert step(result, "threshold")["kept"] and step(result, "threshold")["cv"] < 0.85
    assert not step(result, "min_area")["kept"]
    assert step(result, "empty_rule")["kept"]
    chosen = ClassParams.from_dict(result["classes"]["obj"])
    assert chosen.empty_top >= 0.65 and chosen.threshold < 0.6 and 1 <= chosen.empty_pixels <= 10
    assert result["cv"] == pytest.approx(1.0)


def test_fill_holes_kept_when_predictions_have_holes(tmp_path):
    probs, truths = {}, {}
    for i in range(5):
        t = square(20, 3 + i, 4, 9)
        p = t.astype(np.float32) * 0.9
        p[6 + i:9 + i, 7:10] = 0.1  # a 3x3 hole inside: IoU 72/81 misses TGS's top two IoU thresholds
        probs[f"i{i}"], truths[f"i{i}"] = p[None], t[None]
    result = tune(make_source(tmp_path, probs, truths), ["obj"], resolve_metric("tgs"), TuneConfig(**SMALL)).record
    assert step(result, "fill_holes")["kept"]
    assert ["fill_holes", 0] in result["classes"]["obj"]["morphology"]
    assert not step(result, "closing")["kept"]  # nothing left to improve once the holes are filled
    assert result["cv"] == pytest.approx(1.0)


def test_lower_is_better_metric_picks_the_same_params(tmp_path):
    rng = np.random.default_rng(5)
    probs, truths = {}, {}
    for i in range(6):
        t = square(24, *rng.integers(2, 12, 2), 8)
        p = np.clip(cv2.GaussianBlur(t.astype(np.float32), (0, 0), 1.5) + 0.3 * rng.random((24, 24)), 0, 1)
        probs[f"i{i}"], truths[f"i{i}"] = p[None].astype(np.float32), t[None]
    source = make_source(tmp_path, probs, truths)
    dice = resolve_metric("dice")
    loss = CompetitionMetric("1-dice", lambda p, t: 1 - dice.per_image(p, t), False,
                             from_counts=lambda c: 1 - dice.from_counts(c))
    a = tune(source, ["obj"], dice, TuneConfig(**SMALL)).record
    b = tune(source, ["obj"], loss, TuneConfig(**SMALL)).record
    assert a["classes"] == b["classes"]
    assert b["cv"] == pytest.approx(1 - a["cv"]) and b["cv"] < b["cv_baseline"]


# ------------------------------------------------------------------------------------------ fast paths are exact


def noisy_source(tmp_path, n=6, size=28, classes=("a", "b"), seed=2):
    rng = np.random.default_rng(seed)
    probs, truths = {}, {}
    for i in range(n):
        t = np.zeros((len(classes), size, size), np.uint8)
        for k in range(len(classes)):
            for _ in range(rng.integers(0, 4)):
                cv2.circle(t[k], tuple(int(v) for v in rng.integers(0, size, 2)), int(rng.integers(1, 6)), 1, -1)
        p = np.stack([cv2.GaussianBlur(m.astype(np.float32), (0, 0), 1.2) for m in t])
        p = np.clip(p + 0.5 * rng.random(p.shape) ** 3, 0, 1).astype(np.float32)
        probs[f"i{i}"], truths[f"i{i}"] = p, t
    return make_source(tmp_path, probs, truths, classes)


@pytest.mark.parametrize("name", ["dice", "tgs", "object_ap"])
def test_tables_match_postprocess_and_metric(tmp_path, name):
    source = noisy_source(tmp_path)
    metric = resolve_metric(name)
    assert (metric.stats is None) == (name == "object_ap") and metric.objects == (name == "object_ap")
    th, mins = [0.3, 0.5, 0.7], [0, 3, 12]
    tables = summarize(source, metric, th, mins)
    fn = get_metric(name)
    for j, t in enumerate(th):
        for m, a in enumerate(mins):
            params = ClassParams(threshold=t, min_area=a)
            want = [[fn(apply_class(p[k], params)[None].astype(bool), truth[k][None]) for k in range(2)]
                    for _, p, truth in source]
            assert np.allclose(tables.score[:, :, j, m], want), (t, a)
    cands = [[ClassParams(threshold=0.4, morphology=(("closing", 1),), min_area=5, keep_largest=True),
              ClassParams(threshold=0.4, empty_top=0.7, empty_pixels=5, morphology=(("fill_holes", 0),))]] * 2
    got = score_params(source, metric, cands)
    want = [[[fn(apply_class(p[k], c)[None].astype(bool), truth[k][None]) for c in cands[k]] for k in range(2)]
            for _, p, truth in source]
    assert np.allclose(got, want)


def test_object_overlaps_match_metric_object_ap():
    rng = np.random.default_rng(7)
    fn = get_metric("object_ap")
    for _ in range(20):
        truth = (cv2.GaussianBlur(rng.random((30, 30)).astype(np.float32), (0, 0), 1.5) > 0.55)
        pred = (cv2.GaussianBlur(rng.random((30, 30)).astype(np.float32), (0, 0), 1.5) > 0.52)
        pred |= truth & (rng.random((30, 30)) < 0.9)
        image = Staged(pred.astype(np.uint8), truth, ObjectOverlaps)
        for params in (ClassParams(), ClassParams(min_area=6), ClassParams(keep_largest=True)):
            want = fn(apply_class(pred.astype(np.uint8), params)[None].astype(bool), truth[None])
            assert image.object_score(params) == pytest.approx(want)
        assert ObjectOverlaps(np.zeros((4, 4), bool)).score(None, np.array([16]), np.array([False])) == 1.0


def test_steps_cv_equals_exact_final_cv(tmp_path):
    result = tune(noisy_source(tmp_path, classes=("a",)), ["a"], resolve_metric("tgs"), TuneConfig(**SMALL)).record
    assert result["steps"][-1]["cv"] == pytest.approx(result["cv"], abs=1e-12)
    assert result["steps"][0]["cv"] == pytest.approx(result["cv_baseline"], abs=1e-12)
    assert result["cv"] >= result["cv_baseline"]


# ------------------------------------------------------------------------------------------------- the stage


def fake_ensemble(cfg, quality=1.5, seed=0, folds_for=None):
    """Ensemble OOF/test stores (and optionally one model's fold OOF stores) from blurred, noisy truth masks."""
    from segkit.data import Competition

    comp = Competition(cfg.data, seed=cfg.seed)
    rng = np.random.default_rng(seed)

    def noisy(mask):
        p = np.stack([cv2.GaussianBlur(m.astype(np.float32), (0, 0), quality) for m in mask])
        return np.clip(0.9 * p + 0.35 * rng.random(p.shape), 0, 1).astype(np.float32)

    writer = ProbWriter(cfg.run_dir / "ensemble" / "oof", cfg.data.classes)
    for i in comp.train_ids:
        writer.write(i, noisy(comp.read_mask(i)))
    writer.finish(comp.train_ids)
    writer = ProbWriter(cfg.run_dir / "ensemble" / "test", cfg.data.classes)
    for i in comp.test_ids:
        h, w = comp.image_size(i, "test")
        blobs = [cv2.GaussianBlur(rng.random((h, w)).astype(np.float32), (0, 0), 2) > 0.55 for _ in cfg.data.classes]
        writer.write(i, noisy(np.stack(blobs)))
    writer.finish(comp.test_ids)
    if folds_for:
        import pandas as pd

        ids = comp.train_ids
        fold_of = {}
        for k in range(cfg.folds.n_splits):
            part = ids[k::cfg.folds.n_splits]
            fold_of.update({i: k for i in part})
            writer = ProbWriter(cfg.run_dir / folds_for / f"fold{k}" / "oof", cfg.data.classes)
            for i in part:
                writer.write(i, noisy(comp.read_mask(i)))
            writer.finish(part)
        cfg.folds_file.parent.mkdir(parents=True, exist_ok=True)
        pd.DataFrame({"id": ids, "fold": [fold_of[i] for i in ids]}).to_csv(cfg.folds_file, index=False)
    return comp


def test_tune_stage_writes_json_plots_and_skips_when_current(demo_cfg, capsys):
    from segkit.stages import tune as stage
    cfg = demo_cfg("tune.morph_radii=[1]")
    with pytest.raises(SegkitError, match="ensemble OOF"):
        stage.run(cfg)
    fake_ensemble(cfg, folds_for=cfg.models[0].name)
    assert stage.run(cfg) == 0
    result = json.loads((cfg.run_dir / "tune.json").read_text())
    assert set(result["classes"]) == {"object"} and result["metric"] == "dice"
    assert result["cv"] >= result["cv_baseline"] - 1e-12
    assert result["cv_nested"] is not None and set(result["nested"]) == {"0", "1", "2"}  # the demo's 3 folds
    assert "nested" in capsys.readouterr().out
    scores = pd.read_csv(cfg.run_dir / "tune" / "oof_scores.csv")
    assert scores["nested"].mean() == pytest.approx(result["cv_nested"])
    assert [s["step"] for s in result["steps"]][:4] == ["baseline", "threshold", "min_area", "empty_rule"]
    assert result["baseline"]["plain_pipeline"] is not None and result["baseline"]["plain_model"] == "unet_r18"
    for name in ("threshold_object.png", "min_area_object.png", "oof_scores.csv"):
        assert (cfg.run_dir / "tune" / name).stat().st_size > 0
    assert (cfg.run_dir / "tune" / "threshold_object.png").read_bytes()[:4] == b"\x89PNG"
    capsys.readouterr()
    assert stage.run(cfg) == 0
    assert "up to date" in capsys.readouterr().out
    cfg2 = demo_cfg("tune.morph_radii=[1]", "tune.min_gain=0.5")  # a changed search is not skipped
    assert stage.run(cfg2) == 0
    result2 = json.loads((cfg.run_dir / "tune.json").read_text())
    assert not any(s.get("kept") for s in result2["steps"][1:])  # nothing gains 0.5


def _noisy_oof(tmp_path, n=18, size=24, seed=3):
    """Blobs with noisy probabilities and specks, so threshold, min area and morphology all have something to
    choose, and different images would choose differently."""
    rng = np.random.default_rng(seed)
    probs, truths = {}, {}
    for i in range(n):
        t = square(size, rng.integers(0, 10), rng.integers(0, 10), rng.integers(4, 12)) if i % 4 else \
            np.zeros((size, size), np.uint8)
        level = rng.uniform(0.4, 0.9)  # how sure the model is of this image's object
        p = np.where(t > 0, level * rng.uniform(0.7, 1.0, (size, size)), rng.uniform(0, 0.75, (size, size)) ** 2)
        probs[f"i{i:02d}"], truths[f"i{i:02d}"] = p[None].astype(np.float32), t[None]
    return make_source(tmp_path, probs, truths), truths


def test_nested_cv_scores_each_fold_with_a_search_on_the_other_folds(tmp_path):
    """cv_nested is exactly: for every fold, tune on the other folds' images alone, score the fold's images with
    that choice; the mean over all images. The submission's parameters still come from every image."""
    source, truths = _noisy_oof(tmp_path)
    folds = [i % 3 for i in range(len(source))]
    tcfg = TuneConfig(**SMALL, min_gain=0.0)
    searched = tune(source, ["obj"], resolve_metric("dice"), tcfg, folds=folds)
    result = searched.record
    assert result["classes"] == tune(source, ["obj"], resolve_metric("dice"), tcfg).record["classes"]
    expected = []
    for f in range(3):
        inner = [i for i, k in zip(source.ids, folds) if k != f]
        outer = [i for i, k in zip(source.ids, folds) if k == f]
        chosen = tune(OOFStream(source.store, source.truth, ids=inner), ["obj"], resolve_metric("dice"), tcfg).record
        params = [ClassParams.from_dict(chosen["classes"]["obj"])]
        scored = final_scores(OOFStream(source.store, source.truth, ids=outer), resolve_metric("dice"), params,
                              False)
        expected += scored["score"].tolist()
        assert result["nested"][str(f)]["summary"]["obj"] == chosen["summary"]["obj"]
    assert result["cv_nested"] == pytest.approx(np.mean(expected), abs=1e-12)
    assert searched.per_image["nested"].shape == (len(source),)


def test_no_nested_estimate_without_folds(tmp_path):
    source, _ = _noisy_oof(tmp_path, n=6)
    searched = tune(source, ["obj"], resolve_metric("dice"), TuneConfig(**SMALL))
    assert searched.record["cv_nested"] is None and "nested" not in searched.per_image
    one_fold = tune(source, ["obj"], resolve_metric("dice"), TuneConfig(**SMALL), folds=[0] * 6).record
    assert one_fold["cv_nested"] is None


def test_threshold_sweep_equals_labelling_each_threshold():
    from segkit.components import components_in
    from segkit.stages.tune.tables import _threshold_sweep

    rng = np.random.default_rng(11)
    q = (rng.random((37, 23)) * 255).astype(np.uint8)  # white noise: thousands of merges and tiny components
    q[5:15, 5:15] = 250
    truth = (rng.random((37, 23)) < 0.3).view(np.uint8)
    cuts, mins = np.array([230, 200, 127, 60, 0]), np.array([0, 2, 5, 40])
    pp, tp = _threshold_sweep(q, truth, cuts, mins)
    for j, cut in enumerate(cuts):
        _, _, areas, inters = components_in((q > cut).view(np.uint8), truth)
        for m, a in enumerate(mins):
            keep = areas >= max(a, 1)
            keep[0] = False
            assert (pp[j, m], tp[j, m]) == (areas[keep].sum(), inters[keep].sum())
