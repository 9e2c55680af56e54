use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll};

use super::{
    unix_ms, CancelClaim, DeadLetterQuery, DeliveryState, DisabledReceiver, EventRecord,
    EventSnapshot, EventStore, IdempotencyKey, KeyClaim, NotificationRecord, ProgressRecord,
    Recovery, StoreError, StoreFuture,
};
use crate::wire::ids::{EventId, IdGenerator, IdMap, NotificationId};

/// Default number of dead letters a [`MemoryStore`] keeps (the oldest go first).
pub const DEFAULT_MAX_DEAD_LETTERS: usize = 10_000;
/// Default number of delivered (or not-requested) notifications a [`MemoryStore`] keeps for
/// status queries, within their retention time (the oldest go first).
pub const DEFAULT_MAX_RETAINED: usize = 100_000;

/// The default store: records in memory, nothing survives a restart.
///
/// Unfinished events and pending notifications are bounded by the layer's `max_in_flight`; dead
/// letters by [`MemoryStore::max_dead_letters`]; finished events kept for status queries by their
/// retention time and [`MemoryStore::max_retained`]; idempotency keys by their retention and, like
/// finished events, [`MemoryStore::max_retained`] (the oldest go first).
#[derive(Debug)]
pub struct MemoryStore {
    ids: &'static IdGenerator,
    max_dead_letters: usize,
    max_retained: usize,
    inner: Mutex<Records>,
}

/// The answer of a write that is done by the time it returns. A unit struct, so boxing it as a
/// [`StoreFuture`] allocates nothing (four writes per event).
struct Done;

impl Future for Done {
    type Output = Result<(), StoreError>;

    fn poll(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Self::Output> {
        Poll::Ready(Ok(()))
    }
}

#[derive(Debug, Default)]
struct Records {
    unfinished: IdMap<EventId, EventRecord>,
    notifications: IdMap<NotificationId, NotificationRecord>,
    by_event: IdMap<EventId, NotificationId>,
    dead: BTreeSet<NotificationId>,
    /// Delivered and not-requested notifications in the order they stop being needed.
    retained: VecDeque<(u64, NotificationId)>,
    /// Idempotency keys by their scope's digest: the event holding each, its request's
    /// fingerprint, and its expiry.
    keys: HashMap<[u8; 32], (EventId, [u8; 32], u64)>,
    /// The keys in the order they were claimed (with one retention, the order they expire in).
    claimed: VecDeque<(u64, [u8; 32])>,
    /// Disabled receivers by id (ordered, as they are listed).
    disabled: BTreeMap<String, DisabledReceiver>,
}

impl Records {
    fn forget(&mut self, id: NotificationId) {
        if let Some(record) = self.notifications.remove(&id) {
            self.by_event.remove(&record.event_id);
        }
    }

    fn retain(&mut self, record: NotificationRecord, max: usize) {
        if keeps_nothing(&record, max) {
            self.forget(record.notification_id);
            return;
        }
        let now = unix_ms();
        self.retained
            .push_back((record.retain_until_ms, record.notification_id));
        self.put(record);
        while let Some(&(until, id)) = self.retained.front() {
            if until > now && self.retained.len() <= max {
                break;
            }
            self.retained.pop_front();
            // Only drop it if it is still a retained record (a retry may not resurrect it, but
            // be exact anyway).
            if self.notifications.get(&id).is_some_and(|r| {
                matches!(
                    r.state,
                    DeliveryState::Delivered | DeliveryState::NotRequested
                )
            }) {
                self.forget(id);
            }
        }
    }

    /// Claims `key` for `event` unless an unexpired earlier event holds it; drops keys past
    /// their expiry, and the oldest to keep at most `max`.
    fn claim(&mut self, event: &EventRecord, key: &IdempotencyKey, max: usize) -> KeyClaim {
        let now = unix_ms();
        self.forget_keys(|expires, _| expires <= now);
        let scope = key.scope.digest();
        if let Some(&(event_id, fingerprint, expires)) = self.keys.get(&scope) {
            if expires > now {
                return KeyClaim::Held {
                    event_id,
                    fingerprint,
                };
            }
        }
        // Room for this one: the oldest go.
        self.forget_keys(|_, kept| kept >= max.max(1));
        self.keys
            .insert(scope, (event.event_id, key.fingerprint, key.expires_at_ms));
        self.claimed.push_back((key.expires_at_ms, scope));
        self.unfinished.insert(event.event_id, event.clone());
        KeyClaim::Claimed
    }

