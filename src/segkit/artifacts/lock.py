"""One writer per experiment: a lock on its run folder for the length of a command.

Two commands writing one experiment at once (two terminals, a relaunch while the first still runs) would
interleave their stamps and stores; the units of work protect against kills, not against a second writer. So a
command that writes an experiment takes ``runs/<experiment>/lock.json`` first:

- the file appears whole or not at all (written beside it, then hard-linked into place, which fails when it
  exists), holding the holder's PID, host, start time, command and launch; a second command finds it and stops at
  once, naming them, before it reads or writes anything;
- a lock whose process is gone (same host, no such PID, or a PID reused by a later process: its start time in
  ``/proc`` differs) is taken over with a line saying so, under a ``flock`` that lets one taker in at a time: a
  killed command never blocks the next, and two next commands never both take it;
- the ranks of one ``torchrun`` launch share their launch's lock (the launch: ``TORCHELASTIC_RUN_ID`` with the
  master's address and port, which no two live launches share): rank 0 takes and releases it; another rank never
  takes one, it only stops where another command holds the experiment (it cannot wait for rank 0: a short command
  may be done and gone before a slow rank looks);
- within one process the lock is reentrant (a command that runs others on the same experiment holds it once).

Commands that write nothing of the experiment's take none: ``score``, ``validate-submission``, ``package`` (it
writes its bundle elsewhere) and ``report``, which writes only its own ``report/`` folder, so that a report can be
made while a long command runs.
"""

from __future__ import annotations

import fcntl
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
    run_id = os.environ.get("TORCHELASTIC_RUN_ID")
    if not run_id:
        return None
    return f"{run_id}@{os.environ.get('MASTER_ADDR', '')}:{os.environ.get('MASTER_PORT', '')}"


def _rank() -> int:
    return int(os.environ.get("RANK", "0") or 0)


def _process_start(pid: int) -> Optional[str]:
    """When process ``pid`` started, in clock ticks since boot (Linux), to tell a reused PID from the holder."""
    try:
        with open(f"/proc/{pid}/stat") as f:  # a process's facts, not an artifact
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _alive(holder: dict) -> bool:
    """Whether the holder's process still runs (only checkable on its own host: elsewhere it counts as alive)."""
    if holder.get("host") != socket.gethostname():
        return True
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


def _cannot(path: Path, err: OSError) -> SegkitError:
    return SegkitError(f"cannot write {path}: {err.strerror or err}")


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
            return {}  # damaged (it is never seen half-written): a holder that cannot be identified
        return record if isinstance(record, dict) else {}

    def _create(self) -> bool:
        """Put this process's record in place, whole, unless a lock is there."""
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}")
        try:
            tmp.write_text(json.dumps(self._record(), indent=1))
            os.link(tmp, self.path)
            return True
        except FileExistsError:
            return False
        except OSError as err:
            raise _cannot(self.path, err) from None
        finally:
            tmp.unlink(missing_ok=True)

    def _take_over(self, dead: dict) -> None:
        """Remove the lock of a holder that is gone, if it is still that holder's: one taker at a time."""
        with open(self.path.with_name(f".{self.path.name}.takeover"), "w") as guard:
            fcntl.flock(guard, fcntl.LOCK_EX)  # released when the file closes, or the process dies
            if self._holder() == dead:
                print(f"lock: taking over {self.path}: its holder (PID {dead.get('pid')}, started "
                      f"{dead.get('started')}) is gone", flush=True)
                self.path.unlink(missing_ok=True)

    def _refuse(self, holder: dict) -> LockedError:
        if not holder:
            return LockedError(f"{self.path}: unreadable lock; if no segkit command is writing this experiment, "
                               f"delete it")
        here = holder.get("host") == socket.gethostname()
        where = "" if here else f"; it cannot be checked from here: once that command is gone, delete {self.path}"
        return LockedError(f"{self.path.parent}: another segkit command is writing this experiment: PID "
                           f"{holder.get('pid')} on {holder.get('host')}, started {holder.get('started')} "
                           f"({holder.get('command')}){where}")

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
            raise _cannot(self.path, err) from None
        launch, leader = _launch(), _launch() is None or _rank() == 0
        while True:
            if leader and self._create():
                self.owned = True
                break
            holder = self._holder()
            if holder is None:
                if leader:
                    continue  # released between the two looks
                break  # not taken yet, or already given back: rank 0 answers for the launch
            if holder and launch is not None and holder.get("launch") == launch and (not leader or _alive(holder)):
                break  # rank 0 of this launch holds it for all its ranks (a dead one's is taken over below)
            if holder and not _alive(holder):
                if not leader:
                    break  # rank 0 takes it over
                self._take_over(holder)
                continue
            raise self._refuse(holder)
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
            self.path.with_name(f".{self.path.name}.takeover").unlink(missing_ok=True)
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
