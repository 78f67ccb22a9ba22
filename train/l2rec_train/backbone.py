"""The frozen Gemma 3 backbone in PyTorch, computed as llama.cpp computes it.

Follows llama.cpp's `src/models/gemma3.cpp` graph step by step:

    h = tok_embd[tokens] * sqrt(n_embd)
    per layer l:
        x = rms_norm(h) * attn_norm                       (GGUF norms are used as-is:
        q, k, v = x Wq, x Wk, x Wv                         the converter already added
        q = rope(rms_norm_head(q) * q_norm)                Gemma's +1)
        k = rope(rms_norm_head(k) * k_norm)                (NeoX RoPE; local layers use
        a = softmax(q k^T / sqrt(head_dim) + mask) v       base 10000 and a 512-token
        h = h + rms_norm(a Wo) * post_attention_norm       sliding window, every 6th
        y = rms_norm(h) * ffn_norm                         layer is global with the
        h = h + rms_norm((gelu_tanh(y Wg) * (y Wu)) Wd) * post_ffw_norm   GGUF base)
    state = rms_norm(h) * output_norm                      (SPEC step 4: the view state)

Weights are dequantized from the GGUF once (`gguf.quants.dequantize`) and
cached as f32 safetensors in the trainer's work dir. They are plain tensors,
not module buffers, so DDP never broadcasts or checkpoints them.

LoRA: a `lora(layer, module, x)` hook returns the adapter's contribution to
the module's output (or None); `W x + hook(x)` is what llama.cpp computes with
`W x + sum_k scale_k * (alpha / r) * B_k (A_k x)`.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import gguf
import numpy as np
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file

from . import paths

MODULES = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")
_LAYER_TENSORS = MODULES + (
    "attn_norm",
    "attn_q_norm",
    "attn_k_norm",
    "post_attention_norm",
    "ffn_norm",
    "post_ffw_norm",
)

LoraHook = Callable[[int, str, torch.Tensor], torch.Tensor | None]


@dataclass(frozen=True)
class GemmaConfig:
    n_embd: int
    n_layer: int
    n_head: int
    n_head_kv: int
    head_dim: int
    n_ff: int
    eps: float
    rope_base: float
    rope_base_swa: float
    n_swa: int
    swa_layers: tuple[bool, ...]  # True: sliding-window (local) layer

    @property
    def attn_scale(self) -> float:
        # llama.cpp: 1/sqrt(n_embd_head_k) for every Gemma 3 size but 27B
        return 1.0 / math.sqrt(self.head_dim)

    def module_shape(self, module: str) -> tuple[int, int]:
        """(n_in, n_out) of `blk.L.<module>.weight`."""
        d, q, kv, ff = (
            self.n_embd,
            self.n_head * self.head_dim,
            self.n_head_kv * self.head_dim,
            self.n_ff,
        )
        return {
            "attn_q": (d, q),
            "attn_k": (d, kv),
            "attn_v": (d, kv),
            "attn_output": (q, d),
            "ffn_gate": (d, ff),
            "ffn_up": (d, ff),
            "ffn_down": (ff, d),
        }[module]

    @staticmethod
    def from_gguf(reader: gguf.GGUFReader) -> GemmaConfig:
        def kv(key, default=None):
            f = reader.fields.get(key)
            return default if f is None else f.contents()

        arch = kv("general.architecture")
        if arch != "gemma3":
            raise ValueError(f"backbone architecture {arch!r} is not gemma3")
        n_layer = int(kv("gemma3.block_count"))
        n_swa = int(kv("gemma3.attention.sliding_window", 0))
        pattern = kv("gemma3.attention.sliding_window_pattern", 6)
        if isinstance(pattern, list):
            swa = tuple(bool(x) for x in pattern)
        else:  # llama.cpp set_swa_pattern: the last layer of every `pattern` is global
            p = int(pattern)
            swa = tuple(n_swa > 0 and (p == 0 or il % p < p - 1) for il in range(n_layer))
        n_embd = int(kv("gemma3.embedding_length"))
        n_head = int(kv("gemma3.attention.head_count"))
        return GemmaConfig(
            n_embd=n_embd,
            n_layer=n_layer,
            n_head=n_head,
            n_head_kv=int(kv("gemma3.attention.head_count_kv", n_head)),
            head_dim=int(kv("gemma3.attention.key_length", n_embd // n_head)),
            n_ff=int(kv("gemma3.feed_forward_length")),
            eps=float(kv("gemma3.attention.layer_norm_rms_epsilon")),
            rope_base=float(kv("gemma3.rope.freq_base", 10000.0)),
            # llama.cpp's default when the GGUF has no freq_base_swa (the 270M has none)
            rope_base_swa=float(kv("gemma3.rope.freq_base_swa", 10000.0)),
            n_swa=n_swa,
            swa_layers=swa,
        )


def file_sha256(path: Path) -> str:
    """sha256 of a file, memoized in the work dir by (path, size, mtime)."""
    st = path.stat()
    memo = paths.work_dir() / "sha256.json"
    key = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"
    table = json.loads(memo.read_text()) if memo.exists() else {}
    if key not in table:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        table[key] = h.hexdigest()
        tmp = memo.with_suffix(f".{os.getpid()}.tmp")  # per process: DDP ranks may race here
        tmp.write_text(json.dumps(table, indent=1))
        os.replace(tmp, memo)
    return table[key]


def _dequantized_cache(model_path: Path) -> Path:
    """Dequantize every tensor the forward pass needs into f32 safetensors, once per GGUF."""
    sha = file_sha256(model_path)
    out = paths.work_dir() / f"backbone-{sha[:16]}.safetensors"
    if out.exists():
        return out
    reader = gguf.GGUFReader(str(model_path))
    cfg = GemmaConfig.from_gguf(reader)
    tensors = {}
    for t in reader.tensors:
        w = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32, copy=False)
        # numpy order is ggml's reversed: [n_out, n_in], PyTorch's Linear layout
        tensors[t.name] = torch.from_numpy(np.ascontiguousarray(w))
    meta = {"config": json.dumps(asdict(cfg)), "sha256": sha, "source": model_path.name}
    tmp = out.with_suffix(f".{os.getpid()}.tmp")  # per process: DDP ranks may race here
    save_file(tensors, str(tmp), metadata=meta)
    os.replace(tmp, out)
    return out


def rms_norm(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    """ggml_rms_norm then ggml_mul: x / sqrt(mean(x^2) + eps) * w."""
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def rope_tables(n_pos: int, head_dim: int, base: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin [n_pos, head_dim/2] as ggml's rope cache builds them (float32, theta *= scale)."""
    half = head_dim // 2
    theta_scale = np.float32(base) ** np.float32(-2.0 / head_dim)
    pos = np.arange(n_pos, dtype=np.float32)
    theta = np.empty((n_pos, half), dtype=np.float32)
    cur = pos.copy()
    for i in range(half):  # same float32 recurrence as ggml_rope_cache_init
        theta[:, i] = cur
        cur = (cur * theta_scale).astype(np.float32)
    t = torch.from_numpy(theta)
    return torch.cos(t), torch.sin(t)


