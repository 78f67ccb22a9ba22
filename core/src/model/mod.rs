//! The L2Rec forward pass (SPEC steps 1-8), composed from the parts: the
//! backbone computes view states, the heads (`heads`) turn them into a
//! preference, the item table (`items`) and the scorer rank the catalog.
//! The model computes; it knows nothing of users, stores or events.
//!
//! - `heads.rs`: gate, projections, fusion, item vectors (the one forward).
//! - `render.rs`: a view's prompt fitted to the context (the one rule).
//! - `items.rs`: the item table, bundle items then cold items.
//! - `explain.rs`: which history items pulled a recommendation up.

mod explain;
mod heads;
mod items;
mod render;

use std::time::{Duration, Instant};

pub use explain::reasons;
pub use heads::{GateOut, HeadsForward, HeadsOut};
pub use items::{ColdItem, ItemTable};
pub use render::{fit_prompt, item_ends, FittedPrompt};

use crate::backbone::{
    Backbone, BackboneError, Expert, LowerStates, Session, UpperLayers, UpperSession,
};
use crate::bundle::{Bundle, BundleError};
use crate::kernels::{Hit, KernelError, Scorer};
use crate::per_view::PerView;
use crate::progress::{CancelToken, Cancelled, Progress};
use crate::prompt::{cap_text, ItemRef, Template, View};

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

impl ModelError {
    /// A cancelled call, whichever layer noticed it.
    pub fn is_cancelled(&self) -> bool {
        matches!(
            self,
            ModelError::Cancelled | ModelError::Backbone(BackboneError::Cancelled)
        )
    }
}

impl From<Cancelled> for ModelError {
    fn from(_: Cancelled) -> Self {
        ModelError::Cancelled
    }
}

/// The base backbone's state of each text rendered as a one-item semantic
/// history (SPEC step 7's `t_i`), `[N, d]`. Each item is encoded alone, from
/// scratch, so the result does not depend on batching.
pub fn item_text_states(
    backbone: &Backbone,
    template: &Template,
    texts: &[String],
    progress: &mut Progress,
) -> Result<Vec<f32>, ModelError> {
    let mut session = backbone.session()?;
    let mut states = Vec::with_capacity(texts.len() * backbone.n_embd());
    for (i, text) in texts.iter().enumerate() {
        progress.tick(i, texts.len())?;
        let prompt = template.render(View::Semantic, [ItemRef::text_only(text)]);
        states.extend(session.state_fresh(&backbone.tokenize(&prompt)?)?);
    }
    progress.finish(texts.len());
    Ok(states)
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
    /// Expert scales `g_v`.
    pub scales: PerView<Vec<f32>>,
    pub timings: StepTimings,
    /// The view states `h_b`, `h_s` it came from.
    pub states: PerView<Vec<f32>>,
    /// The collaborative state `c` (version 2; `None` in version 1).
    pub collab: Option<Vec<f32>>,
}

/// A bundle ready to serve: experts loaded, item vectors on the scorer.
pub struct L2Rec {
    backbone: Backbone,
    bundle: Bundle,
    experts: PerView<Vec<Expert>>,
    sessions: PerView<Session>,
    scorer: Scorer,
    items: ItemTable,
}

impl L2Rec {
    /// Loads the bundle's experts into the backbone and puts the catalog
    /// (`e_i = E[i] + Q t_i + q`, SPEC step 7) on the scorer. Item text states
    /// the bundle does not ship are computed here (with progress).
    pub fn new(
        backbone: Backbone,
        mut bundle: Bundle,
        progress: &mut Progress,
    ) -> Result<Self, ModelError> {
        let experts = PerView::try_from_fn(|view| {
            bundle.experts[view]
                .iter()
                .map(|p| backbone.load_expert(p))
                .collect::<Result<Vec<_>, _>>()
        })?;
        let sessions = PerView::try_from_fn(|_| backbone.session())?;
        // Taken, not cloned: the states are needed only for the item vectors
        // below, and kept they would hold 4 MB (ml-100k) for nothing.
        let text_states = match bundle.items.text_state.take() {
            Some(states) => states,
            None => item_text_states(
                &backbone,
                &bundle.manifest.views.semantic.template,
                &bundle.items.texts,
                progress,
            )?,
        };
        let items = bundle_items(&bundle, &text_states);
        let scorer = Scorer::auto(items.catalog_matrix()?);
        Ok(Self {
            backbone,
            bundle,
            experts,
            sessions,
            scorer,
            items,
        })
    }

