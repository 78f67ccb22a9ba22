"""The mobile SDK's desktop library runs on any x86-64 CPU of our baseline:
no Intel AMX instruction in libl2rec_ffi.so (see scripts/check-portable)."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]


@pytest.mark.skipif(platform.machine() != "x86_64", reason="AMX is an x86-64 extension")
def test_the_ffi_library_has_no_amx_instruction():
    lib = Path(os.environ.get("L2REC_FFI_LIB", ROOT / "target/release/libl2rec_ffi.so"))
    assert lib.is_file(), f"{lib} is missing: cargo build --release -p l2rec-ffi"
    out = subprocess.run(
        [str(ROOT / "scripts/check-portable"), str(lib)], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    assert "no AMX instruction" in out.stderr, out.stderr
