"""A dataset as docs/DATA.md defines it: `dataset.json`, an items table and an
interactions table in RecBole's atomic format, CSV or JSON Lines; validated,
filtered and summarized before any training starts.

The dev crate's `dataset` module is this loader's twin (the runtime's `eval`,
`demo` and benches read the same files); `golden/datasets/` holds the cases
both must agree on. Errors name the file, the line and the fix; nothing is
dropped without a count (`Report.dropped`).
"""

from __future__ import annotations

import csv
import json
import re
import sys
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np

from . import paths

# The repository's datasets/, through the package's link to it (or its copy in a wheel).
DEFAULT = Path(__file__).parent / "datasets" / "ml-100k" / "dataset.json"
# Both views' prompt prefix when a dataset names none: words that fit any catalog.
GENERIC_PREFIX = "Items a user interacted with, oldest first:\n"
MAX_PREFIX_CHARS = 200
FORMATS = ("atomic", "csv", "jsonl")
MAX_ID_BYTES = 256  # the runtime's default `limits.max_id_bytes` (docs/LIMITS.md)
EXAMPLES = 5  # examples an error lists


class DataError(ValueError):
    """What is wrong with a dataset, where, and what to do."""

    def __init__(self, file: Path | str, what: str, fix: str, lines: list[int] | None = None):
        self.file, self.what, self.fix, self.lines = str(file), what, fix, lines or []
        where = self.file
        if self.lines:
            where += ":" + ",".join(str(n) for n in self.lines[:EXAMPLES])
        super().__init__(f"{where}: {what} ({fix})")


@dataclass(frozen=True)
class ItemColumns:
    file: str
    id: str
    title: str
    year: str = ""
    categories: str = ""
    category_separator: str = ""  # "" : whitespace for atomic, "|" otherwise
    fields: tuple[str, ...] = ()


@dataclass(frozen=True)
class InteractionColumns:
    file: str
    user: str
    item: str
    timestamp: str
    kind: str = ""
    weight: str = ""


@dataclass(frozen=True)
class Filter:
    min_user_interactions: int = 3
    min_item_interactions: int = 1
    min_weight: float | None = None
    kinds: tuple[str, ...] | None = None


@dataclass(frozen=True)
class SplitOptions:
    method: str = "leave-one-out"
    time_key: str = "recbole"


@dataclass(frozen=True)
class Prompts:
    """The first line of each view's prompt, in the data's words; each ends with a newline."""

    behavioral: str = GENERIC_PREFIX
    semantic: str = GENERIC_PREFIX

    def problem(self) -> str | None:
        """Why a prefix cannot start a prompt (the dev crate's rule), or None."""
        for view in ("behavioral", "semantic"):
            prefix = getattr(self, view)
            if not prefix.endswith("\n"):
                return f"prompts.{view} does not end with a newline"
            line = prefix[:-1]
            one_line = line.strip() != "" and not any(
                unicodedata.category(ch) == "Cc" for ch in line
            )
            if not one_line or len(prefix) > MAX_PREFIX_CHARS:
                return f"prompts.{view} is not one line of at most {MAX_PREFIX_CHARS} characters"
        return None


@dataclass(frozen=True)
class DataConfig:
    name: str
    format: str
    root: Path
    items: ItemColumns
    interactions: InteractionColumns
    filter: Filter = Filter()
    split: SplitOptions = SplitOptions()
    delimiter: str = ","
    prompts: Prompts = Prompts()
    source: Path = DEFAULT

    @staticmethod
    def load(path: str | Path | None = None) -> DataConfig:
        """`path`: a dataset.json or the directory holding one (None: ml-100k's)."""
        path = Path(path) if path else DEFAULT
        if path.is_dir():
            path = path / "dataset.json"
        try:
            raw = json.loads(path.read_text())
        except FileNotFoundError:
            raise DataError(
                path, "no such file", "pass --data a dataset.json or its directory"
            ) from None
        except json.JSONDecodeError as e:
            raise DataError(path, f"not JSON: {e}", "fix the syntax", [e.lineno]) from e
        return parse_config(raw, path)


