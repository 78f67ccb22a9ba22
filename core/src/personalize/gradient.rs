//! The gradient of a user's next-item loss with respect to `phi_u` through a
//! linearization of each view in its expert scales, the model's own gate
//! (same top-k, same tie rule) and its fusion head; plain gradient descent
//! with an L2 pull toward the start (`phi_mean`: 0 in version 2). Pure math: `personalize::run` measures
//! the states.

use crate::bundle::Linear;
use crate::model::{GateOut, HeadsForward};
use crate::per_view::PerView;
use crate::progress::Cancelled;
use crate::prompt::View;

/// One view's states around the current mixture `g0`, at every target position:
/// `h(g) ~ at_g0 + sum_k (g[k] - g0[k]) * directions[k]`, with
/// `directions[k] = h(e_k) - h(g0)` (one backbone pass per expert). The gate's
/// scales sum to one, so `sum_k (g[k] - g0[k]) = 0` and a vector added to every
/// direction changes nothing: these are MODEL.md's `h(e_k) - h(0)` less the
/// same `h(g0) - h(0)`, and the pass at `h(0)` is not needed.
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

/// The collaborative states of a version 2 model (MODEL.md step 0) for the
/// history being learned from: after its last item (what the gates read)
/// and after each item (what joins `u` at that position).
#[derive(Debug, Clone)]
pub struct CollabStates {
    pub last: Vec<f32>,
    pub each: Vec<Vec<f32>>,
}

impl CollabStates {
    /// From the states after each item (the last one is what the gates read).
    pub fn from_each(each: Vec<Vec<f32>>) -> Option<Self> {
        Some(Self {
            last: each.last()?.clone(),
            each,
        })
    }
}

/// Everything the loss of one user depends on besides `phi`.
pub struct Problem<'a> {
    /// The model's own forward (gate, projections, fusion).
    pub heads: HeadsForward<'a>,
    pub views: PerView<Linearization>,
    /// `None` for a version 1 model (`c = 0`).
    pub collab: Option<&'a CollabStates>,
    /// `e_i`, `[N, d_r]`, and `bias`, `[N]`.
    pub items: &'a [f32],
    pub bias: &'a [f32],
    pub phi_mean: &'a [f32],
    pub l2: f32,
}