    /// Adds items the bundle never saw (replacing earlier cold items) and puts
    /// the grown catalog on the scorer.
    pub fn set_cold_items(&mut self, cold: &[ColdItem]) -> Result<(), ModelError> {
        let heads = self.heads();
        let cap = self.bundle.manifest.max_text_chars;
        let capped: Vec<ColdItem> = cold
            .iter()
            .map(|c| ColdItem {
                text: cap_text(&c.text, cap).into_owned(),
                ..c.clone()
            })
            .collect();
        let vectors: Vec<Vec<f32>> = capped
            .iter()
            .map(|c| heads.item(&c.text_state, None))
            .collect();
        self.items.set_cold(capped.iter().zip(vectors));
        self.scorer = Scorer::auto(self.items.catalog_matrix()?);
        Ok(())
    }

    /// The base backbone's state of `text` as a one-item semantic history
    /// (what a cold item needs).
    pub fn text_state(&mut self, text: &str) -> Result<Vec<f32>, ModelError> {
        let template = &self.bundle.manifest.views.semantic.template;
        let text = cap_text(text, self.bundle.manifest.max_text_chars);
        let prompt = template.render(View::Semantic, [ItemRef::text_only(&text)]);
        let tokens = self.backbone.tokenize(&prompt)?;
        let session = &mut self.sessions[View::Semantic];
        session.set_mixture(&[])?;
        Ok(session.state_fresh(&tokens)?)
    }

    /// Makes `cancel` stop the backbone passes of both views midway (until
    /// `watch_cancel(None)`); a stopped pass fails with `Cancelled`.
    pub fn watch_cancel(&self, cancel: Option<&CancelToken>) {
        for view in View::BOTH {
            self.sessions[view].watch_cancel(cancel);
        }
    }

