"""Fixtures: the generated Python module loaded against the built library,
the real backbone, and a small bundle written for it.

Environment:
  L2REC_FFI_LIB  the built library (default target/release/libl2rec_ffi.so)
  L2REC_FFI_PY   the generated module (default bindings/generated/python/l2rec_ffi.py)
  L2REC_MODEL    the backbone (default ${L2REC_CACHE:-~/.cache/l2rec}/models/gemma-3-270m-q4_k_m.gguf)
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import small_bundle  # noqa: E402

ROOT = Path(__file__).resolve().parents[3]


def _cache_dir() -> Path:
    if os.environ.get("L2REC_CACHE"):
        return Path(os.environ["L2REC_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "l2rec"


@pytest.fixture(scope="session")
def ffi(tmp_path_factory):
    """The generated module, imported from a folder that holds it next to the
    library (where UniFFI's Python loader looks)."""
    lib = Path(os.environ.get("L2REC_FFI_LIB", ROOT / "target/release/libl2rec_ffi.so"))
    py = Path(os.environ.get("L2REC_FFI_PY", ROOT / "bindings/generated/python/l2rec_ffi.py"))
    for path, how in ((lib, "cargo build --release -p l2rec-ffi"), (py, "scripts/gen-bindings")):
        if not path.exists():
            pytest.fail(f"{path} is missing: run {how} (scripts/test-bindings does both)")
    folder = tmp_path_factory.mktemp("ffi")
    shutil.copy(py, folder / "l2rec_ffi.py")
    shutil.copy(lib, folder / lib.name)
    spec = importlib.util.spec_from_file_location("l2rec_ffi", folder / "l2rec_ffi.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["l2rec_ffi"] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def model_path() -> Path:
    path = Path(os.environ.get("L2REC_MODEL", _cache_dir() / "models" / "gemma-3-270m-q4_k_m.gguf"))
    if not path.exists():
        pytest.fail(f"the backbone {path} is missing: run scripts/fetch-assets")
    return path


@pytest.fixture(scope="session")
def bundle_dir(tmp_path_factory, model_path) -> Path:
    # k = 2 of 2 experts per view: with k = 1 the gate is flat in phi and
    # personalize has no gradient.
    return small_bundle.write_small_bundle(tmp_path_factory.mktemp("bundle") / "small", model_path, k=2)


@pytest.fixture
def config(ffi, model_path, bundle_dir, tmp_path):
    """A config for a fresh store; call it with overrides."""

    def make(**overrides):
        fields = dict(
            model_path=str(model_path),
            bundle_dir=str(bundle_dir),
            store_path=str(tmp_path / "store"),
            threads=1,
        )
        fields.update(overrides)
        return ffi.RecommenderConfig(**fields)

    return make


def run(coro):
    """Awaits a binding call the way an app's event loop would."""
    return asyncio.run(coro)
