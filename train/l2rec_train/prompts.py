"""The views' prompt templates (SPEC step 3) rendered to token ids.

A prompt is `prefix + item_1 + sep + ... + item_n + sep`; an item is `#<id>`
in the behavioral view and its text in the semantic view. Teacher forcing reads
the state at the last token of every item's `sep`, so we need, besides the
token ids, where each item's sep ends.

We tokenize piecewise: `BOS + tok(prefix) + tok(item_1 + sep) + ...`, with each
item piece tokenized once for the whole catalog. That equals tokenizing the
whole string (what the runtime does) only when the tokenizer always cuts at
the piece boundaries; Gemma's tokenizer cuts user-defined tokens such as `\\n`
out before anything else, so a template whose prefix and sep end in `\\n` is
safe. `PromptBuilder` checks this on sample histories and refuses a template
that breaks it: a target's state must never see a token of the next item.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .data import Catalog
from .tokenizer import Tokenizer

VIEWS = ("behavioral", "semantic")

DEFAULT_TEMPLATES = {
    "behavioral": {"prefix": "Items a user interacted with, oldest first:\n", "sep": "\n"},
    "semantic": {"prefix": "Movies a user watched, oldest first:\n", "sep": "\n"},
}


@dataclass(frozen=True)
class Template:
    prefix: str
    sep: str

    def render(self, item_strings: list[str]) -> str:
        return self.prefix + "".join(s + self.sep for s in item_strings)


def item_string(view: str, catalog: Catalog, row: int) -> str:
    if view == "behavioral":
        # MODEL.md step 3: the item's semantic ID where the catalog has codes (v2), else #<id>.
        return catalog.codes[row] if catalog.codes is not None else "#" + catalog.item_ids[row]
    if view == "semantic":
        return catalog.texts[row]
    raise ValueError(f"unknown view {view!r}")


class PromptBuilder:
    """Token ids of one view's prompts, and the index of each item's last sep token."""

    def __init__(
        self, tokenizer: Tokenizer, catalog: Catalog, view: str, template: Template, check: int = 64
    ):
        self.tokenizer, self.catalog, self.view, self.template = tokenizer, catalog, view, template
        self.prefix = np.array(tokenizer.encode(template.prefix, add_special=True), dtype=np.int32)
        self.pieces = [
            np.array(
                tokenizer.encode(item_string(view, catalog, r) + template.sep, add_special=False),
                dtype=np.int32,
            )
            for r in range(len(catalog))
        ]
        if min(len(p) for p in self.pieces) == 0:
            raise ValueError(f"{view}: an item renders to no tokens")
        self._check(check)

    def build(self, items: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(tokens [T] int32, ends [n] int32) for the history `items` (catalog rows, oldest first)."""
        parts = [self.prefix] + [self.pieces[int(r)] for r in items]
        tokens = np.concatenate(parts)
        ends = np.cumsum([len(p) for p in parts])[1:] - 1
        return tokens, ends.astype(np.int32)

    def _check(self, n: int, seed: int = 0) -> None:
        """Piecewise tokenization must equal whole-string tokenization (see module doc)."""
        rng = np.random.default_rng(seed)
        rows = list(range(min(n, len(self.catalog))))  # the first items, plus random histories
        histories = [np.array([r]) for r in rows]
        histories += [rng.integers(0, len(self.catalog), size=5) for _ in range(n)]
        for h in histories:
            whole = self.tokenizer.encode(
                self.template.render([item_string(self.view, self.catalog, int(r)) for r in h])
            )
            if whole != self.build(h)[0].tolist():
                raise ValueError(
                    f"{self.view} template {self.template!r}: the tokenizer does not cut at item boundaries "
                    f"(history {h.tolist()}); end the prefix and sep with a newline"
                )
