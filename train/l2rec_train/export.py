"""Writes a trained model as a runtime bundle, exactly as docs/BUNDLE.md lays it out.

manifest.json, heads.safetensors, items.safetensors, users.safetensors,
experts/<view>-<k>.gguf  (llama.cpp LoRA adapters)

python -m l2rec_train.export --checkpoint runs/x/best.pt --out bundles/x
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
from pathlib import Path

import gguf
import numpy as np
import torch
from safetensors.torch import save_file

from .backbone import file_sha256
from .config import Config
from .context import load_for_inference
from .data import Catalog
from .model import L2Rec, LoraExperts
from .prompts import VIEWS

FORMAT = "l2rec-bundle"


def _np(t: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(t.detach().cpu().float().numpy())


def write_expert(path: Path, experts: LoraExperts, k: int, cfg: Config, arch: str) -> None:
    """Expert k as a llama.cpp LoRA GGUF: A as ggml [n_in, r] (numpy [r, n_in]), B as ggml
    [r, n_out] (numpy [n_out, r]); llama.cpp applies scale * (alpha / r) * B (A x)."""
    w = gguf.GGUFWriter(str(path), arch)  # writes general.architecture
    w.add_type("adapter")
    w.add_string("adapter.type", "lora")
    w.add_float32("adapter.lora.alpha", float(cfg.lora.alpha))
    for layer in cfg.lora.layers:
        for module in cfg.lora.modules:
            key = LoraExperts.key(layer, module)
            w.add_tensor(f"blk.{layer}.{module}.weight.lora_a", _np(experts.a[key][k]))
            w.add_tensor(f"blk.{layer}.{module}.weight.lora_b", _np(experts.b[key][k]))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def fold_standardizer(lin: torch.nn.Linear, mu: torch.Tensor, inv_sigma: torch.Tensor):
    """(W, b) with W h + b == lin((h - mu) * inv_sigma): SPEC's plain affine projection."""
    w = lin.weight * inv_sigma
    return w, lin.bias - w @ mu


