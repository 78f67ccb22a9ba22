//! MODEL.md step 0: the collaborative encoder, a one-layer GRU over item
//! vectors, in PyTorch's `nn.GRU` layout (gates r, z, n stacked by rows). It
//! runs on the CPU only: `n` steps of two `[3 d, d]` matrix-vector products,
//! microseconds for a history of 50 items at `d = 64`.

use super::heads::sigmoid;
use super::simd::dot_fma;

/// A GRU's tensors: `weight_ih`, `weight_hh` `[3 d, d]` row-major, biases `[3 d]`.
#[derive(Clone, Copy, Debug)]
pub struct GruWeights<'a> {
    pub weight_ih: &'a [f32],
    pub weight_hh: &'a [f32],
    pub bias_ih: &'a [f32],
    pub bias_hh: &'a [f32],
}

impl GruWeights<'_> {
    /// Hidden (and input) size `d`.
    pub fn dim(&self) -> usize {
        self.bias_ih.len() / 3
    }

    /// One step: the state after input `x` from state `h`.
    pub fn step(&self, x: &[f32], h: &[f32]) -> Vec<f32> {
        let d = self.dim();
        assert!(
            x.len() == d && h.len() == d && self.weight_ih.len() == 3 * d * d,
            "GRU step: input and state must be [d], weights [3 d, d]"
        );
        let row = |w: &[f32], v: &[f32], j: usize| dot_fma(&w[j * d..(j + 1) * d], v);
        (0..d)
            .map(|j| {
                let (r_, z_, n_) = (j, d + j, 2 * d + j);
                let r = sigmoid(
                    row(self.weight_ih, x, r_)
                        + self.bias_ih[r_]
                        + row(self.weight_hh, h, r_)
                        + self.bias_hh[r_],
                );
                let z = sigmoid(
                    row(self.weight_ih, x, z_)
                        + self.bias_ih[z_]
                        + row(self.weight_hh, h, z_)
                        + self.bias_hh[z_],
                );
                let n = (row(self.weight_ih, x, n_)
                    + self.bias_ih[n_]
                    + r * (row(self.weight_hh, h, n_) + self.bias_hh[n_]))
                    .tanh();
                (1.0 - z) * n + z * h[j]
            })
            .collect()
    }

    /// The state after every input, oldest first, starting from zero.
    pub fn states<'x>(&self, inputs: impl IntoIterator<Item = &'x [f32]>) -> Vec<Vec<f32>> {
        let mut h = vec![0.0; self.dim()];
        let mut out = Vec::new();
        for x in inputs {
            h = self.step(x, &h);
            out.push(h.clone());
        }
        out
    }

    /// The state after the last input (zero for none).
    pub fn last<'x>(&self, inputs: impl IntoIterator<Item = &'x [f32]>) -> Vec<f32> {
        let mut h = vec![0.0; self.dim()];
        for x in inputs {
            h = self.step(x, &h);
        }
        h
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_weights_halve_the_state_each_step() {
        // z = sigmoid(0) = 0.5 and n = tanh(0) = 0: h' = h / 2.
        let d = 2;
        let zeros = vec![0.0; 3 * d * d];
        let b = vec![0.0; 3 * d];
        let g = GruWeights {
            weight_ih: &zeros,
            weight_hh: &zeros,
            bias_ih: &b,
            bias_hh: &b,
        };
        assert_eq!(g.step(&[1.0, 1.0], &[1.0, -2.0]), vec![0.5, -1.0]);
        assert_eq!(g.last(std::iter::empty()), vec![0.0, 0.0]);
    }

    #[test]
    fn update_gate_shut_copies_the_candidate() {
        // A large negative z bias closes the update gate: h' = n = tanh(W_in x).
        let w_ih = vec![0.0, 0.0, 2.0];
        let w_hh = vec![0.0; 3];
        let b_ih = vec![0.0, -100.0, 0.0];
        let b_hh = vec![0.0; 3];
        let g = GruWeights {
            weight_ih: &w_ih,
            weight_hh: &w_hh,
            bias_ih: &b_ih,
            bias_hh: &b_hh,
        };
        let h = g.step(&[0.5], &[7.0]);
        assert!((h[0] - 1.0f32.tanh()).abs() < 1e-6, "{h:?}");
        let states = g.states([[0.5f32].as_slice(), [0.0f32].as_slice()]);
        assert_eq!(states.len(), 2);
        assert!(states[1][0].abs() < 1e-6);
    }
}
