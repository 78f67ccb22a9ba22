//! The L2Rec forward pass (SPEC steps 1-8) composed from the parts: the
//! backbone computes view states, the kernels do gate, heads and scoring.
//! The engine (per-user state, events) builds on this.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use crate::backbone::{Backbone, BackboneError, Expert, Session};
use crate::bundle::{Bundle, BundleError};
use crate::kernels::{self, CatalogMatrix, Hit, KernelError, Scorer, Storage};
use crate::prompt::{ItemRef, Template, View};

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error(transparent)]
    Backbone(#[from] BackboneError),
    #[error(transparent)]
    Bundle(#[from] BundleError),
    #[error(transparent)]
    Kernel(#[from] KernelError),
    #[error("catalog row {row} does not exist (the catalog has {len} items)")]
    UnknownRow { row: u32, len: usize },
    #[error("phi has {found} values, the bundle's d_phi is {expected}")]
    PhiSize { found: usize, expected: usize },
    #[error("cancelled")]
    Cancelled,
    #[error("degenerate model: {0}")]
    Degenerate(String),
}

/// Reports `(done, total)`; returning false cancels the work.
pub type Progress<'a> = &'a mut dyn FnMut(usize, usize) -> bool;

/// The base backbone's state of each text rendered as a one-item semantic
/// history (SPEC step 7's `t_i`), `[N, d]`. Each item is encoded alone, from
/// scratch, so the result does not depend on batching.
pub fn item_text_states(
    backbone: &Backbone,
    template: &Template,
    texts: &[String],
    progress: Progress,
) -> Result<Vec<f32>, ModelError> {
    let mut session = backbone.session()?;
    let mut states = Vec::with_capacity(texts.len() * backbone.n_embd());
    for (i, text) in texts.iter().enumerate() {
        if !progress(i, texts.len()) {
            return Err(ModelError::Cancelled);
        }
        let prompt = template.render(View::Semantic, [ItemRef { id: "", text }]);
        states.extend(session.state_fresh(&backbone.tokenize(&prompt)?)?);
    }
    progress(texts.len(), texts.len());
    Ok(states)
}

/// The heads' intermediate values for one pair of view states.
#[derive(Debug, Clone)]
pub struct HeadsOut {
    pub z_b: Vec<f32>,
    pub z_s: Vec<f32>,
    pub u: Vec<f32>,
    pub beta: Vec<f32>,
}

/// Where the time of one preference computation went.
#[derive(Debug, Clone, Default)]
pub struct StepTimings {
    pub gate: Duration,
    pub behavioral: Duration,
    pub semantic: Duration,
    pub heads: Duration,
    pub score: Duration,
    pub tokens_evaluated: usize,
}

/// A user's preference vector and how it came about.
#[derive(Debug, Clone)]
pub struct Preference {
    /// `u`, `[d_r]`.
    pub u: Vec<f32>,
    /// The fusion weight of the behavioral view per dimension.
    pub beta: Vec<f32>,
    /// Expert scales `g_v` per view.
    pub scales: BTreeMap<View, Vec<f32>>,
    pub timings: StepTimings,
    /// The view states `h_b`, `h_s` it came from.
    pub states: [Vec<f32>; 2],
}

/// An item the bundle never saw: served by its text alone (SPEC step 7, `E[i] = 0`).
#[derive(Debug, Clone)]
pub struct ColdItem {
    pub id: String,
    pub text: String,
    /// The base backbone's state of its one-item semantic history.
    pub text_state: Vec<f32>,
}

/// A bundle ready to serve: experts loaded, item vectors on the scorer. The
/// catalog is the bundle's items (rows `0..N`) followed by cold items.
pub struct L2Rec {
    backbone: Backbone,
    bundle: Bundle,
    experts: BTreeMap<View, Vec<Expert>>,
    sessions: BTreeMap<View, Session>,
    scorer: Scorer,
    ids: Vec<String>,
    texts: Vec<String>,
    rows: HashMap<String, u32>,
    /// `e_i`, `[rows, d_r]`, kept on the CPU for full-softmax losses.
    vectors: Vec<f32>,
    bias: Vec<f32>,
}

impl L2Rec {
    /// Loads the bundle's experts into the backbone and puts the catalog
    /// (`e_i = E[i] + Q t_i + q`, SPEC step 7) on the scorer. Item text states
    /// the bundle does not ship are computed here (with progress).
    pub fn new(backbone: Backbone, bundle: Bundle, progress: Progress) -> Result<Self, ModelError> {
        let mut experts = BTreeMap::new();
        let mut sessions = BTreeMap::new();
        for view in View::BOTH {
            let loaded = bundle.experts[&view]
                .iter()
                .map(|p| backbone.load_expert(p))
                .collect::<Result<Vec<_>, _>>()?;
            experts.insert(view, loaded);
            sessions.insert(view, backbone.session()?);
        }
        let text_states = match &bundle.items.text_state {
            Some(states) => states.clone(),
            None => item_text_states(
                &backbone,
                &bundle.manifest.views.semantic.template,
                &bundle.items.texts,
                progress,
            )?,
        };
        let vectors = item_vectors(&bundle, &text_states);
        let bias = bundle.items.bias.clone();
        let catalog = CatalogMatrix::new(
            vectors.clone(),
            bundle.manifest.dims.d_r,
            bias.clone(),
            Storage::F32,
        )?;
        let scorer = Scorer::auto(catalog);
        let ids = bundle.items.ids.clone();
        let texts = bundle.items.texts.clone();
        let rows = ids
            .iter()
            .enumerate()
            .map(|(i, id)| (id.clone(), i as u32))
            .collect();
        Ok(Self {
            backbone,
            bundle,
            experts,
            sessions,
            scorer,
            ids,
            texts,
            rows,
            vectors,
            bias,
        })
    }

    /// Adds items the bundle never saw (replacing earlier cold items) and puts
    /// the grown catalog on the scorer.
    pub fn set_cold_items(&mut self, cold: &[ColdItem]) -> Result<(), ModelError> {
        let n = self.bundle.items.ids.len();
        let (d_r, q) = (self.bundle.manifest.dims.d_r, &self.bundle.heads.text_proj);
        self.ids.truncate(n);
        self.texts.truncate(n);
        self.vectors.truncate(n * d_r);
        self.bias.truncate(n);
        self.rows.retain(|_, r| (*r as usize) < n);
        for item in cold {
            if self.rows.contains_key(&item.id) {
                continue;
            }
            self.rows.insert(item.id.clone(), self.ids.len() as u32);
            self.ids.push(item.id.clone());
            self.texts.push(item.text.clone());
            self.vectors
                .extend(kernels::project(&q.weight, &q.bias, &item.text_state));
            self.bias.push(0.0);
        }
        let catalog =
            CatalogMatrix::new(self.vectors.clone(), d_r, self.bias.clone(), Storage::F32)?;
        self.scorer = Scorer::auto(catalog);
        Ok(())
    }

    /// The base backbone's state of `text` as a one-item semantic history
    /// (what a cold item needs).
    pub fn text_state(&mut self, text: &str) -> Result<Vec<f32>, ModelError> {
        let template = self.bundle.manifest.views.semantic.template.clone();
        let prompt = template.render(View::Semantic, [ItemRef { id: "", text }]);
        let tokens = self.backbone.tokenize(&prompt)?;
        let session = self
            .sessions
            .get_mut(&View::Semantic)
            .expect("a session per view");
        session.set_mixture(&[])?;
        Ok(session.state_fresh(&tokens)?)
    }

    /// Catalog row of an item id (bundle items and cold items).
    pub fn row(&self, id: &str) -> Option<u32> {
        self.rows.get(id).copied()
    }

    pub fn item_id(&self, row: u32) -> &str {
        &self.ids[row as usize]
    }

    pub fn item_text(&self, row: u32) -> &str {
        &self.texts[row as usize]
    }

    /// Rows in the catalog (bundle and cold items).
    pub fn catalog_len(&self) -> usize {
        self.ids.len()
    }

    /// `e_i` of every row, `[rows, d_r]`, and the biases.
    pub fn item_vectors(&self) -> (&[f32], &[f32]) {
        (&self.vectors, &self.bias)
    }

    /// The experts of a view.
    pub fn expert_count(&self, view: View) -> usize {
        self.experts[&view].len()
    }

    /// The gate's scales for `phi` (SPEC step 1).
    pub fn scales(&self, view: View, phi: &[f32]) -> Vec<f32> {
        let gate = self.bundle.heads.gate(view);
        kernels::gate(
            &gate.weight,
            &gate.bias,
            phi,
            self.bundle.manifest.views.get(view).k,
        )
    }

    /// Teacher forcing (SPEC "Training"): one pass of `view` under the mixture
    /// `scales` gives the state at the end of every item of `history` (the
    /// last token of its separator), `[len, d]`.
    pub fn states_after_each_item(
        &mut self,
        view: View,
        scales: &[f32],
        history: &[u32],
    ) -> Result<Vec<Vec<f32>>, ModelError> {
        self.check_rows(history)?;
        let template = self.bundle.manifest.views.get(view).template.clone();
        let render = |items: &[u32]| {
            template.render(
                view,
                items.iter().map(|&r| ItemRef {
                    id: &self.ids[r as usize],
                    text: &self.texts[r as usize],
                }),
            )
        };
        let tokens = self.backbone.tokenize(&render(history))?;
        let mut ends = Vec::with_capacity(history.len());
        for i in 1..=history.len() {
            // Token boundaries are where the prefix's own tokenization ends; a
            // separator that merged with the next item would shift them, so
            // clamp to stay ascending and inside the prompt.
            let len = self.backbone.tokenize(&render(&history[..i]))?.len();
            let floor = ends.last().map_or(0, |&e: &usize| e + 1);
            ends.push((len - 1).clamp(floor, tokens.len() - 1));
        }
        ends.dedup();
        let mixture: Vec<(&Expert, f32)> = self.experts[&view]
            .iter()
            .zip(scales.iter().copied())
            .collect();
        let session = self.sessions.get_mut(&view).expect("a session per view");
        session.set_mixture(&mixture)?;
        Ok(session.states_at(&tokens, &ends)?)
    }

    /// Projections and fusion (SPEC steps 5 and 6) for one pair of view states.
    pub fn heads(&self, h_b: &[f32], h_s: &[f32]) -> HeadsOut {
        let heads = &self.bundle.heads;
        let z_b = kernels::project(
            &heads.proj_behavioral.weight,
            &heads.proj_behavioral.bias,
            h_b,
        );
        let z_s = kernels::project(&heads.proj_semantic.weight, &heads.proj_semantic.bias, h_s);
        let fused = kernels::fuse(&heads.fusion.weight, &heads.fusion.bias, &z_b, &z_s);
        HeadsOut {
            z_b,
            z_s,
            u: fused.u,
            beta: fused.beta,
        }
    }

    fn check_rows(&self, history: &[u32]) -> Result<(), ModelError> {
        match history.iter().find(|&&r| r as usize >= self.ids.len()) {
            Some(&row) => Err(ModelError::UnknownRow {
                row,
                len: self.ids.len(),
            }),
            None => Ok(()),
        }
    }

    /// The user's trained `phi` from the bundle, or `phi_mean` for a user it lacks.
    pub fn user_phi(&self, user: &str) -> Vec<f32> {
        let trained = self.bundle.users.as_ref().and_then(|u| u.phi_of(user));
        trained.unwrap_or(&self.bundle.heads.phi_mean).to_vec()
    }

    pub fn bundle(&self) -> &Bundle {
        &self.bundle
    }

    pub fn backbone(&self) -> &Backbone {
        &self.backbone
    }

    pub fn scorer(&self) -> &Scorer {
        &self.scorer
    }

    /// The user's preference `u` (SPEC steps 1-6) for a history of catalog
    /// rows, oldest first; only the last `history.max_items` count.
    pub fn preference(&mut self, phi: &[f32], history: &[u32]) -> Result<Preference, ModelError> {
        let m = &self.bundle.manifest;
        if phi.len() != m.dims.d_phi {
            return Err(ModelError::PhiSize {
                found: phi.len(),
                expected: m.dims.d_phi,
            });
        }
        self.check_rows(history)?;
        let history = &history[history.len().saturating_sub(m.history.max_items)..];
        let history = history.to_vec();
        let mut timings = StepTimings::default();
        let mut scales = BTreeMap::new();
        let mut states = [Vec::new(), Vec::new()];
        for view in View::BOTH {
            let started = Instant::now();
            let g = self.scales(view, phi);
            timings.gate += started.elapsed();

            let started = Instant::now();
            states[view as usize] = self.view_state(view, &g, &history)?;
            match view {
                View::Behavioral => timings.behavioral = started.elapsed(),
                View::Semantic => timings.semantic = started.elapsed(),
            }
            timings.tokens_evaluated += self.sessions[&view].tokens_evaluated_last();
            scales.insert(view, g);
        }
        // The same heads as every other caller (cached states, personalization).
        let started = Instant::now();
        let out = self.heads(&states[0], &states[1]);
        timings.heads = started.elapsed();
        Ok(Preference {
            u: out.u,
            beta: out.beta,
            scales,
            timings,
            states,
        })
    }

    fn view_state(
        &mut self,
        view: View,
        scales: &[f32],
        history: &[u32],
    ) -> Result<Vec<f32>, ModelError> {
        let (ids, texts) = (&self.ids, &self.texts);
        let mixture: Vec<(&Expert, f32)> = self.experts[&view]
            .iter()
            .zip(scales.iter().copied())
            .collect();
        let template = &self.bundle.manifest.views.get(view).template;
        let n_ctx = self.backbone.config().n_ctx as usize;
        // Keep the newest items that fit the context (SPEC: the last items count).
        let mut first = 0;
        let tokens = loop {
            let refs = history[first..].iter().map(|&r| ItemRef {
                id: &ids[r as usize],
                text: &texts[r as usize],
            });
            let tokens = self.backbone.tokenize(&template.render(view, refs))?;
            if tokens.len() <= n_ctx || first == history.len() {
                break tokens;
            }
            first += 1;
        };
        let session = self.sessions.get_mut(&view).expect("a session per view");
        session.set_mixture(&mixture)?;
        Ok(session.state(&tokens)?)
    }

    /// The top `k` catalog rows for a preference (SPEC step 8), never one of
    /// `exclude`.
    pub fn top_k(
        &self,
        pref: &mut Preference,
        exclude: &[u32],
        k: usize,
    ) -> Result<Vec<Hit>, ModelError> {
        let started = Instant::now();
        let mut sorted = exclude.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        let hits = self.scorer.top_k(&pref.u, &sorted, k)?;
        pref.timings.score = started.elapsed();
        Ok(hits)
    }
}

/// `e_i = E[i] + Q t_i + q` for every item, `[N, d_r]`.
fn item_vectors(bundle: &Bundle, text_states: &[f32]) -> Vec<f32> {
    let (d, d_r) = (bundle.manifest.dims.d, bundle.manifest.dims.d_r);
    let q = &bundle.heads.text_proj;
    let mut rows = Vec::with_capacity(bundle.items.ids.len() * d_r);
    for (i, t) in text_states.chunks_exact(d).enumerate() {
        let projected = kernels::project(&q.weight, &q.bias, t);
        let id_row = &bundle.items.id_embedding[i * d_r..(i + 1) * d_r];
        rows.extend(projected.iter().zip(id_row).map(|(a, b)| a + b));
    }
    rows
}
