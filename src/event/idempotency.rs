//! Idempotency keys on the event side: the settings, and the keys this node is recording at this
//! moment, so that a copy of a request arriving while the first is being recorded waits for it
//! (at most [`WAIT_FOR_FIRST`]) instead of racing it to the store. The store decides who holds a
//! key (across nodes too); [`dispatch`](super::dispatch) claims it with the event and answers a
//! copy with the first receipt.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::watch;

use crate::request::refusal::{Refusal, RefusalCode};
use crate::store::KeyScope;

/// How long a copy waits for the first request with its key to be recorded, before it is
/// refused with `409 idempotency_key_in_use`.
pub(crate) const WAIT_FOR_FIRST: Duration = Duration::from_secs(2);

/// The layer's idempotency settings and the keys being recorded on this node.
#[derive(Debug)]
pub(crate) struct Keys {
    /// Async requests without a key are refused (`400 idempotency_key_required`).
    pub(crate) required: bool,
    /// How long a key stays claimed.
    pub(crate) retention: Duration,
    /// Each key being recorded now (its scope's digest), with a receiver that closes when its
    /// recording ends.
    recording: Mutex<HashMap<[u8; 32], watch::Receiver<()>>>,
}

/// This node is recording a key; dropped, a copy waiting here goes on.
#[derive(Debug)]
pub(crate) struct Recording<'a> {
    keys: &'a Keys,
    scope: [u8; 32],
    _ended: watch::Sender<()>,
}

impl Keys {
    pub(crate) fn new(required: bool, retention: Duration) -> Self {
        Self {
            required,
            retention,
            recording: Mutex::default(),
        }
    }

    /// Takes `scope` for recording here, waiting while another request with it is being
    /// recorded on this node; `409 idempotency_key_in_use` if that takes longer than
    /// [`WAIT_FOR_FIRST`].
    pub(crate) async fn record(&self, scope: &KeyScope) -> Result<Recording<'_>, Refusal> {
        let scope = scope.digest();
        let deadline = tokio::time::Instant::now() + WAIT_FOR_FIRST;
        loop {
            let mut first = {
                let mut recording = self
                    .recording
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                match recording.get(&scope) {
                    // Subscribed under the lock: the first's end cannot slip past unseen.
                    Some(first) => first.clone(),
                    None => {
                        let (ended, receiver) = watch::channel(());
                        recording.insert(scope, receiver);
                        return Ok(Recording {
                            keys: self,
                            scope,
                            _ended: ended,
                        });
                    }
                }
            };
            if tokio::time::timeout_at(deadline, first.changed())
                .await
                .is_err()
            {
                return Err(Refusal::new(
                    RefusalCode::IdempotencyKeyInUse,
                    "An earlier request with this Idempotency-Key is still being recorded; \
                     retry in a second to get its answer.",
                ));
            }
        }
    }
}

impl Drop for Recording<'_> {
    fn drop(&mut self) {
        self.keys
            .recording
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.scope);
        // `_ended` is dropped after this: the waiters see it closed and look again.
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scope(key: &str) -> KeyScope {
        KeyScope {
            instance_id: 0,
            method: "POST".into(),
            path: "/work".into(),
            key: key.into(),
        }
    }

    #[tokio::test]
    async fn a_copy_waits_for_the_first_and_then_records() {
        let keys = Keys::new(false, Duration::from_secs(60));
        let first = keys.record(&scope("a")).await.unwrap();
        // Another key is not held back.
        drop(keys.record(&scope("b")).await.unwrap());
        let a = scope("a");
        let copy = keys.record(&a);
        tokio::pin!(copy);
        assert!(futures_now(copy.as_mut()).is_none(), "waits for the first");
        drop(first);
        assert!(copy.await.is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn a_copy_waits_two_seconds_at_most() {
        let keys = Keys::new(false, Duration::from_secs(60));
        let _first = keys.record(&scope("a")).await.unwrap();
        let refusal = keys.record(&scope("a")).await.unwrap_err();
        assert_eq!(refusal.code, RefusalCode::IdempotencyKeyInUse);
    }

    /// The future's output if it is ready at once.
    fn futures_now<F: std::future::Future + Unpin>(future: F) -> Option<F::Output> {
        let mut future = future;
        let waker = std::task::Waker::noop();
        match std::pin::Pin::new(&mut future).poll(&mut std::task::Context::from_waker(waker)) {
            std::task::Poll::Ready(output) => Some(output),
            std::task::Poll::Pending => None,
        }
    }
}
