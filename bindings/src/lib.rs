//! `l2rec-ffi`: the mobile SDK's boundary. A thin UniFFI layer over
//! [`l2rec::engine::Engine`] for Swift, Kotlin and Python: one object
//! ([`Recommender`]), plain records, one flat error enum ([`L2recError`]).
//!
//! Calls that run the backbone (open, upsert_items, observe, recommend,
//! explain, personalize, stats) are `async` on the foreign side: the work
//! runs on its own thread and the foreign executor awaits it, so they never
//! block the caller's thread. Open, upsert_items and personalize stop early
//! when their [`CancelHandle`] is cancelled or when the foreign side drops the
//! call's future (a cancelled Kotlin coroutine or asyncio task; the generated
//! Swift does not drop it on `Task` cancellation), and report progress to a
//! [`ProgressListener`]. No panic crosses the boundary: it comes back as
//! [`L2recError::Internal`].

use std::sync::{Arc, RwLock};

use l2rec::engine::{CancelToken, Engine, EngineConfig, Progress};

mod background;
mod error;
#[cfg(any(fuzzing, test))]
pub mod fuzzing;
mod types;

pub use error::L2recError;
pub use types::*;

use background::spawn;
use error::guard;

uniffi::setup_scaffolding!();

/// Receives the progress of a long call: `done` of `total` steps. Called on
/// the call's worker thread, not the caller's: hop to the UI thread yourself.
#[uniffi::export(foreign)]
pub trait ProgressListener: Send + Sync {
    fn on_progress(&self, done: u64, total: u64);
}

/// Cancels the calls it was passed to, from any thread. A cancelled call
/// fails with `L2recError.Cancelled`; a handle stays cancelled.
#[derive(Debug, Default, uniffi::Object)]
pub struct CancelHandle {
    token: CancelToken,
}

#[uniffi::export]
impl CancelHandle {
    #[uniffi::constructor]
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    pub fn cancel(&self) {
        self.token.cancel();
    }

    pub fn is_cancelled(&self) -> bool {
        self.token.is_cancelled()
    }
}

fn token(cancel: Option<Arc<CancelHandle>>) -> CancelToken {
    cancel.map(|c| c.token.clone()).unwrap_or_default()
}

fn reporter(listener: Option<Arc<dyn ProgressListener>>) -> impl FnMut(usize, usize) {
    move |done, total| {
        if let Some(listener) = &listener {
            listener.on_progress(done as u64, total as u64);
        }
    }
}

/// The on-device recommender: one per store, shared by all threads.
#[derive(uniffi::Object)]
pub struct Recommender {
    /// `None` once closed.
    engine: RwLock<Option<Arc<Engine>>>,
}

impl Recommender {
    /// The engine, or `Closed` after `close()`.
    fn engine(&self) -> Result<Arc<Engine>, L2recError> {
        let engine = self.engine.read().unwrap_or_else(|p| p.into_inner());
        engine
            .clone()
            .ok_or_else(|| L2recError::Closed("this Recommender was closed: open a new one".into()))
    }
}

#[uniffi::export]
impl Recommender {
    /// Verifies the backbone against the bundle and every bundle file, opens
    /// the store, and computes the item text states the bundle does not ship
    /// (reported as progress). Seconds on a phone: never on the UI thread.
    #[uniffi::constructor(default(progress = None, cancel = None))]
    pub async fn open(
        config: RecommenderConfig,
        progress: Option<Arc<dyn ProgressListener>>,
        cancel: Option<Arc<CancelHandle>>,
    ) -> Result<Arc<Self>, L2recError> {
        let cancel = token(cancel);
        let config: EngineConfig = config.try_into()?;
        let token = cancel.clone();
        spawn("open", cancel, move || {
            let engine = Engine::open(config, &mut Progress::new(&mut reporter(progress), &token))?;
            Ok(Arc::new(Self {
                engine: RwLock::new(Some(Arc::new(engine))),
            }))
        })
        .await
    }

    /// Adds or updates catalog items. Items the bundle knows keep their
    /// learned embedding; new ones become cold items (their text state is
    /// computed once and cached). Progress is reported per item.
    #[uniffi::method(default(progress = None, cancel = None))]
    pub async fn upsert_items(
        &self,
        items: Vec<Item>,
        progress: Option<Arc<dyn ProgressListener>>,
        cancel: Option<Arc<CancelHandle>>,
    ) -> Result<(), L2recError> {
        let cancel = token(cancel);
        let (engine, token) = (self.engine()?, cancel.clone());
        spawn("upsert", cancel, move || {
            let items: Vec<_> = items.into_iter().map(Into::into).collect();
            Ok(engine.upsert_items(&items, &mut Progress::new(&mut reporter(progress), &token))?)
        })
        .await
    }

