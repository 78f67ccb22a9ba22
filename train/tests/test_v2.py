"""MODEL.md version 2 in the trainer: item texts with genres, semantic-ID codes, the
collaborative encoder and the gate it drives, the staged training, the v2 bundle."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

from l2rec_train import codes, data, paths
from l2rec_train.backbone import Backbone
from l2rec_train.config import Config
from l2rec_train.model import L2Rec

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_item_text_names_genres_and_respects_the_cap():
    text = data.item_text("Toy Story", "1995", "Animation Children's Comedy")
    assert text == "Toy Story (1995); Animation, Children's, Comedy"
    assert data.item_text("Untitled", "", "") == "Untitled"
    assert data.item_text("Toy Story", "1995", "Animation Children's Comedy", 27) == (
        "Toy Story (1995); Animation"
    )
    # A cap inside a word cuts back to the word boundary, and never leaves a separator.
    assert data.cap_text("Toy Story (1995); Animation", 20) == "Toy Story (1995)"
    assert data.cap_text("abcdefgh", 4) == "abcd"  # one long word: cut inside it


def test_catalog_with_genres(catalog_split):
    catalog = data.load_catalog(genres=True, max_chars=120)
    assert catalog.texts[0] == "Toy Story (1995); Animation, Children's, Comedy"
    assert max(len(t) for t in catalog.texts) <= 120
    assert catalog.item_ids == catalog_split[0].item_ids  # same rows, richer texts


def test_residual_codes_find_clusters_and_refine_them():
    rng = np.random.default_rng(1)
    centers = np.array([[10.0, 0], [0, 10.0], [-10.0, 0], [0, -10.0]])
    x = np.concatenate([c + rng.normal(size=(25, 2)) for c in centers])
    c = codes.residual_codes(x, [4, 3], seed=0)
    assert c.shape == (100, 2)
    # Level 1 recovers the four clusters exactly: one code per cluster.
    assert [len(set(c[i * 25 : (i + 1) * 25, 0])) for i in range(4)] == [1, 1, 1, 1]
    assert len(set(c[:, 0])) == 4
    assert len(set(map(tuple, c.tolist()))) > 4  # level 2 splits inside clusters
    assert np.array_equal(c, codes.residual_codes(x, [4, 3], seed=0))  # seeded
    assert codes.collisions(np.array([[0, 1], [0, 1], [2, 3]])) == 1
    with pytest.raises(ValueError, match="1-3 levels"):
        codes.residual_codes(x, [27])


def test_every_code_renders_one_token_per_level(tokenizer):
    for a in range(26):
        for b in range(26):
            for c in range(26):
                text = codes.render(np.array([a, b, c]))
                ids = tokenizer.encode(text + "\n", add_special=False)
                assert len(ids) == 4, (text, ids)
    # The levels never share a token: "A", " a" and " A" are different tokens.
    firsts = {
        tokenizer.encode(codes.render(np.array([i])), add_special=False)[0] for i in range(26)
    }
    seconds = {tokenizer.encode(codes.ALPHABETS[1][i], add_special=False)[0] for i in range(26)}
    thirds = {tokenizer.encode(codes.ALPHABETS[2][i], add_special=False)[0] for i in range(26)}
    assert len(firsts | seconds | thirds) == 78


def _v2_model(n_items=6, d_r=8, encoder="gru"):
    bb = Backbone(layers=range(0), embeddings=False)
    cfg = Config(
        name="v2",
        encoder=encoder,
        phi_init="zero",
        views={"behavioral": {"experts": 3, "k": 2}, "semantic": {"experts": 2, "k": 1}},
        lora={"rank": 2, "alpha": 4.0, "layers": [17], "modules": ["attn_q"]},
        d_r=d_r,
        d_phi=3,
        max_items=5,
    )
    torch.manual_seed(0)
    return L2Rec(cfg, bb, 4, 30.0 * torch.randn(n_items, bb.config.n_embd) + 100.0)


@pytest.fixture(scope="module")
def v2_model():
    if not paths.backbone_path().exists():
        pytest.skip("backbone missing: run scripts/fetch-assets")
    return _v2_model().eval()


@pytest.mark.parametrize("encoder", ["gru", "attention"])
def test_collab_state_after_an_item_ignores_later_items(encoder):
    if not paths.backbone_path().exists():
        pytest.skip("backbone missing: run scripts/fetch-assets")
    model = _v2_model(encoder=encoder).eval()
    a = torch.tensor([[0, 1, 2, 3, 4]])
    b = torch.tensor([[0, 1, 2, 5, 5]])
    with torch.no_grad():
        ca, cb = model.collab_states(a), model.collab_states(b)
    assert torch.equal(ca[:, :3], cb[:, :3])
    assert not torch.allclose(ca[:, 3], cb[:, 3])


def test_gate_follows_the_history_when_phi_is_zero(v2_model):
    assert torch.count_nonzero(v2_model.phi.weight) == 0  # v2: phi starts at zero
    phi = torch.zeros(2, 3)
    with torch.no_grad():
        c = v2_model.collab_states(torch.tensor([[0, 1, 2], [3, 4, 5]]))[:, -1]
        g = v2_model.gate("behavioral", phi, c)
        logits = v2_model.gate_reads["behavioral"](c) + v2_model.gates["behavioral"](phi)
    assert not torch.allclose(g[0], g[1])
    assert torch.allclose(g.sum(-1), torch.ones(2))
    assert (g > 0).sum(-1).tolist() == [2, 2]  # top-2 of 3 experts
    kept = torch.sort(-logits, dim=-1, stable=True).indices[:, :2]
    assert torch.equal((g > 0).nonzero()[:, 1].view(2, 2).sort(-1).values, kept.sort(-1).values)


def test_v2_export_carries_the_encoder_the_gate_reads_and_the_codes(v2_model, tmp_path):
    from l2rec_train.export import export_bundle

    n = v2_model.item_id.weight.shape[0]
    rendered = [codes.render(np.array([i % 26, i % 3])) for i in range(n)]
    catalog = data.Catalog([str(i + 1) for i in range(n)], [f"M{i}" for i in range(n)], rendered)
    out = export_bundle(v2_model, catalog, ["u1", "u2"], [0, 1], tmp_path / "bundle")
    m = json.loads((out / "manifest.json").read_text())
    assert m["version"] == 2 and m["encoder"] == "gru"
    assert m["views"]["behavioral"]["render"] == "id"  # this model's config renders ids
    with safe_open(str(out / "heads.safetensors"), "pt") as f:
        gru = v2_model.encoder.gru
        assert torch.equal(f.get_tensor("encoder.gru.weight_ih"), gru.weight_ih_l0.detach())
        assert torch.equal(f.get_tensor("encoder.gru.bias_hh"), gru.bias_hh_l0.detach())
        assert f.get_tensor("gate.behavioral.read").shape == (3, 8)
    with safe_open(str(out / "items.safetensors"), "pt") as f:
        assert json.loads(f.metadata()["item_codes"]) == rendered


def test_views_show_the_newest_items_and_c_reads_the_window():
    from l2rec_train.pipeline import Histories, PromptSet

    hist = Histories(np.array([0, 1]), [np.arange(10, 16), np.arange(20, 22)])
    pset = PromptSet(hist, {"semantic": None}, window=3)
    assert pset.offset(0) == 3 and pset.targets_of(0).tolist() == [14, 15]
    assert pset.offset(1) == 0 and pset.targets_of(1).tolist() == [21]
    items, positions, last = pset.history([0, 1], [np.arange(3, 5), np.arange(0, 1)])
    assert positions.tolist() == [[3, 4], [0, 0]] and last.tolist() == [5, 1]
    # Without views (the collaborative stage) every position is a target.
    assert PromptSet(hist, {}, window=3).targets_of(0).tolist() == [11, 12, 13, 14, 15]


def test_stage_one_holdout_leaves_the_newest_items_out_of_its_targets():
    from dataclasses import replace

    from l2rec_train.collab import windows_of

    split = type("S", (), {"train": [np.arange(100, 130), np.arange(200, 205)]})()
    cfg = Config(encoder="gru", max_items=8, train={"collab_windows": "all"})
    full = windows_of(split, [0, 1], cfg)
    held = windows_of(split, [0, 1], replace(cfg, train=replace(cfg.train, collab_holdout=9)))

    def targets(windows):
        return sorted(int(t) for w in windows for t in w[1:])

    assert targets(full) == list(range(101, 130)) + list(range(201, 205))
    # The 9 newest items of each user are nobody's target; a user with fewer left has none.
    assert targets(held) == list(range(101, 121))
    with pytest.raises(ValueError, match="collab_holdout"):
        Config(train={"collab_holdout": -1})


def test_stage_one_average_follows_the_steps_and_is_swapped_in_only_inside_its_block():
    from l2rec_train.averaging import ParamAverage

    w = torch.nn.Parameter(torch.tensor([0.0, 10.0]))
    average = ParamAverage([w], decay=0.5)
    for value in (4.0, 8.0):
        with torch.no_grad():
            w.fill_(value)
        average.update()
    # 0.5 * (0.5 * [0, 10] + 0.5 * 4) + 0.5 * 8
    assert torch.allclose(average.average[0], torch.tensor([5.0, 7.5]))
    with average.swapped_in():
        assert torch.allclose(w, torch.tensor([5.0, 7.5]))
    assert torch.equal(w.detach(), torch.tensor([8.0, 8.0]))
    with pytest.raises(ValueError, match="collab_ema"):
        Config(train={"collab_ema": 1.0})


def test_config_versions():
    assert Config().version == 1
    assert Config(encoder="gru").version == 2
    with pytest.raises(ValueError, match="collab"):
        Config(fusion="collab")
    with pytest.raises(ValueError, match="render"):
        Config(views={"semantic": {"render": "codes"}})


def test_staged_training_end_to_end(tmp_path, catalog_split):
    """tiny-v2: stage 1, codes, warmup, LoRA steps, export; then a resumed run reuses stage 1."""
    if not paths.backbone_path().exists():
        pytest.skip("backbone missing: run scripts/fetch-assets")
    from l2rec_train import train as trainer

    out = tmp_path / "run"
    trainer.main(["--config", str(CONFIGS / "tiny-v2.json"), "--out", str(out), "--threads", "1"])
    m = json.loads((out / "bundle" / "manifest.json").read_text())
    assert m["version"] == 2 and m["views"]["behavioral"]["render"] == "codes"
    assert m["history"] == {"max_items": 5, "view_items": 3}
    with safe_open(str(out / "bundle" / "items.safetensors"), "pt") as f:
        item_codes = json.loads(f.metadata()["item_codes"])
        texts = json.loads(f.metadata()["item_texts"])
    assert len(item_codes) == len(catalog_split[0]) and all(len(c) == 3 for c in item_codes)
    assert texts[0] == "Toy Story (1995); Animation, Children's, Comedy"
    stage1 = torch.load(out / "collab.pt", weights_only=False)
    assert stage1["codes"] == item_codes
    assert any(r.get("best") for r in stage1["rows"])
    assert json.loads((out / "metrics.json").read_text())["test"]["NDCG@10"] >= 0.0


def test_warmup_that_beats_no_floor_keeps_the_starting_weights(catalog_split):
    if not paths.backbone_path().exists():
        pytest.skip("backbone missing: run scripts/fetch-assets")
    from l2rec_train.context import build_context
    from l2rec_train.train import warmup_heads

    ctx = build_context(Config.load(CONFIGS / "tiny.json"))
    before = {k: v.clone() for k, v in ctx.model.state_dict().items()}
    rows = warmup_heads(ctx, epochs=2, floor=2.0)  # NDCG@10 never exceeds 1
    assert len(rows) == 2
    after = ctx.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_cold_users_are_the_same_for_every_seed_and_never_trained_on():
    from l2rec_train.collab import cold_users, windows_of

    warm, cold = cold_users(range(943), 0.1)
    assert len(cold) == 94 and len(warm) == 849 and not set(warm) & set(cold)
    assert (warm, cold) == cold_users(range(943), 0.1)  # no dependence on the training seed
    assert cold_users(range(943), 0.0) == (list(range(943)), [])
    split = type("S", (), {"train": [np.arange(10 * u, 10 * u + 5) for u in range(943)]})()
    trained = {int(i) for w in windows_of(split, warm, Config(encoder="gru")) for i in w}
    assert not trained & {int(i) for u in cold for i in split.train[u]}


def test_seeds_report_scores_every_model_on_the_cold_users_alone():
    from l2rec_train.seeds_report import cold_users_of, restricted

    run = {"test_ranks": [0, 50, 0, 50], "test": {}, "cold_users": [1, 3]}
    raw = {"a": [run], "b": [{"test_ranks": [50, 0, 50, 0], "test": {}}]}
    users = cold_users_of(raw)
    assert users == [1, 3]
    assert restricted(raw["a"], users)[0]["test"]["HR@10"] == 0.0
    assert restricted(raw["b"], users)[0]["test"]["HR@10"] == 1.0
    with pytest.raises(SystemExit, match="one list of cold_users"):
        cold_users_of({"a": [run], "b": [{**run, "cold_users": [0]}]})


def test_cold_items_are_out_of_every_sequence_softmax_and_ranking():
    if not paths.backbone_path().exists():
        pytest.skip("backbone missing: run scripts/fetch-assets")
    from l2rec_train.collab import (
        cold_items,
        cold_items_report,
        collab_step,
        forget_items,
        ranks_of,
        users_without,
        without_items,
    )

    assert cold_items(1682, 0.1) == cold_items(1682, 0.1) and len(cold_items(1682, 0.1)) == 168
    split = data.Split(
        ["a", "b", "c"],
        [np.array([0, 1, 2, 3]), np.array([4, 5, 1]), np.array([2, 3])],
        np.array([5, 0, 1]),
        np.array([4, 2, 5]),
    )
    known = without_items(split, [1, 5])
    assert [t.tolist() for t in known.train] == [[0, 2, 3], [4], [2, 3]]
    assert users_without(split, range(3), [1, 5], "valid") == [1]
    model = _v2_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    collab_step(model, optimizer, known.train, "off", torch.tensor([1, 5]))
    # A hidden item is in no softmax: neither its id embedding nor its bias learns.
    assert model.item_id.weight.grad[[1, 5]].abs().sum() == 0
    assert model.item_bias.grad[[1, 5]].abs().sum() == 0
    assert model.item_bias.grad[[0, 2, 3, 4]].abs().sum() > 0
    # Nor in a ranking: with item 0 hidden no target ranks lower than without.
    u = torch.randn(3, 8)
    plain = ranks_of(model, split, range(3), "test", u)
    hidden = ranks_of(model, split, range(3), "test", u, [0])
    assert (hidden <= plain).all()
    forget_items(model, [1, 5])
    assert model.item_id.weight[[1, 5]].abs().sum() == 0 and model.item_bias[[1, 5]].sum() == 0
    report = cold_items_report(split, [5], torch.tensor([0, 3, 20]))
    assert report["cold_item_users"] == [2] and report["test_cold_items"]["HR@10"] == 0.0
    assert report["test_warm_items"]["HR@10"] == 1.0


def test_id_dropout_serves_the_dropped_items_by_their_text_alone():
    if not paths.backbone_path().exists():
        pytest.skip("backbone missing: run scripts/fetch-assets")
    from l2rec_train.collab import collab_step, id_dropout_mask

    model = _v2_model()
    generator = torch.Generator().manual_seed(0)
    assert id_dropout_mask(model, 0.0, generator) is None
    keep = id_dropout_mask(model, 0.5, generator)
    assert keep.shape == (6,) and set(keep.tolist()) <= {0.0, 1.0}
    keep = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0, 1.0])
    with torch.no_grad():
        model.item_bias.copy_(torch.arange(6.0))
        u = torch.randn(2, 8)
        text_only = model.item_vectors() - model.item_id.weight
        dropped = model.scores(u, model.item_vectors(keep), keep)
    # A dropped item scores as a new one would: its text, no id, no bias.
    assert torch.allclose(dropped[:, [1, 4]], u @ text_only[[1, 4]].T, atol=1e-5)
    assert torch.allclose(dropped[:, [0, 2]], model.scores(u)[:, [0, 2]], atol=1e-5)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    collab_step(model, optimizer, [np.array([0, 1, 2, 4, 3])], "off", None, keep)
    # Their ids and biases learn nothing from the step; the text projection does.
    assert model.item_id.weight.grad[[1, 4]].abs().sum() == 0
    assert model.item_bias.grad[[1, 4]].abs().sum() == 0
    assert model.item_id.weight.grad[[0, 2]].abs().sum() > 0
    assert model.text_proj.weight.grad.abs().sum() > 0
