"""One rank of tests/test_ddp.py, started by torchrun: a segkit command with what this rank did traced to
``$SEGKIT_TEST_TRACE/rank<r>.jsonl`` — the ids of every training batch, every checkpoint it saved, every
probability file and store manifest it wrote — and, when ``SEGKIT_TEST_KILL_AT_EPOCH`` is set, rank 1 killed with
SIGKILL as that epoch begins (after the checkpoints of the epoch before are on disk)."""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

RANK = int(os.environ["RANK"])
LOG = open(Path(os.environ["SEGKIT_TEST_TRACE"]) / f"rank{RANK}.jsonl", "a", buffering=1)


def note(**event) -> None:
    LOG.write(json.dumps(event) + "\n")


def trace() -> None:
    import segkit.stages.train.fold as fold
    from segkit.artifacts import probs
    from segkit.models import checkpoint
    train_epoch, save = fold.train_epoch, checkpoint.save
    finish, write = probs.ProbWriter.finish, probs.ProbWriter.write

    def traced_epoch(stepper, loader, loss_fn, epoch, *args, **kwargs):
        if RANK == 1 and int(os.environ.get("SEGKIT_TEST_KILL_AT_EPOCH", 0)) == epoch:
            note(event="killed", epoch=epoch)
            os.kill(os.getpid(), signal.SIGKILL)

        class Traced:
            def __len__(self):
                return len(loader)

            def __iter__(self):
                for batch in loader:
                    note(event="batch", where=stepper.where, epoch=epoch, ids=list(batch["id"]))
                    yield batch

        return train_epoch(stepper, Traced(), loss_fn, epoch, *args, **kwargs)

    def traced_save(path, payload):
        note(event="checkpoint", path=str(path), epoch=payload.get("epoch"))
        return save(path, payload)

    def traced_finish(self, ids):
        note(event="manifest", folder=str(self.folder))
        return finish(self, ids)

    def traced_write(self, image_id, p):
        note(event="write", folder=str(self.folder), id=image_id)
        return write(self, image_id, p)

    fold.train_epoch, checkpoint.save = traced_epoch, traced_save
    probs.ProbWriter.finish, probs.ProbWriter.write = traced_finish, traced_write


if __name__ == "__main__":
    trace()
    from segkit.cli import main

    sys.exit(main(sys.argv[1:]))
