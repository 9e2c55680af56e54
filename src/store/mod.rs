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
//! Records name the instance an event belongs to by id only: signing keys are never stored; each
//! delivery attempt asks the layer's instances for the current ones. They keep the trace the
//! event belongs to ([`TraceContext`]), so that work resumed or taken over stays in the caller's
//! trace.
//!
//! # What waits for the disk
//!
//! A durable store makes exactly two kinds of write durable before their futures resolve, because
//! a guarantee rests on each:
//!
//! - [`dispatched`](EventStore::dispatched) — the receipt is sent only after it resolves; a
//!   receipt must never name an event a crash forgets.
//! - [`finished`](EventStore::finished) — the first delivery attempt is made only after it
//!   resolves; otherwise a crash after a delivered `completed` could be recovered into a
//!   contradicting `failed`/`interrupted` notification for the same event.
//!
//! [`revive`](EventStore::revive) is durable too: an operator was told the redelivery started.
//! [`running`](EventStore::running), [`attempted`](EventStore::attempted),
//! [`delivered`](EventStore::delivered) and [`dead`](EventStore::dead) need not wait for the disk
//! (though what they wrote must be readable at once): if a crash loses them, recovery resends a
//! notification under its original `notificationId` (the at-least-once rule receivers
//! de-duplicate on) or ends a lost `running` event as `interrupted`, exactly as a `dispatched` one.
//! [`StoreStats`] says how many commits waited for the disk.
//!
//! A client's `Idempotency-Key` is claimed with its event, in the same durable write
//! ([`EventStore::dispatched_with_key`]): a store keeps each claimed key ([`IdempotencyKey`]) until
//! it expires, and answers a second claim with the event that holds it ([`KeyClaim::Held`]).
//!
//! - [`MemoryStore`] (the default) keeps records in memory: nothing survives a restart.
//! - `PostgresStore` (cargo feature `postgres`) keeps them in one PostgreSQL database that several
//!   nodes of an app share; a node that dies has its work finished by another.
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

use std::sync::Arc;

pub(crate) mod history;
mod keys;
mod lifecycle;
mod memory;
#[cfg(feature = "postgres")]
mod postgres;
mod receivers;
#[cfg(feature = "redb")]
mod redb;
pub(crate) mod trace;

use std::fmt;
use std::future::Future;
use std::pin::Pin;

use bytes::Bytes;

use crate::wire::ids::{EventId, NotificationId};

pub use self::history::{AttemptRecord, MAX_ATTEMPT_HISTORY};
pub use self::keys::{IdempotencyKey, KeyClaim, KeyScope};
#[cfg(feature = "redb")]
pub(crate) use self::lifecycle::ProgressTable;
pub use self::lifecycle::{CancelClaim, ProgressRecord};
pub use self::memory::{MemoryStore, DEFAULT_MAX_DEAD_LETTERS, DEFAULT_MAX_RETAINED};
#[cfg(feature = "postgres")]
#[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
pub use self::postgres::{
    PostgresStore, PostgresStoreBuilder, DEFAULT_LEASE_TIMEOUT, DEFAULT_SCHEMA,
};
pub use self::receivers::DisabledReceiver;
#[cfg(feature = "redb")]
pub use self::redb::RedbStore;
pub use self::trace::{TraceContext, MAX_TRACE_CONTEXT_BYTES};

/// The future a store method returns.
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'a>>;

/// An accepted event whose job has not finished.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventRecord {
    /// The event.
    pub event_id: EventId,
    /// The id its notification will carry.
    pub notification_id: NotificationId,
    /// The instance it belongs to (`instanceId`); its keys are looked up when delivering.
    pub instance_id: u64,
    /// Where the notification goes (empty: nowhere, the client polls the status endpoint).
    pub target: String,
    /// Whether `target` is the instance's configured callback URL rather than the request's own:
    /// each attempt then goes to the instance's URL as it is at that moment.
    pub instance_url: bool,
    /// When the event was accepted, Unix milliseconds.
    pub accepted_at_ms: u64,
    /// Whether the job has started.
    pub running: bool,
    /// The job's last progress report, if it made one (kept as the store can: see
    /// [`EventStore::progress`]); boxed, as most jobs never report.
    pub progress: Option<Box<ProgressRecord>>,
    /// The trace the event belongs to, if the request carried one and the feature
    /// `opentelemetry` is on; shared, as the records of one event are cloned often.
    pub trace: Option<Arc<TraceContext>>,
}

