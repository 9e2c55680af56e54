//! A store that fails on demand, over a `MemoryStore`: new events it cannot record, the next
//! outcomes or deliveries it cannot record, reads that fail, and a health check that never answers. It keeps
//! no idempotency keys (`EventStore::dispatched_with_key`'s default), as a store written before
//! them would.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use tower_async_request::event::{EventId, NotificationId};
use tower_async_request::store::{
    DeadLetterQuery, DisabledReceiver, EventRecord, EventSnapshot, EventStore, MemoryStore,
    NotificationRecord, Recovery, StoreError, StoreFuture,
};

#[derive(Debug, Default)]
pub struct FaultyStore {
    inner: MemoryStore,
    /// Whether recording a new event (`dispatched`) fails.
    pub failing_dispatched: AtomicBool,
    /// How many of the next new events are recorded but answered with an error (a commit whose
    /// answer was lost).
    pub lost_dispatch_acks: AtomicUsize,
    /// How many of the next outcomes (`finished`) fail.
    pub failing_outcomes: AtomicUsize,
    /// How many of the next deliveries (`delivered`) fail to be recorded.
    pub failing_deliveries: AtomicUsize,
    /// Whether status and dead-letter reads fail.
    pub failing_reads: AtomicBool,
    /// Whether the health check never answers.
    pub hanging_check: AtomicBool,
}

impl FaultyStore {
    pub fn failing_outcomes(count: usize) -> Self {
        Self {
            failing_outcomes: AtomicUsize::new(count),
            ..Self::default()
        }
    }

    fn read_error<'a, T: Send + 'a>(&self) -> Option<StoreFuture<'a, T>> {
        self.failing_reads
            .load(Ordering::SeqCst)
            .then(|| -> StoreFuture<'a, T> {
                Box::pin(async { Err(StoreError::new("the database is out of reach")) })
            })
    }
}

impl EventStore for FaultyStore {
    fn is_durable(&self) -> bool {
        false
    }
    fn allocate_ids(&self) -> StoreFuture<'_, (EventId, NotificationId)> {
        self.inner.allocate_ids()
    }
    fn dispatched<'a>(&'a self, event: &'a EventRecord) -> StoreFuture<'a, ()> {
        if self.failing_dispatched.load(Ordering::SeqCst) {
            return Box::pin(async { Err(StoreError::new("the database is out of reach")) });
        }
        let lost = self
            .lost_dispatch_acks
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if lost {
            let written = self.inner.dispatched(event);
            return Box::pin(async move {
                written.await?;
                Err(StoreError::new(
                    "the connection broke before the commit was answered",
                ))
            });
        }
        self.inner.dispatched(event)
    }
    fn running(&self, event_id: EventId) -> StoreFuture<'_, ()> {
        self.inner.running(event_id)
    }
    fn finished<'a>(&'a self, notification: &'a NotificationRecord) -> StoreFuture<'a, ()> {
        let failing = self
            .failing_outcomes
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if failing {
            return Box::pin(async { Err(StoreError::new("the database is out of reach")) });
        }
        self.inner.finished(notification)
    }
    fn attempted<'a>(&'a self, notification: &'a NotificationRecord) -> StoreFuture<'a, ()> {
        self.inner.attempted(notification)
    }
    fn delivered<'a>(&'a self, notification: &'a NotificationRecord) -> StoreFuture<'a, ()> {
        let failing = self
            .failing_deliveries
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if failing {
            return Box::pin(async { Err(StoreError::new("the database is out of reach")) });
        }
        self.inner.delivered(notification)
    }
    fn dead<'a>(&'a self, notification: &'a NotificationRecord) -> StoreFuture<'a, ()> {
        self.inner.dead(notification)
    }
    fn status(&self, event_id: EventId) -> StoreFuture<'_, Option<EventSnapshot>> {
        self.read_error()
            .unwrap_or_else(|| self.inner.status(event_id))
    }
    fn recover(&self) -> StoreFuture<'_, Recovery> {
        self.inner.recover()
    }
    fn dead_letters(&self, query: DeadLetterQuery) -> StoreFuture<'_, Vec<NotificationRecord>> {
        self.read_error()
            .unwrap_or_else(|| self.inner.dead_letters(query))
    }
    fn check(&self) -> StoreFuture<'_, ()> {
        if self.hanging_check.load(Ordering::SeqCst) {
            return Box::pin(std::future::pending());
        }
        self.inner.check()
    }
    fn revive(
        &self,
        notification_id: NotificationId,
    ) -> StoreFuture<'_, Option<NotificationRecord>> {
        self.inner.revive(notification_id)
    }
    fn keeps_disabled_receivers(&self) -> bool {
        self.inner.keeps_disabled_receivers()
    }
    fn disable_receiver<'a>(&'a self, receiver: &'a DisabledReceiver) -> StoreFuture<'a, ()> {
        self.inner.disable_receiver(receiver)
    }
    fn enable_receiver<'a>(&'a self, id: &'a str) -> StoreFuture<'a, bool> {
        self.inner.enable_receiver(id)
    }
    fn disabled_receivers(&self) -> StoreFuture<'_, Vec<DisabledReceiver>> {
        self.inner.disabled_receivers()
    }
}
