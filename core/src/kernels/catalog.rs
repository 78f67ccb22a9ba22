//! The item matrix (rows `e_i`, SPEC step 7) and the item bias, in the one
//! layout that both the CPU kernels and the shaders read.
//!
//! Rows are grouped by [`GROUP`] (64); a group stores dimension `dd` of its
//! 64 rows next to each other: `data[(group * d + dd) * 64 + row % 64]`.
//! The CPU then scores 8 rows with one vector FMA per dimension and no
//! horizontal sums, and a one-query scan of a group (8 vectors per
//! dimension) reads one sequential stream; neighbouring GPU invocations
//! (neighbouring rows) read neighbouring addresses. The last group is
//! padded with zero rows, which no kernel ever returns.

use super::KernelError;

/// Rows per group of the layout.
pub const GROUP: usize = 64;

/// How the catalog's rows are stored; scores are always computed in f32.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Storage {
    F32,
    /// IEEE binary16, rounded to nearest-even once at construction: half the
    /// bytes to scan, so about twice the speed where scoring is memory-bound.
    F16,
}

impl Storage {
    pub fn bytes_per_elem(self) -> usize {
        match self {
            Storage::F32 => 4,
            Storage::F16 => 2,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Storage::F32 => "f32",
            Storage::F16 => "f16",
        }
    }
}

/// Blocked element storage; see the module docs for the layout.
#[derive(Clone, Debug)]
pub(crate) enum Blocks {
    F32(Vec<f32>),
    F16(Vec<u16>),
}

/// `N` rows of dimension `d` plus one bias per row.
#[derive(Clone, Debug)]
pub struct CatalogMatrix {
    rows: usize,
    dim: usize,
    pub(crate) blocks: Blocks,
    /// Padded to a whole number of groups with zeros.
    pub(crate) bias: Vec<f32>,
}

impl CatalogMatrix {
    /// Builds the matrix from row-major `rows` (`[N, dim]`) and `bias` (`[N]`).
    pub fn new(
        rows: Vec<f32>,
        dim: usize,
        bias: Vec<f32>,
        storage: Storage,
    ) -> Result<Self, KernelError> {
        let n = bias.len();
        if dim == 0 || rows.len() != n * dim {
            return Err(KernelError::Shape(format!(
                "catalog: {} values for {n} rows of dimension {dim}",
                rows.len()
            )));
        }
        if n > u32::MAX as usize / 2 {
            return Err(KernelError::Shape(format!("catalog: {n} rows is too many")));
        }
        let blocks = match storage {
            Storage::F32 => Blocks::F32(to_blocks(&rows, dim, |x| x)),
            Storage::F16 => {
                Blocks::F16(to_blocks(&rows, dim, |x| half::f16::from_f32(x).to_bits()))
            }
        };
        drop(rows);
        let mut bias = bias;
        bias.resize(n.div_ceil(GROUP) * GROUP, 0.0);
        Ok(Self {
            rows: n,
            dim,
            blocks,
            bias,
        })
    }

    /// A matrix with every bias zero.
    pub fn without_bias(rows: Vec<f32>, dim: usize, storage: Storage) -> Result<Self, KernelError> {
        let n = rows.len().checked_div(dim).unwrap_or(0);
        Self::new(rows, dim, vec![0.0; n], storage)
    }

    pub fn len(&self) -> usize {
        self.rows
    }

    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    pub fn dim(&self) -> usize {
        self.dim
    }

    pub fn storage(&self) -> Storage {
        match self.blocks {
            Blocks::F32(_) => Storage::F32,
            Blocks::F16(_) => Storage::F16,
        }
    }

    pub(crate) fn n_groups(&self) -> usize {
        self.rows.div_ceil(GROUP)
    }

    /// Bytes one query reads: every row and its bias.
    pub fn bytes_scanned(&self) -> u64 {
        (self.rows * (self.dim * self.storage().bytes_per_elem() + 4)) as u64
    }

    /// Row `i` as f32 (after f16 rounding, if stored as f16).
    pub fn row(&self, i: usize) -> Vec<f32> {
        let (g, lane) = (i / GROUP, i % GROUP);
        (0..self.dim)
            .map(|dd| {
                let at = (g * self.dim + dd) * GROUP + lane;
                match &self.blocks {
                    Blocks::F32(v) => v[at],
                    Blocks::F16(v) => half::f16::from_bits(v[at]).to_f32(),
                }
            })
            .collect()
    }

    pub fn bias(&self) -> &[f32] {
        &self.bias[..self.rows]
    }
}

/// Row-major `[N, d]` to the grouped layout, padding the last group.
fn to_blocks<T: Copy + Default>(rows: &[f32], dim: usize, conv: impl Fn(f32) -> T) -> Vec<T> {
    let n = rows.len() / dim;
    let mut out = vec![T::default(); n.div_ceil(GROUP) * dim * GROUP];
    for (i, row) in rows.chunks_exact(dim).enumerate() {
        let base = (i / GROUP) * dim * GROUP + i % GROUP;
        for (dd, &x) in row.iter().enumerate() {
            out[base + dd * GROUP] = conv(x);
        }
    }
    out
}
