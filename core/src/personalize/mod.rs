//! On-device personalization (SPEC "On-device personalization"): refines a
//! user's `phi` from their own history. The protocol, in order:
//!
//! 1. **linearize**: per view, passes at the current mixture and each expert
//!    alone give `h(g)` around `g0` (`gradient::Linearization`). When the
//!    experts leave lower layers unadapted, one full pass per view keeps the
//!    stream entering the first adapted layer and every pass after it runs
//!    the upper layers alone (`crate::upper`): the same states (bit for bit
//!    for f32 experts with a power-of-two `alpha / r`),
//!    for a fraction of the work (2 of Gemma 3 270M's 18 layers);
//! 2. **split** the next-item targets into train and held-back ones;
//! 3. **descend** on the linearized train loss (`gradient.rs`);
//! 4. **measure** the held-back loss for real, before (from the pass at the
//!    current mixture) and after (one more pass per view);
//! 5. **decide**: the new `phi` is returned only if that loss improved.
//!
//! It knows the model (states, heads, items) but no store: the engine saves.

mod gradient;

pub use gradient::{
    cross_entropy, descend, loss_and_gradient, CollabStates, Linearization, Problem,
};

use serde::{Deserialize, Serialize};

use crate::backbone::UpperSession;
use crate::model::{L2Rec, ModelError, ViewLower};
use crate::per_view::PerView;
use crate::progress::Progress;
use crate::prompt::View;

#[derive(Debug, Clone, Copy)]
pub struct PersonalizeOptions {
    /// Gradient-descent steps on the linearized loss (no backbone work each).
    pub steps: usize,
    pub learning_rate: f32,
    pub l2: f32,
    /// Share of the user's next-item targets held back to decide whether to save.
    pub holdout: f32,
}

impl Default for PersonalizeOptions {
    fn default() -> Self {
        Self {
            steps: 30,
            learning_rate: 0.5,
            l2: 0.01,
            holdout: 0.25,
        }
    }
}

impl PersonalizeOptions {
    /// Most descent steps one call may take.
    pub const MAX_STEPS: usize = 10_000;

