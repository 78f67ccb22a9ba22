"""Seeded results with their uncertainty: a table, paired differences, and a chart.

    python -m l2rec_train.seeds_report --png ../docs/results-v2.png \\
        --model "SASRec=<cache>/runs/seqrec/SASRec-all-seed{0,1,2}.json" \\
        --model "L2Rec stage 1=<cache>/runs/collab-text-all/collab-seed{0,1,2}.json" \\
        --versus "L2Rec stage 1:SASRec"

Each --model is LABEL=GLOB of per-seed JSON files with `test` metrics, per-user
`test_ranks` (one per user, the same user order in every file) and, when
present, `valid_ndcg10_by_epoch` (what `seqrec` and `collab` write). Reports
per model the mean over seeds of each test metric, the standard error over
seeds and over users (per-user NDCG@10, averaged over seeds); per --versus
A:B the mean paired difference of per-user NDCG@10 with its standard error over
users, and the ratio of the means. The chart has the NDCG@10 bars with
standard-error whiskers and every run's validation curve by epoch beside it.
`--cold` scores every model on the users that `collab --cold-users` runs held out of
training (their `cold_users`); `--cold items` on the users whose test item `collab
--cold-items` runs held out (their `cold_item_users`).

`--json FILE` writes the summary and `rows`: one per model, seed and split (valid,
test, and the cold runs' test_cold, test_warm and test_cold_fixed_state) with every
metric, the best epoch and the training time. `--markdown FILE` replaces the text
between FILE's `<!-- seeds_report:begin -->` and `<!-- seeds_report:end -->` lines
with the table (scripts/results does both for docs/RESULTS.md and docs/results.json).
"""

from __future__ import annotations

import argparse
import glob
import json
import textwrap
from pathlib import Path

import numpy as np

from .metrics import from_ranks
from .metrics import ndcg10_per_user as ndcg10
from .metrics import standard_error as se

METRICS = ("HR@10", "NDCG@10", "HR@20", "NDCG@20")
SPLITS = (
    "valid",
    "test",
    "test_cold",
    "test_warm",
    "test_cold_fixed_state",
    "test_cold_items",
    "test_warm_items",
)
COLD_KEYS = {"users": "cold_users", "items": "cold_item_users"}
BEGIN, END = "<!-- seeds_report:begin -->", "<!-- seeds_report:end -->"


def load(spec: str) -> tuple[str, list[dict]]:
    label, _, pattern = spec.partition("=")
    files = sorted(glob.glob(str(Path(pattern).expanduser())))
    if not files:
        raise SystemExit(f"{label}: no file matches {pattern}")
    return label, [json.loads(Path(f).read_text()) for f in files]


def cold_users_of(raw: dict[str, list[dict]], key: str = "cold_users") -> list[int]:
    """The user rows `key` of the runs made with `collab --cold-users` (or `--cold-items`)
    name (all such runs must agree)."""
    sets = {tuple(r[key]) for runs in raw.values() for r in runs if key in r}
    if len(sets) != 1:
        raise SystemExit(f"--cold needs runs with one list of {key}, found {len(sets)}")
    return list(sets.pop())


def restricted(runs: list[dict], users: list[int]) -> list[dict]:
    """The runs scored on `users` only (their test metrics recomputed from the ranks)."""
    out = []
    for r in runs:
        ranks = [r["test_ranks"][u] for u in users]
        out.append({**r, "test_ranks": ranks, "test": from_ranks(np.asarray(ranks))})
    return out


def summarize(runs: list[dict]) -> dict:
    per_user = np.mean([ndcg10(np.asarray(r["test_ranks"], dtype=np.float64)) for r in runs], 0)
    out = {"seeds": len(runs), "users": len(per_user)}
    for m in METRICS:
        v = np.array([r["test"][m] for r in runs])
        out[m] = float(v.mean())
        out[f"{m} se seeds"] = se(v)
    out["NDCG@10 se users"] = se(per_user)
    out["per_user"] = per_user
    out["epochs"] = [r.get("best_epoch") for r in runs]
    return out


def versus(a: dict, b: dict) -> dict:
    diff = a["per_user"] - b["per_user"]
    return {
        "difference": float(diff.mean()),
        "se": se(diff),
        "ratio": a["NDCG@10"] / b["NDCG@10"],
    }


