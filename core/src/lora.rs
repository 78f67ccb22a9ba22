//! LoRA expert files: llama.cpp adapters in GGUF, validated against the
//! backbone before llama.cpp reads them, and written (the trainer's format, for
//! tools and tests).
//!
//! Orientation (llama.cpp `src/llama-adapter.cpp`): for a weight of ggml shape
//! `[n_in, n_out]`, `lora_a` is `[n_in, r]` and `lora_b` is `[r, n_out]` in ggml
//! order, i.e. PEFT's `A [r, n_in]` and `B [n_out, r]` in numpy order.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::backbone::ModelInfo;
use crate::ffi::gguf::{
    type_name, GgufError, GgufFile, GgufWriter, TensorInfo, GGML_TYPE_F16, GGML_TYPE_F32,
};

/// The weight matrices an expert may adapt, as llama.cpp names them.
pub const MODULES: [&str; 7] = [
    "attn_q",
    "attn_k",
    "attn_v",
    "attn_output",
    "ffn_gate",
    "ffn_up",
    "ffn_down",
];

#[derive(Debug, thiserror::Error)]
pub enum LoraError {
    #[error(transparent)]
    Gguf(#[from] GgufError),
    #[error("{path}: `{key}` is {found:?}, expected {expected:?}")]
    Metadata {
        path: PathBuf,
        key: &'static str,
        found: Option<String>,
        expected: String,
    },
    #[error("{path}: tensor `{name}` is missing")]
    MissingTensor { path: PathBuf, name: String },
    #[error(
        "{path}: tensor `{name}` is not part of the expert layout (lora.layers x lora.modules)"
    )]
    UnexpectedTensor { path: PathBuf, name: String },
    #[error("{path}: tensor `{name}` has ggml shape {found:?}, expected {expected:?}")]
    Shape {
        path: PathBuf,
        name: String,
        found: Vec<u64>,
        expected: Vec<u64>,
    },
    #[error("{path}: tensor `{name}` is {dtype}, expected f32 or f16")]
    Dtype {
        path: PathBuf,
        name: String,
        dtype: String,
    },
    #[error("{path}: tensor `{name}` holds NaN or infinite values")]
    NonFinite { path: PathBuf, name: String },
    #[error("invalid LoRA layout: {0}")]
    Spec(String),
}

/// Which weights the experts adapt, and how.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoraSpec {
    pub rank: u32,
    pub alpha: f32,
    pub layers: Vec<u32>,
    pub modules: Vec<String>,
}

impl LoraSpec {
    /// The adapted weights' tensor names, `blk.<layer>.<module>.weight`.
    pub fn targets(&self) -> Vec<String> {
        let mut names = Vec::new();
        for layer in &self.layers {
            for module in &self.modules {
                names.push(format!("blk.{layer}.{module}.weight"));
            }
        }
        names
    }

    /// Checks the layout against the backbone: known modules, layers in range,
    /// every target a 2-D weight of the model.
    pub fn check(&self, model: &ModelInfo) -> Result<(), LoraError> {
        if self.rank == 0 || !self.alpha.is_finite() {
            return Err(LoraError::Spec(format!(
                "rank {} / alpha {} are not usable",
                self.rank, self.alpha
            )));
        }
        if let Some(m) = self.modules.iter().find(|m| !MODULES.contains(&m.as_str())) {
            return Err(LoraError::Spec(format!(
                "unknown module `{m}` (known: {})",
                MODULES.join(", ")
            )));
        }
        if let Some(l) = self.layers.iter().find(|&&l| l as usize >= model.n_layer) {
            return Err(LoraError::Spec(format!(
                "layer {l} does not exist (the backbone has {})",
                model.n_layer
            )));
        }
        for target in self.targets() {
            match model.tensors.get(&target) {
                Some(shape) if shape.len() == 2 => {}
                _ => {
                    return Err(LoraError::Spec(format!(
                        "the backbone has no 2-D weight `{target}`"
                    )))
                }
            }
        }
        Ok(())
    }

    fn expected_tensors(&self, model: &ModelInfo) -> Vec<(String, Vec<u64>)> {
        let r = self.rank as u64;
        let mut out = Vec::new();
        for target in self.targets() {
            let shape = &model.tensors[&target];
            out.push((format!("{target}.lora_a"), vec![shape[0], r]));
            out.push((format!("{target}.lora_b"), vec![r, shape[1]]));
        }
        out
    }
}

