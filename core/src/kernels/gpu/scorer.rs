//! Catalog scoring and exact top-k on the GPU.
//!
//! The catalog is uploaded once, split into segments that each fit one
//! storage binding (`max_storage_buffer_binding_size`, 128 MiB on lavapipe).
//! A request uploads only the queries and the excluded (query, row) pairs,
//! then, per *chunk* of segments that fits the score scratch:
//! `score` (every row x every query of the pass), `exclude` (NaN out the
//! history), eight radix-select passes (`hist_pass` + `scan_pass`) that find
//! each query's k-th best key, and `compact`, which keeps the chunk's top-k
//! merged with the top-k carried from earlier chunks. A final `sort` orders
//! the hits, and only `k` hits per query come back. The catalog is read once
//! per pass of up to 64 queries. Pipelines, bind groups and buffers are made
//! at construction; only the exclusion list grows (rarely) with use.

use std::sync::{Arc, Mutex};

use super::{sized, whole, Bind, Gpu};
use crate::kernels::catalog::{Blocks, CatalogMatrix, GROUP};
use crate::kernels::{Hit, KernelError, Storage};

/// Most queries scored per pass over the catalog.
pub(crate) const QUERIES_PER_PASS: usize = 64;
/// The queries live in a 64 KiB uniform buffer (score.wgsl): every
/// invocation reads the same address, which uniform buffers serve best
/// (8x faster than a storage buffer on lavapipe). That holds 16384 values:
/// 64 queries up to d = 256, fewer above, 8 up to d = 2048.
const QUERY_UNIFORM_FLOATS: usize = 16_384;
/// Largest dimension the GPU scorer takes (8 queries fill the uniform).
pub(crate) const MAX_DIM: usize = QUERY_UNIFORM_FLOATS / 8;
/// Largest k the GPU selects (the bitonic sort's size in sort.wgsl).
pub(crate) const KCAP: usize = 1024;
/// Invocations per `score` workgroup (score.wgsl).
const SCORE_WG: u32 = 64;
/// Rows a segment may hold so that its `score` dispatch stays within
/// 65,535 workgroups.
const MAX_SEG_ROWS: usize = 65_535 * SCORE_WG as usize / 256 * 256;
/// Radix-select passes, one per byte of the 64-bit key.
const PASSES: u32 = 8;
/// Candidates per invocation in the grid-stride loops (well under
/// lavapipe's 65,535 loop iterations).
const PER_INVOCATION: u64 = 16;

/// Mirrors `struct Params` in params.wgsl.
#[repr(C)]
#[derive(Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    d: u32,
    seg_rows: u32,
    seg_row0: u32,
    chunk_rows: u32,
    chunk_row0: u32,
    n_queries: u32,
    k: u32,
    digit: u32,
    n_excl: u32,
    groups_x: u32,
    _pad: [u32; 2],
}

const PARAMS_SIZE: u64 = std::mem::size_of::<Params>() as u64;

struct Segment {
    /// Catalog row of the first row.
    row0: usize,
    rows: usize,
    /// Binds params, this segment's rows and bias, queries, scratch.
    bind: wgpu::BindGroup,
    _data: wgpu::Buffer,
    _bias: wgpu::Buffer,
}

pub(crate) struct Pipelines {
    score: wgpu::ComputePipeline,
    exclude: wgpu::ComputePipeline,
    hist: wgpu::ComputePipeline,
    scan: wgpu::ComputePipeline,
    compact: wgpu::ComputePipeline,
    sort: wgpu::ComputePipeline,
    exclude_layout: wgpu::BindGroupLayout,
}

/// Buffers every request writes; behind the scorer's mutex.
struct Exclusions {
    buf: wgpu::Buffer,
    cap: usize,
    bind: wgpu::BindGroup,
}

