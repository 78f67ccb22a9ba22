//! Safe wrappers over llama.cpp: model, context, LoRA adapter, decode.

use std::ffi::{c_char, c_void, CStr, CString};
use std::path::Path;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Once};

use llama_cpp_sys_2 as sys;

/// A token id of the backbone's vocabulary.
pub type Token = i32;

/// What can go wrong inside llama.cpp. Callers add the file and the remedy.
#[derive(Debug, thiserror::Error)]
pub enum LlamaError {
    #[error("llama.cpp could not load the model")]
    ModelLoad,
    #[error("llama.cpp could not create a context (n_ctx {n_ctx}, n_batch {n_batch})")]
    ContextInit { n_ctx: u32, n_batch: u32 },
    #[error("llama.cpp could not load the LoRA adapter")]
    AdapterLoad,
    #[error("llama.cpp refused the adapter set (code {0})")]
    SetAdapters(i32),
    #[error("the text could not be tokenized (code {0})")]
    Tokenize(i32),
    #[error("path is not valid UTF-8 or contains a NUL byte: {0}")]
    BadPath(String),
    #[error("{tokens} tokens do not fit the context of {n_ctx} tokens")]
    ContextFull { tokens: usize, n_ctx: u32 },
    #[error("decode was cancelled")]
    Cancelled,
    #[error("llama_decode failed with code {0}")]
    Decode(i32),
    #[error("llama.cpp returned no embedding for output {0}")]
    NoEmbedding(usize),
}

/// Routes llama.cpp's and ggml's log into `tracing` (target `llama_cpp`), once
/// per process. Without a subscriber that enables that target it is silent.
pub fn route_log_to_tracing() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // SAFETY: `log_to_tracing` is a plain `extern "C"` function valid for the
        // whole process and the user data pointer is unused (null).
        unsafe { sys::llama_log_set(Some(log_to_tracing), std::ptr::null_mut()) };
    });
}

extern "C" fn log_to_tracing(level: sys::ggml_log_level, text: *const c_char, _: *mut c_void) {
    if text.is_null() {
        return;
    }
    // SAFETY: llama.cpp passes a NUL-terminated string valid for this call.
    let text = unsafe { CStr::from_ptr(text) }.to_string_lossy();
    let text = text.trim_end();
    if text.is_empty() {
        return;
    }
    match level {
        sys::GGML_LOG_LEVEL_ERROR => tracing::error!(target: "llama_cpp", "{text}"),
        sys::GGML_LOG_LEVEL_WARN => tracing::warn!(target: "llama_cpp", "{text}"),
        sys::GGML_LOG_LEVEL_INFO => tracing::info!(target: "llama_cpp", "{text}"),
        _ => tracing::debug!(target: "llama_cpp", "{text}"),
    }
}

fn init_backend() {
    static ONCE: Once = Once::new();
    route_log_to_tracing();
    // SAFETY: called once per process before any model is loaded, as llama.h asks.
    ONCE.call_once(|| unsafe { sys::llama_backend_init() });
}

fn c_path(path: &Path) -> Result<CString, LlamaError> {
    let text = path
        .to_str()
        .ok_or_else(|| LlamaError::BadPath(path.display().to_string()))?;
    CString::new(text).map_err(|_| LlamaError::BadPath(text.to_owned()))
}

struct ModelHandle(NonNull<sys::llama_model>);

// SAFETY: a loaded llama_model is immutable; llama.cpp documents concurrent use
// of one model from several contexts on different threads.
unsafe impl Send for ModelHandle {}
// SAFETY: as above, the model is only read after loading.
unsafe impl Sync for ModelHandle {}

impl Drop for ModelHandle {
    fn drop(&mut self) {
        // SAFETY: the pointer came from llama_model_load_from_file and every
        // context and adapter holds an Arc to this handle, so none outlives it.
        unsafe { sys::llama_model_free(self.0.as_ptr()) };
    }
}

/// A backbone loaded by llama.cpp (memory-mapped, CPU).
#[derive(Clone)]
pub struct Model {
    handle: Arc<ModelHandle>,
}

