"""The pipeline's one binarisation rule, p > t (segkit.threshold), and every stage that binarises keeping it: the
threshold sweeps through the metrics' p >= t functions, training validation, majority voting, pseudo labels and
post-processing. Thresholds that fall exactly on a stored level (0.2 = 51/255) are where a second rule would show."""

import numpy as np
import pytest
import torch

from segkit.artifacts.probs import dequantize
from segkit.metrics import get_metric
from segkit.postprocess.masks import ClassParams, apply_class
from segkit.threshold import binarize, count_above, sweep_level, uint8_cut

ON_LEVELS = [0.0, 0.2, 0.4, 0.5, 0.6, 0.8, 51 / 255, 0.35, 0.999]


def test_binarize_is_strictly_above_the_threshold():
    q = np.array([[50, 51, 52]], np.uint8)
    assert binarize(q, 0.2).tolist() == [[0, 0, 1]]  # 51/255 is 0.2: not above it
    p = np.array([[0.2, np.nextafter(np.float32(0.2), np.float32(1))]], np.float32)
    assert binarize(p, 0.2).tolist() == [[0, 1]]
    assert binarize(np.array([[[127]], [[128]]], np.uint8)).ravel().tolist() == [0, 1]  # the 0.5 yardstick
    per_class = binarize(np.array([[[60]], [[60]]], np.uint8), [0.2, 0.3])  # one threshold per class
    assert per_class.ravel().tolist() == [1, 0]
    assert count_above(q, 0.2) == 1 and uint8_cut(0.2) == 51


@pytest.mark.parametrize("t", ON_LEVELS)
def test_the_sweep_level_makes_the_metrics_rule_the_pipelines(t):
    q = np.arange(256, dtype=np.uint8)
    assert np.array_equal(dequantize(q) >= np.float32(sweep_level(t)), binarize(q, t).view(bool)), t


def test_score_above_scores_the_masks_binarize_makes():
    rng = np.random.default_rng(0)
    probs = [rng.integers(40, 220, (1, 9, 9), dtype=np.uint8) for _ in range(6)]
    probs[0][0, :3] = 51  # many pixels exactly on the 0.2 level
    truths = [rng.random((1, 9, 9)) < 0.5 for _ in range(6)]
    for name in ("dice", "tgs", "object_ap"):
        metric = get_metric(name)
        swept = metric.score_above(probs, truths, ON_LEVELS)
        for j, t in enumerate(ON_LEVELS):
            want = [metric(binarize(p, t).view(bool), truth) for p, truth in zip(probs, truths)]
            np.testing.assert_allclose(swept[j], want, err_msg=f"{name} {t}")


def test_post_processing_uses_the_rule():
    q = np.full((4, 4), 51, np.uint8)
    assert not apply_class(q, ClassParams(threshold=0.2)).any() and apply_class(q, ClassParams(threshold=0.19)).all()


def test_majority_vote_binarises_each_model_by_the_rule():
    from segkit.config.schema import EnsembleConfig
    from segkit.ensemble.base import METHODS, Setup

    setup = Setup(models=["a", "b", "c"], classes=["fg"], mode="binary", folds=[0], metric=get_metric("dice"),
                  options=EnsembleConfig())
    vote = METHODS.get("vote")(setup)
    vote.thresholds = {None: np.array([[0.2], [0.2], [0.19]])}
    q = np.full((1, 2, 2), 51, np.uint8)  # p = 0.2 exactly
    assert (vote.combine([q, q, q], "x", None) == 85).all()  # only the third model (t = 0.19) votes for it


def test_pseudo_labels_use_the_rule():
    from segkit.stages import pseudo
    from segkit.threshold import below

    q = np.array([[[50, 51, 52]]], np.uint8)
    assert pseudo.binarize(q, 0.2).tolist() == [[[0, 0, 255]]]
    # the confidence band too: 204 is 0.8 exactly, neither above 0.8 nor below it (float32 says it is above)
    band = np.array([[[50, 51, 203, 204, 205]]], np.uint8)
    assert below(band, 0.2).ravel().tolist() == [True, False, False, False, False]
    assert pseudo.confident_share(band, 0.2, 0.8) == pytest.approx(2 / 5)


def test_weighted_mean_fits_on_the_output_as_it_will_be_stored():
    from segkit.artifacts.probs import quantize
    from segkit.ensemble.averaging import sample_score, weighted_mean
    from segkit.ensemble.base import SampleImage

    rng = np.random.default_rng(3)
    metric = get_metric("dice")
    images = [SampleImage(f"i{n}", 0, [rng.integers(0, 256, (1, 16, 16), dtype=np.uint8) for _ in range(3)],
                          (rng.random((1, 16, 16)) < 0.5).astype(np.uint8)) for n in range(8)]
    for w in (np.array([0.3, 0.3, 0.4]), np.array([0.15, 0.625, 0.225]), np.array([1 / 3] * 3)):
        stored = [binarize(quantize(weighted_mean(w, s.probs))).view(bool) for s in images]
        assert sample_score(metric, images, w) == pytest.approx(metric.gain(stored, [s.truth for s in images]))


def test_validation_uses_the_rule(demo_cfg, one_torch_thread):
    """A network whose every logit is 0 predicts p = 0.5 exactly: at threshold 0.5 nothing is above it, so every
    image is predicted empty, and Dice is 1 on the empty images and 0 on the others."""
    from segkit.compute.distributed import World
    from segkit.data import Competition
    from segkit.metrics import get_metric as metric_of
    from segkit.stages.train.data import val_loader
    from segkit.stages.train.validate import evaluate

    class Zero(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(()))

        def forward(self, x):
            return x[:, :1] * 0 + self.w

    cfg = demo_cfg("train.batch_size=4")
    comp = Competition(cfg.data, seed=cfg.seed)
    ids = comp.train_ids[:8]
    scores = evaluate(Zero(), val_loader(comp, cfg.train, ids, World()), None, "binary", metric_of("dice"),
                      torch.device("cpu"), threshold=0.5)
    empty = np.mean([not comp.read_mask(i).any() for i in ids])
    assert 0 < empty < 1 and scores["dice"] == pytest.approx(empty) and scores["score"] == pytest.approx(empty)