pub(crate) struct GpuScorer {
    gpu: Arc<Gpu>,
    rows: usize,
    dim: usize,
    /// Queries per pass over the catalog (see `QUERY_UNIFORM_FLOATS`).
    per_pass: usize,
    segs: Vec<Segment>,
    scratch_elems: usize,
    slot: u64,
    pipes: Arc<Pipelines>,
    params: wgpu::Buffer,
    queries: wgpu::Buffer,
    scratch: wgpu::Buffer,
    state: wgpu::Buffer,
    hist: wgpu::Buffer,
    counts: [wgpu::Buffer; 2],
    _carries: [wgpu::Buffer; 2],
    hits: wgpu::Buffer,
    staging: wgpu::Buffer,
    /// `select[i]` reads carry i and writes carry 1 - i.
    select: [wgpu::BindGroup; 2],
    /// `sort[i]` sorts carry i into `hits`.
    sort: [wgpu::BindGroup; 2],
    /// Also serializes requests, which share every buffer above.
    excl: Mutex<Exclusions>,
}

/// One stretch of segments whose scores fit the scratch together.
struct Chunk {
    segs: std::ops::Range<usize>,
    row0: usize,
    rows: usize,
}

impl GpuScorer {
    /// Uploads `cat`; the caller may drop its copy afterwards.
    pub fn new(gpu: Arc<Gpu>, cat: &CatalogMatrix) -> Result<Self, KernelError> {
        let limits = gpu.limits();
        let binding = limits
            .max_storage_buffer_binding_size
            .min(limits.max_buffer_size);
        let seg_rows = segment_rows(binding, cat.dim(), cat.storage())?;
        Self::with_segment_rows(gpu, cat, seg_rows)
    }

    /// As `new`, with segments of at most `seg_rows` rows (a multiple of
    /// 256 no larger than what `new` would pick): tests use it to exercise
    /// many segments and chunks on small catalogs.
    pub fn with_segment_rows(
        gpu: Arc<Gpu>,
        cat: &CatalogMatrix,
        seg_rows: usize,
    ) -> Result<Self, KernelError> {
        assert!(seg_rows >= 256 && seg_rows.is_multiple_of(256));
        let limits = gpu.limits();
        let binding = limits
            .max_storage_buffer_binding_size
            .min(limits.max_buffer_size);
        let (rows, dim, storage) = (cat.len(), cat.dim(), cat.storage());
        if dim > MAX_DIM {
            return Err(KernelError::Shape(format!(
                "the GPU scorer takes d <= {MAX_DIM}, not {dim}"
            )));
        }
        // Whole groups of 8 queries, as score.wgsl scores them.
        let per_pass = (QUERY_UNIFORM_FLOATS / dim / 8 * 8).min(QUERIES_PER_PASS);
        let slot =
            PARAMS_SIZE.next_multiple_of(u64::from(limits.min_uniform_buffer_offset_alignment));
        // Every segment's scores for a full pass must fit: seg_rows is
        // chosen (or asserted) so, and more than a pass of the whole
        // catalog is never needed.
        assert!(seg_rows as u64 * QUERIES_PER_PASS as u64 * 4 <= binding);
        let scratch_elems = ((binding / 4) as usize).min(rows.max(1) * QUERIES_PER_PASS);
        let n_segs = rows.div_ceil(seg_rows).max(1);
        let max_slots = 11 * n_segs as u64 + 2;

        use wgpu::BufferUsages as U;
        let params = gpu.buffer("params", max_slots * slot, U::UNIFORM | U::COPY_DST);
        let queries = gpu.buffer(
            "queries",
            QUERY_UNIFORM_FLOATS as u64 * 4,
            U::UNIFORM | U::COPY_DST,
        );
        let scratch = gpu.buffer("scores", scratch_elems as u64 * 4, U::STORAGE);
        let q = QUERIES_PER_PASS as u64;
        let state = gpu.buffer("select state", q * 16, U::STORAGE | U::COPY_DST);
        let hist = gpu.buffer("histograms", q * 256 * 4, U::STORAGE | U::COPY_DST);
        let carry_bytes = q * KCAP as u64 * 8;
        let carries = [0, 1].map(|_| gpu.buffer("carry", carry_bytes, U::STORAGE));
        let counts =
            [0, 1].map(|_| gpu.buffer("count", q * 4, U::STORAGE | U::COPY_DST | U::COPY_SRC));
        let hits = gpu.buffer("hits", carry_bytes, U::STORAGE | U::COPY_SRC);
        let staging = gpu.buffer("staging", carry_bytes + q * 4, U::MAP_READ | U::COPY_DST);

        let pipes = Pipelines::get(&gpu, storage);
        let segs = upload_segments(&gpu, cat, seg_rows, &pipes, &params, &queries, &scratch)?;

        let select = [0, 1].map(|i| {
            gpu.bind(
                "select",
                &pipes.hist.get_bind_group_layout(0),
                &[
                    sized(&params, PARAMS_SIZE),
                    whole(&scratch),
                    whole(&carries[i]),
                    whole(&counts[i]),
                    whole(&state),
                    whole(&hist),
                    whole(&carries[1 - i]),
                    whole(&counts[1 - i]),
                ],
            )
        });
        let sort = [0, 1].map(|i| {
            gpu.bind(
                "sort",
                &pipes.sort.get_bind_group_layout(0),
                &[whole(&carries[i]), whole(&counts[i]), whole(&hits)],
            )
        });
        let excl = Exclusions::new(&gpu, &pipes, &params, &scratch, 1024);
        Ok(Self {
            gpu,
            rows,
            dim,
            per_pass,
            segs,
            scratch_elems,
            slot,
            pipes,
            params,
            queries,
            scratch,
            state,
            hist,
            counts,
            _carries: carries,
            hits,
            staging,
            select,
            sort,
            excl: Mutex::new(excl),
        })
    }

