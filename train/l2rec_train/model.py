"""L2Rec (SPEC): per-user gates over LoRA experts in two views, fusion, item scoring.

Training-only reparametrization: the backbone's final states are badly
conditioned for a linear head (the output norm's weights reach ~300; a few
dimensions dominate every vector, and differently in each view). Each
projection therefore reads a standardized state `(h - mu) * inv_sigma`, with
fixed per-dimension statistics of what it reads: the base model's view states
on sample training prompts for `P_v`, the item text states for `Q` (sigma
floored at its median, so no dimension is amplified more than the typical
one). That is an affine map of h, so export folds it back into SPEC's plain
`z = P h + p`: `P = P' diag(inv_sigma)`, `p = p' - P mu`.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .backbone import Backbone
from .config import Config
from .prompts import VIEWS


def standardizer(states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-dimension mean and 1/std of states [N, d]; std floored at its median."""
    mu = states.mean(0)
    sigma = states.std(0)
    sigma = torch.maximum(sigma, sigma.median())
    return mu, 1.0 / sigma


def topk_gate(logits: torch.Tensor, k: int) -> torch.Tensor:
    """SPEC step 1: keep the k largest logits (ties: lower expert index), softmax over them."""
    order = torch.sort(-logits, dim=-1, stable=True).indices[..., :k]  # stable: lower index first
    weights = torch.softmax(logits.gather(-1, order), dim=-1)
    return torch.zeros_like(logits).scatter(-1, order, weights)


class LoraExperts(nn.Module):
    """K LoRA experts over the adapted weights: A [K, r, n_in], B [K, n_out, r] per (layer, module)."""

    def __init__(
        self, n_experts: int, rank: int, alpha: float, targets: dict[str, tuple[int, int]]
    ):
        super().__init__()
        self.n_experts, self.rank, self.alpha = n_experts, rank, alpha
        self.a = nn.ParameterDict()
        self.b = nn.ParameterDict()
        for key, (n_in, n_out) in targets.items():
            a = torch.empty(n_experts, rank, n_in)
            for e in range(
                n_experts
            ):  # PEFT's init: A kaiming-uniform, B zero (start at the base model)
                nn.init.kaiming_uniform_(a[e], a=math.sqrt(5))
            self.a[key] = nn.Parameter(a)
            self.b[key] = nn.Parameter(torch.zeros(n_experts, n_out, rank))

    @staticmethod
    def key(layer: int, module: str) -> str:
        return f"{layer}_{module}"  # ParameterDict keys may not contain dots

    def hook(self, gates: torch.Tensor):
        """LoRA hook for Backbone: adds sum_k g[b,k] (alpha/r) B_k A_k x per batch row b."""
        scale = gates * (self.alpha / self.rank)  # [B, K]
        K, r = self.n_experts, self.rank

        def lora(layer: int, module: str, x: torch.Tensor) -> torch.Tensor | None:
            key = self.key(layer, module)
            if key not in self.a:
                return None
            a, b = self.a[key], self.b[key]
            ax = x @ a.reshape(K * r, -1).T  # [B, T, K*r]
            ax = (ax.unflatten(-1, (K, r)) * scale[:, None, :, None]).flatten(-2)
            return ax @ b.permute(0, 2, 1).reshape(K * r, -1)  # [B, T, n_out]

        return lora


class CollabEncoder(nn.Module):
    """MODEL.md step 0: a GRU over the item vectors e_i of the history, oldest first.
    Its state after item t is the user's collaborative state c_t [d_r]."""

    def __init__(self, d_r: int, dropout: float):
        super().__init__()
        self.gru = nn.GRU(d_r, d_r, batch_first=True)
        self.drop = nn.Dropout(dropout)

    def forward(self, e: torch.Tensor) -> torch.Tensor:
        """States after every item [B, n, d_r] of right-padded item vectors [B, n, d_r]
        (right padding never reaches a real position's state)."""
        return self.gru(self.drop(e))[0]


