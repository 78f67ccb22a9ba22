"""Checks that llama.cpp, loading our exported expert GGUFs with the per-user
scales, computes the view states the trainer computes.

Random experts on every module kind of the top layers (B far from zero, so the
adapters matter), a few users' gates, one prompt per user and view; llama.cpp
runs through tools/llama_ref (build it with tools/build_llama_ref.sh).

    python tools/check_lora_parity.py --llama-ref /tmp/llama_ref [--model X.gguf] [--kv-f32]

With --model an all-f32 copy of the backbone (tools/gguf_to_f32.py) and
--kv-f32 the two sides should agree to float rounding (cosine ~ 1 - 1e-6);
with the Q4_K_M backbone llama.cpp's 8-bit activations cost ~1e-3 of cosine.
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import torch

from l2rec_train import data, paths
from l2rec_train.backbone import MODULES, Backbone
from l2rec_train.config import Config
from l2rec_train.context import text_states
from l2rec_train.export import export_bundle
from l2rec_train.model import L2Rec
from l2rec_train.pipeline import prompt_builders
from l2rec_train.tokenizer import Tokenizer


def escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--llama-ref", required=True)
    p.add_argument(
        "--model", default=None, help="GGUF llama.cpp runs (default: the cached Q4_K_M backbone)"
    )
    p.add_argument("--kv-f32", action="store_true")
    p.add_argument("--users", type=int, default=3)
    p.add_argument("--items", type=int, default=8, help="history length of the prompts")
    args = p.parse_args()
    torch.set_num_threads(2)
    torch.manual_seed(0)

    cfg = Config(
        name="parity",
        views={"behavioral": {"experts": 3, "k": 2}, "semantic": {"experts": 3, "k": 2}},
        lora={"rank": 4, "alpha": 8.0, "layers": [15, 16, 17], "modules": list(MODULES)},
        d_r=16,
        d_phi=4,
        max_items=args.items,
    )
    catalog, split = data.load()
    backbone = Backbone()
    builders = prompt_builders(cfg, Tokenizer.load(), catalog)
    model = L2Rec(
        cfg, backbone, len(split), text_states(backbone, builders["semantic"], len(catalog))
    )
    with torch.no_grad():
        for experts in model.experts.values():
            for b in experts.b.values():
                b.normal_(0.0, 0.05)
        model.phi.weight.normal_(0.0, 1.0)

    work = Path(tempfile.mkdtemp(prefix="l2rec-parity-"))
    users = list(range(args.users))
    export_bundle(model, catalog, [split.user_ids[u] for u in users], users, work / "bundle")
    worst = 1.0
    for u in users:
        hist = data.truncate(split.valid_history(u), cfg.max_items)
        for view, builder in builders.items():
            g = model.gate(view, model.phi.weight[u : u + 1])[0].detach()
            tokens, _ = builder.build(hist)
            with torch.no_grad():
                ours = backbone.states(
                    torch.from_numpy(tokens.astype(np.int64))[None],
                    lora=model.experts[view].hook(g[None]),
                )[0, -1].numpy()
            prompt = builder.template.render(
                [
                    ("#" + catalog.item_ids[r]) if view == "behavioral" else catalog.texts[r]
                    for r in hist
                ]
            )
            (work / "prompts.txt").write_text(escape(prompt) + "\n")
            cmd = [
                args.llama_ref,
                str(args.model or paths.backbone_path()),
                str(work / "prompts.txt"),
                str(work),
            ]
            for k in torch.nonzero(g).flatten().tolist():
                cmd += [
                    "--lora",
                    str(work / "bundle" / "experts" / f"{view}-{k}.gguf"),
                    f"{float(g[k]):.9g}",
                ]
            if args.kv_f32:
                cmd.append("--kv-f32")
            subprocess.run(cmd, check=True, stderr=subprocess.DEVNULL)
            ref_tokens = [int(x) for x in (work / "tokens.txt").read_text().split()]
            assert ref_tokens == tokens.tolist(), "token ids differ"
            theirs = np.fromfile(work / "states.f32", dtype=np.float32).reshape(
                -1, backbone.config.n_embd
            )[-1]
            with torch.no_grad():
                base = backbone.states(torch.from_numpy(tokens.astype(np.int64))[None])[
                    0, -1
                ].numpy()
            cos = float(ours @ theirs / np.linalg.norm(ours) / np.linalg.norm(theirs))
            moved = float(np.linalg.norm(ours - base) / np.linalg.norm(base))
            worst = min(worst, cos)
            print(
                f"user {u} {view:10s} gates {np.round(g.numpy(), 3)} cos {cos:.6f} "
                f"(adapters moved the state by {moved:.1%})"
            )
    print(f"worst cosine {worst:.6f}")


if __name__ == "__main__":
    main()