def parse_config(raw: dict, path: Path) -> DataConfig:
    def need(obj: dict, key: str, where: str):
        if key not in obj:
            raise DataError(path, f"`{where}{key}` is missing", "see docs/DATA.md")
        return obj[key]

    def known(obj: dict, keys: set[str], where: str) -> dict:
        extra = sorted(set(obj) - keys)
        if extra:
            raise DataError(
                path, f"unknown key(s) {extra} in `{where or 'the top level'}`", "see docs/DATA.md"
            )
        return obj

    known(
        raw,
        {
            "name",
            "format",
            "root",
            "items",
            "interactions",
            "filter",
            "split",
            "delimiter",
            "prompts",
        },
        "",
    )
    fmt = need(raw, "format", "")
    if fmt not in FORMATS:
        raise DataError(path, f"format {fmt!r} is not one of {list(FORMATS)}", "see docs/DATA.md")
    items = known(dict(need(raw, "items", "")), set(ItemColumns.__dataclass_fields__), "items")
    for key in ("file", "id", "title"):
        need(items, key, "items.")
    items["fields"] = tuple(items.get("fields", ()))
    inter = known(
        dict(need(raw, "interactions", "")),
        set(InteractionColumns.__dataclass_fields__),
        "interactions",
    )
    for key in ("file", "user", "item", "timestamp"):
        need(inter, key, "interactions.")
    filt = known(dict(raw.get("filter", {})), set(Filter.__dataclass_fields__), "filter")
    if filt.get("kinds") is not None:
        filt["kinds"] = tuple(filt["kinds"])
    split = known(dict(raw.get("split", {})), set(SplitOptions.__dataclass_fields__), "split")
    prompts = Prompts(
        **known(dict(raw.get("prompts", {})), set(Prompts.__dataclass_fields__), "prompts")
    )
    if (problem := prompts.problem()) is not None:
        raise DataError(path, problem, 'write one line of text that ends with "\\n"')
    cfg = DataConfig(
        name=need(raw, "name", ""),
        format=fmt,
        root=resolve_root(raw.get("root"), path),
        items=ItemColumns(**items),
        interactions=InteractionColumns(**inter),
        filter=Filter(**filt),
        split=SplitOptions(**split),
        delimiter=raw.get("delimiter", ","),
        prompts=prompts,
        source=path,
    )
    check_options(cfg, path)
    return cfg


def resolve_root(root: str | None, path: Path) -> Path:
    if not root:
        return path.parent
    root = root.replace("{cache}", str(paths.cache_dir()))
    p = Path(root)
    return p if p.is_absolute() else path.parent / p


def check_options(cfg: DataConfig, path: Path) -> None:
    f, s = cfg.filter, cfg.split
    if f.min_user_interactions < 3:
        raise DataError(path, "filter.min_user_interactions is below 3", "leave-one-out needs 3")
    if f.min_item_interactions < 0:
        raise DataError(path, "filter.min_item_interactions is negative", "use 0 or more")
    if f.min_weight is not None and not cfg.interactions.weight:
        raise DataError(path, "filter.min_weight needs interactions.weight", "map the column")
    if f.kinds is not None and not cfg.interactions.kind:
        raise DataError(path, "filter.kinds needs interactions.kind", "map the column")
    if s.method != "leave-one-out":
        raise DataError(path, f"split.method {s.method!r} is unknown", "use leave-one-out")
    if s.time_key not in ("recbole", "exact"):
        raise DataError(path, f"split.time_key {s.time_key!r} is unknown", "recbole or exact")
    if cfg.format == "csv" and len(cfg.delimiter) != 1:
        raise DataError(path, "delimiter must be one character", 'for example "," or "\\t"')


# ---------------------------------------------------------------------------------------
# Reading rows: every format yields (line number, {column: string}) after its header,
# streamed (a log of millions of rows is never held as rows; errors that count rows are
# raised once the file is read).


def read_rows(cfg: DataConfig, file: str, columns: list[str]):
    path = cfg.root / file
    if not path.exists():
        raise DataError(path, "no such file", f"check `root` and `file` in {cfg.source}")
    reader = {"atomic": _atomic_rows, "csv": _csv_rows, "jsonl": _jsonl_rows}[cfg.format]
    return reader(path, columns, cfg.delimiter)


def _missing(path: Path, columns: list[str], have: list[str]) -> DataError:
    gone = [c for c in columns if c not in have]
    return DataError(
        path,
        f"no column {', '.join(repr(c) for c in gone)} (the header has {have})",
        "map the right names in dataset.json",
        [1],
    )


