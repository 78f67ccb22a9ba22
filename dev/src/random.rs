//! Reproducible random values and random LoRA experts for tests and benches.

use std::path::Path;

use l2rec::backbone::ModelInfo;
use l2rec::lora::{write_expert, Factors, LoraError, LoraSpec};

/// A small deterministic generator (splitmix64): tests and benches need
/// reproducible random experts without another dependency.
pub struct SplitMix(pub u64);

impl SplitMix {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [-1, 1).
    pub fn next_signed(&mut self) -> f32 {
        ((self.next_u64() >> 40) as f32 / (1u64 << 23) as f32) - 1.0
    }
}

/// Writes an expert with uniform random factors in `[-amplitude, amplitude)`.
pub fn write_random_expert(
    path: &Path,
    model: &ModelInfo,
    spec: &LoraSpec,
    seed: u64,
    amplitude: f32,
) -> Result<(), LoraError> {
    let mut rng = SplitMix(seed);
    let r = spec.rank as usize;
    write_expert(path, model, spec, |_, n_in, n_out| Factors {
        a: (0..r * n_in)
            .map(|_| amplitude * rng.next_signed())
            .collect(),
        b: (0..n_out * r)
            .map(|_| amplitude * rng.next_signed())
            .collect(),
    })
}
