//! GGUF through ggml's own reader and writer (the same code llama.cpp uses),
//! behind a safe API. Every value is read only after its type is checked:
//! ggml's getters abort the process on a type mismatch.

use std::ffi::{CStr, CString};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::ptr::NonNull;

use llama_cpp_sys_2 as sys;

#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not a GGUF file ({why})")]
    NotGguf { path: PathBuf, why: String },
    #[error("{path}: ggml could not parse the GGUF header (truncated or corrupt)")]
    Parse { path: PathBuf },
    #[error("{path}: key `{key}` has type {found}, expected {expected}")]
    KeyType {
        path: PathBuf,
        key: String,
        found: String,
        expected: &'static str,
    },
    #[error("{path}: tensor `{name}` of type {dtype} cannot be converted to f32")]
    NoConversion {
        path: PathBuf,
        name: String,
        dtype: String,
    },
    #[error("{path}: tensor `{name}` lies outside the file (truncated?)")]
    OutOfBounds { path: PathBuf, name: String },
    #[error("{path}: ggml could not write the file")]
    Write { path: PathBuf },
    #[error("invalid name `{0}` (contains a NUL byte)")]
    BadName(String),
}

/// An array of strings as one byte blob and its `n + 1` offsets.
pub type StringArray = (Vec<u8>, Vec<u32>);

/// A tensor's entry in a GGUF file.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    /// ggml type id (see [`type_name`]).
    pub dtype: u32,
    /// ggml order: `ne[0]` is the contiguous (row) dimension.
    pub shape: Vec<u64>,
    pub offset: u64,
    pub bytes: u64,
}

pub const GGML_TYPE_F32: u32 = sys::GGML_TYPE_F32;
pub const GGML_TYPE_F16: u32 = sys::GGML_TYPE_F16;

pub fn type_name(dtype: u32) -> String {
    if dtype >= sys::GGML_TYPE_COUNT {
        return format!("type#{dtype}");
    }
    // SAFETY: ids below GGML_TYPE_COUNT name a static string (possibly NULL for
    // removed types, which we handle).
    let ptr = unsafe { sys::ggml_type_name(dtype) };
    if ptr.is_null() {
        return format!("type#{dtype}");
    }
    // SAFETY: non-NULL and static.
    unsafe { CStr::from_ptr(ptr) }
        .to_string_lossy()
        .into_owned()
}

/// The metadata of a GGUF file, parsed by ggml (no tensor data in memory).
pub struct GgufFile {
    ctx: NonNull<sys::gguf_context>,
    path: PathBuf,
    file_len: u64,
}

impl Drop for GgufFile {
    fn drop(&mut self) {
        // SAFETY: the context came from gguf_init_from_file and is freed once.
        unsafe { sys::gguf_free(self.ctx.as_ptr()) };
    }
}

// SAFETY: the gguf context is only read after parsing.
unsafe impl Send for GgufFile {}
// SAFETY: as above.
unsafe impl Sync for GgufFile {}

const GGUF_MAGIC: &[u8; 4] = b"GGUF";

fn check_header(path: &Path) -> Result<u64, GgufError> {
    let io = |source| GgufError::Io {
        path: path.to_owned(),
        source,
    };
    let mut file = File::open(path).map_err(io)?;
    let len = file.metadata().map_err(io)?.len();
    let mut header = [0u8; 8];
    let not_gguf = |why: &str| GgufError::NotGguf {
        path: path.to_owned(),
        why: why.to_owned(),
    };
    if len < 24 {
        return Err(not_gguf("shorter than a GGUF header"));
    }
    file.read_exact(&mut header).map_err(io)?;
    if &header[..4] != GGUF_MAGIC {
        return Err(not_gguf("bad magic"));
    }
    let version = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
    if version != 3 {
        return Err(not_gguf(&format!("version {version}, expected 3")));
    }
    Ok(len)
}

