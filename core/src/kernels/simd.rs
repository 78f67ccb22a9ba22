//! Eight f32 lanes: AVX2/FMA/F16C intrinsics where the build enables them
//! (every x86-64 build: the workspace's baseline is x86-64-v3), plain arrays
//! elsewhere (LLVM turns those into NEON on phones).
//!
//! Every kernel computes a dot product as one fused multiply-add chain in
//! dimension order, the same chain the WGSL shaders run, so that the CPU and
//! the GPU produce bit-identical scores and therefore identical rankings.

// The crate denies unsafe code. This file and `cpu.rs` are the kernels'
// unsafe room (docs/ARCHITECTURE.md): unaligned vector loads from raw
// pointers and AVX2 intrinsics, each with its `// SAFETY:` reason.
#![allow(unsafe_code)]

/// Lanes per vector, and rows per catalog block (see `catalog.rs`).
pub const LANES: usize = 8;

#[cfg(all(
    target_arch = "x86_64",
    target_feature = "avx2",
    target_feature = "fma",
    target_feature = "f16c"
))]
mod imp {
    // Intrinsics are `unsafe` to call; the cfg above guarantees the CPU
    // features they need.
    use std::arch::x86_64::*;

    #[derive(Clone, Copy)]
    pub struct V(__m256);

    impl V {
        #[inline(always)]
        pub fn zero() -> V {
            // SAFETY: the cfg on this module guarantees the CPU has AVX2, FMA and F16C.
            unsafe { V(_mm256_setzero_ps()) }
        }

        #[inline(always)]
        pub fn splat(x: f32) -> V {
            // SAFETY: the cfg on this module guarantees the CPU has AVX2, FMA and F16C.
            unsafe { V(_mm256_set1_ps(x)) }
        }

        /// # Safety
        /// `p` must point to eight readable f32.
        #[inline(always)]
        pub unsafe fn load(p: *const f32) -> V {
            // SAFETY: the caller guarantees eight readable f32 at `p`;
            // `loadu` has no alignment requirement.
            V(unsafe { _mm256_loadu_ps(p) })
        }

        /// # Safety
        /// `p` must point to eight readable f16 bit patterns.
        #[inline(always)]
        pub unsafe fn load_f16(p: *const u16) -> V {
            // SAFETY: the caller guarantees eight readable u16 (16 bytes) at
            // `p`; `loadu` has no alignment requirement; the module's cfg
            // guarantees F16C.
            V(unsafe { _mm256_cvtph_ps(_mm_loadu_si128(p.cast())) })
        }

        /// `self * b + c`, rounded once.
        #[inline(always)]
        pub fn mul_add(self, b: V, c: V) -> V {
            // SAFETY: the cfg on this module guarantees the CPU has AVX2, FMA and F16C.
            unsafe { V(_mm256_fmadd_ps(self.0, b.0, c.0)) }
        }

        #[inline(always)]
        pub fn add(self, b: V) -> V {
            // SAFETY: the cfg on this module guarantees the CPU has AVX2, FMA and F16C.
            unsafe { V(_mm256_add_ps(self.0, b.0)) }
        }

        #[inline(always)]
        pub fn mul(self, b: V) -> V {
            // SAFETY: the cfg on this module guarantees the CPU has AVX2, FMA and F16C.
            unsafe { V(_mm256_mul_ps(self.0, b.0)) }
        }

        /// Bit `l` set when lane `l` is `>= thr` (false for NaN).
        #[inline(always)]
        pub fn ge_mask(self, thr: V) -> u32 {
            // SAFETY: the cfg on this module guarantees the CPU has AVX2, FMA and F16C.
            unsafe { _mm256_movemask_ps(_mm256_cmp_ps::<_CMP_GE_OQ>(self.0, thr.0)) as u32 }
        }

        #[inline(always)]
        pub fn to_array(self) -> [f32; 8] {
            let mut out = [0.0f32; 8];
            // SAFETY: `out` is eight writable f32; `storeu` needs no alignment;
            // the module's cfg guarantees AVX.
            unsafe { _mm256_storeu_ps(out.as_mut_ptr(), self.0) };
            out
        }
    }
}

#[cfg(not(all(
    target_arch = "x86_64",
    target_feature = "avx2",
    target_feature = "fma",
    target_feature = "f16c"
)))]
mod imp {
    #[derive(Clone, Copy)]
    pub struct V([f32; 8]);

