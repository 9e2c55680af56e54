//! `RedbStore`: the embedded durable store, an event's life in one redb file.
//!
//! - `tables.rs`: the tables, and the key the id floor is kept under.
//! - `encoding.rs`: how records are kept as bytes.
//! - `writer.rs`: the writer thread: group commit, and the store contract (what waits for the
//!   fsync).
//! - `prune.rs`: retention: delivered and not-requested notifications are dropped once it is over.
//! - `queries.rs`: reading notifications in id order, a page at a time; disabled receivers.

mod encoding;
mod prune;
mod queries;
mod tables;
mod writer;

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc};
use std::thread;

use redb::{Database, ReadableDatabase, ReadableTable};
use tokio::sync::oneshot;

use self::encoding::{decode_json, decode_notification, trace_of, StoredEvent};
use self::queries::{disabled_receivers, notifications_where};
use self::tables::{EVENTS, EVENT_INDEX, META, NEXT_ID, NOTIFICATIONS};
use self::writer::{write_loop, Commits, Op, Write};
use super::{
    unix_ms, CancelClaim, DeadLetterQuery, DeliveryState, DisabledReceiver, EventRecord,
    EventSnapshot, EventStore, IdempotencyKey, KeyClaim, NotificationRecord, ProgressRecord,
    ProgressTable, Recovery, RunningJobs, StoreError, StoreFuture, StoreStats, Written,
};
use crate::wire::ids::{EventId, IdGenerator, NotificationId};

/// The embedded durable store: an event's life in a [redb](https://www.redb.org) file, so the
/// delivery promise holds across a crash (`kill -9`) and restart.
///
/// It follows the [store contract](super#what-waits-for-the-disk): the two writes a guarantee
/// rests on — an accepted event ([`dispatched`](EventStore::dispatched)) and its outcome
/// ([`finished`](EventStore::finished)) — and an operator's [`revive`](EventStore::revive) are
/// on disk (fsync) before their futures resolve, so a receipt is only sent for an event that is
/// on disk. The others (a failed attempt, a delivery, a dead letter) wait up to 20 ms to be folded
/// into the next durable commit (under steady traffic there is one every few milliseconds), else
/// are committed without an fsync, and reach the disk with the next durable commit or after a
/// second without one. Writes
/// from concurrent requests are *group-committed*: one writer thread folds every write waiting at
/// that moment into one transaction, so throughput does not collapse to one fsync per request.
/// Ids continue above the highest one persisted, so they never repeat across restarts.
///
/// Dead letters stay in the file until redelivered.
///
/// # Example
///
/// ```no_run
/// use tower_async_request::{store::RedbStore, AsyncRequestLayer};
///
/// let layer = AsyncRequestLayer::builder()
///     .default_callback_url("https://hooks.example.com/in")
///     .store(RedbStore::open("async-requests.redb")?)
///     .build()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct RedbStore {
    db: Arc<Database>,
    ids: Arc<IdGenerator>,
    // Both are `Some` until drop, which closes the queue and waits for the writer to finish, so
    // the file is released when the store is gone.
    writes: Option<mpsc::Sender<Write>>,
    writer: Option<thread::JoinHandle<()>>,
    running: RunningJobs,
    /// Progress reports: kept in memory only (a report is not worth a write to disk).
    progress: ProgressTable,
    commits: Arc<Commits>,
}

