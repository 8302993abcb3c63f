"""One writer per experiment: a second command on an experiment being written is refused at once, naming the
first, and the first's work is intact; a killed command's lock is taken over; the ranks of one torchrun launch
share a lock; the commands that only read take none."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
from conftest import CONFIGS, REPO

from segkit.artifacts.lock import ExperimentLock, LockedError
from segkit.cli import main

TINY = ("models=[{name: tiny, arch: Unet, encoder: tu-resnet10t, "
        "params: {encoder_depth: 3, decoder_channels: [16, 8, 4]}}]")


def args(demo_root, tmp_path, *extra: str) -> list[str]:
    return ["--config", str(CONFIGS / "demo.yaml"), f"data.root={demo_root}", f"paths.runs={tmp_path / 'runs'}",
            f"paths.folds={tmp_path / 'folds'}", f"paths.submissions={tmp_path / 'subs'}", TINY, "device=cpu",
            "folds.n_splits=2", "train.batch_size=4", "train.progress=false", "train.keep=[best]", *extra]


def start(argv: list[str]) -> subprocess.Popen:
    """A ``segkit`` command in its own process (so it can be killed), one torch thread."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "segkit", *argv], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def wait_for(path, proc: subprocess.Popen, seconds: float = 120) -> dict:
    """The lock's record once the command holds it."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if path.exists():
            try:
                return json.loads(path.read_text())
            except ValueError:
                pass  # being written
        assert proc.poll() is None, proc.stdout.read()
        time.sleep(0.05)
    raise AssertionError(f"{path} never appeared")


@pytest.fixture
def lock_path(demo_root, tmp_path):
    from segkit.config import load_config

    return load_config(CONFIGS / "demo.yaml", args(demo_root, tmp_path)[2:]).layout.lock


def test_a_second_command_is_refused_and_the_first_finishes_intact(demo_root, tmp_path, lock_path, capsys):
    assert main(["folds", *args(demo_root, tmp_path)]) == 0
    first = start(["train", "--fold", "0", *args(demo_root, tmp_path, "train.epochs=40")])
    holder = wait_for(lock_path, first)
    assert holder["pid"] == first.pid and holder["host"] == socket.gethostname() and "train" in holder["command"]
    assert main(["run", *args(demo_root, tmp_path, "train.epochs=1")]) == 2
    err = capsys.readouterr().err
    assert f"PID {first.pid} on {socket.gethostname()}, started {holder['started']}" in err, err
    out, _ = first.communicate(timeout=600)
    assert first.returncode == 0, out
    fold = tmp_path / "runs" / "demo" / "tiny" / "fold0"
    assert (fold / "best.pt").exists() and json.loads((fold / "stamp.json").read_text())["done"]
    assert not lock_path.exists()  # released when the command ended


def test_a_killed_commands_lock_is_taken_over(demo_root, tmp_path, lock_path, capsys):
    assert main(["folds", *args(demo_root, tmp_path)]) == 0
    killed = start(["train", "--fold", "0", *args(demo_root, tmp_path, "train.epochs=40")])
    wait_for(lock_path, killed)
    killed.send_signal(signal.SIGKILL)
    killed.wait(timeout=60)
    assert lock_path.exists()  # a killed process cannot clean up
    assert main(["check", *args(demo_root, tmp_path)]) == 0
    out = capsys.readouterr().out
    assert f"lock: taking over {lock_path}: its holder (PID {killed.pid}" in out and "is gone" in out
    assert not lock_path.exists()


def test_a_pid_reused_by_another_process_does_not_hold_the_lock(tmp_path):
    path = tmp_path / "exp" / "lock.json"
    path.parent.mkdir()
    # our own PID, but a process start that is not ours: the holder that wrote it is gone
    path.write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": "then",
                                "command": "segkit train", "process_start": "1"}))
    with ExperimentLock(path, "segkit check"):
        assert json.loads(path.read_text())["command"] == "segkit check"


def test_ranks_of_one_launch_share_a_lock_and_other_launches_are_refused(tmp_path, monkeypatch):
    from segkit.artifacts import lock as locks

    path = tmp_path / "exp" / "lock.json"
    parent = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        path.parent.mkdir()
        for name, value in (("TORCHELASTIC_RUN_ID", "none"), ("MASTER_ADDR", "127.0.0.1"), ("MASTER_PORT", "29500")):
            monkeypatch.setenv(name, value)
        # rank 0 of this launch (the parent stands in for it) holds the lock
        path.write_text(json.dumps({"pid": parent.pid, "host": socket.gethostname(), "started": "now",
                                    "command": "torchrun ... segkit train", "launch": locks._launch()}))
        monkeypatch.setenv("RANK", "1")
        with ExperimentLock(path, "segkit train") as lock:
            assert not lock.owned
        assert path.exists()  # rank 0 removes it, not this rank
        # another launch: "none" is torchrun's run id whenever it has no rendezvous id; the port tells them apart
        monkeypatch.setenv("MASTER_PORT", "29501")
        with pytest.raises(LockedError, match=f"PID {parent.pid}"):
            ExperimentLock(path, "segkit train").acquire()
    finally:
        parent.kill()
        parent.wait()


def test_a_rank_other_than_0_never_takes_the_lock(tmp_path, monkeypatch):
    path = tmp_path / "exp" / "lock.json"
    path.parent.mkdir()
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "abc")
    monkeypatch.setenv("RANK", "2")
    with ExperimentLock(path) as lock:
        assert not lock.owned and not path.exists()  # rank 0 takes it for the launch
    path.write_text(json.dumps({"pid": os.getppid(), "host": socket.gethostname(), "started": "now",
                                "command": "segkit run", "launch": None}))
    with pytest.raises(LockedError, match="another segkit command is writing"):
        ExperimentLock(path).acquire()  # another command's lock stops every rank


def test_a_lock_from_another_host_is_refused_with_the_file_to_delete(tmp_path):
    path = tmp_path / "exp" / "lock.json"
    path.parent.mkdir()
    path.write_text(json.dumps({"pid": 1, "host": "elsewhere", "started": "now", "command": "segkit run"}))
    with pytest.raises(LockedError, match=r"on elsewhere.*once that command is gone, delete .*lock.json"):
        ExperimentLock(path).acquire()


def test_the_lock_is_reentrant_within_a_process_and_leaves_no_folder_it_made_for_nothing(tmp_path):
    path = tmp_path / "runs" / "exp" / "lock.json"
    with ExperimentLock(path) as outer:
        with ExperimentLock(path):
            assert path.exists()
        assert path.exists() and outer.owned  # the inner release keeps the outer's lock
    assert not path.exists() and not (tmp_path / "runs").exists()


def test_reading_commands_take_no_lock(demo_root, tmp_path, lock_path):
    from segkit.commands import BY_NAME

    assert [n for n in ("report", "package", "score", "validate-submission", "demo-data") if BY_NAME[n].locks] == []
    assert all(BY_NAME[n].locks for n in ("check", "folds", "train", "predict", "ensemble", "pseudo", "tune",
                                          "submit", "evaluate", "run", "ablate", "export", "plan"))
    lock_path.parent.mkdir(parents=True)
    lock_path.write_text(json.dumps({"pid": os.getppid(), "host": socket.gethostname(), "started": "now",
                                     "command": "segkit run"}))
    assert main(["report", *args(demo_root, tmp_path)]) == 0  # reads what there is while another writes