impl Model {
    /// Loads a GGUF model. The caller has verified the file (checksum, metadata):
    /// llama.cpp's own checks do not catch corrupted weights.
    /// `repack` lets ggml copy quantized weights into its interleaved CPU
    /// layouts (anonymous memory); without it every weight stays in the map.
    pub fn load(path: &Path, repack: bool, vocabulary: Vocabulary) -> Result<Self, LlamaError> {
        init_backend();
        let c_path = c_path(path)?;
        // SAFETY: returns a plain struct of defaults.
        let mut params = unsafe { sys::llama_model_default_params() };
        params.n_gpu_layers = 0;
        params.load_mode = sys::LLAMA_LOAD_MODE_MMAP;
        params.use_extra_bufts = repack;
        let overrides = vocabulary.overrides();
        if !overrides.is_empty() {
            // Read during the load only; `overrides` outlives the call.
            params.kv_overrides = overrides.as_ptr();
        }
        // SAFETY: `c_path` is a valid C string for the call; params is by value.
        let ptr = unsafe { sys::llama_model_load_from_file(c_path.as_ptr(), params) };
        let ptr = NonNull::new(ptr).ok_or(LlamaError::ModelLoad)?;
        Ok(Self {
            handle: Arc::new(ModelHandle(ptr)),
        })
    }

    fn ptr(&self) -> *mut sys::llama_model {
        self.handle.0.as_ptr()
    }

    pub fn n_embd(&self) -> usize {
        // SAFETY: the model pointer is valid while `self` lives.
        unsafe { sys::llama_model_n_embd(self.ptr()) as usize }
    }

    pub fn n_layer(&self) -> usize {
        // SAFETY: as above.
        unsafe { sys::llama_model_n_layer(self.ptr()) as usize }
    }

    /// Tokenizes `text`, adding BOS when the model wants it. Control-token text
    /// inside `text` stays plain text: item titles cannot inject special tokens.
    /// Only for a model loaded with [`Vocabulary::Llama`] (the runtime's own
    /// tokenizer is `crate::tokenizer`); without it, an error.
    pub fn tokenize(&self, text: &str) -> Result<Vec<Token>, LlamaError> {
        if !self.has_vocabulary() {
            return Err(LlamaError::Tokenize(0));
        }
        let len = i32::try_from(text.len()).map_err(|_| LlamaError::Tokenize(i32::MIN))?;
        // SAFETY: the vocab pointer lives as long as the model.
        let vocab = unsafe { sys::llama_model_get_vocab(self.ptr()) };
        let mut tokens: Vec<Token> = vec![0; text.len() + 2];
        loop {
            // SAFETY: `text` is valid for `len` bytes (no NUL needed, the length is
            // passed), `tokens` has room for `tokens.len()` ids.
            let n = unsafe {
                sys::llama_tokenize(
                    vocab,
                    text.as_ptr().cast(),
                    len,
                    tokens.as_mut_ptr(),
                    tokens.len() as i32,
                    true,
                    false,
                )
            };
            if n >= 0 {
                tokens.truncate(n as usize);
                return Ok(tokens);
            }
            if n == i32::MIN {
                return Err(LlamaError::Tokenize(n));
            }
            // A negative count is the size needed: grow and try again.
            tokens.resize((-n) as usize, 0);
        }
    }

    /// Loads a LoRA adapter from a GGUF image in memory (a read-only
    /// [`memory_stream`]). The caller built the image from validated tensors
    /// (`crate::mixture`).
    pub fn load_adapter_bytes(&self, image: &[u8]) -> Result<Adapter, LlamaError> {
        // SAFETY: the model is valid and `file` an open stream over the image;
        // llama.cpp reads it (seek, tell, read) and reports a bad image as NULL.
        let ptr = super::memory_stream(image, |file| unsafe {
            sys::llama_adapter_lora_init_from_file_ptr(self.ptr(), file)
        })
        .ok_or(LlamaError::AdapterLoad)?;
        let ptr = NonNull::new(ptr).ok_or(LlamaError::AdapterLoad)?;
        Ok(Adapter {
            handle: Arc::new(AdapterHandle {
                ptr,
                _model: self.handle.clone(),
            }),
        })
    }

    /// Whether llama.cpp loaded the vocabulary ([`Vocabulary::Llama`]).
    pub fn has_vocabulary(&self) -> bool {
        // SAFETY: the vocab pointer lives as long as the model.
        let kind = unsafe { sys::llama_vocab_type(sys::llama_model_get_vocab(self.ptr())) };
        kind != sys::LLAMA_VOCAB_TYPE_NONE
    }

    /// Loads a LoRA adapter for this model. The caller has validated the file.
    pub fn load_adapter(&self, path: &Path) -> Result<Adapter, LlamaError> {
        let c_path = c_path(path)?;
        // SAFETY: the model is valid, the path a valid C string; a NULL result is
        // llama.cpp's way of reporting a bad file (it does not abort).
        let ptr = unsafe { sys::llama_adapter_lora_init(self.ptr(), c_path.as_ptr()) };
        let ptr = NonNull::new(ptr).ok_or(LlamaError::AdapterLoad)?;
        Ok(Adapter {
            handle: Arc::new(AdapterHandle {
                ptr,
                _model: self.handle.clone(),
            }),
        })
    }
}