def apply_rope_neox(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """NeoX RoPE: rotates pairs (x[i], x[i + d/2]). x [..., T, D], cos/sin [T, D/2]."""
    half = x.shape[-1] // 2
    x0, x1 = x[..., :half], x[..., half:]
    return torch.cat([x0 * cos - x1 * sin, x0 * sin + x1 * cos], dim=-1)


class Backbone:
    """Frozen Gemma 3 forward pass (f32) over the dequantized weights (all layers, or `layers`)."""

    def __init__(
        self,
        model_path: Path | None = None,
        layers: range | None = None,
        embeddings: bool = True,
    ):
        self.model_path = Path(model_path or paths.backbone_path())
        cache = _dequantized_cache(self.model_path)
        with safe_open(str(cache), framework="pt") as f:
            meta = f.metadata()
            self.config = GemmaConfig(
                **{
                    k: tuple(v) if isinstance(v, list) else v
                    for k, v in json.loads(meta["config"]).items()
                }
            )
            self.sha256 = meta["sha256"]
            want = range(self.config.n_layer) if layers is None else layers
            self.layers: dict[int, dict[str, torch.Tensor]] = {
                il: {n: f.get_tensor(f"blk.{il}.{n}.weight") for n in _LAYER_TENSORS} for il in want
            }
            self.output_norm = f.get_tensor("output_norm.weight")
            self.tok_embd = f.get_tensor("token_embd.weight") if embeddings else None
        self._rope: dict[float, tuple[torch.Tensor, torch.Tensor]] = {}

    @property
    def device(self) -> torch.device:
        return self.output_norm.device

    def to(self, device: torch.device) -> Backbone:
        """Moves every weight (and the cached rope tables) to `device`; returns self."""
        self.layers = {il: {n: t.to(device) for n, t in w.items()} for il, w in self.layers.items()}
        self.output_norm = self.output_norm.to(device)
        if self.tok_embd is not None:
            self.tok_embd = self.tok_embd.to(device)
        self._rope = {b: (c.to(device), s.to(device)) for b, (c, s) in self._rope.items()}
        return self

    # -- pieces --------------------------------------------------------------

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        if self.tok_embd is None:
            raise RuntimeError("backbone loaded without token embeddings")
        return self.tok_embd[tokens.to(self.device)] * math.sqrt(self.config.n_embd)

    def _rope_for(self, n_pos: int, il: int) -> tuple[torch.Tensor, torch.Tensor]:
        base = self.config.rope_base_swa if self.config.swa_layers[il] else self.config.rope_base
        cached = self._rope.get(base)
        if cached is None or cached[0].shape[0] < n_pos:
            cos, sin = rope_tables(max(n_pos, 1024), self.config.head_dim, base)
            cached = (cos.to(self.device), sin.to(self.device))
            self._rope[base] = cached
        return cached[0][:n_pos], cached[1][:n_pos]

    def _mask(self, q_pos: torch.Tensor, n_keys: int, il: int) -> torch.Tensor:
        """Boolean attend-mask [..., Q, K]: causal, and llama.cpp's sliding window on local layers
        (key p0 is hidden from query p1 when p1 - p0 >= n_swa)."""
        k_pos = torch.arange(n_keys, device=q_pos.device)
        diff = q_pos.unsqueeze(-1) - k_pos
        ok = diff >= 0
        if self.config.swa_layers[il]:
            ok = ok & (diff < self.config.n_swa)
        return ok

    def _linear(self, il: int, module: str, x: torch.Tensor, lora: LoraHook | None) -> torch.Tensor:
        y = x @ self.layers[il][module].T
        if lora is not None:
            delta = lora(il, module, x)
            if delta is not None:
                y = y + delta
        return y

    def layer(
        self,
        il: int,
        h: torch.Tensor,
        lora: LoraHook | None = None,
        q_index: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """One transformer block on h [B, T, d] (positions 0..T-1, right padding).

        With q_index [B, M] only those positions' outputs are computed (keys and
        values still come from every position), as llama.cpp does for the last
        layer with inp_out_ids; returns [B, M, d] then, else [B, T, d].
        """
        c, w = self.config, self.layers[il]
        B, T, _ = h.shape
        x = rms_norm(h, w["attn_norm"], c.eps)
        xq = (
            x
            if q_index is None
            else torch.gather(x, 1, q_index.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
        )
        q_pos = torch.arange(T, device=h.device).expand(B, T) if q_index is None else q_index
        M = xq.shape[1]

        q = self._linear(il, "attn_q", xq, lora).view(B, M, c.n_head, c.head_dim)
        k = self._linear(il, "attn_k", x, lora).view(B, T, c.n_head_kv, c.head_dim)
        v = self._linear(il, "attn_v", x, lora).view(B, T, c.n_head_kv, c.head_dim)
        q = rms_norm(q, w["attn_q_norm"], c.eps)
        k = rms_norm(k, w["attn_k_norm"], c.eps)
        cos, sin = self._rope_for(T, il)
        # q: rotate each query row by its own position
        q = apply_rope_neox(q, cos[q_pos].unsqueeze(2), sin[q_pos].unsqueeze(2))
        k = apply_rope_neox(k, cos.unsqueeze(1), sin.unsqueeze(1))

        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # [B, H, *, D]
        mask = self._mask(q_pos, T, il).unsqueeze(1)  # [B, 1, M, T]
        # GQA: query head h reads kv head h // (n_head / n_head_kv), as ggml broadcasts
        a = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, scale=c.attn_scale, enable_gqa=c.n_head != c.n_head_kv
        )
        a = a.transpose(1, 2).reshape(B, M, c.n_head * c.head_dim)
        a = self._linear(il, "attn_output", a, lora)

        h_res = (
            h
            if q_index is None
            else torch.gather(h, 1, q_index.unsqueeze(-1).expand(-1, -1, h.shape[-1]))
        )
        h = h_res + rms_norm(a, w["post_attention_norm"], c.eps)
        y = rms_norm(h, w["ffn_norm"], c.eps)
        g = F.gelu(self._linear(il, "ffn_gate", y, lora), approximate="tanh")
        f = self._linear(il, "ffn_down", g * self._linear(il, "ffn_up", y, lora), lora)
        return h + rms_norm(f, w["post_ffw_norm"], c.eps)

    # -- whole passes ----------------------------------------------------------

    def run(
        self,
        h: torch.Tensor,
        start: int,
        end: int,
        lora: LoraHook | None = None,
        out_index: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Layers [start, end) on h. With end == n_layer the result is the final state
        (after output_norm), at out_index [B, M] positions if given."""
        for il in range(start, end):
            last = il == self.config.n_layer - 1
            h = self.layer(il, h, lora, out_index if last else None)
        if end == self.config.n_layer:
            if out_index is not None and start == end:
                h = torch.gather(h, 1, out_index.unsqueeze(-1).expand(-1, -1, h.shape[-1]))
            h = rms_norm(h, self.output_norm, self.config.eps)
        return h

    def states(
        self,
        tokens: torch.Tensor,
        lora: LoraHook | None = None,
        out_index: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Final states for token ids [B, T] (right padded)."""
        return self.run(self.embed(tokens), 0, self.config.n_layer, lora, out_index)
