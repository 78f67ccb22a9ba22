//! The heads' forward over the bundle's layers: the collaborative encoder
//! (MODEL.md step 0, version 2), the gate (step 1), the projections (step 5),
//! the fusion (step 6) and the item vectors (step 7).
//! Serving, explanation and personalization all call these; the arithmetic
//! itself is the kernels' (`kernels::heads`, the exact twin of the shaders).

use crate::bundle::{Gru, Heads};
use crate::kernels;
use crate::per_view::PerView;
use crate::prompt::View;

/// The heads' intermediate values for one pair of view states.
#[derive(Debug, Clone)]
pub struct HeadsOut {
    pub z_b: Vec<f32>,
    pub z_s: Vec<f32>,
    pub u: Vec<f32>,
    pub beta: Vec<f32>,
}

/// One view's gate for one `phi`: its logits, the experts the top-k rule
/// chose, and their scales (0 for the others).
#[derive(Debug, Clone)]
pub struct GateOut {
    pub logits: Vec<f32>,
    pub chosen: Vec<bool>,
    pub scales: Vec<f32>,
}

/// The bundle's heads with each view's number of active experts `k_v`.
#[derive(Clone, Copy)]
pub struct HeadsForward<'a> {
    heads: &'a Heads,
    active: PerView<usize>,
}

impl<'a> HeadsForward<'a> {
    pub fn new(heads: &'a Heads, active: PerView<usize>) -> Self {
        Self { heads, active }
    }

    /// The layers themselves (for the gradient, which runs them backwards).
    pub fn layers(&self) -> &'a Heads {
        self.heads
    }

    /// Step 0: the collaborative state `c` after the item vectors of a
    /// history (oldest first); `None` for a version 1 bundle (`c = 0`).
    pub fn collab<'x>(
        &self,
        item_vectors: impl IntoIterator<Item = &'x [f32]>,
    ) -> Option<Vec<f32>> {
        Some(gru(self.heads.encoder.as_ref()?).last(item_vectors))
    }

    /// `c` after every item of a history (teacher forcing), oldest first.
    pub fn collab_each<'x>(
        &self,
        item_vectors: impl IntoIterator<Item = &'x [f32]>,
    ) -> Option<Vec<Vec<f32>>> {
        Some(gru(self.heads.encoder.as_ref()?).states(item_vectors))
    }

    /// The gate of `view` for `phi` and the collaborative state `c`.
    pub fn gate(&self, view: View, phi: &[f32], c: Option<&[f32]>) -> GateOut {
        // A view without experts has an empty gate: every step below then
        // gives an empty vector.
        let g = self.heads.gate(view);
        let mut logits = kernels::gate_logits(&g.weight, &g.bias, phi);
        let read = &self.heads.gate_read[view];
        if let (Some(c), false) = (c, read.is_empty()) {
            // l_v += A_v c (version 2).
            let d_r = c.len();
            for (e, l) in logits.iter_mut().enumerate() {
                *l += kernels::dot_fma(&read[e * d_r..(e + 1) * d_r], c);
            }
        }
        let chosen = kernels::chosen_experts(&logits, self.active[view]);
        let scales = kernels::softmax_chosen(&logits, &chosen);
        GateOut {
            logits,
            chosen,
            scales,
        }
    }

    /// The expert scales `g_v` of `view` for `phi` and `c`.
    pub fn scales(&self, view: View, phi: &[f32], c: Option<&[f32]>) -> Vec<f32> {
        self.gate(view, phi, c).scales
    }

    /// The expert scales of both views for `phi` and `c`.
    pub fn all_scales(&self, phi: &[f32], c: Option<&[f32]>) -> PerView<Vec<f32>> {
        PerView::from_fn(|view| self.scales(view, phi, c))
    }

    /// Projections and fusion (step 6) for a pair of view states, plus the
    /// collaborative state `c` (version 2).
    pub fn user(&self, h_b: &[f32], h_s: &[f32], c: Option<&[f32]>) -> HeadsOut {
        let h = self.heads;
        let z_b = project(h.proj(View::Behavioral), h_b);
        let z_s = project(h.proj(View::Semantic), h_s);
        let fused = kernels::fuse(&h.fusion.weight, &h.fusion.bias, &z_b, &z_s);
        let mut u = fused.u;
        if let Some(c) = c {
            u.iter_mut().zip(c).for_each(|(u, c)| *u += c);
        }
        HeadsOut {
            z_b,
            z_s,
            u,
            beta: fused.beta,
        }
    }

    /// `e_i = E[i] + Q t_i + q`; a cold item has no `E[i]`.
    pub fn item(&self, text_state: &[f32], id_embedding: Option<&[f32]>) -> Vec<f32> {
        let mut e = project(&self.heads.text_proj, text_state);
        if let Some(id) = id_embedding {
            e.iter_mut().zip(id).for_each(|(e, id)| *e += id);
        }
        e
    }
}

fn gru(g: &Gru) -> kernels::GruWeights<'_> {
    kernels::GruWeights {
        weight_ih: &g.weight_ih,
        weight_hh: &g.weight_hh,
        bias_ih: &g.bias_ih,
        bias_hh: &g.bias_hh,
    }
}

fn project(layer: &crate::bundle::Linear, x: &[f32]) -> Vec<f32> {
    kernels::project(&layer.weight, &layer.bias, x)
}