impl GgufFile {
    /// Parses the header and metadata. Our own pre-check (magic, version) runs
    /// first; ggml's parser then bounds-checks everything and returns NULL
    /// (never aborts) on a malformed file.
    pub fn open(path: &Path) -> Result<Self, GgufError> {
        let file_len = check_header(path)?;
        let c_path = CString::new(path.to_string_lossy().as_bytes())
            .map_err(|_| GgufError::BadName(path.display().to_string()))?;
        let params = sys::gguf_init_params {
            no_alloc: true,
            ctx: std::ptr::null_mut(),
        };
        // SAFETY: valid C path; with no_alloc and a NULL ctx, ggml only reads
        // metadata and allocates nothing we must free besides the gguf context.
        let ptr = unsafe { sys::gguf_init_from_file(c_path.as_ptr(), params) };
        let ctx = NonNull::new(ptr).ok_or_else(|| GgufError::Parse {
            path: path.to_owned(),
        })?;
        Ok(Self {
            ctx,
            path: path.to_owned(),
            file_len,
        })
    }

    /// Parses the metadata of a GGUF image in memory (`name` stands for its
    /// path in errors). It has no tensor data to read.
    pub fn from_bytes(image: &[u8], name: &str) -> Result<Self, GgufError> {
        let path = PathBuf::from(name);
        let parse = || GgufError::Parse { path: path.clone() };
        if image.len() < 8 || &image[..4] != GGUF_MAGIC {
            return Err(parse());
        }
        let params = sys::gguf_init_params {
            no_alloc: true,
            ctx: std::ptr::null_mut(),
        };
        // SAFETY: `file` is a stream over the image for the call; with
        // no_alloc and a NULL ctx ggml only reads metadata, returning NULL on
        // a malformed image.
        let ptr = super::memory_stream(image, |file| unsafe {
            sys::gguf_init_from_file_ptr(file, params)
        })
        .ok_or_else(parse)?;
        let ctx = NonNull::new(ptr).ok_or_else(parse)?;
        Ok(Self {
            ctx,
            path,
            file_len: 0,
        })
    }