    pub fn adapter_name(&self) -> String {
        self.gpu.adapter_name()
    }

    pub fn len(&self) -> usize {
        self.rows
    }

    pub fn mul_add(&self) -> crate::kernels::MulAdd {
        self.gpu.mul_add()
    }

    pub fn dim(&self) -> usize {
        self.dim
    }

    #[cfg(test)]
    pub fn segments(&self) -> usize {
        self.segs.len()
    }

    /// Top-k for each query (`excludes[q]`: rows never to return).
    pub fn top_k_batch(
        &self,
        queries: &[&[f32]],
        excludes: &[&[u32]],
        k: usize,
    ) -> Result<Vec<Vec<Hit>>, KernelError> {
        if k > KCAP {
            return Err(KernelError::KTooLarge { k, max: KCAP });
        }
        if k == 0 || self.rows == 0 {
            return Ok(vec![Vec::new(); queries.len()]);
        }
        let mut excl = self.excl.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = Vec::with_capacity(queries.len());
        for (qs, ex) in queries
            .chunks(self.per_pass)
            .zip(excludes.chunks(self.per_pass))
        {
            out.extend(self.pass(&mut excl, qs, ex, k)?);
        }
        Ok(out)
    }

    /// One pass over the catalog for up to `QUERIES_PER_PASS` queries.
    fn pass(
        &self,
        excl: &mut Exclusions,
        queries: &[&[f32]],
        excludes: &[&[u32]],
        k: usize,
    ) -> Result<Vec<Vec<Hit>>, KernelError> {
        let nq = queries.len();
        self.gpu.queue.write_buffer(
            &self.queries,
            0,
            bytemuck::cast_slice(&pack_queries(queries, self.dim)),
        );
        let pairs = exclusion_pairs(excludes, self.rows);
        excl.fit(
            &self.gpu,
            &self.pipes,
            &self.params,
            &self.scratch,
            pairs.len(),
        );
        if !pairs.is_empty() {
            self.gpu
                .queue
                .write_buffer(&excl.buf, 0, bytemuck::cast_slice(&pairs));
        }
        let chunks = self.plan(nq);
        let mut slots = Vec::new();
        let mut encoder = self.gpu.device.create_command_encoder(&Default::default());
        encoder.clear_buffer(&self.hist, 0, None);
        encoder.clear_buffer(&self.counts[0], 0, None);
        let mut cur = 0;
        for chunk in &chunks {
            let base = Params {
                d: self.dim as u32,
                chunk_rows: chunk.rows as u32,
                chunk_row0: chunk.row0 as u32,
                n_queries: nq as u32,
                k: k as u32,
                n_excl: pairs.len() as u32,
                ..Params::default()
            };
            self.encode_scores(&mut encoder, &mut slots, chunk, base, excl);
            self.encode_select(&mut encoder, &mut slots, chunk, base, cur);
            cur = 1 - cur;
        }
        self.encode_sort(&mut encoder, nq, k, cur);
        self.write_slots(&slots);
        let data =
            self.gpu
                .finish_and_read(encoder, &self.staging, (nq * k * 8 + nq * 4) as u64)?;
        Ok(parse_hits(&data, nq, k))
    }

