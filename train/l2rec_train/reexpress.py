"""MovieLens-100K re-expressed as a user would bring their own data (docs/DATA.md):
string ids (`u17`, `m242`), ISO 8601 timestamps, genres as a `|`-separated text field,
item rows in another order, in CSV or JSON Lines. The proof that the contract holds:
it loads to the same split as the atomic files (tests/test_dataset.py) and trains to
the same metrics within noise (docs/RESULTS.md).

    python -m l2rec_train.reexpress --format csv --out /tmp/ml-100k-csv
    python -m l2rec_train.collab --config configs/v2-collab-ids.json --data /tmp/ml-100k-csv
"""

from __future__ import annotations

import argparse
import csv
import json
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from . import dataset


def iso(t: float) -> str:
    return datetime.fromtimestamp(t, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def reexpress(out: Path, fmt: str, seed: int = 0, copies: int = 1) -> Path:
    """Writes items, interactions and dataset.json under `out`; returns the dataset.json.
    `copies` > 1 makes a catalog and log that many times larger for scale measurements:
    copy k of every user (`u17~k`) watches copy k of the same films (`m242~k`)."""
    src = dataset.DataConfig.load()
    items_cols = ["item_id", "movie_title", "release_year", "class"]
    items = list(dataset.read_rows(src, src.items.file, items_cols))
    inter = dataset.read_rows(src, src.interactions.file, ["user_id", "item_id", "timestamp"])
    order = np.random.default_rng(seed).permutation(len(items))
    out.mkdir(parents=True, exist_ok=True)
    tag = [""] if copies == 1 else [f"~{k}" for k in range(copies)]
    item_rows = [
        {
            "sku": f"m{r['item_id']}{t}",
            "name": r["movie_title"],
            "released": r["release_year"],
            "genres": "|".join(r["class"].split()),
        }
        for t in tag
        for _, r in (items[i] for i in order)
    ]
    event_rows = [
        {
            "who": f"u{r['user_id']}{t}",
            "what": f"m{r['item_id']}{t}",
            "when": iso(float(r["timestamp"])),
        }
        for t in tag
        for _, r in inter
    ]
    ext = {"csv": "csv", "jsonl": "jsonl"}[fmt]
    write = write_csv if fmt == "csv" else write_jsonl
    write(out / f"items.{ext}", item_rows)
    write(out / f"interactions.{ext}", event_rows)
    config = {
        "name": f"ml-100k-{fmt}" + (f"-x{copies}" if copies > 1 else ""),
        "format": fmt,
        "items": {
            "file": f"items.{ext}",
            "id": "sku",
            "title": "name",
            "year": "released",
            "categories": "genres",
        },
        "interactions": {
            "file": f"interactions.{ext}",
            "user": "who",
            "item": "what",
            "timestamp": "when",
        },
        # ml-100k's own words, so that the views read the prompts the atomic route reads.
        "prompts": asdict(dataset.DataConfig.load(None).prompts),
    }
    (out / "dataset.json").write_text(json.dumps(config, indent=2) + "\n")
    return out / "dataset.json"


def write_csv(path: Path, rows: list[dict]) -> None:
    with open(path, "w", encoding="utf-8", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def write_jsonl(path: Path, rows: list[dict]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--format", choices=["csv", "jsonl"], default="csv")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--seed", type=int, default=0, help="seed of the item rows' order")
    p.add_argument("--copies", type=int, default=1, help="N times the catalog and log (scale)")
    args = p.parse_args(argv)
    path = reexpress(args.out, args.format, args.seed, args.copies)
    print(dataset.summary_text(dataset.load_dataset(path).summary()))


if __name__ == "__main__":
    main()
