//! The writer thread: group commit, and the store contract (which writes wait for the fsync).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use redb::{Database, Durability, ReadableTable};
use tokio::sync::oneshot;

use super::encoding::{
    decode_key_holder, decode_notification, encode_event, encode_key_holder, encode_notification,
    encode_receiver,
};
use super::prune::prune;
use super::tables::{
    DISABLED_RECEIVERS, EVENTS, EVENT_INDEX, IDEMPOTENCY_KEYS, META, NEXT_ID, NOTIFICATIONS,
};
use crate::store::{
    unix_ms, DeliveryState, DisabledReceiver, EventRecord, IdempotencyKey, KeyClaim,
    NotificationRecord, Written,
};
use crate::wire::ids::{EventId, IdGenerator, NotificationId};

/// How often the writer drops delivered notifications past their retention.
const PRUNE_EVERY: Duration = Duration::from_secs(60);
/// How long a write that need not wait for the disk waits to be folded into the next durable
/// commit before it is committed on its own, without an fsync.
const FOLD_WITHIN: Duration = Duration::from_millis(20);
/// How long writes committed without waiting for the disk may stay off it when no durable commit
/// comes along to take them.
pub(super) const FLUSH_AFTER: Duration = Duration::from_secs(1);
/// How far ahead of the ids handed out the persisted floor is moved (about a quarter of a second
/// of the id clock: a restart skips at most that many ids).
const ID_BLOCK: u64 = 1 << 20;

/// Most writes folded into one transaction.
const MAX_BATCH: usize = 4096;

/// What the writer has committed.
#[derive(Debug, Default)]
pub(super) struct Commits {
    pub(super) transactions: AtomicU64,
    pub(super) durable: AtomicU64,
}

