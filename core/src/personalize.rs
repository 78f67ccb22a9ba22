//! On-device personalization (SPEC "On-device personalization"): the exact
//! gradient of the user's next-item loss with respect to `phi_u` through a
//! linearization of each view in its expert scales, the gate's top-k softmax
//! and the fusion head; a few steps of gradient descent with an L2 pull
//! toward `phi_mean`. Pure math: the engine measures the states.

use crate::bundle::{Heads, Linear};
use crate::prompt::View;

/// One view's states around the current mixture `g0`, at every target position:
/// `h(g) ~ at_g0 + sum_k (g[k] - g0[k]) * directions[k]`, with
/// `directions[k] = h(e_k) - h(0)` (one backbone pass per expert plus a base pass).
#[derive(Debug, Clone)]
pub struct Linearization {
    pub g0: Vec<f32>,
    /// `[positions][d]`.
    pub at_g0: Vec<Vec<f32>>,
    /// `[K][positions][d]`.
    pub directions: Vec<Vec<Vec<f32>>>,
}

impl Linearization {
    fn state(&self, pos: usize, g: &[f32]) -> Vec<f32> {
        let mut h = self.at_g0[pos].clone();
        for (k, dir) in self.directions.iter().enumerate() {
            let step = g[k] - self.g0[k];
            if step != 0.0 {
                h.iter_mut()
                    .zip(&dir[pos])
                    .for_each(|(h, d)| *h += step * d);
            }
        }
        h
    }
}

/// Everything the loss of one user depends on besides `phi`.
pub struct Problem<'a> {
    pub heads: &'a Heads,
    /// Active experts per view (`k_v`).
    pub active: [usize; 2],
    /// Behavioral, then semantic.
    pub views: [Linearization; 2],
    /// `e_i`, `[N, d_r]`, and `bias`, `[N]`.
    pub items: &'a [f32],
    pub bias: &'a [f32],
    /// `(position, next item row)` pairs.
    pub targets: Vec<(usize, u32)>,
    pub phi_mean: &'a [f32],
    pub l2: f32,
}

/// The gate of SPEC step 1 and its Jacobian-vector product.
struct Gate {
    logits: Vec<f32>,
    active: Vec<usize>,
    scales: Vec<f32>,
}

impl Gate {
    fn new(g: &Linear, phi: &[f32], k: usize) -> Self {
        let logits = matvec(g, phi);
        let mut order: Vec<usize> = (0..logits.len()).collect();
        // Largest first; ties: lower expert index wins (a stable sort keeps it).
        order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
        let active: Vec<usize> = order.into_iter().take(k).collect();
        let max = active
            .iter()
            .map(|&i| logits[i])
            .fold(f32::NEG_INFINITY, f32::max);
        let mut scales = vec![0f32; logits.len()];
        let total: f32 = active.iter().map(|&i| (logits[i] - max).exp()).sum();
        for &i in &active {
            scales[i] = (logits[i] - max).exp() / total;
        }
        Self {
            logits,
            active,
            scales,
        }
    }

    /// `dL/dlogits` from `dL/dscales` through the softmax over the active set
    /// (the top-k choice itself is piecewise constant).
    fn backward(&self, d_scales: &[f32]) -> Vec<f32> {
        let mean: f32 = self
            .active
            .iter()
            .map(|&i| self.scales[i] * d_scales[i])
            .sum();
        let mut d_logits = vec![0f32; self.logits.len()];
        for &i in &self.active {
            d_logits[i] = self.scales[i] * (d_scales[i] - mean);
        }
        d_logits
    }
}

fn matvec(l: &Linear, x: &[f32]) -> Vec<f32> {
    (0..l.rows)
        .map(|r| {
            l.bias[r]
                + l.weight[r * l.cols..(r + 1) * l.cols]
                    .iter()
                    .zip(x)
                    .map(|(w, x)| w * x)
                    .sum::<f32>()
        })
        .collect()
}