def markdown(models: dict, pairs: list[tuple[str, str]]) -> str:
    lines = [
        "| model | seeds | HR@10 | NDCG@10 | se (seeds) | se (users) | HR@20 | NDCG@20 |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for label, s in models.items():
        lines.append(
            f"| {label} | {s['seeds']} | {s['HR@10']:.4f} | {s['NDCG@10']:.4f} | "
            f"{s['NDCG@10 se seeds']:.4f} | {s['NDCG@10 se users']:.4f} | "
            f"{s['HR@20']:.4f} | {s['NDCG@20']:.4f} |"
        )
    if pairs:
        lines += ["", "| comparison | NDCG@10 difference | se (paired, users) | ratio |"]
        lines.append("| --- | ---: | ---: | ---: |")
        for a, b in pairs:
            v = versus(models[a], models[b])
            lines.append(
                f"| {a} vs {b} | {v['difference']:+.4f} | {v['se']:.4f} | {v['ratio']:.3f}x |"
            )
    return "\n".join(lines)


def rows(raw: dict[str, list[dict]]) -> list[dict]:
    """One row per model, seed and split that a run reports, with every metric."""
    out = []
    for label, runs in raw.items():
        for r in runs:
            for split in SPLITS:
                if split in r:
                    out.append(
                        {
                            "model": label,
                            "seed": r.get("seed"),
                            "split": split,
                            **{m: r[split][m] for m in METRICS},
                            "best_epoch": r.get("best_epoch"),
                            "train_seconds": r.get("train_seconds"),
                        }
                    )
    return out


def replace_block(text: str, block: str, path: str = "the file") -> str:
    """`text` with what lies between its BEGIN and END lines replaced by `block`."""
    start, end = text.find(BEGIN), text.find(END)
    if start < 0 or end < start:
        raise SystemExit(f"{path}: no '{BEGIN}' ... '{END}' lines to write the table between")
    return text[: start + len(BEGIN)] + "\n" + block + "\n" + text[end:]


def chart(models: dict, raw: dict, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # Long labels wrap, so that neither panel is squeezed by them.
    def wrap(label: str) -> str:
        return textwrap.fill(label, 34)

    fig, (bars, curves) = plt.subplots(1, 2, figsize=(13, 0.7 * len(models) + 3.5))
    labels = list(models)[::-1]
    means = [models[lb]["NDCG@10"] for lb in labels]
    errs = [models[lb]["NDCG@10 se users"] for lb in labels]
    b = bars.barh(
        [wrap(lb) for lb in labels],
        means,
        xerr=errs,
        capsize=3,
        color=["#4c72b0" if "L2Rec" in lb else "#999999" for lb in labels],
    )
    bars.bar_label(b, fmt="%.4f", padding=14, fontsize=8)
    bars.set_xlim(0, max(means) * 1.3)
    bars.set_title("test NDCG@10, mean of seeds (whiskers: se over users)", fontsize=9)
    for i, (label, runs) in enumerate(raw.items()):
        for j, r in enumerate(runs):
            curve = r.get("valid_ndcg10_by_epoch")
            if curve:
                first = wrap(label) if j == 0 else None
                curves.plot(curve, color=f"C{i}", alpha=0.8, lw=1, label=first)
    curves.set_xlabel("epoch")
    curves.set_title("validation NDCG@10 by epoch, every seed", fontsize=9)
    curves.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=2)
    fig.tight_layout()
    fig.savefig(png, dpi=120)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--model", action="append", required=True, help="LABEL=GLOB")
    p.add_argument("--versus", action="append", default=[], help="A:B, two labels")
    p.add_argument(
        "--cold",
        nargs="?",
        const="users",
        choices=sorted(COLD_KEYS),
        help="score every model on the users `collab --cold-users` runs held out (users, the "
        "default) or on those whose test item `collab --cold-items` runs held out (items)",
    )
    p.add_argument("--png", default=None)
    p.add_argument("--json", default=None, help="also write the summary and rows here")
    p.add_argument("--markdown", default=None, help="write the table into this file's block")
    args = p.parse_args(argv)
    raw = dict(load(spec) for spec in args.model)
    if args.cold:
        users = cold_users_of(raw, COLD_KEYS[args.cold])
        raw = {label: restricted(runs, users) for label, runs in raw.items()}
    models = {label: summarize(runs) for label, runs in raw.items()}
    pairs = [tuple(v.split(":", 1)) for v in args.versus]
    print(markdown(models, pairs))
    if args.json:
        out = {lb: {k: v for k, v in s.items() if k != "per_user"} for lb, s in models.items()}
        out["versus"] = {f"{a} vs {b}": versus(models[a], models[b]) for a, b in pairs}
        Path(args.json).write_text(json.dumps({"models": out, "rows": rows(raw)}, indent=1) + "\n")
    if args.markdown:
        md = Path(args.markdown)
        md.write_text(replace_block(md.read_text(), markdown(models, pairs), args.markdown))
    if args.png:
        chart(models, raw, Path(args.png))


if __name__ == "__main__":
    main()
