"""Shared fixtures: a tiny demo competition generated once per test session, and config builders."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
SHARED = REPO.parent / "shared" / "datasets"


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny tensors run faster on one thread than on two (no OpenMP hand-offs), above all on a shared machine."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory) -> Path:
    """A 24 + 8 image, 32 px binary demo competition."""
    from segkit.data.demo import write_competition

    return write_competition(tmp_path_factory.mktemp("demo"), n_train=24, n_test=8, size=32, seed=1)


@pytest.fixture(scope="session")
def demo_multiclass_root(tmp_path_factory) -> Path:
    from segkit.data.demo import write_competition

    return write_competition(tmp_path_factory.mktemp("demo_mc"), n_train=18, n_test=6, size=32, classes=2, seed=2)


@pytest.fixture
def demo_cfg(demo_root, tmp_path):
    """configs/demo.yaml pointed at the tiny demo, with every output under tmp_path."""
    from segkit.config import load_config

    def make(*overrides: str):
        return load_config(
            CONFIGS / "demo.yaml",
            [f"data.root={demo_root}", f"paths.runs={tmp_path / 'runs'}", f"paths.folds={tmp_path / 'folds'}",
             f"paths.submissions={tmp_path / 'subs'}", *overrides],
        )

    return make
