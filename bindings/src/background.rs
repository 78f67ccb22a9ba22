//! Blocking engine work on its own thread, awaited as a future: the foreign
//! side's executor (Swift concurrency, Kotlin coroutines, asyncio) polls it
//! through UniFFI, so no Rust async runtime is needed.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use l2rec::engine::CancelToken;

use crate::error::{guard, L2recError};

/// The engine work reserves this much stack, as a main thread would have.
const STACK_BYTES: usize = 8 << 20;

struct Slot<T> {
    result: Option<Result<T, L2recError>>,
    waker: Option<Waker>,
}

/// The result of work running on a background thread. Dropping it before it
/// completes (the foreign task was cancelled) cancels the work's token.
pub(crate) struct Background<T> {
    slot: Arc<Mutex<Slot<T>>>,
    cancel: CancelToken,
    done: bool,
}

/// Starts `work` on a new thread.
pub(crate) fn spawn<T, F>(name: &str, cancel: CancelToken, work: F) -> Background<T>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, L2recError> + Send + 'static,
{
    let slot = Arc::new(Mutex::new(Slot {
        result: None,
        waker: None,
    }));
    let theirs = Arc::clone(&slot);
    let started = std::thread::Builder::new()
        .name(format!("l2rec-{name}"))
        .stack_size(STACK_BYTES)
        .spawn(move || {
            let result = guard(work);
            let waker = {
                let mut slot = theirs.lock().unwrap_or_else(|p| p.into_inner());
                slot.result = Some(result);
                slot.waker.take()
            };
            if let Some(waker) = waker {
                waker.wake();
            }
        });
    if let Err(e) = started {
        slot.lock().unwrap_or_else(|p| p.into_inner()).result = Some(Err(L2recError::Internal(
            format!("could not start a thread for {name}: {e}"),
        )));
    }
    Background {
        slot,
        cancel,
        done: false,
    }
}

impl<T> Future for Background<T> {
    type Output = Result<T, L2recError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut slot = self.slot.lock().unwrap_or_else(|p| p.into_inner());
        match slot.result.take() {
            Some(result) => {
                drop(slot);
                self.done = true;
                Poll::Ready(result)
            }
            None => {
                slot.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

impl<T> Drop for Background<T> {
    fn drop(&mut self) {
        if !self.done {
            self.cancel.cancel();
        }
    }
}
