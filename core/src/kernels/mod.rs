//! The recommendation heads: gate, projection, fusion, catalog scoring and
//! top-k (SPEC steps 1, 5, 6, 7, 8), on the CPU and on the GPU (wgpu/WGSL).
//!
//! Both backends compute every dot product as the same multiply-add chain
//! (`simd::dot_with`), so equal inputs give bit-equal scores and the
//! identical ranking on either (score descending, lower catalog row first).
//! The shaders use WGSL `fma`, which GPUs fuse but Mesa's lavapipe splits
//! into a multiply and an add: [`Gpu::mul_add`] tells which (it is probed),
//! and [`Scorer::new_cpu_with`] builds the CPU twin that rounds the same way.

mod catalog;
mod cpu;
mod gpu;
mod gru;
mod heads;
mod simd;
mod topk;

#[cfg(test)]
mod golden;
#[cfg(test)]
mod tests;

use std::borrow::Cow;

pub use catalog::{CatalogMatrix, Storage};
pub use gpu::Gpu;
#[cfg(test)]
pub use gpu::GpuHeads;
pub use gru::GruWeights;
pub use heads::{chosen_experts, fuse, gate, gate_logits, project, softmax_chosen, Fused};
pub use simd::{dot_fma, dot_with, MulAdd};
pub use topk::{rank_order, Hit};

/// Largest `k` the GPU backend serves (the CPU has no limit).
pub const GPU_MAX_K: usize = gpu::KCAP;

/// What can go wrong in the kernels.
#[derive(Clone, Debug, thiserror::Error)]
pub enum KernelError {
    #[error("no GPU adapter: {0}")]
    NoAdapter(String),
    #[error("GPU device request failed: {0}")]
    Device(String),
    #[error("GPU error: {0}")]
    Gpu(String),
    #[error("shape mismatch: {0}")]
    Shape(String),
    #[error("k = {k} is more than the GPU backend's maximum of {max}")]
    KTooLarge { k: usize, max: usize },
}

/// The smallest catalog [`Scorer::auto`] considers a GPU for (see there).
pub const GPU_MIN_ROWS: usize = 100_000;

/// Where a [`Scorer`] runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Cpu,
    Gpu,
}

impl Backend {
    /// `L2REC_DEVICE=cpu|gpu`, if set to one of those.
    pub fn from_env() -> Option<Backend> {
        match std::env::var("L2REC_DEVICE")
            .ok()?
            .trim()
            .to_ascii_lowercase()
            .as_str()
        {
            "cpu" => Some(Backend::Cpu),
            "gpu" => Some(Backend::Gpu),
            _ => None,
        }
    }
}

/// The catalog on one backend, answering top-k queries
/// (`s = u . e_i + bias[i]`).
pub struct Scorer {
    inner: Inner,
}

enum Inner {
    Cpu(CatalogMatrix, MulAdd),
    Gpu(Box<gpu::GpuScorer>),
}

impl Scorer {
    pub fn new_cpu(catalog: CatalogMatrix) -> Self {
        Self::new_cpu_with(catalog, MulAdd::Fused)
    }

    /// A CPU scorer whose multiply-adds round as `mode` says: pass
    /// `Gpu::mul_add()` for a bit-exact twin of that device's scorer.
    pub fn new_cpu_with(catalog: CatalogMatrix, mode: MulAdd) -> Self {
        Self {
            inner: Inner::Cpu(catalog, mode),
        }
    }

    /// Uploads the catalog to the process-wide GPU device, whatever kind of
    /// adapter it is (including a software one such as lavapipe).
    pub fn new_gpu(catalog: CatalogMatrix) -> Result<Self, KernelError> {
        Self::new_gpu_from(&catalog)
    }

    /// As [`Scorer::new_gpu`], from a borrowed catalog: the GPU keeps its own
    /// copy, so the caller may keep or drop this one.
    pub fn new_gpu_from(catalog: &CatalogMatrix) -> Result<Self, KernelError> {
        let gpu = Gpu::shared()?;
        Ok(Self {
            inner: Inner::Gpu(Box::new(gpu::GpuScorer::new(gpu, catalog)?)),
        })
    }

