"""Trains L2Rec on a dataset (docs/DATA.md; MovieLens-100K by default), selects on
validation NDCG@10, exports a bundle.

    l2rec-train --data ../datasets/ml-100k --check        (validate and summarize, no training)
    l2rec-train --data DIR --config configs/ml-100k-v2.json --out runs/mine
    python -m l2rec_train.train --config configs/small.json --out runs/small
    python -m l2rec_train.train --config configs/small.json --out runs/small --resume
    torchrun --nproc_per_node 2 -m l2rec_train.train --config ... --out ...   (DDP, gloo)
    l2rec-train --device cuda --amp bf16 ...   (a GPU; under torchrun NCCL, one GPU per rank)

Writes into --out: config.json, data-summary.json (what the dataset kept and dropped),
log.jsonl (one line per epoch), last.pt (resume
point, every epoch), best.pt (best validation NDCG@10), metrics.json (valid
and test of the best model) and bundle/ (the runtime bundle of the best model).

Resuming continues from the end of the last finished epoch; batch order is a
function of (seed, epoch), so a resumed run sees the batches an uninterrupted
one would.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import time
from pathlib import Path

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

from . import device
from . import distributed as dist_util
from . import metrics as M
from .collab import COLLAB_PARAMS, stage_one
from .config import Config
from .context import Context, adopt_dataset_prompts, build_context
from .dataset import DataError, load_dataset, summary_text
from .device import autocast, to
from .export import export_bundle
from .model import L2Rec
from .pipeline import (
    PromptSet,
    base_states_after_items,
    bucketed_batches,
)
from .statecache import pad

# -- evaluation -----------------------------------------------------------------


@torch.no_grad()
def evaluate(
    ctx: Context,
    phase: str,
    pset: PromptSet | None = None,
    phi: str = "user",
    exclude: str = "history",
    batch_size: int = 32,
    progress: bool = True,
) -> tuple[dict, np.ndarray]:
    """HR/NDCG@{10,20} on the valid or test targets of the trained users (ranks are sharded
    over DDP ranks and summed). phi="mean" scores everyone with phi_mean (no personalization)."""
    model, split = ctx.model, ctx.split
    model.eval()
    users = np.array(list(ctx.users))
    if phase == "valid":
        pset, prompt_of = ctx.train_set, ctx.valid_index
        targets = split.valid[users]
    elif phase == "test":
        pset = pset or ctx.test_set()
        prompt_of = np.arange(len(users))
        targets = split.test[users]
    else:
        raise ValueError(phase)
    phi_mean = model.phi.weight[torch.from_numpy(users)].mean(0)
    r_all = torch.zeros(len(users), dtype=torch.float64)
    mine = np.arange(len(users))[dist_util.rank() :: dist_util.world_size()]
    for s in tqdm(
        range(0, len(mine), batch_size),
        desc=f"eval {phase}",
        leave=False,
        disable=not progress or dist_util.rank() != 0,
    ):
        j = mine[s : s + batch_size]
        u_rows, inputs = to(pset.last_state_batch(prompt_of[j].tolist()), model.device)
        ph = phi_mean.expand(len(j), -1) if phi == "mean" else None
        u = model.user_vectors(u_rows, inputs, phi=ph)[:, 0]
        excl = [split.seen_items(int(x), phase) for x in users[j]] if exclude == "history" else None
        r_all[torch.from_numpy(j)] = M.ranks(
            model.scores(u), torch.from_numpy(targets[j]), excl
        ).double()
    dist_util.all_reduce_sum(r_all)
    return M.from_ranks(r_all), r_all.numpy()


# -- training -------------------------------------------------------------------


def make_optimizer(model: L2Rec, cfg: Config) -> torch.optim.Optimizer:
    """AdamW with a learning rate per group: experts (`lr_lora`), what belongs to one user
    or drives the gates (`lr_user`: phi, G_v, A_v), what belongs to one item (`lr_items`:
    E, item bias), everything else (`lr`). 0 means `lr`. No decay on phi (it has its own
    L2) and on biases."""
    t = cfg.train
    lr_of = {"lora": t.lr_lora, "user": t.lr_user or t.lr, "items": t.lr_items or t.lr}
    groups: dict[tuple[str, bool], list] = {}
    for name, p in model.named_parameters():
        if name.startswith("experts."):
            kind = "lora"
        elif name.startswith(("phi.", "gates.", "gate_reads.")):
            kind = "user"
        elif name.startswith("item_id.") or name == "item_bias":
            kind = "items"
        else:
            kind = "heads"
        decay = not (name.startswith("phi.") or name.endswith(".bias") or name == "item_bias")
        groups.setdefault((kind, decay), []).append(p)
    return torch.optim.AdamW(
        [
            {
                "params": params,
                "lr": lr_of.get(kind, t.lr),
                "weight_decay": t.weight_decay if decay else 0.0,
            }
            for (kind, decay), params in groups.items()
        ]
    )


def train_step(net, model: L2Rec, optimizer, batch: tuple, cfg: Config) -> tuple[torch.Tensor, int]:
    """One optimizer step on a teacher-forcing batch (built on the CPU, moved to the model's
    device here), the forward under `train.amp`'s autocast. Returns (ce, targets); ce is a
    device tensor, so the caller decides when to wait for it."""
    n = int(batch[3].sum())  # counted on the host: no wait for the device
    users, inputs, targets, mask = to(batch, model.device)
    with autocast(model.device, cfg.train.amp):
        loss, ce = net(users, inputs, targets, mask)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if cfg.train.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
    optimizer.step()
    return ce, n


def train_epoch(ctx: Context, net, optimizer, epoch: int) -> dict:
    cfg, pset = ctx.cfg, ctx.train_set
    rank, world = dist_util.rank(), dist_util.world_size()
    ctx.model.train()
    # Similar lengths batch together: the longest view's prompts, else the histories.
    lengths = np.array(
        [len(t) for t in pset.views["semantic"].tokens]
        if "semantic" in pset.views
        else [len(h) for h in pset.histories.items]
    )
    rng = np.random.default_rng([cfg.seed, epoch])
    batches = [b for b in bucketed_batches(lengths, cfg.train.batch_size, rng) if len(b) >= world]
    if cfg.train.max_steps > 0:
        batches = batches[: cfg.train.max_steps]
    ce_sum, n_sum, tokens, t0 = 0.0, 0, 0, time.time()
    bar = tqdm(batches, desc=f"epoch {epoch}", disable=rank != 0, smoothing=0.1)
    for batch in bar:
        idx = batch[rank::world]
        step_batch = pset.teacher_forcing_batch(idx)
        ce, n = train_step(net, ctx.model, optimizer, step_batch, cfg)
        inputs = step_batch[1]
        ce_sum += float(ce) * n
        n_sum += n
        tokens += sum(int(inputs[v][0].shape[1]) * len(idx) for v in pset.views)
        bar.set_postfix(ce=f"{ce_sum / max(n_sum, 1):.4f}")
    stats = torch.tensor([ce_sum, n_sum, tokens], dtype=torch.float64)
    dist_util.all_reduce_sum(stats)
    secs = time.time() - t0
    return {
        "train_ce": stats[0].item() / max(stats[1].item(), 1),
        "targets": int(stats[1]),
        "steps": len(batches),
        "padded_tokens": int(stats[2]),
        "seconds": secs,
    }


@torch.no_grad()
def base_states(ctx: Context, batch_size: int = 8) -> tuple[dict, dict, torch.Tensor]:
    """The base model's (adapter-free) view states after every item of every training window.
    Experts start with B = 0, so these are exactly what the heads see at step 0. Returns
    (states before each target {view: [N, d]}, states after each window's last item
    {view: [W, d]} (the validation prompts), targets [N])."""
    model, pset = ctx.model, ctx.train_set
    before = {v: [] for v in model.active_views}
    last = {v: [] for v in model.active_views}
    for s in tqdm(
        range(0, len(pset), batch_size), desc="base states", disable=dist_util.rank() != 0
    ):
        idx = list(range(s, min(s + batch_size, len(pset))))
        for v in model.active_views:
            for states in base_states_after_items(model, pset.views[v], idx):
                before[v].append(states[:-1].cpu())  # on the host: N states, any N
                last[v].append(states[-1].cpu())
    targets = [int(t) for i in range(len(pset)) for t in pset.targets_of(i)]
    return (
        {v: torch.cat(x) for v, x in before.items()},
        {v: torch.stack(x) for v, x in last.items()},
        torch.tensor(targets),
    )


def collab_reader(ctx: Context):
    """c (MODEL.md step 0) at flat training targets `j` (base_states' order), or at the
    validation prompts' last items for j = None; always None for a model without encoder."""
    model, pset = ctx.model, ctx.train_set
    windows = pset.histories.items
    win_of = np.repeat(np.arange(len(windows)), [len(pset.targets_of(i)) for i in range(len(pset))])
    pos_of = np.concatenate([np.arange(pset.offset(i), len(w) - 1) for i, w in enumerate(windows)])

    def at(j: torch.Tensor | None) -> torch.Tensor | None:
        if model.encoder is None:
            return None
        if j is None:
            rows = ctx.valid_index
            c = model.collab_states(pad([windows[i] for i in rows]).to(model.device))
            last = torch.tensor([len(windows[i]) - 1 for i in rows], device=model.device)
            return c[torch.arange(len(rows), device=model.device), last]
        uniq, inv = np.unique(win_of[j.numpy()], return_inverse=True)
        c = model.collab_states(pad([windows[i] for i in uniq]).to(model.device))
        return c[to((torch.from_numpy(inv), torch.from_numpy(pos_of[j.numpy()])), model.device)]

    return at


def warmup_heads(
    ctx: Context, epochs: int, batch_size: int = 1024, floor: float = -1.0
) -> list[dict]:
    """Linear probing before fine-tuning: trains the heads (projections, fusion, item tables)
    on the base model's cached view states, `epochs` passes over every target in seconds
    each, and keeps the epoch with the best validation NDCG@10 if it beats `floor` (the
    model it started from, v2's stage 1), else the starting weights. The LoRA epochs that
    follow (minutes each) then start from converged heads instead of random ones."""
    model, cfg, split = ctx.model, ctx.cfg, ctx.split
    before, last, targets = base_states(ctx)
    collab_at = collab_reader(ctx)
    heads = [
        p
        for n, p in model.named_parameters()
        if not n.startswith(("experts.", "gates.", "gate_reads.", "phi.")) and p.requires_grad
    ]
    optimizer = torch.optim.AdamW(
        heads, lr=cfg.train.lr_warmup or cfg.train.lr, weight_decay=cfg.train.weight_decay
    )
    users, dev = np.array(list(ctx.users)), model.device
    valid_states = to({v: x[torch.from_numpy(ctx.valid_index)] for v, x in last.items()}, dev)
    exclude = [split.seen_items(int(u), "valid") for u in users]
    best, rows = floor, []
    best_state = {k: v.clone() for k, v in model.state_dict().items()}  # the floor's weights
    generator = torch.Generator().manual_seed(cfg.seed)
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(targets), generator=generator)
        ce_sum = 0.0
        for s in range(0, len(order), batch_size):
            j = order[s : s + batch_size]
            with autocast(model.device, cfg.train.amp):
                u = model.preference(to({v: x[j] for v, x in before.items()}, dev), collab_at(j))
                ce = torch.nn.functional.cross_entropy(model.scores(u), targets[j].to(dev))
            optimizer.zero_grad(set_to_none=True)
            ce.backward()
            optimizer.step()
            ce_sum += float(ce.detach()) * len(j)
        with torch.no_grad():
            model.eval()
            u = model.preference(valid_states, collab_at(None))
            valid = M.from_ranks(
                M.ranks(model.scores(u), torch.from_numpy(split.valid[users]), exclude)
            )
        rows.append(
            {
                "warmup_epoch": epoch,
                "train_ce": ce_sum / len(targets),
                **{f"valid_{k}": v for k, v in valid.items()},
            }
        )
        if dist_util.rank() == 0:
            print(json.dumps(rows[-1]))
        if valid["NDCG@10"] > best:
            best, best_state = (
                valid["NDCG@10"],
                {k: v.clone() for k, v in model.state_dict().items()},
            )
    model.load_state_dict(best_state)
    return rows


