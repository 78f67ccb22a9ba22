//! l2rec: the on-device runtime of the L2Rec recommender (see `docs/ARCHITECTURE.md`).
#![deny(unsafe_code)]

pub mod assets;
pub mod backbone;
pub mod bundle;
pub mod catalog;
pub mod engine;
#[allow(unsafe_code)]
pub mod ffi;
pub mod kernels;
pub mod lora;
pub mod model;
pub mod personalize;
pub mod prompt;
pub mod store;
pub mod zeroshot;
