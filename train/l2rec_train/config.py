"""Training configuration: a JSON file (configs/*.json), every field optional.

The model part mirrors the bundle manifest (views, lora, dims, history); the
`train` part is the optimizer and schedule.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .backbone import MODULES
from .device import check_names as check_device_names
from .prompts import DEFAULT_TEMPLATES, VIEWS

FUSIONS = ("adaptive",) + VIEWS + ("collab",)
ENCODERS = ("none", "gru", "attention")
RENDERS = ("id", "codes")


@dataclass
class ViewConfig:
    experts: int = 4  # K_v (0: the view runs on the base backbone)
    k: int = 2  # k_v, experts active per user
    template: dict = field(default_factory=dict)  # {"prefix": ..., "sep": ...}
    # v2, behavioral view only: "id" renders `#<id>`, "codes" the item's semantic-ID codes.
    render: str = "id"


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
    lr_user: float = 0.0  # phi and the gates (0: lr)
    lr_items: float = 0.0  # item id embeddings and biases (0: lr)
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
    # v2 stage 1 (collab.py): the encoder and item tables alone, early stopped on validation.
    lr_collab: float = 3e-3
    collab_windows: str = ""  # stage 1's training windows ("last" or "all"; "": `windows`)
    collab_batch_size: int = 128  # windows per step
    # Stage 1 leaves the newest N training items of every user out of its targets, so that
    # the LLM stages (whose targets are those items when N = view_items - 1) learn on c's
    # out-of-sample errors rather than on errors stage 1 has already fitted away.
    collab_holdout: int = 0
    # >0: select and keep a moving average of stage 1's weights (decay per step), not the
    # raw weights of one epoch (collab.ParamAverage).
    collab_ema: float = 0.0
    # >0: each stage-1 step serves this fraction of the catalog, drawn afresh, by its text
    # alone (E[i] and bias zeroed, as the runtime serves items the bundle never saw), so
    # that Q learns to place new items rather than only to refine learned ids.
    collab_id_dropout: float = 0.0
    collab_patience: int = 40  # epochs without a better validation NDCG@10 before stopping
    collab_max_epochs: int = 2000  # a guard only: runs stop by patience long before
    freeze_collab: bool = False  # v2: the LLM stages leave stage 1's parameters as selected
    # Where training runs (device.py): "cpu", "cuda", "cuda:N" or "auto"; --device overrides.
    device: str = "cpu"
    amp: str = "off"  # "bf16": bfloat16 autocast in training steps (evaluation stays f32)


@dataclass
class Config:
    name: str = "l2rec-ml-100k"
    seed: int = 0
    # The dataset (docs/DATA.md): a dataset.json or its directory; "": ml-100k's. The
    # trainer's --data overrides it and records the absolute path in the run's config.
    data: str = ""
    views: dict = field(default_factory=lambda: {v: ViewConfig() for v in VIEWS})
    lora: LoraConfig = field(default_factory=LoraConfig)
    d_r: int = 64
    d_phi: int = 16
    max_items: int = 50  # history.max_items: items the model reads (v1: the prompts)
    # v2: history.view_items, the newest items the views' prompts show (0: max_items); the
    # collaborative encoder reads all max_items. Shorter prompts, less backbone work.
    view_items: int = 0
    # Ablations only: "adaptive" is SPEC's fusion; "behavioral" or "semantic" scores with that
    # view's z alone (the other view is never run). Only "adaptive" models export to a bundle.
    fusion: str = "adaptive"
    # v2 (MODEL.md): "gru" adds the collaborative encoder (step 0): its state drives the
    # gates and joins u. "none" is v1.
    encoder: str = "none"
    encoder_dropout: float = 0.2
    phi_init: str = "normal"  # "normal" (v1: N(0, 0.1)) or "zero" (v2: a per-user offset)
    text_genres: bool = False  # v2: item texts name the item's genres
    max_text_chars: int = 0  # cap on an item text's characters (0: none)
    codes: dict = field(default_factory=dict)  # semantic IDs (codes.py): sizes, seed
    # Ablation only: False drops the text part of the item vectors (e_i = E[i]), so that
    # fusion "collab" is the model without any backbone computation. Never exported.
    item_text: bool = True
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
        check_device_names(self.train.device, self.train.amp)
        if not 0.0 <= self.train.collab_ema < 1.0:
            raise ValueError(f"train.collab_ema must be in [0, 1), got {self.train.collab_ema}")
        if not 0.0 <= self.train.collab_id_dropout < 1.0:
            raise ValueError(
                f"train.collab_id_dropout must be in [0, 1), got {self.train.collab_id_dropout}"
            )
        if self.train.collab_holdout < 0:
            raise ValueError(f"train.collab_holdout must be >= 0, got {self.train.collab_holdout}")
        if self.encoder not in ENCODERS:
            raise ValueError(f"encoder must be one of {ENCODERS}, got {self.encoder!r}")
        if self.phi_init not in ("normal", "zero"):
            raise ValueError(f"phi_init must be normal or zero, got {self.phi_init!r}")
        for v, c in self.views.items():
            if c.render not in RENDERS or (v == "semantic" and c.render != "id"):
                raise ValueError(f"view {v}: render must be one of {RENDERS} (semantic: id)")
        if self.fusion == "collab" and self.encoder == "none":
            raise ValueError('fusion "collab" scores with the encoder alone: set encoder "gru"')
        if self.fusion not in FUSIONS:
            raise ValueError(f"fusion must be one of {FUSIONS}, got {self.fusion!r}")
        if self.max_items < 2:
            raise ValueError("max_items must be >= 2")
        if self.view_items and not 2 <= self.view_items <= self.max_items:
            raise ValueError("view_items must be 0 (max_items) or in 2..=max_items")

    @property
    def view_window(self) -> int:
        """Items a view's prompt shows: the newest `view_items` (v2) or all `max_items`."""
        return self.view_items or self.max_items

    @property
    def version(self) -> int:
        """The MODEL.md version a bundle of this config follows."""
        v2 = (
            self.encoder != "none"
            or self.phi_init == "zero"
            or self.text_genres
            or self.max_text_chars > 0
            or self.view_items > 0
            or any(c.render != "id" for c in self.views.values())
        )
        return 2 if v2 else 1

    @property
    def lowest_adapted_layer(self) -> int:
        return min(self.lora.layers)

    def to_dict(self) -> dict:
        return asdict(self)

    @staticmethod
    def load(path: str | Path) -> Config:
        return Config(**json.loads(Path(path).read_text()))

    @staticmethod
    def for_run(
        path: str | Path, data: str | None = None, device: str | None = None, amp: str | None = None
    ) -> Config:
        """A command's config: the file, with `--data`, `--device` and `--amp` over it. One
        that cannot be (no file, an unknown key, a bad value) ends the process with one line
        naming the file."""
        try:
            cfg = Config.load(path)
            if data is not None:
                cfg.data = str(Path(data).resolve())
            cfg.train.device = device or cfg.train.device
            cfg.train.amp = amp or cfg.train.amp
            cfg.validate()
        except (OSError, ValueError, TypeError) as e:
            raise SystemExit(f"error: {path}: {e}") from None
        return cfg