/// Where a notification is in its delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum DeliveryState {
    /// Waiting for its next attempt.
    Pending,
    /// The receiver took it; kept until `retain_until_ms` for status queries.
    Delivered,
    /// Every attempt failed (or the receiver said `410 Gone`); kept as a dead letter.
    Dead,
    /// The event had no callback URL (the client polls the status endpoint); kept until
    /// `retain_until_ms`.
    NotRequested,
}

impl DeliveryState {
    /// The state's name in a status answer: `pending`, `delivered`, `dead` or `none`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Delivered => "delivered",
            Self::Dead => "dead",
            Self::NotRequested => "none",
        }
    }
}

/// A finished event's notification: pending, delivered, dead, or not requested.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotificationRecord {
    /// The event it ends.
    pub event_id: EventId,
    /// Its id, the same on every attempt.
    pub notification_id: NotificationId,
    /// The instance it belongs to (`instanceId`); its keys are looked up for every attempt.
    pub instance_id: u64,
    /// Where it goes (empty: nowhere, the client polls the status endpoint); with
    /// `instance_url`, where it went when the event was accepted.
    pub target: String,
    /// Whether `target` is the instance's configured callback URL rather than the request's own:
    /// each attempt then goes to the instance's URL as it is at that moment.
    pub instance_url: bool,
    /// The exact JSON body (signatures are made per attempt).
    pub body: Bytes,
    /// When the event was accepted, Unix milliseconds (0 when the store did not know it).
    pub accepted_at_ms: u64,
    /// Attempts made so far (since the last redelivery: a revived dead letter starts again at 0).
    pub attempts: u32,
    /// The last attempts, oldest first: at most [`MAX_ATTEMPT_HISTORY`], across redeliveries.
    pub history: Vec<AttemptRecord>,
    /// When the next attempt is due, Unix milliseconds.
    pub next_attempt_at_ms: u64,
    /// Why the last attempt failed.
    pub last_error: Option<String>,
    /// Where the delivery is.
    pub state: DeliveryState,
    /// Until when a delivered or not-requested notification is kept for status queries, Unix
    /// milliseconds (the store may drop it after that).
    pub retain_until_ms: u64,
    /// The job's last progress report, if it made one; boxed, as most jobs never report.
    pub progress: Option<Box<ProgressRecord>>,
    /// The trace the event belongs to (its [`EventRecord`]'s), if the request carried one and
    /// the feature `opentelemetry` is on; shared, as the records of one event are cloned often.
    pub trace: Option<Arc<TraceContext>>,
}

/// What a store knows about one event, for the status endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventSnapshot {
    /// Accepted; the job has not finished.
    Unfinished(EventRecord),
    /// The job finished; its notification and where its delivery is.
    Finished(NotificationRecord),
}

/// Which dead letters to list: those after a cursor, of one instance or all, at most `limit`;
/// in notification-id order (the order events were accepted in).
///
/// A page ends with the last id it holds; asking for the next page `after` that id neither repeats
/// nor skips a dead letter, however many die or are redelivered meanwhile (a dead letter that dies
/// later with a smaller id than the cursor is listed by the next pass from the start).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeadLetterQuery {
    /// Only this instance's dead letters.
    pub instance: Option<u64>,
    /// Only dead letters whose notification id is above this one.
    pub after: Option<NotificationId>,
    /// At most this many.
    pub limit: usize,
}

