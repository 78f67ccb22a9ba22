//! The backbone's tokenizer: llama.cpp's SPM tokenizer (`llama-vocab.cpp`:
//! `tokenizer_st_partition`, then `llm_tokenizer_spm_session`) as it runs for
//! Gemma's vocabulary with `add_special = true, parse_special = false`,
//! reimplemented so that llama.cpp can load the model without its vocabulary.
//!
//! Why: llama.cpp keeps Gemma's 262,144 tokens three times over (an id-to-text
//! table, a text-to-id hash map and a piece cache), 27 MB of dirty memory a
//! phone counts; this tokenizer keeps one byte blob, offsets, scores and a
//! sorted index (about 5 MB). The trainer's `tokenizer.py` is its twin, and
//! `tests/tokenizer.rs` holds both this and llama.cpp's own to the same ids.
//!
//! The steps, as llama.cpp takes them:
//! 1. user-defined tokens (Gemma: runs of `\n`, spaces or tabs, some HTML
//!    tags) are cut out of the text, longest first, leftmost first; control
//!    and unknown tokens stay text (`<bos>` in an item title is not a token);
//! 2. BOS first when the vocabulary asks for it; a space before a fragment
//!    only when `add_space_prefix` (Gemma: no);
//! 3. each fragment: spaces become U+2581, then adjacent symbols merge, always
//!    the pair whose text is a token with the highest score (ties: leftmost),
//!    and a symbol left that is no token falls back to `<0xXX>` byte tokens.

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::path::PathBuf;

use crate::ffi::gguf::{GgufError, GgufFile};

pub type TokenId = i32;

/// Token types of the GGUF (llama.cpp's `LLAMA_TOKEN_TYPE_*`).
const USER_DEFINED: i32 = 4;

/// Token texts llama.cpp's vocabulary loader marks as control whatever their
/// type (its end-of-turn and end-of-generation lists): never cut out of text.
/// For Gemma 3 this takes `</s>` off the user-defined tokens.
const FORCED_CONTROL: &[&str] = &[
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
    "<\u{ff5c}end\u{2581}of\u{2581}sentence\u{ff5c}>",
    "[e~[",
    "<|fim_prefix|>",
    "<fim-prefix>",
    "<fim_prefix>",
    "<PRE>",
    "\u{2581}<PRE>",
    "<\u{ff5c}fim\u{2581}begin\u{ff5c}>",
    "<|fim_suffix|>",
    "<fim-suffix>",
    "<fim_suffix>",
    "<SUF>",
    "\u{2581}<SUF>",
    "<\u{ff5c}fim\u{2581}hole\u{ff5c}>",
    "<|fim_middle|>",
    "<fim-middle>",
    "<fim_middle>",
    "<MID>",
    "\u{2581}<MID>",
    "<\u{ff5c}fim\u{2581}end\u{ff5c}>",
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
];

#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error(transparent)]
    Gguf(#[from] GgufError),
    #[error("{path}: {what} (the backbone must be an SPM model such as Gemma's GGUF)")]
    Vocabulary { path: PathBuf, what: String },
}

/// Gemma's SPM vocabulary, compact: token `i` is `blob[offsets[i]..offsets[i + 1]]`.
pub struct Tokenizer {
    blob: Vec<u8>,
    offsets: Vec<u32>,
    scores: Vec<f32>,
    /// Token ids ordered by their bytes (ties: by id), for binary search.
    by_text: Vec<u32>,
    /// User-defined tokens cut out of the text, longest first.
    user_defined: Vec<u32>,
    /// `<0x00>` .. `<0xFF>`.
    byte_tokens: Vec<TokenId>,
    bos: Option<TokenId>,
    add_space_prefix: bool,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("tokens", &self.len())
            .field("bos", &self.bos)
            .finish()
    }
}