    /// A header-only GGUF image of this file's metadata without the keys
    /// `drop` names (no tensors): what a derived file starts from, kept
    /// small (Gemma's vocabulary alone is 10 MB of metadata). Those keys are
    /// removed from `self` first, so they are never copied; read them before.
    pub fn metadata_image(&mut self, drop: impl Fn(&str) -> bool) -> Result<Vec<u8>, GgufError> {
        remove_keys(self.ctx, drop);
        let mut w = GgufWriter::new();
        self.copy_metadata_into(&mut w);
        w.to_bytes()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn key_id(&self, key: &str) -> Option<i64> {
        let key = CString::new(key).ok()?;
        // SAFETY: valid context and C string.
        let id = unsafe { sys::gguf_find_key(self.ctx.as_ptr(), key.as_ptr()) };
        (id >= 0).then_some(id)
    }

    fn key_type(&self, id: i64) -> u32 {
        // SAFETY: `id` came from gguf_find_key on this context.
        unsafe { sys::gguf_get_kv_type(self.ctx.as_ptr(), id) }
    }

    fn type_error(&self, key: &str, found: u32, expected: &'static str) -> GgufError {
        GgufError::KeyType {
            path: self.path.clone(),
            key: key.to_owned(),
            found: format!("gguf type {found}"),
            expected,
        }
    }

    /// A string value; `Ok(None)` when the key is absent.
    pub fn string(&self, key: &str) -> Result<Option<String>, GgufError> {
        let Some(id) = self.key_id(key) else {
            return Ok(None);
        };
        let kind = self.key_type(id);
        if kind != sys::GGUF_TYPE_STRING {
            return Err(self.type_error(key, kind, "string"));
        }
        // SAFETY: the type was checked above (ggml aborts otherwise); the string
        // is owned by the context and copied at once.
        let value = unsafe { CStr::from_ptr(sys::gguf_get_val_str(self.ctx.as_ptr(), id)) };
        Ok(Some(value.to_string_lossy().into_owned()))
    }

    /// A numeric value of any integer or float type, as f64.
    pub fn number(&self, key: &str) -> Result<Option<f64>, GgufError> {
        let Some(id) = self.key_id(key) else {
            return Ok(None);
        };
        let ctx = self.ctx.as_ptr();
        // SAFETY: each getter is called only for the type it reads.
        let value = unsafe {
            match self.key_type(id) {
                sys::GGUF_TYPE_UINT8 => sys::gguf_get_val_u8(ctx, id) as f64,
                sys::GGUF_TYPE_INT8 => sys::gguf_get_val_i8(ctx, id) as f64,
                sys::GGUF_TYPE_UINT16 => sys::gguf_get_val_u16(ctx, id) as f64,
                sys::GGUF_TYPE_INT16 => sys::gguf_get_val_i16(ctx, id) as f64,
                sys::GGUF_TYPE_UINT32 => sys::gguf_get_val_u32(ctx, id) as f64,
                sys::GGUF_TYPE_INT32 => sys::gguf_get_val_i32(ctx, id) as f64,
                sys::GGUF_TYPE_UINT64 => sys::gguf_get_val_u64(ctx, id) as f64,
                sys::GGUF_TYPE_INT64 => sys::gguf_get_val_i64(ctx, id) as f64,
                sys::GGUF_TYPE_FLOAT32 => sys::gguf_get_val_f32(ctx, id) as f64,
                sys::GGUF_TYPE_FLOAT64 => sys::gguf_get_val_f64(ctx, id),
                other => return Err(self.type_error(key, other, "number")),
            }
        };
        Ok(Some(value))
    }

    /// The key's array: its element type and length, after checking it is one.
    fn array(
        &self,
        key: &str,
        element: u32,
        expected: &'static str,
    ) -> Result<Option<(i64, usize)>, GgufError> {
        let Some(id) = self.key_id(key) else {
            return Ok(None);
        };
        let kind = self.key_type(id);
        if kind != sys::GGUF_TYPE_ARRAY {
            return Err(self.type_error(key, kind, expected));
        }
        // SAFETY: `id` names an array of this context (checked above).
        let (inner, n) = unsafe {
            (
                sys::gguf_get_arr_type(self.ctx.as_ptr(), id),
                sys::gguf_get_arr_n(self.ctx.as_ptr(), id),
            )
        };
        if inner != element {
            return Err(self.type_error(key, inner, expected));
        }
        Ok(Some((id, n)))
    }

    /// An array of strings as one byte blob and `n + 1` offsets into it
    /// (string `i` is `blob[offsets[i]..offsets[i + 1]]`); `Ok(None)` when absent.
    pub fn string_array(&self, key: &str) -> Result<Option<StringArray>, GgufError> {
        let Some((id, n)) = self.array(key, sys::GGUF_TYPE_STRING, "array of strings")? else {
            return Ok(None);
        };
        let (mut blob, mut offsets) = (Vec::new(), Vec::with_capacity(n + 1));
        offsets.push(0);
        for i in 0..n {
            // SAFETY: `i < n` elements of a string array (checked by `array`); the
            // string is owned by the context and copied at once.
            let text = unsafe { CStr::from_ptr(sys::gguf_get_arr_str(self.ctx.as_ptr(), id, i)) };
            blob.extend_from_slice(text.to_bytes());
            offsets.push(
                u32::try_from(blob.len())
                    .map_err(|_| self.type_error(key, 0, "strings under 4 GiB in all"))?,
            );
        }
        Ok(Some((blob, offsets)))
    }

    /// An array of f32 values, copied; `Ok(None)` when absent.
    pub fn f32_array(&self, key: &str) -> Result<Option<Vec<f32>>, GgufError> {
        self.plain_array(key, sys::GGUF_TYPE_FLOAT32, "array of f32")
    }

    /// An array of i32 values, copied; `Ok(None)` when absent.
    pub fn i32_array(&self, key: &str) -> Result<Option<Vec<i32>>, GgufError> {
        self.plain_array(key, sys::GGUF_TYPE_INT32, "array of i32")
    }

    /// An array of fixed-size values of gguf type `element`, which must be
    /// `T`'s own layout (the callers pair FLOAT32 with f32, INT32 with i32).
    fn plain_array<T: Copy>(
        &self,
        key: &str,
        element: u32,
        expected: &'static str,
    ) -> Result<Option<Vec<T>>, GgufError> {
        let Some((id, n)) = self.array(key, element, expected)? else {
            return Ok(None);
        };
        // SAFETY: the array holds `n` values of type `element` (checked by
        // `array`), laid out as `T`, contiguous in the context's memory and
        // valid for `n` reads; they are copied at once.
        let values = unsafe {
            let data = sys::gguf_get_arr_data(self.ctx.as_ptr(), id).cast::<T>();
            std::slice::from_raw_parts(data, n).to_vec()
        };
        Ok(Some(values))
    }

    /// A boolean value; `Ok(None)` when absent.
    pub fn boolean(&self, key: &str) -> Result<Option<bool>, GgufError> {
        let Some(id) = self.key_id(key) else {
            return Ok(None);
        };
        let kind = self.key_type(id);
        if kind != sys::GGUF_TYPE_BOOL {
            return Err(self.type_error(key, kind, "bool"));
        }
        // SAFETY: the type was checked above.
        Ok(Some(unsafe {
            sys::gguf_get_val_bool(self.ctx.as_ptr(), id)
        }))
    }

    pub fn tensors(&self) -> Vec<TensorInfo> {
        let ctx = self.ctx.as_ptr();
        // SAFETY: valid context.
        let n = unsafe { sys::gguf_get_n_tensors(ctx) };
        // SAFETY: valid context.
        let data_offset = unsafe { sys::gguf_get_data_offset(ctx) } as u64;
        (0..n)
            .map(|id| {
                // SAFETY: `id < n`; the name is a C string owned by the context,
                // `ne` an array of GGML_MAX_DIMS entries.
                unsafe {
                    let name = CStr::from_ptr(sys::gguf_get_tensor_name(ctx, id));
                    let ne = std::slice::from_raw_parts(sys::gguf_get_tensor_ne(ctx, id), 4);
                    let dims = ne.iter().rposition(|&d| d != 1).map_or(1, |i| i + 1);
                    TensorInfo {
                        name: name.to_string_lossy().into_owned(),
                        dtype: sys::gguf_get_tensor_type(ctx, id),
                        shape: ne[..dims].iter().map(|&d| d as u64).collect(),
                        offset: data_offset + sys::gguf_get_tensor_offset(ctx, id) as u64,
                        bytes: sys::gguf_get_tensor_size(ctx, id) as u64,
                    }
                }
            })
            .collect()
    }

    /// Reads a tensor's raw bytes, bounds-checked against the file length.
    pub fn tensor_bytes(&self, info: &TensorInfo) -> Result<Vec<u8>, GgufError> {
        let end = info.offset.checked_add(info.bytes);
        if end.is_none_or(|end| end > self.file_len) {
            return Err(GgufError::OutOfBounds {
                path: self.path.clone(),
                name: info.name.clone(),
            });
        }
        let io = |source| GgufError::Io {
            path: self.path.clone(),
            source,
        };
        let mut file = File::open(&self.path).map_err(io)?;
        file.seek(SeekFrom::Start(info.offset)).map_err(io)?;
        let mut bytes = vec![0u8; info.bytes as usize];
        file.read_exact(&mut bytes).map_err(io)?;
        Ok(bytes)
    }

    /// Reads a tensor as f32, dequantizing with ggml's own routines.
    pub fn tensor_f32(&self, info: &TensorInfo) -> Result<Vec<f32>, GgufError> {
        let bytes = self.tensor_bytes(info)?;
        to_f32(&bytes, info).ok_or_else(|| GgufError::NoConversion {
            path: self.path.clone(),
            name: info.name.clone(),
            dtype: type_name(info.dtype),
        })
    }

    /// Reads many tensors as f32 with one read of the file (an expert's
    /// hundreds of small tensors, `crate::mixture`), each bounds-checked.
    pub fn tensors_f32(&self, infos: &[&TensorInfo]) -> Result<Vec<Vec<f32>>, GgufError> {
        let file = std::fs::read(&self.path).map_err(|source| GgufError::Io {
            path: self.path.clone(),
            source,
        })?;
        infos
            .iter()
            .map(|info| {
                let bytes = usize::try_from(info.offset)
                    .ok()
                    .zip(usize::try_from(info.bytes).ok())
                    .and_then(|(at, n)| file.get(at..at.checked_add(n)?))
                    .ok_or_else(|| GgufError::OutOfBounds {
                        path: self.path.clone(),
                        name: info.name.clone(),
                    })?;
                to_f32(bytes, info).ok_or_else(|| GgufError::NoConversion {
                    path: self.path.clone(),
                    name: info.name.clone(),
                    dtype: type_name(info.dtype),
                })
            })
            .collect()
    }

    /// Every key/value of this file copied into `writer` (tensors excluded).
    pub fn copy_metadata_into(&self, writer: &mut GgufWriter) {
        // SAFETY: both contexts are valid; gguf_set_kv deep-copies the values.
        unsafe { sys::gguf_set_kv(writer.ctx.as_ptr(), self.ctx.as_ptr()) };
    }
}

fn to_f32(bytes: &[u8], info: &TensorInfo) -> Option<Vec<f32>> {
    let n: u64 = info.shape.iter().product();
    let exact = |size: u64| (n * size == bytes.len() as u64).then_some(());
    match info.dtype {
        // ggml has no to_float for f32 itself; f16 is cheaper through `half`.
        sys::GGML_TYPE_F32 => {
            exact(4)?;
            return Some(
                bytes
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect(),
            );
        }
        sys::GGML_TYPE_F16 => {
            exact(2)?;
            return Some(
                bytes
                    .chunks_exact(2)
                    .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
                    .collect(),
            );
        }
        t if t >= sys::GGML_TYPE_COUNT => return None,
        _ => {}
    }
    // SAFETY: a valid type id gives a static traits struct.
    let traits = unsafe { &*sys::ggml_get_type_traits(info.dtype) };
    let to_float = traits.to_float?;
    let block = traits.blck_size.max(1) as u64;
    if !n.is_multiple_of(block) || (n / block) * traits.type_size as u64 != bytes.len() as u64 {
        return None;
    }
    let mut out = vec![0f32; n as usize];
    // SAFETY: `bytes` holds exactly the n elements of this type (checked above)
    // and `out` has room for n floats.
    unsafe { to_float(bytes.as_ptr().cast(), out.as_mut_ptr(), n as i64) };
    Some(out)
}

/// Removes every key of `ctx` for which `drop` is true.
fn remove_keys(ctx: NonNull<sys::gguf_context>, drop: impl Fn(&str) -> bool) {
    let ctx = ctx.as_ptr();
    // SAFETY: valid context; each id is below the count read just before,
    // and the key's C string is copied before any key is removed.
    let doomed: Vec<CString> = (0..unsafe { sys::gguf_get_n_kv(ctx) })
        .map(|id| unsafe { CStr::from_ptr(sys::gguf_get_key(ctx, id)) }.to_owned())
        .filter(|k| drop(&k.to_string_lossy()))
        .collect();
    for key in doomed {
        // SAFETY: valid context and C string.
        unsafe { sys::gguf_remove_key(ctx, key.as_ptr()) };
    }
}

/// Where a file's parts go ([`GgufWriter::layout`]).
#[derive(Debug, Clone)]
pub struct Layout {
    pub header: Vec<u8>,
    /// Each tensor's data offset from the start of the file, in order.
    pub offsets: Vec<u64>,
    /// The file's length (the last tensor's end, aligned).
    pub len: u64,
}

/// The bytes a tensor of `dtype` and `shape` takes; an error for a type
/// ggml does not know or rows that are not whole blocks.
fn data_bytes(name: &str, dtype: u32, shape: &[u64]) -> Result<u64, GgufError> {
    let bad = || GgufError::NoConversion {
        path: PathBuf::from("(memory)"),
        name: name.to_owned(),
        dtype: type_name(dtype),
    };
    if dtype >= sys::GGML_TYPE_COUNT || shape.is_empty() || shape.len() > 4 {
        return Err(bad());
    }
    // SAFETY: a valid type id; both only compute (whole blocks checked
    // first: ggml_row_size asserts them).
    let block = unsafe { sys::ggml_blck_size(dtype) }.max(1) as u64;
    if !shape[0].is_multiple_of(block) {
        return Err(bad());
    }
    // SAFETY: as above.
    let row = unsafe { sys::ggml_row_size(dtype, shape[0] as i64) } as u64;
    Ok(row * shape[1..].iter().product::<u64>())
}

struct PendingTensor {
    name: CString,
    dtype: u32,
    shape: Vec<i64>,
    /// What its data takes in the file.
    bytes: u64,
    /// Empty for a tensor only declared ([`GgufWriter::declare_tensor`]).
    data: Vec<u8>,
}

/// Builds a GGUF file in memory and writes it with ggml.
pub struct GgufWriter {
    ctx: NonNull<sys::gguf_context>,
    tensors: Vec<PendingTensor>,
}

impl Drop for GgufWriter {
    fn drop(&mut self) {
        // SAFETY: created by gguf_init_empty, freed once.
        unsafe { sys::gguf_free(self.ctx.as_ptr()) };
    }
}

impl Default for GgufWriter {
    fn default() -> Self {
        Self::new()
    }
}

impl GgufWriter {
    pub fn new() -> Self {
        // SAFETY: allocates an empty context; NULL only on out-of-memory.
        let ptr = unsafe { sys::gguf_init_empty() };
        Self {
            ctx: NonNull::new(ptr).expect("out of memory creating a GGUF context"),
            tensors: Vec::new(),
        }
    }