/// Whether llama.cpp loads the model's vocabulary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Vocabulary<'a> {
    /// As the file has it: `Model::tokenize` works (tests compare with it).
    Llama,
    /// Not at all (`tokenizer.ggml.model` read as "no_vocab", `tokens` dummy
    /// entries so that token ids stay in range): 27 MB less for Gemma, and
    /// tokens come from `crate::tokenizer`. `arch` is `general.architecture`.
    Skipped { arch: &'a str, tokens: usize },
}

impl Vocabulary<'_> {
    /// llama.cpp's metadata overrides for this choice, NUL-key terminated
    /// (empty: none).
    fn overrides(&self) -> Vec<sys::llama_model_kv_override> {
        let Self::Skipped { arch, tokens } = *self else {
            return Vec::new();
        };
        let mut model = kv_override(sys::LLAMA_KV_OVERRIDE_TYPE_STR, "tokenizer.ggml.model");
        model.__bindgen_anon_1.val_str = c_chars("no_vocab");
        let mut size = kv_override(
            sys::LLAMA_KV_OVERRIDE_TYPE_INT,
            &format!("{arch}.vocab_size"),
        );
        size.__bindgen_anon_1.val_i64 = tokens as i64;
        vec![
            model,
            size,
            kv_override(sys::LLAMA_KV_OVERRIDE_TYPE_INT, ""),
        ]
    }
}

fn kv_override(tag: sys::llama_model_kv_override_type, key: &str) -> sys::llama_model_kv_override {
    sys::llama_model_kv_override {
        tag,
        key: c_chars(key),
        __bindgen_anon_1: sys::llama_model_kv_override__bindgen_ty_1 { val_i64: 0 },
    }
}

/// `text` NUL-padded into llama.cpp's 128-byte key and value fields (longer
/// text is cut at 127 bytes; ours are short constants and an architecture name).
fn c_chars(text: &str) -> [std::os::raw::c_char; 128] {
    let mut out = [0 as std::os::raw::c_char; 128];
    for (o, b) in out.iter_mut().zip(text.bytes().take(127)) {
        *o = b as std::os::raw::c_char;
    }
    out
}

struct AdapterHandle {
    ptr: NonNull<sys::llama_adapter_lora>,
    // Keeps the model alive: an adapter is only valid while its model is.
    _model: Arc<ModelHandle>,
}

// SAFETY: an adapter is immutable after loading; contexts only read it.
unsafe impl Send for AdapterHandle {}
// SAFETY: as above.
unsafe impl Sync for AdapterHandle {}

impl Drop for AdapterHandle {
    fn drop(&mut self) {
        // SAFETY: every context that has this adapter set holds an Arc to this
        // handle, so no context can use it after this point; the model is alive.
        unsafe { sys::llama_adapter_lora_free(self.ptr.as_ptr()) };
    }
}

/// A LoRA adapter loaded into a model's memory.
#[derive(Clone)]
pub struct Adapter {
    handle: Arc<AdapterHandle>,
}

impl Adapter {
    /// Identity of the loaded adapter (two clones compare equal).
    pub fn same_as(&self, other: &Adapter) -> bool {
        Arc::ptr_eq(&self.handle, &other.handle)
    }
}

/// How a context is created.
#[derive(Debug, Clone, Copy)]
pub struct ContextParams {
    pub n_ctx: u32,
    pub n_batch: u32,
    pub threads: u32,
    pub kv_cache: KvCache,
}

/// The KV cache's element type, and with it the attention kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KvCache {
    /// 8-bit blocks (34 bytes per 32 values): 47% of the f16 cache. llama.cpp
    /// reads a quantized V cache only through flash attention, so this mode
    /// turns it on.
    #[default]
    Q8_0,
    /// 16-bit floats and the plain attention kernel, whose arithmetic does not
    /// depend on how a prompt was split into calls: on unquantized weights an
    /// appended prompt gives the same state as a re-encode (to 1e-4).
    F16,
}

impl KvCache {
    fn ggml_type(self) -> sys::ggml_type {
        match self {
            KvCache::Q8_0 => sys::GGML_TYPE_Q8_0,
            KvCache::F16 => sys::GGML_TYPE_F16,
        }
    }