class AttentionEncoder(nn.Module):
    """MODEL.md step 0 with `encoder: attention`: SASRec's causal self-attention (Kang and
    McAuley) over the item vectors e_i, oldest first, in place of the GRU: a learned
    position per item from the oldest, pre-norm blocks of one head with a GELU
    feed-forward of 4 d_r, and a final layer norm. Its state after item t is c_t [d_r]."""

    BLOCKS = 2

    def __init__(self, d_r: int, dropout: float, max_items: int):
        super().__init__()
        self.pos = nn.Parameter(torch.zeros(max_items, d_r))
        layer = nn.TransformerEncoderLayer(
            d_r, 1, 4 * d_r, dropout, batch_first=True, norm_first=True, activation="gelu"
        )
        self.blocks = nn.TransformerEncoder(layer, self.BLOCKS, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d_r)
        self.drop = nn.Dropout(dropout)
        nn.init.normal_(self.pos, std=0.02)

    def forward(self, e: torch.Tensor) -> torch.Tensor:
        """States after every item [B, n, d_r] of right-padded item vectors [B, n, d_r]
        (causal: right padding never reaches a real position's state)."""
        n = e.shape[1]
        causal = torch.triu(torch.ones(n, n, dtype=torch.bool, device=e.device), 1)
        return self.norm(self.blocks(self.drop(e + self.pos[:n]), mask=causal))