    fn key(key: &str) -> Result<CString, GgufError> {
        CString::new(key).map_err(|_| GgufError::BadName(key.to_owned()))
    }

    pub fn set_str(&mut self, key: &str, value: &str) -> Result<(), GgufError> {
        let (key, value) = (Self::key(key)?, Self::key(value)?);
        // SAFETY: valid context and C strings; ggml copies both.
        unsafe { sys::gguf_set_val_str(self.ctx.as_ptr(), key.as_ptr(), value.as_ptr()) };
        Ok(())
    }

    pub fn set_f32(&mut self, key: &str, value: f32) -> Result<(), GgufError> {
        let key = Self::key(key)?;
        // SAFETY: valid context and key; ggml replaces a value of another type.
        unsafe { sys::gguf_set_val_f32(self.ctx.as_ptr(), key.as_ptr(), value) };
        Ok(())
    }

    pub fn set_u32(&mut self, key: &str, value: u32) -> Result<(), GgufError> {
        let key = Self::key(key)?;
        // SAFETY: as above.
        unsafe { sys::gguf_set_val_u32(self.ctx.as_ptr(), key.as_ptr(), value) };
        Ok(())
    }

    /// Sets `key` to an array of u32 values.
    pub fn set_u32_array(&mut self, key: &str, values: &[u32]) -> Result<(), GgufError> {
        let key = Self::key(key)?;
        // SAFETY: valid context and key; `values` holds `values.len()` u32s,
        // which ggml copies.
        unsafe {
            sys::gguf_set_arr_data(
                self.ctx.as_ptr(),
                key.as_ptr(),
                sys::GGUF_TYPE_UINT32,
                values.as_ptr().cast(),
                values.len(),
            )
        };
        Ok(())
    }

