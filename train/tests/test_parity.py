"""Trainer against runtime: a tiny model trained for a few steps, exported, then
served by `l2rec eval` (llama.cpp on the Q4_K_M backbone). For each trained
user the preference vectors agree to cosine >= 0.99 and the top-10 lists share
at least 8 items.

Needs the release `l2rec` binary (`cargo build --release -p l2rec-cli`); it
skips without one unless L2REC_REQUIRE_RUNTIME=1 (scripts/test sets it).
"""

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from l2rec_train import paths
from l2rec_train import train as trainer
from l2rec_train.context import load_for_inference

REPO = Path(__file__).resolve().parents[2]
CONFIG = {
    "name": "parity",
    "seed": 0,
    "views": {"behavioral": {"experts": 2, "k": 1}, "semantic": {"experts": 2, "k": 2}},
    "lora": {"rank": 2, "alpha": 4.0, "layers": [17], "modules": ["attn_q", "attn_v"]},
    "d_r": 16,
    "d_phi": 4,
    "max_items": 5,
    # A large LoRA learning rate so that three steps move the experts enough to matter.
    "train": {
        "epochs": 1,
        "batch_size": 4,
        "max_users": 8,
        "max_steps": 3,
        "threads": 1,
        "lr": 0.01,
        "lr_lora": 0.05,
    },
}


def _runtime_binary() -> Path:
    binary = Path(os.environ.get("L2REC_BIN", REPO / "target" / "release" / "l2rec"))
    # A relative L2REC_BIN means the repository root, wherever pytest runs from.
    if not binary.is_absolute():
        binary = REPO / binary
    if not binary.exists():
        if os.environ.get("L2REC_REQUIRE_RUNTIME") == "1":
            pytest.fail(f"{binary} missing: build it with cargo build --release -p l2rec-cli")
        pytest.skip(f"{binary} missing: build it with cargo build --release -p l2rec-cli")
    return binary


@torch.no_grad()
def _trainer_side(checkpoint: Path, k: int = 10) -> dict:
    """user id -> (u, top-k item ids) on the test prompt, history excluded."""
    ctx = load_for_inference(checkpoint)
    users = list(ctx.users)
    u_rows, inputs = ctx.test_set().last_state_batch(list(range(len(users))))
    u = ctx.model.eval().user_vectors(u_rows, inputs)[:, 0]
    scores = ctx.model.scores(u)
    out = {}
    for b, row in enumerate(users):
        s = scores[b].clone()
        s[torch.from_numpy(ctx.split.seen_items(row, "test"))] = -float("inf")
        top = sorted(range(len(s)), key=lambda i: (-float(s[i]), i))[:k]  # ties: lower row
        out[ctx.split.user_ids[row]] = (u[b].numpy(), [ctx.catalog.item_ids[i] for i in top])
    return out


def test_trainer_and_runtime_agree(tmp_path):
    if not paths.backbone_path().exists():
        pytest.skip("backbone missing: run scripts/fetch-assets")
    binary = _runtime_binary()
    cfg_path = tmp_path / "cfg.json"
    cfg_path.write_text(json.dumps(CONFIG))
    run = tmp_path / "run"
    trainer.main(["--config", str(cfg_path), "--out", str(run), "--no-test"])
    expected = _trainer_side(run / "best.pt")

    per_user = tmp_path / "per-user.jsonl"
    cmd = [
        str(binary),
        "eval",
        "--bundle",
        str(run / "bundle"),
        "--json",
        "--threads",
        "1",
        "--user-ids",
        ",".join(expected),
        "--per-user",
        str(per_user),
    ]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads(r.stdout)["users"] == len(expected)

    for line in per_user.read_text().splitlines():
        got = json.loads(line)
        u_trainer, top_trainer = expected[got["user"]]
        u_runtime = np.array(got["u"], dtype=np.float64)
        cos = float(u_trainer @ u_runtime / np.linalg.norm(u_trainer) / np.linalg.norm(u_runtime))
        shared = len(set(top_trainer) & set(got["top"][:10]))
        print(f"user {got['user']}: cosine {cos:.5f}, top-10 shared {shared}/10")
        assert cos >= 0.99, (got["user"], cos)
        assert shared >= 8, (got["user"], top_trainer, got["top"][:10])
