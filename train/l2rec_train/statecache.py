"""Cached hidden states at the input of the lowest adapted layer.

The backbone is frozen and LoRA only touches layers >= L0 = min(lora.layers),
so the residual stream entering layer L0 depends on the prompt alone, never on
the user's gate or on training. Computing layers [0, L0) once per prompt and
reading the result back every epoch is therefore an exact speedup: each epoch
runs only layers [L0, n_layer). With experts on the top 4 of 18 layers that
is about 4x less forward work and no backward through the lower layers.

A store is a directory under the work dir named by a hash of everything the
states depend on (backbone sha256, L0, the prompts' token ids):

    states.f32    [total_tokens, d] float32, prompts concatenated (np.memmap)
    index.npz     offsets [P+1]
    complete      written last; a store without it is rebuilt

Under torchrun every rank computes its share of prompts into the same file.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from . import distributed as dist_util
from . import paths
from .backbone import Backbone


def store_key(backbone_sha: str, layer: int, prompts: list[np.ndarray]) -> str:
    h = hashlib.sha256(f"{backbone_sha}|{layer}|{len(prompts)}|".encode())
    for p in prompts:
        h.update(np.int32(len(p)).tobytes())
        h.update(np.ascontiguousarray(p, dtype=np.int32).tobytes())
    return h.hexdigest()[:24]


def batches_by_length(lengths: np.ndarray, max_tokens: int) -> list[np.ndarray]:
    """Indices grouped so each padded batch holds about max_tokens tokens (sorted by length)."""
    order = np.argsort(-lengths, kind="stable")
    out, cur = [], []
    for i in order:
        if cur and (len(cur) + 1) * lengths[cur[0]] > max_tokens:
            out.append(np.array(cur))
            cur = []
        cur.append(int(i))
    if cur:
        out.append(np.array(cur))
    return out


def pad(prompts: list[np.ndarray], value: int = 0) -> torch.Tensor:
    T = max(len(p) for p in prompts)
    out = np.full((len(prompts), T), value, dtype=np.int64)
    for i, p in enumerate(prompts):
        out[i, : len(p)] = p
    return torch.from_numpy(out)


class StateStore:
    def __init__(self, directory: Path, offsets: np.ndarray, d: int):
        self.directory, self.offsets, self.d = directory, offsets, d
        self.states = np.memmap(
            directory / "states.f32", dtype=np.float32, mode="r", shape=(int(offsets[-1]), d)
        )

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def length(self, i: int) -> int:
        return int(self.offsets[i + 1] - self.offsets[i])

    def get(self, i: int) -> np.ndarray:
        return self.states[self.offsets[i] : self.offsets[i + 1]]

    def batch(self, indices: list[int]) -> torch.Tensor:
        """Right-padded [B, T, d] states of the given prompts."""
        T = max(self.length(i) for i in indices)
        out = torch.zeros(len(indices), T, self.d)
        for b, i in enumerate(indices):
            out[b, : self.length(i)] = torch.from_numpy(np.array(self.get(i)))
        return out

    @staticmethod
    def open_or_build(
        backbone: Backbone,
        layer: int,
        prompts: list[np.ndarray],
        name: str,
        max_tokens: int = 4096,
        root: Path | None = None,
    ) -> StateStore:
        """The store of `prompts`' states entering `layer`; built (by all ranks) if missing."""
        d = backbone.config.n_embd
        key = store_key(backbone.sha256, layer, prompts)
        directory = (root or paths.work_dir() / "states") / f"{name}-L{layer}-{key}"
        offsets = np.concatenate([[0], np.cumsum([len(p) for p in prompts])]).astype(np.int64)
        if not (directory / "complete").exists():
            _build(backbone, layer, prompts, directory, offsets, d, max_tokens, name)
        return StateStore(directory, offsets, d)


def _build(backbone, layer, prompts, directory, offsets, d, max_tokens, name) -> None:
    rank, world = dist_util.rank(), dist_util.world_size()
    if rank == 0:
        if directory.exists():
            shutil.rmtree(directory)
        directory.mkdir(parents=True)
        np.savez(directory / "index.npz", offsets=offsets)
        np.memmap(
            directory / "states.f32", dtype=np.float32, mode="w+", shape=(int(offsets[-1]), d)
        ).flush()
    dist_util.barrier()
    out = np.memmap(
        directory / "states.f32", dtype=np.float32, mode="r+", shape=(int(offsets[-1]), d)
    )
    lengths = np.array([len(p) for p in prompts])
    mine = [b for j, b in enumerate(batches_by_length(lengths, max_tokens)) if j % world == rank]
    total = int(sum(lengths[b].sum() for b in mine))
    with (
        torch.no_grad(),
        tqdm(
            total=total,
            unit="tok",
            desc=f"states {name} L{layer}",
            disable=rank != 0,
            smoothing=0.05,
        ) as bar,
    ):
        for idx in mine:
            tokens = pad([prompts[i] for i in idx])
            h = backbone.run(backbone.embed(tokens), 0, layer).cpu().numpy()
            for b, i in enumerate(idx):
                out[offsets[i] : offsets[i + 1]] = h[b, : lengths[i]]
            bar.update(int(lengths[idx].sum()))
    out.flush()
    del out
    dist_util.barrier()
    if rank == 0:
        (directory / "complete").write_text("ok\n")
    dist_util.barrier()
