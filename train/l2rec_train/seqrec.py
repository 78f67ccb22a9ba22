"""Converged sequential ID baselines (SASRec, GRU4Rec, BERT4Rec) under our protocol.

    python -m l2rec_train.seqrec SASRec --seeds 0 1 2 [--out DIR]
    python -m l2rec_train.seqrec SASRec --windows all --text-init configs/v2-collab.json

`--text-init CONFIG` is the text-aware ID model a user would pick instead of an
LLM (as LLM-ESR and LLM2BERT4Rec start theirs): the item embeddings start from
the backbone's text states of the items (the texts CONFIG renders: genres, cap),
reduced to `--dim` by PCA and scaled to the default initialization's spread,
then train as ID embeddings.

Our own implementations, not RecBole's, for one reason: RecBole's sequential
trainers expand every prefix into its own sample, which costs 150-210 s per
epoch on one thread here, so its runs were capped at a few epochs while
validation still rose (docs/RESULTS.md, v1). These follow Klenitskiy and
Vasilev (RecSys 2023): full-softmax cross-entropy on *every* position of the
user's last `max_len + 1` training items, one pass per user per epoch (a few
seconds), and early stopping on validation NDCG@10 with a patience that never
binds before validation has flattened (`--patience` epochs without a new best;
`--max-epochs` is a guard, and a run that reaches it says so).

Same split (data.load), same history cap (50), same ranking (metrics.ranks:
full catalog, the user's earlier items excluded, ties to the lower row) as
the L2Rec trainer. Writes `<out>/<MODEL>-seed<S>.json` per run (curves
included) and `<out>/<MODEL>.json` with the mean and standard error over seeds.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from . import data, metrics, paths
from .averaging import ParamAverage


class SASRec(nn.Module):
    """Kang and McAuley's self-attentive encoder; item 0 is padding, catalog row r is item r+1."""

    CAUSAL = True  # a position attends to earlier ones only
    EXTRA_ITEMS = 0  # embeddings after the catalog's (BERT4Rec: its mask)

    def __init__(self, n_items: int, d: int, max_len: int, blocks: int, heads: int, dropout: float):
        super().__init__()
        self.n_items = n_items
        self.item = nn.Embedding(n_items + 1 + self.EXTRA_ITEMS, d, padding_idx=0)
        self.pos = nn.Embedding(max_len, d)
        layer = nn.TransformerEncoderLayer(
            d, heads, 4 * d, dropout, batch_first=True, norm_first=True, activation="gelu"
        )
        self.encoder = nn.TransformerEncoder(layer, blocks, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d)
        self.drop = nn.Dropout(dropout)
        nn.init.normal_(self.item.weight, std=d**-0.5)

    def forward(self, seq: torch.Tensor) -> torch.Tensor:
        """States [B, T, d] after every position of left-padded sequences [B, T]."""
        T = seq.shape[1]
        x = self.item(seq) * math.sqrt(self.item.embedding_dim) + self.pos.weight[:T]
        causal = torch.triu(torch.ones(T, T, dtype=torch.bool), 1) if self.CAUSAL else None
        h = self.encoder(self.drop(x), mask=causal, src_key_padding_mask=seq == 0)
        return self.norm(h)

    def scores(self, h: torch.Tensor) -> torch.Tensor:
        return h @ self.item.weight[1 : self.n_items + 1].T


class GRU4Rec(nn.Module):
    def __init__(self, n_items: int, d: int, max_len: int, blocks: int, heads: int, dropout: float):
        super().__init__()
        self.item = nn.Embedding(n_items + 1, d, padding_idx=0)
        self.drop = nn.Dropout(dropout)
        self.gru = nn.GRU(d, d, num_layers=blocks, batch_first=True)
        nn.init.normal_(self.item.weight, std=d**-0.5)

    def forward(self, seq: torch.Tensor) -> torch.Tensor:
        return self.gru(self.drop(self.item(seq)))[0]  # left padding: zeros before the items

    def scores(self, h: torch.Tensor) -> torch.Tensor:
        return h @ self.item.weight[1:].T