    /// Greedily groups segments so that `rows * nq` scores fit the scratch.
    fn plan(&self, nq: usize) -> Vec<Chunk> {
        let cap_rows = self.scratch_elems / nq.max(1);
        let mut chunks: Vec<Chunk> = Vec::new();
        for (i, s) in self.segs.iter().enumerate() {
            match chunks.last_mut() {
                Some(c) if c.rows + s.rows <= cap_rows => {
                    c.rows += s.rows;
                    c.segs.end = i + 1;
                }
                _ => chunks.push(Chunk {
                    segs: i..i + 1,
                    row0: s.row0,
                    rows: s.rows,
                }),
            }
        }
        chunks
    }

    /// Appends `p` as the next uniform slot; returns its dynamic offset.
    fn slot(&self, slots: &mut Vec<u8>, p: Params) -> u32 {
        let off = slots.len();
        slots.extend_from_slice(bytemuck::bytes_of(&p));
        slots.resize(off + self.slot as usize, 0);
        off as u32
    }

    fn write_slots(&self, bytes: &[u8]) {
        debug_assert!(bytes.len() as u64 <= self.params.size());
        self.gpu.queue.write_buffer(&self.params, 0, bytes);
    }

    fn encode_scores(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        slots: &mut Vec<u8>,
        chunk: &Chunk,
        base: Params,
        excl: &Exclusions,
    ) {
        let mut pass = encoder.begin_compute_pass(&Default::default());
        pass.set_pipeline(&self.pipes.score);
        for s in &self.segs[chunk.segs.clone()] {
            let p = Params {
                seg_rows: s.rows as u32,
                seg_row0: (s.row0 - chunk.row0) as u32,
                ..base
            };
            let off = self.slot(slots, p);
            pass.set_bind_group(0, &s.bind, &[off]);
            let groups_y = (base.n_queries as usize).div_ceil(8) as u32;
            pass.dispatch_workgroups((s.rows as u32).div_ceil(SCORE_WG), groups_y, 1);
        }
        if base.n_excl > 0 {
            let groups_x = base.n_excl.div_ceil(256).clamp(1, 65_535);
            let off = self.slot(slots, Params { groups_x, ..base });
            pass.set_pipeline(&self.pipes.exclude);
            pass.set_bind_group(0, &excl.bind, &[off]);
            pass.dispatch_workgroups(groups_x, 1, 1);
        }
    }

    fn encode_select(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        slots: &mut Vec<u8>,
        chunk: &Chunk,
        base: Params,
        cur: usize,
    ) {
        let nq = base.n_queries;
        encoder.clear_buffer(&self.state, 0, Some(u64::from(nq) * 16));
        encoder.clear_buffer(&self.counts[1 - cur], 0, None);
        let total = (chunk.rows + KCAP) as u64;
        let groups_x = total.div_ceil(256 * PER_INVOCATION).clamp(1, 65_535) as u32;
        let mut pass = encoder.begin_compute_pass(&Default::default());
        for digit in 0..PASSES {
            let off = self.slot(
                slots,
                Params {
                    digit,
                    groups_x,
                    ..base
                },
            );
            pass.set_bind_group(0, &self.select[cur], &[off]);
            pass.set_pipeline(&self.pipes.hist);
            pass.dispatch_workgroups(groups_x, nq, 1);
            pass.set_pipeline(&self.pipes.scan);
            pass.dispatch_workgroups(nq, 1, 1);
        }
        let off = self.slot(slots, Params { groups_x, ..base });
        pass.set_bind_group(0, &self.select[cur], &[off]);
        pass.set_pipeline(&self.pipes.compact);
        pass.dispatch_workgroups(groups_x, nq, 1);
    }

    /// Sorts the final carry and copies `k` hits per query plus the counts
    /// into the staging buffer.
    fn encode_sort(&self, encoder: &mut wgpu::CommandEncoder, nq: usize, k: usize, cur: usize) {
        {
            let mut pass = encoder.begin_compute_pass(&Default::default());
            pass.set_pipeline(&self.pipes.sort);
            pass.set_bind_group(0, &self.sort[cur], &[]);
            pass.dispatch_workgroups(nq as u32, 1, 1);
        }
        let row = (k * 8) as u64;
        for q in 0..nq as u64 {
            encoder.copy_buffer_to_buffer(
                &self.hits,
                q * KCAP as u64 * 8,
                &self.staging,
                q * row,
                row,
            );
        }
        let counts_at = nq as u64 * row;
        encoder.copy_buffer_to_buffer(
            &self.counts[cur],
            0,
            &self.staging,
            counts_at,
            nq as u64 * 4,
        );
    }
}