    /// Declares a tensor of any ggml type (quantized ones included) without
    /// its data, for [`GgufWriter::layout`]: a file whose tensors the caller
    /// copies from another. Returns the bytes its data takes.
    pub fn declare_tensor(
        &mut self,
        name: &str,
        dtype: u32,
        shape: &[u64],
    ) -> Result<u64, GgufError> {
        let bytes = data_bytes(name, dtype, shape)?;
        self.tensors.push(PendingTensor {
            name: Self::key(name)?,
            dtype,
            shape: shape.iter().map(|&d| d as i64).collect(),
            bytes,
            data: Vec::new(),
        });
        Ok(bytes)
    }

    /// The header (metadata and tensor table) of the file and, for every
    /// tensor in order, the offset of its data from the file's start: the
    /// caller writes the header, then each tensor's bytes at its offset
    /// (zeros between), then zeros up to `len`.
    pub fn layout(self) -> Result<Layout, GgufError> {
        let header = self.to_bytes_with(false)?;
        let ctx = self.ctx.as_ptr();
        let offsets: Vec<u64> = (0..self.tensors.len())
            .map(|id| {
                // SAFETY: valid context; ids index the tensors `to_bytes_with`
                // declared in it.
                let offset = unsafe { sys::gguf_get_tensor_offset(ctx, id as i64) };
                header.len() as u64 + offset as u64
            })
            .collect();
        // SAFETY: valid context.
        let alignment = unsafe { sys::gguf_get_alignment(ctx) } as u64;
        let end = self
            .tensors
            .iter()
            .zip(&offsets)
            .map(|(t, &o)| o + t.bytes)
            .max()
            .unwrap_or(header.len() as u64);
        Ok(Layout {
            header,
            offsets,
            len: end.div_ceil(alignment) * alignment,
        })
    }

