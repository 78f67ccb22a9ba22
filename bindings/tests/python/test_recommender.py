"""The Python bindings against the built library and the real backbone: the
whole flow an app goes through, and the failures it must be able to tell apart."""

from __future__ import annotations

import asyncio
import gc
import json
import shutil
import struct
import threading

import pytest

from conftest import run
from small_bundle import ITEM_IDS, TITLES, D_PHI


def floats(data: bytes) -> list[float]:
    assert len(data) % 4 == 0
    return list(struct.unpack(f"<{len(data) // 4}f", data))


class Progress:
    """A ProgressListener that records what it is told, from any thread."""

    def __init__(self, ffi, on_first=None):
        outer = self

        class Listener(ffi.ProgressListener):
            def on_progress(self, done, total):
                with outer.lock:
                    outer.calls.append((done, total))
                    outer.threads.add(threading.get_ident())
                    first = len(outer.calls) == 1
                if first and on_first is not None:
                    on_first()

        self.lock = threading.Lock()
        self.calls: list[tuple[int, int]] = []
        self.threads: set[int] = set()
        self.listener = Listener()

    def check_complete(self):
        assert self.calls, "no progress reported"
        dones = [d for d, _ in self.calls]
        assert dones == sorted(dones), "progress went backwards"
        done, total = self.calls[-1]
        assert done == total > 0
        assert threading.get_ident() not in self.threads, "progress ran on the caller's thread"


@pytest.fixture(scope="module")
def shared(ffi, model_path, bundle_dir, tmp_path_factory):
    """One open recommender for the flow tests, and the progress of its open."""
    progress = Progress(ffi)
    config = ffi.RecommenderConfig(
        model_path=str(model_path),
        bundle_dir=str(bundle_dir),
        store_path=str(tmp_path_factory.mktemp("shared") / "store"),
        threads=1,
    )
    rec = run(ffi.Recommender.open(config, progress=progress.listener))
    yield rec, progress
    rec.flush()


@pytest.fixture
def rec(shared):
    return shared[0]


def watch(ffi, rec, user, items, start_ms=1_000):
    return [
        run(rec.observe(user, ffi.Event(item_id=item, timestamp_ms=start_ms + i, kind="watch")))
        for i, item in enumerate(items)
    ]


# --- the flow -----------------------------------------------------------------


def test_open_reports_progress_and_stats(ffi, shared):
    rec, progress = shared
    progress.check_complete()
    assert progress.calls[-1] == (len(ITEM_IDS), len(ITEM_IDS))  # item text states
    stats = run(rec.stats())
    assert stats.catalog_items == len(ITEM_IDS)
    assert stats.cold_items == 0
    assert stats.users == 0
    assert stats.store_encrypted is False
    assert stats.scorer
    assert (stats.items_lost, stats.ledger_problem) == (0, None)
    assert ffi.version()


def test_new_user_gets_popular_items(ffi, rec):
    recs = run(rec.recommend("nobody", 5))
    assert len(recs) == 5
    assert all(r.item_id in ITEM_IDS for r in recs)
    assert all(r.text == TITLES[ITEM_IDS.index(r.item_id)] for r in recs)


def test_observe_then_recommend(ffi, rec):
    history = ["1", "2", "7", "11"]
    seqs = watch(ffi, rec, "alice", history)
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)

    recs = run(rec.recommend("alice", 10))
    assert len(recs) == 10
    assert not {r.item_id for r in recs} & set(history), "history is excluded by default"
    scores = [r.score for r in recs]
    assert scores == sorted(scores, reverse=True)

    everything = run(rec.recommend("alice", len(ITEM_IDS), ffi.RecommendOptions(include_history=True)))
    assert set(history) <= {r.item_id for r in everything}
    # Cached view states make the second call answer the same.
    assert [r.item_id for r in run(rec.recommend("alice", 10))] == [r.item_id for r in recs]


