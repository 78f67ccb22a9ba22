"""Export round-trip: the bundle re-read with `gguf`/`safetensors` is what docs/BUNDLE.md says."""

import hashlib
import json

import gguf
import numpy as np
import pytest
import torch
from safetensors import safe_open

from l2rec_train import paths
from l2rec_train.backbone import Backbone
from l2rec_train.config import Config
from l2rec_train.data import Catalog
from l2rec_train.export import export_bundle
from l2rec_train.model import L2Rec


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    if not paths.backbone_path().exists():
        pytest.skip("backbone missing: run scripts/fetch-assets")
    torch.manual_seed(0)
    bb = Backbone(
        layers=range(0), embeddings=False
    )  # export needs the config and the file, not the weights
    cfg = Config(
        name="roundtrip",
        views={"behavioral": {"experts": 2, "k": 1}, "semantic": {"experts": 0, "k": 0}},
        lora={
            "rank": 4,
            "alpha": 8.0,
            "layers": [16, 17],
            "modules": ["attn_q", "attn_v", "ffn_down"],
        },
        d_r=8,
        d_phi=3,
        max_items=7,
    )
    n_items = 5
    catalog = Catalog(
        [str(i + 1) for i in range(n_items)], [f"Movie {i} (199{i})" for i in range(n_items)]
    )
    model = L2Rec(cfg, bb, 4, 30.0 * torch.randn(n_items, bb.config.n_embd) + 100.0)
    with torch.no_grad():
        for b in model.experts["behavioral"].b.values():
            b.normal_()
    out = export_bundle(
        model, catalog, ["u1", "u2", "u3"], [0, 1, 2], tmp_path_factory.mktemp("b") / "bundle"
    )
    return model, catalog, out


def test_manifest(exported):
    model, _, out = exported
    m = json.loads((out / "manifest.json").read_text())
    assert m["format"] == "l2rec-bundle" and m["version"] == 1 and m["name"] == "roundtrip"
    assert m["backbone"]["file"] == paths.backbone_path().name
    assert (
        m["backbone"]["arch"] == "gemma3"
        and m["backbone"]["n_embd"] == 640
        and m["backbone"]["n_layer"] == 18
    )
    assert m["views"]["behavioral"]["experts"] == 2 and m["views"]["semantic"] == {
        "experts": 0,
        "k": 0,
        "template": model.cfg.views["semantic"].template,
    }
    assert m["lora"] == {
        "rank": 4,
        "alpha": 8.0,
        "layers": [16, 17],
        "modules": ["attn_q", "attn_v", "ffn_down"],
    }
    assert m["dims"] == {"d": 640, "d_r": 8, "d_phi": 3} and m["history"] == {"max_items": 7}
    assert m["items"] == {"count": 5}
    listed = set(m["files"])
    assert listed == {
        "experts/behavioral-0.gguf",
        "experts/behavioral-1.gguf",
        "heads.safetensors",
        "items.safetensors",
        "users.safetensors",
    }
    for rel, f in m["files"].items():
        blob = (out / rel).read_bytes()
        assert f["bytes"] == len(blob) and f["sha256"] == hashlib.sha256(blob).hexdigest()


def test_expert_gguf(exported):
    model, _, out = exported
    r = gguf.GGUFReader(str(out / "experts" / "behavioral-1.gguf"))
    kv = {k: f.contents() for k, f in r.fields.items() if not k.startswith("GGUF.")}
    assert kv["general.type"] == "adapter" and kv["adapter.type"] == "lora"
    assert kv["general.architecture"] == "gemma3"
    assert (
        r.fields["adapter.lora.alpha"].types == [gguf.GGUFValueType.FLOAT32]
        and kv["adapter.lora.alpha"] == 8.0
    )
    tensors = {t.name: t for t in r.tensors}
    shapes = {"attn_q": (640, 1024), "attn_v": (640, 256), "ffn_down": (2048, 640)}
    assert len(tensors) == 2 * 2 * 3
    for layer in (16, 17):
        for module, (n_in, n_out) in shapes.items():
            a, b = (
                tensors[f"blk.{layer}.{module}.weight.lora_a"],
                tensors[f"blk.{layer}.{module}.weight.lora_b"],
            )
            assert (
                a.tensor_type == gguf.GGMLQuantizationType.F32
                and b.tensor_type == gguf.GGMLQuantizationType.F32
            )
            assert list(a.shape) == [n_in, 4] and list(b.shape) == [4, n_out]  # ggml order
            key = f"{layer}_{module}"
            assert np.array_equal(
                np.asarray(a.data), model.experts["behavioral"].a[key][1].detach().numpy()
            )
            assert np.array_equal(
                np.asarray(b.data), model.experts["behavioral"].b[key][1].detach().numpy()
            )


def test_heads_items_users(exported):
    model, catalog, out = exported
    with safe_open(str(out / "heads.safetensors"), "pt") as f:
        heads = {k: f.get_tensor(k) for k in f.keys()}
    assert set(heads) == {
        "gate.behavioral.weight",
        "gate.behavioral.bias",
        "user.phi_mean",
        "proj.behavioral.weight",
        "proj.behavioral.bias",
        "proj.semantic.weight",
        "proj.semantic.bias",
        "fusion.weight",
        "fusion.bias",
        "item.text_proj.weight",
        "item.text_proj.bias",
    }
    assert all(t.dtype == torch.float32 for t in heads.values())
    assert heads["gate.behavioral.weight"].shape == (2, 3) and heads["fusion.weight"].shape == (
        8,
        24,
    )
    assert heads["proj.semantic.weight"].shape == (8, 640) and heads[
        "item.text_proj.weight"
    ].shape == (8, 640)
    assert torch.allclose(heads["user.phi_mean"], model.phi.weight[:3].mean(0))
    # SPEC's plain z = P h + p reproduces the model's (standardized-input) projection
    h = 50.0 * torch.randn(3, 640)
    z = h @ heads["proj.behavioral.weight"].T + heads["proj.behavioral.bias"]
    assert torch.allclose(z, model.project("behavioral", h).detach(), rtol=1e-4, atol=1e-4)
    e = model.text_states @ heads["item.text_proj.weight"].T + heads["item.text_proj.bias"]
    with safe_open(str(out / "items.safetensors"), "pt") as f:
        meta = f.metadata()
        items = {k: f.get_tensor(k) for k in f.keys()}
    assert torch.allclose(
        items["item.id_embedding"] + e, model.item_vectors().detach(), rtol=1e-4, atol=1e-4
    )
    assert items["item.id_embedding"].shape == (5, 8) and items["item.bias"].shape == (5,)
    assert items["item.text_state"].shape == (5, 640)
    assert (
        json.loads(meta["item_ids"]) == catalog.item_ids
        and json.loads(meta["item_texts"]) == catalog.texts
    )
    with safe_open(str(out / "users.safetensors"), "pt") as f:
        assert json.loads(f.metadata()["user_ids"]) == ["u1", "u2", "u3"]
        assert torch.equal(f.get_tensor("user.phi"), model.phi.weight[:3].detach())
