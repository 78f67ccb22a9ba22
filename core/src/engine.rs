//! The on-device engine: the API the mobile bindings wrap. It composes the
//! verified backbone and bundle (`model`), the per-user store (`store`) and
//! personalization (`personalize`); thread-safe (`Send + Sync`).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub use crate::backbone::MAX_THREADS;
use crate::backbone::{Backbone, BackboneConfig, ModelInfo};
use crate::bundle::Bundle;
use crate::model::{ColdItem, L2Rec, ModelError};
use crate::personalize::{cross_entropy, descend, loss_and_gradient, Linearization, Problem};
use crate::prompt::View;
use crate::store::{Durability, Event, Store, StoreConfig, StoreError, StoredItem, UserRecord};

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("unknown item `{0}`: upsert it first, or give its text with the event to add it as a cold item")]
    UnknownItem(String),
    #[error("invalid argument: {0}")]
    Invalid(String),
    #[error("cancelled")]
    Cancelled,
}

impl From<crate::backbone::BackboneError> for EngineError {
    fn from(e: crate::backbone::BackboneError) -> Self {
        EngineError::Model(ModelError::Backbone(e))
    }
}

impl From<crate::bundle::BundleError> for EngineError {
    fn from(e: crate::bundle::BundleError) -> Self {
        EngineError::Model(ModelError::Bundle(e))
    }
}

/// Bounds on what callers may pass.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_id_bytes: usize,
    pub max_text_bytes: usize,
    pub max_k: usize,
    pub max_items_per_call: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_id_bytes: 256,
            max_text_bytes: 2048,
            max_k: 1000,
            max_items_per_call: 100_000,
        }
    }
}

/// How the engine opens.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub model_path: PathBuf,
    pub bundle_dir: PathBuf,
    pub store_path: PathBuf,
    /// 32 bytes from the platform keystore; `None` keeps the store in plaintext.
    pub master_key: Option<[u8; 32]>,
    pub durability: Durability,
    pub max_events_per_user: usize,
    pub threads: Option<u32>,
    pub limits: Limits,
}

impl EngineConfig {
    pub fn new(model_path: PathBuf, bundle_dir: PathBuf, store_path: PathBuf) -> Self {
        Self {
            model_path,
            bundle_dir,
            store_path,
            master_key: None,
            durability: Durability::Immediate,
            max_events_per_user: crate::store::DEFAULT_MAX_EVENTS_PER_USER,
            threads: None,
            limits: Limits::default(),
        }
    }
}

/// Cancels a long call from another thread.
#[derive(Debug, Clone, Default)]
pub struct CancelToken(Arc<AtomicBool>);

impl CancelToken {
    pub fn cancel(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// Progress of a long call: `(done, total)`.
pub type ProgressFn<'a> = &'a mut dyn FnMut(usize, usize);

/// An item of the host app's catalog.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ItemInput {
    pub id: String,
    pub text: String,
}

/// Something a user did with an item.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventInput {
    pub item_id: String,
    pub timestamp_ms: i64,
    pub kind: String,
    /// The item's text, for an item the engine does not know yet.
    pub item_text: Option<String>,
}

#[derive(Debug, Clone, Copy, Default)]
pub struct RecommendOptions {
    /// Allow items the user already interacted with.
    pub include_history: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Recommendation {
    pub item_id: String,
    pub text: String,
    pub score: f32,
}

/// Why a user gets what they get.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Explanation {
    /// Expert scales per view.
    pub expert_scales: BTreeMap<View, Vec<f32>>,
    /// Mean fusion weight of each view (they sum to 1).
    pub view_weight: BTreeMap<View, f32>,
    /// For each recommendation, the history items most similar to it in the
    /// scoring space (the ones that pulled it up most).
    pub reasons: Vec<(String, Vec<String>)>,
}

#[derive(Debug, Clone, Copy)]
pub struct PersonalizeOptions {
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
    /// Most descent steps one call may take (each is a pass over the
    /// linearized loss, no backbone work).
    pub const MAX_STEPS: usize = 10_000;

