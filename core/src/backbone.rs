//! The frozen backbone (SPEC steps 2-4): a verified GGUF model run by llama.cpp,
//! sessions that compute view states under a mixture of LoRA experts, and the
//! KV-cache reuse that makes a grown history cost only its new tokens.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use sha2::{Digest, Sha256};

use crate::ffi::gguf::{GgufError, GgufFile};
pub use crate::ffi::llama::KvCache;
pub use crate::ffi::llama::Token;
use crate::ffi::llama::{Adapter, Context, ContextParams, LlamaError, Model, Vocabulary};
use crate::lora::LoraError;
use crate::tokenizer::{Tokenizer, TokenizerError};
use crate::upper::UpperSource;

#[derive(Debug, thiserror::Error)]
pub enum BackboneError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: sha256 is {found}, expected {expected}; the file is corrupt or not this model: delete it and run scripts/fetch-assets")]
    Checksum {
        path: PathBuf,
        expected: String,
        found: String,
    },
    #[error(transparent)]
    Gguf(#[from] GgufError),
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    #[error("merging the expert mixture: {0}")]
    Mixture(#[from] LoraError),
    #[error("{path}: GGUF metadata lacks `{key}`; is this a llama.cpp model file?")]
    MissingMetadata { path: PathBuf, key: String },
    #[error("{path}: {source}")]
    Llama { path: PathBuf, source: LlamaError },
    #[error("the prompt has {tokens} tokens, more than the context holds ({n_ctx}); shorten the history or raise n_ctx")]
    PromptTooLong { tokens: usize, n_ctx: u32 },
    #[error("the prompt is empty")]
    EmptyPrompt,
    #[error("cancelled")]
    Cancelled,
    #[error("backbone evaluation failed: {0}")]
    Eval(LlamaError),
    #[error("lower states that feed layer {states} given to the upper layers from layer {layers}; make both with the same first layer")]
    LayerMismatch { states: usize, layers: usize },
}

fn eval_error(e: LlamaError) -> BackboneError {
    match e {
        LlamaError::Cancelled => BackboneError::Cancelled,
        LlamaError::ContextFull { tokens, n_ctx } => BackboneError::PromptTooLong { tokens, n_ctx },
        other => BackboneError::Eval(other),
    }
}

/// sha256 of a file, hex.
pub fn sha256_file(path: &Path) -> Result<String, std::io::Error> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

/// What we know of a backbone file before llama.cpp sees it.
#[derive(Debug, Clone)]
pub struct ModelInfo {
    pub path: PathBuf,
    pub sha256: String,
    pub file_bytes: u64,
    pub arch: String,
    pub n_embd: usize,
    pub n_layer: usize,
    /// Tensor name to ggml shape (`[n_in, n_out]` for a weight matrix).
    pub tensors: HashMap<String, Vec<u64>>,
}

impl ModelInfo {
    /// Hashes the file (and compares with `expected_sha256` when given), then
    /// reads its GGUF metadata with ggml.
    pub fn read(path: &Path, expected_sha256: Option<&str>) -> Result<Self, BackboneError> {
        let io = |source| BackboneError::Io {
            path: path.to_owned(),
            source,
        };
        let file_bytes = std::fs::metadata(path).map_err(io)?.len();
        let sha256 = sha256_file(path).map_err(io)?;
        if let Some(expected) = expected_sha256 {
            if !expected.eq_ignore_ascii_case(&sha256) {
                return Err(BackboneError::Checksum {
                    path: path.to_owned(),
                    expected: expected.to_owned(),
                    found: sha256,
                });
            }
        }
        let gguf = GgufFile::open(path)?;
        let missing = |key: &str| BackboneError::MissingMetadata {
            path: path.to_owned(),
            key: key.to_owned(),
        };
        let arch = gguf
            .string("general.architecture")?
            .ok_or_else(|| missing("general.architecture"))?;
        let number = |key: String| -> Result<usize, BackboneError> {
            Ok(gguf.number(&key)?.ok_or_else(|| missing(&key))? as usize)
        };
        let n_embd = number(format!("{arch}.embedding_length"))?;
        let n_layer = number(format!("{arch}.block_count"))?;
        let tensors = gguf
            .tensors()
            .into_iter()
            .map(|t| (t.name, t.shape))
            .collect();
        Ok(Self {
            path: path.to_owned(),
            sha256,
            file_bytes,
            arch,
            n_embd,
            n_layer,
            tensors,
        })
    }
}

/// How the backbone runs.
#[derive(Debug, Clone)]
pub struct BackboneConfig {
    /// Refuse the model unless its sha256 is this (hex).
    pub expected_sha256: Option<String>,
    /// Threads per session; `None` picks [`default_threads`].
    pub threads: Option<u32>,
    /// Tokens a session can hold (prompt length limit); 1024 holds 50 typical
    /// titles. A session starts at [`INITIAL_CELLS`] and grows to fit its
    /// longest prompt, up to this: each token costs 18 KiB of KV cache on
    /// Gemma 3 270M in f16, 8.5 KiB in q8_0.
    pub n_ctx: u32,
    /// Tokens per llama.cpp decode call; longer prompts are split. Bounds the
    /// compute buffer llama.cpp reserves: 64 tokens need 3 MiB, 256 need 12
    /// (most of it written at every call, so dirty), at the same speed on one
    /// thread (docs/RESULTS.md, "On-device cost").
    pub n_batch: u32,
    /// Let ggml repack quantized weights into its interleaved CPU layouts
    /// (faster matrix products, but a copy of those weights in anonymous
    /// memory, which a phone counts against the app); off, every weight is
    /// read from the mapped file. `None` picks [`default_repack`].
    pub repack_weights: Option<bool>,
    /// The KV cache's type; `None` picks [`default_kv_cache`].
    pub kv_cache: Option<KvCache>,
    /// Merge two or more active experts into one adapter before llama.cpp
    /// sees them (`crate::mixture`): the same mixture in half the small
    /// matrix products. Off only to measure what merging saves.
    pub merge_mixtures: bool,
    /// Where the backbone may write a file for a moment (the upper layers'
    /// model, [`Backbone::upper_layers`], lives there for the time llama.cpp
    /// takes to map it). `None`: the system's temporary directory, which on
    /// Android is not an app's to write: the engine passes its store's.
    pub scratch_dir: Option<PathBuf>,
}

impl BackboneConfig {
    fn scratch_dir(&self) -> PathBuf {
        self.scratch_dir.clone().unwrap_or_else(std::env::temp_dir)
    }

    fn repack(&self) -> bool {
        self.repack_weights.unwrap_or_else(default_repack)
    }

    /// A context of `n_ctx` cells with this config's batch, threads and cache.
    fn context_params(&self, n_ctx: u32) -> ContextParams {
        ContextParams {
            n_ctx,
            n_batch: self.n_batch,
            threads: self.threads.unwrap_or_else(default_threads),
            kv_cache: self.kv_cache.unwrap_or_else(default_kv_cache),
        }
    }
}

impl Default for BackboneConfig {
    fn default() -> Self {
        Self {
            expected_sha256: None,
            threads: None,
            n_ctx: 1024,
            n_batch: 64,
            repack_weights: None,
            kv_cache: None,
            merge_mixtures: true,
            scratch_dir: None,
        }
    }
}

/// Most llama.cpp threads a session may use (ggml's `GGML_MAX_N_THREADS`:
/// above it the first decode hangs).
pub const MAX_THREADS: u32 = 512;

/// Half the cores, at most 4, at least 1; `L2REC_THREADS` overrides.
///
/// ggml's threads spin on barriers: when another process takes one of the cores
/// a decode that uses all of them stalls (2.2 s instead of 0.3 s measured on
/// 2 cores), so we leave headroom rather than chase the last 40%.
pub fn default_threads() -> u32 {
    if let Some(n) = std::env::var("L2REC_THREADS")
        .ok()
        .and_then(|v| v.parse::<u32>().ok())
    {
        return n.max(1);
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as u32;
    (cores / 2).clamp(1, 4)
}

/// Whether weights are repacked by default: `L2REC_REPACK=0|1` overrides.
pub fn default_repack() -> bool {
    match std::env::var("L2REC_REPACK").ok().as_deref().map(str::trim) {
        Some("0") => false,
        Some("1") => true,
        _ => true,
    }
}

/// The KV cache type by default, q8_0: `L2REC_KV_CACHE=f16|q8_0` overrides.
pub fn default_kv_cache() -> KvCache {
    match std::env::var("L2REC_KV_CACHE")
        .ok()
        .as_deref()
        .map(str::trim)
    {
        Some("f16") => KvCache::F16,
        _ => KvCache::Q8_0,
    }
}

/// Tokens a new session holds before its first longer prompt grows it.
pub const INITIAL_CELLS: u32 = 256;

/// The loaded, verified backbone. Cheap to clone; shareable across threads.
#[derive(Clone)]
pub struct Backbone {
    model: Model,
    tokenizer: Arc<Tokenizer>,
    /// What [`Backbone::upper_layers`] builds from (`None`: not supported).
    upper: Option<Arc<UpperSource>>,
    info: Arc<ModelInfo>,
    config: BackboneConfig,
}

impl Backbone {
    pub fn open(path: &Path, config: BackboneConfig) -> Result<Self, BackboneError> {
        let info = ModelInfo::read(path, config.expected_sha256.as_deref())?;
        Self::open_verified(info, config)
    }

    /// Loads a model whose [`ModelInfo`] was just read (and so verified).
    pub fn open_verified(info: ModelInfo, config: BackboneConfig) -> Result<Self, BackboneError> {
        let repack = config.repack();
        // Our tokenizer reads the vocabulary once; llama.cpp loads the model
        // without it (27 MB of tables it would keep for Gemma).
        let mut gguf = GgufFile::open(&info.path)?;
        let tokenizer = Tokenizer::from_gguf(&gguf)?;
        // Only a speed-up: a backbone it cannot read still serves.
        let upper = UpperSource::read(&mut gguf, &info)
            .unwrap_or_else(|e| {
                tracing::warn!("personalization will run full passes: {e}");
                None
            })
            .map(Arc::new);
        drop(gguf);
        let vocabulary = Vocabulary::Skipped {
            arch: &info.arch,
            tokens: tokenizer.len(),
        };
        let model =
            Model::load(&info.path, repack, vocabulary).map_err(|source| BackboneError::Llama {
                path: info.path.clone(),
                source,
            })?;
        Ok(Self {
            model,
            tokenizer: Arc::new(tokenizer),
            upper,
            info: Arc::new(info),
            config,
        })
    }

    pub fn info(&self) -> &ModelInfo {
        &self.info
    }

    pub fn n_embd(&self) -> usize {
        self.model.n_embd()
    }

    /// The prompt's token ids, exactly as llama.cpp's tokenizer gives them
    /// (`crate::tokenizer`; `tests/tokenizer.rs` holds the two together).
    pub fn tokenize(&self, text: &str) -> Result<Vec<Token>, BackboneError> {
        Ok(self.tokenizer.encode(text))
    }

    /// Loads an expert file. The caller validated it (see `lora::validate_expert`).
    pub fn load_expert(&self, path: &Path) -> Result<Expert, BackboneError> {
        static NEXT_ID: AtomicU64 = AtomicU64::new(0);
        let adapter = self
            .model
            .load_adapter(path)
            .map_err(|source| BackboneError::Llama {
                path: path.to_owned(),
                source,
            })?;
        Ok(Expert {
            adapter,
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            path: path.to_owned(),
        })
    }

    /// A new evaluation session (a llama.cpp context with its own KV cache),
    /// holding [`INITIAL_CELLS`] tokens until a longer prompt grows it.
    pub fn session(&self) -> Result<Session, BackboneError> {
        let params = self
            .config
            .context_params(INITIAL_CELLS.min(self.config.n_ctx));
        let ctx = Context::new(&self.model, params).map_err(|e| self.llama_error(e))?;
        Ok(Session {
            ctx,
            model: self.model.clone(),
            info: self.info.clone(),
            merge_mixtures: self.config.merge_mixtures,
            max_cells: self.config.n_ctx,
            model_path: self.info.path.clone(),
            cached: Vec::new(),
            last_state: None,
            mixture: Vec::new(),
            evaluated: 0,
        })
    }

    fn llama_error(&self, source: LlamaError) -> BackboneError {
        BackboneError::Llama {
            path: self.info.path.clone(),
            source,
        }
    }

    /// The underlying llama.cpp model, for benchmarks that bypass the session.
    pub fn model(&self) -> &Model {
        &self.model
    }

    pub fn config(&self) -> &BackboneConfig {
        &self.config
    }
}

/// One LoRA expert, loaded.
#[derive(Clone)]
pub struct Expert {
    adapter: Adapter,
    id: u64,
    path: PathBuf,
}

impl Expert {
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Cancels a running evaluation from another thread.
#[derive(Clone)]
pub struct CancelHandle(Arc<AtomicBool>);

impl CancelHandle {
    pub fn cancel(&self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Computes view states (SPEC step 4) under one expert mixture, keeping the
/// last prompt's KV cache so that a prompt sharing a prefix with it costs only
/// the tokens after the shared prefix.
pub struct Session {
    ctx: Context,
    /// For merged mixtures: the model they load into and its tensor shapes.
    model: Model,
    info: Arc<ModelInfo>,
    merge_mixtures: bool,
    /// The context's size limit (the backbone's `n_ctx`).
    max_cells: u32,
    model_path: PathBuf,
    cached: Vec<Token>,
    last_state: Option<Vec<f32>>,
    mixture: MixtureKey,
    evaluated: usize,
}

impl Session {
    /// Sets the expert mixture (one `llama_set_adapters_lora` call). Experts
    /// at scale 0 are left out; two or more active experts are merged into
    /// one adapter first (`crate::mixture`) unless
    /// [`BackboneConfig::merge_mixtures`] is off. A different mixture
    /// invalidates the cache.
    pub fn set_mixture(&mut self, mixture: &[(&Expert, f32)]) -> Result<(), BackboneError> {
        let (active, key) = active_experts(mixture);
        if key == self.mixture {
            return Ok(());
        }
        let adapters = if self.merge_mixtures && active.len() >= 2 {
            vec![(self.merged_adapter(&active)?, 1.0)]
        } else {
            active
                .iter()
                .map(|(e, s)| (e.adapter.clone(), *s))
                .collect()
        };
        self.ctx.set_adapters(&adapters).map_err(eval_error)?;
        self.mixture = key;
        self.forget();
        Ok(())
    }

    /// Turns merging of mixtures on or off for this session (benchmarks
    /// compare the two); takes effect at the next different mixture.
    pub fn set_merge_mixtures(&mut self, on: bool) {
        self.merge_mixtures = on;
    }

    fn merged_adapter(&self, active: &[(&Expert, f32)]) -> Result<Adapter, BackboneError> {
        merged_adapter(&self.model, &self.info, active, 0)
    }

    /// Drops the cached prompt.
    pub fn forget(&mut self) {
        self.ctx.clear();
        self.cached.clear();
        self.last_state = None;
    }

    /// Tokens the session holds now (it grows up to the backbone's `n_ctx`).
    pub fn cells(&self) -> u32 {
        self.ctx.params().n_ctx
    }

    /// Grows the context to hold `tokens` with a quarter to spare (in steps of
    /// 128, up to `max_cells`), dropping the cache; a prompt longer than
    /// `max_cells` is left to the decode, which refuses it. Allocating the KV
    /// cache for the prompts a user has, rather than for the longest allowed,
    /// is most of the memory a short history saves.
    fn reserve(&mut self, tokens: usize) -> Result<(), BackboneError> {
        let cells = self.cells() as usize;
        if tokens <= cells || cells >= self.max_cells as usize {
            return Ok(());
        }
        let wanted = (tokens + tokens / 4).div_ceil(128) * 128;
        let grown = wanted.min(self.max_cells as usize) as u32;
        let ctx = self
            .ctx
            .resized(grown)
            .map_err(|source| BackboneError::Llama {
                path: self.model_path.clone(),
                source,
            })?;
        self.ctx = ctx;
        self.cached.clear();
        self.last_state = None;
        Ok(())
    }

    /// Tokens llama.cpp evaluated in the last call (0 for a cache hit).
    pub fn tokens_evaluated_last(&self) -> usize {
        self.evaluated
    }

    pub fn cancel_handle(&self) -> CancelHandle {
        CancelHandle(self.ctx.cancel_flag())
    }

    /// Makes `cancel` (a call's token) stop this session's decodes too, until
    /// the next `watch_cancel(None)`.
    pub fn watch_cancel(&self, cancel: Option<&crate::progress::CancelToken>) {
        self.ctx.watch_cancel(cancel.map(|c| c.flag()));
    }

    pub fn set_threads(&mut self, threads: u32) {
        self.ctx.set_threads(threads);
    }

    /// The final hidden state at the last token of `tokens`, reusing the cached
    /// prefix. On quantized weights the reused path differs from a re-encode by
    /// activation rounding (cos >= 0.998); use [`Session::state_fresh`] where
    /// bit-reproducibility matters.
    pub fn state(&mut self, tokens: &[Token]) -> Result<Vec<f32>, BackboneError> {
        if tokens.is_empty() {
            return Err(BackboneError::EmptyPrompt);
        }
        self.reserve(tokens.len())?;
        let mut shared = common_prefix(&self.cached, tokens);
        if shared == tokens.len() && shared == self.cached.len() {
            if let Some(state) = &self.last_state {
                self.evaluated = 0;
                return Ok(state.clone());
            }
        }
        // The last token must be evaluated to get its output.
        shared = shared.min(tokens.len() - 1);
        if shared < self.cached.len() && !self.ctx.truncate(shared) {
            self.ctx.clear();
            shared = 0;
        }
        self.eval_suffix(tokens, shared)
    }

    /// The state of `tokens` encoded from scratch: the same input always gives
    /// the same bits.
    pub fn state_fresh(&mut self, tokens: &[Token]) -> Result<Vec<f32>, BackboneError> {
        if tokens.is_empty() {
            return Err(BackboneError::EmptyPrompt);
        }
        self.reserve(tokens.len())?;
        self.ctx.clear();
        self.eval_suffix(tokens, 0)
    }

    /// States at several token positions of one prompt, encoded from scratch
    /// (teacher forcing: one pass gives the state after every item).
    pub fn states_at(
        &mut self,
        tokens: &[Token],
        positions: &[usize],
    ) -> Result<Vec<Vec<f32>>, BackboneError> {
        self.reserve(tokens.len())?;
        self.ctx.clear();
        self.cached.clear();
        self.last_state = None;
        self.ctx.reset_cancel();
        let states = self.ctx.decode(tokens, 0, positions);
        self.evaluated = tokens.len();
        let states = states
            .inspect_err(|_| self.ctx.clear())
            .map_err(eval_error)?;
        self.cached = tokens.to_vec();
        self.last_state = (positions.last() == Some(&(tokens.len() - 1)))
            .then(|| states[states.len() - 1].clone());
        Ok(states)
    }

    /// The residual stream after layer `from - 1` at every token of `tokens`
    /// (encoded from scratch, layers `0..from` only): what
    /// [`UpperSession::states_at`] reads to run layers `from..` alone. The
    /// mixture does not change it when every expert adapts layers `from..`
    /// only. Leaves the cache empty.
    ///
    /// `positions` are the states the upper passes will read: the calls are
    /// split as [`Session::states_at`] splits them for those, so the
    /// rounding is the same as in a full pass.
    pub fn lower_states(
        &mut self,
        tokens: &[Token],
        positions: &[usize],
        from: usize,
    ) -> Result<LowerStates, BackboneError> {
        if tokens.is_empty() || from == 0 {
            return Err(BackboneError::EmptyPrompt);
        }
        self.reserve(tokens.len())?;
        self.forget();
        self.ctx.reset_cancel();
        self.evaluated = tokens.len();
        let rows = self.ctx.decode_up_to_layer(tokens, from - 1, positions);
        // The layers above `from` wrote nothing: no prefix to extend.
        self.ctx.clear();
        Ok(LowerStates {
            rows: rows.map_err(eval_error)?,
            n_embd: self.info.n_embd,
            from,
        })
    }

    fn eval_suffix(&mut self, tokens: &[Token], from: usize) -> Result<Vec<f32>, BackboneError> {
        self.ctx.reset_cancel();
        self.cached.truncate(from);
        self.last_state = None;
        let suffix = &tokens[from..];
        self.evaluated = suffix.len();
        match self.ctx.decode(suffix, from, &[suffix.len() - 1]) {
            Ok(mut states) => {
                let state = states.pop().expect("one output was requested");
                self.cached = tokens.to_vec();
                self.last_state = Some(state.clone());
                Ok(state)
            }
            Err(e) => {
                // A failed decode leaves the cache in an unknown state.
                self.forget();
                Err(eval_error(e))
            }
        }
    }
}

/// Experts with their scales, as a mixture is given.
type Scaled<'e> = Vec<(&'e Expert, f32)>;
/// Expert ids with their scales: the key of a loaded mixture.
type MixtureKey = Vec<(u64, f32)>;

/// The experts of `mixture` at a scale other than 0, and the key that names
/// that mixture (expert ids and scales).
fn active_experts<'e>(mixture: &[(&'e Expert, f32)]) -> (Scaled<'e>, MixtureKey) {
    let active: Vec<(&Expert, f32)> = mixture.iter().copied().filter(|(_, s)| *s != 0.0).collect();
    let key = active.iter().map(|(e, s)| (e.id, *s)).collect();
    (active, key)
}

/// `active` as one adapter of their summed rank, loaded into `model`, whose
/// layer 0 is the backbone's layer `from` (`crate::mixture`).
fn merged_adapter(
    model: &Model,
    info: &ModelInfo,
    active: &[(&Expert, f32)],
    from: usize,
) -> Result<Adapter, BackboneError> {
    let parts: Vec<(&Path, f32)> = active.iter().map(|(e, s)| (e.path(), *s)).collect();
    let image = crate::mixture::merged_image(&parts, info, from)?;
    model
        .load_adapter_bytes(&image)
        .map_err(|source| BackboneError::Llama {
            path: info.path.clone(),
            source,
        })
}

fn common_prefix(a: &[Token], b: &[Token]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// The scratch files' names start so ([`Backbone::upper_layers`]).
const SCRATCH_PREFIX: &str = ".l2rec-upper-";

/// Removes scratch files a process that died while loading left in `dir`
/// (a file lives there for milliseconds, but a killed process runs no
/// `Drop`). Only for a directory no other live backbone writes to: the
/// engine calls it on its store directory, which it holds locked.
pub fn remove_stale_scratch(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        if entry
            .file_name()
            .to_string_lossy()
            .starts_with(SCRATCH_PREFIX)
        {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// A file this process wrote and checked, removed when dropped.
struct ScratchFile(PathBuf);

impl ScratchFile {
    /// Writes a new file in `dir` with `fill`, syncs it (written pages
    /// would otherwise stay dirty until the kernel writes them back) and
    /// reads it back to check that it holds what was written.
    fn write(
        dir: &Path,
        fill: impl FnOnce(
            &mut HashingWriter<std::io::BufWriter<std::fs::File>>,
        ) -> Result<(), BackboneError>,
    ) -> Result<Self, BackboneError> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let name = format!(
            "{SCRATCH_PREFIX}{}-{}.gguf",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let path = dir.join(name);
        let io = |source| BackboneError::Io {
            path: path.clone(),
            source,
        };
        let file = std::fs::File::options()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(io)?;
        let scratch = ScratchFile(path.clone()); // removed from here on
        let mut out = HashingWriter {
            inner: std::io::BufWriter::new(file),
            hasher: Sha256::new(),
        };
        fill(&mut out)?;
        let expected = hex::encode(out.hasher.finalize());
        let file = out.inner.into_inner().map_err(|e| io(e.into_error()))?;
        file.sync_all().map_err(io)?;
        drop(file);
        let found = sha256_file(&path).map_err(io)?;
        if found != expected {
            return Err(BackboneError::Checksum {
                path,
                expected,
                found,
            });
        }
        Ok(scratch)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

/// A writer that hashes what passes through it.
struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
}

impl<W: std::io::Write> std::io::Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

impl Drop for ScratchFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The residual stream entering layer `from` at every token of one prompt
/// (`[tokens, n_embd]`), from [`Session::lower_states`].
#[derive(Debug, Clone)]
pub struct LowerStates {
    rows: Vec<f32>,
    n_embd: usize,
    from: usize,
}

impl LowerStates {
    pub fn tokens(&self) -> usize {
        self.rows.len() / self.n_embd
    }

    /// The first layer these vectors feed.
    pub fn from_layer(&self) -> usize {
        self.from
    }
}

/// The backbone's layers `from..` as a model of their own (`crate::upper`):
/// a mixture's pass over a prompt whose [`LowerStates`] are known costs
/// those layers only. About 8 MB for Gemma 3 270M's top two layers, held
/// only while someone keeps it (personalization does, for one run).
pub struct UpperLayers {
    model: Model,
    info: Arc<ModelInfo>,
    from: usize,
    config: BackboneConfig,
}

impl Backbone {
    /// Layers `from..` as a model of their own (or a few more below, see
    /// `UpperSource::start`: [`UpperLayers::from_layer`] says where it
    /// starts), or `None` where `crate::upper` does not support it (then
    /// every pass runs all layers).
    ///
    /// The model is written to a file in [`BackboneConfig::scratch_dir`]
    /// (its weights copied from the verified backbone file a megabyte at a
    /// time), synced, checked against what was written, mapped by llama.cpp
    /// and unlinked at once: its weights are then clean file pages, which a
    /// phone does not count against the app (loaded from memory they would
    /// be 8 MB of dirty pages, plus an 8 MB image while loading), and
    /// nothing is left on disk.
    pub fn upper_layers(&self, wanted: usize) -> Result<Option<UpperLayers>, BackboneError> {
        let Some(source) = self.upper.as_ref() else {
            return Ok(None);
        };
        let from = source.start(wanted);
        if !crate::upper::supported(&self.info, from) {
            return Ok(None);
        }
        let file = ScratchFile::write(&self.config.scratch_dir(), |out| {
            source.write(&self.info, from, out)
        })?;
        let model = Model::load(file.path(), self.config.repack(), Vocabulary::Llama).map_err(
            |source| BackboneError::Llama {
                path: file.path().to_owned(),
                source,
            },
        )?;
        drop(file); // unlinked: the mapping keeps its pages
        Ok(Some(UpperLayers {
            model,
            info: self.info.clone(),
            from,
            config: self.config.clone(),
        }))
    }
}

impl UpperLayers {
    pub fn from_layer(&self) -> usize {
        self.from
    }

    /// A session over these layers, holding the backbone's `n_ctx` tokens
    /// (their KV cache is two layers' worth: about 1 MB at 1024 in q8_0).
    pub fn session(&self) -> Result<UpperSession, BackboneError> {
        let params = self.config.context_params(self.config.n_ctx);
        let ctx = Context::new(&self.model, params).map_err(|source| BackboneError::Llama {
            path: self.info.path.clone(),
            source,
        })?;
        Ok(UpperSession {
            ctx,
            model: self.model.clone(),
            info: self.info.clone(),
            from: self.from,
            mixture: None,
        })
    }
}

/// Passes of the upper layers under one expert mixture at a time.
pub struct UpperSession {
    ctx: Context,
    model: Model,
    info: Arc<ModelInfo>,
    from: usize,
    mixture: Option<MixtureKey>,
}

impl UpperSession {
    /// Sets the expert mixture: its active experts, merged and renamed for
    /// these layers (`crate::mixture`), as one adapter.
    pub fn set_mixture(&mut self, mixture: &[(&Expert, f32)]) -> Result<(), BackboneError> {
        let (active, key) = active_experts(mixture);
        if self.mixture.as_ref() == Some(&key) {
            return Ok(());
        }
        let adapters = if active.is_empty() {
            Vec::new()
        } else {
            let adapter = merged_adapter(&self.model, &self.info, &active, self.from)?;
            vec![(adapter, 1.0)]
        };
        self.ctx.set_adapters(&adapters).map_err(eval_error)?;
        self.mixture = Some(key);
        Ok(())
    }

    /// Makes `cancel` stop this session's decodes too.
    pub fn watch_cancel(&self, cancel: Option<&crate::progress::CancelToken>) {
        self.ctx.watch_cancel(cancel.map(|c| c.flag()));
    }

    /// The final hidden states at `positions` of the prompt whose lower
    /// states are `lower`, under the current mixture: what
    /// [`Session::states_at`] gives for that prompt and mixture.
    pub fn states_at(
        &mut self,
        lower: &LowerStates,
        positions: &[usize],
    ) -> Result<Vec<Vec<f32>>, BackboneError> {
        if lower.tokens() == 0 {
            return Err(BackboneError::EmptyPrompt);
        }
        if lower.from != self.from {
            return Err(BackboneError::LayerMismatch {
                states: lower.from,
                layers: self.from,
            });
        }
        self.ctx.clear();
        self.ctx.reset_cancel();
        let states = self.ctx.decode_embeddings(&lower.rows, 0, positions);
        self.ctx.clear();
        states.map_err(eval_error)
    }
}