    /// Adds a tensor from f32 values, stored as `dtype` (F32 or F16).
    /// `shape` is in ggml order (`shape[0]` contiguous).
    pub fn add_tensor(
        &mut self,
        name: &str,
        shape: &[u64],
        values: &[f32],
        dtype: u32,
    ) -> Result<(), GgufError> {
        let n: u64 = shape.iter().product();
        assert_eq!(
            n as usize,
            values.len(),
            "tensor `{name}`: shape does not match the data"
        );
        let data = match dtype {
            sys::GGML_TYPE_F32 => bytemuck::cast_slice(values).to_vec(),
            sys::GGML_TYPE_F16 => {
                let halves: Vec<half::f16> =
                    values.iter().map(|&v| half::f16::from_f32(v)).collect();
                bytemuck::cast_slice(&halves).to_vec()
            }
            other => panic!("GgufWriter stores f32 or f16, not {}", type_name(other)),
        };
        self.tensors.push(PendingTensor {
            name: Self::key(name)?,
            dtype,
            shape: shape.iter().map(|&d| d as i64).collect(),
            bytes: data.len() as u64,
            data,
        });
        Ok(())
    }

    /// Writes the file: header, metadata, then every tensor's data.
    pub fn write(self, path: &Path) -> Result<(), GgufError> {
        // SAFETY: returns a constant.
        let overhead = unsafe { sys::ggml_tensor_overhead() };
        let mem_size = self
            .tensors
            .iter()
            .map(|t| t.data.len() + 64)
            .sum::<usize>()
            + (self.tensors.len() + 1) * overhead;
        let params = sys::ggml_init_params {
            mem_size,
            mem_buffer: std::ptr::null_mut(),
            no_alloc: false,
        };
        // SAFETY: ggml allocates `mem_size` bytes and returns NULL on failure.
        let ggml = unsafe { sys::ggml_init(params) };
        let ggml = NonNull::new(ggml).ok_or_else(|| GgufError::Write {
            path: path.to_owned(),
        })?;
        let result = self.write_with(ggml, path);
        // SAFETY: created above, freed once; gguf_write_to_file has copied the data.
        unsafe { sys::ggml_free(ggml.as_ptr()) };
        result
    }