impl Pipelines {
    fn get(gpu: &Gpu, storage: Storage) -> Arc<Pipelines> {
        let i = usize::from(storage == Storage::F16);
        gpu.score_pipes[i]
            .get_or_init(|| Arc::new(Pipelines::new(gpu, storage)))
            .clone()
    }

    fn new(gpu: &Gpu, storage: Storage) -> Self {
        let params = include_str!("../../../../shaders/params.wgsl");
        let catalog = match storage {
            Storage::F32 => include_str!("../../../../shaders/catalog_f32.wgsl"),
            Storage::F16 => include_str!("../../../../shaders/catalog_f16.wgsl"),
        };
        let score_src = [
            params,
            catalog,
            include_str!("../../../../shaders/score.wgsl"),
        ]
        .concat();
        let exclude_src = [params, include_str!("../../../../shaders/exclude.wgsl")].concat();
        let select_src = [params, include_str!("../../../../shaders/select.wgsl")].concat();
        let sort_src = include_str!("../../../../shaders/sort.wgsl");
        use Bind::*;
        let score_l = gpu.layout("score", &[DynUniform, Read, Read, Uniform, ReadWrite]);
        let exclude_l = gpu.layout("exclude", &[DynUniform, Read, ReadWrite]);
        let select_l = gpu.layout(
            "select",
            &[
                DynUniform, Read, Read, Read, ReadWrite, ReadWrite, ReadWrite, ReadWrite,
            ],
        );
        let sort_l = gpu.layout("sort", &[Read, Read, ReadWrite]);
        Pipelines {
            score: gpu.pipeline("score", &score_src, "score", &score_l),
            exclude: gpu.pipeline("exclude", &exclude_src, "exclude", &exclude_l),
            hist: gpu.pipeline("hist", &select_src, "hist_pass", &select_l),
            scan: gpu.pipeline("scan", &select_src, "scan_pass", &select_l),
            compact: gpu.pipeline("compact", &select_src, "compact", &select_l),
            sort: gpu.pipeline("sort", sort_src, "sort", &sort_l),
            exclude_layout: exclude_l,
        }
    }
}

impl Exclusions {
    fn new(
        gpu: &Gpu,
        pipes: &Pipelines,
        params: &wgpu::Buffer,
        scratch: &wgpu::Buffer,
        cap: usize,
    ) -> Self {
        let buf = gpu.buffer(
            "exclusions",
            cap as u64 * 8,
            wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST,
        );
        let bind = gpu.bind(
            "exclude",
            &pipes.exclude_layout,
            &[sized(params, PARAMS_SIZE), whole(&buf), whole(scratch)],
        );
        Self { buf, cap, bind }
    }

    /// Grows (doubling) to hold `n` pairs.
    fn fit(
        &mut self,
        gpu: &Gpu,
        pipes: &Pipelines,
        params: &wgpu::Buffer,
        scratch: &wgpu::Buffer,
        n: usize,
    ) {
        if n > self.cap {
            *self = Self::new(gpu, pipes, params, scratch, n.next_power_of_two());
        }
    }
}

/// Rows per segment: the most that fit one binding, for the rows and for a
/// full pass of scores, in whole 256-row steps.
fn segment_rows(binding: u64, dim: usize, storage: Storage) -> Result<usize, KernelError> {
    let row_bytes = (dim * storage.bytes_per_elem()) as u64;
    let by_rows = binding / row_bytes.max(1);
    let by_scores = binding / (4 * QUERIES_PER_PASS as u64);
    let rows = (by_rows.min(by_scores) as usize).min(MAX_SEG_ROWS) / 256 * 256;
    if rows == 0 {
        return Err(KernelError::Shape(format!(
            "catalog rows of dimension {dim} do not fit the GPU's {binding}-byte bindings"
        )));
    }
    Ok(rows)
}