class BERT4Rec(SASRec):
    """Sun et al.'s bidirectional encoder trained as a cloze: masked items of the window
    are predicted from both sides; served with a mask after the history. SASRec's layers
    without the causal mask; item n+1 is the mask."""

    CAUSAL = False
    EXTRA_ITEMS = 1
    MASK_RATIO = 0.2

    @property
    def mask_id(self) -> int:
        return self.n_items + 1

    def cloze(self, x: torch.Tensor, y: torch.Tensor, gen: torch.Generator):
        """(inputs, targets) of a batch: the window's items (y's, the last max_len), a
        random 20% of them masked, or only the last one in half of the windows (what
        serving asks); targets at the masked positions, -1 elsewhere."""
        items = torch.where(y >= 0, y + 1, torch.zeros_like(y))
        real = items > 0
        masked = (torch.rand(items.shape, generator=gen) < self.MASK_RATIO) & real
        last_only = torch.rand(len(items), generator=gen) < 0.5
        last = torch.zeros_like(masked)
        last[:, -1] = real[:, -1]
        masked = torch.where(last_only[:, None], last, masked | (last & ~masked.any(1, True)))
        inputs = torch.where(masked, torch.full_like(items, self.mask_id), items)
        return inputs, torch.where(masked, y, torch.full_like(y, -1))

    def last_state(self, hist: list[np.ndarray], max_len: int) -> torch.Tensor:
        seq = left_pad(hist, max_len - 1)
        seq = torch.cat([seq, torch.full((len(hist), 1), self.mask_id)], dim=1)
        return self(seq)[:, -1]


MODELS = {"SASRec": SASRec, "GRU4Rec": GRU4Rec, "BERT4Rec": BERT4Rec}


def left_pad(seqs: list[np.ndarray], length: int) -> torch.Tensor:
    """Catalog rows -> item ids (row + 1), left-padded with 0 to `length`."""
    out = np.zeros((len(seqs), length), dtype=np.int64)
    for b, s in enumerate(seqs):
        s = s[-length:]
        if len(s):
            out[b, length - len(s) :] = s + 1
    return torch.from_numpy(out)