def _table_rows(path: Path, rows, columns: list[str], header: list[str]):
    if any(c not in header for c in columns):
        raise _missing(path, columns, header)
    at = [header.index(c) for c in columns]
    short = []
    for n, r in enumerate(rows, start=2):
        if not r or r == [""]:
            continue  # blank line
        if len(r) <= max(at):
            short.append(n)
            continue
        yield n, {c: r[i] for c, i in zip(columns, at, strict=True)}
    if short:
        raise DataError(
            path, f"{len(short)} row(s) have fewer fields than the header", "fix them", short
        )


def _atomic_rows(path: Path, columns: list[str], _delimiter: str):
    with open(path, encoding="utf-8", newline="") as f:
        lines = (ln.rstrip("\n").rstrip("\r") for ln in f)
        header = [h.split(":")[0] for h in next(lines, "").split("\t")]
        yield from _table_rows(path, (ln.split("\t") for ln in lines), columns, header)


def _csv_rows(path: Path, columns: list[str], delimiter: str):
    # A row's number is its record number + 1 (the header): what editors show as its line
    # when no quoted field holds a newline.
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.reader(f, delimiter=delimiter)
        header = next(reader, [])
        yield from _table_rows(path, reader, columns, header)


def _jsonl_rows(path: Path, columns: list[str], _delimiter: str):
    bad, lacking = [], []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError:
                bad.append(n)
                continue
            if not isinstance(obj, dict):
                bad.append(n)
                continue
            if any(c not in obj for c in columns):
                lacking.append(n)
                continue
            yield n, {c: json_value(obj[c]) for c in columns}
    if bad:
        raise DataError(path, f"{len(bad)} line(s) are not a JSON object", "one per line", bad)
    if lacking:
        raise DataError(
            path, f"{len(lacking)} line(s) lack a mapped key {columns}", "add it or remap", lacking
        )


def json_value(v) -> str | list[str]:
    """A JSON value as the loaders read it: strings as they are, numbers as written by
    `json.dumps`, null as empty, a list of strings kept as a list (categories)."""
    if v is None:
        return ""
    if isinstance(v, str):
        return v
    if isinstance(v, list):
        return [json_value(x) for x in v]
    if isinstance(v, bool):
        return "true" if v else "false"
    return json.dumps(v)


# ---------------------------------------------------------------------------------------
# Items


@dataclass(frozen=True)
class Items:
    ids: list[str]
    titles: list[str]
    years: list[str]
    categories: list[list[str]]
    fields: list[list[str]]


def check_id(value: str) -> str | None:
    """Why `value` is not an id the engine takes (its rule at the default limits: Rust's
    `char::is_control` is Unicode category Cc), or None."""
    if not value:
        return "empty"
    if len(value.encode()) > MAX_ID_BYTES:
        return f"over {MAX_ID_BYTES} bytes"
    if any(unicodedata.category(ch) == "Cc" for ch in value):
        return "has a control character"
    return None


def split_categories(value, separator: str) -> list[str]:
    if isinstance(value, list):
        parts = value
    elif separator:
        parts = value.split(separator)
    else:
        parts = value.split()
    return [p.strip() for p in parts if p.strip()]


def load_items(cfg: DataConfig) -> Items:
    c = cfg.items
    columns = [c.id, c.title] + [x for x in (c.year, c.categories) if x] + list(c.fields)
    columns = list(dict.fromkeys(columns))
    rows = read_rows(cfg, c.file, columns)
    path = cfg.root / c.file
    sep = c.category_separator or ("" if cfg.format == "atomic" else "|")
    bad_ids, empty_titles, first_line = [], [], {}
    dups: list[int] = []
    ids, titles, years, cats, fields = [], [], [], [], []
    for n, r in rows:
        item = r[c.id] if isinstance(r[c.id], str) else ""
        if check_id(item):
            bad_ids.append((n, item, check_id(item)))
            continue
        if item in first_line:
            dups += [first_line[item], n]
            continue
        first_line[item] = n
        title = r[c.title].strip() if isinstance(r[c.title], str) else ""
        if not title:
            empty_titles.append(n)
        ids.append(item)
        titles.append(title)
        years.append(str(r[c.year]).strip() if c.year else "")
        cats.append(split_categories(r[c.categories], sep) if c.categories else [])
        fields.append([str(r[f]).strip() for f in c.fields])
    if bad_ids:
        n, item, why = bad_ids[0]
        raise DataError(
            path,
            f"{len(bad_ids)} item id(s) are invalid, e.g. {item!r} ({why})",
            f"ids are 1 to {MAX_ID_BYTES} bytes without control characters",
            [b[0] for b in bad_ids],
        )
    if dups:
        raise DataError(
            path, f"{len(dups) // 2} duplicate item id(s)", "keep one row per item id", dups
        )
    if empty_titles:
        raise DataError(
            path,
            f"{len(empty_titles)} item(s) have an empty title `{c.title}`",
            "give every item a title: the semantic view reads it",
            empty_titles,
        )
    if not ids:
        raise DataError(path, "no items", "the items table needs at least one row")
    return Items(ids, titles, years, cats, fields)


