//! The SDK's call arguments as UniFFI lifts them, converted and checked.
//! (fuzz/README.md; the entry point's doc says what the input holds).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| l2rec_ffi::fuzzing::decode_arguments(data));