def test_explain(ffi, rec):
    history = ["3", "4", "5", "6"]
    watch(ffi, rec, "bob", history)
    e = run(rec.explain("bob"))
    assert {v.view for v in e.views} == {ffi.HistoryView.BEHAVIORAL, ffi.HistoryView.SEMANTIC}
    assert sum(v.weight for v in e.views) == pytest.approx(1.0, abs=1e-4)
    for v in e.views:
        assert len(v.expert_scales) == 2  # 2 experts per view in the test bundle
    assert 0 < len(e.reasons) <= 10
    for reason in e.reasons:
        assert reason.item_id not in history
        assert reason.because and set(reason.because) <= set(history)


def test_cold_items_from_upsert_and_from_events(ffi, rec):
    before = run(rec.stats()).cold_items
    progress = Progress(ffi)
    items = [
        ffi.Item(id="new-1", text="Arrival (2016)"),
        ffi.Item(id="new-2", text="Paddington 2 (2017)"),
        ffi.Item(id="1", text=TITLES[0]),  # known to the bundle: keeps its embedding
    ]
    run(rec.upsert_items(items, progress=progress.listener))
    progress.check_complete()
    assert progress.calls[-1] == (3, 3)
    assert run(rec.stats()).cold_items == before + 2

    # An unknown item with text becomes a cold item; without text it is refused.
    run(rec.observe("carol", ffi.Event(item_id="new-3", timestamp_ms=1, kind="watch", item_text="Dune (2021)")))
    assert run(rec.stats()).cold_items == before + 3
    with pytest.raises(ffi.L2recError.UnknownItem):
        run(rec.observe("carol", ffi.Event(item_id="never-seen", timestamp_ms=2, kind="watch")))

    watch(ffi, rec, "carol", ["new-1", "8"], start_ms=10)
    ids = {r.item_id for r in run(rec.recommend("carol", 50, ffi.RecommendOptions(include_history=True)))}
    assert {"new-1", "new-2", "new-3"} <= ids


def test_personalize_export_forget(ffi, rec):
    history = ["1", "3", "5", "7", "9", "11", "13", "15"]
    watch(ffi, rec, "dave", history)
    run(rec.recommend("dave", 5))  # caches view states

    progress = Progress(ffi)
    report = run(rec.personalize("dave", progress=progress.listener))
    assert progress.calls and progress.calls[-1][0] == progress.calls[-1][1] > 0
    assert report.reason
    for loss in (report.train_loss_before, report.held_out_loss_before, report.held_out_loss_after):
        assert loss > 0
    assert report.gradient_norm > 0
    assert report.train_loss_after <= report.train_loss_before
    # Per view: the current mixture, each of 2 experts alone, the new mixture,
    # through the upper layers after one full pass per view for the stream
    # below them (the experts adapt layer 17 only).
    assert report.upper_passes == 2 * (1 + 2 + 1)
    assert report.backbone_passes == 2

    exported = rec.export_user("dave")
    assert exported.user == "dave"
    assert exported.encrypted_at_rest is False
    assert [e.item_id for e in exported.events] == history
    assert all(e.kind == "watch" for e in exported.events)
    assert exported.view_states, "recommend cached view states"
    for state in exported.view_states:
        assert state.view in ("behavioral", "semantic")
        values = floats(state.state)
        assert len(values) == 640 and all(v == v for v in values)
    if report.saved:
        assert exported.phi is not None and len(floats(exported.phi)) == D_PHI
        assert exported.phi_version == 1
    else:
        assert exported.phi is None

    as_json = json.loads(rec.export_user_json("dave"))
    assert as_json["user"] == "dave"
    assert [e["item_id"] for e in as_json["events"]] == history

    personal = [r.item_id for r in run(rec.recommend("dave", 5))]
    rec.forget_user("dave")
    gone = rec.export_user("dave")
    assert gone.events == [] and gone.view_states == [] and gone.phi is None
    # A forgotten user is a new user again: the popular items.
    assert len(run(rec.recommend("dave", 5))) == 5
    assert personal  # (kept for the log when the assertion above fails)


def test_personalize_progress_counts_every_pass(ffi, rec):
    watch(ffi, rec, "dora", ["2", "4", "6", "8", "10", "12"])
    progress = Progress(ffi)
    report = run(rec.personalize("dora", progress=progress.listener))
    progress.check_complete()
    assert report.backbone_passes + report.upper_passes == progress.calls[-1][1]


def test_personalize_needs_events(ffi, rec):
    watch(ffi, rec, "erin", ["1"])
    report = run(rec.personalize("erin"))
    assert report.saved is False and "fewer than 3" in report.reason