/// Uploads the catalog as segments of `seg_rows` rows (whole groups).
fn upload_segments(
    gpu: &Gpu,
    cat: &CatalogMatrix,
    seg_rows: usize,
    pipes: &Pipelines,
    params: &wgpu::Buffer,
    queries: &wgpu::Buffer,
    scratch: &wgpu::Buffer,
) -> Result<Vec<Segment>, KernelError> {
    let (n, d) = (cat.len(), cat.dim());
    let layout = pipes.score.get_bind_group_layout(0);
    let mut segs = Vec::new();
    let mut row0 = 0;
    while row0 < n {
        let rows = seg_rows.min(n - row0);
        let (g0, g1) = (row0 / GROUP, (row0 + rows).div_ceil(GROUP));
        let bytes: &[u8] = match &cat.blocks {
            Blocks::F32(v) => bytemuck::cast_slice(&v[g0 * d * GROUP..g1 * d * GROUP]),
            Blocks::F16(v) => bytemuck::cast_slice(&v[g0 * d * GROUP..g1 * d * GROUP]),
        };
        let data = init_buffer(gpu, "catalog segment", bytes);
        let bias = init_buffer(
            gpu,
            "bias segment",
            bytemuck::cast_slice(&cat.bias[g0 * GROUP..g1 * GROUP]),
        );
        let bind = gpu.bind(
            "score",
            &layout,
            &[
                sized(params, PARAMS_SIZE),
                whole(&data),
                whole(&bias),
                whole(queries),
                whole(scratch),
            ],
        );
        segs.push(Segment {
            row0,
            rows,
            bind,
            _data: data,
            _bias: bias,
        });
        row0 += rows;
    }
    Ok(segs)
}

/// A storage buffer holding `bytes`, written through a mapping at creation
/// (no staging copy of a multi-gigabyte catalog).
fn init_buffer(gpu: &Gpu, label: &str, bytes: &[u8]) -> wgpu::Buffer {
    let size = (bytes.len() as u64).next_multiple_of(4).max(16);
    let buf = gpu.device.create_buffer(&wgpu::BufferDescriptor {
        label: Some(label),
        size,
        usage: wgpu::BufferUsages::STORAGE,
        mapped_at_creation: true,
    });
    let mut view = buf
        .slice(..)
        .get_mapped_range_mut()
        .expect("a buffer mapped at creation");
    if bytes.len() as u64 == size {
        view.copy_from_slice(bytes);
    } else {
        let mut padded = bytes.to_vec();
        padded.resize(size as usize, 0);
        view.copy_from_slice(&padded);
    }
    drop(view);
    buf.unmap();
    buf
}

/// Queries as score.wgsl reads them: groups of 8, `[group][dd][8]`,
/// zero-padded.
fn pack_queries(queries: &[&[f32]], d: usize) -> Vec<f32> {
    let groups = queries.len().div_ceil(8);
    let mut out = vec![0.0f32; groups * d * 8];
    for (q, u) in queries.iter().enumerate() {
        for (dd, &x) in u.iter().enumerate() {
            out[((q / 8) * d + dd) * 8 + q % 8] = x;
        }
    }
    out
}

/// (query, row) pairs for every excluded row that exists.
fn exclusion_pairs(excludes: &[&[u32]], rows: usize) -> Vec<[u32; 2]> {
    excludes
        .iter()
        .enumerate()
        .flat_map(|(q, ex)| {
            ex.iter()
                .filter(|&&r| (r as usize) < rows)
                .map(move |&r| [q as u32, r])
        })
        .collect()
}

/// Staging layout: `nq` rows of `k` (score bits, row) pairs, then the counts.
fn parse_hits(data: &[u8], nq: usize, k: usize) -> Vec<Vec<Hit>> {
    // The mapped copy is a Vec<u8>, not necessarily 4-aligned: decode.
    let word = |i: usize| u32::from_le_bytes(data[4 * i..4 * i + 4].try_into().unwrap());
    (0..nq)
        .map(|q| {
            let n = (word(2 * nq * k + q) as usize).min(k);
            (0..n)
                .map(|j| {
                    let at = 2 * (q * k + j);
                    Hit {
                        score: f32::from_bits(word(at)),
                        row: word(at + 1),
                    }
                })
                .collect()
        })
        .collect()
}