impl Drop for RedbStore {
    fn drop(&mut self) {
        self.writes = None;
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

impl RedbStore {
    /// Opens (or creates) the store file at `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        let db = Database::create(path).map_err(StoreError::new)?;
        let txn = db.begin_write().map_err(StoreError::new)?;
        let floor = {
            txn.open_table(EVENTS).map_err(StoreError::new)?;
            txn.open_table(NOTIFICATIONS).map_err(StoreError::new)?;
            txn.open_table(EVENT_INDEX).map_err(StoreError::new)?;
            let meta = txn.open_table(META).map_err(StoreError::new)?;
            let floor = meta
                .get(NEXT_ID)
                .map_err(StoreError::new)?
                .map_or(0, |v| v.value());
            floor
        };
        txn.commit().map_err(StoreError::new)?;
        let db = Arc::new(db);
        let ids = Arc::new(IdGenerator::starting_above(floor));
        let (writes, queue) = mpsc::channel();
        let commits = Arc::new(Commits::default());
        let (writer_db, writer_ids, writer_commits) = (db.clone(), ids.clone(), commits.clone());
        let writer = thread::Builder::new()
            .name("redb-store-writer".into())
            .spawn(move || write_loop(&writer_db, &writer_ids, floor, &writer_commits, queue))
            .map_err(StoreError::new)?;
        Ok(Self {
            db,
            ids,
            writes: Some(writes),
            writer: Some(writer),
            running: Default::default(),
            progress: Default::default(),
            commits,
        })
    }

    fn write(&self, op: Op) -> StoreFuture<'_, Written> {
        let (done, result) = oneshot::channel();
        let sent = self
            .writes
            .as_ref()
            .is_some_and(|writes| writes.send(Write { op, done }).is_ok());
        Box::pin(async move {
            if !sent {
                return Err(StoreError::new("the store writer has stopped"));
            }
            result
                .await
                .map_err(|_| StoreError::new("the store writer has stopped"))?
                .map_err(StoreError::new)
        })
    }

    fn write_unit(&self, op: Op) -> StoreFuture<'_, ()> {
        let write = self.write(op);
        Box::pin(async move { write.await.map(|_| ()) })
    }

    fn read<T: Send + 'static>(
        &self,
        read: impl FnOnce(&Database) -> Result<T, redb::Error> + Send + 'static,
    ) -> StoreFuture<'_, T> {
        let db = self.db.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || read(&db))
                .await
                .map_err(StoreError::new)?
                .map_err(StoreError::new)
        })
    }
}

impl EventStore for RedbStore {
    fn is_durable(&self) -> bool {
        true
    }

    fn stats(&self) -> StoreStats {
        StoreStats {
            transactions: self.commits.transactions.load(Ordering::Relaxed),
            durable_commits: self.commits.durable.load(Ordering::Relaxed),
        }
    }