impl Tokenizer {
    /// Reads the vocabulary from the GGUF's `tokenizer.ggml.*` metadata.
    pub fn from_gguf(gguf: &GgufFile) -> Result<Self, TokenizerError> {
        let bad = |what: &str| TokenizerError::Vocabulary {
            path: gguf.path().to_owned(),
            what: what.to_owned(),
        };
        let model = gguf.string("tokenizer.ggml.model")?;
        if model.as_deref() != Some("llama") {
            return Err(bad(&format!(
                "tokenizer.ggml.model is {model:?}, not \"llama\" (SPM)"
            )));
        }
        let (blob, offsets) = gguf
            .string_array("tokenizer.ggml.tokens")?
            .ok_or_else(|| bad("no tokenizer.ggml.tokens"))?;
        let n = offsets.len() - 1;
        let scores = gguf
            .f32_array("tokenizer.ggml.scores")?
            .ok_or_else(|| bad("no tokenizer.ggml.scores"))?;
        let types = gguf
            .i32_array("tokenizer.ggml.token_type")?
            .ok_or_else(|| bad("no tokenizer.ggml.token_type"))?;
        if scores.len() != n || types.len() != n {
            return Err(bad("tokens, scores and token types differ in length"));
        }
        let add_bos = gguf
            .boolean("tokenizer.ggml.add_bos_token")?
            .unwrap_or(true);
        let bos = match gguf.number("tokenizer.ggml.bos_token_id")? {
            Some(id) if add_bos && id >= 0.0 && (id as usize) < n => Some(id as TokenId),
            Some(_) if add_bos => return Err(bad("tokenizer.ggml.bos_token_id is out of range")),
            _ => None,
        };
        let add_space_prefix = gguf
            .boolean("tokenizer.ggml.add_space_prefix")?
            .unwrap_or(true);
        let text = |i: u32| &blob[offsets[i as usize] as usize..offsets[i as usize + 1] as usize];
        // A stable sort: equal texts keep id order, so `id` finds the last one.
        let mut by_text: Vec<u32> = (0..n as u32).collect();
        by_text.sort_by(|&a, &b| text(a).cmp(text(b)));
        let mut user_defined: Vec<u32> = (0..n as u32)
            .filter(|&i| types[i as usize] == USER_DEFINED)
            .filter(|&i| !FORCED_CONTROL.iter().any(|t| t.as_bytes() == text(i)))
            .collect();
        // Longest first, as llama.cpp sorts its special tokens; equal lengths
        // keep id order (Gemma's cannot overlap: runs of one character or tags).
        user_defined.sort_by_key(|&i| std::cmp::Reverse(text(i).len()));
        let mut tokenizer = Self {
            blob,
            offsets,
            scores,
            by_text,
            user_defined,
            byte_tokens: Vec::new(),
            bos,
            add_space_prefix,
        };
        tokenizer.byte_tokens = (0..=255u8)
            .map(|b| tokenizer.id(format!("<0x{b:02X}>").as_bytes()))
            .collect::<Option<_>>()
            .ok_or_else(|| bad("a byte token <0xXX> is missing"))?;
        Ok(tokenizer)
    }