impl DeadLetterQuery {
    /// Every dead letter, of every instance.
    pub fn all() -> Self {
        Self {
            instance: None,
            after: None,
            limit: usize::MAX,
        }
    }

    /// Whether `record` is a dead letter this query lists (ignoring `limit`).
    pub fn matches(&self, record: &NotificationRecord) -> bool {
        record.state == DeliveryState::Dead
            && self.instance.is_none_or(|id| id == record.instance_id)
            && self
                .after
                .is_none_or(|after| record.notification_id > after)
    }
}

/// What an earlier process left unfinished.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recovery {
    /// Events whose job never ended.
    pub unfinished: Vec<EventRecord>,
    /// Notifications still to be delivered.
    pub pending: Vec<NotificationRecord>,
}

/// How much a store has written, for benches and operators: transactions, and how many of them
/// waited for the disk.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct StoreStats {
    /// Transactions committed.
    pub transactions: u64,
    /// Commits that waited for the disk (an fsync for `RedbStore`).
    pub durable_commits: u64,
}

/// Records the life of events; see the [module docs](self).
pub trait EventStore: Send + Sync + 'static {
    /// Whether records survive the process (decides what a shutdown report says about leftovers).
    fn is_durable(&self) -> bool;

    /// What the store has committed so far (zeros for a store that does not count).
    fn stats(&self) -> StoreStats {
        StoreStats::default()
    }

    /// A fresh event id and notification id, never handed out before by this store.
    fn allocate_ids(&self) -> StoreFuture<'_, (EventId, NotificationId)>;

    /// The event was accepted. **Durable**: when this resolves, the record must survive a crash.
    fn dispatched<'a>(&'a self, event: &'a EventRecord) -> StoreFuture<'a, ()>;

    /// The event was accepted under a client's idempotency key: records the event and the key
    /// together, in one **durable** write — unless an earlier event holds the key and it has not
    /// expired; then nothing is written and that event comes back ([`KeyClaim::Held`]). Of calls
    /// with one scope and key, on any number of nodes, exactly one claims it. The default: an
    /// error (the store keeps no keys, so requests with a key are refused as `store_unavailable`).
    fn dispatched_with_key<'a>(
        &'a self,
        event: &'a EventRecord,
        key: &'a IdempotencyKey,
    ) -> StoreFuture<'a, KeyClaim> {
        let _ = (event, key);
        Box::pin(async {
            Err(StoreError::new(
                "this event store keeps no idempotency keys",
            ))
        })
    }

    /// The event's job has started. Need not be durable (lost, the event ends `interrupted`).
    fn running(&self, event_id: EventId) -> StoreFuture<'_, ()>;

    /// The job ended: the event is done and its notification pending (or, without a callback
    /// URL, not requested), atomically. **Durable**: it resolves only once on disk, before the
    /// first delivery attempt. Only an unfinished event ends so: one that has an outcome already
    /// (a client cancelled it, another node took it over) is left as it is, and the answer is
    /// [`StoreError::superseded`], so that no event ever has two outcomes.
    fn finished<'a>(&'a self, notification: &'a NotificationRecord) -> StoreFuture<'a, ()>;

    /// An attempt failed; the record carries the new count, next time and last error. Need not be
    /// durable (lost, the notification is attempted again).
    fn attempted<'a>(&'a self, notification: &'a NotificationRecord) -> StoreFuture<'a, ()>;

    /// The receiver took the notification (the record says until when to keep it for status
    /// queries; a store may keep fewer). Need not be durable (lost, it is sent once more).
    fn delivered<'a>(&'a self, notification: &'a NotificationRecord) -> StoreFuture<'a, ()>;

    /// No attempt is left: keep the notification as a dead letter. Need not be durable (lost,
    /// the notification is attempted again).
    fn dead<'a>(&'a self, notification: &'a NotificationRecord) -> StoreFuture<'a, ()>;

    /// A client cancelled the event: if it is unfinished, ends it with `notification` (its
    /// `cancelled` outcome) exactly as [`finished`](Self::finished) would, and answers
    /// [`CancelClaim::Cancelled`]; if it has an outcome already, writes nothing and answers
    /// [`CancelClaim::Finished`] with it. One of a cancel and the job's own `finished` wins,
    /// atomically, on any number of nodes. **Durable**: a cancel answered `Cancelled` survives a
    /// crash. The default: an error (such a store cannot cancel; clients are told to retry).
    fn cancel<'a>(&'a self, notification: &'a NotificationRecord) -> StoreFuture<'a, CancelClaim> {
        let _ = notification;
        Box::pin(async { Err(StoreError::new("this event store cannot cancel events")) })
    }

    /// The job's latest progress report. The layer coalesces reports to at most one write per
    /// event per second and never waits for it on a request; it need not be durable (lost, the
    /// status answer shows the one before). The default: not kept.
    fn progress<'a>(
        &'a self,
        event_id: EventId,
        progress: &'a ProgressRecord,
    ) -> StoreFuture<'a, ()> {
        let _ = (event_id, progress);
        Box::pin(async { Ok(()) })
    }

    /// For a store several nodes share: waits until events are ended (finished or cancelled)
    /// by any node, and returns their ids, so that a node drops jobs cancelled elsewhere and
    /// answers clients that wait for an end. The layer calls it in a loop. `None` (the
    /// default): nothing ends but by this process.
    fn ended_elsewhere(&self) -> Option<StoreFuture<'_, Vec<EventId>>> {
        None
    }

    /// What the store knows about an event, if anything (retention permitting).
    fn status(&self, event_id: EventId) -> StoreFuture<'_, Option<EventSnapshot>>;

    /// What is unfinished: events without a notification and pending notifications. Called
    /// once, before this process records its first event.
    fn recover(&self) -> StoreFuture<'_, Recovery>;

    /// For a store several nodes share: waits a while (a heartbeat, or until a peer says it
    /// left) for the work of nodes that stopped, takes it over and returns it, as
    /// [`recover`](Self::recover) does for an earlier process. The layer calls it in a loop.
    /// `None` (the default): the store has no nodes.
    fn take_over(&self) -> Option<StoreFuture<'_, Recovery>> {
        None
    }

    /// The dead letters `query` asks for, by notification id, lowest first.
    fn dead_letters(&self, query: DeadLetterQuery) -> StoreFuture<'_, Vec<NotificationRecord>>;

    /// Whether the store can be used now (a round trip to a database server, say), for health
    /// checks. The default: always.
    fn check(&self) -> StoreFuture<'_, ()> {
        Box::pin(async { Ok(()) })
    }

    /// Makes a dead letter pending again, with a fresh schedule starting now (attempts back to
    /// 0, its history kept); `None` if there is no such dead letter. **Durable**.
    fn revive(
        &self,
        notification_id: NotificationId,
    ) -> StoreFuture<'_, Option<NotificationRecord>>;

    /// Whether the store keeps disabled receivers (the three methods below). The layer then
    /// reads the list at start and, with nodes, every few seconds; otherwise it keeps them in
    /// memory alone. The default: no.
    fn keeps_disabled_receivers(&self) -> bool {
        false
    }

    /// Records a receiver as disabled, replacing an earlier record of the same id. **Durable**.
    /// The default keeps nothing: the receiver stays disabled on this node until it restarts.
    fn disable_receiver<'a>(&'a self, receiver: &'a DisabledReceiver) -> StoreFuture<'a, ()> {
        let _ = receiver;
        Box::pin(async { Ok(()) })
    }

    /// Forgets that the receiver `id` is disabled; whether it was. **Durable**. The default
    /// keeps nothing, so it never was.
    fn enable_receiver<'a>(&'a self, id: &'a str) -> StoreFuture<'a, bool> {
        let _ = id;
        Box::pin(async { Ok(false) })
    }

    /// Every receiver disabled now, by id. The layer reads it at start and every few seconds,
    /// to honour what other nodes disabled and enabled. The default: none.
    fn disabled_receivers(&self) -> StoreFuture<'_, Vec<DisabledReceiver>> {
        Box::pin(async { Ok(Vec::new()) })
    }
}

