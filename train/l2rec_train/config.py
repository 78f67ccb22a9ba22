"""Training configuration: a JSON file (configs/*.json), every field optional.

The model part mirrors the bundle manifest (views, lora, dims, history); the
`train` part is the optimizer and schedule.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .backbone import MODULES
from .prompts import DEFAULT_TEMPLATES, VIEWS

FUSIONS = ("adaptive",) + VIEWS


@dataclass
class ViewConfig:
    experts: int = 4  # K_v (0: the view runs on the base backbone)
    k: int = 2  # k_v, experts active per user
    template: dict = field(default_factory=dict)  # {"prefix": ..., "sep": ...}


@dataclass
class LoraConfig:
    rank: int = 8
    alpha: float = 16.0
    layers: list = field(default_factory=lambda: [14, 15, 16, 17])
    modules: list = field(default_factory=lambda: ["attn_q", "attn_v"])


@dataclass
class TrainConfig:
    epochs: int = 20
    batch_size: int = 16  # windows (users) per optimizer step, over all ranks
    lr: float = 1e-3  # heads, gates, phi, item tables
    lr_lora: float = 5e-4  # experts
    weight_decay: float = 0.01  # AdamW, not applied to phi (phi has its own L2)
    phi_l2: float = 1e-3  # L2 on phi (SPEC): phi_l2 * mean_u ||phi_u||^2
    grad_clip: float = 1.0
    eval_every: int = 1  # epochs between validations (model selection on NDCG@10)
    patience: int = 0  # stop after this many validations without improvement (0: never)
    max_users: int = 0  # >0: only the first max_users users (smoke tests)
    max_steps: int = 0  # >0: stop an epoch after this many steps (smoke tests)
    threads: int = 0  # torch threads per process (0: leave torch's default)
    state_batch_tokens: int = 4096  # padded tokens per batch when building state caches
    warmup_epochs: int = 0  # heads-only epochs on cached base-model states before the LoRA epochs
    lr_warmup: float = 0.0  # heads' learning rate during the warmup (0: lr)
    bias_init: str = (
        "popularity"  # item bias at start: "popularity" (log counts of training items) or "zero"
    )
    windows: str = "last"  # training windows per user: "last" or "all" (data.training_windows)


@dataclass
class Config:
    name: str = "l2rec-ml-100k"
    seed: int = 0
    views: dict = field(default_factory=lambda: {v: ViewConfig() for v in VIEWS})
    lora: LoraConfig = field(default_factory=LoraConfig)
    d_r: int = 64
    d_phi: int = 16
    max_items: int = 50  # history.max_items: items a prompt holds
    # Ablations only: "adaptive" is SPEC's fusion; "behavioral" or "semantic" scores with that
    # view's z alone (the other view is never run). Only "adaptive" models export to a bundle.
    fusion: str = "adaptive"
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self):
        self.views = {
            v: (c if isinstance(c, ViewConfig) else ViewConfig(**c)) for v, c in self.views.items()
        }
        if isinstance(self.lora, dict):
            self.lora = LoraConfig(**self.lora)
        if isinstance(self.train, dict):
            self.train = TrainConfig(**self.train)
        for v in VIEWS:
            self.views.setdefault(v, ViewConfig())
            vc = self.views[v]
            vc.template = {**DEFAULT_TEMPLATES[v], **(vc.template or {})}
        self.validate()

    def validate(self) -> None:
        if set(self.views) != set(VIEWS):
            raise ValueError(f"views must be exactly {VIEWS}, got {sorted(self.views)}")
        for v, c in self.views.items():
            if (
                c.experts < 0
                or (c.experts == 0 and c.k != 0)
                or (c.experts > 0 and not 1 <= c.k <= c.experts)
            ):
                raise ValueError(f"view {v}: need 1 <= k <= experts, or experts = k = 0")
        bad = [m for m in self.lora.modules if m not in MODULES]
        if bad:
            raise ValueError(f"unknown LoRA modules {bad}; choose from {MODULES}")
        if self.lora.rank < 1 or not self.lora.layers:
            raise ValueError("lora needs rank >= 1 and at least one layer")
        if self.train.bias_init not in ("popularity", "zero"):
            raise ValueError(
                f"train.bias_init must be popularity or zero, got {self.train.bias_init!r}"
            )
        if self.fusion not in FUSIONS:
            raise ValueError(f"fusion must be one of {FUSIONS}, got {self.fusion!r}")
        if self.max_items < 2:
            raise ValueError("max_items must be >= 2")

    @property
    def lowest_adapted_layer(self) -> int:
        return min(self.lora.layers)

    def to_dict(self) -> dict:
        return asdict(self)

    @staticmethod
    def load(path: str | Path) -> Config:
        return Config(**json.loads(Path(path).read_text()))
