//! The writer: one task folds every write waiting at that moment into one transaction, one
//! statement per kind of write (`UNNEST` over arrays), so concurrent receipts share a commit.
//! A transaction holding a write the store contract calls durable commits synchronously; one
//! holding only the others commits with `synchronous_commit = off` (no wait for the WAL flush).

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

use super::{record_of, Shared, COLUMNS};
use crate::ids::NotificationId;
use crate::store::{unix_ms, DeliveryState, EventRecord, NotificationRecord, StoreError};

/// Most writes folded into one transaction.
const MAX_BATCH: usize = 4096;
/// A transaction that takes longer has failed (the server hangs, a network partition).
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug)]
pub(super) enum Op {
    Dispatched(EventRecord),
    Finished(NotificationRecord),
    /// An attempt failed, the notification was delivered, or it is dead.
    Update(NotificationRecord),
    Revive(NotificationId),
}

impl Op {
    fn is_durable(&self) -> bool {
        matches!(
            self,
            Self::Dispatched(_) | Self::Finished(_) | Self::Revive(_)
        )
    }
}

pub(super) type Answer = Result<Option<NotificationRecord>, StoreError>;

#[derive(Debug)]
pub(super) struct Write {
    pub(super) op: Op,
    pub(super) done: oneshot::Sender<Answer>,
}

pub(super) async fn run(shared: Arc<Shared>, mut queue: mpsc::UnboundedReceiver<Write>) {
    let mut batch = Vec::new();
    while let Some(first) = queue.recv().await {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(write) => batch.push(write),
                Err(_) => break,
            }
        }
        let durable = batch.iter().any(|write| write.op.is_durable());
        let answers =
            match tokio::time::timeout(WRITE_TIMEOUT, commit(&shared, &batch, durable)).await {
                Ok(Ok(answers)) => {
                    shared.transactions.fetch_add(1, Ordering::Relaxed);
                    if durable {
                        shared.durable_commits.fetch_add(1, Ordering::Relaxed);
                    }
                    answers
                }
                Ok(Err(error)) => {
                    let message = error.to_string();
                    tracing::warn!(%message, "the event store could not commit");
                    batch
                        .iter()
                        .map(|_| Err(StoreError::new(message.clone())))
                        .collect()
                }
                Err(_) => {
                    tracing::warn!("the event store did not commit within {WRITE_TIMEOUT:?}");
                    batch
                        .iter()
                        .map(|_| Err(StoreError::new("the database did not answer in time")))
                        .collect()
                }
            };
        for (write, answer) in batch.drain(..).zip(answers) {
            let _ = write.done.send(answer);
        }
    }
}

