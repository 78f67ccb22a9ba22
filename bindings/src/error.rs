//! The one error type the foreign side sees, mapped once from the engine's.

use l2rec::backbone::BackboneError;
use l2rec::engine::EngineError;
use l2rec::model::ModelError;
use l2rec::store::StoreError;

/// Every failure of the SDK. Flat: each variant carries the engine's message,
/// which says what failed and what to do about it.
///
/// Swift: `L2recError`, Kotlin: `L2recException`, Python: `L2recError`.
#[derive(Debug, thiserror::Error, uniffi::Error)]
#[uniffi(flat_error)]
pub enum L2recError {
    /// An argument is out of bounds (empty or too long id, `k` out of range,
    /// a master key that is not 32 bytes, a prompt longer than the context).
    #[error("{0}")]
    InvalidArgument(String),
    /// An event names an item the engine does not know and gives no text.
    #[error("{0}")]
    UnknownItem(String),
    /// The call was cancelled through its `CancelHandle` or by the caller's
    /// task/coroutine being cancelled.
    #[error("{0}")]
    Cancelled(String),
    /// The backbone model file is missing, unreadable, or not the expected
    /// file (checksum): download it again.
    #[error("{0}")]
    Backbone(String),
    /// The bundle is missing, corrupt (size or checksum), from an unsupported
    /// version, or made for another backbone: download it again.
    #[error("{0}")]
    Bundle(String),
    /// Another `Recommender` (in this or another process) has the store open.
    #[error("{0}")]
    StoreLocked(String),
    /// The master key is missing, wrong, or given for a plaintext store, or
    /// the encrypted store's keyring file is missing.
    #[error("{0}")]
    StoreKey(String),
    /// A stored record failed authentication or decoding.
    #[error("{0}")]
    StoreCorrupt(String),
    /// Any other store failure: I/O, disk full, a store from a newer version.
    #[error("{0}")]
    Store(String),
    /// The `Recommender` was shut down (`shutdown()`): open a new one.
    #[error("{0}")]
    Closed(String),
    /// A bug: an internal inconsistency or a panic, caught before it could
    /// cross the boundary. Please report it with the message.
    #[error("{0}")]
    Internal(String),
}

impl From<EngineError> for L2recError {
    fn from(e: EngineError) -> Self {
        let message = e.to_string();
        match e {
            EngineError::Invalid(_) => Self::InvalidArgument(message),
            EngineError::UnknownItem(_) => Self::UnknownItem(message),
            EngineError::Cancelled => Self::Cancelled(message),
            EngineError::Model(model) if model.is_cancelled() => Self::Cancelled(message),
            EngineError::Model(model) => match model {
                ModelError::Cancelled => Self::Cancelled(message),
                ModelError::Backbone(
                    BackboneError::PromptTooLong { .. } | BackboneError::EmptyPrompt,
                ) => Self::InvalidArgument(message),
                ModelError::Backbone(
                    BackboneError::Eval(_) | BackboneError::LayerMismatch { .. },
                ) => Self::Internal(message),
                ModelError::Backbone(_) => Self::Backbone(message),
                ModelError::Bundle(_) => Self::Bundle(message),
                ModelError::Kernel(_)
                | ModelError::Degenerate(_)
                | ModelError::UnknownRow { .. }
                | ModelError::PhiSize { .. } => Self::Internal(message),
            },
            EngineError::Store(store) => match store {
                StoreError::InvalidConfig { .. } | StoreError::InvalidInput { .. } => {
                    Self::InvalidArgument(message)
                }
                StoreError::Locked { .. } => Self::StoreLocked(message),
                StoreError::KeyRequired { .. }
                | StoreError::WrongKey { .. }
                | StoreError::NotEncrypted { .. }
                | StoreError::KeyringMissing { .. } => Self::StoreKey(message),
                StoreError::Corrupt { .. } | StoreError::UserDamaged { .. } => {
                    Self::StoreCorrupt(message)
                }
                StoreError::Io { .. }
                | StoreError::Db { .. }
                | StoreError::SchemaTooNew { .. }
                | StoreError::Closed { .. } => Self::Store(message),
            },
        }
    }
}

/// The message of a caught panic.
pub(crate) fn panic_message(payload: Box<dyn std::any::Any + Send>) -> L2recError {
    let what = payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_owned());
    L2recError::Internal(format!("l2rec panicked: {what}"))
}

/// Runs `f`, turning a panic into [`L2recError::Internal`].
pub(crate) fn guard<T>(f: impl FnOnce() -> Result<T, L2recError>) -> Result<T, L2recError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f))
        .unwrap_or_else(|p| Err(panic_message(p)))
}