    /// `L2REC_DEVICE=cpu|gpu` forces a backend; otherwise a catalog of fewer
    /// than [`GPU_MIN_ROWS`] rows is scored on the CPU without touching the
    /// GPU at all (probing one maps its driver, tens of MB the OS counts
    /// against the app, for a scoring pass the CPU does in well under a
    /// millisecond), and a larger one on a hardware GPU if there is one, else
    /// the CPU. A software adapter (lavapipe, SwiftShader) is slower than the
    /// CPU kernels, so it is used only when forced. If a forced GPU cannot be
    /// had, this logs an error and falls back to CPU.
    pub fn auto(catalog: CatalogMatrix) -> Self {
        let forced = Backend::from_env();
        if forced == Some(Backend::Cpu) {
            tracing::info!("scorer: CPU (L2REC_DEVICE=cpu)");
            return Self::new_cpu(catalog);
        }
        if forced.is_none() && catalog.len() < GPU_MIN_ROWS {
            tracing::info!(
                rows = catalog.len(),
                "scorer: CPU (a catalog this small is not worth a GPU)"
            );
            return Self::new_cpu(catalog);
        }
        match Gpu::shared() {
            Ok(g) if forced == Some(Backend::Gpu) || !g.is_software() => {
                match gpu::GpuScorer::new(g.clone(), &catalog) {
                    Ok(s) => {
                        tracing::info!(adapter = %g.adapter_name(), "scorer: GPU");
                        return Self {
                            inner: Inner::Gpu(Box::new(s)),
                        };
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "scorer: GPU upload failed, using the CPU")
                    }
                }
            }
            Ok(g) => {
                tracing::info!(adapter = %g.adapter_name(), "scorer: CPU (only a software GPU adapter)")
            }
            Err(e) if forced == Some(Backend::Gpu) => {
                tracing::error!(error = %e, "scorer: L2REC_DEVICE=gpu but no GPU, using the CPU")
            }
            Err(e) => tracing::info!(reason = %e, "scorer: CPU (no GPU adapter)"),
        }
        Self::new_cpu(catalog)
    }

    pub fn backend(&self) -> Backend {
        match self.inner {
            Inner::Cpu(..) => Backend::Cpu,
            Inner::Gpu(_) => Backend::Gpu,
        }
    }

    /// The GPU adapter's name, or "cpu".
    pub fn adapter_name(&self) -> String {
        match &self.inner {
            Inner::Cpu(..) => "cpu".into(),
            Inner::Gpu(g) => g.adapter_name(),
        }
    }

    /// Makes a CPU scorer round as `mode` says (a GPU scorer rounds as its
    /// device does, and ignores this).
    pub fn set_mul_add(&mut self, mode: MulAdd) {
        if let Inner::Cpu(_, m) = &mut self.inner {
            *m = mode;
        }
    }

    /// How this scorer's multiply-adds round.
    pub fn mul_add(&self) -> MulAdd {
        match &self.inner {
            Inner::Cpu(_, m) => *m,
            Inner::Gpu(g) => g.mul_add(),
        }
    }

    pub fn len(&self) -> usize {
        match &self.inner {
            Inner::Cpu(c, _) => c.len(),
            Inner::Gpu(g) => g.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn dim(&self) -> usize {
        match &self.inner {
            Inner::Cpu(c, _) => c.dim(),
            Inner::Gpu(g) => g.dim(),
        }
    }

    /// The `k` best rows for `query`, best first, never one of
    /// `exclude_sorted_rows` (sorted ascending; an unsorted list is sorted
    /// here first).
    pub fn top_k(
        &self,
        query: &[f32],
        exclude_sorted_rows: &[u32],
        k: usize,
    ) -> Result<Vec<Hit>, KernelError> {
        self.check_query(query)?;
        let excl = sorted(exclude_sorted_rows);
        match &self.inner {
            Inner::Cpu(c, m) => Ok(cpu::top_k(c, *m, query, &excl, k)),
            Inner::Gpu(g) => Ok(g.top_k_batch(&[query], &[&excl], k)?.remove(0)),
        }
    }

    /// `top_k` for several queries in one pass over the catalog.
    /// `excludes` has one list per query, or is empty for none.
    pub fn top_k_batch(
        &self,
        queries: &[&[f32]],
        excludes: &[&[u32]],
        k: usize,
    ) -> Result<Vec<Vec<Hit>>, KernelError> {
        for q in queries {
            self.check_query(q)?;
        }
        if !excludes.is_empty() && excludes.len() != queries.len() {
            return Err(KernelError::Shape(format!(
                "{} exclusion lists for {} queries",
                excludes.len(),
                queries.len()
            )));
        }
        let owned: Vec<Cow<[u32]>> = if excludes.is_empty() {
            vec![Cow::Borrowed(&[][..]); queries.len()]
        } else {
            excludes.iter().map(|e| sorted(e)).collect()
        };
        let excl: Vec<&[u32]> = owned.iter().map(|c| c.as_ref()).collect();
        match &self.inner {
            Inner::Cpu(c, m) => Ok(cpu::top_k_batch(c, *m, queries, &excl, k)),
            Inner::Gpu(g) => g.top_k_batch(queries, &excl, k),
        }
    }

    fn check_query(&self, q: &[f32]) -> Result<(), KernelError> {
        if q.len() != self.dim() {
            return Err(KernelError::Shape(format!(
                "query of dimension {} for a catalog of dimension {}",
                q.len(),
                self.dim()
            )));
        }
        Ok(())
    }
}

fn sorted(rows: &[u32]) -> Cow<'_, [u32]> {
    if rows.is_sorted() {
        Cow::Borrowed(rows)
    } else {
        let mut v = rows.to_vec();
        v.sort_unstable();
        Cow::Owned(v)
    }
}
