"""Optimizers (groups, decay exclusions, encoder lr) and the shape of every LR schedule's curve."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from segkit.config.schema import ScheduleConfig, TrainConfig
from segkit.errors import ConfigError
from segkit.optim import OPTIMIZERS, SCHEDULES, build_optimizer, build_schedule, cycle_end_epochs, param_groups


class Toy(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4))
        self.decoder = nn.Sequential(nn.Conv2d(4, 1, 1))


def curve(name: str, epochs: int = 10, steps: int = 10, **kw) -> list[float]:
    cfg = TrainConfig(epochs=epochs, lr=1.0, schedule=ScheduleConfig(name=name, min_lr=0.0, **kw))
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = build_schedule(opt, cfg, steps)
    out = []
    for _ in range(epochs * steps):
        out.append(opt.param_groups[0]["lr"])
        sched.step()
    return out


def test_groups_split_encoder_lr_and_skip_decay_on_biases_and_norms():
    groups = {g["name"]: g for g in param_groups(Toy(), lr=1e-3, encoder_lr=1e-4, weight_decay=0.01)}
    assert set(groups) == {"encoder", "encoder_no_decay", "decoder", "decoder_no_decay"}
    assert groups["encoder"]["lr"] == 1e-4 and groups["decoder"]["lr"] == 1e-3
    assert groups["encoder_no_decay"]["weight_decay"] == 0 and groups["decoder"]["weight_decay"] == 0.01
    assert all(p.ndim <= 1 for p in groups["encoder_no_decay"]["params"])  # conv bias, BN weight and bias
    assert len(groups["encoder_no_decay"]["params"]) == 3


@pytest.mark.parametrize("name", OPTIMIZERS.names())
def test_every_optimizer_steps(name):
    model = Toy()
    opt = build_optimizer(model, TrainConfig(optimizer=name, momentum=0.9, nesterov=name == "sgd"))
    before = model.decoder[0].weight.detach().clone()
    model.decoder(model.encoder(torch.randn(2, 1, 8, 8))).mean().backward()
    opt.step()
    assert not torch.equal(before, model.decoder[0].weight)
    with pytest.raises(ConfigError, match="train.optimizer"):
        build_optimizer(model, TrainConfig(optimizer="adamax"))


def test_cosine_falls_monotonically_to_the_floor():
    lr = curve("cosine")
    assert lr[0] == pytest.approx(1.0) and lr[-1] == pytest.approx(0.0, abs=1e-9)
    assert all(a >= b for a, b in zip(lr, lr[1:]))
    assert lr[50] == pytest.approx(0.5, abs=0.02)


def test_warmup_rises_linearly_then_follows_the_curve():
    lr = curve("constant", warmup_epochs=1)
    assert lr[:10] == pytest.approx([(i + 1) / 11 for i in range(10)])
    assert lr[20:] == pytest.approx([1.0] * 80)


def test_cosine_restarts_restart_at_each_cycle():
    lr = curve("cosine_restarts", cycles=2)
    assert lr[0] == lr[50] == pytest.approx(1.0)
    assert lr[49] == pytest.approx(0.0, abs=1e-9) and lr[99] == pytest.approx(0.0, abs=1e-9)
    assert all(a >= b for a, b in zip(lr[:50], lr[1:50]))
    assert cycle_end_epochs(TrainConfig(epochs=10, schedule={"name": "cosine_restarts", "cycles": 2})) == [5, 10]
    assert cycle_end_epochs(TrainConfig(epochs=10, schedule={"name": "cosine"})) == []


def test_onecycle_peaks_at_pct_start():
    lr = curve("onecycle", pct_start=0.3, div_factor=25, final_div_factor=1e4)
    peak = max(range(len(lr)), key=lr.__getitem__)
    assert peak == 29 and lr[peak] == pytest.approx(1.0)
    assert lr[0] == pytest.approx(1 / 25) and lr[-1] == pytest.approx(1 / 25 / 1e4, rel=1e-3)


def test_cyclic_is_triangular_and_ends_each_cycle_low():
    lr = curve("cyclic", cycles=2)
    first = lr[:50]
    top = max(range(50), key=first.__getitem__)
    assert 23 <= top <= 26 and lr[top] == pytest.approx(1.0, abs=0.03)
    assert lr[0] == pytest.approx(0.0) and lr[49] == pytest.approx(0.0) and lr[50] == pytest.approx(0.0)
    rises = [b - a for a, b in zip(first[:top], first[1:top + 1])]
    assert max(rises) == pytest.approx(min(rises), rel=1e-6)  # linear


def test_plateau_cuts_after_patience_and_resumes_its_state():
    cfg = TrainConfig(epochs=10, lr=1.0, schedule={"name": "plateau", "patience": 1, "factor": 0.5, "min_lr": 0.1})
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = build_schedule(opt, cfg, 5, monitor_mode="max")
    seen = []
    for score in (0.5, 0.6) + (0.6,) * 10:
        sched.observe(score)
        seen.append(opt.param_groups[0]["lr"])
    assert seen[:3] == [1.0, 1.0, 1.0] and seen[3] == 0.5 and seen[-1] == pytest.approx(0.1)
    state = sched.state_dict()
    opt2 = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    again = build_schedule(opt2, cfg, 5)
    again.load_state_dict(state)
    assert opt2.param_groups[0]["lr"] == pytest.approx(0.1)


def test_schedule_resumes_from_its_step_count():
    cfg = TrainConfig(epochs=4, lr=1.0, schedule={"name": "cosine", "warmup_epochs": 1})
    a_opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    a = build_schedule(a_opt, cfg, 5)
    for _ in range(7):
        a.step()
    b_opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    b = build_schedule(b_opt, cfg, 5)
    b.load_state_dict(a.state_dict())
    assert b_opt.param_groups[0]["lr"] == a_opt.param_groups[0]["lr"]


def test_encoder_lr_keeps_its_ratio_through_the_schedule():
    cfg = TrainConfig(epochs=2, lr=1e-3, encoder_lr=1e-4, schedule={"name": "cosine", "min_lr": 0})
    opt = build_optimizer(Toy(), cfg)
    sched = build_schedule(opt, cfg, 4)
    for _ in range(3):
        sched.step()
    lrs = sched.lrs()
    assert lrs["encoder"] == pytest.approx(lrs["decoder"] / 10)


def test_registry_names_and_bad_cycles():
    assert {"constant", "cosine", "cosine_restarts", "onecycle", "cyclic", "plateau"} <= set(SCHEDULES.names())
    with pytest.raises(ValueError, match="must divide epochs"):
        TrainConfig(epochs=10, schedule={"name": "cyclic", "cycles": 3})