    fn allocate_ids(&self) -> StoreFuture<'_, (EventId, NotificationId)> {
        let ids = (self.ids.event_id(), self.ids.notification_id());
        Box::pin(async move { Ok(ids) })
    }

    fn dispatched<'a>(&'a self, event: &'a EventRecord) -> StoreFuture<'a, ()> {
        self.write_unit(Op::Dispatched(event.clone()))
    }

    fn running(&self, event_id: EventId) -> StoreFuture<'_, ()> {
        self.running.start(event_id)
    }

    fn finished<'a>(&'a self, notification: &'a NotificationRecord) -> StoreFuture<'a, ()> {
        self.running.end(notification.event_id);
        let write = self.write(Op::Finished(notification.clone()));
        Box::pin(async move {
            if write.await?.ended() {
                Ok(())
            } else {
                Err(StoreError::superseded("the event has an outcome already"))
            }
        })
    }

    fn cancel<'a>(&'a self, notification: &'a NotificationRecord) -> StoreFuture<'a, CancelClaim> {
        let write = self.write(Op::Cancel(notification.clone()));
        Box::pin(async move {
            Ok(match write.await? {
                Written::Ended(true) => {
                    self.running.end(notification.event_id);
                    CancelClaim::Cancelled
                }
                other => CancelClaim::Finished(other.record()),
            })
        })
    }

    fn progress<'a>(
        &'a self,
        event_id: EventId,
        progress: &'a ProgressRecord,
    ) -> StoreFuture<'a, ()> {
        self.progress.set(event_id, progress);
        Box::pin(async { Ok(()) })
    }

    fn attempted<'a>(&'a self, notification: &'a NotificationRecord) -> StoreFuture<'a, ()> {
        self.write_unit(Op::Attempted(notification.clone()))
    }

    fn delivered<'a>(&'a self, notification: &'a NotificationRecord) -> StoreFuture<'a, ()> {
        self.write_unit(Op::Delivered(notification.clone()))
    }

    fn status(&self, event_id: EventId) -> StoreFuture<'_, Option<EventSnapshot>> {
        let running = self.running.contains(event_id);
        let progress = self.progress.get(event_id).map(Box::new);
        self.read(move |db| {
            let txn = db.begin_read()?;
            if let Some(bytes) = txn.open_table(EVENTS)?.get(event_id.get())? {
                let stored: StoredEvent = decode_json(bytes.value())?;
                return Ok(Some(EventSnapshot::Unfinished(EventRecord {
                    event_id,
                    notification_id: NotificationId::new(stored.notification_id),
                    instance_id: stored.instance_id,
                    instance_url: stored.instance_url,
                    target: stored.target,
                    accepted_at_ms: stored.accepted_at_ms,
                    running,
                    progress,
                    trace: trace_of(stored.trace),
                })));
            }
            let Some(notification_id) = txn
                .open_table(EVENT_INDEX)?
                .get(event_id.get())?
                .map(|v| v.value())
            else {
                return Ok(None);
            };
            let Some(bytes) = txn.open_table(NOTIFICATIONS)?.get(notification_id)? else {
                return Ok(None);
            };
            let mut record = decode_notification(notification_id, bytes.value())?;
            record.progress = progress;
            let expired = matches!(
                record.state,
                DeliveryState::Delivered | DeliveryState::NotRequested
            ) && record.retain_until_ms <= unix_ms();
            Ok((!expired).then_some(EventSnapshot::Finished(record)))
        })
    }

    fn dead<'a>(&'a self, notification: &'a NotificationRecord) -> StoreFuture<'a, ()> {
        self.write_unit(Op::Dead(notification.clone()))
    }

    fn recover(&self) -> StoreFuture<'_, Recovery> {
        self.read(|db| {
            let txn = db.begin_read()?;
            let events = txn.open_table(EVENTS)?;
            let mut unfinished = Vec::new();
            for entry in events.iter()? {
                let (id, bytes) = entry?;
                let stored: StoredEvent = decode_json(bytes.value())?;
                unfinished.push(EventRecord {
                    event_id: EventId::new(id.value()),
                    notification_id: NotificationId::new(stored.notification_id),
                    instance_id: stored.instance_id,
                    instance_url: stored.instance_url,
                    target: stored.target,
                    accepted_at_ms: stored.accepted_at_ms,
                    running: stored.running,
                    progress: None,
                    trace: trace_of(stored.trace),
                });
            }
            let pending = notifications_where(db, 0, usize::MAX, |record| {
                record.state == DeliveryState::Pending
            })?;
            Ok(Recovery {
                unfinished,
                pending,
            })
        })
    }

    /// Reads notifications from the cursor on until the page is full: a file with many
    /// delivered notifications kept for status queries and few dead letters reads more of them.
    fn dead_letters(&self, query: DeadLetterQuery) -> StoreFuture<'_, Vec<NotificationRecord>> {
        self.read(move |db| {
            let after = query.after.map_or(0, NotificationId::get);
            notifications_where(db, after, query.limit, |record| query.matches(record))
        })
    }

    fn check(&self) -> StoreFuture<'_, ()> {
        self.read(|db| db.begin_read().map(drop).map_err(redb::Error::from))
    }

    fn revive(
        &self,
        notification_id: NotificationId,
    ) -> StoreFuture<'_, Option<NotificationRecord>> {
        let write = self.write(Op::Revive(notification_id));
        Box::pin(async move { Ok(write.await?.record()) })
    }

    fn dispatched_with_key<'a>(
        &'a self,
        event: &'a EventRecord,
        key: &'a IdempotencyKey,
    ) -> StoreFuture<'a, KeyClaim> {
        let write = self.write(Op::DispatchedWithKey(event.clone(), key.clone()));
        Box::pin(async move { Ok(write.await?.claim()) })
    }

    fn disable_receiver<'a>(&'a self, receiver: &'a DisabledReceiver) -> StoreFuture<'a, ()> {
        self.write_unit(Op::DisableReceiver(receiver.clone()))
    }

    fn enable_receiver<'a>(&'a self, id: &'a str) -> StoreFuture<'a, bool> {
        let write = self.write(Op::EnableReceiver(id.to_owned()));
        Box::pin(async move { Ok(write.await?.enabled()) })
    }

    fn keeps_disabled_receivers(&self) -> bool {
        true
    }

    fn disabled_receivers(&self) -> StoreFuture<'_, Vec<DisabledReceiver>> {
        self.read(disabled_receivers)
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::prune::prune;
    use super::writer::FLUSH_AFTER;
    use super::*;
    use crate::store::AttemptRecord;

    fn temp_path(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("tar-redb-{}-{name}", std::process::id()));
        let _ = std::fs::remove_file(&dir);
        dir
    }

    /// An accepted event of instance 7.
    fn event(event_id: EventId, notification_id: NotificationId, target: &str) -> EventRecord {
        EventRecord {
            event_id,
            notification_id,
            instance_id: 7,
            instance_url: false,
            target: target.to_owned(),
            accepted_at_ms: 1,
            running: false,
            progress: None,
            trace: None,
        }
    }

    fn notification(event: &EventRecord) -> NotificationRecord {
        NotificationRecord {
            event_id: event.event_id,
            notification_id: event.notification_id,
            instance_id: event.instance_id,
            instance_url: event.instance_url,
            target: event.target.clone(),
            body: Bytes::from_static(b"{\"eventId\":1}\xff"),
            accepted_at_ms: event.accepted_at_ms,
            attempts: 0,
            history: Vec::new(),
            next_attempt_at_ms: 5,
            last_error: None,
            state: DeliveryState::Pending,
            retain_until_ms: u64::MAX,
            progress: None,
            trace: event.trace.clone(),
        }
    }

    /// A cancel and a job's outcome: the first wins, durably; the second writes nothing; the
    /// cancelled outcome and the job's last progress report are read back.
    #[tokio::test]
    async fn of_a_cancel_and_an_outcome_the_first_wins_on_disk() {
        let path = temp_path("cancel");
        let store = RedbStore::open(&path).unwrap();
        let (first, first_n) = store.allocate_ids().await.unwrap();
        let (second, second_n) = store.allocate_ids().await.unwrap();
        let cancelled_event = event(first, first_n, "https://example.com/");
        let finished_event = event(second, second_n, "https://example.com/");
        let cancel = |event: &EventRecord| NotificationRecord {
            body: Bytes::from_static(br#"{"eventStatus":"cancelled"}"#),
            ..notification(event)
        };
        store.dispatched(&cancelled_event).await.unwrap();
        store.dispatched(&finished_event).await.unwrap();
        let report = ProgressRecord {
            percent: 40,
            message: "half".into(),
            updated_at_ms: 9,
        };
        store.progress(first, &report).await.unwrap();
        let durable = store.stats().durable_commits;
        assert_eq!(
            store.cancel(&cancel(&cancelled_event)).await.unwrap(),
            CancelClaim::Cancelled
        );
        assert_eq!(
            store.stats().durable_commits,
            durable + 1,
            "on disk before the answer"
        );
        let error = store
            .finished(&notification(&cancelled_event))
            .await
            .unwrap_err();
        assert!(error.is_superseded(), "{error}");

        store
            .finished(&notification(&finished_event))
            .await
            .unwrap();
        assert_eq!(
            store.cancel(&cancel(&finished_event)).await.unwrap(),
            CancelClaim::Finished(Some(notification(&finished_event)))
        );
        match store.status(first).await.unwrap() {
            Some(EventSnapshot::Finished(record)) => {
                assert_eq!(record.body, cancel(&cancelled_event).body);
                assert_eq!(record.progress, Some(Box::new(report)));
            }
            other => panic!("{other:?}"),
        }
        drop(store);
        let store = RedbStore::open(&path).unwrap();
        let recovered = store.recover().await.unwrap();
        assert!(recovered.unfinished.is_empty(), "neither is interrupted");
        assert_eq!(recovered.pending.len(), 2);
        match store.status(first).await.unwrap() {
            Some(EventSnapshot::Finished(record)) => {
                assert_eq!(record.body, cancel(&cancelled_event).body)
            }
            other => panic!("{other:?}"),
        }
        drop(store);
        let _ = std::fs::remove_file(&path);
    }

    #[tokio::test]
    async fn records_survive_reopening_and_ids_continue_above() {
        let path = temp_path("reopen");
        let (first_ids, event, pending);
        {
            let store = RedbStore::open(&path).unwrap();
            first_ids = store.allocate_ids().await.unwrap();
            event = EventRecord {
                event_id: first_ids.0,
                notification_id: first_ids.1,
                instance_id: 7,
                instance_url: true,
                target: "https://example.com/a".into(),
                accepted_at_ms: 1,
                running: false,
                progress: None,
                trace: None,
            };
            store.dispatched(&event).await.unwrap();
            store.running(event.event_id).await.unwrap();
            let (e2, n2) = store.allocate_ids().await.unwrap();
            let second = EventRecord {
                event_id: e2,
                notification_id: n2,
                instance_id: 7,
                instance_url: false,
                target: "https://example.com/b".into(),
                accepted_at_ms: 2,
                running: false,
                progress: None,
                trace: None,
            };
            store.dispatched(&second).await.unwrap();
            pending = NotificationRecord {
                attempts: 2,
                last_error: Some("503".into()),
                ..notification(&second)
            };
            store.finished(&pending).await.unwrap();
            store.attempted(&pending).await.unwrap();
        }
        let store = RedbStore::open(&path).unwrap();
        let recovery = store.recover().await.unwrap();
        // `running` is kept in memory only: after a restart both states end as `interrupted`.
        assert_eq!(recovery.unfinished, vec![event.clone()]);
        assert_eq!(recovery.pending, vec![pending.clone()]);
        let (next, _) = store.allocate_ids().await.unwrap();
        assert!(next.get() > pending.notification_id.get());
        store.delivered(&pending).await.unwrap();
        assert!(store.recover().await.unwrap().pending.is_empty());
        match store.status(pending.event_id).await.unwrap() {
            Some(EventSnapshot::Finished(n)) => assert_eq!(n.state, DeliveryState::Delivered),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            store.status(event.event_id).await.unwrap(),
            Some(EventSnapshot::Unfinished(_))
        ));
        let expired = NotificationRecord {
            retain_until_ms: 1,
            ..pending.clone()
        };
        store.delivered(&expired).await.unwrap();
        assert!(store.status(pending.event_id).await.unwrap().is_none());
        prune(&store.db).unwrap();
        assert!(store
            .db
            .begin_read()
            .unwrap()
            .open_table(EVENT_INDEX)
            .unwrap()
            .get(pending.event_id.get())
            .unwrap()
            .is_none());
        let _ = std::fs::remove_file(&path);
    }

    #[tokio::test]
    async fn dead_letters_are_kept_and_revivable() {
        let path = temp_path("dead");
        let store = RedbStore::open(&path).unwrap();
        let (event_id, notification_id) = store.allocate_ids().await.unwrap();
        let event = EventRecord {
            event_id,
            notification_id,
            instance_id: 7,
            instance_url: false,
            target: "https://example.com/".into(),
            accepted_at_ms: 1,
            running: true,
            progress: None,
            trace: None,
        };
        store.dispatched(&event).await.unwrap();
        let record = notification(&event);
        store.finished(&record).await.unwrap();
        store
            .dead(&NotificationRecord {
                attempts: 8,
                last_error: Some("gone".into()),
                ..record.clone()
            })
            .await
            .unwrap();
        let dead = store.dead_letters(DeadLetterQuery::all()).await.unwrap();
        assert_eq!(dead.len(), 1);
        assert_eq!((dead[0].state, dead[0].attempts), (DeliveryState::Dead, 8));
        assert_eq!(dead[0].body, record.body);
        assert!(store.recover().await.unwrap().pending.is_empty());
        let revived = store.revive(notification_id).await.unwrap().unwrap();
        assert_eq!(
            (revived.state, revived.attempts),
            (DeliveryState::Pending, 0)
        );
        assert!(store
            .dead_letters(DeadLetterQuery::all())
            .await
            .unwrap()
            .is_empty());
        assert!(store.revive(notification_id).await.unwrap().is_none());
        let _ = std::fs::remove_file(&path);
    }

    /// An event's trace survives reopening, with the event and with its notification:
    /// unfinished, pending after an attempt, dead, revived.
    #[tokio::test]
    async fn the_trace_survives_reopening_with_the_event_and_its_notification() {
        let path = temp_path("trace");
        let trace = Some(std::sync::Arc::new(crate::store::trace::tests::sample()));
        let traced = |(event_id, notification_id), target| EventRecord {
            trace: trace.clone(),
            ..event(event_id, notification_id, target)
        };
        let (unfinished, pending);
        {
            let store = RedbStore::open(&path).unwrap();
            unfinished = traced(store.allocate_ids().await.unwrap(), "https://example.com/a");
            store.dispatched(&unfinished).await.unwrap();
            let finished = traced(store.allocate_ids().await.unwrap(), "https://example.com/b");
            store.dispatched(&finished).await.unwrap();
            pending = NotificationRecord {
                attempts: 1,
                last_error: Some("503".into()),
                ..notification(&finished)
            };
            store.finished(&pending).await.unwrap();
            store.attempted(&pending).await.unwrap();
        }
        let store = RedbStore::open(&path).unwrap();
        let recovery = store.recover().await.unwrap();
        assert_eq!(recovery.unfinished, vec![unfinished.clone()]);
        assert_eq!(recovery.pending, vec![pending.clone()]);
        assert_eq!(recovery.pending[0].trace, trace);
        match store.status(unfinished.event_id).await.unwrap() {
            Some(EventSnapshot::Unfinished(event)) => assert_eq!(event.trace, trace),
            other => panic!("{other:?}"),
        }
        store.dead(&pending).await.unwrap();
        drop(store);
        let store = RedbStore::open(&path).unwrap();
        let dead = store.dead_letters(DeadLetterQuery::all()).await.unwrap();
        assert_eq!(dead[0].trace, trace);
        let revived = store.revive(pending.notification_id).await.unwrap();
        assert_eq!(revived.unwrap().trace, trace);
        match store.status(pending.event_id).await.unwrap() {
            Some(EventSnapshot::Finished(record)) => assert_eq!(record.trace, trace),
            other => panic!("{other:?}"),
        }
        drop(store);
        let _ = std::fs::remove_file(&path);
    }

    #[tokio::test]
    async fn dead_letters_page_by_id_and_instance_and_keep_their_history_across_reopening() {
        let path = temp_path("pages");
        let mut written = Vec::new();
        {
            let store = RedbStore::open(&path).unwrap();
            for i in 0..6u64 {
                let (event_id, notification_id) = store.allocate_ids().await.unwrap();
                let mut accepted = event(event_id, notification_id, "https://example.com/");
                accepted.instance_id = 30 + i % 2;
                store.dispatched(&accepted).await.unwrap();
                let mut record = notification(&accepted);
                store.finished(&record).await.unwrap();
                record.attempts = 1;
                record.history.push(AttemptRecord {
                    at_ms: 10 + i,
                    duration_us: 1500,
                    status: Some(503),
                    error: Some("the receiver answered 503".into()),
                });
                store.dead(&record).await.unwrap();
                record.state = DeliveryState::Dead;
                written.push(record);
            }
        }
        let store = RedbStore::open(&path).unwrap();
        let page = |instance, after, limit| {
            store.dead_letters(DeadLetterQuery {
                instance,
                after,
                limit,
            })
        };
        assert_eq!(page(None, None, usize::MAX).await.unwrap(), written);
        let first = page(None, None, 4).await.unwrap();
        assert_eq!(first, written[..4]);
        let rest = page(None, Some(first[3].notification_id), 4).await.unwrap();
        assert_eq!(rest, written[4..]);
        let odd = page(Some(31), None, 2).await.unwrap();
        assert_eq!(odd, [written[1].clone(), written[3].clone()]);
        let odd_rest = page(Some(31), Some(odd[1].notification_id), 2)
            .await
            .unwrap();
        assert_eq!(odd_rest, [written[5].clone()]);
        let revived = store
            .revive(written[0].notification_id)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            revived.history, written[0].history,
            "kept across redelivery"
        );
        store.check().await.unwrap();
        let _ = std::fs::remove_file(&path);
    }

    #[tokio::test]
    async fn only_accepted_outcome_and_revive_wait_for_the_disk() {
        let path = temp_path("durability");
        let store = RedbStore::open(&path).unwrap();
        let (event_id, notification_id) = store.allocate_ids().await.unwrap();
        let event = event(event_id, notification_id, "https://example.com/");
        let durable = |store: &RedbStore| store.stats().durable_commits;
        store.dispatched(&event).await.unwrap();
        assert_eq!(durable(&store), 1, "accepted: on disk before the receipt");
        store.running(event_id).await.unwrap();
        let record = notification(&event);
        store.finished(&record).await.unwrap();
        assert_eq!(
            durable(&store),
            2,
            "outcome: on disk before the first attempt"
        );
        let before = store.stats();
        store.attempted(&record).await.unwrap();
        store.dead(&record).await.unwrap();
        let after = store.stats();
        assert_eq!(
            after.durable_commits, before.durable_commits,
            "not waited for"
        );
        assert_eq!(after.transactions, before.transactions + 2);
        assert_eq!(
            store
                .dead_letters(DeadLetterQuery::all())
                .await
                .unwrap()
                .len(),
            1,
            "yet read back at once"
        );
        // After a quiet second they reach the disk all the same: one flush, not one each.
        let deadline = std::time::Instant::now() + FLUSH_AFTER * 10;
        while durable(&store) == before.durable_commits {
            assert!(std::time::Instant::now() < deadline, "never flushed");
            tokio::time::sleep(FLUSH_AFTER / 10).await;
        }
        assert_eq!(durable(&store), before.durable_commits + 1);
        store.revive(notification_id).await.unwrap().unwrap();
        assert_eq!(
            durable(&store),
            before.durable_commits + 2,
            "an operator's revive"
        );
        store.delivered(&record).await.unwrap();
        drop(store); // a clean close flushes what is left
        let store = RedbStore::open(&path).unwrap();
        let status = store.status(event_id).await.unwrap();
        assert!(
            matches!(&status, Some(EventSnapshot::Finished(n)) if n.state == DeliveryState::Delivered),
            "{status:?}"
        );
        let _ = std::fs::remove_file(&path);
    }

    #[tokio::test]
    async fn the_id_floor_is_written_a_block_ahead_not_with_every_event() {
        let path = temp_path("floor");
        let floor = |store: &RedbStore| {
            let txn = store.db.begin_read().unwrap();
            let meta = txn.open_table(META).unwrap();
            meta.get(NEXT_ID).unwrap().map(|v| v.value())
        };
        let last = {
            let store = RedbStore::open(&path).unwrap();
            let mut last = 0;
            let mut floors = std::collections::BTreeSet::new();
            for _ in 0..50 {
                let (event_id, notification_id) = store.allocate_ids().await.unwrap();
                let accepted = event(event_id, notification_id, "");
                store.dispatched(&accepted).await.unwrap();
                floors.insert(floor(&store).unwrap());
                last = notification_id.get();
            }
            assert_eq!(floors.len(), 1, "written once for 50 events: {floors:?}");
            assert!(floors.first().unwrap() > &last);
            last
        };
        let store = RedbStore::open(&path).unwrap();
        assert!(store.allocate_ids().await.unwrap().0.get() > last);
        let _ = std::fs::remove_file(&path);
    }

    #[tokio::test]
    async fn running_shows_in_status_without_a_write() {
        let path = temp_path("running");
        let store = RedbStore::open(&path).unwrap();
        let (event_id, notification_id) = store.allocate_ids().await.unwrap();
        let event = EventRecord {
            event_id,
            notification_id,
            instance_id: 7,
            instance_url: false,
            target: String::new(),
            accepted_at_ms: 1,
            running: false,
            progress: None,
            trace: None,
        };
        store.dispatched(&event).await.unwrap();
        store.running(event_id).await.unwrap();
        assert!(
            matches!(store.status(event_id).await.unwrap(), Some(EventSnapshot::Unfinished(e)) if e.running)
        );
        let _ = std::fs::remove_file(&path);
    }

    /// A key is held until it expires; the retention sweep deletes expired keys, and an expired
    /// key may be claimed again (before the sweep too).
    #[tokio::test]
    async fn idempotency_keys_are_held_until_they_expire_and_swept() {
        use crate::store::{IdempotencyKey, KeyClaim, KeyScope};
        let path = temp_path("keys");
        let store = RedbStore::open(&path).unwrap();
        let key = |name: &str, expires_at_ms: u64| IdempotencyKey {
            scope: KeyScope {
                instance_id: 7,
                method: "POST".into(),
                path: "/work".into(),
                key: name.into(),
            },
            fingerprint: [1; 32],
            expires_at_ms,
        };
        let claim = async |name: &str, expires: u64| {
            let (event_id, notification_id) = store.allocate_ids().await.unwrap();
            let event = event(event_id, notification_id, "https://example.com/");
            (
                event_id,
                store
                    .dispatched_with_key(&event, &key(name, expires))
                    .await
                    .unwrap(),
            )
        };
        let (first, claimed) = claim("held", u64::MAX).await;
        assert_eq!(claimed, KeyClaim::Claimed);
        let (_, again) = claim("held", u64::MAX).await;
        assert_eq!(
            again,
            KeyClaim::Held {
                event_id: first,
                fingerprint: [1; 32]
            }
        );
        assert_eq!(claim("expired", 1).await.1, KeyClaim::Claimed);
        assert_eq!(
            claim("expired", 1).await.1,
            KeyClaim::Claimed,
            "expired: free"
        );
        let count = |store: &RedbStore| {
            let txn = store.db.begin_read().unwrap();
            let keys = txn.open_table(super::tables::IDEMPOTENCY_KEYS).unwrap();
            use redb::ReadableTableMetadata;
            keys.len().unwrap()
        };
        assert_eq!(count(&store), 2);
        prune(&store.db).unwrap();
        assert_eq!(
            count(&store),
            1,
            "the expired key is swept, the held one kept"
        );
        drop(store);
        let _ = std::fs::remove_file(&path);
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

    /// Disabling and enabling wait for the disk; the list is by id, a second disabling replaces
    /// the first, and what is left survives reopening the file.
    #[tokio::test]
    async fn disabled_receivers_are_replaced_enabled_and_survive_reopening() {
        let path = temp_path("receivers");
        {
            let store = RedbStore::open(&path).unwrap();
            let durable = |store: &RedbStore| store.stats().durable_commits;
            let before = durable(&store);
            store.disable_receiver(&disabled("c", 1)).await.unwrap();
            assert_eq!(durable(&store), before + 1, "on disk before the answer");
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
            let before = durable(&store);
            assert!(store.enable_receiver("a").await.unwrap());
            assert_eq!(durable(&store), before + 1, "on disk before the answer");
            assert!(
                !store.enable_receiver("a").await.unwrap(),
                "enabled already"
            );
            assert_eq!(
                store.disabled_receivers().await.unwrap(),
                [disabled("c", 3)]
            );
        }
        let store = RedbStore::open(&path).unwrap();
        assert_eq!(
            store.disabled_receivers().await.unwrap(),
            [disabled("c", 3)],
            "kept across reopening"
        );
        drop(store);
        let _ = std::fs::remove_file(&path);
    }

    /// A file no receiver was disabled in has no table for them: it opens, lists none, and
    /// takes a disabling.
    #[tokio::test]
    async fn a_file_from_before_disabled_receivers_lists_none_and_takes_one() {
        let path = temp_path("receivers-before");
        let accepted = {
            let store = RedbStore::open(&path).unwrap();
            let (event_id, notification_id) = store.allocate_ids().await.unwrap();
            let accepted = event(event_id, notification_id, "https://example.com/");
            store.dispatched(&accepted).await.unwrap();
            accepted
        };
        let missing = Database::open(&path)
            .unwrap()
            .begin_read()
            .unwrap()
            .open_table(super::tables::DISABLED_RECEIVERS)
            .map(drop);
        assert!(
            matches!(missing, Err(redb::TableError::TableDoesNotExist(_))),
            "the file is as one written before disabled receivers: {missing:?}"
        );
        let store = RedbStore::open(&path).unwrap();
        assert!(store.disabled_receivers().await.unwrap().is_empty());
        assert!(!store.enable_receiver("a").await.unwrap());
        store.disable_receiver(&disabled("a", 1)).await.unwrap();
        assert_eq!(
            store.disabled_receivers().await.unwrap(),
            [disabled("a", 1)]
        );
        assert_eq!(store.recover().await.unwrap().unfinished, [accepted]);
        drop(store);
        let _ = std::fs::remove_file(&path);
    }

    #[tokio::test]
    async fn concurrent_writes_are_all_committed() {
        let path = temp_path("group");
        let store = Arc::new(RedbStore::open(&path).unwrap());
        let mut tasks = Vec::new();
        for _ in 0..200 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
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
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
        assert_eq!(store.recover().await.unwrap().unfinished.len(), 200);
        // Group commit: writes waiting together share an fsync.
        let durable = store.stats().durable_commits;
        assert!(
            durable <= 100,
            "200 accepted events in {durable} durable commits"
        );
        let _ = std::fs::remove_file(&path);
    }
}