def save_checkpoint(path: Path, ctx: Context, optimizer, epoch: int, best: dict) -> None:
    state = {
        "config": ctx.cfg.to_dict(),
        "codes": ctx.catalog.codes,
        "model": ctx.model.state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "epoch": epoch,
        "best": best,
        "rng": {
            "torch": torch.get_rng_state(),
            "numpy": np.random.get_state(),
            "python": random.getstate(),
        },
    }
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def check_data(data, quiet: bool = False) -> dict:
    """Loads and validates the dataset (a `DataError` names file, line and fix), prints what
    it kept and dropped; the summary dict."""
    try:
        summary = load_dataset(data).summary()
    except DataError as e:
        raise SystemExit(f"error: {e}") from None
    if not quiet:
        print(summary_text(summary), flush=True)
    return summary


def main(argv=None) -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--data", default=None, help="dataset.json or its directory (default: the config's data)"
    )
    p.add_argument("--check", action="store_true", help="validate and summarize the data, stop")
    p.add_argument("--config", default=None, help="model and training config (JSON)")
    p.add_argument("--out", default=None, help="run directory")
    p.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    p.add_argument(
        "--threads", type=int, default=None, help="torch threads per process (overrides config)"
    )
    p.add_argument("--epochs", type=int, default=None, help="override train.epochs")
    p.add_argument(
        "--device",
        default=None,
        help="cpu, cuda, cuda:N or auto (overrides train.device; under torchrun: LOCAL_RANK's GPU)",
    )
    p.add_argument("--amp", choices=device.AMPS, default=None, help="override train.amp (bf16)")
    p.add_argument("--no-test", action="store_true", help="skip the final test evaluation")
    p.add_argument("--no-export", action="store_true", help="skip writing OUT/bundle")
    args = p.parse_args(argv)
    if args.check:
        check_data(args.data)
        return
    if not (args.config and args.out):
        p.error("--config and --out are needed to train (or --check to validate the data)")

    cfg = Config.for_run(args.config, args.data, args.device, args.amp)
    dev = device.resolve_or_exit(cfg.train.device)  # before any data or cache work
    distributed = dist_util.init(device.backend(dev))
    rank = dist_util.rank()
    summary = check_data(cfg.data or None, quiet=rank != 0)  # errors before hours of training
    adopt_dataset_prompts(cfg)  # config.json records the prompts the run uses
    if args.epochs is not None:
        cfg.train.epochs = args.epochs
    threads = args.threads if args.threads is not None else cfg.train.threads
    if threads > 0:
        torch.set_num_threads(threads)
    seed_everything(cfg.seed)
    out = Path(args.out)
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")
        (out / "data-summary.json").write_text(json.dumps(summary, indent=2) + "\n")

    codes, stage1 = None, None
    if cfg.encoder != "none":  # v2: the collaborative stage and the codes come first
        stage1, codes = stage_one(cfg, out)
    ctx = build_context(cfg, codes=codes)
    if stage1 is not None and not (args.resume and (out / "last.pt").exists()):
        ctx.model.load_state_dict(stage1, strict=False)
    if stage1 is not None and cfg.train.freeze_collab:
        # The LLM stages learn what stage 1 left over; its parameters stay as selected.
        for name, p in ctx.model.named_parameters():
            if name.startswith(COLLAB_PARAMS):
                p.requires_grad_(False)
    optimizer = make_optimizer(ctx.model, cfg)
    start, best = 0, {"NDCG@10": -1.0, "epoch": -1}
    valid_of_epoch = {}  # validation metrics measured in this process, by epoch (-1: warmup's best)
    if args.resume and (out / "last.pt").exists():
        state = torch.load(out / "last.pt", map_location="cpu", weights_only=False)
        ctx.model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start, best = state["epoch"] + 1, state["best"]
        if rank == 0:
            print(f"resumed after epoch {state['epoch']}; best so far {best}")
    if start == 0 and stage1 is not None:
        # v2: the view heads start at zero, so this is stage 1's model: the bar to beat.
        valid, _ = evaluate(ctx, "valid")
        best = {"NDCG@10": valid["NDCG@10"], "epoch": -2}  # -2: stage 1
        valid_of_epoch[-2] = valid
        if rank == 0:
            save_checkpoint(out / "best.pt", ctx, None, -2, best)
            with open(out / "log.jsonl", "a") as f:
                f.write(json.dumps({"stage1_valid": valid}) + "\n")
            print(json.dumps({"stage1_valid": valid}))
    if start == 0 and cfg.train.warmup_epochs > 0:
        # Every rank runs the same deterministic warmup, so replicas stay identical.
        rows = warmup_heads(ctx, cfg.train.warmup_epochs, floor=best["NDCG@10"])
        if rank == 0:
            with open(out / "log.jsonl", "a") as f:
                f.writelines(json.dumps(row) + "\n" for row in rows)
        top = max(rows, key=lambda row: row["valid_NDCG@10"])
        if top["valid_NDCG@10"] > best["NDCG@10"]:
            best = {"NDCG@10": top["valid_NDCG@10"], "epoch": -1}  # -1: warmup
            valid_of_epoch[-1] = {
                k[len("valid_") :]: v for k, v in top.items() if k.startswith("valid_")
            }
            if rank == 0:
                save_checkpoint(out / "best.pt", ctx, None, -1, best)
        if rank == 0:  # the heads-only model (or stage 1, if no warmup epoch beat it)
            save_checkpoint(out / "warmup.pt", ctx, None, -1, best)
    net = ctx.model
    if distributed:
        on_gpu = [dev.index] if dev.type == "cuda" else None
        net = DDP(ctx.model, broadcast_buffers=False, device_ids=on_gpu)

    stale = 0
    for epoch in range(start, cfg.train.epochs):
        row = {"epoch": epoch, **train_epoch(ctx, net, optimizer, epoch)}
        if (epoch + 1) % cfg.train.eval_every == 0 or epoch == cfg.train.epochs - 1:
            t0 = time.time()
            valid, _ = evaluate(ctx, "valid")
            valid_of_epoch[epoch] = valid
            row.update({f"valid_{k}": v for k, v in valid.items()}, eval_seconds=time.time() - t0)
            if valid["NDCG@10"] > best["NDCG@10"]:
                best, stale = {"NDCG@10": valid["NDCG@10"], "epoch": epoch}, 0
                if rank == 0:
                    save_checkpoint(out / "best.pt", ctx, None, epoch, best)
            else:
                stale += 1
        if rank == 0:
            save_checkpoint(out / "last.pt", ctx, optimizer, epoch, best)
            save_checkpoint(
                out / f"epoch-{epoch}.pt", ctx, None, epoch, best
            )  # equal-budget comparisons
            with open(out / "log.jsonl", "a") as f:
                f.write(json.dumps(row) + "\n")
            print(json.dumps(row))
        dist_util.barrier()
        if cfg.train.patience > 0 and stale >= cfg.train.patience:
            break

    if (out / "best.pt").exists():
        ctx.model.load_state_dict(
            torch.load(out / "best.pt", map_location="cpu", weights_only=False)["model"]
        )
    result = {"best": best}
    if best["epoch"] in valid_of_epoch:  # measured above on these very weights
        result["valid"] = valid_of_epoch[best["epoch"]]
    else:
        result["valid"], _ = evaluate(ctx, "valid")
    test_ranks = None
    if not args.no_test:
        result["test"], test_ranks = evaluate(ctx, "test")
    if rank == 0:
        (out / "metrics.json").write_text(json.dumps(result, indent=2) + "\n")
        if (
            test_ranks is not None
        ):  # per user, to compare with the runtime's `l2rec eval --per-user`
            ranks_by_user = dict(
                zip(ctx.trained_user_ids, test_ranks.astype(int).tolist(), strict=False)
            )
            (out / "test-ranks.json").write_text(json.dumps(ranks_by_user) + "\n")
        print(json.dumps(result))
        if not args.no_export and cfg.fusion == "adaptive":
            device.place(ctx.model, torch.device("cpu"))  # the bundle is written from host memory
            export_bundle(
                ctx.model, ctx.catalog, ctx.trained_user_ids, ctx.trained_user_rows, out / "bundle"
            )
    dist_util.barrier()
    dist_util.shutdown()


if __name__ == "__main__":
    main()
