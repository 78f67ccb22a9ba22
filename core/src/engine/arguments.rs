//! The engine's boundary: what callers may pass, checked before any work
//! (docs/LIMITS.md lists every limit). Pure functions of the arguments, so
//! the FFI fuzz target runs them without a model.

use std::collections::HashSet;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::EngineError;
use crate::backbone::MAX_THREADS;
use crate::store::Durability;

/// Bounds on what callers may pass (docs/LIMITS.md lists every limit).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_id_bytes: usize,
    pub max_text_bytes: usize,
    pub max_kind_bytes: usize,
    pub max_k: usize,
    pub max_items_per_call: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_id_bytes: 256,
            max_text_bytes: 2048,
            max_kind_bytes: 64,
            max_k: 1000,
            max_items_per_call: 100_000,
        }
    }
}

impl Limits {
    /// The largest value each limit may be raised to.
    pub const CEILING: Limits = Limits {
        max_id_bytes: 4096,
        max_text_bytes: 65_536,
        max_kind_bytes: 1024,
        max_k: 100_000,
        max_items_per_call: 10_000_000,
    };

    /// Every limit must be 1 to its [`Limits::CEILING`].
    pub fn validate(&self) -> Result<(), EngineError> {
        let c = Self::CEILING;
        let checks = [
            ("max_id_bytes", self.max_id_bytes, c.max_id_bytes),
            ("max_text_bytes", self.max_text_bytes, c.max_text_bytes),
            ("max_kind_bytes", self.max_kind_bytes, c.max_kind_bytes),
            ("max_k", self.max_k, c.max_k),
            (
                "max_items_per_call",
                self.max_items_per_call,
                c.max_items_per_call,
            ),
        ];
        for (name, value, ceiling) in checks {
            if !(1..=ceiling).contains(&value) {
                return Err(EngineError::Invalid(format!(
                    "limits.{name} must be 1 to {ceiling}, got {value}"
                )));
            }
        }
        Ok(())
    }
}

/// Event timestamps the engine accepts: years 1 to 9999, in ms since 1970.
pub const TIMESTAMP_MS_RANGE: std::ops::RangeInclusive<i64> =
    -62_135_596_800_000..=253_402_300_799_999;

/// The longest flush interval of `Durability::Batched`, in ms.
pub const MAX_FLUSH_EVERY_MS: u64 = 60_000;

/// The most events a store keeps per user.
pub const MAX_EVENTS_PER_USER: usize = 100_000;

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
    /// Refuses a config the engine could not serve well: threads outside
    /// ggml's range, limits at 0 or past their ceiling, a flush interval of 0
    /// or past a minute, a retention of 0 events or past the maximum.
    pub fn validate(&self) -> Result<(), EngineError> {
        let invalid = |what: String| Err(EngineError::Invalid(what));
        if let Some(threads) = self.threads {
            if !(1..=MAX_THREADS).contains(&threads) {
                return invalid(format!(
                    "threads must be 1 to {MAX_THREADS} (ggml's limit), got {threads}"
                ));
            }
        }
        if let Durability::Batched { flush_every_ms } = self.durability {
            if !(1..=MAX_FLUSH_EVERY_MS).contains(&flush_every_ms) {
                return invalid(format!(
                    "durability Batched flush_every_ms must be 1 to {MAX_FLUSH_EVERY_MS}, got {flush_every_ms}"
                ));
            }
        }
        if !(1..=MAX_EVENTS_PER_USER).contains(&self.max_events_per_user) {
            return invalid(format!(
                "max_events_per_user must be 1 to {MAX_EVENTS_PER_USER}, got {}",
                self.max_events_per_user
            ));
        }
        self.limits.validate()
    }

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

impl Limits {
    /// A user or item id: 1 to `max_id_bytes`, no control characters.
    pub fn check_id(&self, id: &str) -> Result<(), EngineError> {
        if id.is_empty() || id.len() > self.max_id_bytes {
            return Err(EngineError::Invalid(format!(
                "ids must be 1 to {} bytes, got {}",
                self.max_id_bytes,
                id.len()
            )));
        }
        no_control_characters("id", id)
    }

    pub fn check_text(&self, text: &str) -> Result<(), EngineError> {
        if text.len() > self.max_text_bytes {
            return Err(EngineError::Invalid(format!(
                "item text is {} bytes, the limit is {}",
                text.len(),
                self.max_text_bytes
            )));
        }
        if text.trim().is_empty() {
            return Err(EngineError::Invalid(
                "item text is empty: the semantic view would show nothing for it".into(),
            ));
        }
        if text.contains('\0') {
            return Err(EngineError::Invalid("item text contains a NUL byte".into()));
        }
        Ok(())
    }

    pub fn check_event(&self, event: &EventInput) -> Result<(), EngineError> {
        self.check_id(&event.item_id)?;
        if !TIMESTAMP_MS_RANGE.contains(&event.timestamp_ms) {
            return Err(EngineError::Invalid(format!(
                "timestamp_ms must be {} to {} (years 1 to 9999), got {}",
                TIMESTAMP_MS_RANGE.start(),
                TIMESTAMP_MS_RANGE.end(),
                event.timestamp_ms
            )));
        }
        if event.kind.len() > self.max_kind_bytes {
            return Err(EngineError::Invalid(format!(
                "event kind is {} bytes, the limit is {}",
                event.kind.len(),
                self.max_kind_bytes
            )));
        }
        no_control_characters("event kind", &event.kind)?;
        match &event.item_text {
            Some(text) => self.check_text(text),
            None => Ok(()),
        }
    }

    /// The size of one `recommend` call.
    pub fn check_k(&self, k: usize) -> Result<(), EngineError> {
        if k == 0 || k > self.max_k {
            return Err(EngineError::Invalid(format!(
                "k must be 1 to {}, got {k}",
                self.max_k
            )));
        }
        Ok(())
    }

    /// One `upsert_items` call: at most `max_items_per_call` items, each id
    /// and text valid, no id twice.
    pub fn check_items(&self, items: &[ItemInput]) -> Result<(), EngineError> {
        if items.len() > self.max_items_per_call {
            return Err(EngineError::Invalid(format!(
                "{} items in one call, the limit is {}",
                items.len(),
                self.max_items_per_call
            )));
        }
        let mut seen = HashSet::with_capacity(items.len());
        for item in items {
            self.check_id(&item.id)?;
            self.check_text(&item.text)?;
            if !seen.insert(item.id.as_str()) {
                return Err(EngineError::Invalid(format!(
                    "item `{}` appears twice in one upsert_items call",
                    item.id
                )));
            }
        }
        Ok(())
    }
}

/// Ids and kinds are names: no control characters (NUL, newlines, escapes).
fn no_control_characters(what: &str, value: &str) -> Result<(), EngineError> {
    match value.chars().find(|c| c.is_control()) {
        Some(c) => Err(EngineError::Invalid(format!(
            "{what} contains the control character {c:?}"
        ))),
        None => Ok(()),
    }
}