    /// Tokens in the vocabulary.
    pub fn len(&self) -> usize {
        self.offsets.len() - 1
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn text(&self, id: u32) -> &[u8] {
        &self.blob[self.offsets[id as usize] as usize..self.offsets[id as usize + 1] as usize]
    }

    /// The id of the token whose text is `piece` (the last such id, as
    /// llama.cpp's map keeps).
    fn id(&self, piece: &[u8]) -> Option<TokenId> {
        let end = self.by_text.partition_point(|&i| self.text(i) <= piece);
        let last = *self.by_text.get(end.checked_sub(1)?)?;
        (self.text(last) == piece).then_some(last as TokenId)
    }

    /// The ids llama.cpp's `llama_tokenize(text, add_special = true,
    /// parse_special = false)` gives.
    pub fn encode(&self, text: &str) -> Vec<TokenId> {
        let mut out = Vec::with_capacity(text.len() / 3 + 2);
        out.extend(self.bos);
        let mut prev_special = true;
        for fragment in self.partition(text) {
            match fragment {
                Fragment::Token(id) => {
                    out.push(id);
                    prev_special = true;
                }
                Fragment::Text(raw) => {
                    let mut escaped = String::with_capacity(raw.len() + 3);
                    if self.add_space_prefix && prev_special {
                        escaped.push('\u{2581}');
                    }
                    escaped.extend(raw.chars().map(|c| if c == ' ' { '\u{2581}' } else { c }));
                    self.spm(&escaped, &mut out);
                    prev_special = false;
                }
            }
        }
        out
    }

    /// Cuts the user-defined tokens out of `text`, longest first, each one
    /// everywhere it occurs left to right in what is still text.
    fn partition<'t>(&self, text: &'t str) -> Vec<Fragment<'t>> {
        let mut fragments = if text.is_empty() {
            Vec::new()
        } else {
            vec![Fragment::Text(text)]
        };
        for &id in &self.user_defined {
            let Ok(piece) = std::str::from_utf8(self.text(id)) else {
                continue;
            };
            if piece.is_empty()
                || !fragments
                    .iter()
                    .any(|f| matches!(f, Fragment::Text(t) if t.contains(piece)))
            {
                continue;
            }
            let mut next = Vec::with_capacity(fragments.len() + 2);
            for fragment in fragments {
                let Fragment::Text(t) = fragment else {
                    next.push(fragment);
                    continue;
                };
                for (j, part) in t.split(piece).enumerate() {
                    if j > 0 {
                        next.push(Fragment::Token(id as TokenId));
                    }
                    if !part.is_empty() {
                        next.push(Fragment::Text(part));
                    }
                }
            }
            fragments = next;
        }
        fragments
    }

    /// `llm_tokenizer_spm_session::tokenize` on one escaped fragment.
    fn spm(&self, text: &str, out: &mut Vec<TokenId>) {
        // Symbol i covers text[start[i]..start[i] + size[i]]; one per character.
        let start: Vec<usize> = text.char_indices().map(|(i, _)| i).collect();
        let n = start.len();
        if n == 0 {
            return;
        }
        let mut size: Vec<usize> = (0..n)
            .map(|i| start.get(i + 1).copied().unwrap_or(text.len()) - start[i])
            .collect();
        let mut prev: Vec<Option<usize>> = (0..n).map(|i| i.checked_sub(1)).collect();
        let mut next: Vec<Option<usize>> = (0..n).map(|i| (i + 1 < n).then_some(i + 1)).collect();
        let mut queue = BinaryHeap::new();
        let bigram = |queue: &mut BinaryHeap<Bigram>, size: &[usize], left: usize, right: usize| {
            let len = size[left] + size[right];
            let piece = &text.as_bytes()[start[left]..start[left] + len];
            if let Some(id) = self.id(piece) {
                queue.push(Bigram {
                    score: self.scores[id as usize],
                    left,
                    right,
                    len,
                });
            }
        };
        for i in 1..n {
            bigram(&mut queue, &size, i - 1, i);
        }
        while let Some(Bigram {
            left, right, len, ..
        }) = queue.pop()
        {
            // Stale: one side was merged into another symbol since.
            if size[left] == 0 || size[right] == 0 || size[left] + size[right] != len {
                continue;
            }
            size[left] += size[right];
            size[right] = 0;
            next[left] = next[right];
            if let Some(after) = next[right] {
                prev[after] = Some(left);
            }
            if let Some(before) = prev[left] {
                bigram(&mut queue, &size, before, left);
            }
            if let Some(after) = next[left] {
                bigram(&mut queue, &size, left, after);
            }
        }
        let mut symbol = Some(0);
        while let Some(i) = symbol {
            let piece = &text.as_bytes()[start[i]..start[i] + size[i]];
            match self.id(piece) {
                Some(id) => out.push(id),
                // Only a single character can be left unmerged and unknown.
                None => out.extend(piece.iter().map(|&b| self.byte_tokens[b as usize])),
            }
            symbol = next[i];
        }
    }
}

enum Fragment<'t> {
    Text(&'t str),
    Token(TokenId),
}

/// A candidate merge: llama.cpp's `llm_bigram_spm`, ordered as its queue
/// pops them (highest score first; ties: the leftmost).
struct Bigram {
    score: f32,
    left: usize,
    right: usize,
    len: usize,
}

impl PartialEq for Bigram {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Bigram {}

impl PartialOrd for Bigram {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Bigram {
    fn cmp(&self, other: &Self) -> Ordering {
        self.score
            .total_cmp(&other.score)
            .then_with(|| other.left.cmp(&self.left))
    }
}
