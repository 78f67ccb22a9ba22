"""Stage 1 of training a v2 model: the collaborative part alone, trained to convergence.

MODEL.md v2 step 0 reads the history with a GRU over the item vectors
e_i = E[i] + Q t_i + q; its state c joins u and drives the gates. This stage
trains those parts (encoder, E, Q, q, item bias) with `u = c` alone, full
softmax cross-entropy on every position of the training windows, and early
stopping on validation NDCG@10: seconds per epoch, no backbone pass beyond the
cached item text states. The LLM stages then start from it, and the stage
alone is the "model without its backbone" ablation:

    python -m l2rec_train.collab --config configs/v2-collab.json --seeds 0 1 2

writes `<out>/collab-seed<S>.json` (metrics, curve, per-user test ranks) and
`<out>/collab.json` (mean and standard error over seeds). `--cold-users 0.1` holds a
tenth of the users out of training entirely (issue #12's cold start) and reports what
they get from their own history against one fixed state for everyone. `--cold-items
0.1` holds a tenth of the catalog out instead: stage 1 trains as if those items did not
exist (out of every sequence, every softmax and every validation ranking), then serves
them as the runtime serves items the bundle never saw (`E[i] = 0`, bias 0: their text
alone) and reports the users whose test item is one of them. `train.collab_id_dropout`
trains for such items: each step serves a fresh draw of the catalog by text alone.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import shlex
import sys
import time
from contextlib import nullcontext
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from . import data, metrics, paths
from . import distributed as dist_util
from .averaging import ParamAverage
from .config import Config
from .device import AMPS, autocast, resolve_or_exit
from .statecache import pad

COLLAB_PARAMS = ("encoder.", "item_id.", "text_proj.", "item_bias")
BATCH_USERS = 256  # users scored at once (a [256, n_items] score matrix)
# The cold users (`--cold-users`) are drawn with this seed whatever the training seed, so
# every seed holds out the same users and their results pair.
COLD_USERS_SEED = 20261204
COLD_ITEMS_SEED = 20261205  # the same for `--cold-items`


def collab_parameters(model) -> list[torch.nn.Parameter]:
    return [p for n, p in model.named_parameters() if n.startswith(COLLAB_PARAMS)]


def windows_of(split: data.Split, users, cfg: Config) -> list[np.ndarray]:
    """Stage 1's training windows: `train.collab_windows`, else the LLM stages' `windows`,
    over each user's training items without the newest `train.collab_holdout`."""
    mode, held = cfg.train.collab_windows or cfg.train.windows, cfg.train.collab_holdout
    seqs = [split.train[u][:-held] if held > 0 else split.train[u] for u in users]
    return [w for s in seqs for w in data.training_windows(s, cfg.max_items, mode)]


@torch.no_grad()
def collab_ranks(
    model, split: data.Split, users, phase: str, max_items: int, hidden=()
) -> torch.Tensor:
    """Per-user ranks of the `phase` target scored with u = c (earlier items excluded, and
    the `hidden` catalog rows)."""
    u = last_states(model, split, users, phase, max_items)
    return ranks_of(model, split, users, phase, u, hidden)


@torch.no_grad()
def last_states(model, split: data.Split, users, phase: str, max_items: int) -> torch.Tensor:
    """c after each user's history before the `phase` target [len(users), d_r]."""
    model.eval()
    users, out = list(users), []
    for s in range(0, len(users), BATCH_USERS):
        hist = [
            data.truncate(split.seen_items(u, phase), max_items) for u in users[s : s + BATCH_USERS]
        ]
        c = model.collab_states(pad(hist).to(model.device))
        last = torch.tensor([len(h) - 1 for h in hist], device=model.device)
        out.append(c[torch.arange(len(hist), device=model.device), last])
    return torch.cat(out)


@torch.no_grad()
def ranks_of(
    model, split: data.Split, users, phase: str, u: torch.Tensor, hidden=()
) -> torch.Tensor:
    """Per-user ranks of the `phase` target scored with preference vectors u [len(users), d_r]
    (each user's earlier items excluded, and the `hidden` catalog rows)."""
    users, out = list(users), []
    targets = torch.from_numpy(split.valid if phase == "valid" else split.test)
    hidden = np.asarray(hidden, dtype=np.int64)
    for s in range(0, len(users), BATCH_USERS):
        j = users[s : s + BATCH_USERS]
        seen = [np.concatenate([split.seen_items(v, phase), hidden]) for v in j]
        out.append(metrics.ranks(model.scores(u[s : s + BATCH_USERS]), targets[j], seen))
    return torch.cat(out)