/// A store shared with other owners (an operator's handle, another layer) is a store too.
impl<T: EventStore + ?Sized> EventStore for std::sync::Arc<T> {
    fn is_durable(&self) -> bool {
        (**self).is_durable()
    }

    fn stats(&self) -> StoreStats {
        (**self).stats()
    }

    fn allocate_ids(&self) -> StoreFuture<'_, (EventId, NotificationId)> {
        (**self).allocate_ids()
    }

    fn dispatched<'a>(&'a self, event: &'a EventRecord) -> StoreFuture<'a, ()> {
        (**self).dispatched(event)
    }

    fn running(&self, event_id: EventId) -> StoreFuture<'_, ()> {
        (**self).running(event_id)
    }

    fn finished<'a>(&'a self, notification: &'a NotificationRecord) -> StoreFuture<'a, ()> {
        (**self).finished(notification)
    }

    fn attempted<'a>(&'a self, notification: &'a NotificationRecord) -> StoreFuture<'a, ()> {
        (**self).attempted(notification)
    }

    fn delivered<'a>(&'a self, notification: &'a NotificationRecord) -> StoreFuture<'a, ()> {
        (**self).delivered(notification)
    }

    fn dead<'a>(&'a self, notification: &'a NotificationRecord) -> StoreFuture<'a, ()> {
        (**self).dead(notification)
    }

    fn status(&self, event_id: EventId) -> StoreFuture<'_, Option<EventSnapshot>> {
        (**self).status(event_id)
    }

    fn recover(&self) -> StoreFuture<'_, Recovery> {
        (**self).recover()
    }

    fn take_over(&self) -> Option<StoreFuture<'_, Recovery>> {
        (**self).take_over()
    }

    fn dead_letters(&self, query: DeadLetterQuery) -> StoreFuture<'_, Vec<NotificationRecord>> {
        (**self).dead_letters(query)
    }

    fn check(&self) -> StoreFuture<'_, ()> {
        (**self).check()
    }

    fn revive(
        &self,
        notification_id: NotificationId,
    ) -> StoreFuture<'_, Option<NotificationRecord>> {
        (**self).revive(notification_id)
    }

    fn dispatched_with_key<'a>(
        &'a self,
        event: &'a EventRecord,
        key: &'a IdempotencyKey,
    ) -> StoreFuture<'a, KeyClaim> {
        (**self).dispatched_with_key(event, key)
    }

    fn cancel<'a>(&'a self, notification: &'a NotificationRecord) -> StoreFuture<'a, CancelClaim> {
        (**self).cancel(notification)
    }

    fn progress<'a>(
        &'a self,
        event_id: EventId,
        progress: &'a ProgressRecord,
    ) -> StoreFuture<'a, ()> {
        (**self).progress(event_id, progress)
    }

    fn ended_elsewhere(&self) -> Option<StoreFuture<'_, Vec<EventId>>> {
        (**self).ended_elsewhere()
    }

    fn keeps_disabled_receivers(&self) -> bool {
        (**self).keeps_disabled_receivers()
    }

    fn disable_receiver<'a>(&'a self, receiver: &'a DisabledReceiver) -> StoreFuture<'a, ()> {
        (**self).disable_receiver(receiver)
    }

    fn enable_receiver<'a>(&'a self, id: &'a str) -> StoreFuture<'a, bool> {
        (**self).enable_receiver(id)
    }

    fn disabled_receivers(&self) -> StoreFuture<'_, Vec<DisabledReceiver>> {
        (**self).disabled_receivers()
    }
}

