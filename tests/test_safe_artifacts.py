"""Files from someone else are data, not code: a checkpoint or a probability store whose unpickling would run code
is refused, naming the file, and the code never runs; a checkpoint of an older segkit loads only when its owner
opts in."""

import pickle
import random

import numpy as np
import pytest
import torch

from segkit.artifacts.probs import ProbStore, ProbWriter
from segkit.errors import DataError, SegkitError
from segkit.models import checkpoint
from segkit.stages.train.seeding import rng_state, set_rng_state


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


@pytest.mark.parametrize("bad", ["../../x", "/etc/passwd", "a/b", ".hidden", "a\0b", "..\\x"])
def test_an_id_that_is_not_a_plain_file_name_is_refused(bad, tmp_path):
    from segkit.artifacts.layout import check_id

    with pytest.raises(DataError, match=r"sample_submission\.csv row 5: id .* is not a plain file name"):
        check_id(bad, "sample_submission.csv row 5")
    with pytest.raises(DataError, match="not a plain file name"):
        ProbWriter(tmp_path / "store", ["fg"]).write(bad, np.zeros((1, 2, 2), np.uint8))
    assert not list(tmp_path.rglob("*.npy"))


def test_csv_ids_pointing_outside_are_refused_naming_the_row(demo_root, demo_cfg, tmp_path, capsys):
    """A sample submission and a fold file whose ids climb out of the folders: `segkit check` / `folds` exit 2
    with the file and row named, and write nothing."""
    import shutil

    import pandas as pd

    from segkit.cli import main

    root = tmp_path / "comp"
    shutil.copytree(demo_root, root)
    sample = pd.read_csv(root / "sample_submission.csv", dtype=str, keep_default_na=False)
    sample.loc[2, sample.columns[0]] = "../../../etc/passwd"
    sample.to_csv(root / "sample_submission.csv", index=False)
    cfg = demo_cfg(f"data.root={root}")
    overrides = [f"data.root={root}", f"paths.runs={tmp_path / 'runs'}", f"paths.folds={tmp_path / 'folds'}",
                 f"paths.submissions={tmp_path / 'subs'}"]
    assert main(["check", "--config", "configs/demo.yaml", *overrides]) == 2
    err = capsys.readouterr().err
    assert "sample_submission.csv row 4: id '../../../etc/passwd' is not a plain file name" in err
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").rglob("*.json"))
    folds_file = cfg.layout.folds_file
    folds_file.parent.mkdir(parents=True, exist_ok=True)
    folds_file.write_text("id,fold\n/abs/path,0\n")
    from segkit.data.folds import load_folds

    with pytest.raises(DataError, match=r"row 2: id '/abs/path' is not a plain file name"):
        load_folds(cfg)


def _png_header(path, width, height):
    """A PNG that declares width x height gray pixels and holds none: a few dozen bytes."""
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) +
                     chunk(b"IEND", b""))
    return path


def test_a_decompression_bomb_is_refused_from_its_header(tmp_path):
    import resource

    from segkit.data import imageio

    bomb = _png_header(tmp_path / "bomb.png", 50_000, 50_000)  # 2.5 gigapixels declared
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(DataError, match=r"bomb\.png: refused: the header declares more than"):
        imageio.read_image(bomb, 1)
    with pytest.raises(DataError, match=r"bomb\.png: refused"):
        imageio.image_size(bomb)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 200_000  # kB: nothing was allocated
