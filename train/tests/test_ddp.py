"""Two CPU processes under torchrun (gloo) train the tiny config, then resume."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from l2rec_train import paths

CONFIG = {
    "name": "ddp-smoke",
    "seed": 0,
    "views": {"behavioral": {"experts": 2, "k": 1}, "semantic": {"experts": 2, "k": 2}},
    "lora": {"rank": 2, "alpha": 4.0, "layers": [17], "modules": ["attn_q", "attn_v"]},
    "d_r": 8,
    "d_phi": 4,
    "max_items": 4,
    "train": {"epochs": 1, "batch_size": 4, "max_users": 8, "max_steps": 2, "threads": 1},
}


def _torchrun(cfg_path: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "l2rec_train.train",
        "--config",
        str(cfg_path),
        "--out",
        str(out),
        "--no-test",
        *extra,
    ]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)


def test_two_process_gloo(tmp_path):
    if not paths.backbone_path().exists():
        pytest.skip("backbone missing: run scripts/fetch-assets")
    cfg_path = tmp_path / "cfg.json"
    cfg_path.write_text(json.dumps(CONFIG))
    out = tmp_path / "run"
    r = _torchrun(cfg_path, out)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert len(log) == 1 and log[0]["steps"] == 2 and log[0]["targets"] > 0
    assert (out / "best.pt").exists() and (out / "bundle" / "manifest.json").exists()
    first = torch.load(out / "last.pt", weights_only=False)

    # resume: one more epoch from last.pt
    cfg_path.write_text(json.dumps({**CONFIG, "train": {**CONFIG["train"], "epochs": 2}}))
    r = _torchrun(cfg_path, out, "--resume", "--no-export")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in log] == [0, 1]
    second = torch.load(out / "last.pt", weights_only=False)
    assert second["epoch"] == 1
    moved = second["model"]["fusion.weight"] - first["model"]["fusion.weight"]
    assert moved.abs().max() > 0
