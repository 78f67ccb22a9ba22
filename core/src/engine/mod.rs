//! The on-device engine: the API the mobile bindings wrap. It validates
//! arguments, holds the model's lock, reads and writes the per-user store,
//! and delegates the math to `model` and `personalize`; thread-safe
//! (`Send + Sync`).

use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, MutexGuard, RwLock};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub use crate::backbone::MAX_THREADS;
use crate::backbone::{Backbone, BackboneConfig, ModelInfo};
use crate::bundle::Bundle;
use crate::model::{ColdItem, L2Rec, ModelError, Preference};
use crate::per_view::PerView;
pub use crate::personalize::{PersonalizeOptions, PersonalizeReport};
pub use crate::progress::{CancelToken, Cancelled, Progress};
use crate::prompt::View;
use crate::store::{
    Event, Store, StoreConfig, StoreError, StoredItem, UserExport, UserRecord, ViewStateKey,
};

mod arguments;

pub use arguments::*;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Model(ModelError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("unknown item `{0}`: upsert it first, or give its text with the event to add it as a cold item")]
    UnknownItem(String),
    #[error("invalid argument: {0}")]
    Invalid(String),
    #[error("cancelled")]
    Cancelled,
}

impl From<ModelError> for EngineError {
    fn from(e: ModelError) -> Self {
        if e.is_cancelled() {
            return EngineError::Cancelled;
        }
        EngineError::Model(e)
    }
}

impl From<Cancelled> for EngineError {
    fn from(_: Cancelled) -> Self {
        EngineError::Cancelled
    }
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
    pub expert_scales: PerView<Vec<f32>>,
    /// Mean fusion weight of each view (they sum to 1).
    pub view_weight: PerView<f32>,
    /// For each recommendation, the history items most similar to it in the
    /// scoring space (the ones that pulled it up most).
    pub reasons: Vec<(String, Vec<String>)>,
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
    /// Users whose records are damaged (their reads fail; `forget_user`
    /// drops them), as ids, or `tag:<hex>` where the id itself is damaged.
    pub damaged_users: Vec<String>,
    /// Catalog items whose record is damaged (absent until upserted again).
    pub damaged_items: Vec<String>,
    /// Catalog items the store's ledger counted that its database lost (ids
    /// unknown: upsert the whole catalog again).
    pub items_lost: u64,
    /// Why the ledger could not vouch for the store at open (missing or
    /// damaged), so losses before it went uncounted; `None` when it did.
    pub ledger_problem: Option<String>,
}

/// The engine. All methods take `&self`; backbone work is serialized by one lock.
pub struct Engine {
    model: Mutex<L2Rec>,
    store: Store,
    limits: Limits,
    phi_mean: Vec<f32>,
    bundle_id: String,
    backbone_sha256: String,
    /// Every catalog id, readable while the model lock is held by a long call
    /// (so `observe` does not wait behind `personalize`).
    known_ids: RwLock<HashSet<String>>,
}

/// The locked model while a call's cancel token is watched by its backbone
/// passes; dropping it stops the watch.
struct Watched<'e>(MutexGuard<'e, L2Rec>);

impl std::ops::Deref for Watched<'_> {
    type Target = L2Rec;

    fn deref(&self) -> &L2Rec {
        &self.0
    }
}

impl std::ops::DerefMut for Watched<'_> {
    fn deref_mut(&mut self) -> &mut L2Rec {
        &mut self.0
    }
}

impl Drop for Watched<'_> {
    fn drop(&mut self) {
        self.0.watch_cancel(None);
    }
}

