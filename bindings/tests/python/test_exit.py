"""The SDK never takes the app down at exit or after close: a process that
exits with a live Recommender right after its async calls, 50 times, never
aborts; a closed Recommender refuses calls with a typed error."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import run

RUNS = int(os.environ.get("L2REC_EXIT_RUNS", "50"))

# Opens, makes async calls (the last one's wake-up is what used to race the
# interpreter's exit), and exits without closing anything.
SCRIPT = r"""
import asyncio, importlib.util, sys
folder, model, bundle, store = sys.argv[1:5]
spec = importlib.util.spec_from_file_location("l2rec_ffi", folder + "/l2rec_ffi.py")
ffi = importlib.util.module_from_spec(spec)
sys.modules["l2rec_ffi"] = ffi
spec.loader.exec_module(ffi)
config = ffi.RecommenderConfig(model_path=model, bundle_dir=bundle, store_path=store, threads=1)

async def main():
    rec = await ffi.Recommender.open(config)
    await rec.observe("u", ffi.Event(item_id="1", timestamp_ms=1, kind="view", item_text=None))
    await rec.recommend("u", 3)
    await rec.stats()
    return rec

rec = asyncio.run(main())
"""


def test_exiting_with_live_objects_never_aborts(ffi, model_path, bundle_dir, tmp_path):
    folder = Path(ffi.__file__).parent
    failures = []
    for i in range(RUNS):
        store = tmp_path / f"store-{i}"
        done = subprocess.run(
            [sys.executable, "-c", SCRIPT, str(folder), str(model_path), str(bundle_dir), str(store)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        if done.returncode != 0:
            failures.append((i, done.returncode, done.stderr[-300:]))
    assert not failures, f"{len(failures)} of {RUNS} exits failed: {failures[:3]}"


def test_a_closed_recommender_refuses_calls_with_a_typed_error(ffi, config):
    rec = run(ffi.Recommender.open(config()))
    rec.close()
    rec.close()  # closing twice is fine
    with pytest.raises(ffi.L2recError.Closed):
        run(rec.recommend("u", 3))
    with pytest.raises(ffi.L2recError.Closed):
        rec.flush()
    with pytest.raises(ffi.L2recError.Closed):
        rec.export_user("u")
    # The store was released: a new Recommender opens it at once.
    again = run(ffi.Recommender.open(config()))
    assert run(again.stats()).users == 0
    again.close()