def training_pairs(
    split: data.Split, max_len: int, windows: str = "last"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs and next-item targets (catalog rows, -1 = no target) of each user's training
    windows of `max_len + 1` items: the last one, or all (`data.training_windows`)."""
    inputs, targets = [], []
    for s in split.train:
        for w in data.training_windows(s, max_len + 1, windows):
            inputs.append(w[:-1])
            targets.append(w[1:])
    x = left_pad(inputs, max_len)
    y = left_pad(targets, max_len) - 1  # padding -> -1, ignored by the loss
    return x, y


@torch.no_grad()
def evaluate(model: nn.Module, split: data.Split, phase: str, max_len: int) -> torch.Tensor:
    """Per-user ranks of the `phase` target, the user's earlier items excluded."""
    model.eval()
    users = range(len(split))
    hist = [split.seen_items(u, phase) for u in users]
    targets = torch.from_numpy(split.valid if phase == "valid" else split.test)
    out = []
    for s in range(0, len(split), 256):
        j = list(range(s, min(s + 256, len(split))))
        if hasattr(model, "last_state"):
            h = model.last_state([hist[u] for u in j], max_len)
        else:
            h = model(left_pad([hist[u] for u in j], max_len))[:, -1]
        out.append(metrics.ranks(model.scores(h), targets[j], [hist[u] for u in j]))
    return torch.cat(out)


def text_embeddings(config_path: str, data_path: str | None, d: int) -> torch.Tensor:
    """Item embeddings [N, d] from the backbone's text states of the items (the texts the
    L2Rec config renders): the top `d` principal directions, scaled to std d**-0.5."""
    from .backbone import Backbone
    from .config import Config
    from .context import adopt_dataset_prompts, text_states
    from .pipeline import prompt_builders
    from .tokenizer import Tokenizer

    cfg = Config.load(config_path)
    if data_path is not None:
        cfg.data = str(Path(data_path).resolve())
    adopt_dataset_prompts(cfg)
    catalog, _ = data.load(cfg.data or None, cfg.text_genres, cfg.max_text_chars)
    builder = prompt_builders(cfg, Tokenizer.load(), catalog, ("semantic",))["semantic"]
    t = text_states(Backbone(), builder, len(catalog)).double()
    t = t - t.mean(0)
    _, _, v = torch.linalg.svd(t, full_matrices=False)
    z = t @ v[:d].T
    return (z / z.std() * d**-0.5).float()


def train_one(model_name: str, split: data.Split, n_items: int, seed: int, args) -> dict:
    torch.manual_seed(seed)
    np.random.seed(seed)
    model = MODELS[model_name](
        n_items, args.dim, args.max_len, args.blocks, args.heads, args.dropout
    )
    if args.text_init is not None:
        with torch.no_grad():
            model.item.weight[1 : n_items + 1] = args.text_vectors
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    average = ParamAverage(list(model.parameters()), args.ema) if args.ema > 0 else None
    x, y = training_pairs(split, args.max_len, args.windows)
    gen = torch.Generator().manual_seed(seed)
    best, best_epoch, best_state, curve, t0 = -1.0, -1, None, [], time.time()
    epoch = 0
    for epoch in range(args.max_epochs):
        model.train()
        order = torch.randperm(len(x), generator=gen)
        for s in range(0, len(order), args.batch_size):
            j = order[s : s + args.batch_size]
            inputs, targets = x[j], y[j]
            if hasattr(model, "cloze"):
                inputs, targets = model.cloze(inputs, targets, gen)
            h = model(inputs)
            mask = targets >= 0
            loss = F.cross_entropy(model.scores(h[mask]), targets[mask])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if average is not None:
                average.update()
        with average.swapped_in() if average is not None else nullcontext():
            valid = metrics.from_ranks(evaluate(model, split, "valid", args.max_len))["NDCG@10"]
            if valid > best:
                best, best_epoch = valid, epoch
                best_state = {k: v.clone() for k, v in model.state_dict().items()}
        curve.append(round(valid, 5))
        if epoch - best_epoch >= args.patience:
            break
        if args.progress and epoch % 10 == 0:
            print(
                f"{model_name} seed {seed} epoch {epoch}: valid NDCG@10 {valid:.4f} (best {best:.4f} @ {best_epoch})",
                file=sys.stderr,
            )
    model.load_state_dict(best_state)
    valid_ranks = evaluate(model, split, "valid", args.max_len)
    test_ranks = evaluate(model, split, "test", args.max_len)
    return {
        "model": model_name,
        "seed": seed,
        "valid": metrics.from_ranks(valid_ranks),
        "test": metrics.from_ranks(test_ranks),
        "test_ranks": test_ranks.tolist(),
        "best_epoch": best_epoch,
        "epochs_run": epoch + 1,
        "stopped_by": "patience" if epoch - best_epoch >= args.patience else "max_epochs",
        "valid_ndcg10_by_epoch": curve,
        "train_seconds": round(time.time() - t0, 1),
    }


def main(argv=None) -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("model", choices=sorted(MODELS))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--out", type=Path, default=paths.cache_dir() / "runs" / "seqrec")
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--blocks", type=int, default=2)
    p.add_argument("--heads", type=int, default=1)
    p.add_argument("--dropout", type=float, default=0.3)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--max-len", type=int, default=50)
    p.add_argument("--name", default="", help="output file stem (default: the model)")
    p.add_argument("--windows", choices=["last", "all"], default="last")
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--patience", type=int, default=60)
    p.add_argument(
        "--ema",
        type=float,
        default=0.0,
        metavar="DECAY",
        help="select and keep a moving average of the weights (decay per step; 0: off)",
    )
    p.add_argument("--max-epochs", type=int, default=3000)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--data", default=None, help="dataset.json or its directory (ml-100k)")
    p.add_argument("--quiet", dest="progress", action="store_false")
    p.add_argument(
        "--text-init",
        default=None,
        metavar="CONFIG",
        help="start item embeddings from the backbone's text states (the L2Rec config's texts)",
    )
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    catalog, split = data.load(args.data)
    args.text_vectors = (
        text_embeddings(args.text_init, args.data, args.dim) if args.text_init else None
    )
    args.out.mkdir(parents=True, exist_ok=True)
    runs = []
    for seed in args.seeds:
        run = train_one(args.model, split, len(catalog), seed, args)
        run["command"] = shlex.join([sys.executable, "-m", "l2rec_train.seqrec", *sys.argv[1:]])
        run["hyperparameters"] = {
            k: v for k, v in vars(args).items() if k not in ("out", "seeds", "name", "text_vectors")
        }
        (args.out / f"{args.name or args.model}-seed{seed}.json").write_text(json.dumps(run) + "\n")
        runs.append(run)
        print(json.dumps(metrics.brief(run)))
    fields = ("seed", "valid", "test", "best_epoch", "epochs_run", "stopped_by", "train_seconds")
    summary = {"model": args.model, "seeds": args.seeds, **metrics.summarize_seeds(runs, fields)}
    (args.out / f"{args.name or args.model}.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary["test"]))


if __name__ == "__main__":
    main()