    /// The file's bytes, as [`GgufWriter::write`] would write them, without a
    /// file: header and metadata from ggml, then each tensor's data at the
    /// offset ggml assigned it (a merged expert mixture, `crate::mixture`).
    pub fn to_bytes(self) -> Result<Vec<u8>, GgufError> {
        self.to_bytes_with(true)
    }

    /// The file's bytes, or with `data` false its header only (metadata and
    /// tensor table, the tensors declared in the GGUF context).
    fn to_bytes_with(&self, data: bool) -> Result<Vec<u8>, GgufError> {
        // SAFETY: returns a constant.
        let overhead = unsafe { sys::ggml_tensor_overhead() };
        let params = sys::ggml_init_params {
            mem_size: (self.tensors.len() + 1) * overhead,
            mem_buffer: std::ptr::null_mut(),
            no_alloc: true, // tensor descriptions only: the data is ours
        };
        let in_memory = || GgufError::Write {
            path: PathBuf::from("(memory)"),
        };
        // SAFETY: ggml allocates `mem_size` bytes and returns NULL on failure.
        let ggml = NonNull::new(unsafe { sys::ggml_init(params) }).ok_or_else(in_memory)?;
        self.declare_tensors(ggml); // descriptions and offsets: no data read
        let ctx = self.ctx.as_ptr();
        // SAFETY: valid context; the buffer has the size ggml asked for.
        let mut bytes = unsafe {
            let mut meta = vec![0u8; sys::gguf_get_meta_size(ctx)];
            sys::gguf_get_meta_data(ctx, meta.as_mut_ptr().cast());
            meta
        };
        // SAFETY: created above, freed once; the GGUF context copied what
        // it needs of the tensor descriptions.
        unsafe { sys::ggml_free(ggml.as_ptr()) };
        if !data {
            return Ok(bytes);
        }
        let data_start = bytes.len();
        for (id, t) in self.tensors.iter().enumerate() {
            if t.data.len() as u64 != t.bytes {
                return Err(in_memory()); // a declared tensor has no data here
            }
            // SAFETY: `id` indexes a tensor added above.
            let offset = unsafe { sys::gguf_get_tensor_offset(ctx, id as i64) };
            bytes.resize(data_start + offset, 0);
            bytes.extend_from_slice(&t.data);
        }
        // SAFETY: valid context.
        let alignment = unsafe { sys::gguf_get_alignment(ctx) };
        bytes.resize(bytes.len().div_ceil(alignment) * alignment, 0);
        Ok(bytes)
    }

