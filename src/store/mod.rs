//! Event stores: where each event's life is recorded, so that the delivery promise survives what
//! the process does not.
//!
//! An [`EventStore`] hands out ids and records, for every accepted event: *dispatched* (committed
//! before the receipt is sent), *running*, *finished* (the notification is now pending, with its
//! exact body), each failed *attempt* (count, next attempt time, last error), and finally
//! *delivered* or *dead*. On start-up, [`EventStore::recover`] returns what an earlier process left
//! unfinished: events whose job never ended (they get a `failed`/`interrupted` notification) and
//! pending notifications (they resume their schedule).
//!
//! - [`MemoryStore`] (the default) keeps records in memory: nothing survives a restart.
//! - `RedbStore` (cargo feature `redb`) keeps them in an embedded redb file with crash-safe,
//!   group-committed transactions.
//!
//! The trait is async and assumes nothing about being in-process, so a networked engine (Redis,
//! PostgreSQL) can implement it; such a store hands out ids that are unique across instances.
//!
//! # Example
//!
//! ```
//! use tower_async_request::{store::MemoryStore, AsyncRequestLayer};
//!
//! let layer = AsyncRequestLayer::builder()
//!     .default_callback_url("https://hooks.example.com/in")
//!     .store(MemoryStore::new())
//!     .build()
//!     .unwrap();
//! # drop(layer);
//! ```

mod memory;
#[cfg(feature = "redb")]
mod redb;

use std::fmt;
use std::future::Future;
use std::pin::Pin;

use bytes::Bytes;

use crate::ids::{EventId, NotificationId};

pub use self::memory::{MemoryStore, DEFAULT_MAX_DEAD_LETTERS};
#[cfg(feature = "redb")]
pub use self::redb::RedbStore;

/// The future a store method returns.
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'a>>;

/// An accepted event whose job has not finished.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventRecord {
    /// The event.
    pub event_id: EventId,
    /// The id its notification will carry.
    pub notification_id: NotificationId,
    /// Where the notification goes.
    pub target: String,
    /// When the event was accepted, Unix milliseconds.
    pub accepted_at_ms: u64,
    /// Whether the job has started.
    pub running: bool,
}

/// Where a notification is in its delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryState {
    /// Waiting for its next attempt.
    Pending,
    /// Every attempt failed (or the receiver said `410 Gone`); kept as a dead letter.
    Dead,
}

/// A notification that has not been delivered yet (pending) or never will be (dead).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotificationRecord {
    /// The event it ends.
    pub event_id: EventId,
    /// Its id, the same on every attempt.
    pub notification_id: NotificationId,
    /// Where it goes.
    pub target: String,
    /// The exact JSON body (signatures are made per attempt).
    pub body: Bytes,
    /// Attempts made so far.
    pub attempts: u32,
    /// When the next attempt is due, Unix milliseconds.
    pub next_attempt_at_ms: u64,
    /// Why the last attempt failed.
    pub last_error: Option<String>,
    /// Pending or dead.
    pub state: DeliveryState,
}

/// What an earlier process left unfinished.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recovery {
    /// Events whose job never ended.
    pub unfinished: Vec<EventRecord>,
    /// Notifications still to be delivered.
    pub pending: Vec<NotificationRecord>,
}

/// Records the life of events; see the [module docs](self).
pub trait EventStore: Send + Sync + 'static {
    /// Whether records survive the process (decides what a shutdown report says about leftovers).
    fn is_durable(&self) -> bool;

    /// A fresh event id and notification id, never handed out before by this store.
    fn allocate_ids(&self) -> StoreFuture<'_, (EventId, NotificationId)>;

    /// The event was accepted; when this resolves, the record must survive a crash.
    fn dispatched<'a>(&'a self, event: &'a EventRecord) -> StoreFuture<'a, ()>;

    /// The event's job has started.
    fn running(&self, event_id: EventId) -> StoreFuture<'_, ()>;

    /// The job ended: the event is done and its notification pending, atomically.
    fn finished<'a>(&'a self, notification: &'a NotificationRecord) -> StoreFuture<'a, ()>;

    /// An attempt failed; the record carries the new count, next time and last error.
    fn attempted<'a>(&'a self, notification: &'a NotificationRecord) -> StoreFuture<'a, ()>;

    /// The receiver took the notification; nothing about it needs keeping.
    fn delivered(&self, notification_id: NotificationId) -> StoreFuture<'_, ()>;

    /// No attempt is left: keep the notification as a dead letter.
    fn dead<'a>(&'a self, notification: &'a NotificationRecord) -> StoreFuture<'a, ()>;

    /// What is unfinished: events without a notification and pending notifications.
    fn recover(&self) -> StoreFuture<'_, Recovery>;

    /// The dead letters, oldest first.
    fn dead_letters(&self) -> StoreFuture<'_, Vec<NotificationRecord>>;

    /// Makes a dead letter pending again, with a fresh schedule starting now; `None` if there is
    /// no such dead letter.
    fn revive(
        &self,
        notification_id: NotificationId,
    ) -> StoreFuture<'_, Option<NotificationRecord>>;
}

/// A store could not do what was asked.
#[derive(Debug)]
pub struct StoreError {
    source: Box<dyn std::error::Error + Send + Sync>,
}

impl StoreError {
    /// Wraps the underlying error.
    pub fn new(source: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        Self {
            source: source.into(),
        }
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "event store error: {}", self.source)
    }
}

impl std::error::Error for StoreError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.source)
    }
}

pub(crate) fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