/// `W^T y` for `W` `[rows, cols]`.
fn matvec_t(l: &Linear, y: &[f32]) -> Vec<f32> {
    let mut out = vec![0f32; l.cols];
    for (r, &yr) in y.iter().enumerate() {
        if yr != 0.0 {
            out.iter_mut()
                .zip(&l.weight[r * l.cols..(r + 1) * l.cols])
                .for_each(|(o, w)| *o += yr * w);
        }
    }
    out
}

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// Full-softmax cross-entropy of `s = E u + bias` against `target`, and its
/// gradient with respect to `u`.
pub fn cross_entropy(items: &[f32], bias: &[f32], u: &[f32], target: u32) -> (f64, Vec<f32>) {
    let d_r = u.len();
    let scores: Vec<f32> = items
        .chunks_exact(d_r)
        .zip(bias)
        .map(|(e, b)| b + e.iter().zip(u).map(|(e, u)| e * u).sum::<f32>())
        .collect();
    let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = scores.iter().map(|&s| ((s - max) as f64).exp()).sum();
    let loss = sum.ln() + (max - scores[target as usize]) as f64;
    let mut d_u = vec![0f32; d_r];
    for (i, (score, e)) in scores.iter().zip(items.chunks_exact(d_r)).enumerate() {
        let prob = (((score - max) as f64).exp() / sum) as f32
            - if i == target as usize { 1.0 } else { 0.0 };
        d_u.iter_mut().zip(e).for_each(|(d, e)| *d += prob * e);
    }
    (loss, d_u)
}

/// The loss and its gradient with respect to `phi` over `targets`.
pub fn loss_and_gradient(p: &Problem, phi: &[f32], targets: &[(usize, u32)]) -> (f32, Vec<f32>) {
    let gates = [View::Behavioral, View::Semantic]
        .map(|v| Gate::new(p.heads.gate(v), phi, p.active[v as usize]));
    let d_r = p.heads.fusion.rows;
    let mut loss = 0f64;
    let mut d_scales = [
        vec![0f32; gates[0].logits.len()],
        vec![0f32; gates[1].logits.len()],
    ];
    for &(pos, target) in targets {
        let h = [
            p.views[0].state(pos, &gates[0].scales),
            p.views[1].state(pos, &gates[1].scales),
        ];
        let z_b = matvec(&p.heads.proj_behavioral, &h[0]);
        let z_s = matvec(&p.heads.proj_semantic, &h[1]);
        let x: Vec<f32> = z_b
            .iter()
            .chain(&z_s)
            .copied()
            .chain(z_b.iter().zip(&z_s).map(|(a, b)| a * b))
            .collect();
        let beta: Vec<f32> = matvec(&p.heads.fusion, &x)
            .into_iter()
            .map(sigmoid)
            .collect();
        let u: Vec<f32> = (0..d_r)
            .map(|j| beta[j] * z_b[j] + (1.0 - beta[j]) * z_s[j])
            .collect();

        let (target_loss, d_u) = cross_entropy(p.items, p.bias, &u, target);
        loss += target_loss;

        // Back through the fusion head.
        let a: Vec<f32> = (0..d_r)
            .map(|j| d_u[j] * (z_b[j] - z_s[j]) * beta[j] * (1.0 - beta[j]))
            .collect();
        let r = matvec_t(&p.heads.fusion, &a);
        let d_zb: Vec<f32> = (0..d_r)
            .map(|j| d_u[j] * beta[j] + r[j] + r[2 * d_r + j] * z_s[j])
            .collect();
        let d_zs: Vec<f32> = (0..d_r)
            .map(|j| d_u[j] * (1.0 - beta[j]) + r[d_r + j] + r[2 * d_r + j] * z_b[j])
            .collect();
        // Back through the projections and the linearized backbone.
        for (v, d_z) in [(0usize, d_zb), (1, d_zs)] {
            let proj = if v == 0 {
                &p.heads.proj_behavioral
            } else {
                &p.heads.proj_semantic
            };
            let d_h = matvec_t(proj, &d_z);
            for (k, dir) in p.views[v].directions.iter().enumerate() {
                d_scales[v][k] += d_h.iter().zip(&dir[pos]).map(|(a, b)| a * b).sum::<f32>();
            }
        }
    }
    let n = targets.len().max(1) as f32;
    let mut grad = vec![0f32; phi.len()];
    for (v, gate) in gates.iter().enumerate() {
        let d_logits: Vec<f32> = gate.backward(&d_scales[v]).iter().map(|d| d / n).collect();
        let g = p.heads.gate(if v == 0 {
            View::Behavioral
        } else {
            View::Semantic
        });
        grad.iter_mut()
            .zip(matvec_t(g, &d_logits))
            .for_each(|(a, b)| *a += b);
    }
    let mut total = (loss / n as f64) as f32;
    for (j, g) in grad.iter_mut().enumerate() {
        let diff = phi[j] - p.phi_mean[j];
        total += p.l2 * diff * diff;
        *g += 2.0 * p.l2 * diff;
    }
    (total, grad)
}