    impl V {
        #[inline(always)]
        pub fn zero() -> V {
            V([0.0; 8])
        }

        #[inline(always)]
        pub fn splat(x: f32) -> V {
            V([x; 8])
        }

        /// # Safety
        /// `p` must point to eight readable f32.
        #[inline(always)]
        pub unsafe fn load(p: *const f32) -> V {
            // SAFETY: the caller guarantees eight readable f32 at `p`.
            V(unsafe { p.cast::<[f32; 8]>().read_unaligned() })
        }

        /// # Safety
        /// `p` must point to eight readable f16 bit patterns.
        #[inline(always)]
        pub unsafe fn load_f16(p: *const u16) -> V {
            // SAFETY: the caller guarantees eight readable u16 at `p`.
            let h = unsafe { p.cast::<[u16; 8]>().read_unaligned() };
            V(h.map(|b| half::f16::from_bits(b).to_f32()))
        }

        /// `self * b + c`, rounded once (`f32::mul_add` is a true fused
        /// multiply-add on every target; without FMA hardware it is slow but
        /// still exact, which is what keeps CPU and GPU rankings equal).
        #[inline(always)]
        pub fn mul_add(self, b: V, c: V) -> V {
            let mut out = [0.0f32; 8];
            for l in 0..8 {
                out[l] = self.0[l].mul_add(b.0[l], c.0[l]);
            }
            V(out)
        }

        #[inline(always)]
        pub fn add(self, b: V) -> V {
            let mut out = [0.0f32; 8];
            for l in 0..8 {
                out[l] = self.0[l] + b.0[l];
            }
            V(out)
        }

        #[inline(always)]
        pub fn mul(self, b: V) -> V {
            let mut out = [0.0f32; 8];
            for l in 0..8 {
                out[l] = self.0[l] * b.0[l];
            }
            V(out)
        }

        #[inline(always)]
        pub fn ge_mask(self, thr: V) -> u32 {
            let mut m = 0u32;
            for l in 0..8 {
                m |= u32::from(self.0[l] >= thr.0[l]) << l;
            }
            m
        }

        #[inline(always)]
        pub fn to_array(self) -> [f32; 8] {
            self.0
        }
    }
}

pub use imp::V;

/// An element type a catalog block can be stored in.
pub trait Elem: Copy + Send + Sync + 'static {
    /// # Safety
    /// `p` must point to eight readable elements.
    unsafe fn load8(p: *const Self) -> V;
}

impl Elem for f32 {
    #[inline(always)]
    unsafe fn load8(p: *const f32) -> V {
        // SAFETY: forwarded: the caller guarantees eight readable f32.
        unsafe { V::load(p) }
    }
}

/// f16 bit patterns (IEEE binary16), widened exactly to f32.
impl Elem for u16 {
    #[inline(always)]
    unsafe fn load8(p: *const u16) -> V {
        // SAFETY: forwarded: the caller guarantees eight readable u16.
        unsafe { V::load_f16(p) }
    }
}

/// How a kernel's multiply-adds round. The shaders call WGSL `fma`, which
/// real GPUs fuse; Mesa's lavapipe runs it as a multiply and an add. The CPU
/// kernels do either, so that a CPU twin can match its GPU bit for bit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum MulAdd {
    /// `round(a * b + c)`: the default, and what GPUs with FMA units do.
    #[default]
    Fused,
    /// `round(round(a * b) + c)`.
    Separate,
}

/// One multiply-add of eight lanes, rounded as `F` (true: fused) says.
#[inline(always)]
pub(crate) fn madd<const F: bool>(a: V, b: V, c: V) -> V {
    if F {
        a.mul_add(b, c)
    } else {
        a.mul(b).add(c)
    }
}

/// The canonical dot product: one multiply-add chain in index order,
/// starting from +0. Every CPU and GPU kernel computes exactly this.
#[inline]
pub fn dot_fma(a: &[f32], b: &[f32]) -> f32 {
    dot_with(a, b, MulAdd::Fused)
}

/// [`dot_fma`] with the given rounding.
pub fn dot_with(a: &[f32], b: &[f32], mode: MulAdd) -> f32 {
    debug_assert_eq!(a.len(), b.len());
    let pairs = a.iter().zip(b);
    match mode {
        MulAdd::Fused => pairs.fold(0.0f32, |acc, (&x, &y)| x.mul_add(y, acc)),
        MulAdd::Separate => pairs.fold(0.0f32, |acc, (&x, &y)| x * y + acc),
    }
}
