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

from child_scripts import EXIT, RELEASE
from conftest import run

RUNS = int(os.environ.get("L2REC_EXIT_RUNS", "50"))

def test_exiting_with_live_objects_never_aborts(ffi, model_path, bundle_dir, tmp_path):
    folder = Path(ffi.__file__).parent

    def one(i: int):
        store = tmp_path / f"store-{i}"
        args = [str(folder), str(model_path), str(bundle_dir), str(store)]
        done = subprocess.run(
            [sys.executable, "-c", EXIT, *args], capture_output=True, text=True, timeout=120
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


def test_a_released_object_refuses_calls_and_is_freed_once(ffi, model_path, bundle_dir, tmp_path):
    """An explicit `__del__` (Kotlin's `destroy()`), twice, then a call, then
    the collector's own `__del__`: a typed `Closed`, and no double free
    (which aborted the process before bindings/patch_python.py). In a child
    process, because the failure it guards against is an abort."""
    folder = Path(ffi.__file__).parent
    args = [str(folder), str(model_path), str(bundle_dir), str(tmp_path / "store")]
    done = subprocess.run(
        [sys.executable, "-c", RELEASE, *args], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0 and "released" in done.stdout, (done.returncode, done.stderr[-500:])
