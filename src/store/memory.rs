use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use super::{
    unix_ms, DeliveryState, EventRecord, EventStore, NotificationRecord, Recovery, StoreFuture,
};
use crate::ids::{EventId, IdGenerator, NotificationId};

/// Default number of dead letters a [`MemoryStore`] keeps (the oldest go first).
pub const DEFAULT_MAX_DEAD_LETTERS: usize = 10_000;

/// The default store: records in memory, nothing survives a restart.
///
/// Unfinished events and pending notifications are bounded by the layer's `max_in_flight`; dead
/// letters by [`MemoryStore::max_dead_letters`].
#[derive(Debug)]
pub struct MemoryStore {
    ids: &'static IdGenerator,
    max_dead_letters: usize,
    inner: Mutex<Records>,
}

#[derive(Debug, Default)]
struct Records {
    unfinished: HashMap<EventId, EventRecord>,
    pending: HashMap<NotificationId, NotificationRecord>,
    dead: BTreeMap<NotificationId, NotificationRecord>,
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self {
            ids: IdGenerator::global(),
            max_dead_letters: DEFAULT_MAX_DEAD_LETTERS,
            inner: Mutex::new(Records::default()),
        }
    }

    /// How many dead letters to keep (default [`DEFAULT_MAX_DEAD_LETTERS`]).
    pub fn max_dead_letters(mut self, max: usize) -> Self {
        self.max_dead_letters = max;
        self
    }

    fn with<T>(&self, f: impl FnOnce(&mut Records) -> T) -> T {
        // A panic while holding the lock cannot leave records half-written (each change is one
        // map operation), so a poisoned lock is still safe to use.
        let mut records = self
            .inner
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        f(&mut records)
    }
}

impl EventStore for MemoryStore {
    fn is_durable(&self) -> bool {
        false
    }

    fn allocate_ids(&self) -> StoreFuture<'_, (EventId, NotificationId)> {
        let ids = (self.ids.event_id(), self.ids.notification_id());
        Box::pin(async move { Ok(ids) })
    }

    fn dispatched<'a>(&'a self, event: &'a EventRecord) -> StoreFuture<'a, ()> {
        self.with(|r| r.unfinished.insert(event.event_id, event.clone()));
        Box::pin(async { Ok(()) })
    }

    fn running(&self, event_id: EventId) -> StoreFuture<'_, ()> {
        self.with(|r| {
            if let Some(event) = r.unfinished.get_mut(&event_id) {
                event.running = true;
            }
        });
        Box::pin(async { Ok(()) })
    }

    fn finished<'a>(&'a self, notification: &'a NotificationRecord) -> StoreFuture<'a, ()> {
        self.with(|r| {
            r.unfinished.remove(&notification.event_id);
            r.pending
                .insert(notification.notification_id, notification.clone());
        });
        Box::pin(async { Ok(()) })
    }

    fn attempted<'a>(&'a self, notification: &'a NotificationRecord) -> StoreFuture<'a, ()> {
        self.with(|r| {
            r.pending
                .insert(notification.notification_id, notification.clone())
        });
        Box::pin(async { Ok(()) })
    }

    fn delivered(&self, notification_id: NotificationId) -> StoreFuture<'_, ()> {
        self.with(|r| r.pending.remove(&notification_id));
        Box::pin(async { Ok(()) })
    }

    fn dead<'a>(&'a self, notification: &'a NotificationRecord) -> StoreFuture<'a, ()> {
        self.with(|r| {
            r.pending.remove(&notification.notification_id);
            let mut dead = notification.clone();
            dead.state = DeliveryState::Dead;
            r.dead.insert(dead.notification_id, dead);
            while r.dead.len() > self.max_dead_letters {
                r.dead.pop_first();
            }
        });
        Box::pin(async { Ok(()) })
    }

    fn recover(&self) -> StoreFuture<'_, Recovery> {
        let recovery = self.with(|r| Recovery {
            unfinished: r.unfinished.values().cloned().collect(),
            pending: r.pending.values().cloned().collect(),
        });
        Box::pin(async move { Ok(recovery) })
    }

    fn dead_letters(&self) -> StoreFuture<'_, Vec<NotificationRecord>> {
        let dead = self.with(|r| r.dead.values().cloned().collect());
        Box::pin(async move { Ok(dead) })
    }

    fn revive(
        &self,
        notification_id: NotificationId,
    ) -> StoreFuture<'_, Option<NotificationRecord>> {
        let revived = self.with(|r| {
            let mut record = r.dead.remove(&notification_id)?;
            record.state = DeliveryState::Pending;
            record.attempts = 0;
            record.next_attempt_at_ms = unix_ms();
            r.pending.insert(notification_id, record.clone());
            Some(record)
        });
        Box::pin(async move { Ok(revived) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn notification(id: u64) -> NotificationRecord {
        NotificationRecord {
            event_id: EventId::new(id),
            notification_id: NotificationId::new(id + 1),
            target: "https://example.com/".into(),
            body: Bytes::from_static(b"{}"),
            attempts: 3,
            next_attempt_at_ms: 0,
            last_error: Some("503".into()),
            state: DeliveryState::Pending,
        }
    }

    #[tokio::test]
    async fn an_event_moves_from_unfinished_to_pending_to_gone() {
        let store = MemoryStore::new();
        let (event_id, notification_id) = store.allocate_ids().await.unwrap();
        let event = EventRecord {
            event_id,
            notification_id,
            target: "https://example.com/".into(),
            accepted_at_ms: 1,
            running: false,
        };
        store.dispatched(&event).await.unwrap();
        store.running(event_id).await.unwrap();
        let recovery = store.recover().await.unwrap();
        assert_eq!(recovery.unfinished.len(), 1);
        assert!(recovery.unfinished[0].running);
        let mut record = notification(event_id.get());
        record.notification_id = notification_id;
        store.finished(&record).await.unwrap();
        let recovery = store.recover().await.unwrap();
        assert!(recovery.unfinished.is_empty());
        assert_eq!(recovery.pending, vec![record]);
        store.delivered(notification_id).await.unwrap();
        assert_eq!(store.recover().await.unwrap(), Recovery::default());
    }

    #[tokio::test]
    async fn dead_letters_are_bounded_and_revivable() {
        let store = MemoryStore::new().max_dead_letters(2);
        for id in [10, 20, 30] {
            store.dead(&notification(id)).await.unwrap();
        }
        let dead = store.dead_letters().await.unwrap();
        assert_eq!(
            dead.iter().map(|d| d.event_id.get()).collect::<Vec<_>>(),
            [20, 30]
        );
        assert!(dead.iter().all(|d| d.state == DeliveryState::Dead));
        let revived = store
            .revive(NotificationId::new(21))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            (revived.attempts, revived.state),
            (0, DeliveryState::Pending)
        );
        assert_eq!(store.dead_letters().await.unwrap().len(), 1);
        assert_eq!(store.recover().await.unwrap().pending.len(), 1);
        assert!(store
            .revive(NotificationId::new(21))
            .await
            .unwrap()
            .is_none());
    }
}
