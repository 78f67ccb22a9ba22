"""A small but complete l2rec bundle for the binding tests, written with the
standard library only, following docs/BUNDLE.md.

It mirrors core/tests/common `write_small_bundle_with(dir, k)`: 40 items,
2 random LoRA experts per view (rank 4 on blk.17 attn_q and ffn_up), random
heads, no item text states (the engine computes them at open). The backbone's
identity and weight shapes are read from the model file's GGUF header.
"""

from __future__ import annotations

import array
import hashlib
import json
import random
import struct
from pathlib import Path

D_R = 16
D_PHI = 8
EXPERTS = 2
MAX_ITEMS = 20
LORA = {"rank": 4, "alpha": 8.0, "layers": [17], "modules": ["attn_q", "ffn_up"]}
TEMPLATES = {
    "behavioral": {"prefix": "Items a user interacted with, oldest first:\n", "sep": "\n"},
    "semantic": {"prefix": "Movies a user watched, oldest first:\n", "sep": "\n"},
}

TITLES = [
    "Toy Story (1995)", "GoldenEye (1995)", "Four Rooms (1995)", "Get Shorty (1995)",
    "Copycat (1995)", "Twelve Monkeys (1995)", "Babe (1995)", "Dead Man Walking (1995)",
    "Richard III (1995)", "Seven (Se7en) (1995)", "Usual Suspects, The (1995)",
    "Mighty Aphrodite (1995)", "Postino, Il (1994)", "Mr. Holland's Opus (1995)",
    "French Twist (1995)", "From Dusk Till Dawn (1996)", "White Balloon, The (1995)",
    "Antonia's Line (1995)", "Angels and Insects (1995)", "Muppet Treasure Island (1996)",
    "Braveheart (1995)", "Taxi Driver (1976)", "Rumble in the Bronx (1995)",
    "Birdcage, The (1996)", "Brothers McMullen, The (1995)", "Bad Boys (1995)",
    "Apollo 13 (1995)", "Batman Forever (1995)", "Belle de jour (1967)",
    "Crimson Tide (1995)", "Crumb (1994)", "Desperado (1995)",
    "Doom Generation, The (1995)", "Free Willy 2 (1995)", "Mad Love (1995)",
    "Nadja (1994)", "Net, The (1995)", "Strange Days (1995)",
    "To Wong Foo, Thanks for Everything! (1995)", "Billy Madison (1995)",
]
ITEM_IDS = [str(i + 1) for i in range(len(TITLES))]

# GGUF value types (ggml's gguf.h).
_U8, _I8, _U16, _I16, _U32, _I32, _F32, _BOOL, _STR, _ARR, _U64, _I64, _F64 = range(13)
_SCALAR = {_U8: "<B", _I8: "<b", _U16: "<H", _I16: "<h", _U32: "<I", _I32: "<i",
           _F32: "<f", _BOOL: "<?", _U64: "<Q", _I64: "<q", _F64: "<d"}


class _Cursor:
    def __init__(self, f):
        self.f = f

    def unpack(self, fmt):
        size = struct.calcsize(fmt)
        return struct.unpack(fmt, self.f.read(size))[0]

    def string(self):
        return self.f.read(self.unpack("<Q")).decode("utf-8", "replace")

    def value(self, kind):
        if kind == _STR:
            return self.string()
        if kind == _ARR:
            inner, n = self.unpack("<I"), self.unpack("<Q")
            if inner == _STR:
                for _ in range(n):  # skipped: only the tokenizer has these
                    self.f.seek(self.unpack("<Q"), 1)
                return None
            if inner == _ARR:
                raise ValueError("nested GGUF arrays are not expected in a model header")
            self.f.seek(n * struct.calcsize(_SCALAR[inner]), 1)
            return None
        return self.unpack(_SCALAR[kind])


def read_model_header(path: Path) -> dict:
    """The GGUF metadata scalars and tensor shapes (ggml order) of a model."""
    with open(path, "rb") as f:
        c = _Cursor(f)
        if f.read(4) != b"GGUF":
            raise ValueError(f"{path} is not a GGUF file")
        c.unpack("<I")
        n_tensors, n_kv = c.unpack("<Q"), c.unpack("<Q")
        meta = {}
        for _ in range(n_kv):
            key = c.string()
            meta[key] = c.value(c.unpack("<I"))
        shapes = {}
        for _ in range(n_tensors):
            name = c.string()
            dims = [c.unpack("<Q") for _ in range(c.unpack("<I"))]
            c.unpack("<I")
            c.unpack("<Q")
            shapes[name] = dims
    return {"meta": meta, "shapes": shapes}


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _floats(rng: random.Random, n: int, amp: float) -> array.array:
    return array.array("f", (amp * rng.uniform(-1.0, 1.0) for _ in range(n)))


