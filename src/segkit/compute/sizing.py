"""How much work to hand the hardware at hand: DataLoader workers from the cores, prediction batches from the GPU's
free memory. A config's ``auto`` is resolved here, once, by the stage that knows its device; a number is kept.

- ``loader_workers("auto", device)``: on a GPU, the cores this rank may use minus two (the training process and
  the GPU's feeding thread keep one each), at most 16; on the CPU 0, because there the network's own threads use
  every core and a worker process decoding beside them only takes cores from it.
- ``prediction_batch("auto", forward, shape_of, device)``: on a GPU, measured: the memory one and two images take
  through the real forward (TTA views and all checkpoints included) gives a per-image cost and a fixed cost, and
  the batch is what fits 70 % of the free memory, at most 256; on the CPU ``CPU_BATCH``. Batch size never changes
  what is predicted, so it is no part of a store's identity.
"""

from __future__ import annotations

import os
from typing import Callable, Sequence, Union

import torch

CPU_BATCH = 8
MAX_WORKERS = 16
MAX_BATCH = 256
HEADROOM = 0.7  # of the free memory: the allocator's fragmentation and the copies back need the rest

Setting = Union[int, str]


def usable_cores() -> int:
    """Cores this process may run on (the affinity mask of a container or a job scheduler, not the machine's)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def loader_workers(setting: Setting, device: torch.device) -> int:
    """DataLoader worker processes for ``setting`` (a number, or ``auto``) on ``device``."""
    if setting != "auto":
        return int(setting)
    if device.type != "cuda":
        return 0
    # torchrun starts one process per GPU of the node: they share the node's cores
    ranks_here = int(os.environ.get("LOCAL_WORLD_SIZE", 1))
    return max(0, min(usable_cores() // max(ranks_here, 1) - 2, MAX_WORKERS))


def batch_from_memory(free: int, one: int, two: int, cap: int = MAX_BATCH) -> int:
    """The batch that fits ``HEADROOM`` of ``free`` bytes, given the peak bytes a batch of one and of two took."""
    per_image = max(two - one, 1)
    fixed = max(one - per_image, 0)
    return int(max(1, min(cap, (free * HEADROOM - fixed) // per_image)))


def prediction_batch(setting: Setting, forward: Callable[[torch.Tensor], torch.Tensor],
                     shape_of: Callable[[], Sequence[int]], device: torch.device, key: str = "predict.batch_size"
                     ) -> int:
    """Images per forward call for ``setting``; ``auto`` on a GPU measures ``forward`` on zeros of ``shape_of()``
    (C, H, W: the largest input it will see; asked for only then, since finding it reads every image's header) and
    prints the choice."""
    if setting != "auto":
        return int(setting)
    if device.type != "cuda":
        return CPU_BATCH
    shape = tuple(shape_of())
    peaks = []
    with torch.inference_mode():
        for n in (1, 2):
            torch.cuda.synchronize(device)
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
            base = torch.cuda.memory_allocated(device)
            forward(torch.zeros((n, *shape), device=device))
            torch.cuda.synchronize(device)
            peaks.append(torch.cuda.max_memory_allocated(device) - base)
    free, _ = torch.cuda.mem_get_info(device)
    batch = batch_from_memory(free, *peaks)
    print(f"{key} auto: {batch} ({free / 2**30:.1f} GiB free on {device}, {(peaks[1] - peaks[0]) / 2**20:.0f} MiB "
          f"per {shape[-2]}x{shape[-1]} image)", flush=True)
    return batch
