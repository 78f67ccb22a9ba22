"""Full-ranking metrics: HR@K and NDCG@K over the whole catalog.

A target's rank (0 = first) counts the items scored above it, plus the items
scored equal to it with a lower catalog row (SPEC step 8's tie rule, so a
rank never depends on sort stability).

Exclusion: by default every item the user interacted with before the target
is removed from the ranking (what the runtime does when recommending). NOTE:
RecBole's own full-sort evaluation of *sequential* models does not do this
(`FullSortEvalDataLoader` passes no history for them; only the padding item is
masked), so RecBole baselines must be scored with the same exclusion, or ours
without it (`exclude="none"`), for a like-for-like table. ml-100k has no
repeated user-item pairs, so the target itself is never excluded.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

KS = (10, 20)


def ranks(
    scores: torch.Tensor, targets: torch.Tensor, exclude: Sequence[np.ndarray] | None = None
) -> torch.Tensor:
    """Rank of each target among its row's scores [B, N], excluded items removed; on the
    scores' device, returned on the CPU."""
    s = scores.detach().float().clone()
    targets = targets.to(s.device)
    if exclude is not None:
        host_targets = targets.tolist()
        for b, items in enumerate(exclude):
            items = np.asarray(items, dtype=np.int64)
            items = items[items != host_targets[b]]
            s[b, torch.from_numpy(items).to(s.device)] = -math.inf
    t = s.gather(1, targets[:, None])
    rows = torch.arange(s.shape[1], device=s.device)
    higher = (s > t).sum(1)
    tied_before = ((s == t) & (rows[None, :] < targets[:, None])).sum(1)
    return (higher + tied_before).cpu()


def from_ranks(r: torch.Tensor | np.ndarray, ks: Sequence[int] = KS) -> dict[str, float]:
    r = torch.as_tensor(r, dtype=torch.float64)
    out = {}
    for k in ks:
        hit = r < k
        out[f"HR@{k}"] = hit.double().mean().item()
        out[f"NDCG@{k}"] = (
            torch.where(hit, 1.0 / torch.log2(r + 2.0), torch.zeros_like(r)).mean().item()
        )
    return out


def standard_error(x) -> float:
    """Standard error of the mean of `x` (NaN for fewer than two values)."""
    x = np.asarray(x, dtype=np.float64)
    return float(np.std(x, ddof=1) / math.sqrt(len(x))) if len(x) > 1 else float("nan")


def ndcg10_per_user(ranks) -> np.ndarray:
    """Each target's NDCG@10 from its rank (0 = first)."""
    r = np.asarray(ranks, dtype=np.float64)
    return np.where(r < 10, 1.0 / np.log2(r + 2.0), 0.0)


def summarize_seeds(runs: list[dict], fields: tuple[str, ...]) -> dict:
    """Seeded runs (each with `test` metrics) as `test`: the mean and standard error over
    seeds of every metric, and `runs`: each run's `fields`."""
    test = {}
    for k in runs[0]["test"]:
        v = np.array([r["test"][k] for r in runs])
        test[k] = {"mean": float(v.mean()), "se_seeds": standard_error(v)}
    return {"test": test, "runs": [{f: r[f] for f in fields} for r in runs]}


def brief(run: dict) -> dict:
    """A run without its per-user ranks and per-epoch curve (what a console line shows)."""
    return {k: v for k, v in run.items() if k not in ("test_ranks", "valid_ndcg10_by_epoch")}
