"""MovieLens-100K under RecBole's sequential protocol (RecBole 1.2.1, SASRec-style).

What RecBole does for a sequential model on ml-100k, and what we reproduce:

* every line of `ml-100k.inter` is an interaction (no rating threshold, no
  k-core filtering, no de-duplication: `properties/dataset/ml-100k.yaml`);
* `eval_args.order = TO`: the whole interaction table, in file order, is sorted
  by timestamp with `np.argsort(kind="stable")` (`Interaction.sort`). The key
  is not the raw timestamp: `normalize_all: True` min-max normalizes the float
  field in float64 and `_dataframe_to_interaction` stores it as float32, which
  merges timestamps about a second apart into ties. Ties keep file order. (On
  ml-100k this changes 83 users' sequences and 5 users' valid/test items
  compared with sorting the raw timestamps.)
* `split = {LS: valid_and_test}`: per user (in that order), the last
  interaction is the test target, the second-last the validation target, the
  rest is training;
* the model sees at most `MAX_ITEM_LIST_LENGTH = 50` items before a target.

Ranking exclusion is the evaluator's business (see metrics.py).

Catalog rows are the items in the order of `ml-100k.item` (row i = line i+1).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import paths


@dataclass(frozen=True)
class Catalog:
    item_ids: list[str]  # the dataset's item tokens, in catalog-row order
    texts: list[str]  # the semantic view's rendering of each item
    codes: list[str] | None = None  # v2: each item's rendered semantic ID (codes.py)

    def __len__(self) -> int:
        return len(self.item_ids)

    def row_of(self) -> dict[str, int]:
        return {t: r for r, t in enumerate(self.item_ids)}


@dataclass(frozen=True)
class Split:
    """Leave-one-out split; everything is indexed by user row, items by catalog row."""

    user_ids: list[str]
    train: list[np.ndarray]  # each user's training items, oldest first (int64 rows)
    valid: np.ndarray  # [U] validation target
    test: np.ndarray  # [U] test target

    def __len__(self) -> int:
        return len(self.user_ids)

    def valid_history(self, u: int) -> np.ndarray:
        return self.train[u]

    def test_history(self, u: int) -> np.ndarray:
        return np.append(self.train[u], self.valid[u])

    def seen_items(self, u: int, phase: str) -> np.ndarray:
        """Every item the user had interacted with before the `phase` target."""
        return self.valid_history(u) if phase == "valid" else self.test_history(u)


def item_text(title: str, year: str, genres: str = "", max_chars: int = 0) -> str:
    """MODEL.md's item text: `<title> (<year>)`, or just the title when the year is missing,
    then `; <genre>, <genre>` when genres are given (RecBole's space-separated token_seq),
    capped at `max_chars` characters (0: no cap), cut back to a word boundary. The dev
    crate's MovieLens loader renders the same."""
    title, year = title.strip(), year.strip()
    text = f"{title} ({year})" if year else title
    names = genres.split()
    if names:
        text += "; " + ", ".join(names)
    return cap_text(text, max_chars)


def cap_text(text: str, max_chars: int) -> str:
    """The first `max_chars` characters, cut back to the last space when the cap ends inside
    a word (the next character is not a space, `,` or `;`); trailing ` ;,` removed."""
    if max_chars <= 0 or len(text) <= max_chars:
        return text
    cut = text[:max_chars]
    if text[max_chars] not in " ,;" and " " in cut:
        cut = cut[: cut.rindex(" ")]
    return cut.rstrip(" ;,")


def _read_atomic(path: Path) -> tuple[list[str], list[list[str]]]:
    """A RecBole atomic file: tab-separated, header `name:type`; returns names and rows."""
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = next(reader)
        names = [h.split(":")[0] for h in header]
        rows = [r for r in reader if r]
    return names, rows


def load_catalog(data_dir: Path | None = None, genres: bool = False, max_chars: int = 0) -> Catalog:
    """ml-100k's items; the text adds the `class` column's genres when `genres`."""
    names, rows = _read_atomic((data_dir or paths.data_dir()) / "ml-100k.item")
    col = {n: i for i, n in enumerate(names)}
    ids, texts = [], []
    for r in rows:
        r = r + [""] * (len(names) - len(r))
        ids.append(r[col["item_id"]])
        g = r[col["class"]] if genres else ""
        texts.append(item_text(r[col["movie_title"]], r[col["release_year"]], g, max_chars))
    if len(set(ids)) != len(ids):
        raise ValueError("duplicate item ids in ml-100k.item")
    return Catalog(ids, texts)


def recbole_time_key(timestamps: np.ndarray) -> np.ndarray:
    """RecBole's sort key for TO ordering: min-max normalized in float64, stored as float32."""
    t = np.asarray(timestamps, dtype=np.float64)
    mx, mn = t.max(), t.min()
    norm = np.ones_like(t) if mx == mn else (t - mn) / (mx - mn)
    return norm.astype(np.float32)


def load_interactions(data_dir: Path | None = None) -> tuple[list[str], list[str], np.ndarray]:
    """(user tokens, item tokens, timestamps) in file order."""
    names, rows = _read_atomic((data_dir or paths.data_dir()) / "ml-100k.inter")
    col = {n: i for i, n in enumerate(names)}
    users = [r[col["user_id"]] for r in rows]
    items = [r[col["item_id"]] for r in rows]
    ts = np.array([float(r[col["timestamp"]]) for r in rows], dtype=np.float64)
    return users, items, ts


def leave_one_out(users: list[str], items: list[int], ts: np.ndarray) -> Split:
    """Sort as RecBole does (stable, float32 key), group by user, hold out the last two."""
    order = np.argsort(recbole_time_key(ts), kind="stable")
    seqs: dict[str, list[int]] = {}
    for k in order:
        seqs.setdefault(users[k], []).append(items[k])
    # User rows in numeric-id order: any order gives the same metrics, this one is readable.
    user_ids = sorted(seqs, key=lambda s: (0, int(s), s) if s.isdigit() else (1, 0, s))
    train, valid, test = [], [], []
    for u in user_ids:
        s = seqs[u]
        if len(s) < 3:
            # RecBole would give such a user fewer than two held-out items; ml-100k has none.
            raise ValueError(f"user {u} has {len(s)} interactions; leave-one-out needs 3")
        train.append(np.array(s[:-2], dtype=np.int64))
        valid.append(s[-2])
        test.append(s[-1])
    return Split(user_ids, train, np.array(valid, dtype=np.int64), np.array(test, dtype=np.int64))


def load(
    data_dir: Path | None = None, genres: bool = False, max_chars: int = 0
) -> tuple[Catalog, Split]:
    catalog = load_catalog(data_dir, genres, max_chars)
    users, item_tokens, ts = load_interactions(data_dir)
    row = catalog.row_of()
    missing = {t for t in item_tokens if t not in row}
    if missing:
        raise ValueError(
            f"{len(missing)} interacted items are not in ml-100k.item, e.g. {sorted(missing)[:3]}"
        )
    return catalog, leave_one_out(users, [row[t] for t in item_tokens], ts)


def truncate(history: np.ndarray, max_items: int) -> np.ndarray:
    """The last `max_items` items: what a prompt holds (SPEC: H_u)."""
    return history[-max_items:] if max_items > 0 else history


def training_windows(train: np.ndarray, max_items: int, mode: str) -> list[np.ndarray]:
    """Item windows one causal pass each reads; every window of n items yields n-1 targets.

    `last`: the last `max_items` training items only. Its final state is exactly
    the validation prompt's state, so training and validation share one cache.
    `all`: windows of `max_items` ending at the last item and stepping back by
    `max_items - 1`, so they overlap by one item and every training item after
    the first is a target exactly once (the oldest window may be shorter).
    """
    n = len(train)
    if mode == "last":
        return [train[-max_items:]]
    if mode != "all":
        raise ValueError(f"unknown window mode {mode!r}")
    windows, end = [], n
    while end >= 2:
        start = max(0, end - max_items)
        windows.append(train[start:end])
        end = start + 1
        if start == 0:
            break
    return windows[::-1]
