"""llama.cpp's SPM tokenizer (src/llama-vocab.cpp), reimplemented for the Gemma GGUF vocab.

The runtime tokenizes as llama.cpp does (`add_special = true`, `parse_special =
false`), through its own port of these rules (core/src/tokenizer.rs, held to
llama.cpp's ids by core/tests/tokenizer.rs); the trainer must produce the very
same ids. llama.cpp's steps:

1. `tokenizer_st_partition`: user-defined tokens (for Gemma: `\\n` runs, space
   runs, tab runs, some HTML tags) are cut out of the text first, longest token
   text first, leftmost match first. With `parse_special = false` control and
   unknown tokens are *not* cut out (`<bos>` in an item title stays text).
2. BOS first when `tokenizer.ggml.add_bos_token`; no space prefix when
   `tokenizer.ggml.add_space_prefix` is false (Gemma).
3. Each remaining text fragment: spaces become U+2581, then the SPM bigram
   merge: repeatedly merge the adjacent pair whose concatenation is a vocab
   token with the highest score (ties: leftmost), then unknown single
   characters fall back to `<0xXX>` byte tokens.
"""

from __future__ import annotations

import heapq
import os
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np

from . import paths

# gguf token types (llama.cpp's LLAMA_TOKEN_TYPE_*)
_USER_DEFINED = 4
# Token texts llama.cpp's vocab loader marks as control whatever their GGUF type
# (its EOT/EOG "control-looking token" lists); a control token is not cut out of
# the text when parse_special is false. For Gemma 3 this hits `</s>` (id 212).
_FORCED_CONTROL = {
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<|end_of_text|>",
    "<EOT>",
    "_<EOT>",
    "[EOT]",
    "[EOS]",
    "[PAD]",
    "<end_of_utterance>",
    "<|eom_id|>",
    "</s>",
    "<eos>",
    "<turn|>",
    "<|tool_response>",
    "<\uff5cend\u2581of\u2581sentence\uff5c>",
    "[e~[",
    "<|fim_prefix|>",
    "<fim-prefix>",
    "<fim_prefix>",
    "<PRE>",
    "\u2581<PRE>",
    "<\uff5cfim\u2581begin\uff5c>",
    "<|fim_suffix|>",
    "<fim-suffix>",
    "<fim_suffix>",
    "<SUF>",
    "\u2581<SUF>",
    "<\uff5cfim\u2581hole\uff5c>",
    "<|fim_middle|>",
    "<fim-middle>",
    "<fim_middle>",
    "<MID>",
    "\u2581<MID>",
    "<\uff5cfim\u2581end\uff5c>",
    "<|fim_pad|>",
    "<fim-pad>",
    "<fim_pad>",
    "<PAD>",
    "<|fim_repo|>",
    "<|repo_name|>",
    "<fim-repo>",
    "<REPO>",
    "<reponame>",
    "<|file_sep|>",
    "<|prefix|>",
    "<|suffix|>",
    "<|middle|>",
    "<|code_prefix|>",
    "<|code_suffix|>",
    "<|code_middle|>",
    "<|calls|>",
    "<|call|>",
    "<|flush|>",
    "<|return|>",
    "<|constrain|>",
}


@dataclass
class SpmVocab:
    tokens: list[str]
    scores: np.ndarray
    types: np.ndarray
    bos_id: int
    add_bos: bool
    add_space_prefix: bool


def _field(reader: gguf.GGUFReader, key: str, default=None):
    f = reader.fields.get(key)
    return default if f is None else f.contents()


def load_vocab(reader: gguf.GGUFReader) -> SpmVocab:
    model = _field(reader, "tokenizer.ggml.model")
    if model != "llama":
        raise ValueError(f"expected an SPM ('llama') tokenizer, the GGUF has {model!r}")
    return SpmVocab(
        tokens=_field(reader, "tokenizer.ggml.tokens"),
        scores=np.asarray(_field(reader, "tokenizer.ggml.scores"), dtype=np.float32),
        types=np.asarray(_field(reader, "tokenizer.ggml.token_type"), dtype=np.int32),
        bos_id=int(_field(reader, "tokenizer.ggml.bos_token_id")),
        add_bos=bool(_field(reader, "tokenizer.ggml.add_bos_token", True)),
        add_space_prefix=bool(_field(reader, "tokenizer.ggml.add_space_prefix", True)),
    )


