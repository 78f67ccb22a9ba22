//! The records and enums that cross the boundary, and their conversions from
//! and to the engine's types. Float vectors that can be large (`phi`, view
//! states) cross as little-endian `f32` bytes.

use std::path::PathBuf;

use l2rec::engine as core;
use l2rec::prompt::View as CoreView;
use l2rec::store::Durability as CoreDurability;

use crate::error::L2recError;

/// How writes of user data reach the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Enum)]
pub enum Durability {
    /// A write returns once it is on disk (fsync). The default.
    Immediate,
    /// Writes return at once and are flushed every `flush_every_ms`; a crash
    /// loses about the last interval. Call `flush()` where it matters.
    Batched { flush_every_ms: u64 },
}

/// Bounds on what callers may pass; `None` in the config keeps the engine's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Record)]
pub struct Limits {
    pub max_id_bytes: u32,
    pub max_text_bytes: u32,
    pub max_k: u32,
    pub max_items_per_call: u32,
    /// Longest event kind, in bytes.
    #[uniffi(default = 64)]
    pub max_kind_bytes: u32,
}

/// How to open a `Recommender`. Optional fields left `None` take the
/// engine's defaults.
#[derive(Debug, Clone, uniffi::Record)]
pub struct RecommenderConfig {
    /// The backbone GGUF file (verified against the bundle's sha256).
    pub model_path: String,
    /// The bundle directory (every file verified before use).
    pub bundle_dir: String,
    /// The store directory (created if missing); app-private storage.
    pub store_path: String,
    /// 32 bytes from the platform keystore (Keychain, Android Keystore);
    /// `None` keeps the store in plaintext.
    #[uniffi(default = None)]
    pub master_key: Option<Vec<u8>>,
    /// Default: `Immediate`.
    #[uniffi(default = None)]
    pub durability: Option<Durability>,
    /// Events kept per user, oldest dropped first. Default: the engine's (1000).
    #[uniffi(default = None)]
    pub max_events_per_user: Option<u32>,
    /// Backbone threads. Default: the engine's choice.
    #[uniffi(default = None)]
    pub threads: Option<u32>,
    #[uniffi(default = None)]
    pub limits: Option<Limits>,
}

impl TryFrom<RecommenderConfig> for core::EngineConfig {
    type Error = L2recError;

    fn try_from(c: RecommenderConfig) -> Result<Self, L2recError> {
        let mut config = core::EngineConfig::new(
            PathBuf::from(c.model_path),
            PathBuf::from(c.bundle_dir),
            PathBuf::from(c.store_path),
        );
        if let Some(key) = c.master_key {
            let key: [u8; 32] = key.as_slice().try_into().map_err(|_| {
                L2recError::InvalidArgument(format!(
                    "the master key must be 32 bytes, got {}",
                    key.len()
                ))
            })?;
            config.master_key = Some(key);
        }
        if let Some(durability) = c.durability {
            config.durability = match durability {
                Durability::Immediate => CoreDurability::Immediate,
                Durability::Batched { flush_every_ms } => {
                    CoreDurability::Batched { flush_every_ms }
                }
            };
        }
        if let Some(n) = c.max_events_per_user {
            config.max_events_per_user = n as usize;
        }
        config.threads = c.threads;
        if let Some(l) = c.limits {
            config.limits = core::Limits {
                max_id_bytes: l.max_id_bytes as usize,
                max_text_bytes: l.max_text_bytes as usize,
                max_kind_bytes: l.max_kind_bytes as usize,
                max_k: l.max_k as usize,
                max_items_per_call: l.max_items_per_call as usize,
            };
        }
        Ok(config)
    }
}

/// An item of the host app's catalog.
#[derive(Debug, Clone, PartialEq, uniffi::Record)]
pub struct Item {
    pub id: String,
    pub text: String,
}

impl From<Item> for core::ItemInput {
    fn from(i: Item) -> Self {
        Self {
            id: i.id,
            text: i.text,
        }
    }
}

/// Something a user did with an item.
#[derive(Debug, Clone, PartialEq, uniffi::Record)]
pub struct Event {
    pub item_id: String,
    pub timestamp_ms: i64,
    /// The app's name for the interaction ("view", "play", "purchase", ...).
    pub kind: String,
    /// The item's text, for an item the engine does not know yet (it becomes
    /// a cold item). Without it an unknown item is refused.
    #[uniffi(default = None)]
    pub item_text: Option<String>,
}