    /// Records an event and returns its sequence number. An unknown item with
    /// `item_text` becomes a cold item; without text it fails with
    /// `UnknownItem`.
    pub async fn observe(&self, user: String, event: Event) -> Result<u64, L2recError> {
        let engine = self.engine()?;
        spawn("observe", CancelToken::default(), move || {
            Ok(engine.observe(&user, &event.into())?)
        })
        .await
    }

    /// The top `k` items for `user`; a user without events gets the most
    /// popular ones. A cancelled handle stops it, also inside a backbone pass.
    #[uniffi::method(default(options = None, cancel = None))]
    pub async fn recommend(
        &self,
        user: String,
        k: u32,
        options: Option<RecommendOptions>,
        cancel: Option<Arc<CancelHandle>>,
    ) -> Result<Vec<Recommendation>, L2recError> {
        let cancel = token(cancel);
        let (engine, token) = (self.engine()?, cancel.clone());
        spawn("recommend", cancel, move || {
            let options = options.map(Into::into).unwrap_or_default();
            let hits = engine.recommend_cancellable(&user, k as usize, options, &token)?;
            Ok(hits.into_iter().map(Into::into).collect())
        })
        .await
    }

    /// Expert scales, view weights, and the history items behind each of the
    /// top 10 recommendations. A cancelled handle stops it, also inside a
    /// backbone pass.
    #[uniffi::method(default(cancel = None))]
    pub async fn explain(
        &self,
        user: String,
        cancel: Option<Arc<CancelHandle>>,
    ) -> Result<Explanation, L2recError> {
        let cancel = token(cancel);
        let (engine, token) = (self.engine()?, cancel.clone());
        spawn("explain", cancel, move || {
            Ok(engine.explain_cancellable(&user, &token)?.into())
        })
        .await
    }

    /// Refines the user's parameters from their own events; saves them only
    /// when the held-back loss improves (see the report). Progress counts
    /// backbone passes.
    #[uniffi::method(default(options = None, progress = None, cancel = None))]
    pub async fn personalize(
        &self,
        user: String,
        options: Option<PersonalizeOptions>,
        progress: Option<Arc<dyn ProgressListener>>,
        cancel: Option<Arc<CancelHandle>>,
    ) -> Result<PersonalizeReport, L2recError> {
        let cancel = token(cancel);
        let (engine, token) = (self.engine()?, cancel.clone());
        spawn("personalize", cancel, move || {
            let options = options.map(Into::into).unwrap_or_default();
            Ok(engine
                .personalize(
                    &user,
                    options,
                    &mut Progress::new(&mut reporter(progress), &token),
                )?
                .into())
        })
        .await
    }

    /// Counts and sizes; takes the model lock, so it waits for a running call.
    pub async fn stats(&self) -> Result<Stats, L2recError> {
        let engine = self.engine()?;
        spawn("stats", CancelToken::default(), move || {
            Ok(engine.stats()?.into())
        })
        .await
    }

    /// Erases the user: destroys their key and records (crypto-shredding),
    /// then rewrites the store so that no byte of theirs lingers in its files.
    /// Store only: milliseconds for a phone-sized store (it rewrites it).
    pub fn forget_user(&self, user: String) -> Result<(), L2recError> {
        guard(|| Ok(self.engine()?.forget_user(&user)?))
    }

    /// Rewrites the store with live data only and returns its size on disk
    /// before and after, in bytes (sled's log grows with rewrites).
    pub fn compact(&self) -> Result<CompactReport, L2recError> {
        guard(|| {
            let report = self.engine()?.compact()?;
            Ok(CompactReport {
                bytes_before: report.bytes_before,
                bytes_after: report.bytes_after,
            })
        })
    }

    /// Everything stored about the user, with float vectors as bytes.
    pub fn export_user(&self, user: String) -> Result<UserExport, L2recError> {
        guard(|| Ok(self.engine()?.export_user(&user)?.into()))
    }

    /// Everything stored about the user as pretty-printed JSON, for a data
    /// access request.
    pub fn export_user_json(&self, user: String) -> Result<String, L2recError> {
        guard(|| {
            let value = self.engine()?.export_user(&user)?;
            serde_json::to_string_pretty(&value)
                .map_err(|e| L2recError::Internal(format!("serializing the export: {e}")))
        })
    }

    /// Writes buffered store writes to disk (needed with `Durability.Batched`
    /// before the app is suspended).
    pub fn flush(&self) -> Result<(), L2recError> {
        guard(|| Ok(self.engine()?.flush()?))
    }

    /// Flushes the store and releases the model and the store now (its lock
    /// is freed once calls already running have finished). Every later call
    /// fails with `Closed`; a second shutdown does nothing. For languages
    /// whose objects are freed by a garbage collector (Python), call it
    /// instead of relying on finalizers. (Not `close`: Kotlin's generated
    /// `close()` already frees the object itself.)
    pub fn shutdown(&self) -> Result<(), L2recError> {
        guard(|| {
            let engine = self
                .engine
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .take();
            match engine {
                Some(engine) => Ok(engine.flush()?),
                None => Ok(()),
            }
        })
    }
}

