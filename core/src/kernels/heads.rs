//! The small heads on the CPU: gate (SPEC step 1), projection (step 5) and
//! fusion (step 6). They run once per user and view, so they favour being
//! the exact twins of the shaders in `shaders/` (same FMA chains, same
//! summation order) over speed.

use super::simd::dot_fma;

/// Per-expert scales of a view's gate: the `k` largest logits of
/// `weight * phi + bias` (ties: lower expert index wins) go through a softmax,
/// every other expert gets 0. `weight` is `[K, d_phi]` row-major, `bias` `[K]`.
/// `k` is clamped to `1..=K`; `K == 0` gives an empty vector.
pub fn gate(weight: &[f32], bias: &[f32], phi: &[f32], k: usize) -> Vec<f32> {
    let logits = gate_logits(weight, bias, phi);
    let chosen = chosen_experts(&logits, k);
    softmax_chosen(&logits, &chosen)
}

/// `weight * phi + bias`, one FMA chain per expert (as the shader).
pub fn gate_logits(weight: &[f32], bias: &[f32], phi: &[f32]) -> Vec<f32> {
    let n = bias.len();
    assert_eq!(
        weight.len(),
        n * phi.len(),
        "gate weight must be [K, d_phi]"
    );
    let dp = phi.len();
    (0..n)
        .map(|e| dot_fma(&weight[e * dp..(e + 1) * dp], phi) + bias[e])
        .collect()
}

/// The top-k rule: expert `i` is chosen when fewer than `k` experts beat it
/// (a larger logit, or an equal one at a lower index). `k` is clamped to
/// `1..=K`.
pub fn chosen_experts(logits: &[f32], k: usize) -> Vec<bool> {
    let k = k.clamp(1, logits.len().max(1));
    logits
        .iter()
        .enumerate()
        .map(|(i, &l)| {
            let rank = logits
                .iter()
                .enumerate()
                .filter(|&(j, &m)| m > l || (m == l && j < i))
                .count();
            rank < k
        })
        .collect()
}

/// Softmax over the chosen logits, in index order (as the shader sums);
/// experts not chosen get 0.
pub fn softmax_chosen(logits: &[f32], chosen: &[bool]) -> Vec<f32> {
    let mut max = None::<f32>;
    for (&l, &c) in logits.iter().zip(chosen) {
        if c && max.is_none_or(|m| l > m) {
            max = Some(l);
        }
    }
    let max = max.unwrap_or(0.0);
    let mut sum = 0.0f32;
    for (&l, &c) in logits.iter().zip(chosen) {
        if c {
            sum += (l - max).exp();
        }
    }
    logits
        .iter()
        .zip(chosen)
        .map(|(&l, &c)| if c { (l - max).exp() / sum } else { 0.0 })
        .collect()
}

/// `weight * h + bias`, `weight` `[d_r, d]` row-major.
pub fn project(weight: &[f32], bias: &[f32], h: &[f32]) -> Vec<f32> {
    assert_eq!(
        weight.len(),
        bias.len() * h.len(),
        "projection weight must be [d_r, d]"
    );
    let d = h.len();
    (0..bias.len())
        .map(|j| dot_fma(&weight[j * d..(j + 1) * d], h) + bias[j])
        .collect()
}

/// The fusion head's output: the user vector `u` and the gate `beta`.
#[derive(Clone, Debug, PartialEq)]
pub struct Fused {
    pub u: Vec<f32>,
    pub beta: Vec<f32>,
}

/// `beta = sigmoid(weight [z_b; z_s; z_b*z_s] + bias)`,
/// `u = beta*z_b + (1-beta)*z_s`; `weight` is `[d_r, 3 d_r]` row-major.
pub fn fuse(weight: &[f32], bias: &[f32], z_b: &[f32], z_s: &[f32]) -> Fused {
    let dr = bias.len();
    assert!(
        z_b.len() == dr && z_s.len() == dr,
        "fusion inputs must be [d_r]"
    );
    assert_eq!(
        weight.len(),
        3 * dr * dr,
        "fusion weight must be [d_r, 3 d_r]"
    );
    let (mut u, mut beta) = (Vec::with_capacity(dr), Vec::with_capacity(dr));
    for (j, &b) in bias.iter().enumerate() {
        let w = &weight[j * 3 * dr..(j + 1) * 3 * dr];
        let bj = sigmoid(fusion_logit(w, z_b, z_s) + b);
        beta.push(bj);
        u.push(mix(bj, z_b[j], z_s[j]));
    }
    Fused { u, beta }
}

/// One FMA chain over `[z_b; z_s; z_b*z_s]` without building the vector.
fn fusion_logit(w: &[f32], z_b: &[f32], z_s: &[f32]) -> f32 {
    let dr = z_b.len();
    let mut acc = 0.0f32;
    for c in 0..dr {
        acc = w[c].mul_add(z_b[c], acc);
    }
    for c in 0..dr {
        acc = w[dr + c].mul_add(z_s[c], acc);
    }
    for c in 0..dr {
        acc = w[2 * dr + c].mul_add(z_b[c] * z_s[c], acc);
    }
    acc
}

pub(crate) fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// `beta*z_b + (1-beta)*z_s` with one rounding less, as the shader does.
pub(crate) fn mix(beta: f32, zb: f32, zs: f32) -> f32 {
    beta.mul_add(zb, (1.0 - beta) * zs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gate_keeps_top_k_with_lower_index_on_ties() {
        // Logits: 1, 3, 3, 0 (identity weight on a 4-dim phi).
        let w: Vec<f32> = (0..16)
            .map(|i| if i % 5 == 0 { 1.0 } else { 0.0 })
            .collect();
        let g = gate(&w, &[0.0; 4], &[1.0, 3.0, 3.0, 0.0], 1);
        assert_eq!(g, vec![0.0, 1.0, 0.0, 0.0]);
        let g = gate(&w, &[0.0; 4], &[1.0, 3.0, 3.0, 0.0], 2);
        assert_eq!(g, vec![0.0, 0.5, 0.5, 0.0]);
        let g = gate(&w, &[0.0; 4], &[1.0, 3.0, 3.0, 0.0], 4);
        assert!((g.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert!(gate(&[], &[], &[1.0], 2).is_empty());
    }

    #[test]
    fn fuse_matches_the_spec_formula() {
        let dr = 3;
        let w: Vec<f32> = (0..3 * dr * dr).map(|i| (i as f32 * 0.37).sin()).collect();
        let b = [0.1, -0.2, 0.3];
        let (zb, zs) = ([0.5, -1.0, 2.0], [1.5, 0.25, -0.75]);
        let f = fuse(&w, &b, &zb, &zs);
        for j in 0..dr {
            let mut x = zb.to_vec();
            x.extend_from_slice(&zs);
            x.extend(zb.iter().zip(&zs).map(|(a, c)| a * c));
            let l: f32 = w[j * 9..(j + 1) * 9]
                .iter()
                .zip(&x)
                .map(|(a, c)| a * c)
                .sum::<f32>()
                + b[j];
            let beta = 1.0 / (1.0 + (-l).exp());
            assert!((f.beta[j] - beta).abs() < 1e-6);
            assert!((f.u[j] - (beta * zb[j] + (1.0 - beta) * zs[j])).abs() < 1e-6);
        }
    }

    #[test]
    fn project_is_affine() {
        let z = project(&[1.0, 2.0, 3.0, 4.0], &[0.5, -0.5], &[1.0, 1.0]);
        assert_eq!(z, vec![3.5, 6.5]);
    }
}