/// What a durable store's writer says a write did, for the writes that say: a revived dead
/// letter, an idempotency key's claim, an outcome, a receiver enabled.
#[cfg_attr(not(any(feature = "redb", feature = "postgres")), allow(dead_code))]
#[derive(Debug)]
pub(crate) enum Written {
    Record(Option<NotificationRecord>),
    Claim(KeyClaim),
    /// Whether a `finished` or a cancel ended the event (false: it had an outcome already).
    Ended(bool),
    /// Whether an enabled receiver was disabled.
    #[cfg_attr(not(feature = "redb"), allow(dead_code))]
    Enabled(bool),
}

#[cfg_attr(not(any(feature = "redb", feature = "postgres")), allow(dead_code))]
impl Written {
    /// A revive's answer.
    pub(crate) fn record(self) -> Option<NotificationRecord> {
        match self {
            Self::Record(record) => record,
            Self::Claim(_) | Self::Ended(_) | Self::Enabled(_) => {
                unreachable!("a revive answers with its record")
            }
        }
    }

    /// A keyed receipt's answer.
    pub(crate) fn claim(self) -> KeyClaim {
        match self {
            Self::Claim(claim) => claim,
            Self::Record(_) | Self::Ended(_) | Self::Enabled(_) => {
                unreachable!("a keyed receipt answers with its claim")
            }
        }
    }

