"""A dataset (dataset.py, docs/DATA.md) under RecBole's sequential protocol (RecBole 1.2.1,
SASRec-style): the catalog, the leave-one-out split, the training windows.

What RecBole does for a sequential model on ml-100k (the default dataset), and what we
reproduce:

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

Catalog rows are the items in the order of the items file (ml-100k: `ml-100k.item`,
row i = line i+1).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .dataset import Dataset, load_dataset


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


def item_text(
    title: str,
    year: str,
    categories: list[str] | str = (),
    max_chars: int = 0,
    fields: list[str] = (),
) -> str:
    """MODEL.md's item text (docs/DATA.md): `<title> (<year>)`, or just the title when the
    year is missing, then `; <category>, <category>` when categories are given (a list, or
    RecBole's space-separated token_seq), then `; <field>` for each non-empty field, capped
    at `max_chars` characters (0: no cap), cut back to a word boundary. The dev crate's
    dataset loader renders the same."""
    title, year = title.strip(), year.strip()
    text = f"{title} ({year})" if year else title
    names = categories.split() if isinstance(categories, str) else list(categories)
    if names:
        text += "; " + ", ".join(names)
    for extra in fields:
        if extra.strip():
            text += "; " + extra.strip()
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


def load_catalog(data=None, genres: bool = False, max_chars: int = 0) -> Catalog:
    """The dataset's items (`data`: a dataset.json, its directory, a loaded `Dataset`, or None
    for ml-100k); the text adds the categories (ml-100k: genres) when `genres`."""
    ds = data if isinstance(data, Dataset) else load_dataset(data)
    return catalog_of(ds.items, genres, max_chars)


def catalog_of(items, genres: bool, max_chars: int) -> Catalog:
    texts = [
        item_text(t, y, c if genres else [], max_chars, f)
        for t, y, c, f in zip(
            items.titles, items.years, items.categories, items.fields, strict=True
        )
    ]
    return Catalog(list(items.ids), texts)


def recbole_time_key(timestamps: np.ndarray) -> np.ndarray:
    """RecBole's sort key for TO ordering: min-max normalized in float64, stored as float32."""
    t = np.asarray(timestamps, dtype=np.float64)
    mx, mn = t.max(), t.min()
    norm = np.ones_like(t) if mx == mn else (t - mn) / (mx - mn)
    return norm.astype(np.float32)


def leave_one_out(
    users: list[str], items: list[int], ts: np.ndarray, time_key: str = "recbole"
) -> Split:
    """Sort as RecBole does (stable, float32 key; `exact`: the timestamps), group by user,
    hold out the last two."""
    key = recbole_time_key(ts) if time_key == "recbole" else np.asarray(ts, dtype=np.float64)
    order = np.argsort(key, kind="stable")
    seqs: dict[str, list[int]] = {}
    for k in order:
        seqs.setdefault(users[k], []).append(items[k])
    # User rows in numeric-id order: any order gives the same metrics, this one is readable.
    user_ids = sorted(seqs, key=lambda s: (0, int(s), s) if s.isdigit() else (1, 0, s))
    train, valid, test = [], [], []
    for u in user_ids:
        s = seqs[u]
        if len(s) < 3:
            # The dataset's filter keeps users with at least 3 (dataset.py); a caller that
            # bypasses it gets this.
            raise ValueError(f"user {u} has {len(s)} interactions; leave-one-out needs 3")
        train.append(np.array(s[:-2], dtype=np.int64))
        valid.append(s[-2])
        test.append(s[-1])
    return Split(user_ids, train, np.array(valid, dtype=np.int64), np.array(test, dtype=np.int64))


def load(data=None, genres: bool = False, max_chars: int = 0) -> tuple[Catalog, Split]:
    """Catalog and leave-one-out split of a dataset (docs/DATA.md; None: ml-100k)."""
    ds = data if isinstance(data, Dataset) else load_dataset(data)
    split = leave_one_out(ds.users, ds.rows, ds.times, ds.config.split.time_key)
    return catalog_of(ds.items, genres, max_chars), split


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
