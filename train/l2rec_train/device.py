"""Where the trainer's tensors live and in what precision: `train.device` and `train.amp`.

    l2rec-train --device cuda --amp bf16 ...          (one GPU)
    torchrun --nproc_per_node 8 -m l2rec_train.train --device cuda ...   (NCCL, a GPU per rank)

The data side (prompts, state caches, splits) stays on the CPU and in numpy; a batch
moves to the model's device where a step reads it (`to`). The backbone's weights and
the model's parameters move once (`place`). Autocast covers training steps only
(`autocast`): evaluation ranks in float32, because bfloat16 scores tie often enough
to move ranks. Under torchrun each rank takes the GPU of its LOCAL_RANK, and the
process group speaks NCCL on CUDA and gloo on the CPU (`backend`).
"""

from __future__ import annotations

import contextlib
import os
import re

import torch

DEVICES = ("cpu", "cuda", "auto")
AMPS = ("off", "bf16")


class DeviceError(RuntimeError):
    """A device or precision this machine or torch build cannot provide, with the fix."""


def check_names(device: str, amp: str) -> None:
    """Config validation: the names alone (whether the machine has them is `resolve`'s)."""
    if not re.fullmatch(r"cpu|auto|cuda(:[0-9]+)?", device):
        raise ValueError(f"train.device must be cpu, cuda, cuda:N or auto, got {device!r}")
    if amp not in AMPS:
        raise ValueError(f"train.amp must be one of {AMPS}, got {amp!r}")


def resolve(device: str) -> torch.device:
    """The torch device for a `train.device` name. "auto" is CUDA when torch sees a GPU,
    else the CPU; "cuda" under torchrun is the GPU of this rank's LOCAL_RANK."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        why = (
            f"torch {torch.__version__} is built for CUDA {torch.version.cuda} but sees no GPU "
            "(no NVIDIA driver, or CUDA_VISIBLE_DEVICES hides them)"
            if torch.version.cuda
            else f"torch {torch.__version__} is a CPU-only build (install a CUDA build of torch)"
        )
        raise DeviceError(f"--device {device}: {why}; or train with --device cpu")
    index = int(device.split(":", 1)[1]) if ":" in device else local_rank()
    if index >= torch.cuda.device_count():
        raise DeviceError(
            f"--device {device}: GPU {index} asked for, {torch.cuda.device_count()} visible "
            "(check CUDA_VISIBLE_DEVICES and --nproc_per_node)"
        )
    torch.cuda.set_device(index)
    return torch.device("cuda", index)


def resolve_or_exit(device: str) -> torch.device:
    """`resolve` for a command line: a DeviceError ends the process with its message."""
    try:
        return resolve(device)
    except DeviceError as e:
        raise SystemExit(f"error: {e}") from None


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def backend(device: torch.device) -> str:
    """The process group's backend: NCCL between GPUs, gloo between CPU processes;
    L2REC_DIST_BACKEND overrides."""
    default = "nccl" if device.type == "cuda" else "gloo"
    return os.environ.get("L2REC_DIST_BACKEND", default)


def autocast(device: torch.device, amp: str):
    """The context a training step runs its forward in: bfloat16 autocast for amp "bf16"
    (CUDA and CPU alike; losses and softmaxes stay float32, as autocast keeps them), else
    nothing."""
    if amp == "off" or device.type not in ("cpu", "cuda"):
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def to(x, device: torch.device):
    """x with every tensor in it (nested tuples, lists, dicts) on `device`; None and
    non-tensors as they are. Host-to-GPU copies are non-blocking from pinned memory only,
    so a plain `.to` is as fast here and never reads a buffer still being filled."""
    if isinstance(x, torch.Tensor):
        return x.to(device)
    if isinstance(x, dict):
        return {k: to(v, device) for k, v in x.items()}
    if isinstance(x, (tuple, list)):
        return type(x)(to(v, device) for v in x)
    return x


def place(model, device: torch.device):
    """Moves the model's parameters and buffers and its frozen backbone's weights to
    `device`; returns the model."""
    model.backbone.to(device)
    return model.to(device)