    /// Whether a `finished` or a cancel ended the event.
    pub(crate) fn ended(self) -> bool {
        match self {
            Self::Ended(ended) => ended,
            Self::Record(_) | Self::Claim(_) | Self::Enabled(_) => {
                unreachable!("an outcome answers whether it won")
            }
        }
    }

    /// Whether an enabled receiver was disabled.
    #[cfg_attr(not(feature = "redb"), allow(dead_code))]
    pub(crate) fn enabled(self) -> bool {
        match self {
            Self::Enabled(was) => was,
            Self::Record(_) | Self::Claim(_) | Self::Ended(_) => {
                unreachable!("an enabling answers whether the receiver was disabled")
            }
        }
    }
}

/// A store could not do what was asked.
#[derive(Debug)]
pub struct StoreError {
    source: Box<dyn std::error::Error + Send + Sync>,
    superseded: bool,
}

impl StoreError {
    /// Wraps the underlying error.
    pub fn new(source: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        Self {
            source: source.into(),
            superseded: false,
        }
    }

    /// The event is no longer this node's: another node took it over (this one was silent for
    /// longer than its lease). Returned by [`EventStore::finished`]; the layer then leaves the
    /// event to the node that has it and delivers nothing.
    pub fn superseded(message: impl Into<String>) -> Self {
        Self {
            source: message.into().into(),
            superseded: true,
        }
    }

    /// Whether this is [`superseded`](Self::superseded).
    pub fn is_superseded(&self) -> bool {
        self.superseded
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

/// Events whose job runs in this process, for status answers. A durable store keeps this in
/// memory only: after a crash a dispatched and a running event end the same way (`interrupted`),
/// so writing it would cost a transaction and buy nothing.
#[cfg(any(feature = "redb", feature = "postgres"))]
#[derive(Debug, Default)]
pub(crate) struct RunningJobs(std::sync::Mutex<std::collections::HashSet<EventId>>);

#[cfg(any(feature = "redb", feature = "postgres"))]
impl RunningJobs {
    fn set(&self) -> std::sync::MutexGuard<'_, std::collections::HashSet<EventId>> {
        self.0.lock().unwrap_or_else(|poison| poison.into_inner())
    }

    /// The job started: resolves at once.
    pub(crate) fn start(&self, event_id: EventId) -> StoreFuture<'_, ()> {
        self.set().insert(event_id);
        Box::pin(async { Ok(()) })
    }

    pub(crate) fn end(&self, event_id: EventId) {
        self.set().remove(&event_id);
    }

    pub(crate) fn contains(&self, event_id: EventId) -> bool {
        self.set().contains(&event_id)
    }

    /// Every job running here now.
    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    pub(crate) fn ids(&self) -> Vec<EventId> {
        self.set().iter().copied().collect()
    }
}

pub(crate) fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
