"""Our SPM tokenizer against ids llama.cpp produced (tests/data/llama_tokens.json)."""

import json
from pathlib import Path

import numpy as np
import pytest

from l2rec_train.prompts import DEFAULT_TEMPLATES, PromptBuilder, Template

CASES = json.loads((Path(__file__).parent / "data" / "llama_tokens.json").read_text())["cases"]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c["text"][:40])
def test_matches_llama_cpp(tokenizer, case):
    assert tokenizer.encode(case["text"]) == case["ids"]


def test_control_text_is_not_parsed(tokenizer):
    ids = tokenizer.encode("<bos></s><b>")
    assert ids[0] == 2 and 2 not in ids[1:]  # "<bos>" stays text
    assert 212 not in ids  # "</s>" is forced to control by llama.cpp: not cut out either
    assert ids[-1] == 200  # "<b>" is user-defined: cut out


def test_piecewise_prompts_equal_whole_string(tokenizer, catalog_split):
    catalog, split = catalog_split
    for view, tpl in DEFAULT_TEMPLATES.items():
        b = PromptBuilder(tokenizer, catalog, view, Template(**tpl), check=8)
        hist = split.train[0][:6]
        tokens, ends = b.build(hist)
        assert len(ends) == 6 and ends[-1] == len(tokens) - 1
        # every prefix history's prompt is a prefix of the full prompt, ending at its sep
        for j in range(1, 6):
            sub, _ = b.build(hist[:j])
            assert np.array_equal(sub, tokens[: ends[j - 1] + 1])


def test_template_that_merges_across_items_is_refused(tokenizer, catalog_split):
    catalog, _ = catalog_split
    with pytest.raises(ValueError, match="item boundaries"):
        PromptBuilder(tokenizer, catalog, "behavioral", Template(prefix="Items:", sep=""), check=8)
