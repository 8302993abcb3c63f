"""One writer per experiment: a lock on its run folder for the length of a command.

Two commands writing one experiment at once (two terminals, a relaunch while the first still runs) would
interleave their stamps and stores; the units of work protect against kills, not against a second writer. So a
command that writes an experiment takes ``runs/<experiment>/lock.json`` first:

- the file is created exclusively (``O_CREAT | O_EXCL``), holding the holder's PID, host, start time, command and
  launch; a second command finds it and stops at once, naming them, before it reads or writes anything;
- a lock whose process is gone (same host, no such PID, or a PID reused by a later process) is taken over with a
  line saying so: a killed command never blocks the next. A lock held from another host cannot be checked and
  is refused with the file to delete once that command is known to be gone;
- the ranks of one ``torchrun`` launch (the same ``TORCHELASTIC_RUN_ID``) share their launch's lock: whichever
  rank creates it owns it and removes it when its command ends;
- within one process the lock is reentrant (a command that runs others on the same experiment holds it once).

Commands that only read (``score``, ``validate-submission``, ``report``, ``package``) take none.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Optional

from segkit.errors import SegkitError

# Locks this process holds: path -> how many times taken (reentrant).
_HELD: dict[Path, int] = {}


class LockedError(SegkitError):
    """Another command is writing the experiment."""


def _launch() -> Optional[str]:
    """The torchrun launch this process belongs to (its ranks share a lock), or None."""
    return os.environ.get("TORCHELASTIC_RUN_ID") or None


def _process_start(pid: int) -> Optional[str]:
    """When process ``pid`` started, in clock ticks since boot (Linux), to tell a reused PID from the holder."""
    try:
        with open(f"/proc/{pid}/stat") as f:  # a process's facts, not an artifact
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _alive(holder: dict) -> bool:
    pid = int(holder.get("pid", -1))
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: it exists
        pass
    started = holder.get("process_start")
    return started is None or _process_start(pid) in (None, started)


class ExperimentLock:
    """``with ExperimentLock(path, command): ...`` holds ``path`` (the experiment's lock file) for the block."""

    def __init__(self, path: Path, command: str = ""):
        self.path = Path(path)
        self.command = command or " ".join(sys.argv)
        self.owned = False
        self.made: list[Path] = []

    def _record(self) -> dict:
        pid = os.getpid()
        return {"pid": pid, "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S %z"),
                "command": self.command, "launch": _launch(), "process_start": _process_start(pid)}

    def _holder(self) -> Optional[dict]:
        try:
            record = json.loads(self.path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {}  # being written this instant, or damaged: treated as a holder we cannot identify
        return record if isinstance(record, dict) else {}

    def _create(self) -> bool:
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        except OSError as err:
            raise SegkitError(f"cannot write {self.path}: {err.strerror or err}") from None
        with os.fdopen(fd, "w") as f:
            json.dump(self._record(), f, indent=1)
        return True

    def acquire(self) -> "ExperimentLock":
        key = self.path.resolve()
        if key in _HELD:
            _HELD[key] += 1
            return self
        # Folders made only to hold the lock go again with it when the command wrote nothing (a config error).
        self.made = [d for d in (self.path.parent, *self.path.parent.parents) if not d.exists()]
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise SegkitError(f"cannot write {self.path}: {err.strerror or err}") from None
        for _ in range(50):  # a few rounds: another process may take over or release between two looks
            if self._create():
                self.owned = True
                break
            holder = self._holder()
            if holder is None:
                continue  # released between the two looks
            if not holder:
                time.sleep(0.05)  # written this instant: look again
                if self._holder() == {}:
                    raise LockedError(f"{self.path}: unreadable lock; if no segkit command is writing this "
                                      f"experiment, delete it")
                continue
            if _launch() is not None and holder.get("launch") == _launch():
                break  # a rank of the same torchrun launch holds it for us all
            if holder.get("host") == socket.gethostname() and not _alive(holder):
                print(f"lock: taking over {self.path}: its holder (PID {holder.get('pid')}, started "
                      f"{holder.get('started')}) is gone", flush=True)
                self.path.unlink(missing_ok=True)
                continue
            where = "" if holder.get("host") == socket.gethostname() else \
                f"; it cannot be checked from here: once that command is gone, delete {self.path}"
            raise LockedError(f"{self.path.parent}: another segkit command is writing this experiment: PID "
                              f"{holder.get('pid')} on {holder.get('host')}, started {holder.get('started')} "
                              f"({holder.get('command')}){where}")
        else:
            raise LockedError(f"{self.path}: could not take the lock")
        _HELD[key] = 1
        return self

    def release(self) -> None:
        key = self.path.resolve()
        if key not in _HELD:
            return
        _HELD[key] -= 1
        if _HELD[key]:
            return
        del _HELD[key]
        if self.owned and (self._holder() or {}).get("pid") == os.getpid():
            self.path.unlink(missing_ok=True)
            for folder in self.made:  # deepest first
                try:
                    folder.rmdir()
                except OSError:
                    break  # holds what the command wrote
        self.owned = False

    def __enter__(self) -> "ExperimentLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


__all__ = ["ExperimentLock", "LockedError"]
