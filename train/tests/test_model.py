"""Gate math (SPEC step 1), LoRA mixture math, backbone vs llama.cpp."""

import json
from pathlib import Path

import numpy as np
import torch

from l2rec_train.model import LoraExperts, topk_gate


def test_topk_gate_softmax_over_kept():
    logits = torch.tensor([[0.5, 2.0, -1.0, 1.0]])
    g = topk_gate(logits, 2)
    want = torch.softmax(torch.tensor([2.0, 1.0]), 0)
    assert torch.allclose(g, torch.tensor([[0.0, want[0], 0.0, want[1]]]))
    assert torch.allclose(g.sum(-1), torch.ones(1))


def test_topk_gate_ties_prefer_lower_index():
    g = topk_gate(torch.tensor([[1.0, 3.0, 1.0, 1.0]]), 2)
    assert g[0, 1] > 0 and g[0, 0] > 0 and g[0, 2] == 0 and g[0, 3] == 0
    g = topk_gate(torch.tensor([[0.0, 0.0, 0.0]]), 2)
    assert torch.allclose(g, torch.tensor([[0.5, 0.5, 0.0]]))


def test_topk_gate_k_equals_experts_is_softmax_and_has_gradients():
    logits = torch.randn(3, 4, requires_grad=True)
    g = topk_gate(logits, 4)
    assert torch.allclose(g, torch.softmax(logits, -1))
    (topk_gate(logits, 2) * torch.arange(4.0)).sum().backward()
    kept = topk_gate(logits, 2).detach() > 0
    assert (logits.grad[kept] != 0).all() and (
        logits.grad[~kept] == 0
    ).all()  # only kept logits learn


def test_lora_hook_is_the_weighted_sum_of_experts():
    torch.manual_seed(0)
    e = LoraExperts(3, 2, 4.0, {"5_attn_q": (6, 5)})
    with torch.no_grad():
        e.b["5_attn_q"].normal_()
    x = torch.randn(2, 7, 6)
    g = torch.tensor([[0.25, 0.0, 0.75], [0.0, 1.0, 0.0]])
    got = e.hook(g)(5, "attn_q", x)
    a, b = e.a["5_attn_q"], e.b["5_attn_q"]
    want = torch.stack(
        [sum(g[i, k] * (4.0 / 2) * (x[i] @ a[k].T @ b[k].T) for k in range(3)) for i in range(2)]
    )
    assert torch.allclose(got, want, atol=1e-5)
    assert e.hook(g)(5, "attn_v", x) is None


def test_backbone_matches_llama_cpp_f32(backbone):
    ref = json.loads((Path(__file__).parent / "data" / "llama_states_f32.json").read_text())
    for case in ref["cases"]:
        with torch.no_grad():
            ours = backbone.states(torch.tensor([case["ids"]]))[0, -1].numpy()
        theirs = np.array(case["last_state"], dtype=np.float32)
        cos = ours @ theirs / np.linalg.norm(ours) / np.linalg.norm(theirs)
        assert cos > 0.99999
        assert np.linalg.norm(ours - theirs) / np.linalg.norm(theirs) < 3e-3


def test_last_layer_subset_equals_full_pass(backbone):
    torch.manual_seed(0)
    tokens = torch.randint(1000, 5000, (2, 40))
    with torch.no_grad():
        full = backbone.states(tokens)
        idx = torch.tensor([[3, 17, 39], [0, 5, 20]])
        part = backbone.states(tokens, out_index=idx)
    assert torch.allclose(
        part,
        torch.gather(full, 1, idx[..., None].expand(-1, -1, full.shape[-1])),
        rtol=1e-4,
        atol=1e-3,
    )


def test_teacher_forcing_equals_prefix_prompts(backbone, tokenizer, catalog_split):
    """SPEC training: the state after item j in one causal pass is the state of the prompt
    holding items 1..j, also with a LoRA mixture and from the cached layer on."""
    from l2rec_train.prompts import DEFAULT_TEMPLATES, PromptBuilder, Template
    from l2rec_train.statecache import pad

    catalog, split = catalog_split
    torch.manual_seed(0)
    experts = LoraExperts(2, 2, 4.0, {"16_attn_q": (640, 1024), "17_attn_v": (640, 256)})
    with torch.no_grad():
        for b in experts.b.values():
            b.normal_(0, 0.05)
    lora = experts.hook(torch.tensor([[0.3, 0.7]]))
    b = PromptBuilder(
        tokenizer, catalog, "semantic", Template(**DEFAULT_TEMPLATES["semantic"]), check=4
    )
    hist = split.train[1][:4]
    tokens, ends = b.build(hist)
    with torch.no_grad():
        h16 = backbone.run(backbone.embed(pad([tokens])), 0, 16)  # what the state cache holds
        forced = backbone.run(h16, 16, 18, lora, torch.from_numpy(ends.astype(np.int64))[None])[0]
        for j in range(1, len(hist) + 1):
            sub, _ = b.build(hist[:j])
            alone = backbone.states(pad([sub]), lora)[0, -1]
            assert torch.allclose(forced[j - 1], alone, rtol=1e-4, atol=2e-3)


def test_ranks_tie_rule_and_exclusion():
    from l2rec_train import metrics as M

    scores = torch.tensor([[1.0, 5.0, 3.0, 3.0, 0.0]])
    assert M.ranks(scores, torch.tensor([2])).tolist() == [1]
    assert M.ranks(scores, torch.tensor([3])).tolist() == [2]  # tie with row 2, which wins
    assert M.ranks(scores, torch.tensor([3]), [np.array([1, 2])]).tolist() == [0]
    m = M.from_ranks(np.array([0, 9, 10, 25]))
    assert m["HR@10"] == 0.5 and m["HR@20"] == 0.75
    assert abs(m["NDCG@10"] - (1.0 + 1 / np.log2(11)) / 4) < 1e-12