    /// Refuses options that would give NaN losses or save a `phi` no held-back
    /// loss vouches for.
    pub fn validate(&self) -> Result<(), EngineError> {
        let invalid = |what: String| Err(EngineError::Invalid(what));
        if self.steps == 0 || self.steps > Self::MAX_STEPS {
            return invalid(format!(
                "personalize steps must be 1 to {}, got {}",
                Self::MAX_STEPS,
                self.steps
            ));
        }
        if !(self.learning_rate.is_finite() && self.learning_rate > 0.0) {
            return invalid(format!(
                "personalize learning_rate must be finite and above 0, got {}",
                self.learning_rate
            ));
        }
        if !(self.l2.is_finite() && self.l2 >= 0.0) {
            return invalid(format!(
                "personalize l2 must be finite and at least 0, got {}",
                self.l2
            ));
        }
        if !(self.holdout > 0.0 && self.holdout < 1.0) {
            return invalid(format!(
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
    pub backbone_passes: usize,
    /// `|phi_new - phi_old|` and the initial gradient's norm, for diagnosis.
    pub phi_step: f32,
    pub gradient_norm: f32,
    pub reason: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Stats {
    pub users: usize,
    pub catalog_items: usize,
    pub cold_items: usize,
    pub store_encrypted: bool,
    pub store_bytes_on_disk: u64,
    pub store_live_bytes: u64,
    pub scorer: String,
}

/// The engine. All methods take `&self`; backbone work is serialized by one lock.
pub struct Engine {
    model: Mutex<L2Rec>,
    store: Store,
    limits: Limits,
    bundle_items: usize,
    phi_mean: Vec<f32>,
    max_items: usize,
    bundle_id: String,
    backbone_sha256: String,
    /// Every catalog id, readable while the model lock is held by a long call
    /// (so `observe` does not wait behind `personalize`).
    known_ids: RwLock<HashSet<String>>,
}

fn history_key(view: View, scales: &[f32], ids: &[String]) -> String {
    let mut h = Sha256::new();
    h.update(view.name());
    scales.iter().for_each(|s| h.update(s.to_le_bytes()));
    for id in ids {
        h.update((id.len() as u64).to_le_bytes());
        h.update(id.as_bytes());
    }
    hex::encode(h.finalize())
}

impl Engine {
    /// Verifies the backbone against the bundle, opens the bundle, the store,
    /// and loads the cold items the store knows. Reports progress while item
    /// text states are computed (bundles that do not ship them).
    pub fn open(
        config: EngineConfig,
        progress: ProgressFn,
        cancel: &CancelToken,
    ) -> Result<Self, EngineError> {
        if let Some(threads) = config.threads {
            if !(1..=MAX_THREADS).contains(&threads) {
                return Err(EngineError::Invalid(format!(
                    "threads must be 1 to {MAX_THREADS} (ggml's limit), got {threads}"
                )));
            }
        }
        // The manifest first: the backbone is checked against what the bundle
        // was trained on before llama.cpp sees it.
        let manifest = Bundle::read_manifest(&config.bundle_dir)?;
        let info = ModelInfo::read(&config.model_path, Some(&manifest.backbone.sha256))?;
        let backbone_sha256 = info.sha256.clone();
        let backbone = Backbone::open_verified(
            info,
            BackboneConfig {
                threads: config.threads,
                ..Default::default()
            },
        )?;
        let bundle = Bundle::open_with(&config.bundle_dir, manifest, backbone.info())?;
        let bundle_id = bundle
            .manifest
            .files
            .get("heads.safetensors")
            .map(|f| f.sha256.clone())
            .unwrap_or_default();
        let store = Store::open(StoreConfig {
            path: config.store_path.clone(),
            master_key: config.master_key,
            durability: config.durability,
            max_events_per_user: config.max_events_per_user,
        })?;
        let phi_mean = bundle.heads.phi_mean.clone();
        let max_items = bundle.manifest.history.max_items;
        let bundle_items = bundle.items.ids.len();
        let mut tick = |done: usize, total: usize| {
            progress(done, total);
            !cancel.is_cancelled()
        };
        let model = L2Rec::new(backbone, bundle, &mut tick).map_err(|e| match e {
            ModelError::Cancelled => EngineError::Cancelled,
            other => other.into(),
        })?;
        let engine = Self {
            model: Mutex::new(model),
            store,
            limits: config.limits,
            bundle_items,
            phi_mean,
            max_items,
            bundle_id,
            backbone_sha256,
            known_ids: RwLock::default(),
        };
        engine.load_cold_items()?;
        Ok(engine)
    }

    fn model(&self) -> MutexGuard<'_, L2Rec> {
        // A panic while holding the lock cannot leave the model half-updated
        // in a way later calls would trust: states are recomputed per call.
        self.model
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn check_id(&self, id: &str) -> Result<(), EngineError> {
        if id.is_empty() || id.len() > self.limits.max_id_bytes {
            return Err(EngineError::Invalid(format!(
                "ids must be 1 to {} bytes, got {}",
                self.limits.max_id_bytes,
                id.len()
            )));
        }
        Ok(())
    }

    fn check_text(&self, text: &str) -> Result<(), EngineError> {
        if text.len() > self.limits.max_text_bytes {
            return Err(EngineError::Invalid(format!(
                "item text is {} bytes, the limit is {}",
                text.len(),
                self.limits.max_text_bytes
            )));
        }
        Ok(())
    }

    /// Adds or updates catalog items. Items the bundle knows keep their learned
    /// embedding; new ones become cold items (text state computed once,
    /// cached in the store per backbone).
    pub fn upsert_items(
        &self,
        items: &[ItemInput],
        progress: ProgressFn,
        cancel: &CancelToken,
    ) -> Result<(), EngineError> {
        if items.len() > self.limits.max_items_per_call {
            return Err(EngineError::Invalid(format!(
                "{} items in one call, the limit is {}",
                items.len(),
                self.limits.max_items_per_call
            )));
        }
        for item in items {
            self.check_id(&item.id)?;
            self.check_text(&item.text)?;
        }
        let mut model = self.model();
        let mut stored = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            if cancel.is_cancelled() {
                return Err(EngineError::Cancelled);
            }
            progress(i, items.len());
            let known = model
                .row(&item.id)
                .filter(|&r| (r as usize) < self.bundle_items);
            if known.is_none()
                && self
                    .store
                    .text_state(&item.id, &self.backbone_sha256)?
                    .is_none()
            {
                let state = model.text_state(&item.text)?;
                self.store
                    .put_text_state(&item.id, &self.backbone_sha256, &state)?;
            }
            stored.push(StoredItem {
                id: item.id.clone(),
                text: item.text.clone(),
                row: known.unwrap_or(u32::MAX),
            });
        }
        self.store.upsert_items(&stored)?;
        progress(items.len(), items.len());
        drop(model);
        self.load_cold_items()
    }

    fn load_cold_items(&self) -> Result<(), EngineError> {
        let mut model = self.model();
        let mut cold = Vec::new();
        for item in self.store.items()? {
            let known = model
                .row(&item.id)
                .is_some_and(|r| (r as usize) < self.bundle_items);
            if known {
                continue;
            }
            if let Some(text_state) = self.store.text_state(&item.id, &self.backbone_sha256)? {
                cold.push(ColdItem {
                    id: item.id,
                    text: item.text,
                    text_state,
                });
            }
        }
        model.set_cold_items(&cold)?;
        let ids = (0..model.catalog_len() as u32)
            .map(|r| model.item_id(r).to_owned())
            .collect();
        *self.known_ids.write().unwrap_or_else(|p| p.into_inner()) = ids;
        Ok(())
    }

    /// Records an event (durably in `Durability::Immediate`). An unknown item
    /// with text becomes a cold item; without text it is refused.
    pub fn observe(&self, user: &str, event: &EventInput) -> Result<u64, EngineError> {
        self.check_id(user)?;
        self.check_id(&event.item_id)?;
        let known = self
            .known_ids
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&event.item_id);
        if !known {
            let text = event
                .item_text
                .clone()
                .ok_or_else(|| EngineError::UnknownItem(event.item_id.clone()))?;
            self.upsert_items(
                &[ItemInput {
                    id: event.item_id.clone(),
                    text,
                }],
                &mut |_, _| {},
                &CancelToken::default(),
            )?;
        }
        let stored = Event {
            item_id: event.item_id.clone(),
            timestamp_ms: event.timestamp_ms,
            kind: event.kind.clone(),
        };
        Ok(self.store.append_event(user, &stored)?)
    }

    fn phi(&self, user: &str) -> Result<Vec<f32>, EngineError> {
        Ok(self
            .store
            .user(user)?
            .map(|r| r.phi)
            .unwrap_or_else(|| self.phi_mean.clone()))
    }

    /// The user's history as catalog rows, oldest first, the last `max_items`.
    fn history(&self, model: &L2Rec, user: &str) -> Result<Vec<u32>, EngineError> {
        let rows: Vec<u32> = self
            .store
            .events(user)?
            .iter()
            .filter_map(|e| model.row(&e.item_id))
            .collect();
        Ok(rows[rows.len().saturating_sub(self.max_items)..].to_vec())
    }

    /// Top-k for a user (SPEC step 8). A user without events gets the most
    /// popular items.
    pub fn recommend(
        &self,
        user: &str,
        k: usize,
        options: RecommendOptions,
    ) -> Result<Vec<Recommendation>, EngineError> {
        self.check_id(user)?;
        if k == 0 || k > self.limits.max_k {
            return Err(EngineError::Invalid(format!(
                "k must be 1 to {}, got {k}",
                self.limits.max_k
            )));
        }
        let mut model = self.model();
        let history = self.history(&model, user)?;
        if history.is_empty() {
            return self.popular(&model, k);
        }
        let phi = self.phi(user)?;
        let mut pref = self.cached_preference(&mut model, user, &phi, &history)?;
        let exclude = if options.include_history {
            Vec::new()
        } else {
            history.clone()
        };
        let hits = model.top_k(&mut pref, &exclude, k)?;
        Ok(hits
            .iter()
            .map(|h| Recommendation {
                item_id: model.item_id(h.row).to_owned(),
                text: model.item_text(h.row).to_owned(),
                score: h.score,
            })
            .collect())
    }

    /// The preference, from view states cached in the store when the history
    /// and the mixture are unchanged; else from the backbone (which itself
    /// reuses its KV cache for an appended item).
    fn cached_preference(
        &self,
        model: &mut L2Rec,
        user: &str,
        phi: &[f32],
        history: &[u32],
    ) -> Result<crate::model::Preference, EngineError> {
        let ids: Vec<String> = history
            .iter()
            .map(|&r| model.item_id(r).to_owned())
            .collect();
        let keys: Vec<crate::store::ViewStateKey> = View::BOTH
            .iter()
            .map(|&v| crate::store::ViewStateKey {
                view: v.name().to_owned(),
                history_hash: history_key(v, &model.scales(v, phi), &ids),
                bundle_id: self.bundle_id.clone(),
            })
            .collect();
        let cached = (
            self.store.view_state(user, &keys[0])?,
            self.store.view_state(user, &keys[1])?,
        );
        if let (Some(h_b), Some(h_s)) = cached {
            let out = model.heads(&h_b, &h_s);
            let scales = View::BOTH
                .iter()
                .map(|&v| (v, model.scales(v, phi)))
                .collect();
            return Ok(crate::model::Preference {
                u: out.u,
                beta: out.beta,
                scales,
                timings: Default::default(),
                states: [h_b, h_s],
            });
        }
        let pref = model.preference(phi, history)?;
        self.store.put_view_state(user, &keys[0], &pref.states[0])?;
        self.store.put_view_state(user, &keys[1], &pref.states[1])?;
        Ok(pref)
    }

    /// Most interacted-with items across this device's users; ties by the
    /// bundle's learned bias (its popularity prior), then catalog row.
    fn popular(&self, model: &L2Rec, k: usize) -> Result<Vec<Recommendation>, EngineError> {
        let mut counts: HashMap<u32, u32> = HashMap::new();
        for user in self.store.users()? {
            for e in self.store.events(&user)? {
                if let Some(r) = model.row(&e.item_id) {
                    *counts.entry(r).or_default() += 1;
                }
            }
        }
        let (_, bias) = model.item_vectors();
        let mut rows: Vec<u32> = (0..model.catalog_len() as u32).collect();
        rows.sort_by(|a, b| {
            let (ca, cb) = (
                counts.get(a).copied().unwrap_or(0),
                counts.get(b).copied().unwrap_or(0),
            );
            cb.cmp(&ca)
                .then(bias[*b as usize].total_cmp(&bias[*a as usize]))
                .then(a.cmp(b))
        });
        Ok(rows
            .iter()
            .take(k)
            .map(|&r| Recommendation {
                item_id: model.item_id(r).to_owned(),
                text: model.item_text(r).to_owned(),
                score: counts.get(&r).copied().unwrap_or(0) as f32,
            })
            .collect())
    }

    /// Expert scales, view weights, and the history items behind each of the
    /// top 10 recommendations.
    pub fn explain(&self, user: &str) -> Result<Explanation, EngineError> {
        self.check_id(user)?;
        let mut model = self.model();
        let history = self.history(&model, user)?;
        let phi = self.phi(user)?;
        if history.is_empty() {
            let expert_scales = View::BOTH
                .iter()
                .map(|&v| (v, model.scales(v, &phi)))
                .collect();
            let view_weight = BTreeMap::from([(View::Behavioral, 0.5), (View::Semantic, 0.5)]);
            return Ok(Explanation {
                expert_scales,
                view_weight,
                reasons: Vec::new(),
            });
        }
        let mut pref = self.cached_preference(&mut model, user, &phi, &history)?;
        let hits = model.top_k(&mut pref, &history, 10)?;
        let mean_beta = pref.beta.iter().sum::<f32>() / pref.beta.len().max(1) as f32;
        let (vectors, _) = model.item_vectors();
        let d_r = pref.u.len();
        let row = |r: u32| &vectors[r as usize * d_r..(r as usize + 1) * d_r];
        let unique: Vec<u32> = history
            .iter()
            .copied()
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        let reasons = hits
            .iter()
            .map(|hit| {
                let mut pulls: Vec<(f32, u32)> = unique
                    .iter()
                    .map(|&h| (row(h).iter().zip(row(hit.row)).map(|(a, b)| a * b).sum(), h))
                    .collect();
                pulls.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
                (
                    model.item_id(hit.row).to_owned(),
                    pulls
                        .iter()
                        .take(3)
                        .map(|&(_, h)| model.item_id(h).to_owned())
                        .collect(),
                )
            })
            .collect();
        Ok(Explanation {
            expert_scales: pref.scales.clone(),
            view_weight: BTreeMap::from([
                (View::Behavioral, mean_beta),
                (View::Semantic, 1.0 - mean_beta),
            ]),
            reasons,
        })
    }

    /// Refines the user's `phi` from their own events (SPEC "On-device
    /// personalization"); saves it only when the held-back loss improves.
    pub fn personalize(
        &self,
        user: &str,
        options: PersonalizeOptions,
        progress: ProgressFn,
        cancel: &CancelToken,
    ) -> Result<PersonalizeReport, EngineError> {
        self.check_id(user)?;
        options.validate()?;
        let mut model = self.model();
        let history = self.history(&model, user)?;
        let phi0 = self.phi(user)?;
        let experts = [
            model.expert_count(View::Behavioral),
            model.expert_count(View::Semantic),
        ];
        let not_run = |reason: &str| PersonalizeReport {
            train_loss_before: 0.0,
            train_loss_after: 0.0,
            phi_step: 0.0,
            gradient_norm: 0.0,
            held_out_loss_before: 0.0,
            held_out_loss_after: 0.0,
            saved: false,
            backbone_passes: 0,
            reason: reason.to_owned(),
        };
        if experts == [0, 0] {
            return Ok(not_run("the bundle has no experts: nothing to personalize"));
        }
        if history.len() < 3 {
            return Ok(not_run("fewer than 3 events: not enough to learn from"));
        }
        // Targets: the state after item t predicts item t + 1.
        let targets: Vec<(usize, u32)> = (0..history.len() - 1)
            .map(|t| (t, history[t + 1]))
            .collect();
        let held =
            ((targets.len() as f32 * options.holdout).ceil() as usize).clamp(1, targets.len() - 1);
        let (train, held_out) = targets.split_at(targets.len() - held);
        // Per view: the current and the base mixture, each expert alone; then the
        // held-back loss, measured for real before and after (two passes each).
        let total_passes = 2 * 2 + experts[0] + experts[1] + 4;
        let mut passes = 0;
        let mut step =
            |model: &mut L2Rec, view: View, scales: &[f32]| -> Result<Vec<Vec<f32>>, EngineError> {
                if cancel.is_cancelled() {
                    return Err(EngineError::Cancelled);
                }
                progress(passes, total_passes);
                passes += 1;
                Ok(model.states_after_each_item(view, scales, &history)?)
            };
        let mut views = Vec::new();
        for view in View::BOTH {
            let g0 = model.scales(view, &phi0);
            let at_g0 = step(&mut model, view, &g0)?;
            let base = step(&mut model, view, &vec![0.0; g0.len()])?;
            let mut directions = Vec::new();
            for k in 0..g0.len() {
                let mut one = vec![0.0; g0.len()];
                one[k] = 1.0;
                let alone = step(&mut model, view, &one)?;
                directions.push(
                    alone
                        .iter()
                        .zip(&base)
                        .map(|(a, b)| a.iter().zip(b).map(|(x, y)| x - y).collect())
                        .collect(),
                );
            }
            views.push(Linearization {
                g0,
                at_g0,
                directions,
            });
        }
        let heads = model.bundle().heads.clone();
        let (vectors, bias) = model.item_vectors();
        let (vectors, bias) = (vectors.to_vec(), bias.to_vec());
        let active = [
            model.bundle().manifest.views.behavioral.k,
            model.bundle().manifest.views.semantic.k,
        ];
        let semantic = views.pop().expect("two views");
        let behavioral = views.pop().expect("two views");
        let problem = Problem {
            heads: &heads,
            active,
            views: [behavioral, semantic],
            items: &vectors,
            bias: &bias,
            targets: targets.clone(),
            phi_mean: &self.phi_mean,
            l2: options.l2,
        };
        let (train_before, gradient) = loss_and_gradient(&problem, &phi0, train);
        let phi = descend(&problem, &phi0, train, options.steps, options.learning_rate);
        let norm = |v: &mut dyn Iterator<Item = f32>| v.map(|x| x * x).sum::<f32>().sqrt();
        let phi_step = norm(&mut phi.iter().zip(&phi0).map(|(a, b)| a - b));
        let gradient_norm = norm(&mut gradient.iter().copied());
        let (train_after, _) = loss_and_gradient(&problem, &phi, train);
        // The held-back loss is measured for real, not through the linear model.
        let mut measure = |model: &mut L2Rec, phi: &[f32]| -> Result<f32, EngineError> {
            let scales = View::BOTH.map(|v| model.scales(v, phi));
            let states = [
                step(model, View::Behavioral, &scales[0])?,
                step(model, View::Semantic, &scales[1])?,
            ];
            Ok(Self::measured_loss(model, &states, held_out))
        };
        let held_before = measure(&mut model, &phi0)?;
        let held_after = measure(&mut model, &phi)?;
        progress(total_passes, total_passes);
        let saved = held_after < held_before;
        if saved {
            let version = self.store.user(user)?.map_or(0, |r| r.version) + 1;
            self.store.put_user(user, &UserRecord { phi, version })?;
        }
        Ok(PersonalizeReport {
            train_loss_before: train_before,
            train_loss_after: train_after,
            phi_step,
            gradient_norm,
            held_out_loss_before: held_before,
            held_out_loss_after: held_after,
            saved,
            backbone_passes: passes,
            reason: if saved {
                "held-back loss improved".into()
            } else {
                "held-back loss did not improve; kept the old phi".into()
            },
        })
    }

    /// The mean next-item loss over `targets` from measured view states.
    fn measured_loss(model: &L2Rec, states: &[Vec<Vec<f32>>; 2], targets: &[(usize, u32)]) -> f32 {
        let (vectors, bias) = model.item_vectors();
        let total: f64 = targets
            .iter()
            .map(|&(pos, target)| {
                let u = model.heads(&states[0][pos], &states[1][pos]).u;
                cross_entropy(vectors, bias, &u, target).0
            })
            .sum();
        (total / targets.len().max(1) as f64) as f32
    }

    /// Destroys the user's key and records (crypto-shredding).
    pub fn forget_user(&self, user: &str) -> Result<(), EngineError> {
        self.check_id(user)?;
        Ok(self.store.forget_user(user)?)
    }

    /// Everything stored about the user, as JSON.
    pub fn export_user(&self, user: &str) -> Result<serde_json::Value, EngineError> {
        self.check_id(user)?;
        Ok(self.store.export_user(user)?)
    }

    pub fn stats(&self) -> Result<Stats, EngineError> {
        let model = self.model();
        Ok(Stats {
            users: self.store.users()?.len(),
            catalog_items: model.catalog_len(),
            cold_items: model.catalog_len() - self.bundle_items,
            store_encrypted: self.store.is_encrypted(),
            store_bytes_on_disk: self.store.size_on_disk()?,
            store_live_bytes: self.store.live_bytes()?,
            scorer: format!(
                "{:?} ({})",
                model.scorer().backend(),
                model.scorer().adapter_name()
            ),
        })
    }

    pub fn flush(&self) -> Result<(), EngineError> {
        Ok(self.store.flush()?)
    }
}