    fn flash_attention(self) -> sys::llama_flash_attn_type {
        match self {
            KvCache::Q8_0 => sys::LLAMA_FLASH_ATTN_TYPE_ENABLED,
            KvCache::F16 => sys::LLAMA_FLASH_ATTN_TYPE_DISABLED,
        }
    }
}

/// Most hidden states one decode call returns. Bounds the logits buffers
/// llama.cpp reserves (262k floats per output for Gemma 3).
pub const MAX_OUTPUTS_PER_CALL: usize = 8;

/// The rows of the graph's `result_norm` tensor (the final hidden states after
/// the output norm, one per output token), captured by the eval callback;
/// or, when `layer_name` is set, every row of that layer's output (the
/// residual stream after it, `l_out-<layer>`), where the graph then stops:
/// the upper layers alone take it as input (`crate::upper`).
struct Capture {
    n_embd: usize,
    rows: Vec<f32>,
    failed: bool,
    layer_name: Option<CString>,
    layer_rows: Vec<f32>,
}

const RESULT_NORM: &[u8] = b"result_norm";

/// Appends the f32 rows of `t` (checked: f32, `n_embd` wide) to `out`; false
/// for a tensor of another type or width.
///
/// # Safety
/// `t` is a tensor of the graph being computed, its data ready (an eval
/// callback's second call).
unsafe fn copy_rows(t: *mut sys::ggml_tensor, n_embd: usize, out: &mut Vec<f32>) -> bool {
    // SAFETY: the caller passes a valid tensor.
    let tensor = unsafe { &*t };
    let rows = tensor.ne[1] as usize;
    if tensor.type_ != sys::GGML_TYPE_F32 || tensor.ne[0] as usize != n_embd {
        return false;
    }
    let start = out.len();
    out.resize(start + rows * n_embd, 0.0);
    // SAFETY: the tensor holds ne[0] * ne[1] contiguous f32 values (checked
    // type and width; both captured tensors are fresh results of an op, so
    // contiguous), the destination has room for exactly that many bytes.
    unsafe {
        sys::ggml_backend_tensor_get(
            t,
            out[start..].as_mut_ptr().cast(),
            0,
            rows * n_embd * std::mem::size_of::<f32>(),
        )
    };
    true
}

extern "C" fn capture_result_norm(t: *mut sys::ggml_tensor, ask: bool, data: *mut c_void) -> bool {
    // SAFETY: ggml passes a valid tensor of the graph being computed.
    let tensor = unsafe { &*t };
    // SAFETY: ggml tensor names are NUL-terminated within their fixed array.
    let name = unsafe { CStr::from_ptr(tensor.name.as_ptr()) };
    // SAFETY: `data` is the Capture boxed in the Context that owns this
    // llama_context; it outlives every decode and is only touched here and by
    // that Context between decodes (never concurrently).
    let capture = unsafe { &mut *(data as *mut Capture) };
    let is_layer = capture
        .layer_name
        .as_deref()
        .is_some_and(|layer| layer == name);
    if ask {
        // Observe only these; everything else runs unobserved.
        return name.to_bytes() == RESULT_NORM || is_layer;
    }
    let n_embd = capture.n_embd;
    if is_layer {
        // SAFETY: an eval callback's second call: the tensor's data is ready.
        let ok = unsafe { copy_rows(t, n_embd, &mut capture.layer_rows) };
        capture.failed |= !ok;
        return false; // the layers above are not wanted (`decode_up_to_layer`)
    }
    // SAFETY: as above.
    let ok = unsafe { copy_rows(t, n_embd, &mut capture.rows) };
    capture.failed |= !ok;
    // Stop the graph here: what follows `result_norm` is only the 262k-word
    // output layer, whose logits nobody reads (ggml's scheduler ends the
    // compute when the callback returns false; the KV cache was written by
    // the layers before). Measured: see docs/RESULTS.md (output layer skipped).
    false
}

/// A llama.cpp context that outputs final hidden states (after the output norm)
/// for the tokens it is asked about. One sequence; not shareable across threads.
///
/// The context is a generative one with output flags on the wanted tokens
/// only, and the states are read from the graph by an eval callback: an
/// embeddings context would output (and run the 262k-word output layer on)
/// every token, which costs more than the rest of the model.
pub struct Context {
    ptr: NonNull<sys::llama_context>,
    batch: sys::llama_batch,
    // For embeddings input (`decode_embeddings`), allocated at its first use.
    embd_batch: Option<sys::llama_batch>,
    params: ContextParams,
    n_embd: usize,
    // The mixture currently set, its adapters kept alive while llama.cpp
    // refers to them.
    adapters: Vec<(Adapter, f32)>,
    // Read by llama.cpp's abort callback between graph nodes; boxed for a
    // stable address.
    abort: Box<AbortFlags>,
    // Written by the eval callback during decode; boxed for a stable address.
    capture: Box<Capture>,
    model: Model,
}