    /// Creates every pending tensor in `ggml` and adds it to the GGUF
    /// context (which copies the description and assigns the data offset).
    /// The tensors, in order; their data is allocated only if `ggml` was.
    fn declare_tensors(&self, ggml: NonNull<sys::ggml_context>) -> Vec<*mut sys::ggml_tensor> {
        self.tensors
            .iter()
            .map(|t| {
                // SAFETY: both callers size `ggml` for every tensor's
                // description; `shape` has 1..=4 dims; names are C strings.
                unsafe {
                    let tensor = sys::ggml_new_tensor(
                        ggml.as_ptr(),
                        t.dtype,
                        t.shape.len() as i32,
                        t.shape.as_ptr(),
                    );
                    sys::ggml_set_name(tensor, t.name.as_ptr());
                    sys::gguf_add_tensor(self.ctx.as_ptr(), tensor);
                    tensor
                }
            })
            .collect()
    }

    fn write_with(&self, ggml: NonNull<sys::ggml_context>, path: &Path) -> Result<(), GgufError> {
        for (t, tensor) in self.tensors.iter().zip(self.declare_tensors(ggml)) {
            // SAFETY: `ggml` was allocated with room for every tensor's data;
            // the tensor's buffer has exactly t.data.len() bytes (same type and
            // shape), so the copy is in bounds. The GGUF context refers to this
            // same buffer, so data copied after adding is what it writes.
            unsafe {
                debug_assert_eq!(sys::ggml_nbytes(tensor), t.data.len());
                std::ptr::copy_nonoverlapping(
                    t.data.as_ptr(),
                    (*tensor).data.cast::<u8>(),
                    t.data.len(),
                );
            }
        }
        let c_path = CString::new(path.to_string_lossy().as_bytes())
            .map_err(|_| GgufError::BadName(path.display().to_string()))?;
        // SAFETY: valid context, path and tensors whose data lives in `ggml`.
        let ok = unsafe { sys::gguf_write_to_file(self.ctx.as_ptr(), c_path.as_ptr(), false) };
        if ok {
            Ok(())
        } else {
            Err(GgufError::Write {
                path: path.to_owned(),
            })
        }
    }
}