def collab_step(
    model,
    optimizer,
    windows: list[np.ndarray],
    amp: str,
    hidden: torch.Tensor | None = None,
    keep_ids: torch.Tensor | None = None,
) -> tuple[torch.Tensor, int]:
    """One optimizer step of stage 1 on a batch of windows (catalog rows, oldest first):
    full-softmax CE of u = c after every item but the last against the next item, the
    `hidden` catalog rows left out of the softmax, the items where `keep_ids` is 0 served
    by their text alone. Returns (ce, targets); ce stays on the model's device."""
    items = pad(windows).to(model.device)
    targets = pad([w[1:] for w in windows], value=-1).to(model.device)
    mask = targets >= 0
    with autocast(model.device, amp):
        vectors = model.item_vectors(keep_ids)  # once for the encoder and the softmax
        c = model.collab_states(items, vectors)[:, :-1]
        logits = model.scores(c[mask], vectors, keep_ids)
        if hidden is not None:
            logits = logits.index_fill(1, hidden.to(logits.device), -math.inf)
        ce = F.cross_entropy(logits, targets[mask])
    optimizer.zero_grad(set_to_none=True)
    ce.backward()
    optimizer.step()
    return ce.detach(), sum(len(w) - 1 for w in windows)


def id_dropout_mask(model, rate: float, generator: torch.Generator) -> torch.Tensor | None:
    """`train.collab_id_dropout`'s draw for one step: 0 for the items served by text alone,
    1 for the rest [n_items] on the model's device; None when the rate is 0."""
    if rate <= 0:
        return None
    n = model.item_bias.shape[0]
    keep = torch.rand(n, generator=generator) >= rate
    return keep.to(device=model.device, dtype=model.item_bias.dtype)


def fit_collaborative(
    model, split: data.Split, users, cfg: Config, log=print, hidden=(), select_users=None
) -> list[dict]:
    """Trains the collaborative parameters with u = c on `users` until validation NDCG@10
    (over `select_users`, default `users`) has not improved for `train.collab_patience`
    epochs; keeps the best epoch's weights (their moving average with `train.collab_ema`).
    The `hidden` catalog rows take no part: the split must not hold them, and they are out
    of every softmax and ranking."""
    select_users = users if select_users is None else select_users
    t = cfg.train
    params = collab_parameters(model)
    optimizer = torch.optim.AdamW(params, lr=t.lr_collab, weight_decay=t.weight_decay)
    average = ParamAverage(params, t.collab_ema) if t.collab_ema > 0 else None
    windows = windows_of(split, users, cfg)
    hidden_rows = torch.as_tensor(np.asarray(hidden, dtype=np.int64)) if len(hidden) else None
    generator = torch.Generator().manual_seed(cfg.seed)
    best, best_epoch, best_state, rows = -1.0, -1, None, []
    for epoch in range(t.collab_max_epochs):
        model.train()
        t0, ce_sum, n_sum = time.time(), 0.0, 0
        order = torch.randperm(len(windows), generator=generator).tolist()
        for s in range(0, len(order), t.collab_batch_size):
            batch = [windows[i] for i in order[s : s + t.collab_batch_size]]
            keep = id_dropout_mask(model, t.collab_id_dropout, generator)
            ce, n = collab_step(model, optimizer, batch, t.amp, hidden_rows, keep)
            ce_sum, n_sum = ce_sum + float(ce) * n, n_sum + n
            if average is not None:
                average.update()
        with average.swapped_in() if average is not None else nullcontext():
            ranks = collab_ranks(model, split, select_users, "valid", cfg.max_items, hidden)
            valid = metrics.from_ranks(ranks)
            if valid["NDCG@10"] > best:
                best, best_epoch = valid["NDCG@10"], epoch
                best_state = copy.deepcopy({k: v for k, v in model.state_dict().items()})
        rows.append(
            {
                "collab_epoch": epoch,
                "train_ce": ce_sum / n_sum,
                "seconds": time.time() - t0,
                **{f"valid_{k}": v for k, v in valid.items()},
            }
        )
        if epoch % 10 == 0 or epoch - best_epoch >= t.collab_patience:
            log(
                json.dumps(
                    {k: round(v, 5) if isinstance(v, float) else v for k, v in rows[-1].items()}
                )
            )
        if epoch - best_epoch >= t.collab_patience:
            break
    model.load_state_dict(best_state)
    rows[best_epoch]["best"] = True
    return rows


