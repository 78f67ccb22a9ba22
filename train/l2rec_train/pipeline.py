"""From the split to model inputs: windows, prompts, cached states, batches.

Prompt sets: `train` holds every training window (the last one of each user
is exactly the validation prompt, so validation reuses it) and `test` holds
each user's test history (training items + the validation item, truncated).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from . import data
from .backbone import Backbone
from .config import Config
from .data import Catalog, Split
from .device import to
from .prompts import VIEWS, PromptBuilder, Template
from .statecache import StateStore, pad
from .tokenizer import Tokenizer


@dataclass
class Histories:
    users: np.ndarray  # [P] user row of each history
    items: list[np.ndarray]  # [P] catalog rows, oldest first


def train_histories(cfg: Config, split: Split, users: range) -> tuple[Histories, np.ndarray]:
    """All training windows, and for each user the index of its last window (= validation prompt)."""
    us, items, last = [], [], []
    for u in users:
        wins = data.training_windows(split.train[u], cfg.max_items, cfg.train.windows)
        for w in wins:
            us.append(u)
            items.append(w)
        last.append(len(items) - 1)
    return Histories(np.array(us), items), np.array(last)


def test_histories(cfg: Config, split: Split, users: range) -> Histories:
    return Histories(
        np.array(list(users)), [data.truncate(split.test_history(u), cfg.max_items) for u in users]
    )


class ViewPrompts:
    """One view's prompts for a set of histories, with the states entering `layer` cached."""

    def __init__(
        self,
        builder: PromptBuilder,
        histories: Histories,
        backbone: Backbone,
        layer: int,
        name: str,
        batch_tokens: int,
        window: int,
    ):
        # A view shows the newest `view_window` items of each history (MODEL.md step 3).
        built = [builder.build(h[-window:]) for h in histories.items]
        self.tokens = [t for t, _ in built]
        self.ends = [e for _, e in built]
        self.backbone, self.layer = backbone, layer
        # Layer 0's input is just the embedding: cheaper to recompute than to store.
        self.store: StateStore | None = None
        if layer > 0:
            self.store = StateStore.open_or_build(
                backbone, layer, self.tokens, f"{builder.view}-{name}", max_tokens=batch_tokens
            )

    def inputs(
        self, idx: list[int], positions: list[np.ndarray]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(h_in [B, T, d], out_index [B, M]): states entering the first adapted layer and the
        token positions to read out (right-padded with position 0)."""
        h = (
            self.store.batch(idx)
            if self.store is not None
            else self.backbone.embed(pad([self.tokens[i] for i in idx]))
        )
        return h, pad(positions)


class PromptSet:
    def __init__(self, histories: Histories, views: dict[str, ViewPrompts], window: int):
        self.histories, self.views, self.window = histories, views, window

    def __len__(self) -> int:
        return len(self.histories.items)

    def offset(self, i: int) -> int:
        """Where history i's view prompts start: its items before that only reach `c`. Zero
        for a model without views (the collaborative stage reads every position)."""
        n = len(self.histories.items[i])
        return n - min(n, self.window) if self.views else 0

    def targets_of(self, i: int) -> np.ndarray:
        """History i's teacher-forcing targets: the items after each view item but the last."""
        return self.histories.items[i][self.offset(i) + 1 :]

    def history(self, idx: list[int], positions: list[np.ndarray]) -> tuple:
        """The collaborative encoder's input (MODEL.md step 0): right-padded catalog rows
        [B, n], the item whose state each read-out pairs with [B, M], the last item [B]."""
        items = [self.histories.items[i] for i in idx]
        last = torch.tensor([len(it) - 1 for it in items])
        return pad(items), pad(positions), last

    def teacher_forcing_batch(self, idx: list[int]):
        """Inputs reading the state after every item but the last, and the next items as targets."""
        items = [self.histories.items[i] for i in idx]
        inputs = {v: vp.inputs(idx, [vp.ends[i][:-1] for i in idx]) for v, vp in self.views.items()}
        positions = [
            np.arange(self.offset(i), len(it) - 1) for i, it in zip(idx, items, strict=True)
        ]
        inputs["history"] = self.history(idx, positions)
        targets = pad([self.targets_of(i) for i in idx])
        mask = pad([np.ones(len(self.targets_of(i)), dtype=np.int64) for i in idx]).bool()
        users = torch.from_numpy(self.histories.users[idx])
        return users, inputs, targets, mask

    def last_state_batch(self, idx: list[int]):
        """Inputs reading only the state after the last item (the prompt a user is served with)."""
        inputs = {v: vp.inputs(idx, [vp.ends[i][-1:] for i in idx]) for v, vp in self.views.items()}
        lasts = [np.array([len(self.histories.items[i]) - 1]) for i in idx]
        inputs["history"] = self.history(idx, lasts)
        return torch.from_numpy(self.histories.users[idx]), inputs


def prompt_builders(
    cfg: Config, tokenizer: Tokenizer, catalog: Catalog, views: tuple[str, ...] = VIEWS
) -> dict[str, PromptBuilder]:
    return {
        v: PromptBuilder(tokenizer, catalog, v, Template(**cfg.views[v].template)) for v in views
    }


def prompt_set(
    cfg: Config,
    builders: dict[str, PromptBuilder],
    histories: Histories,
    backbone: Backbone,
    layer: int,
    name: str,
) -> PromptSet:
    window = cfg.view_window
    if window != cfg.max_items:
        name = f"{name}-v{window}"
    views = {
        v: ViewPrompts(b, histories, backbone, layer, name, cfg.train.state_batch_tokens, window)
        for v, b in builders.items()
    }
    return PromptSet(histories, views, window)


def bucketed_batches(
    lengths: np.ndarray, batch_size: int, rng: np.random.Generator, bucket: int = 32
) -> list[list[int]]:
    """Shuffled batches of similar-length prompts (less padding): shuffle, sort within buckets of
    `bucket` batches, cut, shuffle the batches."""
    order = rng.permutation(len(lengths))
    batches = []
    span = batch_size * bucket
    for s in range(0, len(order), span):
        chunk = order[s : s + span]
        chunk = chunk[np.argsort(-lengths[chunk], kind="stable")]
        batches += [chunk[i : i + batch_size].tolist() for i in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


@torch.no_grad()
def base_view_states(
    model, pset: PromptSet, n_prompts: int = 32, seed: int = 0
) -> dict[str, torch.Tensor]:
    """The base model's (no adapters) states after every item of a fixed sample of prompts,
    per view: what the view projections see at the start of training."""
    idx = sorted(
        np.random.default_rng(seed)
        .choice(len(pset), min(n_prompts, len(pset)), replace=False)
        .tolist()
    )
    out = {}
    for v, vp in pset.views.items():
        states = []
        for s in range(0, len(idx), 8):
            states += base_states_after_items(model, vp, idx[s : s + 8])
        out[v] = torch.cat(states)
    return out


@torch.no_grad()
def base_states_after_items(model, vp: ViewPrompts, idx: list[int]) -> list[torch.Tensor]:
    """The base model's (no adapters) states after every item of prompts `idx` of one view,
    one [n_items, d] tensor per prompt."""
    h, out_index = to(vp.inputs(idx, [vp.ends[i] for i in idx]), model.device)
    st = model.backbone.run(h, model.first_layer, model.backbone.config.n_layer, None, out_index)
    return [st[b, : len(vp.ends[i])] for b, i in enumerate(idx)]


def compute_text_states(
    backbone: Backbone, builder: PromptBuilder, n_items: int, batch: int = 64
) -> torch.Tensor:
    """t_i (SPEC step 7): the base backbone's state for the one-item semantic prompt [i]."""
    out = torch.empty(n_items, backbone.config.n_embd)
    with torch.no_grad():
        for s in range(0, n_items, batch):
            rows = range(s, min(s + batch, n_items))
            built = [builder.build(np.array([r])) for r in rows]
            tokens = pad([t for t, _ in built])
            last = torch.tensor([[len(t) - 1] for t, _ in built], device=backbone.device)
            out[s : s + len(rows)] = backbone.states(tokens, out_index=last)[:, 0].cpu()
    return out