impl From<Event> for core::EventInput {
    fn from(e: Event) -> Self {
        Self {
            item_id: e.item_id,
            timestamp_ms: e.timestamp_ms,
            kind: e.kind,
            item_text: e.item_text,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Record)]
pub struct RecommendOptions {
    /// Allow items the user already interacted with.
    #[uniffi(default = false)]
    pub include_history: bool,
}

impl From<RecommendOptions> for core::RecommendOptions {
    fn from(o: RecommendOptions) -> Self {
        Self {
            include_history: o.include_history,
        }
    }
}

#[derive(Debug, Clone, PartialEq, uniffi::Record)]
pub struct Recommendation {
    pub item_id: String,
    pub text: String,
    pub score: f32,
}

impl From<core::Recommendation> for Recommendation {
    fn from(r: core::Recommendation) -> Self {
        Self {
            item_id: r.item_id,
            text: r.text,
            score: r.score,
        }
    }
}

/// The two views of a user's history (not `View`: that would shadow SwiftUI's
/// and Android's `View` in apps).
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Enum)]
pub enum HistoryView {
    /// Items as identifiers.
    Behavioral,
    /// Items as text.
    Semantic,
}

impl From<CoreView> for HistoryView {
    fn from(v: CoreView) -> Self {
        match v {
            CoreView::Behavioral => Self::Behavioral,
            CoreView::Semantic => Self::Semantic,
        }
    }
}

/// One view's part in a user's recommendations.
#[derive(Debug, Clone, PartialEq, uniffi::Record)]
pub struct ViewExplanation {
    pub view: HistoryView,
    /// The mean fusion weight of the view (the views' weights sum to 1).
    pub weight: f32,
    /// The scale of each of the view's experts for this user.
    pub expert_scales: Vec<f32>,
}

/// The history items behind one recommendation.
#[derive(Debug, Clone, PartialEq, uniffi::Record)]
pub struct Reason {
    pub item_id: String,
    /// The user's history items most similar to it, strongest first.
    pub because: Vec<String>,
}

/// Why a user gets what they get.
#[derive(Debug, Clone, PartialEq, uniffi::Record)]
pub struct Explanation {
    pub views: Vec<ViewExplanation>,
    /// For each of the top 10 recommendations.
    pub reasons: Vec<Reason>,
}

impl From<core::Explanation> for Explanation {
    fn from(e: core::Explanation) -> Self {
        let weights = e.view_weight;
        let views = e
            .expert_scales
            .map(|view, expert_scales| ViewExplanation {
                view: view.into(),
                weight: weights[view],
                expert_scales,
            })
            .iter()
            .map(|(_, v)| v.clone())
            .collect();
        let reasons = e
            .reasons
            .into_iter()
            .map(|(item_id, because)| Reason { item_id, because })
            .collect();
        Self { views, reasons }
    }
}

/// Options of `personalize`; `None` takes the engine's defaults.
#[derive(Debug, Clone, Copy, PartialEq, uniffi::Record)]
pub struct PersonalizeOptions {
    pub steps: u32,
    pub learning_rate: f32,
    pub l2: f32,
    /// Share of the user's next-item targets held back to decide whether to save.
    pub holdout: f32,
}

impl From<PersonalizeOptions> for core::PersonalizeOptions {
    fn from(o: PersonalizeOptions) -> Self {
        Self {
            steps: o.steps as usize,
            learning_rate: o.learning_rate,
            l2: o.l2,
            holdout: o.holdout,
        }
    }
}

#[derive(Debug, Clone, PartialEq, uniffi::Record)]
pub struct PersonalizeReport {
    pub train_loss_before: f32,
    pub train_loss_after: f32,
    pub held_out_loss_before: f32,
    pub held_out_loss_after: f32,
    /// Whether the new parameters were saved (only when the held-back loss improved).
    pub saved: bool,
    /// Passes from the backbone's first layer: through every layer, or up
    /// to the first adapted one to feed the upper passes.
    pub backbone_passes: u64,
    /// Passes through its upper layers alone (where the experts are), fed
    /// the stream a full pass left below them.
    pub upper_passes: u64,
    pub phi_step: f32,
    pub gradient_norm: f32,
    pub reason: String,
}

