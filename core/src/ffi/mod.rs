//! The unsafe room: every call into llama.cpp and ggml lives below this module,
//! each `unsafe` block with the reason it is sound. Everything exported from
//! here is a safe API; the rest of the crate is `#![deny(unsafe_code)]`.
//!
//! - [`llama`]: models, contexts, LoRA adapters, decoding, the log bridge.
//! - [`gguf`]: reading GGUF metadata and tensors, writing GGUF files.

pub mod gguf;
pub mod llama;
