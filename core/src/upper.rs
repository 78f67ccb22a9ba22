//! The backbone's upper layers as a model of their own (MODEL.md
//! "On-device personalization", step 1).
//!
//! When every expert adapts layers `from..n_layer` only, the residual stream
//! entering layer `from` is the same under every mixture: a pass through
//! layers `0..from` can be made once per prompt, and each further mixture
//! needs only the upper layers, fed those vectors. llama.cpp runs a model's
//! every layer, so the upper layers are a second model, built here in memory
//! from the verified backbone file: its metadata with `block_count` cut to
//! the upper layers and their attention pattern kept, tensors `blk.<from+i>.*`
//! renamed `blk.<i>.*`, and a one-row token table (it reads vectors, not
//! tokens). Experts are renamed the same way (`crate::mixture`).
//!
//! Invariant: this module knows GGUF layout and llama.cpp's metadata for the
//! architectures it supports (Gemma 3), not views, gates or users.

use crate::backbone::{BackboneError, ModelInfo};
use crate::ffi::gguf::{GgufFile, GgufWriter, GGML_TYPE_F32};

/// Gemma 3's pattern of sliding-window and global layers when the file does
/// not say: every 6th layer is global (llama.cpp's default for the arch).
const GEMMA3_SWA_PATTERN: u32 = 6;

/// `blk.<layer>.<rest>` with `layer >= from` as `blk.<layer - from>.<rest>`;
/// `None` for a tensor of a lower layer or not of a layer at all.
pub fn shifted_name(name: &str, from: usize) -> Option<String> {
    let rest = name.strip_prefix("blk.")?;
    let (layer, tail) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    (layer >= from).then(|| format!("blk.{}.{tail}", layer - from))
}

/// Whether this backbone's layers `from..` can run as a model of their own:
/// an architecture whose metadata this module knows, and layers to skip.
pub fn supported(info: &ModelInfo, from: usize) -> bool {
    info.arch == "gemma3" && from > 0 && from < info.n_layer
}

/// Which of layers `0..n_layer` use the sliding window (`None`: the file
/// states its pattern in a form this module does not read).
fn sliding_layers(gguf: &GgufFile, info: &ModelInfo) -> Result<Option<Vec<bool>>, BackboneError> {
    let arch = &info.arch;
    if gguf
        .number(&format!("{arch}.attention.sliding_window"))?
        .is_none_or(|w| w <= 0.0)
    {
        return Ok(Some(vec![false; info.n_layer]));
    }
    let key = format!("{arch}.attention.sliding_window_pattern");
    let pattern = match gguf.number(&key) {
        Ok(Some(n)) => n as u32,
        Ok(None) => GEMMA3_SWA_PATTERN,
        Err(_) => return Ok(None), // an array: not read here
    };
    // llama.cpp's `set_swa_pattern` (dense layers last in each period).
    Ok(Some(
        (0..info.n_layer as u32)
            .map(|il| pattern == 0 || il % pattern < pattern - 1)
            .collect(),
    ))
}

/// The GGUF image of layers `from..n_layer` of the backbone `info` describes
/// (its file already verified by `ModelInfo::read`), or `None` when
/// [`supported`] says no.
pub fn upper_image(info: &ModelInfo, from: usize) -> Result<Option<Vec<u8>>, BackboneError> {
    if !supported(info, from) {
        return Ok(None);
    }
    let gguf = GgufFile::open(&info.path)?;
    let Some(sliding) = sliding_layers(&gguf, info)? else {
        return Ok(None);
    };
    let arch = &info.arch;
    let mut w = GgufWriter::new();
    gguf.copy_metadata_into(&mut w);
    w.remove_keys(|k| k.starts_with("tokenizer."));
    w.set_str("tokenizer.ggml.model", "no_vocab")?;
    w.set_u32(&format!("{arch}.vocab_size"), 1)?;
    w.set_u32(&format!("{arch}.block_count"), (info.n_layer - from) as u32)?;
    let pattern: Vec<u32> = sliding[from..].iter().map(|&s| s as u32).collect();
    w.set_u32_array(&format!("{arch}.attention.sliding_window_pattern"), &pattern)?;
    for t in gguf.tensors() {
        let name = match t.name.as_str() {
            // Never read (the input is vectors); one row keeps the loader happy.
            "token_embd.weight" => {
                w.add_tensor(
                    &t.name,
                    &[info.n_embd as u64, 1],
                    &vec![0.0; info.n_embd],
                    GGML_TYPE_F32,
                )?;
                continue;
            }
            // An untied output layer: its logits are never computed.
            "output.weight" => continue,
            n if n.starts_with("blk.") => match shifted_name(n, from) {
                Some(shifted) => shifted,
                None => continue, // a lower layer
            },
            n => n.to_owned(), // output_norm and the like
        };
        let bytes = gguf.tensor_bytes(&t)?;
        w.add_tensor_bytes(&name, t.dtype, &t.shape, bytes)?;
    }
    Ok(Some(w.to_bytes()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shifts_layer_names() {
        assert_eq!(
            shifted_name("blk.16.attn_q.weight", 16).as_deref(),
            Some("blk.0.attn_q.weight")
        );
        assert_eq!(
            shifted_name("blk.17.attn_v.weight", 16).as_deref(),
            Some("blk.1.attn_v.weight")
        );
        assert_eq!(shifted_name("blk.15.attn_q.weight", 16), None);
        assert_eq!(shifted_name("output_norm.weight", 16), None);
        assert_eq!(shifted_name("blk.x.attn_q.weight", 0), None);
    }
}