// SAFETY: a llama_context may move between threads; it is never used from two
// threads at once because every method takes `&mut self` or `&self` on a type
// that is not Sync.
unsafe impl Send for Context {}

/// What stops a decode: the context's own flag, or the flag of the call it
/// currently serves (an engine call's cancel token).
struct AbortFlags {
    own: Arc<AtomicBool>,
    call: Mutex<Option<Arc<AtomicBool>>>,
}

impl AbortFlags {
    fn raised(&self) -> bool {
        if self.own.load(Ordering::Relaxed) {
            return true;
        }
        let call = self.call.lock().unwrap_or_else(|p| p.into_inner());
        call.as_ref().is_some_and(|f| f.load(Ordering::Relaxed))
    }
}

extern "C" fn abort_if_cancelled(data: *mut c_void) -> bool {
    // SAFETY: `data` is the Context's boxed AbortFlags, which outlives the
    // llama_context that calls this (dropped after llama_free).
    let flags = unsafe { &*(data as *const AbortFlags) };
    flags.raised()
}

impl Context {
    pub fn new(model: &Model, params: ContextParams) -> Result<Self, LlamaError> {
        let abort = AbortFlags {
            own: Arc::new(AtomicBool::new(false)),
            call: Mutex::new(None),
        };
        Self::with_abort(model, params, Box::new(abort))
    }

    /// A new context like this one holding `n_ctx` tokens: the same model,
    /// threads, mixture and cancel flags (a [`Context::cancel_flag`] taken
    /// from this one stops the new one too), an empty cache.
    pub fn resized(&self, n_ctx: u32) -> Result<Self, LlamaError> {
        let abort = AbortFlags {
            own: self.abort.own.clone(),
            call: Mutex::new(
                self.abort
                    .call
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .clone(),
            ),
        };
        let params = ContextParams {
            n_ctx,
            ..self.params
        };
        let mut ctx = Self::with_abort(&self.model, params, Box::new(abort))?;
        ctx.set_adapters(&self.adapters)?;
        Ok(ctx)
    }

    fn with_abort(
        model: &Model,
        params: ContextParams,
        abort: Box<AbortFlags>,
    ) -> Result<Self, LlamaError> {
        let mut capture = Box::new(Capture {
            n_embd: model.n_embd(),
            rows: Vec::new(),
            failed: false,
            layer_name: None,
            layer_rows: Vec::new(),
        });
        // SAFETY: returns a plain struct of defaults.
        let mut cp = unsafe { sys::llama_context_default_params() };
        cp.n_ctx = params.n_ctx;
        cp.n_batch = params.n_batch;
        cp.n_ubatch = params.n_batch;
        cp.n_seq_max = 1;
        cp.n_threads = params.threads as i32;
        cp.n_threads_batch = params.threads as i32;
        cp.n_outputs_max = MAX_OUTPUTS_PER_CALL as u32;
        cp.embeddings = false;
        cp.cb_eval = Some(capture_result_norm);
        cp.cb_eval_user_data = (&mut *capture as *mut Capture).cast();
        cp.type_k = params.kv_cache.ggml_type();
        cp.type_v = params.kv_cache.ggml_type();
        cp.flash_attn_type = params.kv_cache.flash_attention();
        // A full-size sliding-window cache lets us roll the sequence back to any
        // shared prefix instead of re-encoding it.
        cp.swa_full = true;
        cp.no_perf = true;
        cp.abort_callback = Some(abort_if_cancelled);
        cp.abort_callback_data = (&*abort as *const AbortFlags).cast_mut().cast();
        // SAFETY: the model is valid; both callbacks' data outlive the context
        // (both boxes are stored in the returned struct and dropped after
        // llama_free).
        let ptr = unsafe { sys::llama_init_from_model(model.ptr(), cp) };
        let ptr = NonNull::new(ptr).ok_or(LlamaError::ContextInit {
            n_ctx: params.n_ctx,
            n_batch: params.n_batch,
        })?;
        // SAFETY: allocates a token batch of n_batch entries, one sequence each;
        // freed in Drop.
        let batch = unsafe { sys::llama_batch_init(params.n_batch as i32, 0, 1) };
        Ok(Self {
            ptr,
            batch,
            embd_batch: None,
            params,
            n_embd: model.n_embd(),
            adapters: Vec::new(),
            abort,
            capture,
            model: model.clone(),
        })
    }