/// Plain gradient descent on `phi` from `phi0`.
pub fn descend(
    p: &Problem,
    phi0: &[f32],
    targets: &[(usize, u32)],
    steps: usize,
    lr: f32,
) -> Vec<f32> {
    let mut phi = phi0.to_vec();
    for _ in 0..steps {
        let (_, grad) = loss_and_gradient(p, &phi, targets);
        phi.iter_mut().zip(&grad).for_each(|(x, g)| *x -= lr * g);
    }
    phi
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lora::SplitMix;

    fn random(rng: &mut SplitMix, n: usize, amp: f32) -> Vec<f32> {
        (0..n).map(|_| amp * rng.next_signed()).collect()
    }

    fn linear(rng: &mut SplitMix, rows: usize, cols: usize, amp: f32) -> Linear {
        Linear {
            weight: random(rng, rows * cols, amp),
            bias: random(rng, rows, amp),
            rows,
            cols,
        }
    }

    fn linearization(rng: &mut SplitMix, k: usize, pos: usize, d: usize) -> Linearization {
        Linearization {
            g0: random(rng, k, 0.5).iter().map(|x| x.abs()).collect(),
            at_g0: (0..pos).map(|_| random(rng, d, 1.0)).collect(),
            directions: (0..k)
                .map(|_| (0..pos).map(|_| random(rng, d, 1.0)).collect())
                .collect(),
        }
    }

    #[test]
    fn gradient_matches_finite_differences() {
        let (d, d_r, d_phi, k, n, pos) = (6, 4, 3, 3, 9, 4);
        let mut rng = SplitMix(3);
        let heads = Heads {
            gate_behavioral: linear(&mut rng, k, d_phi, 1.0),
            gate_semantic: linear(&mut rng, k, d_phi, 1.0),
            phi_mean: random(&mut rng, d_phi, 0.3),
            proj_behavioral: linear(&mut rng, d_r, d, 0.5),
            proj_semantic: linear(&mut rng, d_r, d, 0.5),
            fusion: linear(&mut rng, d_r, 3 * d_r, 0.5),
            text_proj: linear(&mut rng, d_r, d, 0.5),
        };
        let items = random(&mut rng, n * d_r, 1.0);
        let bias = random(&mut rng, n, 0.1);
        let problem = Problem {
            heads: &heads,
            active: [2, 2],
            views: [
                linearization(&mut rng, k, pos, d),
                linearization(&mut rng, k, pos, d),
            ],
            items: &items,
            bias: &bias,
            targets: vec![(0, 3), (1, 5), (2, 0), (3, 8)],
            phi_mean: &heads.phi_mean,
            l2: 0.05,
        };
        let phi = random(&mut rng, d_phi, 0.7);
        let (_, grad) = loss_and_gradient(&problem, &phi, &problem.targets);
        for j in 0..d_phi {
            let eps = 1e-3;
            let mut plus = phi.clone();
            plus[j] += eps;
            let mut minus = phi.clone();
            minus[j] -= eps;
            let numeric = (loss_and_gradient(&problem, &plus, &problem.targets).0
                - loss_and_gradient(&problem, &minus, &problem.targets).0)
                / (2.0 * eps);
            assert!(
                (numeric - grad[j]).abs() < 2e-3 * (1.0 + numeric.abs()),
                "d/dphi[{j}]: analytic {} numeric {numeric}",
                grad[j]
            );
        }
        let after = descend(&problem, &phi, &problem.targets, 30, 0.2);
        assert!(
            loss_and_gradient(&problem, &after, &problem.targets).0
                < loss_and_gradient(&problem, &phi, &problem.targets).0
        );
    }
}
