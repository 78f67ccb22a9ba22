"""The results table and chart of docs/RESULTS.md, from the JSON files runs write.

    python -m l2rec_train.results --png ../docs/results.png \\
        --row "SASRec=<cache>/runs/baselines/SASRec.json:test" \\
        --row "L2Rec=<cache>/runs/full/metrics.json:test" ...

Each --row is LABEL=FILE[:KEY]: FILE is any JSON our tools print (metrics.json,
`l2rec_train.eval`, `l2rec eval`, scripts/baselines), KEY the object inside it
that holds HR@10, NDCG@10, HR@20 and NDCG@20 (none: the top level). Prints the
Markdown table; the chart shows NDCG@10 and HR@10 per row.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

METRICS = ("HR@10", "NDCG@10", "HR@20", "NDCG@20")


def read_row(spec: str) -> tuple[str, dict]:
    label, _, source = spec.rpartition("=")  # labels may hold "=", paths do not
    file, _, key = source.partition(":")
    obj = json.loads(Path(file).expanduser().read_text())
    for part in filter(None, key.split(".")):
        obj = obj[part]
    missing = [m for m in METRICS if m not in obj]
    if missing:
        raise SystemExit(f"{file}:{key or '<top>'} lacks {missing}")
    return label, {m: float(obj[m]) for m in METRICS}


def markdown(rows: list[tuple[str, dict]]) -> str:
    lines = ["| model | " + " | ".join(METRICS) + " |", "| --- |" + " ---: |" * len(METRICS)]
    lines += [
        f"| {label} | " + " | ".join(f"{v[m]:.4f}" for m in METRICS) + " |" for label, v in rows
    ]
    return "\n".join(lines)


def chart(rows: list[tuple[str, dict]], png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [label for label, _ in rows][::-1]
    fig, axes = plt.subplots(1, 2, figsize=(11, 0.45 * len(rows) + 1.2), sharey=True)
    for ax, metric in zip(axes, ("NDCG@10", "HR@10"), strict=False):
        values = [v[metric] for _, v in rows][::-1]
        bars = ax.barh(
            labels, values, color=["#4c72b0" if "L2Rec" in lb else "#999999" for lb in labels]
        )
        ax.bar_label(bars, fmt="%.4f", padding=3, fontsize=8)
        ax.set_title(f"{metric}, ml-100k test (full ranking, history excluded)", fontsize=9)
        ax.set_xlim(0, max(values) * 1.25)
    fig.tight_layout()
    fig.savefig(png, dpi=120)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--row", action="append", required=True, help="LABEL=FILE[:KEY]")
    p.add_argument("--png", default=None, help="also draw the chart here (needs matplotlib)")
    args = p.parse_args(argv)
    rows = [read_row(spec) for spec in args.row]
    print(markdown(rows))
    if args.png:
        chart(rows, Path(args.png))


if __name__ == "__main__":
    main()
