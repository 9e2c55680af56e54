//! Counters of what the layer has done, readable through
//! [`AsyncRequestHandle::metrics`](crate::AsyncRequestHandle::metrics), and per instance through
//! [`AsyncRequestHandle::instance_metrics`](crate::AsyncRequestHandle::instance_metrics); with
//! the cargo feature `metrics`, also reported through the [`metrics`](https://docs.rs/metrics)
//! facade (`facade.rs`, the names in docs/operating.md).
//!
//! Every count of an event goes through its instance's counters, so the facade sees each event
//! once, labelled with its instance.

mod counter;
#[cfg(feature = "metrics")]
mod facade;

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

pub(crate) use self::counter::{AttemptResult, Counter};
#[cfg(feature = "metrics")]
pub(crate) use self::facade::refused;

/// A snapshot of the layer's counters. Totals count since the layer was built; `running` and
/// `pending` are what is in progress now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Metrics {
    /// Async requests accepted (receipts sent).
    pub accepted: u64,
    /// Jobs running now.
    pub running: u64,
    /// Jobs that ended with a response (`completed`).
    pub completed: u64,
    /// Jobs that ended without one (`failed`, including `interrupted` ones found on recovery).
    pub failed: u64,
    /// Events a client cancelled before their job ended (`cancelled`), counted by the node that
    /// recorded the cancel.
    pub cancelled: u64,
    /// Notifications waiting for delivery now (first attempt or retry).
    pub pending: u64,
    /// Notifications the receiver acknowledged with `2xx`.
    pub delivered: u64,
    /// Notifications that became dead letters.
    pub dead: u64,
    /// Attempts that failed and were scheduled again.
    pub retries: u64,
    /// Async requests answered with the receipt of the earlier request that claimed their
    /// `Idempotency-Key` (no new event).
    pub idempotent_replays: u64,
    /// Status requests waiting now for their event to end (`Prefer: wait`).
    pub status_waits: u64,
    /// Notifications held now by their receiver's open circuit (no attempt is made).
    pub held: u64,
    /// Attempts that waited for their turn: the instance's `max_delivery_rate` or a free
    /// connection to their receiver.
    pub throttled: u64,
    /// Receivers whose circuit is open now (as this node sees them).
    pub receivers_open: u64,
    /// Receivers whose circuit is half-open now: a probe in flight.
    pub receivers_half_open: u64,
    /// Receivers disabled now (known to this node).
    pub receivers_disabled: u64,
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    /// Where the counts are reported with an instance label (feature `metrics`); `None` for the
    /// layer-wide counters of a layer with many instances (each instance's own report).
    #[cfg(feature = "metrics")]
    facade: Option<facade::Facade>,
    pub(crate) accepted: AtomicU64,
    pub(crate) running: AtomicU64,
    pub(crate) completed: AtomicU64,
    pub(crate) failed: AtomicU64,
    pub(crate) cancelled: AtomicU64,
    pub(crate) pending: AtomicU64,
    pub(crate) delivered: AtomicU64,
    pub(crate) dead: AtomicU64,
    pub(crate) retries: AtomicU64,
    pub(crate) replays: AtomicU64,
    pub(crate) waiting: AtomicU64,
    pub(crate) held: AtomicU64,
    pub(crate) throttled: AtomicU64,
    pub(crate) receivers_open: AtomicU64,
    pub(crate) receivers_half_open: AtomicU64,
    pub(crate) receivers_disabled: AtomicU64,
}

/// When the layer began answering an async request, for the receipt-latency histogram; nothing
/// at all without the feature `metrics`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Started {
    #[cfg(feature = "metrics")]
    at: std::time::Instant,
}

impl Started {
    #[inline]
    pub(crate) fn now() -> Self {
        Self {
            #[cfg(feature = "metrics")]
            at: std::time::Instant::now(),
        }
    }
}

impl Counters {
    /// Counters reported through the `metrics` facade labelled with `instance` (with the
    /// feature), else plain counters.
    pub(crate) fn for_instance(instance: u64) -> Self {
        #[cfg(not(feature = "metrics"))]
        let _ = instance;
        Self {
            #[cfg(feature = "metrics")]
            facade: Some(facade::Facade::new(instance)),
            ..Self::default()
        }
    }

    fn get(&self, counter: Counter) -> &AtomicU64 {
        match counter {
            Counter::Accepted => &self.accepted,
            Counter::Running => &self.running,
            Counter::Completed => &self.completed,
            Counter::Failed => &self.failed,
            Counter::Cancelled => &self.cancelled,
            Counter::Pending => &self.pending,
            Counter::Delivered => &self.delivered,
            Counter::Dead => &self.dead,
            Counter::Retries => &self.retries,
            Counter::Replayed => &self.replays,
            Counter::Waiting => &self.waiting,
            Counter::Held => &self.held,
            Counter::Throttled => &self.throttled,
            Counter::ReceiversOpen => &self.receivers_open,
            Counter::ReceiversHalfOpen => &self.receivers_half_open,
            Counter::ReceiversDisabled => &self.receivers_disabled,
        }
    }

    pub(crate) fn add(&self, counter: Counter) {
        self.get(counter).fetch_add(1, Relaxed);
        #[cfg(feature = "metrics")]
        if let Some(facade) = &self.facade {
            facade.add(counter);
        }
    }

    pub(crate) fn sub(&self, counter: Counter) {
        self.get(counter).fetch_sub(1, Relaxed);
        #[cfg(feature = "metrics")]
        if let Some(facade) = &self.facade {
            facade.sub(counter);
        }
    }

    /// A delivery attempt ended so (reported through the facade only).
    #[inline]
    pub(crate) fn attempt(&self, result: AttemptResult, host: Option<&str>) {
        #[cfg(feature = "metrics")]
        if let Some(facade) = &self.facade {
            facade.attempt(result, host);
        }
        #[cfg(not(feature = "metrics"))]
        let _ = (result, host);
    }

    /// A receipt is ready, the request having reached the layer at `started`.
    #[inline]
    pub(crate) fn receipt_ready(&self, started: Started) {
        #[cfg(feature = "metrics")]
        if let Some(facade) = &self.facade {
            facade.receipt_ready(started.at.elapsed());
        }
        #[cfg(not(feature = "metrics"))]
        let _ = started;
    }

    /// A notification was delivered `since_accepted` after its event was accepted.
    #[inline]
    pub(crate) fn delivered_after(&self, since_accepted: Duration) {
        #[cfg(feature = "metrics")]
        if let Some(facade) = &self.facade {
            facade.delivered_after(since_accepted);
        }
        #[cfg(not(feature = "metrics"))]
        let _ = since_accepted;
    }

    pub(crate) fn snapshot(&self) -> Metrics {
        Metrics {
            accepted: self.accepted.load(Relaxed),
            running: self.running.load(Relaxed),
            completed: self.completed.load(Relaxed),
            failed: self.failed.load(Relaxed),
            cancelled: self.cancelled.load(Relaxed),
            pending: self.pending.load(Relaxed),
            delivered: self.delivered.load(Relaxed),
            dead: self.dead.load(Relaxed),
            retries: self.retries.load(Relaxed),
            idempotent_replays: self.replays.load(Relaxed),
            status_waits: self.waiting.load(Relaxed),
            held: self.held.load(Relaxed),
            throttled: self.throttled.load(Relaxed),
            receivers_open: self.receivers_open.load(Relaxed),
            receivers_half_open: self.receivers_half_open.load(Relaxed),
            receivers_disabled: self.receivers_disabled.load(Relaxed),
        }
    }
}