def stage_one(cfg: Config, out: Path, log=print) -> tuple[dict, list[str] | None]:
    """Stage 1 and the codes (MODEL.md v2, training steps 1-2), resumable: the collaborative
    parameters and the rendered codes, from `out/collab.pt` when a run already made them."""
    from .codes import collisions, render, residual_codes
    from .context import build_context

    path = out / "collab.pt"
    if path.exists():
        saved = torch.load(path, map_location="cpu", weights_only=False)
        return saved["params"], saved["codes"]
    ctx = build_context(replace(cfg, fusion="collab"))
    rows = fit_collaborative(ctx.model, ctx.split, ctx.users, ctx.cfg, log)
    model = ctx.model
    params = {k: v.clone() for k, v in model.state_dict().items() if k.startswith(COLLAB_PARAMS)}
    codes = None
    if cfg.views["behavioral"].render == "codes":
        spec = {"sizes": [16, 16, 16], "seed": cfg.seed, **cfg.codes}
        with torch.no_grad():
            vectors = model.item_vectors().float().cpu().numpy()
        raw = residual_codes(vectors, spec["sizes"], spec["seed"])
        codes = [render(c) for c in raw]
        log(json.dumps({"codes": spec, "items": len(codes), "collisions": collisions(raw)}))
    if dist_util.rank() == 0:  # every rank computed the same (same seed, same data)
        tmp = path.with_suffix(".tmp")
        torch.save({"params": params, "codes": codes, "rows": rows}, tmp)
        tmp.replace(path)
        with open(out / "log.jsonl", "a") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
    return params, codes


def cold_users(users, fraction: float) -> tuple[list[int], list[int]]:
    """(warm, cold): `fraction` of the user rows, drawn with COLD_USERS_SEED, held out of
    training, of the item bias's popularity and of model selection; the rest."""
    users = list(users)
    n = round(len(users) * fraction)
    cold = set(np.random.default_rng(COLD_USERS_SEED).choice(users, n, replace=False).tolist())
    return [u for u in users if u not in cold], sorted(cold)


def cold_report(model, split: data.Split, warm, cold, ranks: torch.Tensor, max_items: int) -> dict:
    """What the cold users get: their test metrics served from their own history (u = c),
    and the same with one fixed state for everyone (the warm users' mean c), the
    collaborative stage's counterpart of a fixed gate; with the paired difference."""
    held = set(cold)
    warm_rows = [u for u in range(len(ranks)) if u not in held]
    fixed = last_states(model, split, warm, "test", max_items).mean(0, keepdim=True)
    fixed_ranks = ranks_of(model, split, cold, "test", fixed.expand(len(cold), -1))
    own, same = metrics.ndcg10_per_user(ranks[cold]), metrics.ndcg10_per_user(fixed_ranks)
    return {
        "cold_users": cold,
        "test_cold": metrics.from_ranks(ranks[cold]),
        "test_warm": metrics.from_ranks(ranks[warm_rows]),
        "test_cold_fixed_state": metrics.from_ranks(fixed_ranks),
        "cold_own_vs_fixed_ndcg10": {
            "difference": float((own - same).mean()),
            "se": metrics.standard_error(own - same),
        },
    }


def cold_items(n_items: int, fraction: float) -> list[int]:
    """`fraction` of the catalog rows, drawn with COLD_ITEMS_SEED (the same for every seed)."""
    n = round(n_items * fraction)
    return sorted(np.random.default_rng(COLD_ITEMS_SEED).choice(n_items, n, replace=False).tolist())


def without_items(split: data.Split, items) -> data.Split:
    """The split as if `items` did not exist: out of every training sequence. Users whose
    validation target is one of them must be left out of selection (`users_without`)."""
    drop = np.asarray(items, dtype=np.int64)
    train = [t[~np.isin(t, drop)] for t in split.train]
    return data.Split(split.user_ids, train, split.valid, split.test)


def users_without(split: data.Split, users, items, phase: str) -> list[int]:
    """The users whose `phase` target is not one of `items`."""
    targets, drop = split.valid if phase == "valid" else split.test, set(items)
    return [u for u in users if int(targets[u]) not in drop]


@torch.no_grad()
def forget_items(model, items) -> None:
    """Items the bundle never saw, as the runtime serves them: E[i] = 0, bias 0."""
    rows = torch.as_tensor(items, dtype=torch.long, device=model.device)
    model.item_id.weight[rows] = 0.0
    model.item_bias[rows] = 0.0


def cold_items_report(split: data.Split, items, ranks: torch.Tensor) -> dict:
    """Test metrics of the users whose test item is one of the cold `items`, and the rest."""
    users = range(len(ranks))
    warm = users_without(split, users, items, "test")
    cold = sorted(set(users) - set(warm))
    return {
        "cold_items": list(items),
        "cold_item_users": cold,
        "test_cold_items": metrics.from_ranks(ranks[cold]),
        "test_warm_items": metrics.from_ranks(ranks[warm]),
    }


