//! Blocking engine work on its own thread, awaited as a future: the foreign
//! side's executor (Swift concurrency, Kotlin coroutines, asyncio) polls it
//! through UniFFI, so no Rust async runtime is needed.
//!
//! Exit safety: waking the future runs the foreign side's continuation on
//! the worker thread. If the caller could see the result while that foreign
//! code still runs there, it could finish and exit the process under it
//! (Python then ends the worker with `pthread_exit`, whose forced unwind
//! through Rust frames aborts with "FATAL: exception not rethrown"). So a
//! poll that finds the result waits until the worker has left `wake()`.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::thread::ThreadId;
use std::time::{Duration, Instant};

use l2rec::engine::CancelToken;

use crate::error::{guard, L2recError};

/// The engine work reserves this much stack, as a main thread would have.
const STACK_BYTES: usize = 8 << 20;

/// How long a poll waits for the worker to leave the foreign wake callback
/// (a callback that blocks longer than this is the foreign side's bug).
const WAKE_GRACE: Duration = Duration::from_secs(10);

struct Slot<T> {
    result: Option<Result<T, L2recError>>,
    waker: Option<Waker>,
    /// The worker is inside `waker.wake()` (foreign code on its thread).
    waking: bool,
    worker: Option<ThreadId>,
}

struct Shared<T> {
    slot: Mutex<Slot<T>>,
    woken: Condvar,
}

impl<T> Shared<T> {
    fn lock(&self) -> MutexGuard<'_, Slot<T>> {
        self.slot.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The result of work running on a background thread. Dropping it before it
/// completes (the foreign task was cancelled) cancels the work's token.
pub(crate) struct Background<T> {
    shared: Arc<Shared<T>>,
    cancel: CancelToken,
    done: bool,
}

/// Starts `work` on a new thread.
pub(crate) fn spawn<T, F>(name: &str, cancel: CancelToken, work: F) -> Background<T>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, L2recError> + Send + 'static,
{
    let shared = Arc::new(Shared {
        slot: Mutex::new(Slot {
            result: None,
            waker: None,
            waking: false,
            worker: None,
        }),
        woken: Condvar::new(),
    });
    let theirs = Arc::clone(&shared);
    let started = std::thread::Builder::new()
        .name(format!("l2rec-{name}"))
        .stack_size(STACK_BYTES)
        .spawn(move || {
            theirs.lock().worker = Some(std::thread::current().id());
            let result = guard(work);
            let waker = {
                let mut slot = theirs.lock();
                slot.result = Some(result);
                let waker = slot.waker.take();
                slot.waking = waker.is_some();
                waker
            };
            if let Some(waker) = waker {
                waker.wake();
                theirs.lock().waking = false;
                theirs.woken.notify_all();
            }
        });
    if let Err(e) = started {
        shared.lock().result = Some(Err(L2recError::Internal(format!(
            "could not start a thread for {name}: {e}"
        ))));
    }
    Background {
        shared,
        cancel,
        done: false,
    }
}

impl<T> Future for Background<T> {
    type Output = Result<T, L2recError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let shared = Arc::clone(&self.shared);
        let mut slot = shared.lock();
        if slot.result.is_none() {
            slot.waker = Some(cx.waker().clone());
            return Poll::Pending;
        }
        // Polled from another thread than the worker's (a foreign executor
        // that resumes inline polls from inside `wake()`: no waiting there).
        if slot.worker != Some(std::thread::current().id()) {
            let deadline = Instant::now() + WAKE_GRACE;
            while slot.waking {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                slot = shared
                    .woken
                    .wait_timeout(slot, left)
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
            }
        }
        let Some(result) = slot.result.take() else {
            slot.waker = Some(cx.waker().clone());
            return Poll::Pending;
        };
        drop(slot);
        self.done = true;
        Poll::Ready(result)
    }
}

impl<T> Drop for Background<T> {
    fn drop(&mut self) {
        if !self.done {
            self.cancel.cancel();
        }
    }
}