    /// The heads' forward over this bundle's layers.
    pub fn heads(&self) -> HeadsForward<'_> {
        heads_of(&self.bundle)
    }

    /// The catalog: bundle items, then cold items.
    pub fn items(&self) -> &ItemTable {
        &self.items
    }

    /// The experts of a view.
    pub fn expert_count(&self, view: View) -> usize {
        self.experts[view].len()
    }

    /// The part of a history the model reads (SPEC step 2: the last
    /// `history.max_items`).
    pub fn recent<'h>(&self, history: &'h [u32]) -> &'h [u32] {
        let max = self.bundle.manifest.history.max_items;
        &history[history.len().saturating_sub(max)..]
    }

    /// The user's trained `phi` from the bundle, or `phi_mean` for a user it lacks.
    pub fn user_phi(&self, user: &str) -> Vec<f32> {
        let trained = self.bundle.users.as_ref().and_then(|u| u.phi_of(user));
        trained.unwrap_or(&self.bundle.heads.phi_mean).to_vec()
    }

    pub fn phi_mean(&self) -> &[f32] {
        &self.bundle.heads.phi_mean
    }

    /// The bundle served, without `items.text_state` (consumed by
    /// [`L2Rec::new`] into the item vectors).
    pub fn bundle(&self) -> &Bundle {
        &self.bundle
    }

    pub fn backbone(&self) -> &Backbone {
        &self.backbone
    }

    pub fn scorer(&self) -> &Scorer {
        &self.scorer
    }

    fn check_phi(&self, phi: &[f32]) -> Result<(), ModelError> {
        let expected = self.bundle.manifest.dims.d_phi;
        if phi.len() != expected {
            return Err(ModelError::PhiSize {
                found: phi.len(),
                expected,
            });
        }
        Ok(())
    }

    /// The part of a history the views' prompts show (MODEL.md step 3: the
    /// newest `history.view_items`).
    pub fn view_window<'h>(&self, history: &'h [u32]) -> &'h [u32] {
        let n = self.bundle.manifest.history.view_window();
        &history[history.len().saturating_sub(n)..]
    }

    /// `view`'s prompt for the [`L2Rec::view_window`] of `history` (catalog
    /// rows, oldest first), fitted to the context.
    pub fn fit(&self, view: View, history: &[u32]) -> Result<FittedPrompt, ModelError> {
        let history = self.view_window(history);
        self.items.check_rows(history)?;
        let refs: Vec<ItemRef> = history.iter().map(|&r| self.items.item_ref(r)).collect();
        let n_ctx = self.backbone.config().n_ctx as usize;
        let template = &self.bundle.manifest.views.get(view).template;
        Ok(fit_prompt(&self.backbone, template, view, &refs, n_ctx)?)
    }

    /// The newest part of `history` that both views' prompts show whole (what
    /// teacher forcing can use): within the view window, what fits.
    pub fn fitting_suffix<'h>(&self, history: &'h [u32]) -> Result<&'h [u32], ModelError> {
        let history = self.view_window(history);
        let mut first = 0;
        for view in View::BOTH {
            first = first.max(self.fit(view, history)?.first);
        }
        Ok(&history[first..])
    }

    /// Teacher forcing (SPEC "Training"): one pass of `view` under the mixture
    /// `scales` gives the state at the end of every item the fitted prompt
    /// keeps (the last token of its separator), `[kept, d]`, oldest first.
    pub fn states_after_each_item(
        &mut self,
        view: View,
        scales: &[f32],
        history: &[u32],
    ) -> Result<Vec<Vec<f32>>, ModelError> {
        let plan = self.teacher_prompt(view, history)?;
        let mixture = mixture(&self.experts[view], scales);
        let session = &mut self.sessions[view];
        session.set_mixture(&mixture)?;
        let states = session.states_at(&plan.tokens, &plan.positions)?;
        Ok(plan.spread(&states))
    }

    /// The first layer the experts adapt, when layers below it exist: a
    /// mixture's pass can then start there (`crate::upper`).
    pub fn upper_from(&self) -> Option<usize> {
        let from = *self.bundle.manifest.lora.layers.iter().min()? as usize;
        (from > 0).then_some(from)
    }

    /// The backbone's layers from [`L2Rec::upper_from`] as a model of their
    /// own (about 8 MB for the ml-100k bundle's two), or `None` where no
    /// layer can be skipped or the backbone's architecture is not supported.
    pub fn upper_layers(&self) -> Result<Option<UpperLayers>, ModelError> {
        match self.upper_from() {
            Some(from) => Ok(self.backbone.upper_layers(from)?),
            None => Ok(None),
        }
    }

    /// One full pass of `view`'s teacher-forcing prompt for `history` that
    /// keeps the stream entering layer `from` at every token: any mixture's
    /// states after each item then cost the upper layers only
    /// ([`L2Rec::states_after_each_item_upper`]).
    pub fn lower_states(
        &mut self,
        view: View,
        history: &[u32],
        from: usize,
    ) -> Result<ViewLower, ModelError> {
        // Below `from` the mixture changes nothing: the session's own serves.
        let plan = self.teacher_prompt(view, history)?;
        let lower = self.sessions[view].lower_states(&plan.tokens, &plan.positions, from)?;
        Ok(ViewLower { plan, lower })
    }

    /// [`L2Rec::states_after_each_item`] for the prompt of `lower`, through
    /// the upper layers alone: the same states (bit for bit for f32 experts
    /// with a power-of-two `alpha/r`; to rounding otherwise; on this
    /// backbone, `core/tests/backbone.rs`).
    pub fn states_after_each_item_upper(
        &self,
        session: &mut UpperSession,
        view: View,
        scales: &[f32],
        lower: &ViewLower,
    ) -> Result<Vec<Vec<f32>>, ModelError> {
        session.set_mixture(&mixture(&self.experts[view], scales))?;
        let states = session.states_at(&lower.lower, &lower.plan.positions)?;
        Ok(lower.plan.spread(&states))
    }

    /// `view`'s fitted prompt for `history` and where each item ends in it.
    fn teacher_prompt(&self, view: View, history: &[u32]) -> Result<TeacherPrompt, ModelError> {
        let history = self.view_window(history);
        let prompt = self.fit(view, history)?;
        let refs: Vec<ItemRef> = history.iter().map(|&r| self.items.item_ref(r)).collect();
        let template = &self.bundle.manifest.views.get(view).template;
        let ends = item_ends(&self.backbone, template, view, &refs, &prompt)?;
        let mut positions = ends.clone();
        positions.dedup();
        Ok(TeacherPrompt {
            tokens: prompt.tokens,
            positions,
            ends,
        })
    }

    /// MODEL.md step 0: the collaborative state after the recent part of
    /// `history` (`None` for a version 1 bundle).
    pub fn collab(&self, history: &[u32]) -> Result<Option<Vec<f32>>, ModelError> {
        self.items.check_rows(history)?;
        let history = self.recent(history);
        Ok(self
            .heads()
            .collab(history.iter().map(|&r| self.items.vector(r))))
    }

    /// `c` after every item of `history` (teacher forcing; all of it counts).
    pub fn collab_each(&self, history: &[u32]) -> Result<Option<Vec<Vec<f32>>>, ModelError> {
        self.items.check_rows(history)?;
        Ok(self
            .heads()
            .collab_each(history.iter().map(|&r| self.items.vector(r))))
    }

    /// The expert scales of both views for `phi` and a history (version 2
    /// gates read the history's collaborative state).
    pub fn scales(&self, phi: &[f32], history: &[u32]) -> Result<PerView<Vec<f32>>, ModelError> {
        self.scales_for(phi, self.collab(history)?.as_deref())
    }

    /// The expert scales for `phi` and a collaborative state already at hand.
    pub fn scales_for(
        &self,
        phi: &[f32],
        collab: Option<&[f32]>,
    ) -> Result<PerView<Vec<f32>>, ModelError> {
        self.check_phi(phi)?;
        Ok(self.heads().all_scales(phi, collab))
    }

    /// The user's preference `u` (MODEL.md steps 0-6) for a history of catalog
    /// rows, oldest first; only the [`L2Rec::recent`] items count.
    pub fn preference(&mut self, phi: &[f32], history: &[u32]) -> Result<Preference, ModelError> {
        self.check_phi(phi)?;
        self.items.check_rows(history)?;
        let history = self.recent(history);
        let mut timings = StepTimings::default();
        let started = Instant::now();
        let collab = self.collab(history)?;
        let scales = self.heads().all_scales(phi, collab.as_deref());
        timings.gate = started.elapsed();
        let mut states = PerView::<Vec<f32>>::default();
        for view in View::BOTH {
            let started = Instant::now();
            states[view] = self.view_state(view, &scales[view], history)?;
            match view {
                View::Behavioral => timings.behavioral = started.elapsed(),
                View::Semantic => timings.semantic = started.elapsed(),
            }
            timings.tokens_evaluated += self.sessions[view].tokens_evaluated_last();
        }
        let started = Instant::now();
        let out = self
            .heads()
            .user(&states.behavioral, &states.semantic, collab.as_deref());
        timings.heads = started.elapsed();
        Ok(Preference {
            u: out.u,
            beta: out.beta,
            scales,
            timings,
            states,
            collab,
        })
    }

    /// The preference from view states computed earlier for the same history
    /// and mixture (a cache hit), with that history's [`L2Rec::collab`]
    /// state: the heads alone.
    pub fn preference_from_states(
        &self,
        phi: &[f32],
        collab: Option<Vec<f32>>,
        states: PerView<Vec<f32>>,
    ) -> Result<Preference, ModelError> {
        self.check_phi(phi)?;
        let heads = self.heads();
        let out = heads.user(&states.behavioral, &states.semantic, collab.as_deref());
        Ok(Preference {
            u: out.u,
            beta: out.beta,
            scales: heads.all_scales(phi, collab.as_deref()),
            timings: StepTimings::default(),
            states,
            collab,
        })
    }

    fn view_state(
        &mut self,
        view: View,
        scales: &[f32],
        history: &[u32],
    ) -> Result<Vec<f32>, ModelError> {
        let prompt = self.fit(view, history)?;
        let mixture = mixture(&self.experts[view], scales);
        let session = &mut self.sessions[view];
        session.set_mixture(&mixture)?;
        Ok(session.state(&prompt.tokens)?)
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

/// A teacher-forcing prompt: its tokens, the distinct positions whose states
/// are read, and the position each kept item ends at (ascending).
#[derive(Debug, Clone)]
struct TeacherPrompt {
    tokens: Vec<crate::backbone::Token>,
    positions: Vec<usize>,
    ends: Vec<usize>,
}

impl TeacherPrompt {
    /// One state per item from one per distinct position: items whose ends
    /// coincide share the state there.
    fn spread(&self, states: &[Vec<f32>]) -> Vec<Vec<f32>> {
        self.ends
            .iter()
            .map(|e| states[self.positions.partition_point(|p| p < e)].clone())
            .collect()
    }
}

/// A view's teacher-forcing prompt with the stream below the experts' layers
/// at every token ([`L2Rec::lower_states`]).
#[derive(Debug, Clone)]
pub struct ViewLower {
    plan: TeacherPrompt,
    lower: LowerStates,
}

fn mixture<'e>(experts: &'e [Expert], scales: &[f32]) -> Vec<(&'e Expert, f32)> {
    experts.iter().zip(scales.iter().copied()).collect()
}

/// The forward of `bundle`'s heads with its views' `k_v`.
fn heads_of(bundle: &Bundle) -> HeadsForward<'_> {
    let views = &bundle.manifest.views;
    HeadsForward::new(&bundle.heads, views.as_ref().map(|_, v| v.k))
}

/// The bundle's items with `e_i = E[i] + Q t_i + q`.
fn bundle_items(bundle: &Bundle, text_states: &[f32]) -> ItemTable {
    let (d, d_r) = (bundle.manifest.dims.d, bundle.manifest.dims.d_r);
    let heads = heads_of(bundle);
    let items = &bundle.items;
    let vectors = text_states
        .chunks_exact(d)
        .zip(items.id_embedding.chunks_exact(d_r))
        .flat_map(|(t, id)| heads.item(t, Some(id)))
        .collect();
    ItemTable::new(
        items.ids.clone(),
        items.texts.clone(),
        vectors,
        items.bias.clone(),
        d_r,
    )
    .with_codes(items.codes.clone())
}
