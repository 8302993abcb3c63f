"""segkit.compute.device: the float32 depthwise convolutions of bf16 training on the CPU."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from segkit.compute.device import depthwise_float32_when_training


def _net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),               # dense: stays bf16
        nn.Conv2d(8, 8, 5, padding=2, groups=8),     # depthwise: float32 when training
        nn.Conv2d(8, 8, 3, padding=1, groups=2),     # grouped but not depthwise: stays bf16
        nn.Conv2d(8, 1, 1),
    )


def _dtypes(net: nn.Module, x: torch.Tensor) -> list[torch.dtype]:
    seen = []
    hooks = [m.register_forward_hook(lambda m, i, o: seen.append(o.dtype)) for m in net]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        net(x)
    for h in hooks:
        h.remove()
    return seen


def test_only_depthwise_convolutions_switch_and_only_when_gradients_are_recorded():
    net = _net()
    assert depthwise_float32_when_training(net) == 1
    x = torch.randn(2, 3, 16, 16)
    assert _dtypes(net, x) == [torch.bfloat16, torch.float32, torch.bfloat16, torch.bfloat16]
    with torch.no_grad():  # validation and prediction keep the faster bf16 forward
        assert _dtypes(net, x) == [torch.bfloat16] * 4


def test_weights_keys_and_gradients_are_those_of_the_plain_network():
    plain, net = _net(), _net()
    depthwise_float32_when_training(net)
    assert list(net.state_dict()) == list(plain.state_dict())
    x = torch.randn(4, 3, 16, 16)
    for model in (plain, net):
        model(x).square().mean().backward()  # no autocast: the switch changes nothing in float32
    for a, b in zip(plain.parameters(), net.parameters()):
        assert torch.equal(a.grad, b.grad)


def test_a_deep_copy_runs_its_own_weights():
    net = _net()
    depthwise_float32_when_training(net)
    twin = copy.deepcopy(net)  # what EMA does
    with torch.no_grad():
        twin[1].weight.zero_()
    assert twin[1].forward.__self__ is twin[1]
    x = torch.randn(1, 3, 8, 8)
    assert not torch.equal(twin(x), net(x))


def test_auto_precision_follows_the_cpu_and_named_ones_pass_through(monkeypatch, capsys):
    import pytest

    from segkit.compute import device as dev
    from segkit.errors import ConfigError

    cpu = torch.device("cpu")
    assert isinstance(dev.cpu_has_native_bf16(), bool)  # the real probe runs on this machine
    monkeypatch.setattr(dev, "_ANNOUNCED", set())
    monkeypatch.setattr(dev, "cpu_has_native_bf16", lambda: False)
    assert dev.resolve_amp("auto", cpu) == "none"
    assert dev.resolve_amp("AUTO", cpu) == "none"
    assert capsys.readouterr().out.count("train.amp auto: float32 (CPU without native bf16)") == 1  # said once
    monkeypatch.setattr(dev, "cpu_has_native_bf16", lambda: True)
    assert dev.resolve_amp("auto", cpu, "predict.amp") == "bf16"
    assert "predict.amp auto: bf16 (CPU with native bf16)" in capsys.readouterr().out
    for named in ("none", "bf16", "fp16"):
        assert dev.resolve_amp(named, cpu) == named
    with pytest.raises(ConfigError, match="train.amp: unknown precision 'fp8'"):
        dev.resolve_amp("fp8", cpu)


def test_asking_for_a_gpu_that_is_not_there_names_the_key(monkeypatch):
    from segkit.compute.device import resolve_device
    from segkit.errors import ConfigError

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match=r"^device: 'cuda' asked for but no CUDA GPU"):
        resolve_device("cuda")
    with pytest.raises(ConfigError, match=r"^device: 'cuda:1' asked for"):
        resolve_device("cuda:1")


def test_auto_workers_come_from_the_cores_on_a_gpu_and_are_none_on_the_cpu(monkeypatch):
    from segkit.compute.sizing import loader_workers

    monkeypatch.setattr("segkit.compute.sizing.usable_cores", lambda: 16)
    cuda, cpu = torch.device("cuda", 0), torch.device("cpu")
    assert loader_workers("auto", cuda) == 14 and loader_workers("auto", cpu) == 0
    assert loader_workers(3, cpu) == 3 and loader_workers(3, cuda) == 3
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")  # four ranks on the node share its 16 cores
    assert loader_workers("auto", cuda) == 2
    monkeypatch.setattr("segkit.compute.sizing.usable_cores", lambda: 200)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    assert loader_workers("auto", cuda) == 16


def test_auto_prediction_batch_fits_the_free_memory():
    from segkit.compute.sizing import CPU_BATCH, HEADROOM, batch_from_memory, prediction_batch

    mib = 2**20
    # 100 MiB fixed (the networks' weights, cuDNN workspaces) + 10 MiB an image; 1 GiB free
    batch = batch_from_memory(2**30, one=110 * mib, two=120 * mib)
    assert batch == int((2**30 * HEADROOM - 100 * mib) // (10 * mib))
    assert batch_from_memory(2**40, 110 * mib, 120 * mib) == 256  # capped
    assert batch_from_memory(50 * mib, 110 * mib, 120 * mib) == 1  # never below one
    calls = []
    assert prediction_batch("auto", calls.append, lambda: calls.append("shape"), torch.device("cpu")) == CPU_BATCH
    assert prediction_batch(32, calls.append, lambda: calls.append("shape"), torch.device("cpu")) == 32
    assert not calls  # neither the forward nor the shape (every image's header) is needed off a GPU