class L2Rec(nn.Module):
    def __init__(self, cfg: Config, backbone: Backbone, n_users: int, text_states: torch.Tensor):
        super().__init__()
        self.cfg = cfg
        self.backbone = (
            backbone  # plain attribute: frozen, never in state_dict, never synced by DDP
        )
        d, d_r, d_phi = backbone.config.n_embd, cfg.d_r, cfg.d_phi
        n_items = text_states.shape[0]
        adapted = any(cfg.views[v].experts > 0 for v in VIEWS)
        # Layers below this one are identical for every user: their states come from the cache.
        self.first_layer = min(cfg.lora.layers) if adapted else backbone.config.n_layer

        targets = {
            LoraExperts.key(L, m): backbone.config.module_shape(m)
            for L in cfg.lora.layers
            for m in cfg.lora.modules
        }
        self.experts = nn.ModuleDict(
            {
                v: LoraExperts(cfg.views[v].experts, cfg.lora.rank, cfg.lora.alpha, targets)
                for v in VIEWS
                if cfg.views[v].experts > 0
            }
        )
        self.gates = nn.ModuleDict(
            {v: nn.Linear(d_phi, cfg.views[v].experts) for v in self.experts}
        )
        self.phi = nn.Embedding(n_users, d_phi)
        # v2: the collaborative encoder, and the gates' read of its state (A_v).
        self.encoder = {
            "gru": lambda: CollabEncoder(d_r, cfg.encoder_dropout),
            "attention": lambda: AttentionEncoder(d_r, cfg.encoder_dropout, cfg.max_items),
            "none": lambda: None,
        }[cfg.encoder]()
        self.gate_reads = nn.ModuleDict(
            {
                v: nn.Linear(d_r, cfg.views[v].experts, bias=False)
                for v in self.experts
                if self.encoder is not None
            }
        )
        self.proj = nn.ModuleDict({v: nn.Linear(d, d_r) for v in VIEWS})
        self.fusion = nn.Linear(3 * d_r, d_r)
        self.item_id = nn.Embedding(n_items, d_r)
        self.text_proj = nn.Linear(d, d_r)
        self.item_bias = nn.Parameter(torch.zeros(n_items))
        self.register_buffer("text_states", text_states.float(), persistent=False)
        # Standardizers (see module doc): text states now, views via set_view_statistics().
        for name in ("text",) + VIEWS:
            mu, inv_sigma = standardizer(text_states.float())
            self.register_buffer(f"mean_{name}", mu)
            self.register_buffer(f"inv_std_{name}", inv_sigma)
        self._init_weights()

    def _init_weights(self) -> None:
        # Inputs are standardized, so this gives z and e entries of variance ~ 1/sqrt(d_r):
        # scores u . e start with unit-order spread.
        std = self.cfg.d_r**-0.25 / math.sqrt(self.backbone.config.n_embd)
        for lin in list(self.proj.values()) + [self.text_proj]:
            nn.init.normal_(lin.weight, std=std)
            nn.init.zeros_(lin.bias)
        if self.encoder is not None:
            # v2: the views' projections start at zero, so u = c: training starts from stage
            # 1's model and the views add what they can (as LoRA's B starts at zero).
            for lin in self.proj.values():
                nn.init.zeros_(lin.weight)
        nn.init.normal_(self.item_id.weight, std=0.01)
        nn.init.normal_(self.fusion.weight, std=0.01)
        nn.init.zeros_(self.fusion.bias)
        if self.cfg.phi_init == "zero":  # v2: phi is a per-user offset, zero until refined
            nn.init.zeros_(self.phi.weight)
        else:
            nn.init.normal_(self.phi.weight, std=0.1)
        for a in self.gate_reads.values():
            nn.init.normal_(a.weight, std=1.0 / math.sqrt(self.cfg.d_r))
        for g in self.gates.values():
            nn.init.normal_(g.weight, std=1.0 / math.sqrt(self.cfg.d_phi))
            nn.init.zeros_(g.bias)

    @property
    def device(self) -> torch.device:
        """Where the parameters are (`device.place` moves them and the backbone together)."""
        return self.item_bias.device

    @torch.no_grad()
    def init_item_bias(self, counts: np.ndarray) -> None:
        """Starts the item bias at log-popularity (centered): the full-softmax optimum of a
        model without users, i.e. the Pop baseline. A few epochs of AdamW at lr ~1e-3 could
        not move a bias far enough to learn ml-100k's popularity range (~6 nats) from zero."""
        b = torch.log1p(torch.as_tensor(counts, dtype=torch.float32))
        self.item_bias.copy_(b - b.mean())

    # -- SPEC steps -------------------------------------------------------------

    def gate(
        self, view: str, phi: torch.Tensor, c: torch.Tensor | None = None
    ) -> torch.Tensor | None:
        """Step 1: l_v = A_v c + G_v phi + b_v (v1: no A_v c), top-k softmax."""
        if view not in self.experts:
            return None
        logits = self.gates[view](phi)
        if view in self.gate_reads:
            logits = logits + self.gate_reads[view](c)
        return topk_gate(logits, self.cfg.views[view].k)

    def collab_states(self, items: torch.Tensor, vectors: torch.Tensor | None = None):
        """Step 0: c after every item [B, n, d_r] of right-padded catalog rows [B, n]
        (`vectors`: the item vectors to read, default `item_vectors()`)."""
        vectors = self.item_vectors() if vectors is None else vectors
        return self.encoder(vectors[items])

    def view_states(
        self,
        view: str,
        phi: torch.Tensor,
        c: torch.Tensor | None,
        h_in: torch.Tensor,
        out_index: torch.Tensor,
    ) -> torch.Tensor:
        """Steps 2-4: the perturbed backbone from the cached layer on, states at out_index [B, M]."""
        g = self.gate(view, phi, c)
        lora = self.experts[view].hook(g) if g is not None else None
        return self.backbone.run(
            h_in, self.first_layer, self.backbone.config.n_layer, lora, out_index
        )

    def standardizer_of(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(mu, inv_sigma) that projection `name` ("text" or a view) reads its input through."""
        return getattr(self, f"mean_{name}"), getattr(self, f"inv_std_{name}")

    def set_view_statistics(self, view: str, states: torch.Tensor) -> None:
        mu, inv_sigma = standardizer(states.float())
        getattr(self, f"mean_{view}").copy_(mu)
        getattr(self, f"inv_std_{view}").copy_(inv_sigma)

    def standardize(self, name: str, h: torch.Tensor) -> torch.Tensor:
        mu, inv_sigma = self.standardizer_of(name)
        return (h - mu) * inv_sigma

    def project(self, view: str, h: torch.Tensor) -> torch.Tensor:
        return self.proj[view](self.standardize(view, h))

    def fuse(self, z_b: torch.Tensor, z_s: torch.Tensor) -> torch.Tensor:
        beta = torch.sigmoid(self.fusion(torch.cat([z_b, z_s, z_b * z_s], dim=-1)))
        return beta * z_b + (1 - beta) * z_s

    def item_vectors(self, keep_ids: torch.Tensor | None = None) -> torch.Tensor:
        """e_i = E[i] + Q t_i + q [n_items, d_r]; where `keep_ids` [n_items] is 0, E[i] is
        left out (the item served by its text alone, as one the bundle never saw)."""
        ids = self.item_id.weight if keep_ids is None else self.item_id.weight * keep_ids[:, None]
        if not self.cfg.item_text:  # ablation: ids only
            return ids
        return ids + self.text_proj(self.standardize("text", self.text_states))

    def scores(
        self,
        u: torch.Tensor,
        vectors: torch.Tensor | None = None,
        keep_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """s(u, i) = u . e_i + b_i; `vectors` as from `item_vectors(keep_ids)`, whose zeros
        leave out the bias too."""
        vectors = self.item_vectors() if vectors is None else vectors
        bias = self.item_bias if keep_ids is None else self.item_bias * keep_ids
        return u @ vectors.T + bias

    def user_vectors(
        self, users: torch.Tensor, inputs: dict, phi: torch.Tensor | None = None
    ) -> torch.Tensor:
        """u [B, M, d_r] at every requested position. inputs[view] = (h_in [B,T,d], out_index
        [B,M]); inputs["history"] = (items [B,n], positions [B,M], last [B]): the catalog rows
        and, for each read-out, the item whose collaborative state pairs with it."""
        phi = self.phi(users) if phi is None else phi
        c_at, c_gate = None, None
        if self.encoder is not None:
            items, positions, last = inputs["history"]
            c_all = self.collab_states(items)
            c_at = c_all.gather(1, positions[..., None].expand(-1, -1, c_all.shape[-1]))
            c_gate = c_all[
                torch.arange(len(last), device=last.device), last
            ]  # the whole prompt's state
        states = {v: self.view_states(v, phi, c_gate, *inputs[v]) for v in self.active_views}
        return self.preference(states, c_at)

    @property
    def active_views(self) -> tuple[str, ...]:
        """The views `u` reads: both, one in a single-view ablation, none for "collab"."""
        if self.cfg.fusion == "adaptive":
            return VIEWS
        return () if self.cfg.fusion == "collab" else (self.cfg.fusion,)

    def preference(
        self, states: dict[str, torch.Tensor], c: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Steps 5-6: u from the view states (MODEL.md's fusion, or one view's z in an
        ablation), plus the collaborative state c when the model has an encoder (v2)."""
        z = {v: self.project(v, states[v]) for v in self.active_views}
        if self.cfg.fusion == "collab":
            return c
        u = z[self.cfg.fusion] if self.cfg.fusion != "adaptive" else None
        if u is None:
            u = self.fuse(z["behavioral"], z["semantic"])
        return u if c is None else u + c

    def forward(self, users: torch.Tensor, inputs: dict, targets: torch.Tensor, mask: torch.Tensor):
        """Teacher-forced loss: full-softmax CE of s(u_t, .) against targets [B, M] where mask,
        plus L2 on the batch users' phi. Returns (loss, ce) on the model's device."""
        u = self.user_vectors(users, inputs)
        logits = self.scores(u[mask])
        ce = F.cross_entropy(logits, targets[mask])
        l2 = self.phi(users).pow(2).sum(-1).mean()
        return ce + self.cfg.train.phi_l2 * l2, ce.detach()
