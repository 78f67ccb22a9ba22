//! An F16 copy of a GGUF backbone, for tests that check the math without
//! quantization noise.

use std::path::Path;

use l2rec::backbone::BackboneError;
use l2rec::ffi::gguf::{GgufFile, GgufWriter, GGML_TYPE_F16, GGML_TYPE_F32};
use l2rec::progress::Progress;

/// Writes an F16 copy of a GGUF model: every quantized matrix dequantized by
/// ggml and stored as f16, 1-D tensors and f32 tensors kept as f32. On such a
/// copy llama.cpp does not round activations to 8 bits, so appended and
/// re-encoded states agree exactly and small expert scales act linearly:
/// tests use it to check the math without quantization noise.
pub fn write_f16_copy(
    src: &Path,
    dst: &Path,
    progress: &mut Progress,
) -> Result<(), BackboneError> {
    let gguf = GgufFile::open(src)?;
    let mut writer = GgufWriter::new();
    gguf.copy_metadata_into(&mut writer);
    // llama_ftype 1 = LLAMA_FTYPE_MOSTLY_F16.
    writer.set_u32("general.file_type", 1)?;
    let tensors = gguf.tensors();
    for (i, t) in tensors.iter().enumerate() {
        progress
            .tick(i, tensors.len())
            .map_err(|_| BackboneError::Cancelled)?;
        let values = gguf.tensor_f32(t)?;
        let dtype = if t.shape.len() < 2 || t.dtype == GGML_TYPE_F32 {
            GGML_TYPE_F32
        } else {
            GGML_TYPE_F16
        };
        writer.add_tensor(&t.name, &t.shape, &values, dtype)?;
    }
    progress.finish(tensors.len());
    let partial = dst.with_extension("partial");
    writer.write(&partial)?;
    std::fs::rename(&partial, dst).map_err(|source| BackboneError::Io {
        path: dst.to_owned(),
        source,
    })
}