# ---------------------------------------------------------------------------------------
# Interactions

_ISO = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})(?:[T ](\d{2}):(\d{2})(?::(\d{2})(\.\d+)?)?)?"
    r"(Z|[+-]\d{2}:\d{2})?$"
)


def parse_timestamp(value: str) -> float | None:
    """Seconds: a number as written, or an ISO 8601 date-time (docs/DATA.md's forms; no offset
    is UTC). None when it is neither."""
    value = value.strip()
    try:
        t = float(value)
        return t if np.isfinite(t) else None
    except ValueError:
        pass
    m = _ISO.match(value)
    if not m:
        return None
    y, mo, d, hh, mm, ss, frac, tz = m.groups()
    try:
        dt = datetime(int(y), int(mo), int(d), int(hh or 0), int(mm or 0), int(ss or 0))
    except ValueError:
        return None
    offset = 0
    if tz and tz != "Z":
        sign = 1 if tz[0] == "+" else -1
        offset = sign * (int(tz[1:3]) * 3600 + int(tz[4:6]) * 60)
    epoch = (dt - datetime(1970, 1, 1)) // timedelta(seconds=1)
    return float(epoch - offset) + (float(frac) if frac else 0.0)


@dataclass
class Events:
    users: list[str]
    rows: list[int]
    times: np.ndarray


def load_events(cfg: DataConfig, row_of: dict[str, int], dropped: Counter) -> Events:
    c = cfg.interactions
    columns = list(
        dict.fromkeys([c.user, c.item, c.timestamp] + [x for x in (c.kind, c.weight) if x])
    )
    rows = read_rows(cfg, c.file, columns)
    path = cfg.root / c.file
    users, items, times = [], [], []
    bad_users, bad_times, bad_weights, unknown = [], [], [], {}
    for n, r in rows:
        user, item = r[c.user], r[c.item]
        if not isinstance(user, str) or check_id(user):
            bad_users.append(n)
            continue
        t = parse_timestamp(r[c.timestamp]) if isinstance(r[c.timestamp], str) else None
        if t is None:
            bad_times.append(n)
            continue
        if c.weight:
            try:
                w = float(r[c.weight])
            except (TypeError, ValueError):
                bad_weights.append(n)
                continue
            if cfg.filter.min_weight is not None and w < cfg.filter.min_weight:
                dropped["interactions below min_weight"] += 1
                continue
        if cfg.filter.kinds is not None and r[c.kind] not in cfg.filter.kinds:
            dropped["interactions of other kinds"] += 1
            continue
        if item not in row_of:
            unknown.setdefault(item, []).append(n)
            continue
        users.append(sys.intern(user))
        items.append(row_of[item])
        times.append(t)
    if bad_users:
        raise DataError(
            path,
            f"{len(bad_users)} row(s) have an invalid user id",
            f"ids are 1 to {MAX_ID_BYTES} bytes without control characters",
            bad_users,
        )
    if bad_times:
        raise DataError(
            path,
            f"{len(bad_times)} timestamp(s) in `{c.timestamp}` are neither a number nor ISO 8601",
            "write seconds or YYYY-MM-DD[THH:MM[:SS]][Z|+HH:MM]",
            bad_times,
        )
    if bad_weights:
        raise DataError(
            path,
            f"{len(bad_weights)} weight(s) in `{c.weight}` are not numbers",
            "fix them",
            bad_weights,
        )
    if unknown:
        rows_ = sum(len(v) for v in unknown.values())
        names = sorted(unknown)[:EXAMPLES]
        raise DataError(
            path,
            f"{rows_} interaction(s) name {len(unknown)} item id(s) that the items table lacks, "
            f"e.g. {names}",
            f"add them to {cfg.items.file} or remove those rows",
            sorted(n for v in unknown.values() for n in v),
        )
    return Events(users, items, np.array(times, dtype=np.float64))


