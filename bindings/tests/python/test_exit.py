"""The SDK never takes the app down at exit or after close: a process that
exits with a live Recommender right after its async calls, 50 times, never
aborts; a Recommender after shutdown() refuses calls with a typed error."""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
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

    def one(i: int):
        store = tmp_path / f"store-{i}"
        args = [str(folder), str(model_path), str(bundle_dir), str(store)]
        done = subprocess.run(
            [sys.executable, "-c", SCRIPT, *args], capture_output=True, text=True, timeout=120
        )
        return i, done.returncode, done.stderr[-300:]

    # Two at a time: the runs are independent processes, and load only makes
    # an exit race likelier.
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(one, range(RUNS)))
    failures = [r for r in results if r[1] != 0]
    assert not failures, f"{len(failures)} of {RUNS} exits failed: {failures[:3]}"


def test_a_shut_down_recommender_refuses_calls_with_a_typed_error(ffi, config):
    rec = run(ffi.Recommender.open(config()))
    rec.shutdown()
    rec.shutdown()  # twice is fine
    with pytest.raises(ffi.L2recError.Closed):
        run(rec.recommend("u", 3))
    with pytest.raises(ffi.L2recError.Closed):
        rec.flush()
    with pytest.raises(ffi.L2recError.Closed):
        rec.export_user("u")
    # The store was released: a new Recommender opens it at once.
    again = run(ffi.Recommender.open(config()))
    assert run(again.stats()).users == 0
    again.shutdown()


RELEASE_SCRIPT = r"""
import asyncio, gc, importlib.util, sys
folder, model, bundle, store = sys.argv[1:5]
spec = importlib.util.spec_from_file_location("l2rec_ffi", folder + "/l2rec_ffi.py")
ffi = importlib.util.module_from_spec(spec)
sys.modules["l2rec_ffi"] = ffi
spec.loader.exec_module(ffi)
config = ffi.RecommenderConfig(model_path=model, bundle_dir=bundle, store_path=store, threads=1)
rec = asyncio.run(ffi.Recommender.open(config))
handle = ffi.CancelHandle()
for obj, call in ((rec, rec.flush), (handle, handle.cancel)):
    obj.__del__()
    obj.__del__()
    try:
        call()
        sys.exit("a released object accepted a call")
    except ffi.L2recError.Closed:
        pass
del rec, handle
gc.collect()
print("released")
"""


def test_a_released_object_refuses_calls_and_is_freed_once(ffi, model_path, bundle_dir, tmp_path):
    """An explicit `__del__` (Kotlin's `destroy()`), twice, then a call, then
    the collector's own `__del__`: a typed `Closed`, and no double free
    (which aborted the process before bindings/patch_python.py). In a child
    process, because the failure it guards against is an abort."""
    folder = Path(ffi.__file__).parent
    args = [str(folder), str(model_path), str(bundle_dir), str(tmp_path / "store")]
    done = subprocess.run(
        [sys.executable, "-c", RELEASE_SCRIPT, *args], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0 and "released" in done.stdout, (done.returncode, done.stderr[-500:])