    /// Refuses options that would give NaN losses or save a `phi` no held-back
    /// loss vouches for; the message says which and why.
    pub fn validate(&self) -> Result<(), String> {
        if self.steps == 0 || self.steps > Self::MAX_STEPS {
            return Err(format!(
                "personalize steps must be 1 to {}, got {}",
                Self::MAX_STEPS,
                self.steps
            ));
        }
        if !(self.learning_rate.is_finite() && self.learning_rate > 0.0) {
            return Err(format!(
                "personalize learning_rate must be finite and above 0, got {}",
                self.learning_rate
            ));
        }
        if !(self.l2.is_finite() && self.l2 >= 0.0) {
            return Err(format!(
                "personalize l2 must be finite and at least 0, got {}",
                self.l2
            ));
        }
        if !(self.holdout > 0.0 && self.holdout < 1.0) {
            return Err(format!(
                "personalize holdout is the share of targets held back: strictly between 0 and 1, got {}",
                self.holdout
            ));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PersonalizeReport {
    pub train_loss_before: f32,
    pub train_loss_after: f32,
    pub held_out_loss_before: f32,
    pub held_out_loss_after: f32,
    pub saved: bool,
    /// Passes from the backbone's first layer: through every layer, or up
    /// to the first adapted one to feed the upper passes.
    pub backbone_passes: usize,
    /// Passes through the upper layers alone (fed a full pass's lower states).
    #[serde(default)]
    pub upper_passes: usize,
    /// `|phi_new - phi_old|` and the initial gradient's norm, for diagnosis.
    pub phi_step: f32,
    pub gradient_norm: f32,
    pub reason: String,
}

impl PersonalizeReport {
    fn not_run(reason: &str) -> Self {
        Self {
            train_loss_before: 0.0,
            train_loss_after: 0.0,
            held_out_loss_before: 0.0,
            held_out_loss_after: 0.0,
            saved: false,
            backbone_passes: 0,
            upper_passes: 0,
            phi_step: 0.0,
            gradient_norm: 0.0,
            reason: reason.to_owned(),
        }
    }
}

/// What a run decided: the report, and the new `phi` when it is to be saved.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub report: PersonalizeReport,
    pub phi: Option<Vec<f32>>,
}

/// Fewest history items a run learns from.
pub const MIN_HISTORY: usize = 3;

/// Runs the protocol for a user with `history` (catalog rows, oldest first)
/// and current `phi0`. Progress counts backbone passes.
pub fn run(
    model: &mut L2Rec,
    history: &[u32],
    phi0: &[f32],
    options: &PersonalizeOptions,
    progress: &mut Progress,
) -> Result<Outcome, ModelError> {
    let not_run = |reason| Outcome {
        report: PersonalizeReport::not_run(reason),
        phi: None,
    };
    let experts = PerView::from_fn(|v| model.expert_count(v));
    if experts.behavioral + experts.semantic == 0 {
        return Ok(not_run("the bundle has no experts: nothing to personalize"));
    }
    // The same items recommend reads, as far as both views' prompts show them;
    // the collaborative state after each of them reads all of the recent history.
    let recent = model.recent(history);
    let history = model.fitting_suffix(recent)?.to_vec();
    if history.len() < MIN_HISTORY {
        return Ok(not_run("fewer than 3 events: not enough to learn from"));
    }
    let collab = model.collab_each(recent)?.and_then(|mut each| {
        let tail = each.split_off(each.len() - history.len());
        CollabStates::from_each(tail)
    });
    let (train, held_out) = split_targets(&history, options.holdout);
    let run = Run {
        history: &history,
        train: &train,
        held_out: &held_out,
        collab: collab.as_ref(),
    };
    protocol(model, &run, phi0, options, progress)
}

/// What one run learns from: the history its prompts show, its targets,
/// and the collaborative states along it (version 2).
struct Run<'r> {
    history: &'r [u32],
    train: &'r [Target],
    held_out: &'r [Target],
    collab: Option<&'r CollabStates>,
}

/// The backbone passes, the descent and the decision of [`run`].
fn protocol(
    model: &mut L2Rec,
    run: &Run,
    phi0: &[f32],
    options: &PersonalizeOptions,
    progress: &mut Progress,
) -> Result<Outcome, ModelError> {
    let Run {
        history,
        train,
        held_out,
        collab,
    } = *run;
    let experts = PerView::from_fn(|v| model.expert_count(v));
    // Per view: the current mixture and each expert alone, then the mixture
    // descent found, for the held-back loss after; through the upper layers
    // where the bundle's experts allow it (held for this run only: 8 MB).
    let upper = upper_run(model, progress);
    let total = passes_needed(experts, upper.is_some());
    let mut passes = Passes {
        history,
        done: 0,
        total,
        progress,
        upper,
        full: 0,
        upper_done: 0,
    };
    let gate_c = collab.map(|c| c.last.as_slice());
    let views = PerView::try_from_fn(|view| linearize(model, &mut passes, view, phi0, gate_c))?;

    let heads = model.heads();
    let problem = Problem {
        heads,
        views,
        collab,
        items: model.items().vectors(),
        bias: model.items().bias(),
        phi_mean: model.phi_mean(),
        l2: options.l2,
    };
    let (train_before, gradient) = loss_and_gradient(&problem, phi0, train);
    let cancelled = || passes.progress.is_cancelled();
    let phi = descend(
        &problem,
        phi0,
        train,
        options.steps,
        options.learning_rate,
        &cancelled,
    )?;
    let (train_after, _) = loss_and_gradient(&problem, &phi, train);

    // The start's held-back loss reads the passes at g0 the linearization made.
    let at_g0 = problem.views.as_ref().map(|_, l| l.at_g0.as_slice());
    let held_before = loss_of_states(model, at_g0, collab, held_out);
    let held_after = measured_loss(model, &mut passes, &phi, collab, held_out)?;
    passes.progress.finish(total);
    let saved = held_after < held_before;
    let report = PersonalizeReport {
        train_loss_before: train_before,
        train_loss_after: train_after,
        held_out_loss_before: held_before,
        held_out_loss_after: held_after,
        saved,
        backbone_passes: passes.full,
        upper_passes: passes.upper_done,
        phi_step: norm(phi.iter().zip(phi0).map(|(a, b)| a - b)),
        gradient_norm: norm(gradient.iter().copied()),
        reason: if saved {
            "held-back loss improved".into()
        } else {
            "held-back loss did not improve; kept the old phi".into()
        },
    };
    Ok(Outcome {
        report,
        phi: saved.then_some(phi),
    })
}

/// The upper layers for one run, or `None` (full passes) where the bundle
/// leaves no layer to skip or they cannot be built: they only save time, so
/// a failure (a full disk, an unwritable store directory) is logged, and the
/// run goes on with full passes.
fn upper_run(model: &L2Rec, progress: &Progress) -> Option<UpperRun> {
    let built = model.upper_layers().and_then(|layers| {
        let Some(layers) = layers else {
            return Ok(None);
        };
        let session = layers.session()?;
        session.watch_cancel(progress.cancel_token());
        Ok(Some(UpperRun {
            session,
            from: layers.from_layer(),
            lower: PerView::from_fn(|_| None),
        }))
    });
    built.unwrap_or_else(|e| {
        tracing::warn!("personalization runs full passes: the upper layers failed: {e}");
        None
    })
}

/// Backbone passes of one run: per view the current mixture and each expert
/// alone, and the new mixture for the held-back loss after descent; with the
/// upper layers, one full pass per view more, for the lower states.
fn passes_needed(experts: PerView<usize>, upper: bool) -> usize {
    let mixtures = (1 + experts.behavioral + 1) + (1 + experts.semantic + 1);
    mixtures + if upper { 2 } else { 0 }
}

/// A next-item target: the state after the item at `.0` predicts row `.1`.
type Target = (usize, u32);

/// The targets of a history, the last `holdout` share held back (at least
/// one of each).
fn split_targets(history: &[u32], holdout: f32) -> (Vec<Target>, Vec<Target>) {
    let targets: Vec<Target> = (0..history.len() - 1)
        .map(|t| (t, history[t + 1]))
        .collect();
    let held = ((targets.len() as f32 * holdout).ceil() as usize).clamp(1, targets.len() - 1);
    let (train, held_out) = targets.split_at(targets.len() - held);
    (train.to_vec(), held_out.to_vec())
}

/// Counts, reports and runs the backbone passes of one run (each checks
/// for cancellation first).
struct Passes<'p, 'a> {
    history: &'p [u32],
    done: usize,
    total: usize,
    progress: &'p mut Progress<'a>,
    upper: Option<UpperRun>,
    /// Passes from the first layer (full or lower), and of the upper layers.
    full: usize,
    upper_done: usize,
}

/// The upper layers' session and, once its full pass is made, each view's
/// lower states.
struct UpperRun {
    session: UpperSession,
    from: usize,
    lower: PerView<Option<ViewLower>>,
}

impl Passes<'_, '_> {
    /// Ticks progress (checking for cancellation) and counts one pass.
    fn tick(&mut self) -> Result<(), ModelError> {
        self.progress.tick(self.done, self.total)?;
        self.done += 1;
        Ok(())
    }

