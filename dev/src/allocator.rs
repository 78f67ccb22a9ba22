//! glibc's malloc, tuned the way a phone's allocator already behaves.
//!
//! glibc raises its mmap threshold each time a large mmapped block is freed
//! (up to 32 MiB), so llama.cpp's compute buffers, freed and reserved again
//! when a LoRA mixture changes, then come from the heap, and the freed ones
//! stay resident and dirty. Measured with `l2rec bench engine --bundle
//! bundles/ml-100k`: a dirty peak of 263 MB under the default, 135 MB with
//! the threshold pinned at 128 KiB. Android's scudo and iOS's libmalloc return
//! large blocks to the system, so the pinned figure is the one a phone's
//! budget is judged by. This is an app's choice (it is process-wide), made by
//! the `l2rec` binary; the phone library never touches the allocator.
#![allow(unsafe_code)]

/// The threshold pinned: glibc's initial default.
const MMAP_THRESHOLD: i32 = 128 * 1024;

/// Pins glibc's mmap threshold (a no-op elsewhere) unless
/// `L2REC_GLIBC_MALLOC=default`; returns whether it did.
pub fn pin_mmap_threshold() -> bool {
    if std::env::var("L2REC_GLIBC_MALLOC").as_deref() == Ok("default") {
        return false;
    }
    pin()
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn pin() -> bool {
    // SAFETY: mallopt only changes a tunable of glibc's allocator; it is
    // called once at start-up, before the program allocates in earnest, and
    // setting M_MMAP_THRESHOLD also turns off glibc's dynamic adjustment.
    unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn pin() -> bool {
    false
}
