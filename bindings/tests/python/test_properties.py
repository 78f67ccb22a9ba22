"""Property tests over the FFI (hypothesis): arbitrary ids, texts, kinds,
timestamps, k and personalize options. Every call either succeeds with a value
inside the documented limits (docs/LIMITS.md) or raises a typed L2recError;
never another exception, a crash or a hang, and a refused call stores
nothing."""

from __future__ import annotations

import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import run
from small_bundle import ITEM_IDS

MAX_ID, MAX_TEXT, MAX_KIND, MAX_K = 256, 2048, 64, 1000
TIMESTAMPS = (-62_135_596_800_000, 253_402_300_799_999)
I64 = (-(2**63), 2**63 - 1)
SETTINGS = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

# Any Unicode scalar value (surrogates cannot cross as UTF-8 at all).
chars = st.characters(codec="utf-8")
ids = st.one_of(
    st.sampled_from(ITEM_IDS),
    st.text(chars, max_size=300),
    st.text(chars, min_size=250, max_size=260),
)
kinds = st.one_of(st.sampled_from(["view", "click", ""]), st.text(chars, max_size=80))
timestamps = st.one_of(st.integers(*TIMESTAMPS), st.integers(*I64))
texts = st.one_of(
    st.none(),
    st.text(chars, max_size=40),
    st.text(chars, min_size=2040, max_size=2060),
)


def valid_name(s: str, limit: int, allow_empty: bool = False) -> bool:
    size = len(s.encode())
    return (allow_empty or size > 0) and size <= limit and not any(
        ord(c) < 32 or 127 <= ord(c) < 160 for c in s
    )


def valid_text(t: str) -> bool:
    return 0 < len(t.encode()) <= MAX_TEXT and t.strip() != "" and "\0" not in t


@pytest.fixture(scope="module")
def rec(ffi, model_path, bundle_dir, tmp_path_factory):
    config = ffi.RecommenderConfig(
        model_path=str(model_path),
        bundle_dir=str(bundle_dir),
        store_path=str(tmp_path_factory.mktemp("props") / "store"),
        threads=1,
    )
    r = run(ffi.Recommender.open(config))
    yield r
    r.shutdown()


def events_of(rec, user):
    try:
        return len(rec.export_user(user).events)
    except Exception:  # an invalid user id: nothing can be stored for it
        return 0


@SETTINGS
@given(user=ids, item=ids, t=timestamps, kind=kinds, text=texts)
def test_observe_accepts_exactly_the_documented_arguments(ffi, rec, user, item, t, kind, text):
    before = events_of(rec, user)
    event = ffi.Event(item_id=item, timestamp_ms=t, kind=kind, item_text=text)
    try:
        run(rec.observe(user, event))
    except ffi.L2recError:
        assert events_of(rec, user) == before, "a refused event was stored"
        return
    assert valid_name(user, MAX_ID) and valid_name(item, MAX_ID), (user, item)
    assert TIMESTAMPS[0] <= t <= TIMESTAMPS[1], t
    assert valid_name(kind, MAX_KIND, allow_empty=True), kind
    assert text is None or valid_text(text), text
    assert events_of(rec, user) == before + 1


@SETTINGS
@given(user=ids, k=st.integers(-5, 2000), include=st.booleans())
def test_recommend_answers_or_refuses(ffi, rec, user, k, include):
    try:
        got = run(rec.recommend(user, k, ffi.RecommendOptions(include_history=include)))
    except (ffi.L2recError, OverflowError, TypeError, ValueError) as e:
        # Negative or too large k cannot even be lowered to u32 by the
        # generated code; everything the library sees comes back typed.
        if not isinstance(e, ffi.L2recError):
            assert not 0 <= k < 2**32, (k, e)
        return
    assert valid_name(user, MAX_ID) and 1 <= k <= MAX_K, (user, k)
    assert len(got) <= k


floats = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True, width=32),
    st.sampled_from([0.0, -1.0, 0.5, 1.0, 2.0, 1e-30, 1e30]),
)


@SETTINGS
@given(steps=st.integers(0, 20_000), lr=floats, l2=floats, holdout=floats)
def test_personalize_refuses_every_option_out_of_range(ffi, rec, steps, lr, l2, holdout):
    options = ffi.PersonalizeOptions(steps=steps, learning_rate=lr, l2=l2, holdout=holdout)
    valid = (
        1 <= steps <= 10_000
        and math.isfinite(lr)
        and lr > 0
        and math.isfinite(l2)
        and l2 >= 0
        and 0 < holdout < 1
    )
    # A user with no events: a valid call returns a report without running
    # the backbone, so the property stays fast.
    try:
        report = run(rec.personalize("nobody", options))
    except ffi.L2recError.InvalidArgument:
        assert not valid, options
        return
    assert valid, f"accepted {options}"
    assert not report.saved
