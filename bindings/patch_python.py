"""Makes the generated Python module's object release idempotent (run by
scripts/gen-bindings after uniffi-bindgen).

UniFFI 0.32's Python `__del__` frees the object's handle but leaves it set:
an explicit `obj.__del__()` (the Python analogue of Kotlin's `destroy()`)
followed by the garbage collector's own `__del__` frees it twice, and any
call in between uses freed memory; both abort the process (measured by
scripts/sdk-audit: "free(): double free detected"). After this patch the
first release clears the handle, a second is a no-op, and a call on a
released object raises `L2recError.Closed` instead of touching Rust. And a
record argument of the wrong type (`upsert_items([None])`) raises TypeError,
as every other wrong type does, instead of AttributeError.

    python3 bindings/patch_python.py bindings/generated/python/l2rec_ffi.py
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

DEL = re.compile(
    r'(    def __del__\(self\):\n'
    r'        # In case of partial initialization of instances\.\n'
    r'        handle = getattr\(self, "_handle", None\)\n)'
    r'(        if handle is not None:\n)'
)
CLONE = re.compile(r"(    def _uniffi_clone_handle\(self\):\n)(        return _uniffi_rust_call\()")


# A record's converter reads the value's fields without checking its type,
# so `upsert_items([None])` raised AttributeError, not the TypeError every
# other wrong type gets from the generated code.
RECORD_CHECK = re.compile(
    r"(class _UniffiFfiConverterType(\w+)\(_UniffiConverterRustBuffer\):\n"
    r"(?:(?!\nclass ).)*?"
    r"    def check_lower\(value\):\n)"
    r"(        _UniffiFfiConverter\w+\.check_lower\(value\.)",
    re.S,
)


def type_checked(text: str) -> tuple[str, int]:
    return RECORD_CHECK.subn(
        lambda m: m.group(1)
        + f"        if not isinstance(value, {m.group(2)}):  # l2rec: bindings/patch_python.py\n"
        + f'            raise TypeError(f"expected {m.group(2)}, got {{type(value).__name__}}")\n'
        + m.group(3),
        text,
    )


def patch(text: str) -> str:
    released = DEL.subn(r"\1        self._handle = None  # l2rec: release once (bindings/patch_python.py)\n\2", text)
    guarded = CLONE.subn(
        r"\1"
        r'        if getattr(self, "_handle", None) is None:  # l2rec: released (bindings/patch_python.py)\n'
        r'            raise L2recError.Closed("this object was released: open a new one")\n'
        r"\2",
        released[0],
    )
    if released[1] == 0 or released[1] != guarded[1]:
        sys.exit(
            f"patch_python: found {released[1]} __del__ and {guarded[1]} clone methods to patch; "
            "has the UniFFI version changed? Update bindings/patch_python.py"
        )
    checked = type_checked(guarded[0])
    if checked[1] == 0:
        sys.exit("patch_python: found no record converter to type-check; update bindings/patch_python.py")
    return checked[0]


if __name__ == "__main__":
    path = Path(sys.argv[1])
    path.write_text(patch(path.read_text()))
    print(f"patched {path}: release once, Closed after release, records type-checked")