    pub fn params(&self) -> ContextParams {
        self.params
    }

    pub fn model(&self) -> &Model {
        &self.model
    }

    /// A flag that, once set, makes the running and every later decode fail
    /// with [`LlamaError::Cancelled`] until [`Context::reset_cancel`].
    pub fn cancel_flag(&self) -> Arc<AtomicBool> {
        self.abort.own.clone()
    }

    pub fn reset_cancel(&self) {
        self.abort.own.store(false, Ordering::Relaxed);
    }

    /// Also stops decodes while `flag` is raised (`None`: only the
    /// context's own flag does).
    pub fn watch_cancel(&self, flag: Option<Arc<AtomicBool>>) {
        *self.abort.call.lock().unwrap_or_else(|p| p.into_inner()) = flag;
    }

    pub fn set_threads(&mut self, threads: u32) {
        self.params.threads = threads;
        // SAFETY: the context is valid and exclusively borrowed.
        unsafe { sys::llama_set_n_threads(self.ptr.as_ptr(), threads as i32, threads as i32) };
    }

    /// Sets the whole LoRA mixture at once (one `llama_set_adapters_lora` call).
    pub fn set_adapters(&mut self, mixture: &[(Adapter, f32)]) -> Result<(), LlamaError> {
        let mut ptrs: Vec<*mut sys::llama_adapter_lora> =
            mixture.iter().map(|(a, _)| a.handle.ptr.as_ptr()).collect();
        let mut scales: Vec<f32> = mixture.iter().map(|(_, s)| *s).collect();
        // SAFETY: both arrays hold `mixture.len()` valid entries for the call;
        // the adapters belong to this context's model and are kept alive in
        // `self.adapters` for as long as they stay set.
        let rc = unsafe {
            sys::llama_set_adapters_lora(
                self.ptr.as_ptr(),
                ptrs.as_mut_ptr(),
                ptrs.len(),
                scales.as_mut_ptr(),
            )
        };
        if rc != 0 {
            return Err(LlamaError::SetAdapters(rc));
        }
        self.adapters = mixture.to_vec();
        Ok(())
    }

    /// Forgets every cached token.
    pub fn clear(&mut self) {
        // SAFETY: the context is valid; its memory handle lives as long as it.
        unsafe { sys::llama_memory_clear(sys::llama_get_memory(self.ptr.as_ptr()), true) };
    }

    /// Drops cached tokens at positions `from..`; false when the cache cannot
    /// (the caller then clears and re-encodes).
    pub fn truncate(&mut self, from: usize) -> bool {
        // SAFETY: the context is valid; sequence 0 is the only one in use.
        unsafe {
            sys::llama_memory_seq_rm(sys::llama_get_memory(self.ptr.as_ptr()), 0, from as i32, -1)
        }
    }

    /// Evaluates `tokens` at positions `start..start + tokens.len()` of the
    /// cached sequence and returns the hidden state of every token index listed
    /// in `outputs` (ascending, relative to `tokens`). Splits the work into
    /// calls of at most `n_batch` tokens and [`MAX_OUTPUTS_PER_CALL`] outputs:
    /// llama.cpp aborts the process on a batch larger than `n_batch`.
    pub fn decode(
        &mut self,
        tokens: &[Token],
        start: usize,
        outputs: &[usize],
    ) -> Result<Vec<Vec<f32>>, LlamaError> {
        self.decode_input(Input::Tokens(tokens), start, outputs, true)
    }

    /// Evaluates `tokens` as [`Context::decode`] does for `chunk_like`
    /// outputs (the same calls, so the same rounding), up to the output of
    /// layer `layer` only, and returns that output's every row
    /// (`[tokens.len(), n_embd]`, the residual stream after the layer). The
    /// graph stops there: the layers above it neither run nor write the KV
    /// cache, so the cache is left unusable (the caller clears it). No token
    /// is an output, so llama.cpp copies no logits either (8 MB of its output
    /// buffer would be written for 8 outputs, whatever the graph computed).
    pub fn decode_up_to_layer(
        &mut self,
        tokens: &[Token],
        layer: usize,
        chunk_like: &[usize],
    ) -> Result<Vec<f32>, LlamaError> {
        self.capture.layer_name =
            Some(CString::new(format!("l_out-{layer}")).expect("a layer name has no NUL byte"));
        self.capture.layer_rows.clear();
        let done = self.decode_input(Input::Tokens(tokens), 0, chunk_like, false);
        self.capture.layer_name = None;
        let rows = std::mem::take(&mut self.capture.layer_rows);
        done?;
        if rows.len() != tokens.len() * self.n_embd {
            return Err(LlamaError::NoEmbedding(tokens.len()));
        }
        Ok(rows)
    }