/// One transaction for the whole batch; an answer per write, in order.
async fn commit(
    shared: &Shared,
    batch: &[Write],
    durable: bool,
) -> Result<Vec<Answer>, Box<dyn std::error::Error + Send + Sync>> {
    let mut client = shared.pool.get().await?;
    let txn = client.transaction().await?;
    if !durable {
        txn.batch_execute("SET LOCAL synchronous_commit = off")
            .await?;
    }
    let sql = &shared.sql;
    let me = shared.node_id;

    let dispatched: Vec<&EventRecord> = batch
        .iter()
        .filter_map(|w| match &w.op {
            Op::Dispatched(event) => Some(event),
            _ => None,
        })
        .collect();
    if !dispatched.is_empty() {
        let column =
            |f: fn(&EventRecord) -> i64| dispatched.iter().map(|e| f(e)).collect::<Vec<_>>();
        let statement = txn.prepare_cached(&sql.insert_events).await?;
        txn.execute(
            &statement,
            &[
                &column(|e| e.event_id.get() as i64),
                &column(|e| e.notification_id.get() as i64),
                &column(|e| e.instance_id as i64),
                &dispatched
                    .iter()
                    .map(|e| e.target.as_str())
                    .collect::<Vec<_>>(),
                &dispatched
                    .iter()
                    .map(|e| e.instance_url)
                    .collect::<Vec<_>>(),
                &column(|e| e.accepted_at_ms as i64),
                &me,
            ],
        )
        .await?;
    }

    let finished: Vec<&NotificationRecord> = batch
        .iter()
        .filter_map(|w| match &w.op {
            Op::Finished(notification) => Some(notification),
            _ => None,
        })
        .collect();
    let mut kept = std::collections::HashSet::new();
    if !finished.is_empty() {
        let statement = txn.prepare_cached(&sql.finish_events).await?;
        let rows = txn
            .query(
                &statement,
                &[
                    &finished
                        .iter()
                        .map(|n| n.event_id.get() as i64)
                        .collect::<Vec<_>>(),
                    &finished
                        .iter()
                        .map(|n| state_code(n.state))
                        .collect::<Vec<_>>(),
                    &finished
                        .iter()
                        .map(|n| n.body.as_ref())
                        .collect::<Vec<&[u8]>>(),
                    &finished
                        .iter()
                        .map(|n| n.next_attempt_at_ms as i64)
                        .collect::<Vec<_>>(),
                    &finished
                        .iter()
                        .map(|n| n.retain_until_ms as i64)
                        .collect::<Vec<_>>(),
                    &me,
                ],
            )
            .await?;
        kept = rows.iter().map(|row| row.get::<_, i64>(0) as u64).collect();
    }

    // Later writes of one notification supersede earlier ones (each carries the whole state).
    let mut updates: HashMap<u64, &NotificationRecord> = HashMap::new();
    for write in batch {
        if let Op::Update(notification) = &write.op {
            updates.insert(notification.notification_id.get(), notification);
        }
    }
    let now = unix_ms();
    let (gone, changed): (Vec<&NotificationRecord>, Vec<&NotificationRecord>) = updates
        .into_values()
        .partition(|n| n.state == DeliveryState::Delivered && n.retain_until_ms <= now);
    if !gone.is_empty() {
        // Nothing asks for it any more (no status endpoint): keep nothing.
        let statement = txn.prepare_cached(&sql.delete_notifications).await?;
        let ids: Vec<i64> = gone
            .iter()
            .map(|n| n.notification_id.get() as i64)
            .collect();
        txn.execute(&statement, &[&ids]).await?;
    }
    if !changed.is_empty() {
        let statement = txn.prepare_cached(&sql.update_notifications).await?;
        txn.execute(
            &statement,
            &[
                &changed
                    .iter()
                    .map(|n| n.notification_id.get() as i64)
                    .collect::<Vec<_>>(),
                &changed
                    .iter()
                    .map(|n| state_code(n.state))
                    .collect::<Vec<_>>(),
                &changed
                    .iter()
                    .map(|n| n.attempts as i32)
                    .collect::<Vec<_>>(),
                &changed
                    .iter()
                    .map(|n| n.next_attempt_at_ms as i64)
                    .collect::<Vec<_>>(),
                &changed
                    .iter()
                    .map(|n| n.last_error.as_deref())
                    .collect::<Vec<_>>(),
                &changed
                    .iter()
                    .map(|n| n.retain_until_ms as i64)
                    .collect::<Vec<_>>(),
            ],
        )
        .await?;
    }

    let mut answers = Vec::with_capacity(batch.len());
    for write in batch {
        answers.push(match &write.op {
            Op::Finished(notification) if !kept.contains(&notification.event_id.get()) => {
                Err(StoreError::superseded(format!(
                    "event {} was taken over by another node",
                    notification.event_id
                )))
            }
            Op::Revive(notification_id) => {
                let statement = txn.prepare_cached(&sql.revive).await?;
                let row = txn
                    .query_opt(
                        &statement,
                        &[&(notification_id.get() as i64), &(now as i64), &me],
                    )
                    .await?;
                Ok(row
                    .map(|row| record_of(&row))
                    .transpose()?
                    .and_then(|r| r.finished()))
            }
            _ => Ok(None),
        });
    }
    txn.commit().await?;
    Ok(answers)
}

pub(super) fn state_code(state: DeliveryState) -> i16 {
    match state {
        DeliveryState::Pending => 1,
        DeliveryState::Delivered => 2,
        DeliveryState::Dead => 3,
        DeliveryState::NotRequested => 4,
    }
}

/// The statements, written once for the store's schema.
#[derive(Debug)]
pub(super) struct Statements {
    insert_events: String,
    finish_events: String,
    update_notifications: String,
    delete_notifications: String,
    revive: String,
}

impl Statements {
    pub(super) fn new(schema: &str) -> Self {
        Self {
            insert_events: format!(
                "INSERT INTO {schema}.events
                     (event_id, notification_id, instance_id, target, instance_url, accepted_at_ms, owner, state)
                 SELECT e, n, i, t, u, a, $7, 0
                 FROM UNNEST($1::int8[], $2::int8[], $3::int8[], $4::text[], $5::bool[], $6::int8[])
                     AS x(e, n, i, t, u, a)"
            ),
            // Only an event this node still owns: one taken over meanwhile ends elsewhere.
            finish_events: format!(
                "UPDATE {schema}.events AS ev
                 SET state = x.s, body = x.b, next_attempt_at_ms = x.nx, retain_until_ms = x.r
                 FROM UNNEST($1::int8[], $2::int2[], $3::bytea[], $4::int8[], $5::int8[])
                     AS x(e, s, b, nx, r)
                 WHERE ev.event_id = x.e AND ev.state = 0 AND ev.owner = $6
                 RETURNING ev.event_id"
            ),
            update_notifications: format!(
                "UPDATE {schema}.events AS ev
                 SET state = x.s, attempts = x.at, next_attempt_at_ms = x.nx, last_error = x.le,
                     retain_until_ms = x.r
                 FROM UNNEST($1::int8[], $2::int2[], $3::int4[], $4::int8[], $5::text[], $6::int8[])
                     AS x(n, s, at, nx, le, r)
                 WHERE ev.notification_id = x.n"
            ),
            delete_notifications: format!(
                "DELETE FROM {schema}.events WHERE notification_id = ANY($1::int8[])"
            ),
            revive: format!(
                "UPDATE {schema}.events
                 SET state = 1, attempts = 0, next_attempt_at_ms = $2, owner = $3
                 WHERE notification_id = $1 AND state = 3
                 RETURNING {COLUMNS}"
            ),
        }
    }
}

/// A body as stored: the exact bytes.
pub(super) fn body_of(bytes: Option<Vec<u8>>) -> Bytes {
    bytes.map(Bytes::from).unwrap_or_default()
}