class Tokenizer:
    def __init__(self, vocab: SpmVocab):
        self.vocab = vocab
        self.token_to_id = {t: i for i, t in enumerate(vocab.tokens)}
        self.scores = vocab.scores.tolist()
        # Longest first, as llama.cpp sorts cache_special_tokens. Its sort is not
        # stable, but equal-length Gemma user-defined tokens cannot overlap
        # (runs of one character, or `<...>` tags), so the order among them
        # cannot change a result.
        ud = [
            i
            for i, t in enumerate(vocab.types.tolist())
            if t == _USER_DEFINED and vocab.tokens[i] not in _FORCED_CONTROL
        ]
        self.user_defined = sorted(ud, key=lambda i: -len(vocab.tokens[i].encode("utf-8")))
        self.byte_ids = [self.token_to_id[f"<0x{b:02X}>"] for b in range(256)]

    @classmethod
    def from_gguf(cls, path: str | Path) -> Tokenizer:
        return cls(load_vocab(gguf.GGUFReader(str(path))))

    @classmethod
    def load(cls, path: str | Path | None = None) -> Tokenizer:
        """From the GGUF, through a vocab cache in the work dir (parsing the GGUF takes ~20 s)."""
        from .backbone import file_sha256  # late: backbone imports torch

        path = Path(path or paths.backbone_path())
        cache = paths.work_dir() / f"vocab-{file_sha256(path)[:16]}.npz"
        if cache.exists():
            z = np.load(cache)
            blob, offs = z["blob"].tobytes(), z["offsets"]
            tokens = [blob[offs[i] : offs[i + 1]].decode("utf-8") for i in range(len(offs) - 1)]
            return cls(
                SpmVocab(
                    tokens,
                    z["scores"],
                    z["types"],
                    int(z["bos_id"]),
                    bool(z["add_bos"]),
                    bool(z["add_space_prefix"]),
                )
            )
        vocab = load_vocab(gguf.GGUFReader(str(path)))
        enc = [t.encode("utf-8") for t in vocab.tokens]
        offsets = np.concatenate([[0], np.cumsum([len(b) for b in enc])]).astype(np.int64)
        tmp = cache.with_suffix(f".{os.getpid()}.tmp.npz")  # per process: DDP ranks may race here
        np.savez(
            tmp,
            blob=np.frombuffer(b"".join(enc), dtype=np.uint8),
            offsets=offsets,
            scores=vocab.scores,
            types=vocab.types,
            bos_id=vocab.bos_id,
            add_bos=vocab.add_bos,
            add_space_prefix=vocab.add_space_prefix,
        )
        os.replace(tmp, cache)
        return cls(vocab)

    def encode(self, text: str, add_special: bool = True) -> list[int]:
        out: list[int] = []
        if add_special and self.vocab.add_bos:
            out.append(self.vocab.bos_id)
        prev_special = True
        for frag in self._partition(text):
            if isinstance(frag, int):
                out.append(frag)
                prev_special = True
                continue
            if self.vocab.add_space_prefix and prev_special:
                frag = " " + frag
            self._spm(frag.replace(" ", "\u2581"), out)
            prev_special = False
        return out

    def _partition(self, text: str) -> list[str | int]:
        """Cut user-defined tokens out of the text (llama.cpp tokenizer_st_partition)."""
        frags: list[str | int] = [text] if text else []
        for tid in self.user_defined:
            piece = self.vocab.tokens[tid]
            if not any(isinstance(f, str) and piece in f for f in frags):
                continue
            nxt: list[str | int] = []
            for f in frags:
                if isinstance(f, int) or piece not in f:
                    nxt.append(f)
                    continue
                parts = f.split(piece)  # leftmost, non-overlapping: as repeated find()
                for j, p in enumerate(parts):
                    if j:
                        nxt.append(tid)
                    if p:
                        nxt.append(p)
            frags = nxt
        return frags

    def _spm(self, text: str, out: list[int]) -> None:
        """llm_tokenizer_spm_session::tokenize on one escaped fragment."""
        n = len(text)
        if n == 0:
            return
        start = list(range(n))  # symbol i covers text[start[i] : start[i] + size[i]]
        size = [1] * n
        prev = list(range(-1, n - 1))
        nxt = list(range(1, n)) + [-1]
        heap: list[tuple[float, int, int, int]] = []

        def add_bigram(left: int, right: int) -> None:
            if left == -1 or right == -1:
                return
            piece = text[start[left] : start[left] + size[left] + size[right]]
            tid = self.token_to_id.get(piece)
            if tid is None:
                return
            # max-heap on score, ties: smaller left first (llm_bigram_spm::comparator)
            heapq.heappush(heap, (-self.scores[tid], left, right, size[left] + size[right]))

        for i in range(1, n):
            add_bigram(i - 1, i)
        while heap:
            _, left, right, sz = heapq.heappop(heap)
            if size[left] == 0 or size[right] == 0 or size[left] + size[right] != sz:
                continue  # stale: one side was merged since
            size[left] += size[right]
            size[right] = 0
            nxt[left] = nxt[right]
            if nxt[right] >= 0:
                prev[nxt[right]] = left
            add_bigram(prev[left], left)
            add_bigram(left, nxt[left])

        i = 0
        while i != -1:
            piece = text[start[i] : start[i] + size[i]]
            tid = self.token_to_id.get(piece)
            if tid is not None:
                out.append(tid)
            else:  # only a single character can be missing: byte fallback
                out.extend(self.byte_ids[b] for b in piece.encode("utf-8"))
            i = nxt[i]
