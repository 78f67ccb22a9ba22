"""The SDK audit (scripts/sdk-audit): the whole API tried as a demanding app
developer would, through the Python bindings against the real library and
backbone, good calls and bad; then damaged stores, and the files scanned
after forget_user. Prints one JSON line per case and the counts: calls
tried, crashes, hangs, silent acceptances, damaged stores detected.

Not a test: a crash or a hang is a finding to count, not an exception to
raise. Cases run in a worker process, one after another; when the worker
dies (a crash) or stops answering (a hang), the case is counted and a new
worker resumes at the next case.

    python sdk_audit.py                 # every case
    python sdk_audit.py --worker N      # (internal) run cases from N on
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT / "bindings/tests/python"))
import child_scripts  # noqa: E402
import small_bundle  # noqa: E402

CASE_TIMEOUT_S = 90
I64_MIN, I64_MAX, U32_MAX, U64_MAX = -(2**63), 2**63 - 1, 2**32 - 1, 2**64 - 1


def cache_dir() -> Path:
    if os.environ.get("L2REC_CACHE"):
        return Path(os.environ["L2REC_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "l2rec"


def load_ffi(folder: Path):
    spec = importlib.util.spec_from_file_location("l2rec_ffi", folder / "l2rec_ffi.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["l2rec_ffi"] = module
    spec.loader.exec_module(module)
    return module


def run(coro):
    return asyncio.run(coro)


# --- the cases ------------------------------------------------------------------------
# Each case is (name, group, expect, function). `expect` is "ok" (the call
# must succeed and its check hold) or "refuse" (the call must fail with a
# typed L2recError, or the generated code's own TypeError/ValueError before
# anything reaches Rust). A function returns a short note, or raises.

CASES: list[tuple[str, str, str, object]] = []


def case(name: str, group: str, expect: str):
    def register(fn):
        CASES.append((name, group, expect, fn))
        return fn

    return register


class Env:
    """One worker's world: the module, the backbone, a bundle, a scratch dir,
    and a shared Recommender opened on first use."""

    def __init__(self, ffi, model: Path, bundle: Path, scratch: Path):
        self.ffi, self.model, self.bundle, self.scratch = ffi, model, bundle, scratch
        self._rec = None
        self._n = 0

    def config(self, **overrides):
        self._n += 1
        fields = dict(
            model_path=str(self.model),
            bundle_dir=str(self.bundle),
            store_path=str(self.scratch / f"store-{os.getpid()}-{self._n}"),
            threads=1,
        )
        fields.update(overrides)
        return self.ffi.RecommenderConfig(**fields)

    @property
    def rec(self):
        if self._rec is None:
            self._rec = run(self.ffi.Recommender.open(self.config()))
        return self._rec

    def event(self, item="1", t=1_000, kind="view", text=None):
        return self.ffi.Event(item_id=item, timestamp_ms=t, kind=kind, item_text=text)

    def watch(self, rec, user, items, start=1_000):
        for i, item in enumerate(items):
            run(rec.observe(user, self.event(item, start + i)))

    def options(self, steps=4, learning_rate=0.5, l2=0.01, holdout=0.25):
        return self.ffi.PersonalizeOptions(
            steps=steps, learning_rate=learning_rate, l2=l2, holdout=holdout
        )


ITEMS = small_bundle.ITEM_IDS

# Good calls: each must succeed.


@case("open", "good", "ok")
def _(env):
    rec = run(env.ffi.Recommender.open(env.config()))
    rec.shutdown()


@case("open encrypted, batched", "good", "ok")
def _(env):
    durability = env.ffi.Durability.BATCHED(flush_every_ms=100)
    rec = run(env.ffi.Recommender.open(env.config(master_key=bytes(range(32)), durability=durability)))
    env.watch(rec, "enc", ITEMS[:3])
    rec.flush()
    rec.shutdown()


@case("upsert_items new and known", "good", "ok")
def _(env):
    run(env.rec.upsert_items([env.ffi.Item(id="new-1", text="A New Film (2026)"), env.ffi.Item(id="1", text="Toy Story (1995)")]))


@case("observe known item", "good", "ok")
def _(env):
    first = run(env.rec.observe("alice", env.event("1")))
    assert run(env.rec.observe("alice", env.event("2", 1_001))) == first + 1


@case("observe cold item with text", "good", "ok")
def _(env):
    run(env.rec.observe("alice", env.event("cold-9", 2_000, "play", "A Cold Film (2026)")))


@case("recommend after events", "good", "ok")
def _(env):
    env.watch(env.rec, "bob", ITEMS[:5])
    recs = run(env.rec.recommend("bob", 5))
    assert len(recs) == 5 and not {r.item_id for r in recs} & set(ITEMS[:5])


@case("recommend include_history", "good", "ok")
def _(env):
    run(env.rec.recommend("bob", 5, env.ffi.RecommendOptions(include_history=True)))


@case("recommend new user (popular)", "good", "ok")
def _(env):
    assert len(run(env.rec.recommend("nobody-yet", 3))) == 3


@case("recommend k larger than the catalog", "good", "ok")
def _(env):
    assert len(run(env.rec.recommend("bob", 1000))) <= len(ITEMS) + 2


@case("explain", "good", "ok")
def _(env):
    e = run(env.rec.explain("bob"))
    assert e.views and e.reasons is not None


@case("personalize", "good", "ok")
def _(env):
    env.watch(env.rec, "carol", ITEMS[:12])
    run(env.rec.personalize("carol", env.options(steps=4)))


@case("personalize a history longer than the context", "good", "ok")
def _(env):
    env.watch(env.rec, "long", ITEMS * 2)
    run(env.rec.personalize("long", env.options(steps=2)))


@case("personalize with progress", "good", "ok")
def _(env):
    seen = []

    class Listener(env.ffi.ProgressListener):
        def on_progress(self, done, total):
            seen.append((done, total))

    run(env.rec.personalize("carol", env.options(steps=2), Listener()))
    assert seen


@case("personalize without events saves nothing and says why", "good", "ok")
def _(env):
    report = run(env.rec.personalize("no-events", env.options()))
    assert report.saved is False and report.reason, report


@case("personalize with 1 event saves nothing and says why", "good", "ok")
def _(env):
    run(env.rec.observe("one", env.event()))
    report = run(env.rec.personalize("one", env.options()))
    assert report.saved is False and "fewer than" in report.reason, report


@case("export_user", "good", "ok")
def _(env):
    assert len(env.rec.export_user("bob").events) == 5


@case("export_user_json", "good", "ok")
def _(env):
    json.loads(env.rec.export_user_json("bob"))


@case("stats", "good", "ok")
def _(env):
    assert run(env.rec.stats()).users >= 1


@case("forget_user", "good", "ok")
def _(env):
    env.watch(env.rec, "dave", ITEMS[:2])
    env.rec.forget_user("dave")
    assert not env.rec.export_user("dave").events


@case("compact", "good", "ok")
def _(env):
    env.rec.compact()


@case("flush", "good", "ok")
def _(env):
    env.rec.flush()


@case("8 threads of mixed calls", "good", "ok")
def _(env):
    errors = []

    def worker(i):
        try:
            for j in range(3):
                run(env.rec.observe(f"t{i}", env.event(ITEMS[j], 10 + j)))
            run(env.rec.recommend(f"t{i}", 3))
        except Exception as e:  # noqa: BLE001 - counted below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert not errors, errors
    assert all([e.item_id for e in env.rec.export_user(f"t{i}").events] == ITEMS[:3] for i in range(8))


@case("cancel handle before the call", "good", "ok")
def _(env):
    handle = env.ffi.CancelHandle()
    handle.cancel()
    try:
        run(env.rec.personalize("carol", env.options(), None, handle))
    except env.ffi.L2recError.Cancelled:
        return "cancelled"
    raise AssertionError("a cancelled handle did not cancel")


@case("cancel personalize (10000 steps) within 1 s, then serve", "good", "ok")
def _(env):
    run(env.rec.recommend("carol", 3))  # warm: the next one is served from the cache
    handle = env.ffi.CancelHandle()
    threading.Timer(0.5, handle.cancel).start()
    start = time.monotonic()
    try:
        run(env.rec.personalize("carol", env.options(steps=10_000), None, handle))
        raise AssertionError("not cancelled")
    except env.ffi.L2recError.Cancelled:
        pass
    stopped = time.monotonic() - start - 0.5
    t = time.monotonic()
    run(env.rec.recommend("carol", 3))
    served = time.monotonic() - t
    # A held model lock would make the warm call wait for the whole run.
    assert stopped < 1.0 and served < 0.5, (stopped, served)
    return f"stopped {stopped:.2f} s after cancel, next call {served:.2f} s"


@case("cancel open during item states", "good", "ok")
def _(env):
    handle = env.ffi.CancelHandle()
    handle.cancel()
    try:
        run(env.ffi.Recommender.open(env.config(), None, handle))
    except env.ffi.L2recError.Cancelled:
        return "cancelled"
    raise AssertionError("open was not cancelled")


@case("calls after shutdown are refused as Closed", "good", "ok")
def _(env):
    rec = run(env.ffi.Recommender.open(env.config()))
    rec.shutdown()
    for call in (lambda: run(rec.recommend("a", 1)), lambda: rec.flush(), lambda: run(rec.stats())):
        try:
            call()
            raise AssertionError("accepted after shutdown")
        except env.ffi.L2recError.Closed:
            pass


@case("use after __del__ (release)", "arguments", "refuse")
def _(env):
    rec = run(env.ffi.Recommender.open(env.config()))
    rec.__del__()
    rec.flush()


@case("shutdown while 4 threads call", "good", "ok")
def _(env):
    rec = run(env.ffi.Recommender.open(env.config()))
    env.watch(rec, "s", ITEMS[:3])
    outcomes = []

    def worker():
        for _ in range(5):
            try:
                run(rec.recommend("s", 3))
                outcomes.append("ok")
            except env.ffi.L2recError.Closed:
                outcomes.append("closed")

    threads = [threading.Thread(target=worker) for _ in range(4)]
    [t.start() for t in threads]
    time.sleep(0.05)
    rec.shutdown()
    [t.join() for t in threads]
    assert len(outcomes) == 20, outcomes


for _i in range(10):

    @case(f"exit with a live Recommender after async calls #{_i + 1}", "lifecycle", "ok")
    def _(env, _i=_i):
        folder = Path(env.ffi.__file__).parent
        store = env.scratch / f"exit-{os.getpid()}-{_i}"
        done = subprocess.run(
            [sys.executable, "-c", child_scripts.EXIT, str(folder), str(env.model), str(env.bundle), str(store)],
            capture_output=True, text=True, timeout=120,
        )
        assert done.returncode == 0, f"exit {done.returncode}: {done.stderr[-200:]}"


# Bad arguments: each must be refused with a typed error.


def refuse_personalize(**bad):
    def fn(env):
        env.watch(env.rec, "pbad", ITEMS[:8])
        run(env.rec.personalize("pbad", env.options(**bad)))

    return fn


for _name, _bad in [
    ("learning_rate NaN", dict(learning_rate=math.nan)),
    ("learning_rate inf", dict(learning_rate=math.inf)),
    ("learning_rate -1e30", dict(learning_rate=-1e30)),
    ("learning_rate 0", dict(learning_rate=0.0)),
    ("l2 NaN", dict(l2=math.nan)),
    ("l2 -inf", dict(l2=-math.inf)),
    ("l2 -1", dict(l2=-1.0)),
    ("holdout NaN", dict(holdout=math.nan)),
    ("holdout -1", dict(holdout=-1.0)),
    ("holdout 0", dict(holdout=0.0)),
    ("holdout 1", dict(holdout=1.0)),
    ("holdout 2.0", dict(holdout=2.0)),
    ("holdout inf", dict(holdout=math.inf)),
    ("steps 0", dict(steps=0)),
    ("steps 2**32-1", dict(steps=U32_MAX)),
    ("steps -1", dict(steps=-1)),
]:
    case(f"personalize {_name}", "arguments", "refuse")(refuse_personalize(**_bad))


def refuse_observe(user="ebad", **event):
    def fn(env):
        run(env.rec.observe(user, env.event(**event)))

    return fn


for _name, _user, _event in [
    ("timestamp i64::MIN", "ebad", dict(t=I64_MIN)),
    ("timestamp i64::MAX", "ebad", dict(t=I64_MAX)),
    ("timestamp year 10000", "ebad", dict(t=253_402_300_800_000)),
    ("timestamp 2**63", "ebad", dict(t=2**63)),
    ("kind of 1 MB", "ebad", dict(kind="k" * (1 << 20))),
    ("kind of 65 bytes", "ebad", dict(kind="k" * 65)),
    ("kind with NUL", "ebad", dict(kind="vi\0ew")),
    ("kind with newline", "ebad", dict(kind="vi\new")),
    ("item id empty", "ebad", dict(item="")),
    ("item id of 10 kB", "ebad", dict(item="i" * 10_000)),
    ("item id with NUL", "ebad", dict(item="1\0")),
    ("unknown item without text", "ebad", dict(item="never-seen")),
    ("cold item with empty text", "ebad", dict(item="cold-x", text="   ")),
    ("cold item with NUL in text", "ebad", dict(item="cold-y", text="a\0b")),
    ("cold item text of 1 MB", "ebad", dict(item="cold-z", text="t" * (1 << 20))),
    ("user empty", "", dict()),
    ("user of 300 bytes", "u" * 300, dict()),
    ("user with a control character", "u\x1b[2J", dict()),
    ("user not a string", 42, dict()),
    ("event None", "ebad", None),
]:
    if _event is None:
        case(f"observe {_name}", "arguments", "refuse")(lambda env: run(env.rec.observe("ebad", None)))
    else:
        case(f"observe {_name}", "arguments", "refuse")(refuse_observe(_user, **_event))


for _name, _fn in [
    ("k 0", lambda env: run(env.rec.recommend("bob", 0))),
    ("k 1001 (over max_k)", lambda env: run(env.rec.recommend("bob", 1001))),
    ("k -1", lambda env: run(env.rec.recommend("bob", -1))),
    ("k 2**32", lambda env: run(env.rec.recommend("bob", 2**32))),
    ("k as a string", lambda env: run(env.rec.recommend("bob", "3"))),
    ("user empty", lambda env: run(env.rec.recommend("", 3))),
    ("user of 10 kB", lambda env: run(env.rec.recommend("u" * 10_000, 3))),
    ("user None", lambda env: run(env.rec.recommend(None, 3))),
]:
    case(f"recommend {_name}", "arguments", "refuse")(_fn)


for _name, _fn in [
    ("[None]", lambda env: run(env.rec.upsert_items([None]))),
    ("None", lambda env: run(env.rec.upsert_items(None))),
    ("a duplicate id", lambda env: run(env.rec.upsert_items([env.ffi.Item(id="d", text="A"), env.ffi.Item(id="d", text="B")]))),
    ("empty text", lambda env: run(env.rec.upsert_items([env.ffi.Item(id="e", text="")]))),
    ("blank text", lambda env: run(env.rec.upsert_items([env.ffi.Item(id="e", text=" \n\t")]))),
    ("text of 5 kB", lambda env: run(env.rec.upsert_items([env.ffi.Item(id="e", text="x" * 5000)]))),
    ("text with NUL", lambda env: run(env.rec.upsert_items([env.ffi.Item(id="e", text="x\0y")]))),
    ("id empty", lambda env: run(env.rec.upsert_items([env.ffi.Item(id="", text="x")]))),
    ("id with newline", lambda env: run(env.rec.upsert_items([env.ffi.Item(id="a\nb", text="x")]))),
    ("100001 items", lambda env: run(env.rec.upsert_items([env.ffi.Item(id=f"n{i}", text="x") for i in range(100_001)]))),
]:
    case(f"upsert_items {_name}", "arguments", "refuse")(_fn)


for _name, _fn in [
    ("explain user empty", lambda env: run(env.rec.explain(""))),
    ("personalize user empty", lambda env: run(env.rec.personalize("", env.options()))),
    ("forget_user empty", lambda env: env.rec.forget_user("")),
    ("export_user empty", lambda env: env.rec.export_user("")),
    ("export_user of 10 kB", lambda env: env.rec.export_user("u" * 10_000)),
]:
    case(_name, "arguments", "refuse")(_fn)


def refuse_open(**overrides):
    def fn(env):
        if "limits" in overrides and isinstance(overrides["limits"], dict):
            overrides["limits"] = env.ffi.Limits(**overrides["limits"])
        if "batched" in overrides:
            overrides["durability"] = env.ffi.Durability.BATCHED(flush_every_ms=overrides.pop("batched"))
        rec = run(env.ffi.Recommender.open(env.config(**overrides)))
        rec.shutdown()

    return fn


_zero = dict(max_id_bytes=0, max_text_bytes=0, max_k=0, max_items_per_call=0, max_kind_bytes=0)
for _name, _overrides in [
    ("threads 0", dict(threads=0)),
    ("threads 600", dict(threads=600)),
    ("threads 1000000", dict(threads=1_000_000)),
    ("threads -1", dict(threads=-1)),
    ("every limit 0", dict(limits=_zero)),
    ("max_k past its ceiling", dict(limits=dict(_zero, max_id_bytes=256, max_text_bytes=2048, max_k=10**9, max_items_per_call=10, max_kind_bytes=64))),
    ("batched flush 0 ms", dict(batched=0)),
    ("batched flush 2**64-1 ms", dict(batched=U64_MAX)),
    ("max_events_per_user 0", dict(max_events_per_user=0)),
    ("master key of 31 bytes", dict(master_key=bytes(31))),
    ("master key of 0 bytes", dict(master_key=b"")),
    ("model path missing", dict(model_path="/nowhere/model.gguf")),
    ("model path a directory", dict(model_path="/tmp")),
    ("bundle dir missing", dict(bundle_dir="/nowhere/bundle")),
    ("store path a file", dict(store_path="/etc/hostname")),
    ("store path with NUL", dict(store_path="/tmp/a\0b")),
]:
    case(f"open {_name}", "arguments", "refuse")(refuse_open(**_overrides))


@case("open a fake GGUF", "arguments", "refuse")
def _(env):
    fake = env.scratch / "fake.gguf"
    fake.write_bytes(b"GGUF" + b"\0" * 64)
    run(env.ffi.Recommender.open(env.config(model_path=str(fake))))


@case("open a bundle with a corrupt file", "arguments", "refuse")
def _(env):
    corrupt = env.scratch / f"corrupt-{os.getpid()}"
    shutil.copytree(env.bundle, corrupt, dirs_exist_ok=True)
    items = corrupt / "items.safetensors"
    data = bytearray(items.read_bytes())
    data[len(data) // 2] ^= 0xFF
    items.write_bytes(bytes(data))
    run(env.ffi.Recommender.open(env.config(bundle_dir=str(corrupt))))


@case("open a store already open", "arguments", "refuse")
def _(env):
    config = env.config()
    first = run(env.ffi.Recommender.open(config))
    try:
        run(env.ffi.Recommender.open(config))
    finally:
        first.shutdown()


@case("open an encrypted store with the wrong key", "arguments", "refuse")
def _(env):
    config = env.config(master_key=bytes(range(32)))
    rec = run(env.ffi.Recommender.open(config))
    env.watch(rec, "k", ITEMS[:2])
    rec.shutdown()
    config.master_key = bytes(32)
    run(env.ffi.Recommender.open(config))


@case("open an encrypted store without a key", "arguments", "refuse")
def _(env):
    config = env.config(master_key=bytes(range(32)))
    rec = run(env.ffi.Recommender.open(config))
    rec.shutdown()
    config.master_key = None
    run(env.ffi.Recommender.open(config))


# --- damaged stores --------------------------------------------------------------------
# A store of three users (events, and a personalized phi for one), closed,
# then damaged; reopened, every user's export is compared with the original.
# "detected": open refuses, or a user's call fails typed, or stats() names
# damage. "intact": every user's data equals the original. "silent": data
# differs or is gone and nothing said so.

DAMAGE_USERS = ["ann", "ben", "cid"]


def build_store(env, encrypted: bool) -> tuple[object, Path, dict]:
    key = bytes(range(32)) if encrypted else None
    config = env.config(master_key=key)
    rec = run(env.ffi.Recommender.open(config))
    for n, user in enumerate(DAMAGE_USERS):
        env.watch(rec, user, ITEMS[n * 6 : n * 6 + 10], start=1_000 * (n + 1))
    run(rec.personalize("ann", env.options(steps=2)))
    before = {u: snapshot(rec.export_user(u)) for u in DAMAGE_USERS}
    rec.flush()
    rec.shutdown()
    return config, Path(config.store_path), before


def snapshot(export):
    return (
        [(e.seq, e.item_id, e.timestamp_ms, e.kind) for e in export.events],
        export.phi, export.phi_version,
    )


def damage_case(name: str, encrypted: bool, damage):
    def fn(env):
        config, store, before = build_store(env, encrypted)
        damage(store)
        try:
            rec = run(env.ffi.Recommender.open(config))
        except env.ffi.L2recError as e:
            return f"detected: open refused ({type(e).__name__}: {str(e)[:100]})"
        try:
            stats = run(rec.stats())
            reported = list(stats.damaged_users) + list(stats.damaged_items)
            lost, failed = [], []
            for user in DAMAGE_USERS:
                try:
                    if snapshot(rec.export_user(user)) != before[user]:
                        lost.append(user)
                except env.ffi.L2recError as e:
                    failed.append(f"{user}: {type(e).__name__}")
        finally:
            rec.shutdown()
        if failed or reported:
            return f"detected: {failed or reported}"
        if lost:
            raise SilentLoss(f"silent: {lost} changed, nothing reported")
        return "intact"

    return fn


class SilentLoss(Exception):
    pass


def flip(fraction: float):
    def damage(store: Path):
        db = store / "sled" / "db"
        data = bytearray(db.read_bytes())
        data[int(len(data) * fraction) % len(data)] ^= 0x5A
        db.write_bytes(bytes(data))

    return damage


def truncate(fraction: float):
    def damage(store: Path):
        db = store / "sled" / "db"
        data = db.read_bytes()
        db.write_bytes(data[: int(len(data) * fraction)])

    return damage


def remove(relative: str):
    def damage(store: Path):
        path = store / relative
        shutil.rmtree(path) if path.is_dir() else path.unlink()

    return damage


def keyring_edit(edit):
    def damage(store: Path):
        path = store / "keyring.json"
        doc = json.loads(path.read_text())
        edit(doc)
        path.write_text(json.dumps(doc))

    return damage


def drop_first_key(doc):
    doc["keys"].pop(next(iter(doc["keys"])))


for _encrypted in (False, True):
    _mode = "encrypted" if _encrypted else "plaintext"
    for _f in (0.05, 0.15, 0.3, 0.45, 0.6, 0.75, 0.9, 0.99):
        case(f"damaged {_mode} store: flip a byte at {_f:.0%} of sled/db", "damage", "ok")(damage_case("", _encrypted, flip(_f)))
    for _f in (0.5, 0.9, 0.999):
        case(f"damaged {_mode} store: truncate sled/db to {_f:.1%}", "damage", "ok")(damage_case("", _encrypted, truncate(_f)))
    case(f"damaged {_mode} store: sled/ deleted", "damage", "ok")(damage_case("", _encrypted, remove("sled")))
    case(f"damaged {_mode} store: sled/conf deleted", "damage", "ok")(damage_case("", _encrypted, remove("sled/conf")))
    if _encrypted:
        case("damaged encrypted store: one user's keyring entry removed", "damage", "ok")(damage_case("", True, keyring_edit(drop_first_key)))
        case("damaged encrypted store: keyring.json not JSON", "damage", "ok")(damage_case("", True, lambda s: (s / "keyring.json").write_text("{")))
        case("damaged encrypted store: keyring.json deleted", "damage", "ok")(damage_case("", True, remove("keyring.json")))


# --- forget means gone ------------------------------------------------------------------


def forget_scan(encrypted: bool):
    def fn(env):
        config = env.config(master_key=bytes(range(32)) if encrypted else None)
        rec = run(env.ffi.Recommender.open(config))
        user, kind = "forget-me-zq7", "kind-xq9w"
        for i, item in enumerate(ITEMS[:6]):
            run(rec.observe(user, env.event(item, 5_000 + i, kind)))
        run(rec.recommend(user, 3))
        run(rec.personalize(user, env.options(steps=2)))
        env.watch(rec, "stays", ITEMS[:3])
        rec.forget_user(user)
        rec.flush()
        rec.shutdown()
        patterns = [user.encode(), kind.encode()]
        hits = []
        for path in Path(config.store_path).rglob("*"):
            if path.is_file():
                data = path.read_bytes()
                hits += [f"{path.name}:{p.decode()}" for p in patterns if p in data]
        assert not hits, f"found after forget: {hits}"

    return fn


case("forget_user leaves no id or kind bytes (plaintext)", "forget", "ok")(forget_scan(False))
case("forget_user leaves no id or kind bytes (encrypted)", "forget", "ok")(forget_scan(True))


# --- the worker and the parent ---------------------------------------------------------


def run_case(env, index: int) -> dict:
    name, group, expect, fn = CASES[index]
    start = time.monotonic()
    row = {"case": index, "name": name, "group": group, "expect": expect}
    try:
        note = fn(env)
        row["outcome"] = "pass" if expect == "ok" else "silent"
        if note:
            row["note"] = str(note)
    except env.ffi.L2recError as e:
        row["outcome"] = "pass" if expect == "refuse" else "failed"
        row["note"] = f"{type(e).__name__}: {str(e)[:160]}"
    except SilentLoss as e:
        row["outcome"] = "silent"
        row["note"] = str(e)
    except (TypeError, ValueError) as e:
        # The generated code's own type and range checks, before Rust.
        row["outcome"] = "pass" if expect == "refuse" else "failed"
        row["note"] = f"{type(e).__name__} (generated code): {str(e)[:120]}"
    except Exception as e:  # noqa: BLE001 - every other exception is a finding
        row["outcome"] = "untyped" if expect == "refuse" else "failed"
        row["note"] = f"{type(e).__name__}: {str(e)[:160]}"
    row["seconds"] = round(time.monotonic() - start, 2)
    return row


def worker(first: int, folder: Path, model: Path, bundle: Path, scratch: Path) -> None:
    env = Env(load_ffi(folder), model, bundle, scratch)
    for index in range(first, len(CASES)):
        print(json.dumps({"start": index}), flush=True)
        print(json.dumps(run_case(env, index)), flush=True)
    os._exit(0)  # the exit itself is audited by its own cases


def parent() -> int:
    lib = Path(os.environ.get("L2REC_FFI_LIB", ROOT / "target/release/libl2rec_ffi.so"))
    py = Path(os.environ.get("L2REC_FFI_PY", ROOT / "bindings/generated/python/l2rec_ffi.py"))
    model = Path(os.environ.get("L2REC_MODEL", cache_dir() / "models/gemma-3-270m-q4_k_m.gguf"))
    for path in (lib, py, model):
        if not path.exists():
            sys.exit(f"sdk-audit: {path} is missing (scripts/sdk-audit builds what it needs)")
    scratch = Path(tempfile.mkdtemp(prefix="l2rec-audit-"))
    folder = scratch / "ffi"
    folder.mkdir()
    shutil.copy(py, folder / "l2rec_ffi.py")
    shutil.copy(lib, folder / lib.name)
    bundle = small_bundle.write_small_bundle(scratch / "bundle", model, k=2)
    rows: list[dict] = []
    index = 0
    started = time.monotonic()
    while index < len(CASES):
        proc = subprocess.Popen(
            [sys.executable, __file__, "--worker", str(index), str(folder), str(model), str(bundle), str(scratch)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        current, outcome = index, None
        lines: list[str] = []
        reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")), daemon=True)
        reader.start()
        deadline = time.monotonic() + CASE_TIMEOUT_S
        seen = 0
        while True:
            while seen < len(lines):
                msg = json.loads(lines[seen])
                seen += 1
                if "start" in msg:
                    current = msg["start"]
                    deadline = time.monotonic() + CASE_TIMEOUT_S
                else:
                    rows.append(msg)
                    print(json.dumps(msg), flush=True)
                    index = msg["case"] + 1
            if proc.poll() is not None and not reader.is_alive():
                if proc.returncode != 0 and index <= current:
                    outcome = "crash"
                break
            if time.monotonic() > deadline:
                proc.kill()
                outcome = "hang"
                break
            time.sleep(0.05)
        if outcome:
            name, group, expect, _ = CASES[current]
            err = proc.stderr.read()[-300:] if outcome == "crash" else ""
            row = {"case": current, "name": name, "group": group, "expect": expect,
                   "outcome": outcome, "note": f"exit {proc.returncode}: {err}".strip()}
            rows.append(row)
            print(json.dumps(row), flush=True)
            index = current + 1
    counts = {k: sum(r["outcome"] == k for r in rows) for k in ("pass", "failed", "silent", "untyped", "crash", "hang")}
    damage = [r for r in rows if r["group"] == "damage"]
    summary = {
        "calls_tried": len(rows),
        **counts,
        "silent_acceptances": sum(r["outcome"] == "silent" and r["group"] != "damage" for r in rows),
        "damaged_stores": len(damage),
        "damaged_stores_detected": sum(r.get("note", "").startswith("detected") for r in damage),
        "damaged_stores_intact": sum(r.get("note") == "intact" for r in damage),
        "damaged_stores_silent": sum(r["outcome"] == "silent" for r in damage),
        "seconds": round(time.monotonic() - started),
    }
    print(json.dumps({"summary": summary}), flush=True)
    shutil.rmtree(scratch, ignore_errors=True)
    return 0 if counts["crash"] == counts["hang"] == 0 else 1


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        first, folder, model, bundle, scratch = sys.argv[2:7]
        worker(int(first), Path(folder), Path(model), Path(bundle), Path(scratch))
    else:
        sys.exit(parent())
