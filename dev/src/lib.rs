//! Developer tools around the l2rec runtime, kept out of the phone library
//! (`l2rec` and `l2rec-ffi` never depend on this crate):
//!
//! - `assets`: where `scripts/fetch-assets` puts the backbone and data;
//! - `dataset`: a dataset as docs/DATA.md defines it (MovieLens-100K by
//!   default) as a catalog and per-user histories; the trainer's twin;
//! - `zeroshot`: a bundle built without training (PCA of item text states);
//! - `random`: reproducible random values and random LoRA experts;
//! - `f16`: an F16 copy of a GGUF backbone for exact-math tests;
//! - `memory`: the memory a phone counts (dirty, model, other files), sampled;
//! - `allocator`: the glibc setting the command line runs under (its one
//!   unsafe call, a named room).
//!
//! The bare llama.cpp loop the backbone bench compares against stays in
//! `l2rec::ffi` (it needs the FFI room), behind `l2rec`'s `bench` feature,
//! which this crate turns on.
#![deny(unsafe_code)]

pub mod allocator;
pub mod assets;
pub mod dataset;
pub mod f16;
pub mod memory;
pub mod random;
pub mod zeroshot;

pub use l2rec::ffi::llama::bench_raw_decode;