def test_concurrent_calls_share_one_recommender(ffi, rec):
    watch(ffi, rec, "frank", ["2", "4", "6"])

    async def many():
        return await asyncio.gather(*(rec.recommend("frank", 3) for _ in range(4)), rec.stats())

    *results, stats = run(many())
    assert all([r.item_id for r in res] == [r.item_id for r in results[0]] for res in results)
    assert stats.users >= 1


# --- cancellation -----------------------------------------------------------------


def test_cancel_handle_before_the_call(ffi, rec):
    handle = ffi.CancelHandle()
    handle.cancel()
    assert handle.is_cancelled()
    with pytest.raises(ffi.L2recError.Cancelled):
        run(rec.upsert_items([ffi.Item(id="c-1", text="Heat (1995)")], cancel=handle))
    with pytest.raises(ffi.L2recError.Cancelled):
        run(rec.recommend("alice", 3, cancel=handle))
    # Nothing was written.
    assert "c-1" not in {r.item_id for r in run(rec.recommend("zed", len(ITEM_IDS) + 10))}


def test_cancel_handle_during_personalize(ffi, rec):
    watch(ffi, rec, "gina", ["1", "2", "3", "4", "5", "6"])
    handle = ffi.CancelHandle()
    progress = Progress(ffi, on_first=handle.cancel)
    with pytest.raises(ffi.L2recError.Cancelled):
        run(rec.personalize("gina", progress=progress.listener, cancel=handle))
    assert len(progress.calls) <= 2, "the engine stopped at the next backbone pass"
    assert rec.export_user("gina").phi is None
    # The engine is usable after a cancelled call.
    assert len(run(rec.recommend("gina", 3))) == 3


def test_cancelling_the_awaiting_task_cancels_the_work(ffi, rec):
    watch(ffi, rec, "hank", ["1", "2", "3", "4", "5", "6"])
    started = threading.Event()
    progress = Progress(ffi, on_first=started.set)

    async def cancel_midway():
        task = asyncio.ensure_future(rec.personalize("hank", progress=progress.listener))
        while not started.is_set():
            await asyncio.sleep(0.005)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    run(cancel_midway())
    gc.collect()  # frees the dropped Rust future, which cancels its token
    # The next call waits for the abandoned personalize to stop, then runs.
    assert len(run(rec.recommend("hank", 3))) == 3
    assert len(progress.calls) < 12, "the abandoned personalize stopped early"
    assert rec.export_user("hank").phi is None


def test_open_cancelled_during_item_states(ffi, config):
    handle = ffi.CancelHandle()
    progress = Progress(ffi, on_first=handle.cancel)
    with pytest.raises(ffi.L2recError.Cancelled):
        run(ffi.Recommender.open(config(), progress=progress.listener, cancel=handle))
    assert len(progress.calls) <= 2


def test_a_failing_listener_comes_back_as_a_typed_error(ffi, rec):
    class Broken(ffi.ProgressListener):
        def on_progress(self, done, total):
            raise RuntimeError("listener bug")

    # UniFFI turns the listener's exception into a Rust panic on the worker
    # thread; the SDK catches it and returns L2recError.Internal.
    with pytest.raises(ffi.L2recError.Internal, match="panicked"):
        run(rec.upsert_items([ffi.Item(id="p-1", text="Fargo (1996)")], progress=Broken()))
    # The engine is still usable (its lock recovers from the panic).
    run(rec.upsert_items([ffi.Item(id="p-1", text="Fargo (1996)")]))
    assert len(run(rec.recommend("alice", 3))) == 3


# --- errors -------------------------------------------------------------------------