def write_safetensors(path: Path, tensors: dict, metadata: dict | None = None) -> None:
    """`tensors`: name -> (shape, array('f')), written as little-endian F32."""
    header, blobs, offset = {}, [], 0
    for name, (shape, values) in tensors.items():
        data = values.tobytes()  # x86/arm hosts are little-endian
        header[name] = {"dtype": "F32", "shape": list(shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    if metadata:
        header["__metadata__"] = metadata
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for blob in blobs:
            f.write(blob)


def _gguf_string(s: str) -> bytes:
    b = s.encode()
    return struct.pack("<Q", len(b)) + b


def write_lora_gguf(path: Path, arch: str, alpha: float, tensors: dict) -> None:
    """A llama.cpp LoRA adapter. `tensors`: name -> (ggml shape, array('f'))."""
    align = 32
    kv = [
        ("general.type", _STR, "adapter"),
        ("general.architecture", _STR, arch),
        ("adapter.type", _STR, "lora"),
        ("adapter.lora.alpha", _F32, alpha),
    ]
    out = bytearray(b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(kv)))
    for key, kind, value in kv:
        out += _gguf_string(key) + struct.pack("<I", kind)
        out += _gguf_string(value) if kind == _STR else struct.pack("<f", value)
    offset, datas = 0, []
    for name, (shape, values) in tensors.items():
        data = values.tobytes()
        out += _gguf_string(name) + struct.pack("<I", len(shape))
        out += b"".join(struct.pack("<Q", d) for d in shape)
        out += struct.pack("<IQ", 0, offset)  # GGML_TYPE_F32
        datas.append(data)
        offset += len(data) + (-len(data) % align)
    out += b"\0" * (-len(out) % align)
    for data in datas:
        out += data + b"\0" * (-len(data) % align)
    path.write_bytes(bytes(out))


def write_small_bundle(directory: Path, model_path: Path, k: int = 1, seed: int = 11) -> Path:
    """Writes the bundle into `directory` (created) and returns it."""
    header = read_model_header(model_path)
    meta, shapes = header["meta"], header["shapes"]
    arch = meta["general.architecture"]
    d, n_layer = int(meta[f"{arch}.embedding_length"]), int(meta[f"{arch}.block_count"])
    n = len(TITLES)
    rng = random.Random(seed)

    directory.mkdir(parents=True, exist_ok=True)
    (directory / "experts").mkdir(exist_ok=True)

    def linear(stem, rows, cols, amp):
        return {f"{stem}.weight": ([rows, cols], _floats(rng, rows * cols, amp)),
                f"{stem}.bias": ([rows], _floats(rng, rows, amp))}

    heads = {}
    heads.update(linear("gate.behavioral", EXPERTS, D_PHI, 1.0))
    heads.update(linear("gate.semantic", EXPERTS, D_PHI, 1.0))
    heads["user.phi_mean"] = ([D_PHI], _floats(rng, D_PHI, 1.0))
    heads.update(linear("proj.behavioral", D_R, d, 0.05))
    heads.update(linear("proj.semantic", D_R, d, 0.05))
    heads.update(linear("fusion", D_R, 3 * D_R, 0.1))
    heads.update(linear("item.text_proj", D_R, d, 0.05))
    write_safetensors(directory / "heads.safetensors", heads)

    items = {
        "item.id_embedding": ([n, D_R], _floats(rng, n * D_R, 0.1)),
        "item.bias": ([n], _floats(rng, n, 0.01)),
    }
    write_safetensors(directory / "items.safetensors", items,
                      {"item_ids": json.dumps(ITEM_IDS), "item_texts": json.dumps(TITLES)})

    files = ["heads.safetensors", "items.safetensors"]
    r = LORA["rank"]
    for view in ("behavioral", "semantic"):
        for e in range(EXPERTS):
            erng = random.Random(100 + e + 10 * (view == "semantic"))
            tensors = {}
            for layer in LORA["layers"]:
                for module in LORA["modules"]:
                    target = f"blk.{layer}.{module}.weight"
                    n_in, n_out = shapes[target]
                    tensors[f"{target}.lora_a"] = ([n_in, r], _floats(erng, r * n_in, 0.05))
                    tensors[f"{target}.lora_b"] = ([r, n_out], _floats(erng, n_out * r, 0.05))
            name = f"experts/{view}-{e}.gguf"
            write_lora_gguf(directory / name, arch, LORA["alpha"], tensors)
            files.append(name)

    manifest = {
        "format": "l2rec-bundle",
        "version": 1,
        "name": "ffi-test-small",
        "backbone": {"file": model_path.name, "sha256": sha256_file(model_path),
                     "arch": arch, "n_embd": d, "n_layer": n_layer},
        "views": {v: {"experts": EXPERTS, "k": k, "template": TEMPLATES[v]}
                  for v in ("behavioral", "semantic")},
        "lora": LORA,
        "dims": {"d": d, "d_r": D_R, "d_phi": D_PHI},
        "history": {"max_items": MAX_ITEMS},
        "items": {"count": n},
        "files": {f: {"sha256": sha256_file(directory / f), "bytes": (directory / f).stat().st_size}
                  for f in files},
    }
    (directory / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return directory


if __name__ == "__main__":
    import sys

    if len(sys.argv) != 3:
        sys.exit("usage: small_bundle.py <out dir> <model.gguf>")
    # k = 2 of 2 experts per view, as the Python tests use (personalize needs k > 1).
    print(write_small_bundle(Path(sys.argv[1]), Path(sys.argv[2]), k=2))
