//! Counters of what the layer has done, readable through
//! [`AsyncRequestHandle::metrics`](crate::AsyncRequestHandle::metrics), and per instance through
//! [`AsyncRequestHandle::instance_metrics`](crate::AsyncRequestHandle::instance_metrics).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

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
    /// Notifications waiting for delivery now (first attempt or retry).
    pub pending: u64,
    /// Notifications the receiver acknowledged with `2xx`.
    pub delivered: u64,
    /// Notifications that became dead letters.
    pub dead: u64,
    /// Attempts that failed and were scheduled again.
    pub retries: u64,
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) accepted: AtomicU64,
    pub(crate) running: AtomicU64,
    pub(crate) completed: AtomicU64,
    pub(crate) failed: AtomicU64,
    pub(crate) pending: AtomicU64,
    pub(crate) delivered: AtomicU64,
    pub(crate) dead: AtomicU64,
    pub(crate) retries: AtomicU64,
}

/// One of the [`Counters`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Counter {
    Accepted,
    Running,
    Completed,
    Failed,
    Pending,
    Delivered,
    Dead,
    Retries,
}

impl Counters {
    fn get(&self, counter: Counter) -> &AtomicU64 {
        match counter {
            Counter::Accepted => &self.accepted,
            Counter::Running => &self.running,
            Counter::Completed => &self.completed,
            Counter::Failed => &self.failed,
            Counter::Pending => &self.pending,
            Counter::Delivered => &self.delivered,
            Counter::Dead => &self.dead,
            Counter::Retries => &self.retries,
        }
    }

    pub(crate) fn add(&self, counter: Counter) {
        self.get(counter).fetch_add(1, Relaxed);
    }

    pub(crate) fn sub(&self, counter: Counter) {
        self.get(counter).fetch_sub(1, Relaxed);
    }

    pub(crate) fn snapshot(&self) -> Metrics {
        Metrics {
            accepted: self.accepted.load(Relaxed),
            running: self.running.load(Relaxed),
            completed: self.completed.load(Relaxed),
            failed: self.failed.load(Relaxed),
            pending: self.pending.load(Relaxed),
            delivered: self.delivered.load(Relaxed),
            dead: self.dead.load(Relaxed),
            retries: self.retries.load(Relaxed),
        }
    }
}