/// The store's key of a view state: the view, its mixture and the history.
fn history_key(view: View, scales: &[f32], ids: &[&str]) -> String {
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
    pub fn open(config: EngineConfig, progress: &mut Progress) -> Result<Self, EngineError> {
        config.validate()?;
        // The manifest first: the backbone is checked against what the bundle
        // was trained on before llama.cpp sees it.
        let manifest = Bundle::read_manifest(&config.bundle_dir)?;
        let info = ModelInfo::read(&config.model_path, Some(&manifest.backbone.sha256))?;
        let backbone_sha256 = info.sha256.clone();
        let backbone = Backbone::open_verified(
            info,
            BackboneConfig {
                threads: config.threads,
                scratch_dir: Some(config.store_path.clone()),
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
        crate::backbone::remove_stale_scratch(&config.store_path);
        let model = L2Rec::new(backbone, bundle, progress)?;
        let engine = Self {
            phi_mean: model.phi_mean().to_vec(),
            model: Mutex::new(model),
            store,
            limits: config.limits,
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

    /// The model, its backbone passes stopped by `cancel` (inside a pass,
    /// not only between them) until the guard drops, which also releases
    /// the lock.
    fn model_watching(&self, cancel: Option<&CancelToken>) -> Watched<'_> {
        let model = self.model();
        model.watch_cancel(cancel);
        Watched(model)
    }

    /// [`Engine::model_watching`] for a call that fails at once if `cancel`
    /// is already set.
    fn model_for(&self, cancel: &CancelToken) -> Result<Watched<'_>, EngineError> {
        if cancel.is_cancelled() {
            return Err(EngineError::Cancelled);
        }
        Ok(self.model_watching(Some(cancel)))
    }

    /// Adds or updates catalog items. Items the bundle knows keep their learned
    /// embedding; new ones become cold items (text state computed once,
    /// cached in the store per backbone).
    pub fn upsert_items(
        &self,
        items: &[ItemInput],
        progress: &mut Progress,
    ) -> Result<(), EngineError> {
        self.limits.check_items(items)?;
        let mut model = self.model();
        let mut stored = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            progress.tick(i, items.len())?;
            let known = model.items().bundle_row(&item.id);
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
        progress.finish(items.len());
        drop(model);
        self.load_cold_items()
    }

    fn load_cold_items(&self) -> Result<(), EngineError> {
        let mut model = self.model();
        let mut cold = Vec::new();
        for item in self.store.items()? {
            if model.items().bundle_row(&item.id).is_some() {
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
        let items = model.items();
        let ids = (0..items.len() as u32)
            .map(|r| items.id(r).to_owned())
            .collect();
        *self.known_ids.write().unwrap_or_else(|p| p.into_inner()) = ids;
        Ok(())
    }

    /// Records an event (durably in `Durability::Immediate`). An unknown item
    /// with text becomes a cold item; without text it is refused.
    pub fn observe(&self, user: &str, event: &EventInput) -> Result<u64, EngineError> {
        self.limits.check_id(user)?;
        self.limits.check_event(event)?;
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
                &mut Progress::none(),
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

    /// The user's whole stored history as catalog rows, oldest first (the
    /// model reads its recent part; recommendations exclude all of it, as the
    /// evaluation protocol does).
    fn history(&self, model: &L2Rec, user: &str) -> Result<Vec<u32>, EngineError> {
        let items = model.items();
        Ok(self
            .store
            .events(user)?
            .iter()
            .filter_map(|e| items.row(&e.item_id))
            .collect())
    }

    /// Top-k for a user (SPEC step 8). A user without events gets the most
    /// popular items.
    pub fn recommend(
        &self,
        user: &str,
        k: usize,
        options: RecommendOptions,
    ) -> Result<Vec<Recommendation>, EngineError> {
        self.recommend_cancellable(user, k, options, &CancelToken::default())
    }

    /// [`Engine::recommend`] that `cancel` stops, also inside a backbone pass.
    pub fn recommend_cancellable(
        &self,
        user: &str,
        k: usize,
        options: RecommendOptions,
        cancel: &CancelToken,
    ) -> Result<Vec<Recommendation>, EngineError> {
        self.limits.check_id(user)?;
        self.limits.check_k(k)?;
        let mut model = self.model_for(cancel)?;
        let history = self.history(&model, user)?;
        if history.is_empty() {
            return self.popular(&model, k);
        }
        let phi = self.phi(user)?;
        let mut pref = self.cached_preference(&mut model, user, &phi, &history)?;
        let exclude = if options.include_history {
            &[][..]
        } else {
            &history[..]
        };
        let hits = model.top_k(&mut pref, exclude, k)?;
        let items = model.items();
        Ok(hits
            .iter()
            .map(|h| Recommendation {
                item_id: items.id(h.row).to_owned(),
                text: items.text(h.row).to_owned(),
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
    ) -> Result<Preference, EngineError> {
        let recent = model.recent(history);
        let ids: Vec<&str> = recent.iter().map(|&r| model.items().id(r)).collect();
        // The gate reads the history's collaborative state (v2): computed
        // once here, for the cache key's mixture and for a cache hit.
        let collab = model.collab(history)?;
        let scales = model.scales_for(phi, collab.as_deref())?;
        let keys = PerView::from_fn(|v| ViewStateKey {
            view: v.name().to_owned(),
            history_hash: history_key(v, &scales[v], &ids),
            bundle_id: self.bundle_id.clone(),
        });
        let cached = PerView::try_from_fn(|v| self.store.view_state(user, &keys[v]))?;
        if let (Some(h_b), Some(h_s)) = (cached.behavioral, cached.semantic) {
            return Ok(model.preference_from_states(phi, collab, PerView::new(h_b, h_s))?);
        }
        let pref = model.preference(phi, history)?;
        for view in View::BOTH {
            self.store
                .put_view_state(user, &keys[view], &pref.states[view])?;
        }
        Ok(pref)
    }

    /// Most interacted-with items across this device's users.
    fn popular(&self, model: &L2Rec, k: usize) -> Result<Vec<Recommendation>, EngineError> {
        let items = model.items();
        let mut counts: HashMap<u32, u32> = HashMap::new();
        for user in self.store.users()? {
            let events = match self.store.events(&user) {
                Ok(events) => events,
                // One user's damage must not take everyone's list down: the
                // user is in the store's integrity report.
                Err(StoreError::UserDamaged { .. }) => continue,
                Err(e) => return Err(e.into()),
            };
            for e in events {
                if let Some(r) = items.row(&e.item_id) {
                    *counts.entry(r).or_default() += 1;
                }
            }
        }
        Ok(items
            .most_popular(&counts, k)
            .into_iter()
            .map(|r| Recommendation {
                item_id: items.id(r).to_owned(),
                text: items.text(r).to_owned(),
                score: counts.get(&r).copied().unwrap_or(0) as f32,
            })
            .collect())
    }

    /// Expert scales, view weights, and the history items behind each of the
    /// top 10 recommendations.
    pub fn explain(&self, user: &str) -> Result<Explanation, EngineError> {
        self.explain_cancellable(user, &CancelToken::default())
    }

    /// [`Engine::explain`] that `cancel` stops, also inside a backbone pass.
    pub fn explain_cancellable(
        &self,
        user: &str,
        cancel: &CancelToken,
    ) -> Result<Explanation, EngineError> {
        self.limits.check_id(user)?;
        let mut model = self.model_for(cancel)?;
        let history = self.history(&model, user)?;
        let phi = self.phi(user)?;
        if history.is_empty() {
            return Ok(Explanation {
                expert_scales: model.scales(&phi, &history)?,
                view_weight: PerView::new(0.5, 0.5),
                reasons: Vec::new(),
            });
        }
        let mut pref = self.cached_preference(&mut model, user, &phi, &history)?;
        let hits = model.top_k(&mut pref, &history, 10)?;
        let mean_beta = pref.beta.iter().sum::<f32>() / pref.beta.len().max(1) as f32;
        let reasons = crate::model::reasons(model.items(), model.recent(&history), &hits, 3);
        Ok(Explanation {
            expert_scales: pref.scales,
            view_weight: PerView::new(mean_beta, 1.0 - mean_beta),
            reasons,
        })
    }

    /// Refines the user's `phi` from their own events (SPEC "On-device
    /// personalization", `personalize::run`); saves it only when the
    /// held-back loss improves.
    pub fn personalize(
        &self,
        user: &str,
        options: PersonalizeOptions,
        progress: &mut Progress,
    ) -> Result<PersonalizeReport, EngineError> {
        self.limits.check_id(user)?;
        options.validate().map_err(EngineError::Invalid)?;
        let mut model = self.model_watching(progress.cancel_token());
        let history = self.history(&model, user)?;
        let phi0 = self.phi(user)?;
        let outcome = crate::personalize::run(&mut model, &history, &phi0, &options, progress)?;
        if let Some(phi) = outcome.phi {
            let version = self.store.user(user)?.map_or(0, |r| r.version) + 1;
            self.store.put_user(user, &UserRecord { phi, version })?;
        }
        Ok(outcome.report)
    }

    /// Erases the user: destroys their key and records (crypto-shredding),
    /// then compacts the store so that no byte derived from the user (id,
    /// tag, events, states) lingers in sled's log, in either mode.
    pub fn forget_user(&self, user: &str) -> Result<(), EngineError> {
        self.limits.check_id(user)?;
        self.store.forget_user(user)?;
        self.store.compact()?;
        Ok(())
    }

    /// Rewrites the store with live data only (sled's log grows with
    /// rewrites); returns its size before and after, in bytes.
    pub fn compact(&self) -> Result<crate::store::CompactReport, EngineError> {
        Ok(self.store.compact()?)
    }

    /// Everything stored about the user.
    pub fn export_user(&self, user: &str) -> Result<UserExport, EngineError> {
        self.limits.check_id(user)?;
        Ok(self.store.export_user(user)?)
    }

    pub fn stats(&self) -> Result<Stats, EngineError> {
        let model = self.model();
        let items = model.items();
        let integrity = self.store.integrity();
        Ok(Stats {
            users: self.store.users()?.len(),
            catalog_items: items.len(),
            cold_items: items.len() - items.bundle_len(),
            store_encrypted: self.store.is_encrypted(),
            store_bytes_on_disk: self.store.size_on_disk()?,
            store_live_bytes: self.store.live_bytes()?,
            scorer: format!(
                "{:?} ({})",
                model.scorer().backend(),
                model.scorer().adapter_name()
            ),
            damaged_users: integrity
                .damaged_users
                .into_iter()
                .map(|u| u.user.unwrap_or_else(|| format!("tag:{}", u.tag)))
                .collect(),
            damaged_items: integrity.damaged_items,
            items_lost: integrity.items_lost,
            ledger_problem: integrity.ledger_problem,
        })
    }

    pub fn flush(&self) -> Result<(), EngineError> {
        Ok(self.store.flush()?)
    }
}