def core_filter(ev: Events, n_items: int, f: Filter, dropped: Counter) -> np.ndarray:
    """A keep-mask: events of items below the item minimum and users below the user minimum
    are dropped, repeated until both hold (a k-core); counted by reason."""
    keep = np.ones(len(ev.users), dtype=bool)
    user_index = {u: i for i, u in enumerate(dict.fromkeys(ev.users))}
    uid = np.array([user_index[u] for u in ev.users], dtype=np.int64)
    rows = np.array(ev.rows, dtype=np.int64)
    while True:
        item_counts = np.bincount(rows[keep], minlength=n_items)
        weak_items = keep & (item_counts[rows] < f.min_item_interactions)
        dropped["interactions of items below min_item_interactions"] += int(weak_items.sum())
        keep &= ~weak_items
        user_counts = np.bincount(uid[keep], minlength=len(user_index))
        weak_users = keep & (user_counts[uid] < f.min_user_interactions)
        gone = np.unique(uid[weak_users])
        dropped["users below min_user_interactions"] += len(gone)
        dropped["interactions of dropped users"] += int(weak_users.sum())
        keep &= ~weak_users
        if not weak_items.any() and not weak_users.any():
            return keep


# ---------------------------------------------------------------------------------------
# The whole dataset


@dataclass
class Dataset:
    config: DataConfig
    items: Items
    users: list[str]  # kept events' users, in file order
    rows: list[int]  # their catalog rows
    times: np.ndarray  # their timestamps (seconds)
    dropped: Counter = field(default_factory=Counter)

    def summary(self) -> dict:
        lengths = np.bincount(
            np.unique(self.users, return_inverse=True)[1] if self.users else np.array([], int)
        )
        n_users, n_items = len(lengths), len(self.items.ids)
        cold = n_items - len(set(self.rows))
        return {
            "name": self.config.name,
            "format": self.config.format,
            "users": n_users,
            "items": n_items,
            "cold_items": cold,
            "interactions": len(self.rows),
            "sparsity": 1 - len(self.rows) / max(1, n_users * n_items),
            "history": {
                "min": int(lengths.min()) if n_users else 0,
                "median": float(np.median(lengths)) if n_users else 0.0,
                "mean": float(lengths.mean()) if n_users else 0.0,
                "max": int(lengths.max()) if n_users else 0,
            },
            "dropped": dict(sorted(self.dropped.items())),
        }


def summary_text(s: dict) -> str:
    h = s["history"]
    dropped = ", ".join(f"{v} {k}" for k, v in s["dropped"].items()) or "nothing"
    return (
        f"{s['name']} ({s['format']}): {s['users']} users, {s['items']} items "
        f"({s['cold_items']} cold), {s['interactions']} interactions, "
        f"sparsity {100 * s['sparsity']:.2f}%\n"
        f"  history length: min {h['min']}, median {h['median']:g}, mean {h['mean']:.1f}, "
        f"max {h['max']}\n"
        f"  dropped: {dropped}"
    )


def load_dataset(config: DataConfig | str | Path | None = None) -> Dataset:
    cfg = config if isinstance(config, DataConfig) else DataConfig.load(config)
    items = load_items(cfg)
    dropped: Counter = Counter()
    ev = load_events(cfg, {t: r for r, t in enumerate(items.ids)}, dropped)
    keep = core_filter(ev, len(items.ids), cfg.filter, dropped)
    idx = np.flatnonzero(keep)
    if len(idx) == 0:
        raise DataError(
            cfg.root / cfg.interactions.file,
            "no interaction is left after filtering",
            "lower the filter's minimums",
        )
    for reason in list(dropped):
        if dropped[reason] == 0:
            del dropped[reason]
    return Dataset(
        cfg, items, [ev.users[i] for i in idx], [ev.rows[i] for i in idx], ev.times[idx], dropped
    )
