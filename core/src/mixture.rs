//! An expert mixture merged into one LoRA adapter (MODEL.md step 2).
//!
//! `sum_k s_k (alpha_k / r_k) B_k A_k` is itself a LoRA of rank `R = sum_k r_k`:
//! its A stacks the experts' A, its B stacks their B, each expert's block of
//! B scaled by `s_k alpha_k / r_k`. llama.cpp then runs two small matrix
//! products per adapted weight instead of two per active expert, and the
//! products it runs are the same work in fewer, longer dot products: with two
//! rank-8 experts on every weight of every layer the mixture costs 1.09x the
//! base pass merged against 1.23x as two adapters (`l2rec bench backbone`,
//! docs/RESULTS.md).
//!
//! The experts are read again from their files and checked here, not taken
//! on trust from the first validation: this image is what llama.cpp reads.
//! Invariant: this module knows LoRA algebra and the GGUF adapter layout, not
//! views, gates or users.

use std::collections::BTreeMap;
use std::path::Path;

use crate::backbone::ModelInfo;
use crate::ffi::gguf::{GgufFile, GgufWriter, TensorInfo, GGML_TYPE_F32};
use crate::lora::{require_finite, tensor_named, LoraError};

/// One adapted weight's factors in ggml order: `a` is `[n_in, r]` (r rows of
/// n_in), `b` is `[r, n_out]` (n_out rows of r).
struct Factors {
    a: Vec<f32>,
    b: Vec<f32>,
    rank: usize,
}

/// The GGUF image of the adapter equal to the mixture `experts` (file and
/// scale each), ready for `Model::load_adapter_bytes`. Its alpha is 0, which
/// llama.cpp reads as "scale 1 whatever the rank": the scales are in B.
/// `from_layer` > 0 renames the adapted weights for the model of layers
/// `from_layer..` (`crate::upper`); an expert on a lower layer is refused.
pub fn merged_image(
    experts: &[(&Path, f32)],
    model: &ModelInfo,
    from_layer: usize,
) -> Result<Vec<u8>, LoraError> {
    let mut merged: BTreeMap<String, Vec<(Factors, f32)>> = BTreeMap::new();
    for (i, &(path, scale)) in experts.iter().enumerate() {
        let (alpha, factors) = read_factors(path, model)?;
        if i > 0 && factors.len() != merged.len() {
            return Err(different_weights(path));
        }
        for (target, f) in factors {
            let weight = scale * alpha / f.rank as f32;
            match merged.get_mut(&target) {
                Some(list) => list.push((f, weight)),
                None if i == 0 => {
                    merged.insert(target, vec![(f, weight)]);
                }
                None => return Err(different_weights(path)),
            }
        }
    }
    let mut w = GgufWriter::new();
    w.set_str("general.type", "adapter")?;
    w.set_str("general.architecture", &model.arch)?;
    w.set_str("adapter.type", "lora")?;
    w.set_f32("adapter.lora.alpha", 0.0)?;
    for (target, parts) in &merged {
        let shape = &model.tensors[target];
        let (n_in, n_out) = (shape[0], shape[1] as usize);
        let target = &renamed(target, from_layer)?;
        let rank: usize = parts.iter().map(|(f, _)| f.rank).sum();
        let a: Vec<f32> = parts
            .iter()
            .flat_map(|(f, _)| f.a.iter().copied())
            .collect();
        let b = stack_scaled_b(parts, rank, n_out);
        w.add_tensor(
            &format!("{target}.lora_a"),
            &[n_in, rank as u64],
            &a,
            GGML_TYPE_F32,
        )?;
        w.add_tensor(
            &format!("{target}.lora_b"),
            &[rank as u64, n_out as u64],
            &b,
            GGML_TYPE_F32,
        )?;
    }
    Ok(w.to_bytes()?)
}

/// B of the merged adapter: for every output row, each expert's `r_k`
/// entries times that expert's weight, in the experts' order (A's order).
fn stack_scaled_b(parts: &[(Factors, f32)], rank: usize, n_out: usize) -> Vec<f32> {
    let mut b = Vec::with_capacity(rank * n_out);
    for o in 0..n_out {
        for (f, weight) in parts {
            b.extend(f.b[o * f.rank..(o + 1) * f.rank].iter().map(|v| v * weight));
        }
    }
    b
}

/// `target` as the model of layers `from_layer..` names it.
fn renamed(target: &str, from_layer: usize) -> Result<String, LoraError> {
    if from_layer == 0 {
        return Ok(target.to_owned());
    }
    crate::upper::shifted_name(target, from_layer).ok_or_else(|| {
        LoraError::Spec(format!(
            "an expert adapts `{target}`, below layer {from_layer} where the upper layers begin"
        ))
    })
}

fn different_weights(path: &Path) -> LoraError {
    LoraError::Spec(format!(
        "{}: the experts of one mixture must adapt the same weights",
        path.display()
    ))
}

/// An expert file's alpha and factors by adapted weight, every shape checked
/// against the backbone's weight and every value finite.
fn read_factors(
    path: &Path,
    model: &ModelInfo,
) -> Result<(f32, BTreeMap<String, Factors>), LoraError> {
    let gguf = GgufFile::open(path)?;
    let alpha = gguf
        .number("adapter.lora.alpha")?
        .ok_or_else(|| LoraError::Metadata {
            path: path.to_owned(),
            key: "adapter.lora.alpha",
            found: None,
            expected: "a number".into(),
        })? as f32;
    let tensors = gguf.tensors();
    let mut pairs = Vec::new();
    for a_info in tensors.iter().filter(|t| t.name.ends_with(".lora_a")) {
        let target = a_info.name.trim_end_matches(".lora_a").to_owned();
        let b_name = format!("{target}.lora_b");
        let b_info = tensor_named(&tensors, &b_name, path)?;
        let weight = model
            .tensors
            .get(&target)
            .filter(|s| s.len() == 2)
            .ok_or_else(|| LoraError::UnexpectedTensor {
                path: path.to_owned(),
                name: a_info.name.clone(),
            })?;
        let rank = a_info.shape.get(1).copied().unwrap_or(0);
        let shape_error = |name: &str, found: &[u64], expected: Vec<u64>| LoraError::Shape {
            path: path.to_owned(),
            name: name.to_owned(),
            found: found.to_vec(),
            expected,
        };
        if rank == 0 || a_info.shape != [weight[0], rank] {
            return Err(shape_error(
                &a_info.name,
                &a_info.shape,
                vec![weight[0], rank.max(1)],
            ));
        }
        if b_info.shape != [rank, weight[1]] {
            return Err(shape_error(&b_name, &b_info.shape, vec![rank, weight[1]]));
        }
        pairs.push((target, rank as usize, a_info, b_info));
    }
    let infos: Vec<&TensorInfo> = pairs.iter().flat_map(|(_, _, a, b)| [*a, *b]).collect();
    let mut values = gguf.tensors_f32(&infos)?.into_iter();
    let mut out = BTreeMap::new();
    for (target, rank, a_info, b_info) in pairs {
        // `infos` holds each pair's A then B, so the values come in that order.
        let (Some(a), Some(b)) = (values.next(), values.next()) else {
            unreachable!("two values per pair")
        };
        require_finite(&a, &a_info.name, path)?;
        require_finite(&b, &b_info.name, path)?;
        out.insert(target, Factors { a, b, rank });
    }
    if tensors.len() != 2 * out.len() {
        return Err(LoraError::Spec(format!(
            "{}: every `.lora_a` tensor needs its `.lora_b` and nothing else",
            path.display()
        )));
    }
    Ok((alpha, out))
}