    /// Forgets the oldest claims while `until(expiry, how many are kept)` says so.
    fn forget_keys(&mut self, until: impl Fn(u64, usize) -> bool) {
        while let Some(&(expires, scope)) = self.claimed.front() {
            if !until(expires, self.claimed.len()) {
                break;
            }
            // Only if it is still this claim (an expired key may have been claimed again).
            if self.keys.get(&scope).is_some_and(|held| held.2 == expires) {
                self.keys.remove(&scope);
            }
            self.claimed.pop_front();
        }
    }

    /// Ends an unfinished event with `notification`; false if it had an outcome already.
    fn end(&mut self, notification: &NotificationRecord, max_retained: usize) -> bool {
        let Some(event) = self.unfinished.remove(&notification.event_id) else {
            return false;
        };
        let mut notification = notification.clone();
        // The job's last report stays readable after it ends.
        if notification.progress.is_none() {
            notification.progress = event.progress;
        }
        if notification.state == DeliveryState::NotRequested {
            self.retain(notification, max_retained);
        } else {
            self.put(notification);
        }
        true
    }

    fn put(&mut self, mut record: NotificationRecord) {
        self.by_event
            .insert(record.event_id, record.notification_id);
        match self.notifications.entry(record.notification_id) {
            Entry::Occupied(mut kept) => {
                // Delivery's copy of a notification carries no progress report: keep the stored
                // one.
                if record.progress.is_none() {
                    record.progress = kept.get_mut().progress.take();
                }
                kept.insert(record);
            }
            Entry::Vacant(slot) => {
                slot.insert(record);
            }
        }
    }
}

/// True when nothing asks for a finished notification to be kept (no status endpoint).
fn keeps_nothing(record: &NotificationRecord, max: usize) -> bool {
    record.retain_until_ms <= unix_ms() || max == 0
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
            max_retained: DEFAULT_MAX_RETAINED,
            inner: Mutex::new(Records::default()),
        }
    }

    /// How many dead letters to keep (default [`DEFAULT_MAX_DEAD_LETTERS`]).
    pub fn max_dead_letters(mut self, max: usize) -> Self {
        self.max_dead_letters = max;
        self
    }

    /// How many finished events to keep for status queries (default [`DEFAULT_MAX_RETAINED`]).
    pub fn max_retained(mut self, max: usize) -> Self {
        self.max_retained = max;
        self
    }

    fn with<T>(&self, f: impl FnOnce(&mut Records) -> T) -> T {
        // A panic while holding the lock cannot leave records half-written (each change is a
        // few map operations that cannot panic), so a poisoned lock is still safe to use.
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
        Box::pin(Done)
    }

    fn dispatched_with_key<'a>(
        &'a self,
        event: &'a EventRecord,
        key: &'a IdempotencyKey,
    ) -> StoreFuture<'a, KeyClaim> {
        let claim = self.with(|r| r.claim(event, key, self.max_retained));
        Box::pin(async move { Ok(claim) })
    }

    fn running(&self, event_id: EventId) -> StoreFuture<'_, ()> {
        self.with(|r| {
            if let Some(event) = r.unfinished.get_mut(&event_id) {
                event.running = true;
            }
        });
        Box::pin(Done)
    }

    fn finished<'a>(&'a self, notification: &'a NotificationRecord) -> StoreFuture<'a, ()> {
        if self.with(|r| r.end(notification, self.max_retained)) {
            return Box::pin(Done);
        }
        Box::pin(async { Err(StoreError::superseded("the event has an outcome already")) })
    }

    fn cancel<'a>(&'a self, notification: &'a NotificationRecord) -> StoreFuture<'a, CancelClaim> {
        let claim = self.with(|r| {
            if r.end(notification, self.max_retained) {
                return CancelClaim::Cancelled;
            }
            let finished = r.by_event.get(&notification.event_id);
            CancelClaim::Finished(finished.and_then(|id| r.notifications.get(id)).cloned())
        });
        Box::pin(async move { Ok(claim) })
    }

    fn progress<'a>(
        &'a self,
        event_id: EventId,
        progress: &'a ProgressRecord,
    ) -> StoreFuture<'a, ()> {
        // Only a newer report replaces one (an older one may arrive late).
        let newer = |kept: &Option<Box<ProgressRecord>>| {
            kept.as_ref()
                .is_none_or(|kept| kept.updated_at_ms <= progress.updated_at_ms)
        };
        self.with(|r| {
            if let Some(event) = r.unfinished.get_mut(&event_id) {
                if newer(&event.progress) {
                    event.progress = Some(Box::new(progress.clone()));
                }
            } else if let Some(record) = r
                .by_event
                .get(&event_id)
                .copied()
                .and_then(|id| r.notifications.get_mut(&id))
            {
                if newer(&record.progress) {
                    record.progress = Some(Box::new(progress.clone()));
                }
            }
        });
        Box::pin(Done)
    }

    fn attempted<'a>(&'a self, notification: &'a NotificationRecord) -> StoreFuture<'a, ()> {
        self.with(|r| r.put(notification.clone()));
        Box::pin(Done)
    }

    fn delivered<'a>(&'a self, notification: &'a NotificationRecord) -> StoreFuture<'a, ()> {
        self.with(|r| {
            if keeps_nothing(notification, self.max_retained) {
                r.forget(notification.notification_id);
                return;
            }
            let mut record = notification.clone();
            record.state = DeliveryState::Delivered;
            r.retain(record, self.max_retained);
        });
        Box::pin(Done)
    }

    fn dead<'a>(&'a self, notification: &'a NotificationRecord) -> StoreFuture<'a, ()> {
        self.with(|r| {
            let mut dead = notification.clone();
            dead.state = DeliveryState::Dead;
            r.dead.insert(dead.notification_id);
            r.put(dead);
            while r.dead.len() > self.max_dead_letters {
                if let Some(oldest) = r.dead.pop_first() {
                    r.forget(oldest);
                }
            }
        });
        Box::pin(Done)
    }

    fn status(&self, event_id: EventId) -> StoreFuture<'_, Option<EventSnapshot>> {
        let snapshot = self.with(|r| {
            if let Some(event) = r.unfinished.get(&event_id) {
                return Some(EventSnapshot::Unfinished(event.clone()));
            }
            let id = r.by_event.get(&event_id)?;
            let record = r.notifications.get(id)?;
            let expired = matches!(
                record.state,
                DeliveryState::Delivered | DeliveryState::NotRequested
            ) && record.retain_until_ms <= unix_ms();
            (!expired).then(|| EventSnapshot::Finished(record.clone()))
        });
        Box::pin(async move { Ok(snapshot) })
    }

    fn recover(&self) -> StoreFuture<'_, Recovery> {
        let recovery = self.with(|r| Recovery {
            unfinished: r.unfinished.values().cloned().collect(),
            pending: r
                .notifications
                .values()
                .filter(|n| n.state == DeliveryState::Pending)
                .cloned()
                .collect(),
        });
        Box::pin(async move { Ok(recovery) })
    }

    fn dead_letters(&self, query: DeadLetterQuery) -> StoreFuture<'_, Vec<NotificationRecord>> {
        let dead = self.with(|r| {
            let after = query.after.map_or(0, |id| id.get().saturating_add(1));
            r.dead
                .range(NotificationId::new(after)..)
                .filter_map(|id| r.notifications.get(id))
                .filter(|record| query.matches(record))
                .take(query.limit)
                .cloned()
                .collect()
        });
        Box::pin(async move { Ok(dead) })
    }

    fn revive(
        &self,
        notification_id: NotificationId,
    ) -> StoreFuture<'_, Option<NotificationRecord>> {
        let revived = self.with(|r| {
            if !r.dead.remove(&notification_id) {
                return None;
            }
            let record = r.notifications.get_mut(&notification_id)?;
            record.state = DeliveryState::Pending;
            record.attempts = 0;
            record.next_attempt_at_ms = unix_ms();
            Some(record.clone())
        });
        Box::pin(async move { Ok(revived) })
    }

    fn disable_receiver<'a>(&'a self, receiver: &'a DisabledReceiver) -> StoreFuture<'a, ()> {
        self.with(|r| r.disabled.insert(receiver.id.clone(), receiver.clone()));
        Box::pin(Done)
    }

    fn enable_receiver<'a>(&'a self, id: &'a str) -> StoreFuture<'a, bool> {
        let was = self.with(|r| r.disabled.remove(id).is_some());
        Box::pin(async move { Ok(was) })
    }

    fn keeps_disabled_receivers(&self) -> bool {
        true
    }

    fn disabled_receivers(&self) -> StoreFuture<'_, Vec<DisabledReceiver>> {
        let disabled = self.with(|r| r.disabled.values().cloned().collect());
        Box::pin(async move { Ok(disabled) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::KeyScope;
    use bytes::Bytes;

    fn keyed(id: u64, key: &str, expires_at_ms: u64) -> (EventRecord, IdempotencyKey) {
        let event = EventRecord {
            event_id: EventId::new(id),
            notification_id: NotificationId::new(id + 1),
            instance_id: 7,
            target: String::new(),
            instance_url: false,
            accepted_at_ms: 1,
            running: false,
            progress: None,
            trace: None,
        };
        let key = IdempotencyKey {
            scope: KeyScope {
                instance_id: 7,
                method: "POST".into(),
                path: "/work".into(),
                key: key.into(),
            },
            fingerprint: [id as u8; 32],
            expires_at_ms,
        };
        (event, key)
    }

    /// Keys are kept until they expire, and at most `max_retained` of them: the oldest go first.
    #[tokio::test]
    async fn keys_are_bounded_by_max_retained_and_forgotten_when_expired() {
        let store = MemoryStore::new().max_retained(2);
        let claim = |id: u64, key: &str, expires: u64| {
            let (event, key) = keyed(id, key, expires);
            futures_now(store.dispatched_with_key(&event, &key))
        };
        let forever = u64::MAX;
        assert_eq!(claim(1, "a", forever), KeyClaim::Claimed);
        assert!(
            matches!(claim(3, "a", forever), KeyClaim::Held { event_id, .. } if event_id.get() == 1)
        );
        assert_eq!(claim(5, "b", forever), KeyClaim::Claimed);
        assert_eq!(claim(7, "c", forever), KeyClaim::Claimed);
        assert_eq!(claim(9, "a", forever), KeyClaim::Claimed, "the oldest went");
        assert!(matches!(claim(11, "c", forever), KeyClaim::Held { .. }));
        // An expired key is free again.
        assert_eq!(claim(13, "d", 1), KeyClaim::Claimed);
        assert_eq!(claim(15, "d", forever), KeyClaim::Claimed);
    }

    fn notification(id: u64) -> NotificationRecord {
        NotificationRecord {
            event_id: EventId::new(id),
            notification_id: NotificationId::new(id + 1),
            instance_id: 7,
            instance_url: false,
            target: "https://example.com/".into(),
            body: Bytes::from_static(b"{}"),
            accepted_at_ms: 1,
            attempts: 3,
            history: vec![crate::store::AttemptRecord {
                at_ms: 2,
                duration_us: 1500,
                status: Some(503),
                error: Some("the receiver answered 503".into()),
            }],
            next_attempt_at_ms: 0,
            last_error: Some("503".into()),
            state: DeliveryState::Pending,
            retain_until_ms: u64::MAX,
            progress: None,
            trace: None,
        }
    }

    #[tokio::test]
    async fn an_event_moves_from_unfinished_to_pending_to_delivered() {
        let store = MemoryStore::new();
        let (event_id, notification_id) = store.allocate_ids().await.unwrap();
        let event = EventRecord {
            event_id,
            notification_id,
            instance_id: 7,
            instance_url: false,
            target: "https://example.com/".into(),
            accepted_at_ms: 1,
            running: false,
            progress: None,
            trace: None,
        };
        store.dispatched(&event).await.unwrap();
        store.running(event_id).await.unwrap();
        let recovery = store.recover().await.unwrap();
        assert_eq!(recovery.unfinished.len(), 1);
        assert!(recovery.unfinished[0].running);
        assert!(
            matches!(store.status(event_id).await.unwrap(), Some(EventSnapshot::Unfinished(e)) if e.running)
        );
        let mut record = notification(event_id.get());
        record.notification_id = notification_id;
        store.finished(&record).await.unwrap();
        let recovery = store.recover().await.unwrap();
        assert!(recovery.unfinished.is_empty());
        assert_eq!(recovery.pending, vec![record.clone()]);
        store.delivered(&record).await.unwrap();
        assert_eq!(store.recover().await.unwrap(), Recovery::default());
        match store.status(event_id).await.unwrap() {
            Some(EventSnapshot::Finished(n)) => assert_eq!(n.state, DeliveryState::Delivered),
            other => panic!("{other:?}"),
        }
        assert!(store.status(EventId::new(1)).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn retention_is_bounded_by_time_and_count() {
        let store = MemoryStore::new().max_retained(2);
        for id in [10, 20, 30] {
            store.delivered(&notification(id)).await.unwrap();
        }
        assert!(
            store.status(EventId::new(10)).await.unwrap().is_none(),
            "over the count"
        );
        assert!(store.status(EventId::new(30)).await.unwrap().is_some());
        let expired = NotificationRecord {
            retain_until_ms: 1,
            ..notification(40)
        };
        store.delivered(&expired).await.unwrap();
        assert!(
            store.status(EventId::new(40)).await.unwrap().is_none(),
            "past its time"
        );
    }

    #[tokio::test]
    async fn without_retention_a_delivered_notification_leaves_nothing_behind() {
        let store = MemoryStore::new();
        let pending = notification(50);
        store.dispatched(&unfinished(50)).await.unwrap();
        store.finished(&pending).await.unwrap();
        let delivered = NotificationRecord {
            retain_until_ms: 0,
            ..pending
        };
        store.delivered(&delivered).await.unwrap();
        store.with(|r| {
            assert!(r.notifications.is_empty() && r.by_event.is_empty() && r.retained.is_empty());
        });
    }

    #[tokio::test]
    async fn dead_letters_page_by_id_and_instance() {
        let store = MemoryStore::new();
        for id in [10, 20, 30, 40, 50] {
            let mut record = notification(id);
            record.instance_id = if id == 20 || id == 40 { 8 } else { 7 };
            store.dead(&record).await.unwrap();
        }
        store.dispatched(&unfinished(60)).await.unwrap();
        store.finished(&notification(60)).await.unwrap(); // pending: never listed
        let page = |instance, after: Option<u64>, limit| {
            let query = DeadLetterQuery {
                instance,
                after: after.map(NotificationId::new),
                limit,
            };
            let dead = futures_now(store.dead_letters(query));
            dead.iter().map(|d| d.event_id.get()).collect::<Vec<_>>()
        };
        assert_eq!(page(None, None, 2), [10, 20]);
        assert_eq!(page(None, Some(21), 2), [30, 40]);
        assert_eq!(page(None, Some(41), 2), [50]);
        assert_eq!(page(Some(7), None, 10), [10, 30, 50]);
        assert_eq!(page(Some(8), Some(21), 10), [40]);
        assert!(page(Some(9), None, 10).is_empty());
    }

    /// The event `notification(id)` ends.
    fn unfinished(id: u64) -> EventRecord {
        EventRecord {
            event_id: EventId::new(id),
            notification_id: NotificationId::new(id + 1),
            instance_id: 7,
            instance_url: false,
            target: "https://example.com/".into(),
            accepted_at_ms: 1,
            running: true,
            progress: None,
            trace: None,
        }
    }

    #[tokio::test]
    async fn of_a_cancel_and_a_finish_the_first_wins_and_the_second_changes_nothing() {
        let store = MemoryStore::new();
        let cancelled = NotificationRecord {
            body: Bytes::from_static(br#"{"eventStatus":"cancelled"}"#),
            ..notification(70)
        };
        // The cancel first: the job's own outcome is refused as superseded.
        store.dispatched(&unfinished(70)).await.unwrap();
        assert_eq!(
            store.cancel(&cancelled).await.unwrap(),
            CancelClaim::Cancelled
        );
        let error = store.finished(&notification(70)).await.unwrap_err();
        assert!(error.is_superseded(), "{error}");
        assert_eq!(
            store.cancel(&cancelled).await.unwrap(),
            CancelClaim::Finished(Some(cancelled.clone())),
            "a second cancel finds the first"
        );
        // The job first: the cancel finds its outcome and writes nothing.
        store.dispatched(&unfinished(80)).await.unwrap();
        store.finished(&notification(80)).await.unwrap();
        let late = NotificationRecord {
            body: Bytes::from_static(br#"{"eventStatus":"cancelled"}"#),
            ..notification(80)
        };
        assert_eq!(
            store.cancel(&late).await.unwrap(),
            CancelClaim::Finished(Some(notification(80)))
        );
        match store.status(EventId::new(80)).await.unwrap() {
            Some(EventSnapshot::Finished(record)) => assert_eq!(record.body, "{}"),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn the_last_progress_report_outlives_the_job_and_an_older_one_never_replaces_it() {
        let store = MemoryStore::new();
        let report = |percent, at| ProgressRecord {
            percent,
            message: format!("{percent}%"),
            updated_at_ms: at,
        };
        store.dispatched(&unfinished(90)).await.unwrap();
        store
            .progress(EventId::new(90), &report(40, 20))
            .await
            .unwrap();
        store
            .progress(EventId::new(90), &report(30, 10))
            .await
            .unwrap();
        match store.status(EventId::new(90)).await.unwrap() {
            Some(EventSnapshot::Unfinished(event)) => {
                assert_eq!(event.progress, Some(Box::new(report(40, 20))))
            }
            other => panic!("{other:?}"),
        }
        store.finished(&notification(90)).await.unwrap();
        match store.status(EventId::new(90)).await.unwrap() {
            Some(EventSnapshot::Finished(record)) => {
                assert_eq!(record.progress, Some(Box::new(report(40, 20))))
            }
            other => panic!("{other:?}"),
        }
    }

    /// An event's trace comes back with it and with its notification: unfinished, pending after
    /// an attempt, dead, revived.
    #[tokio::test]
    async fn the_trace_stays_with_the_event_and_its_notification() {
        let store = MemoryStore::new();
        let trace = Some(std::sync::Arc::new(crate::store::trace::tests::sample()));
        let event = EventRecord {
            trace: trace.clone(),
            ..unfinished(100)
        };
        store.dispatched(&event).await.unwrap();
        assert_eq!(store.recover().await.unwrap().unfinished, [event]);
        let pending = NotificationRecord {
            trace: trace.clone(),
            ..notification(100)
        };
        store.finished(&pending).await.unwrap();
        store.attempted(&pending).await.unwrap();
        assert_eq!(
            store.recover().await.unwrap().pending,
            vec![pending.clone()]
        );
        store.dead(&pending).await.unwrap();
        let dead = store.dead_letters(DeadLetterQuery::all()).await.unwrap();
        assert_eq!(dead[0].trace, trace);
        let revived = store.revive(pending.notification_id).await.unwrap();
        assert_eq!(revived.unwrap().trace, trace);
        match store.status(EventId::new(100)).await.unwrap() {
            Some(EventSnapshot::Finished(record)) => assert_eq!(record.trace, trace),
            other => panic!("{other:?}"),
        }
    }

    /// A memory store's answer, which is ready at once.
    fn futures_now<T>(future: StoreFuture<'_, T>) -> T {
        let waker = std::task::Waker::noop();
        match std::pin::pin!(future).poll(&mut Context::from_waker(waker)) {
            Poll::Ready(answer) => answer.unwrap(),
            Poll::Pending => panic!("a memory store answers at once"),
        }
    }

    /// A receiver disabled for test `tag`: ids `a`/`b` sort before `c`.
    fn disabled(id: &str, tag: u64) -> DisabledReceiver {
        DisabledReceiver {
            id: id.into(),
            instance_id: 7 + tag,
            origin: format!("https://{id}.example.com:{}", 8000 + tag),
            failing_since_ms: 100 + tag,
            disabled_at_ms: 200 + tag,
        }
    }

    #[tokio::test]
    async fn disabled_receivers_are_kept_by_id_replaced_and_enabled() {
        let store = MemoryStore::new();
        assert!(store.disabled_receivers().await.unwrap().is_empty());
        store.disable_receiver(&disabled("c", 1)).await.unwrap();
        store.disable_receiver(&disabled("a", 2)).await.unwrap();
        assert_eq!(
            store.disabled_receivers().await.unwrap(),
            [disabled("a", 2), disabled("c", 1)],
            "by id, every field kept"
        );
        store.disable_receiver(&disabled("c", 3)).await.unwrap();
        assert_eq!(
            store.disabled_receivers().await.unwrap(),
            [disabled("a", 2), disabled("c", 3)],
            "replaced, not added"
        );
        assert!(store.enable_receiver("a").await.unwrap());
        assert!(
            !store.enable_receiver("a").await.unwrap(),
            "enabled already"
        );
        assert_eq!(
            store.disabled_receivers().await.unwrap(),
            [disabled("c", 3)]
        );
    }

    #[tokio::test]
    async fn dead_letters_are_bounded_and_revivable() {
        let store = MemoryStore::new().max_dead_letters(2);
        for id in [10, 20, 30] {
            store.dead(&notification(id)).await.unwrap();
        }
        let dead = store.dead_letters(DeadLetterQuery::all()).await.unwrap();
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
        assert_eq!(revived.history, notification(20).history, "kept");
        assert_eq!(revived.history.len(), 1);
        assert_eq!(
            store
                .dead_letters(DeadLetterQuery::all())
                .await
                .unwrap()
                .len(),
            1
        );
        assert_eq!(store.recover().await.unwrap().pending.len(), 1);
        assert!(store
            .revive(NotificationId::new(21))
            .await
            .unwrap()
            .is_none());
    }
}