    fn states(
        &mut self,
        model: &mut L2Rec,
        view: View,
        scales: &[f32],
    ) -> Result<Vec<Vec<f32>>, ModelError> {
        self.tick()?;
        let states = match self.upper.take() {
            None => {
                self.full += 1;
                model.states_after_each_item(view, scales, self.history)
            }
            Some(mut run) => {
                let states = self.upper_states(model, &mut run, view, scales);
                self.upper = Some(run);
                states
            }
        }?;
        if states.len() != self.history.len() {
            return Err(ModelError::Degenerate(format!(
                "the {view} prompt kept {} of {} items",
                states.len(),
                self.history.len()
            )));
        }
        Ok(states)
    }

    /// `view`'s states under `scales` through the upper layers, after the
    /// view's full pass for its lower states if this is its first.
    fn upper_states(
        &mut self,
        model: &mut L2Rec,
        run: &mut UpperRun,
        view: View,
        scales: &[f32],
    ) -> Result<Vec<Vec<f32>>, ModelError> {
        let lower = match &mut run.lower[view] {
            Some(lower) => lower,
            slot @ None => {
                self.tick()?;
                self.full += 1;
                slot.insert(model.lower_states(view, self.history, run.from)?)
            }
        };
        self.upper_done += 1;
        model.states_after_each_item_upper(&mut run.session, view, scales, lower)
    }
}

fn linearize(
    model: &mut L2Rec,
    passes: &mut Passes,
    view: View,
    phi0: &[f32],
    gate_c: Option<&[f32]>,
) -> Result<Linearization, ModelError> {
    let g0 = model.heads().scales(view, phi0, gate_c);
    let at_g0 = passes.states(model, view, &g0)?;
    let mut directions = Vec::with_capacity(g0.len());
    for k in 0..g0.len() {
        let mut one = vec![0.0; g0.len()];
        one[k] = 1.0;
        let alone = passes.states(model, view, &one)?;
        // h(e_k) - h(g0), not h(e_k) - h(0): the scales sum to one, so a shift
        // shared by every direction cancels (gradient::Linearization), and the
        // base pass is saved.
        directions.push(
            alone
                .iter()
                .zip(&at_g0)
                .map(|(a, b)| a.iter().zip(b).map(|(x, y)| x - y).collect())
                .collect(),
        );
    }
    Ok(Linearization {
        g0,
        at_g0,
        directions,
    })
}

/// The mean next-item loss over `targets` from view states measured under
/// `phi`'s mixture (not through the linear model).
fn measured_loss(
    model: &mut L2Rec,
    passes: &mut Passes,
    phi: &[f32],
    collab: Option<&CollabStates>,
    targets: &[Target],
) -> Result<f32, ModelError> {
    let scales = model
        .heads()
        .all_scales(phi, collab.map(|c| c.last.as_slice()));
    let states = PerView::try_from_fn(|view| passes.states(model, view, &scales[view]))?;
    let states = states.as_ref().map(|_, s| s.as_slice());
    Ok(loss_of_states(model, states, collab, targets))
}

/// The mean next-item loss over `targets` from both views' states after each
/// history item.
fn loss_of_states(
    model: &L2Rec,
    states: PerView<&[Vec<f32>]>,
    collab: Option<&CollabStates>,
    targets: &[Target],
) -> f32 {
    let heads = model.heads();
    let items = model.items();
    let total: f64 = targets
        .iter()
        .map(|&(pos, target)| {
            let c = collab.map(|c| c.each[pos].as_slice());
            let u = heads
                .user(&states.behavioral[pos], &states.semantic[pos], c)
                .u;
            cross_entropy(items.vectors(), items.bias(), &u, target).0
        })
        .sum();
    (total / targets.len().max(1) as f64) as f32
}

fn norm(values: impl Iterator<Item = f32>) -> f32 {
    values.map(|x| x * x).sum::<f32>().sqrt()
}