    /// [`Context::decode`] on input vectors instead of tokens (`[n, n_embd]`,
    /// row-major; a model of the upper layers fed the layer below them).
    pub fn decode_embeddings(
        &mut self,
        rows: &[f32],
        start: usize,
        outputs: &[usize],
    ) -> Result<Vec<Vec<f32>>, LlamaError> {
        if !rows.len().is_multiple_of(self.n_embd) {
            return Err(LlamaError::NoEmbedding(rows.len() / self.n_embd));
        }
        self.decode_input(Input::Embeddings(rows), start, outputs, true)
    }

    /// The decode loop: calls of at most `n_batch` tokens and
    /// [`MAX_OUTPUTS_PER_CALL`] of `outputs`, which are flagged as outputs
    /// only if `flag` (else they only place the calls' boundaries).
    fn decode_input(
        &mut self,
        input: Input,
        start: usize,
        outputs: &[usize],
        flag: bool,
    ) -> Result<Vec<Vec<f32>>, LlamaError> {
        let n = input.len(self.n_embd);
        let end = start + n;
        if end > self.params.n_ctx as usize {
            return Err(LlamaError::ContextFull {
                tokens: end,
                n_ctx: self.params.n_ctx,
            });
        }
        debug_assert!(
            outputs.windows(2).all(|w| w[0] < w[1]) && outputs.last().is_none_or(|&o| o < n)
        );
        let mut states = Vec::with_capacity(outputs.len());
        let mut next_output = 0;
        let mut offset = 0;
        while offset < n {
            let mut len = (n - offset).min(self.params.n_batch as usize);
            let first_output = next_output;
            while next_output < outputs.len() && outputs[next_output] < offset + len {
                if next_output - first_output == MAX_OUTPUTS_PER_CALL {
                    // End the call right after the last output it can hold.
                    len = outputs[next_output - 1] + 1 - offset;
                    break;
                }
                next_output += 1;
            }
            let wanted: Vec<usize> = outputs[first_output..next_output]
                .iter()
                .filter(|_| flag)
                .map(|i| i - offset)
                .collect();
            let batch = match input {
                Input::Tokens(tokens) => {
                    self.fill_batch(&tokens[offset..offset + len], start + offset, &wanted);
                    self.batch
                }
                Input::Embeddings(rows) => {
                    let d = self.n_embd;
                    let chunk = &rows[offset * d..(offset + len) * d];
                    self.fill_embd_batch(chunk, start + offset, &wanted)
                }
            };
            self.run(batch)?;
            states.extend(self.captured(wanted.len())?);
            offset += len;
        }
        Ok(states)
    }

    fn fill_batch(&mut self, chunk: &[Token], start: usize, wanted: &[usize]) {
        let b = &mut self.batch;
        b.n_tokens = chunk.len() as i32;
        for (i, &token) in chunk.iter().enumerate() {
            // SAFETY: the batch was allocated for n_batch >= chunk.len() tokens with
            // one sequence id each, so every index written here is in bounds.
            unsafe { *b.token.add(i) = token };
        }
        fill_positions(b, chunk.len(), start, wanted);
    }

    /// Fills the embeddings batch (allocating it the first time) with `chunk`
    /// (`[len, n_embd]`) at positions from `start`.
    fn fill_embd_batch(
        &mut self,
        chunk: &[f32],
        start: usize,
        wanted: &[usize],
    ) -> sys::llama_batch {
        let n_batch = self.params.n_batch as i32;
        let n_embd = self.n_embd;
        // SAFETY: allocates a batch of n_batch rows of n_embd floats, one
        // sequence each; freed in Drop.
        let b = self
            .embd_batch
            .get_or_insert_with(|| unsafe { sys::llama_batch_init(n_batch, n_embd as i32, 1) });
        let len = chunk.len() / n_embd;
        b.n_tokens = len as i32;
        // SAFETY: the batch holds n_batch >= len rows of n_embd floats.
        unsafe { std::ptr::copy_nonoverlapping(chunk.as_ptr(), b.embd, chunk.len()) };
        fill_positions(b, len, start, wanted);
        *b
    }