def head_tensors(model: L2Rec, phi_mean: torch.Tensor) -> dict[str, torch.Tensor]:
    """heads.safetensors, with the training-time standardization folded into P, p, Q, q."""
    out = {}
    for v in VIEWS:
        if v in model.gates:
            out[f"gate.{v}.weight"] = model.gates[v].weight
            out[f"gate.{v}.bias"] = model.gates[v].bias
        if v in model.gate_reads:  # v2: A_v
            out[f"gate.{v}.read"] = model.gate_reads[v].weight
    if model.cfg.encoder == "attention":
        raise ValueError(
            "encoder `attention` is a trainer experiment the runtime does not serve yet "
            "(docs/MODEL.md step 0 specifies the GRU); export a `gru` model"
        )
    if model.encoder is not None:  # v2 step 0: PyTorch's GRU tensors, gates r, z, n
        gru = model.encoder.gru
        out["encoder.gru.weight_ih"] = gru.weight_ih_l0
        out["encoder.gru.weight_hh"] = gru.weight_hh_l0
        out["encoder.gru.bias_ih"] = gru.bias_ih_l0
        out["encoder.gru.bias_hh"] = gru.bias_hh_l0
    out["user.phi_mean"] = phi_mean
    for v in VIEWS:
        out[f"proj.{v}.weight"], out[f"proj.{v}.bias"] = fold_standardizer(
            model.proj[v], *model.standardizer_of(v)
        )
    out["fusion.weight"] = model.fusion.weight
    out["fusion.bias"] = model.fusion.bias
    out["item.text_proj.weight"], out["item.text_proj.bias"] = fold_standardizer(
        model.text_proj, *model.standardizer_of("text")
    )
    return {k: v.detach().float().contiguous().clone() for k, v in out.items()}


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def export_bundle(
    model: L2Rec,
    catalog: Catalog,
    user_ids: list[str],
    user_rows: list[int],
    out: Path,
    include_text_state: bool = True,
    include_users: bool = True,
) -> Path:
    """Writes the bundle into `out` (replaced atomically: built in a sibling directory first)."""
    cfg, bb = model.cfg, model.backbone
    if cfg.fusion != "adaptive":
        raise ValueError(
            f"a {cfg.fusion}-only ablation has no SPEC bundle (the runtime always fuses both views)"
        )
    if not cfg.item_text:
        raise ValueError("an ids-only ablation (item_text false) has no MODEL.md bundle")
    out = Path(out)
    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    (tmp / "experts").mkdir(parents=True)
    files: list[str] = []

    arch = "gemma3"
    for v in VIEWS:
        if v in model.experts:
            for k in range(cfg.views[v].experts):
                rel = f"experts/{v}-{k}.gguf"
                write_expert(tmp / rel, model.experts[v], k, cfg, arch)
                files.append(rel)

    rows = torch.tensor(user_rows, dtype=torch.long)
    phi = model.phi.weight.detach()[rows]
    phi_mean = phi.mean(0)
    save_file(head_tensors(model, phi_mean), str(tmp / "heads.safetensors"))
    files.append("heads.safetensors")

    items = {
        "item.id_embedding": model.item_id.weight.detach().float().contiguous().clone(),
        "item.bias": model.item_bias.detach().float().contiguous().clone(),
    }
    if include_text_state:
        items["item.text_state"] = model.text_states.detach().float().contiguous().clone()
    metadata = {
        "item_ids": json.dumps(catalog.item_ids, ensure_ascii=False),
        "item_texts": json.dumps(catalog.texts, ensure_ascii=False),
    }
    if catalog.codes is not None:  # v2: the behavioral view's semantic IDs, rendered
        metadata["item_codes"] = json.dumps(catalog.codes, ensure_ascii=False)
    save_file(items, str(tmp / "items.safetensors"), metadata=metadata)
    files.append("items.safetensors")

    if include_users:
        save_file(
            {"user.phi": phi.float().contiguous().clone()},
            str(tmp / "users.safetensors"),
            metadata={"user_ids": json.dumps(user_ids, ensure_ascii=False)},
        )
        files.append("users.safetensors")

    manifest = {
        "format": FORMAT,
        "version": cfg.version,
        "name": cfg.name,
        "backbone": {
            "file": bb.model_path.name,
            "sha256": file_sha256(bb.model_path),
            "arch": arch,
            "n_embd": bb.config.n_embd,
            "n_layer": bb.config.n_layer,
        },
        "views": {
            v: {
                "experts": cfg.views[v].experts,
                "k": cfg.views[v].k,
                "template": {
                    "prefix": cfg.views[v].template["prefix"],
                    "sep": cfg.views[v].template["sep"],
                },
                **({"render": cfg.views[v].render} if cfg.version >= 2 else {}),
            }
            for v in VIEWS
        },
        **(
            {"encoder": cfg.encoder, "max_text_chars": cfg.max_text_chars}
            if cfg.version >= 2
            else {}
        ),
        "lora": {
            "rank": cfg.lora.rank,
            "alpha": float(cfg.lora.alpha),
            "layers": list(cfg.lora.layers),
            "modules": list(cfg.lora.modules),
        },
        "dims": {"d": bb.config.n_embd, "d_r": cfg.d_r, "d_phi": cfg.d_phi},
        "history": {
            "max_items": cfg.max_items,
            **({"view_items": cfg.view_window} if cfg.version >= 2 else {}),
        },
        "items": {"count": len(catalog)},
        "files": {
            rel: {"sha256": _sha256(tmp / rel), "bytes": (tmp / rel).stat().st_size}
            for rel in files
        },
    }
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--checkpoint", required=True, help="a best.pt or last.pt written by l2rec_train.train"
    )
    p.add_argument("--out", required=True, help="bundle directory to write (replaced)")
    p.add_argument(
        "--no-text-state", action="store_true", help="leave item.text_state out (device recomputes)"
    )
    p.add_argument("--no-users", action="store_true", help="leave users.safetensors out")
    args = p.parse_args(argv)
    ctx = load_for_inference(Path(args.checkpoint))
    out = export_bundle(
        ctx.model,
        ctx.catalog,
        ctx.trained_user_ids,
        ctx.trained_user_rows,
        Path(args.out),
        include_text_state=not args.no_text_state,
        include_users=not args.no_users,
    )
    print(out)


if __name__ == "__main__":
    main()