/// `dL/dlogits` from `dL/dscales` through the softmax over the chosen
/// experts (the top-k choice itself is piecewise constant).
fn gate_backward(gate: &GateOut, d_scales: &[f32]) -> Vec<f32> {
    let active = || (0..gate.logits.len()).filter(|&i| gate.chosen[i]);
    let mean: f32 = active().map(|i| gate.scales[i] * d_scales[i]).sum();
    let mut d_logits = vec![0f32; gate.logits.len()];
    for i in active() {
        d_logits[i] = gate.scales[i] * (d_scales[i] - mean);
    }
    d_logits
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

/// The loss and its gradient with respect to `phi` over `targets`
/// (`(position, next item row)` pairs).
pub fn loss_and_gradient(p: &Problem, phi: &[f32], targets: &[(usize, u32)]) -> (f32, Vec<f32>) {
    let gate_c = p.collab.map(|c| c.last.as_slice());
    let gates = PerView::from_fn(|v| p.heads.gate(v, phi, gate_c));
    let layers = p.heads.layers();
    let d_r = layers.fusion.rows;
    let mut loss = 0f64;
    let mut d_scales = gates.as_ref().map(|_, g| vec![0f32; g.logits.len()]);
    for &(pos, target) in targets {
        let h = PerView::from_fn(|v| p.views[v].state(pos, &gates[v].scales));
        let c = p.collab.map(|c| c.each[pos].as_slice());
        let out = p.heads.user(&h.behavioral, &h.semantic, c);
        let (z_b, z_s, beta) = (&out.z_b, &out.z_s, &out.beta);

        let (target_loss, d_u) = cross_entropy(p.items, p.bias, &out.u, target);
        loss += target_loss;

        // Back through the fusion head.
        let a: Vec<f32> = (0..d_r)
            .map(|j| d_u[j] * (z_b[j] - z_s[j]) * beta[j] * (1.0 - beta[j]))
            .collect();
        let r = matvec_t(&layers.fusion, &a);
        let d_zb: Vec<f32> = (0..d_r)
            .map(|j| d_u[j] * beta[j] + r[j] + r[2 * d_r + j] * z_s[j])
            .collect();
        let d_zs: Vec<f32> = (0..d_r)
            .map(|j| d_u[j] * (1.0 - beta[j]) + r[d_r + j] + r[2 * d_r + j] * z_b[j])
            .collect();
        // Back through the projections and the linearized backbone.
        for (view, d_z) in [(View::Behavioral, d_zb), (View::Semantic, d_zs)] {
            let d_h = matvec_t(layers.proj(view), &d_z);
            for (k, dir) in p.views[view].directions.iter().enumerate() {
                d_scales[view][k] += d_h.iter().zip(&dir[pos]).map(|(a, b)| a * b).sum::<f32>();
            }
        }
    }
    let n = targets.len().max(1) as f32;
    let mut grad = vec![0f32; phi.len()];
    for (view, gate) in gates.iter() {
        let d_logits: Vec<f32> = gate_backward(gate, &d_scales[view])
            .iter()
            .map(|d| d / n)
            .collect();
        grad.iter_mut()
            .zip(matvec_t(layers.gate(view), &d_logits))
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

/// Plain gradient descent on `phi` from `phi0`; `cancelled` is asked before
/// each step (a step is a full-softmax pass over every target).
pub fn descend(
    p: &Problem,
    phi0: &[f32],
    targets: &[(usize, u32)],
    steps: usize,
    lr: f32,
    cancelled: &dyn Fn() -> bool,
) -> Result<Vec<f32>, Cancelled> {
    let mut phi = phi0.to_vec();
    for _ in 0..steps {
        if cancelled() {
            return Err(Cancelled);
        }
        let (_, grad) = loss_and_gradient(p, &phi, targets);
        phi.iter_mut().zip(&grad).for_each(|(x, g)| *x -= lr * g);
    }
    Ok(phi)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bundle::Heads;

    /// Deterministic values in `[-amp, amp)` (an LCG: no RNG crate needed).
    struct Noise(u64);

    impl Noise {
        fn values(&mut self, n: usize, amp: f32) -> Vec<f32> {
            (0..n)
                .map(|_| {
                    self.0 = self
                        .0
                        .wrapping_mul(6_364_136_223_846_793_005)
                        .wrapping_add(1_442_695_040_888_963_407);
                    amp * (((self.0 >> 40) as f32 / (1u64 << 23) as f32) - 1.0)
                })
                .collect()
        }

        fn linear(&mut self, rows: usize, cols: usize, amp: f32) -> Linear {
            Linear {
                weight: self.values(rows * cols, amp),
                bias: self.values(rows, amp),
                rows,
                cols,
            }
        }

        /// Random heads of a version 1 model: `k` experts per view, gate
        /// weights of spread `gate_amp`, states of `d`, `u` of `d_r`, `phi` of `d_phi`.
        fn heads(
            &mut self,
            k: usize,
            (d, d_r, d_phi): (usize, usize, usize),
            gate_amp: f32,
        ) -> Heads {
            Heads {
                gate_behavioral: self.linear(k, d_phi, gate_amp),
                gate_semantic: self.linear(k, d_phi, gate_amp),
                gate_read: Default::default(),
                encoder: None,
                phi_mean: self.values(d_phi, 0.3),
                proj_behavioral: self.linear(d_r, d, 0.5),
                proj_semantic: self.linear(d_r, d, 0.5),
                fusion: self.linear(d_r, 3 * d_r, 0.5),
                text_proj: self.linear(d_r, d, 0.5),
            }
        }

        fn linearization(&mut self, k: usize, pos: usize, d: usize) -> Linearization {
            Linearization {
                g0: self.values(k, 0.5).iter().map(|x| x.abs()).collect(),
                at_g0: (0..pos).map(|_| self.values(d, 1.0)).collect(),
                directions: (0..k)
                    .map(|_| (0..pos).map(|_| self.values(d, 1.0)).collect())
                    .collect(),
            }
        }
    }

    #[test]
    fn gradient_matches_finite_differences() {
        let (d, d_r, d_phi, k, n, pos) = (6, 4, 3, 3, 9, 4);
        let mut rng = Noise(3);
        let heads = rng.heads(k, (d, d_r, d_phi), 1.0);
        let items = rng.values(n * d_r, 1.0);
        let bias = rng.values(n, 0.1);
        let problem = Problem {
            heads: HeadsForward::new(&heads, PerView::new(2, 2)),
            views: PerView::new(rng.linearization(k, pos, d), rng.linearization(k, pos, d)),
            collab: None,
            items: &items,
            bias: &bias,
            phi_mean: &heads.phi_mean,
            l2: 0.05,
        };
        let targets = [(0, 3), (1, 5), (2, 0), (3, 8)];
        let phi = rng.values(d_phi, 0.7);
        let (_, grad) = loss_and_gradient(&problem, &phi, &targets);
        for j in 0..d_phi {
            let eps = 1e-3;
            let mut plus = phi.clone();
            plus[j] += eps;
            let mut minus = phi.clone();
            minus[j] -= eps;
            let numeric = (loss_and_gradient(&problem, &plus, &targets).0
                - loss_and_gradient(&problem, &minus, &targets).0)
                / (2.0 * eps);
            assert!(
                (numeric - grad[j]).abs() < 2e-3 * (1.0 + numeric.abs()),
                "d/dphi[{j}]: analytic {} numeric {numeric}",
                grad[j]
            );
        }
        let after = descend(&problem, &phi, &targets, 30, 0.2, &|| false).unwrap();
        assert_eq!(
            descend(&problem, &phi, &targets, 30, 0.2, &|| true),
            Err(Cancelled)
        );
        assert!(
            loss_and_gradient(&problem, &after, &targets).0
                < loss_and_gradient(&problem, &phi, &targets).0
        );
    }

    /// Why the base pass is not needed: the gate's scales sum to one, so
    /// directions shifted by one vector (`h(e_k) - h(0)` against
    /// `h(e_k) - h(g0)`) give the same loss and gradient everywhere, also
    /// where descent switches the chosen experts.
    #[test]
    fn a_shift_shared_by_every_direction_changes_nothing() {
        let (d, d_r, d_phi, k, n, pos) = (6, 4, 3, 4, 9, 4);
        let mut rng = Noise(11);
        let heads = rng.heads(k, (d, d_r, d_phi), 2.0);
        let forward = HeadsForward::new(&heads, PerView::new(2, 2));
        let phi0 = rng.values(d_phi, 0.7);
        let mut anchored = PerView::from_fn(|_| rng.linearization(k, pos, d));
        let mut shifted = anchored.clone();
        for view in [View::Behavioral, View::Semantic] {
            let g0 = forward.scales(view, &phi0, None);
            assert!((g0.iter().sum::<f32>() - 1.0).abs() < 1e-6);
            anchored[view].g0 = g0.clone();
            shifted[view].g0 = g0;
            let shift: Vec<Vec<f32>> = (0..pos).map(|_| rng.values(d, 3.0)).collect();
            for dir in &mut shifted[view].directions {
                for (h, s) in dir.iter_mut().zip(&shift) {
                    h.iter_mut().zip(s).for_each(|(h, s)| *h += s);
                }
            }
        }
        let (items, bias) = (rng.values(n * d_r, 1.0), rng.values(n, 0.1));
        let problem = |views| Problem {
            heads: HeadsForward::new(&heads, PerView::new(2, 2)),
            views,
            collab: None,
            items: &items,
            bias: &bias,
            phi_mean: &heads.phi_mean,
            l2: 0.05,
        };
        let (a, b) = (problem(anchored), problem(shifted));
        let targets = [(0, 3), (1, 5), (2, 0), (3, 8)];
        let mut chosen = std::collections::BTreeSet::new();
        for trial in 0..20 {
            let phi: Vec<f32> = phi0
                .iter()
                .zip(rng.values(d_phi, 0.4 * trial as f32))
                .map(|(p, step)| p + step)
                .collect();
            let scales = a.heads.scales(View::Behavioral, &phi, None);
            chosen.insert(scales.iter().map(|g| *g > 0.0).collect::<Vec<_>>());
            let ((la, ga), (lb, gb)) = (
                loss_and_gradient(&a, &phi, &targets),
                loss_and_gradient(&b, &phi, &targets),
            );
            assert!((la - lb).abs() < 1e-4 * (1.0 + la.abs()), "{la} vs {lb}");
            for (x, y) in ga.iter().zip(&gb) {
                assert!((x - y).abs() < 1e-3 * (1.0 + x.abs()), "{ga:?} vs {gb:?}");
            }
        }
        assert!(
            chosen.len() > 1,
            "the trials never changed the chosen experts"
        );
    }
}
