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

use std::fs::File;
use std::io::{Read as _, Write};
use std::os::unix::fs::FileExt as _;

use crate::backbone::{BackboneError, ModelInfo};
use crate::ffi::gguf::{GgufError, GgufFile, GgufWriter, Layout, TensorInfo, GGML_TYPE_F32};

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
    // Gemma 3 27B (62 layers): llama.cpp picks its attention scale by the
    // layer count, which the cut model would not have.
    info.arch == "gemma3" && info.n_layer != 62 && from > 0 && from < info.n_layer
}

/// What the upper layers' model is made from, read when the backbone opens:
/// its metadata without the vocabulary (a header-only GGUF image of a few
/// KB; the vocabulary is 10 MB that a build would otherwise parse and copy
/// again), its tensor table, which layers use the sliding window, and the
/// backbone file itself, held open since it was verified: the weights
/// copied later are read from that same file.
pub struct UpperSource {
    meta: Vec<u8>,
    tensors: Vec<TensorInfo>,
    sliding: Vec<bool>,
    file: File,
    file_len: u64,
}

impl UpperSource {
    /// `None` for an architecture [`supported`] does not know or a
    /// sliding-window pattern stated in a form this module does not read.
    /// Takes the vocabulary's keys out of `gguf` (read the tokenizer first).
    pub fn read(gguf: &mut GgufFile, info: &ModelInfo) -> Result<Option<Self>, BackboneError> {
        if !supported(info, 1) {
            return Ok(None); // no layer `1..` model: no split at all
        }
        let Some(sliding) = sliding_layers(gguf, info)? else {
            return Ok(None);
        };
        let io = |source| BackboneError::Io {
            path: info.path.clone(),
            source,
        };
        let file = File::open(&info.path).map_err(io)?;
        let file_len = file.metadata().map_err(io)?.len();
        let tensors = gguf.tensors();
        Ok(Some(Self {
            // The new file's data is laid out at ggml's default alignment,
            // which a copied `general.alignment` would contradict.
            meta: gguf
                .metadata_image(|k| k.starts_with("tokenizer.") || k == "general.alignment")?,
            tensors,
            sliding,
            file,
            file_len,
        }))
    }

    /// Where the model of layers `wanted..` starts: `wanted`, or lower until
    /// it holds both kinds of layer the backbone has (sliding-window and
    /// global), the only layout tested against full passes. llama.cpp
    /// builds Gemma 3's sliding-window graph for a model that declares a
    /// window and aborts if none of its layers uses it; so layer 17 of Gemma
    /// 3 270M alone (global) runs as layers 16-17, and the top two layers of
    /// a 26-layer Gemma 3 (both sliding) would run from the global layer 23.
    pub fn start(&self, wanted: usize) -> usize {
        let kinds = |from: usize| {
            let upper = &self.sliding[from.min(self.sliding.len())..];
            (upper.contains(&true), upper.contains(&false))
        };
        let backbone = kinds(0);
        let mut from = wanted.min(self.sliding.len());
        while from > 0 && kinds(from) != backbone {
            from -= 1;
        }
        from
    }

    /// Writes the model of layers `from..` of the backbone `info` describes
    /// to `out`, its weights copied from the backbone file in 1 MB pieces
    /// (never the whole model in memory). `from` must be [`supported`].
    pub fn write(
        &self,
        info: &ModelInfo,
        from: usize,
        out: &mut impl Write,
    ) -> Result<(), BackboneError> {
        let (layout, sources) = self.layout(info, from)?;
        let io = |source| BackboneError::Io {
            path: info.path.clone(),
            source,
        };
        out.write_all(&layout.header).map_err(io)?;
        let mut at = layout.header.len() as u64;
        let mut buf = vec![0u8; 1 << 20];
        for (source, &offset) in sources.iter().zip(&layout.offsets) {
            write_zeros(out, offset - at).map_err(io)?;
            at = offset;
            match *source {
                Source::Zeros(n) => write_zeros(out, n).map_err(io)?,
                Source::File { offset, bytes } => {
                    self.copy_range(offset, bytes, &mut buf, out).map_err(io)?
                }
            }
            at += source.len();
        }
        write_zeros(out, layout.len - at).map_err(io)
    }

    /// The new file's header and where each of its tensors' data comes from.
    fn layout(
        &self,
        info: &ModelInfo,
        from: usize,
    ) -> Result<(Layout, Vec<Source>), BackboneError> {
        let arch = &info.arch;
        let mut w = GgufWriter::new();
        GgufFile::from_bytes(&self.meta, "(the backbone's metadata)")?.copy_metadata_into(&mut w);
        w.set_str("tokenizer.ggml.model", "no_vocab")?;
        w.set_u32(&format!("{arch}.vocab_size"), 1)?;
        w.set_u32(&format!("{arch}.block_count"), (info.n_layer - from) as u32)?;
        let pattern: Vec<u32> = self.sliding[from..].iter().map(|&s| s as u32).collect();
        w.set_u32_array(
            &format!("{arch}.attention.sliding_window_pattern"),
            &pattern,
        )?;
        let mut sources = Vec::new();
        for t in &self.tensors {
            let name = match t.name.as_str() {
                // Never read (the input is vectors); one row keeps the loader happy.
                "token_embd.weight" => {
                    let bytes =
                        w.declare_tensor(&t.name, GGML_TYPE_F32, &[info.n_embd as u64, 1])?;
                    sources.push(Source::Zeros(bytes));
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
            let bytes = w.declare_tensor(&name, t.dtype, &t.shape)?;
            if bytes != t.bytes
                || t.offset
                    .checked_add(bytes)
                    .is_none_or(|end| end > self.file_len)
            {
                return Err(BackboneError::Gguf(GgufError::OutOfBounds {
                    path: info.path.clone(),
                    name: t.name.clone(),
                }));
            }
            sources.push(Source::File {
                offset: t.offset,
                bytes,
            });
        }
        Ok((w.layout()?, sources))
    }

    fn copy_range(
        &self,
        offset: u64,
        bytes: u64,
        buf: &mut [u8],
        out: &mut impl Write,
    ) -> std::io::Result<()> {
        let mut done = 0;
        while done < bytes {
            let n = (bytes - done).min(buf.len() as u64) as usize;
            self.file.read_exact_at(&mut buf[..n], offset + done)?;
            out.write_all(&buf[..n])?;
            done += n as u64;
        }
        Ok(())
    }
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

/// Where a tensor's data comes from.
enum Source {
    Zeros(u64),
    File { offset: u64, bytes: u64 },
}

impl Source {
    fn len(&self) -> u64 {
        match *self {
            Source::Zeros(n) => n,
            Source::File { bytes, .. } => bytes,
        }
    }
}

fn write_zeros(out: &mut impl Write, n: u64) -> std::io::Result<()> {
    std::io::copy(&mut std::io::repeat(0).take(n), out).map(|_| ())
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