    #[cfg(feature = "bench")]
    fn run_batch(&mut self) -> Result<(), LlamaError> {
        self.run(self.batch)
    }

    fn run(&mut self, batch: sys::llama_batch) -> Result<(), LlamaError> {
        self.capture.rows.clear();
        self.capture.failed = false;
        // SAFETY: the batch is one of this context's, fully initialised for
        // n_tokens entries, which never exceed the context's n_batch (the
        // chunking above guarantees it).
        let rc = unsafe { sys::llama_decode(self.ptr.as_ptr(), batch) };
        match rc {
            0 => Ok(()),
            2 => Err(LlamaError::Cancelled),
            _ if self.abort.raised() => Err(LlamaError::Cancelled),
            _ => Err(LlamaError::Decode(rc)),
        }
    }

    /// The states the eval callback captured in the last decode, one per output.
    fn captured(&mut self, expected: usize) -> Result<Vec<Vec<f32>>, LlamaError> {
        let n_embd = self.capture.n_embd;
        if self.capture.failed || self.capture.rows.len() != expected * n_embd {
            return Err(LlamaError::NoEmbedding(expected));
        }
        Ok(self
            .capture
            .rows
            .chunks_exact(n_embd)
            .map(<[f32]>::to_vec)
            .collect())
    }
}

/// What a decode reads: tokens, or input vectors of `n_embd` floats each.
#[derive(Clone, Copy)]
enum Input<'a> {
    Tokens(&'a [Token]),
    Embeddings(&'a [f32]),
}

impl Input<'_> {
    fn len(&self, n_embd: usize) -> usize {
        match self {
            Input::Tokens(tokens) => tokens.len(),
            Input::Embeddings(rows) => rows.len() / n_embd,
        }
    }
}

/// A batch's positions, sequence ids and output flags for `len` entries from
/// position `start`, outputs at the `wanted` indices.
fn fill_positions(b: &mut sys::llama_batch, len: usize, start: usize, wanted: &[usize]) {
    for i in 0..len {
        // SAFETY: every batch was allocated for n_batch >= len entries with
        // one sequence id each, so every index written here is in bounds.
        unsafe {
            *b.pos.add(i) = (start + i) as i32;
            *b.n_seq_id.add(i) = 1;
            *(*b.seq_id.add(i)) = 0;
            *b.logits.add(i) = 0;
        }
    }
    for &i in wanted {
        // SAFETY: `i < len` by construction in `decode_input`.
        unsafe { *b.logits.add(i) = 1 };
    }
}

impl Drop for Context {
    fn drop(&mut self) {
        // SAFETY: the batches came from llama_batch_init and the context from
        // llama_init_from_model; none is used after this.
        unsafe {
            sys::llama_batch_free(self.batch);
            if let Some(batch) = self.embd_batch {
                sys::llama_batch_free(batch);
            }
            sys::llama_free(self.ptr.as_ptr());
        }
    }
}

/// A bare llama.cpp decode loop for benchmarks: a fresh context with `params`
/// (the same settings [`Context`] uses), `tokens` decoded from an empty cache
/// `reps` times in batches of `n_batch` with an output on the last token only.
/// Returns each decode's wall time; no copies, no bookkeeping.
#[cfg(feature = "bench")]
pub fn bench_raw_decode(
    model: &Model,
    params: ContextParams,
    tokens: &[Token],
    reps: usize,
) -> Result<Vec<std::time::Duration>, LlamaError> {
    if tokens.is_empty() || tokens.len() > params.n_ctx as usize {
        return Err(LlamaError::ContextFull {
            tokens: tokens.len(),
            n_ctx: params.n_ctx,
        });
    }
    let n_batch = params.n_batch as usize;
    let mut ctx = Context::new(model, params)?;
    let mut times = Vec::with_capacity(reps);
    for _ in 0..reps {
        ctx.clear();
        let started = std::time::Instant::now();
        for (c, chunk) in tokens.chunks(n_batch).enumerate() {
            let last_chunk = (c + 1) * n_batch >= tokens.len();
            let wanted: &[usize] = if last_chunk { &[chunk.len() - 1] } else { &[] };
            ctx.fill_batch(chunk, c * n_batch, wanted);
            ctx.run_batch()?;
        }
        times.push(started.elapsed());
        if ctx.capture.rows.len() != ctx.n_embd {
            return Err(LlamaError::NoEmbedding(0));
        }
    }
    Ok(times)
}
