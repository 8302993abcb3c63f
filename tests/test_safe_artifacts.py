"""Files from someone else are data, not code: a checkpoint or a probability store whose unpickling would run code
is refused, naming the file, and the code never runs; a checkpoint of an older segkit loads only when its owner
opts in."""

import pickle
import random

import numpy as np
import pytest
import torch

from segkit import checkpoint
from segkit.errors import DataError, SegkitError
from segkit.probs import ProbStore, ProbWriter
from segkit.train.seeding import rng_state, set_rng_state


class Plant:
    """Unpickling this creates a file: what a hostile checkpoint would do with any code it liked."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_checkpoint_that_would_run_code_is_refused(tmp_path, monkeypatch):
    monkeypatch.delenv(checkpoint.TRUST_ENV, raising=False)
    marker = tmp_path / "pwned"
    path = tmp_path / "best.pt"
    torch.save({"format": checkpoint.FORMAT, "model": {}, "payload": Plant(marker)}, path)
    with pytest.raises(SegkitError, match=r"best\.pt: refused: the file holds pickled objects"):
        checkpoint.load(path)
    with pytest.raises(SegkitError, match="SEGKIT_TRUST_CHECKPOINTS"):
        checkpoint.load_model(path)
    assert not marker.exists()


def test_an_old_checkpoint_loads_only_with_the_opt_in(tmp_path, monkeypatch):
    """segkit's checkpoints before version 2 held numpy's RNG state as a pickled tuple."""
    path = tmp_path / "last.pt"
    old = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    torch.save({"format": checkpoint.FORMAT, "version": 1, "train_state": {"rng": old}}, path)
    monkeypatch.delenv(checkpoint.TRUST_ENV, raising=False)
    with pytest.raises(SegkitError, match="refused"):
        checkpoint.load(path)
    monkeypatch.setenv(checkpoint.TRUST_ENV, "1")
    state = checkpoint.load(path)["train_state"]["rng"]
    expected = np.random.random()
    set_rng_state(state)  # the old tuple form still restores exactly
    assert np.random.random() == expected


def test_new_rng_state_is_plain_data_and_restores_exactly(tmp_path, monkeypatch):
    monkeypatch.delenv(checkpoint.TRUST_ENV, raising=False)
    state = rng_state()
    want = (random.random(), np.random.random(), torch.rand(1).item())
    path = tmp_path / "last.pt"
    checkpoint.save(path, {"format": checkpoint.FORMAT, "train_state": {"rng": state}})
    set_rng_state(checkpoint.load(path)["train_state"]["rng"])  # loaded with weights_only=True
    assert (random.random(), np.random.random(), torch.rand(1).item()) == want


def test_a_store_file_that_is_a_pickle_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    writer = ProbWriter(tmp_path / "store", ["fg"])
    writer.write("a", np.zeros((1, 4, 4), np.uint8))
    store = writer.finish(["a"])
    with open(tmp_path / "store" / "a.npy", "wb") as f:
        pickle.dump(Plant(marker), f)
    with pytest.raises(DataError, match=r"a\.npy: not a probability array"):
        ProbStore(store.folder)["a"]
    assert not marker.exists()
