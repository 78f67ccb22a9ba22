//! The unsafe room: every call into llama.cpp and ggml lives below this module,
//! each `unsafe` block with the reason it is sound. Everything exported from
//! here is a safe API; the rest of the crate is `#![deny(unsafe_code)]`.
//!
//! - [`llama`]: models, contexts, LoRA adapters, decoding, the log bridge.
//! - [`gguf`]: reading GGUF metadata and tensors, writing GGUF files.

pub mod gguf;
pub mod llama;

use std::ffi::{c_char, c_void};

/// Runs `read` on a read-only `FILE` stream over `image` (POSIX 2008
/// `fmemopen`: glibc, Android API 23+, iOS 11+), closed afterwards; `None`
/// when the stream cannot be opened (an empty image).
pub(crate) fn memory_stream<T>(image: &[u8], read: impl FnOnce(*mut c_void) -> T) -> Option<T> {
    extern "C" {
        fn fmemopen(buf: *mut c_void, size: usize, mode: *const c_char) -> *mut c_void;
        fn fclose(stream: *mut c_void) -> std::os::raw::c_int;
    }
    if image.is_empty() {
        return None;
    }
    // SAFETY: mode "rb" never writes through `buf`, which outlives the stream
    // (closed below, before `image` can go); NULL means failure.
    let file = unsafe {
        fmemopen(
            image.as_ptr().cast_mut().cast(),
            image.len(),
            c"rb".as_ptr(),
        )
    };
    if file.is_null() {
        return None;
    }
    let out = read(file);
    // SAFETY: opened above, closed once; llama.cpp keeps no reference to it.
    unsafe { fclose(file) };
    Some(out)
}