def test_bad_arguments(ffi, rec, config):
    with pytest.raises(ffi.L2recError.InvalidArgument, match="k must be"):
        run(rec.recommend("alice", 0))
    with pytest.raises(ffi.L2recError.InvalidArgument, match="ids must be"):
        run(rec.recommend("", 3))
    with pytest.raises(ffi.L2recError.InvalidArgument):
        run(rec.observe("x" * 300, ffi.Event(item_id="1", timestamp_ms=0, kind="watch")))
    with pytest.raises(ffi.L2recError.InvalidArgument, match="item text"):
        run(rec.upsert_items([ffi.Item(id="long", text="x" * 5000)]))
    with pytest.raises(ffi.L2recError.InvalidArgument):
        rec.forget_user("")
    with pytest.raises(ffi.L2recError.InvalidArgument, match="32 bytes"):
        run(ffi.Recommender.open(config(master_key=b"short")))
    # The generated code checks types before anything reaches Rust.
    with pytest.raises(TypeError):
        run(rec.recommend("alice", "three"))
    with pytest.raises(ValueError, match="u32"):
        run(rec.recommend("alice", -1))
    # A record of the wrong type too (bindings/patch_python.py).
    with pytest.raises(TypeError, match="expected Item"):
        run(rec.upsert_items([None]))
    with pytest.raises(TypeError, match="expected Event"):
        run(rec.observe("alice", None))
    # Every one of these is an L2recError.
    try:
        run(rec.recommend("alice", 0))
    except ffi.L2recError as e:
        assert type(e).__name__ == "InvalidArgument"


def test_corrupt_bundle(ffi, config, bundle_dir, tmp_path):
    corrupt = tmp_path / "corrupt"
    shutil.copytree(bundle_dir, corrupt)
    items = corrupt / "items.safetensors"
    data = bytearray(items.read_bytes())
    data[-1] ^= 0xFF
    items.write_bytes(bytes(data))
    with pytest.raises(ffi.L2recError.Bundle, match="sha256"):
        run(ffi.Recommender.open(config(bundle_dir=str(corrupt))))

    (corrupt / "manifest.json").write_text("{ not json")
    with pytest.raises(ffi.L2recError.Bundle, match="JSON"):
        run(ffi.Recommender.open(config(bundle_dir=str(corrupt))))

    with pytest.raises(ffi.L2recError.Bundle, match="not a directory"):
        run(ffi.Recommender.open(config(bundle_dir=str(tmp_path / "nowhere"))))


def test_wrong_backbone_file(ffi, config, tmp_path):
    with pytest.raises(ffi.L2recError.Backbone):
        run(ffi.Recommender.open(config(model_path=str(tmp_path / "missing.gguf"))))
    fake = tmp_path / "fake.gguf"
    fake.write_bytes(b"GGUF" + b"\0" * 64)
    with pytest.raises(ffi.L2recError.Backbone):
        run(ffi.Recommender.open(config(model_path=str(fake))))


def test_a_missing_ledger_is_reported_and_rewritten(ffi, config, tmp_path):
    first = run(ffi.Recommender.open(config()))
    watch(ffi, first, "lee", ["1", "2"])
    first.shutdown()
    (tmp_path / "store" / "ledger.bin").unlink()

    again = run(ffi.Recommender.open(config()))
    stats = run(again.stats())
    assert "missing" in stats.ledger_problem
    assert stats.items_lost == 0
    assert [e.item_id for e in again.export_user("lee").events] == ["1", "2"]
    again.shutdown()
    assert (tmp_path / "store" / "ledger.bin").exists(), "open wrote it again"
    third = run(ffi.Recommender.open(config()))
    assert run(third.stats()).ledger_problem is None
    third.shutdown()


def test_store_key_and_lock(ffi, config):
    key = bytes(range(32))
    first = run(ffi.Recommender.open(config(master_key=key)))
    assert run(first.stats()).store_encrypted is True
    watch(ffi, first, "ivy", ["1", "2"])
    assert first.export_user("ivy").encrypted_at_rest is True

    with pytest.raises(ffi.L2recError.StoreLocked):
        run(ffi.Recommender.open(config(master_key=key)))

    del first
    gc.collect()  # the last reference: the engine closes its store
    with pytest.raises(ffi.L2recError.StoreKey, match="does not match"):
        run(ffi.Recommender.open(config(master_key=bytes(32))))
    with pytest.raises(ffi.L2recError.StoreKey):
        run(ffi.Recommender.open(config()))
    again = run(ffi.Recommender.open(config(master_key=key, durability=ffi.Durability.BATCHED(flush_every_ms=50))))
    assert [e.item_id for e in again.export_user("ivy").events] == ["1", "2"]
    again.flush()
