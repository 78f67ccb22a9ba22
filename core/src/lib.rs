//! l2rec: the on-device runtime of the L2Rec recommender (see `docs/ARCHITECTURE.md`).
#![deny(unsafe_code)]

pub mod backbone;
pub mod bundle;
pub mod engine;
#[allow(unsafe_code)]
pub mod ffi;
#[cfg(test)]
mod fuzz_seeds;
pub mod kernels;
pub mod lora;
pub mod mixture;
pub mod model;
pub mod per_view;
pub mod personalize;
pub mod progress;
pub mod prompt;
pub mod store;
pub mod tokenizer;
pub mod upper;
