"""What a config builds: data, backbone, model and prompt sets (`Context`), and
a trained checkpoint loaded for inference. Trainer, evaluator and exporter all
start here; nothing here imports them (no import cycle in the package).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from . import data, device, paths
from . import distributed as dist_util
from .backbone import Backbone
from .config import Config
from .data import Catalog, Split
from .dataset import DataConfig
from .model import L2Rec
from .pipeline import (
    PromptSet,
    base_view_states,
    compute_text_states,
    prompt_builders,
    prompt_set,
    test_histories,
    train_histories,
)
from .prompts import DEFAULT_TEMPLATES, VIEWS
from .statecache import store_key
from .tokenizer import Tokenizer


@dataclass
class Context:
    """Everything built from a config: data, backbone, model, prompt sets."""

    cfg: Config
    catalog: Catalog
    split: Split
    backbone: Backbone
    builders: dict
    model: L2Rec
    users: range  # user rows trained (all, unless train.max_users)
    train_set: PromptSet
    valid_index: np.ndarray  # per trained user: its validation prompt in train_set

    @property
    def trained_user_rows(self) -> list[int]:
        return list(self.users)

    @property
    def trained_user_ids(self) -> list[str]:
        return [self.split.user_ids[u] for u in self.users]

    def test_set(self) -> PromptSet:
        hist = test_histories(self.cfg, self.split, self.users)
        return prompt_set(
            self.cfg,
            self.builders,
            hist,
            self.backbone,
            self.model.first_layer,
            f"test{self.cfg.max_items}",
        )


def text_states(backbone: Backbone, builder, n_items: int) -> torch.Tensor:
    """t_i for the catalog, cached on disk (keyed by backbone and prompts)."""
    prompts = [builder.build(np.array([r]))[0] for r in range(n_items)]
    path = paths.work_dir() / f"text-states-{store_key(backbone.sha256, -1, prompts)}.npy"
    if path.exists():
        return torch.from_numpy(np.load(path))
    if dist_util.rank() == 0:
        t = compute_text_states(backbone, builder, n_items)
        tmp = path.with_suffix(".tmp.npy")
        np.save(tmp, t.numpy())
        os.replace(tmp, path)
    dist_util.barrier()
    return torch.from_numpy(np.load(path))


def adopt_dataset_prompts(cfg: Config) -> Config:
    """A view whose template keeps the default prefix takes its dataset's first line
    (docs/DATA.md, prompts): a catalog of books is not shown as "Movies a user watched".
    ml-100k's own prompts are the defaults, so its configs read as before. Idempotent."""
    prompts = DataConfig.load(cfg.data or None).prompts
    for v in VIEWS:
        template = cfg.views[v].template
        if template["prefix"] == DEFAULT_TEMPLATES[v]["prefix"]:
            template["prefix"] = getattr(prompts, v)
    return cfg


def build_context(cfg: Config, seed_model: bool = True, codes: list[str] | None = None) -> Context:
    """Only the views the model reads get prompts and state caches (none for "collab").
    A behavioral view that renders codes needs them (stage 1 makes them: train.py)."""
    adopt_dataset_prompts(cfg)
    catalog, split = data.load(cfg.data or None, cfg.text_genres, cfg.max_text_chars)
    if cfg.views["behavioral"].render == "codes":
        if codes is None and cfg.fusion in ("adaptive", "behavioral"):
            raise ValueError("this config renders codes in the behavioral view: pass its codes")
        catalog = replace(catalog, codes=codes)
    tokenizer = Tokenizer.load()
    dev = device.resolve(cfg.train.device)
    backbone = Backbone().to(dev)  # the state caches are built where training runs
    semantic = prompt_builders(cfg, tokenizer, catalog, ("semantic",))["semantic"]
    t = text_states(backbone, semantic, len(catalog))
    if seed_model:
        torch.manual_seed(cfg.seed)  # same initial weights on every rank
    model = device.place(L2Rec(cfg, backbone, len(split), t), dev)
    builders = prompt_builders(cfg, tokenizer, catalog, model.active_views)
    n = len(split) if cfg.train.max_users <= 0 else min(cfg.train.max_users, len(split))
    users = range(n)
    if cfg.train.bias_init == "popularity":
        seen = np.concatenate([split.train[u] for u in users])
        model.init_item_bias(np.bincount(seen, minlength=len(catalog)))
    hist, valid_index = train_histories(cfg, split, users)
    train_set = prompt_set(
        cfg,
        builders,
        hist,
        backbone,
        model.first_layer,
        f"train-{cfg.train.windows}{cfg.max_items}",
    )
    for view, states in base_view_states(model, train_set, seed=cfg.seed).items():
        model.set_view_statistics(
            view, states
        )  # a checkpoint's own statistics replace these on load
    return Context(cfg, catalog, split, backbone, builders, model, users, train_set, valid_index)


def load_for_inference(checkpoint: Path, on: str | None = None) -> Context:
    """A checkpoint's model, on device `on` (default: the CPU, wherever it was trained)."""
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    cfg = Config(**state["config"])
    cfg.train.device = on or "cpu"
    ctx = build_context(cfg, codes=state.get("codes"))
    ctx.model.load_state_dict(state["model"])
    return ctx
