//! The heads' forward over the bundle's layers: the gate (SPEC step 1), the
//! projections (step 5), the fusion (step 6) and the item vectors (step 7).
//! Serving, explanation and personalization all call these; the arithmetic
//! itself is the kernels' (`kernels::heads`, the exact twin of the shaders).

use crate::bundle::Heads;
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

    /// The gate of `view` for `phi`.
    pub fn gate(&self, view: View, phi: &[f32]) -> GateOut {
        // A view without experts has an empty gate: every step below then
        // gives an empty vector.
        let g = self.heads.gate(view);
        let logits = kernels::gate_logits(&g.weight, &g.bias, phi);
        let chosen = kernels::chosen_experts(&logits, self.active[view]);
        let scales = kernels::softmax_chosen(&logits, &chosen);
        GateOut {
            logits,
            chosen,
            scales,
        }
    }

    /// The expert scales `g_v` of `view` for `phi`.
    pub fn scales(&self, view: View, phi: &[f32]) -> Vec<f32> {
        self.gate(view, phi).scales
    }

    /// The expert scales of both views for `phi`.
    pub fn all_scales(&self, phi: &[f32]) -> PerView<Vec<f32>> {
        PerView::from_fn(|view| self.scales(view, phi))
    }

    /// Projections and fusion for one pair of view states.
    pub fn user(&self, h_b: &[f32], h_s: &[f32]) -> HeadsOut {
        let h = self.heads;
        let z_b = project(h.proj(View::Behavioral), h_b);
        let z_s = project(h.proj(View::Semantic), h_s);
        let fused = kernels::fuse(&h.fusion.weight, &h.fusion.bias, &z_b, &z_s);
        HeadsOut {
            z_b,
            z_s,
            u: fused.u,
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

fn project(layer: &crate::bundle::Linear, x: &[f32]) -> Vec<f32> {
    kernels::project(&layer.weight, &layer.bias, x)
}