impl From<core::PersonalizeReport> for PersonalizeReport {
    fn from(r: core::PersonalizeReport) -> Self {
        Self {
            train_loss_before: r.train_loss_before,
            train_loss_after: r.train_loss_after,
            held_out_loss_before: r.held_out_loss_before,
            held_out_loss_after: r.held_out_loss_after,
            saved: r.saved,
            backbone_passes: r.backbone_passes as u64,
            upper_passes: r.upper_passes as u64,
            phi_step: r.phi_step,
            gradient_norm: r.gradient_norm,
            reason: r.reason,
        }
    }
}

#[derive(Debug, Clone, PartialEq, uniffi::Record)]
pub struct Stats {
    pub users: u64,
    pub catalog_items: u64,
    pub cold_items: u64,
    pub store_encrypted: bool,
    pub store_bytes_on_disk: u64,
    pub store_live_bytes: u64,
    pub scorer: String,
    /// Users whose stored records are damaged: their calls fail with
    /// `StoreCorrupt` naming them; `forgetUser` drops their records.
    pub damaged_users: Vec<String>,
    /// Catalog items whose record is damaged: upsert them again.
    pub damaged_items: Vec<String>,
    /// Catalog items the store lost without a trace of their ids (counted by
    /// its ledger): upsert the whole catalog again.
    pub items_lost: u64,
    /// Why the store could not check itself against its ledger at open
    /// (missing or damaged): earlier losses went uncounted. Null when it did.
    pub ledger_problem: Option<String>,
}

impl From<core::Stats> for Stats {
    fn from(s: core::Stats) -> Self {
        Self {
            users: s.users as u64,
            catalog_items: s.catalog_items as u64,
            cold_items: s.cold_items as u64,
            store_encrypted: s.store_encrypted,
            store_bytes_on_disk: s.store_bytes_on_disk,
            store_live_bytes: s.store_live_bytes,
            scorer: s.scorer,
            damaged_users: s.damaged_users,
            damaged_items: s.damaged_items,
            items_lost: s.items_lost,
            ledger_problem: s.ledger_problem,
        }
    }
}

/// What `compact()` achieved: the store's size on disk, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Record)]
pub struct CompactReport {
    pub bytes_before: u64,
    pub bytes_after: u64,
}

/// A stored event, as exported.
#[derive(Debug, Clone, PartialEq, uniffi::Record)]
pub struct StoredEvent {
    pub seq: u64,
    pub item_id: String,
    pub timestamp_ms: i64,
    pub kind: String,
}

/// A cached view state, as exported.
#[derive(Debug, Clone, PartialEq, uniffi::Record)]
pub struct StoredViewState {
    pub view: String,
    pub history_hash: String,
    pub bundle_id: String,
    /// `f32` values, little-endian.
    pub state: Vec<u8>,
}

/// Everything stored about a user.
#[derive(Debug, Clone, PartialEq, uniffi::Record)]
pub struct UserExport {
    pub user: String,
    pub encrypted_at_rest: bool,
    /// The user's personal gate parameters as little-endian `f32`; `None`
    /// until `personalize` saved some.
    pub phi: Option<Vec<u8>>,
    pub phi_version: u64,
    pub events: Vec<StoredEvent>,
    pub view_states: Vec<StoredViewState>,
}

pub(crate) fn f32_le_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

impl From<l2rec::store::UserExport> for UserExport {
    fn from(e: l2rec::store::UserExport) -> Self {
        Self {
            user: e.user,
            encrypted_at_rest: e.encrypted_at_rest,
            phi_version: e.record.as_ref().map_or(0, |r| r.version),
            phi: e.record.map(|r| f32_le_bytes(&r.phi)),
            events: e.events.into_iter().map(Into::into).collect(),
            view_states: e
                .view_states
                .into_iter()
                .map(|v| StoredViewState {
                    view: v.view,
                    history_hash: v.history_hash,
                    bundle_id: v.bundle_id,
                    state: f32_le_bytes(&v.state),
                })
                .collect(),
        }
    }
}

impl From<l2rec::store::ExportedEvent> for StoredEvent {
    fn from(e: l2rec::store::ExportedEvent) -> Self {
        Self {
            seq: e.seq,
            item_id: e.item_id,
            timestamp_ms: e.timestamp_ms,
            kind: e.kind,
        }
    }
}