def run_seed(
    cfg: Config, seed: int, cold_fraction: float = 0.0, cold_item_fraction: float = 0.0
) -> dict:
    from .context import build_context

    cfg = replace(cfg, seed=seed, fusion="collab")
    ctx = build_context(cfg)
    warm, cold = cold_users(ctx.users, cold_fraction)
    new_items = cold_items(ctx.model.item_bias.numel(), cold_item_fraction)
    known = without_items(ctx.split, new_items)  # the split stage 1 trains and selects on
    selected = users_without(ctx.split, warm, new_items, "valid")
    if (cold or new_items) and cfg.train.bias_init == "popularity":  # they count nowhere
        seen = np.concatenate([known.train[u] for u in warm])
        ctx.model.init_item_bias(np.bincount(seen, minlength=ctx.model.item_bias.numel()))
    t0 = time.time()
    log = lambda s: print(s, file=sys.stderr)  # noqa: E731
    rows = fit_collaborative(ctx.model, known, warm, cfg, log, new_items, selected)
    if new_items:
        forget_items(ctx.model, new_items)
    ranks = collab_ranks(ctx.model, ctx.split, ctx.users, "test", cfg.max_items)
    best = next(r for r in rows if r.get("best"))
    extra = cold_report(ctx.model, ctx.split, warm, cold, ranks, cfg.max_items) if cold else {}
    if new_items:
        extra |= cold_items_report(ctx.split, new_items, ranks)
    return {
        "seed": seed,
        "valid": {k[6:]: v for k, v in best.items() if k.startswith("valid_")},
        "test": metrics.from_ranks(ranks),
        "test_se_users": {"NDCG@10": metrics.standard_error(metrics.ndcg10_per_user(ranks))},
        "best_epoch": best["collab_epoch"],
        "epochs_run": len(rows),
        "valid_ndcg10_by_epoch": [round(r["valid_NDCG@10"], 5) for r in rows],
        "train_seconds": round(time.time() - t0, 1),
        "test_ranks": ranks.tolist(),
        **extra,
    }


def main(argv=None) -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--config", required=True)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--out", type=Path, default=paths.cache_dir() / "runs" / "collab")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument(
        "--cold-users",
        type=float,
        default=0.0,
        metavar="FRACTION",
        help="hold this fraction of the users out of training and selection (the same users "
        "for every seed) and report their test metrics apart (test_cold)",
    )
    p.add_argument("--data", default=None, help="dataset.json or its directory (config's data)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:N or auto (train.device)")
    p.add_argument("--amp", choices=AMPS, default=None, help="override train.amp (bf16)")
    p.add_argument(
        "--cold-items",
        type=float,
        default=0.0,
        metavar="FRACTION",
        help="train as if this fraction of the catalog (the same items for every seed) did "
        "not exist, serve them by their text alone, report their users apart (test_cold_items)",
    )
    args = p.parse_args(argv)
    for flag, value in (("--cold-users", args.cold_users), ("--cold-items", args.cold_items)):
        if not 0.0 <= value < 1.0:
            p.error(f"{flag} must be in [0, 1), got {value}")
    torch.set_num_threads(args.threads)
    cfg = Config.for_run(args.config, args.data, args.device, args.amp)
    resolve_or_exit(cfg.train.device)
    args.out.mkdir(parents=True, exist_ok=True)
    runs = []
    for seed in args.seeds:
        run = run_seed(cfg, seed, args.cold_users, args.cold_items)
        run["command"] = shlex.join([sys.executable, "-m", "l2rec_train.collab", *sys.argv[1:]])
        (args.out / f"collab-seed{seed}.json").write_text(json.dumps(run) + "\n")
        runs.append(run)
        print(json.dumps(metrics.brief(run)))
    fields = ("seed", "valid", "test", "best_epoch", "epochs_run", "train_seconds")
    summary = {
        "config": cfg.to_dict(),
        "seeds": args.seeds,
        **metrics.summarize_seeds(runs, fields),
    }
    for key in (
        "test_cold",
        "test_warm",
        "test_cold_fixed_state",
        "test_cold_items",
        "test_warm_items",
    ):
        if key in runs[0]:
            summary[key] = metrics.summarize_seeds([{"test": r[key]} for r in runs], ())["test"]
    (args.out / "collab.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary["test"]))


if __name__ == "__main__":
    main()
