//! The store's keyring file.
//! (fuzz/README.md; the entry point's doc says what the input holds).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| l2rec::store::fuzzing::parse_keyring(data));
