"""torchrun / DistributedDataParallel helpers (gloo between CPU processes, NCCL between GPUs).

`torchrun --nproc_per_node N -m l2rec_train.train ...` sets RANK, WORLD_SIZE,
MASTER_ADDR and MASTER_PORT; without them everything runs as one process.
"""

from __future__ import annotations

import datetime
import os

import torch
import torch.distributed as dist


def init(backend: str | None = None) -> bool:
    """Joins the process group when launched by torchrun; True if distributed. `backend`:
    device.backend()'s choice; None is gloo (or L2REC_DIST_BACKEND)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return dist.is_initialized()
    backend = backend or os.environ.get("L2REC_DIST_BACKEND", "gloo")
    # Long timeout: rank 0 may spend many minutes building a state cache while others wait.
    dist.init_process_group(backend=backend, timeout=datetime.timedelta(hours=4))
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
    """Sums a CPU tensor over ranks, in place. NCCL reduces GPU tensors only, so under it
    the sum travels through this rank's GPU."""
    if not active():
        return t
    if dist.get_backend() == "nccl":
        on_gpu = t.cuda()
        dist.all_reduce(on_gpu, op=dist.ReduceOp.SUM)
        t.copy_(on_gpu.cpu())
    else:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def shutdown() -> None:
    if active():
        dist.destroy_process_group()
