//! A bundle's safetensors file (heads, items, users) against a checked manifest.
//! (fuzz/README.md; the entry point's doc says what the input holds).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| l2rec::bundle::fuzzing::tensors(data));