impl Commits {
    fn count(&self, durable: bool) {
        self.transactions.fetch_add(1, Ordering::Relaxed);
        if durable {
            self.durable.fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[derive(Debug)]
pub(super) enum Op {
    Dispatched(EventRecord),
    /// Accepted under an idempotency key: the event and the key, or nothing if the key is held.
    DispatchedWithKey(EventRecord, IdempotencyKey),
    /// The job's outcome, only if the event is unfinished.
    Finished(NotificationRecord),
    /// A client's cancel: its outcome, only if the event is unfinished; else the outcome it has.
    Cancel(NotificationRecord),
    Attempted(NotificationRecord),
    Delivered(NotificationRecord),
    Dead(NotificationRecord),
    Revive(NotificationId),
    /// A receiver disabled, replacing an earlier record of its id.
    DisableReceiver(DisabledReceiver),
    /// A receiver enabled again (by id): answers whether it was disabled.
    EnableReceiver(String),
}

impl Op {
    /// Whether the write must be on disk before its future resolves (the store contract).
    fn is_durable(&self) -> bool {
        match self {
            Self::Dispatched(_)
            | Self::DispatchedWithKey(..)
            | Self::Finished(_)
            | Self::Cancel(_)
            | Self::Revive(_)
            | Self::DisableReceiver(_)
            | Self::EnableReceiver(_) => true,
            Self::Attempted(_) | Self::Delivered(_) | Self::Dead(_) => false,
        }
    }
}

#[derive(Debug)]
pub(super) struct Write {
    pub(super) op: Op,
    pub(super) done: oneshot::Sender<Result<Written, String>>,
}

/// The writer thread: one transaction for every write waiting at that moment, made durable
/// (fsync) when any of them must be. Writes that need not wait for the disk wait up to
/// [`FOLD_WITHIN`] to be folded into the next durable commit (under steady traffic there is one
/// every few milliseconds), else are committed without an fsync; what was committed so is made
/// durable after [`FLUSH_AFTER`] of quiet, and when the store is dropped.
pub(super) fn write_loop(
    db: &Database,
    ids: &IdGenerator,
    reserved: u64,
    commits: &Commits,
    queue: mpsc::Receiver<Write>,
) {
    let mut writer = Writer {
        db,
        ids,
        reserved,
        commits,
        batch: Vec::new(),
        folding_since: None,
        unflushed: false,
        last_prune: Instant::now(),
    };
    loop {
        let received = match writer.patience() {
            None => queue
                .recv()
                .map_err(|_| mpsc::RecvTimeoutError::Disconnected),
            Some(patience) => queue.recv_timeout(patience),
        };
        match received {
            Ok(write) => writer.batch.push(write),
            Err(mpsc::RecvTimeoutError::Timeout) => {
                writer.quiet();
                continue;
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
        while writer.batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(write) => writer.batch.push(write),
                Err(_) => break,
            }
        }
        writer.prune_if_due();
        if writer.batch.len() >= MAX_BATCH || writer.batch.iter().any(|w| w.op.is_durable()) {
            writer.commit(true);
        } else {
            writer.folding_since.get_or_insert_with(Instant::now);
        }
    }
    // The store is closing: everything to disk.
    if !writer.batch.is_empty() {
        writer.commit(true);
    } else if writer.unflushed {
        flush(db, commits);
    }
}

/// The writer thread's state.
struct Writer<'a> {
    db: &'a Database,
    ids: &'a IdGenerator,
    /// The id floor persisted: ids below it may be handed out without writing it again.
    reserved: u64,
    commits: &'a Commits,
    /// Writes not yet committed: the batch being gathered, or writes waiting to be folded.
    batch: Vec<Write>,
    /// Since when the batch holds writes waiting to be folded into a durable commit.
    folding_since: Option<Instant>,
    /// Whether something was committed without an fsync since the last durable commit.
    unflushed: bool,
    last_prune: Instant,
}

impl Writer<'_> {
    /// How long to wait for the next write before committing or flushing what is waiting
    /// (`None`: nothing waits).
    fn patience(&self) -> Option<Duration> {
        match self.folding_since {
            Some(since) => Some(FOLD_WITHIN.saturating_sub(since.elapsed())),
            None => self.unflushed.then_some(FLUSH_AFTER),
        }
    }

    /// Nothing came within [`patience`](Self::patience).
    fn quiet(&mut self) {
        if self.folding_since.is_some() {
            self.commit(false);
        } else if self.unflushed {
            self.unflushed = !flush(self.db, self.commits);
        }
    }

    /// Commits the batch, with an fsync or without, and answers every write in it.
    fn commit(&mut self, durable: bool) {
        self.folding_since = None;
        match apply(self.db, self.ids, &mut self.reserved, &self.batch, durable) {
            Ok(results) => {
                self.commits.count(durable);
                // A durable commit takes every earlier one to disk with it.
                self.unflushed = !durable;
                for (write, result) in self.batch.drain(..).zip(results) {
                    let _ = write.done.send(Ok(result));
                }
            }
            Err(error) => {
                let message = error.to_string();
                for write in self.batch.drain(..) {
                    let _ = write.done.send(Err(message.clone()));
                }
            }
        }
    }

    fn prune_if_due(&mut self) {
        if self.last_prune.elapsed() < PRUNE_EVERY {
            return;
        }
        self.last_prune = Instant::now();
        match prune(self.db) {
            Ok(()) => {
                self.commits.count(false);
                self.unflushed = true;
            }
            Err(error) => {
                tracing::warn!(%error, "could not drop expired notifications from the store")
            }
        }
    }
}

/// Makes every commit so far durable: an empty transaction committed with an fsync. True when
/// it worked.
fn flush(db: &Database, commits: &Commits) -> bool {
    let result = (|| -> Result<(), redb::Error> { Ok(db.begin_write()?.commit()?) })();
    match result {
        Ok(()) => {
            commits.count(true);
            true
        }
        Err(error) => {
            tracing::warn!(%error, "could not flush the store's recent writes to disk");
            false
        }
    }
}

fn apply(
    db: &Database,
    ids: &IdGenerator,
    reserved: &mut u64,
    batch: &[Write],
    durable: bool,
) -> Result<Vec<Written>, redb::Error> {
    let mut txn = db.begin_write()?;
    if !durable {
        txn.set_durability(Durability::None)?;
    }
    let mut results = Vec::with_capacity(batch.len());
    let mut new_floor = None;
    {
        let mut events = txn.open_table(EVENTS)?;
        let mut notifications = txn.open_table(NOTIFICATIONS)?;
        let mut index = txn.open_table(EVENT_INDEX)?;
        // Only a batch with a keyed receipt opens the keys' table.
        let keyed = batch
            .iter()
            .any(|w| matches!(w.op, Op::DispatchedWithKey(..)));
        let mut keys = if keyed {
            Some(txn.open_table(IDEMPOTENCY_KEYS)?)
        } else {
            None
        };
        // Likewise the disabled receivers' table (created by the first disabling).
        let receiving = batch
            .iter()
            .any(|w| matches!(w.op, Op::DisableReceiver(_) | Op::EnableReceiver(_)));
        let mut receivers = if receiving {
            Some(txn.open_table(DISABLED_RECEIVERS)?)
        } else {
            None
        };
        for write in batch {
            let (mut result, mut claim, mut outcome) = (None, None, None);
            match &write.op {
                Op::Dispatched(event) => {
                    events.insert(event.event_id.get(), encode_event(event).as_slice())?;
                }
                Op::DispatchedWithKey(event, key) => {
                    let keys = keys.as_mut().expect("opened for a batch with a key");
                    let scope = key.scope.digest();
                    let held = keys
                        .get(scope.as_slice())?
                        .map(|holder| decode_key_holder(holder.value()))
                        .transpose()?
                        .filter(|&(_, _, expires)| expires > unix_ms());
                    claim = Some(match held {
                        Some((event_id, fingerprint, _)) => KeyClaim::Held {
                            event_id: EventId::new(event_id),
                            fingerprint,
                        },
                        None => {
                            let holder = encode_key_holder(
                                event.event_id.get(),
                                &key.fingerprint,
                                key.expires_at_ms,
                            );
                            keys.insert(scope.as_slice(), holder.as_slice())?;
                            events.insert(event.event_id.get(), encode_event(event).as_slice())?;
                            KeyClaim::Claimed
                        }
                    });
                }
                Op::Finished(notification) | Op::Cancel(notification) => {
                    // Only an unfinished event ends: one event never has two outcomes.
                    let ended = events.remove(notification.event_id.get())?.is_some();
                    if ended {
                        index.insert(
                            notification.event_id.get(),
                            notification.notification_id.get(),
                        )?;
                        notifications.insert(
                            notification.notification_id.get(),
                            encode_notification(notification).as_slice(),
                        )?;
                    }
                    outcome = Some(match (&write.op, ended) {
                        (Op::Cancel(_), false) => {
                            let id = index.get(notification.event_id.get())?.map(|v| v.value());
                            let stored = match id {
                                Some(id) => notifications
                                    .get(id)?
                                    .map(|bytes| decode_notification(id, bytes.value()))
                                    .transpose()?,
                                None => None,
                            };
                            Written::Record(stored)
                        }
                        _ => Written::Ended(ended),
                    });
                }
                Op::Attempted(notification) | Op::Dead(notification) => {
                    let mut notification = notification.clone();
                    if matches!(write.op, Op::Dead(_)) {
                        notification.state = DeliveryState::Dead;
                    }
                    notifications.insert(
                        notification.notification_id.get(),
                        encode_notification(&notification).as_slice(),
                    )?;
                }
                Op::Delivered(notification) if notification.retain_until_ms <= unix_ms() => {
                    // Nothing asks for it (no status endpoint): keep nothing.
                    notifications.remove(notification.notification_id.get())?;
                    index.remove(notification.event_id.get())?;
                }
                Op::Delivered(notification) => {
                    let mut notification = notification.clone();
                    notification.state = DeliveryState::Delivered;
                    notifications.insert(
                        notification.notification_id.get(),
                        encode_notification(&notification).as_slice(),
                    )?;
                }
                Op::Revive(notification_id) => {
                    let stored = notifications
                        .get(notification_id.get())?
                        .map(|v| v.value().to_vec());
                    if let Some(bytes) = stored {
                        let mut record = decode_notification(notification_id.get(), &bytes)?;
                        if record.state == DeliveryState::Dead {
                            record.state = DeliveryState::Pending;
                            record.attempts = 0;
                            record.next_attempt_at_ms = unix_ms();
                            notifications.insert(
                                notification_id.get(),
                                encode_notification(&record).as_slice(),
                            )?;
                            result = Some(record);
                        }
                    }
                }
                Op::DisableReceiver(receiver) => {
                    let receivers = receivers.as_mut().expect("opened for a batch with one");
                    receivers.insert(receiver.id.as_str(), encode_receiver(receiver).as_slice())?;
                }
                Op::EnableReceiver(id) => {
                    let receivers = receivers.as_mut().expect("opened for a batch with one");
                    outcome = Some(Written::Enabled(receivers.remove(id.as_str())?.is_some()));
                }
            }
            results.push(match (claim, outcome) {
                (Some(claim), _) => Written::Claim(claim),
                (None, Some(outcome)) => outcome,
                (None, None) => Written::Record(result),
            });
        }
        // Every id handed out so far is below the persisted floor, so a restart continues above
        // it. An id reaches a client only in the receipt of an event whose `dispatched` commit
        // comes first, so only those commits may need to move it; it is moved a block ahead, so
        // few commits write it at all.
        let dispatched = batch
            .iter()
            .any(|write| matches!(write.op, Op::Dispatched(_) | Op::DispatchedWithKey(..)));
        if dispatched && ids.peek() >= *reserved {
            let floor = ids.peek() + ID_BLOCK;
            txn.open_table(META)?.insert(NEXT_ID, floor)?;
            new_floor = Some(floor);
        }
    }
    txn.commit()?;
    // Only once committed does the new floor hold.
    if let Some(floor) = new_floor {
        *reserved = floor;
    }
    Ok(results)
}