fn expect_str(gguf: &GgufFile, key: &'static str, expected: &str) -> Result<(), LoraError> {
    let found = gguf.string(key)?;
    if found.as_deref() == Some(expected) {
        return Ok(());
    }
    Err(LoraError::Metadata {
        path: gguf.path().to_owned(),
        key,
        found,
        expected: expected.to_owned(),
    })
}

/// Validates an expert file against the backbone and the bundle's layout:
/// GGUF header, `general.type`, `adapter.type`, architecture, alpha, the exact
/// tensor set, shapes, dtypes, bounds and finite values.
pub fn validate_expert(path: &Path, model: &ModelInfo, spec: &LoraSpec) -> Result<(), LoraError> {
    spec.check(model)?;
    let gguf = GgufFile::open(path)?;
    expect_str(&gguf, "general.type", "adapter")?;
    expect_str(&gguf, "adapter.type", "lora")?;
    expect_str(&gguf, "general.architecture", &model.arch)?;
    let alpha = gguf.number("adapter.lora.alpha")?;
    if alpha.is_none_or(|a| (a as f32 - spec.alpha).abs() > 1e-6 * spec.alpha.abs().max(1.0)) {
        return Err(LoraError::Metadata {
            path: path.to_owned(),
            key: "adapter.lora.alpha",
            found: alpha.map(|a| a.to_string()),
            expected: spec.alpha.to_string(),
        });
    }
    let present = gguf.tensors();
    let expected = spec.expected_tensors(model);
    let expected_names: BTreeSet<&str> = expected.iter().map(|(n, _)| n.as_str()).collect();
    if let Some(extra) = present
        .iter()
        .find(|t| !expected_names.contains(t.name.as_str()))
    {
        return Err(LoraError::UnexpectedTensor {
            path: path.to_owned(),
            name: extra.name.clone(),
        });
    }
    for (name, shape) in expected {
        let info = tensor_named(&present, &name, path)?;
        if info.shape != shape {
            return Err(LoraError::Shape {
                path: path.to_owned(),
                name,
                found: info.shape.clone(),
                expected: shape,
            });
        }
        if info.dtype != GGML_TYPE_F32 && info.dtype != GGML_TYPE_F16 {
            return Err(LoraError::Dtype {
                path: path.to_owned(),
                name,
                dtype: type_name(info.dtype),
            });
        }
        require_finite(&gguf.tensor_f32(info)?, &name, path)?;
    }
    Ok(())
}

/// The tensor called `name` among an expert file's tensors.
pub(crate) fn tensor_named<'a>(
    tensors: &'a [TensorInfo],
    name: &str,
    path: &Path,
) -> Result<&'a TensorInfo, LoraError> {
    tensors
        .iter()
        .find(|t| t.name == name)
        .ok_or_else(|| LoraError::MissingTensor {
            path: path.to_owned(),
            name: name.to_owned(),
        })
}

/// Refuses a tensor holding NaN or infinite values.
pub(crate) fn require_finite(values: &[f32], name: &str, path: &Path) -> Result<(), LoraError> {
    if values.iter().all(|v| v.is_finite()) {
        return Ok(());
    }
    Err(LoraError::NonFinite {
        path: path.to_owned(),
        name: name.to_owned(),
    })
}

/// One adapted weight's factors, numpy order: `a` is `[r, n_in]`, `b` is `[n_out, r]`.
pub struct Factors {
    pub a: Vec<f32>,
    pub b: Vec<f32>,
}

/// Writes an expert file; `factors(target, n_in, n_out)` gives each weight's
/// factors. Stored as f32.
pub fn write_expert(
    path: &Path,
    model: &ModelInfo,
    spec: &LoraSpec,
    mut factors: impl FnMut(&str, usize, usize) -> Factors,
) -> Result<(), LoraError> {
    spec.check(model)?;
    let mut w = GgufWriter::new();
    w.set_str("general.type", "adapter")?;
    w.set_str("general.architecture", &model.arch)?;
    w.set_str("adapter.type", "lora")?;
    w.set_f32("adapter.lora.alpha", spec.alpha)?;
    let r = spec.rank as u64;
    for target in spec.targets() {
        let shape = &model.tensors[&target];
        let (n_in, n_out) = (shape[0], shape[1]);
        let f = factors(&target, n_in as usize, n_out as usize);
        // numpy [r, n_in] is ggml [n_in, r]; numpy [n_out, r] is ggml [r, n_out].
        w.add_tensor(&format!("{target}.lora_a"), &[n_in, r], &f.a, GGML_TYPE_F32)?;
        w.add_tensor(
            &format!("{target}.lora_b"),
            &[r, n_out],
            &f.b,
            GGML_TYPE_F32,
        )?;
    }
    w.write(path)?;
    Ok(())
}