/// This library's version.
#[uniffi::export]
pub fn version() -> String {
    env!("CARGO_PKG_VERSION").to_owned()
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use l2rec::bundle::BundleError;
    use l2rec::engine::EngineError;
    use l2rec::model::ModelError;
    use l2rec::store::StoreError;

    use super::*;

    fn config(master_key: Option<Vec<u8>>) -> RecommenderConfig {
        RecommenderConfig {
            model_path: "m.gguf".into(),
            bundle_dir: "b".into(),
            store_path: "s".into(),
            master_key,
            durability: Some(Durability::Batched { flush_every_ms: 7 }),
            max_events_per_user: None,
            threads: Some(1),
            limits: None,
        }
    }

    #[test]
    fn errors_map_to_their_kind_with_the_engine_message() {
        let cases = [
            (
                EngineError::Invalid("k".into()),
                "InvalidArgument",
                "invalid argument: k",
            ),
            (EngineError::Cancelled, "Cancelled", "cancelled"),
            (
                EngineError::Model(ModelError::Cancelled),
                "Cancelled",
                "cancelled",
            ),
            (
                EngineError::Model(ModelError::Bundle(BundleError::NotADirectory("x".into()))),
                "Bundle",
                "x: not a directory",
            ),
            (
                EngineError::Store(StoreError::Locked { path: "p".into() }),
                "StoreLocked",
                "store at p is already open",
            ),
            (
                EngineError::Store(StoreError::WrongKey { path: "p".into() }),
                "StoreKey",
                "the master key does not match",
            ),
        ];
        for (engine, kind, message) in cases {
            let e = L2recError::from(engine);
            assert!(format!("{e:?}").starts_with(kind), "{e:?}");
            assert!(e.to_string().contains(message), "{e}");
        }
    }

    #[test]
    fn config_converts_and_checks_the_key_length() {
        let c: EngineConfig = config(Some(vec![7; 32])).try_into().unwrap();
        assert_eq!(c.master_key, Some([7; 32]));
        assert_eq!(c.model_path, PathBuf::from("m.gguf"));
        assert_eq!(c.threads, Some(1));
        assert!(matches!(
            c.durability,
            l2rec::store::Durability::Batched { flush_every_ms: 7 }
        ));
        assert_eq!(c.max_events_per_user, 1000, "the engine's default");
        let short = EngineConfig::try_from(config(Some(vec![7; 31])));
        assert!(matches!(short, Err(L2recError::InvalidArgument(m)) if m.contains("32 bytes")));
    }

    #[test]
    fn export_carries_floats_as_little_endian_bytes() {
        let json = serde_json::json!({
            "user": "u", "encrypted_at_rest": true,
            "record": {"phi": [1.0, -2.5], "version": 3},
            "events": [{"seq": 1, "item_id": "i", "timestamp_ms": 5, "kind": "k"}],
            "view_states": [{"view": "semantic", "history_hash": "h", "bundle_id": "b",
                             "state": [0.5]}],
        });
        let core: l2rec::store::UserExport = serde_json::from_value(json).unwrap();
        let e = UserExport::from(core);
        let mut phi = 1.0f32.to_le_bytes().to_vec();
        phi.extend((-2.5f32).to_le_bytes());
        assert_eq!(e.phi, Some(phi));
        assert_eq!(e.phi_version, 3);
        assert_eq!(e.events[0].item_id, "i");
        assert_eq!(e.view_states[0].state, 0.5f32.to_le_bytes().to_vec());
        let none = serde_json::json!({"user": "u", "encrypted_at_rest": false, "record": null,
                                      "events": [], "view_states": []});
        let none: l2rec::store::UserExport = serde_json::from_value(none).unwrap();
        assert_eq!(UserExport::from(none).phi, None);
    }

    #[test]
    fn background_work_resolves_panics_are_typed_and_drop_cancels() {
        let ok = background::spawn("t", CancelToken::default(), || Ok(41 + 1));
        assert_eq!(pollster::block_on(ok).unwrap(), 42);

        let panicked = background::spawn("t", CancelToken::default(), || -> Result<(), _> {
            panic!("boom")
        });
        match pollster::block_on(panicked) {
            Err(L2recError::Internal(m)) => assert!(m.contains("boom"), "{m}"),
            other => panic!("{other:?}"),
        }

        let token = CancelToken::default();
        let (tx, rx) = std::sync::mpsc::channel();
        let watched = token.clone();
        let pending = background::spawn("t", token.clone(), move || {
            while !watched.is_cancelled() {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            tx.send(()).unwrap();
            Ok(())
        });
        drop(pending);
        rx.recv_timeout(std::time::Duration::from_secs(10))
            .expect("dropping the future cancelled the work");
        assert!(token.is_cancelled());
    }
}
