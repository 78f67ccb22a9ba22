"""torchrun / DistributedDataParallel helpers (gloo: CPU training).

`torchrun --nproc_per_node N -m l2rec_train.train ...` sets RANK, WORLD_SIZE,
MASTER_ADDR and MASTER_PORT; without them everything runs as one process.
"""

from __future__ import annotations

import datetime
import os

import torch
import torch.distributed as dist


def init() -> bool:
    """Joins the process group when launched by torchrun; True if distributed."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return dist.is_initialized()
    # Long timeout: rank 0 may spend many minutes building a state cache while others wait.
    dist.init_process_group(
        backend=os.environ.get("L2REC_DIST_BACKEND", "gloo"), timeout=datetime.timedelta(hours=4)
    )
    return True


def active() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def barrier() -> None:
    if active():
        dist.barrier()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    if active():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def shutdown() -> None:
    if active():
        dist.destroy_process_group()
