//! Progress and cancellation of long calls: one type for the engine, the
//! model, the CLI's bars and the FFI's callbacks.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

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

    /// The flag itself, for a decode to watch between graph nodes.
    pub(crate) fn flag(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.0)
    }
}

/// A long call was cancelled through its [`CancelToken`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("cancelled")]
pub struct Cancelled;

/// Where a long call reports `(done, total)` and learns it was cancelled.
/// Either half may be absent.
#[derive(Default)]
pub struct Progress<'a> {
    report: Option<&'a mut dyn FnMut(usize, usize)>,
    cancel: Option<&'a CancelToken>,
}

impl<'a> Progress<'a> {
    /// Reports nowhere, never cancelled.
    pub fn none() -> Self {
        Self::default()
    }

    pub fn new(report: &'a mut dyn FnMut(usize, usize), cancel: &'a CancelToken) -> Self {
        Self {
            report: Some(report),
            cancel: Some(cancel),
        }
    }

    /// Reports, never cancelled.
    pub fn reporting(report: &'a mut dyn FnMut(usize, usize)) -> Self {
        Self {
            report: Some(report),
            cancel: None,
        }
    }

    /// Cancellable, reports nowhere.
    pub fn cancellable(cancel: &'a CancelToken) -> Self {
        Self {
            report: None,
            cancel: Some(cancel),
        }
    }

    /// Reports `done` of `total`, then stops the work if it was cancelled.
    pub fn tick(&mut self, done: usize, total: usize) -> Result<(), Cancelled> {
        if let Some(report) = self.report.as_mut() {
            report(done, total);
        }
        if self.is_cancelled() {
            return Err(Cancelled);
        }
        Ok(())
    }

    /// Reports the work complete.
    pub fn finish(&mut self, total: usize) {
        if let Some(report) = self.report.as_mut() {
            report(total, total);
        }
    }

    pub fn is_cancelled(&self) -> bool {
        self.cancel.is_some_and(CancelToken::is_cancelled)
    }

    /// The token that cancels this work, if any.
    pub fn cancel_token(&self) -> Option<&'a CancelToken> {
        self.cancel
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_then_stops_once_cancelled() {
        let mut seen = Vec::new();
        let cancel = CancelToken::default();
        {
            let mut report = |done, total| seen.push((done, total));
            let mut progress = Progress::new(&mut report, &cancel);
            assert_eq!(progress.tick(0, 2), Ok(()));
            cancel.cancel();
            assert_eq!(progress.tick(1, 2), Err(Cancelled));
            progress.finish(2);
        }
        assert_eq!(seen, [(0, 2), (1, 2), (2, 2)]);
        assert_eq!(Progress::none().tick(0, 1), Ok(()));
    }
}
