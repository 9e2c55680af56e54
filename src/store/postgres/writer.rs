//! The writer: one task folds every write waiting at that moment into one transaction, one
//! statement per kind of write (`UNNEST` over arrays), so concurrent receipts share a commit;
//! the transaction's statements are pipelined, and a few transactions are in flight at once.
//! A transaction holding a write the store contract calls durable commits synchronously; one
//! holding only the others commits with `synchronous_commit = off` (no wait for the WAL flush).

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use std::future::Future;
use std::task::Poll;

use tokio::sync::{mpsc, oneshot};
use tokio_postgres::types::ToSql;

use super::rows::record_of;
use super::shared::Shared;
use crate::store::{
    history, trace, unix_ms, DeliveryState, EventRecord, IdempotencyKey, KeyClaim, KeyScope,
    NotificationRecord, StoreError, Written,
};
use crate::wire::ids::{EventId, NotificationId};

/// Most writes folded into one transaction.
const MAX_BATCH: usize = 4096;
/// A transaction that takes longer has failed (the server hangs, a network partition).
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug)]
pub(super) enum Op {
    Dispatched(EventRecord),
    /// Accepted under an idempotency key: the event and the key, or nothing if the key is held.
    DispatchedWithKey(EventRecord, IdempotencyKey),
    Finished(NotificationRecord),
    /// An attempt failed, the notification was delivered, or it is dead.
    Update(NotificationRecord),
    Revive(NotificationId),
}

impl Op {
    fn is_durable(&self) -> bool {
        matches!(
            self,
            Self::Dispatched(_) | Self::DispatchedWithKey(..) | Self::Finished(_) | Self::Revive(_)
        )
    }
}

pub(super) type Answer = Result<Written, StoreError>;

#[derive(Debug)]
pub(super) struct Write {
    pub(super) op: Op,
    pub(super) done: oneshot::Sender<Answer>,
}

/// Transactions in flight at once: while one waits for its commit, the next batch gathers and
/// goes out. The layer never has two writes of one event outstanding, so batches committing
/// side by side never touch the same row.
const IN_FLIGHT: usize = 4;

pub(super) async fn run(shared: Arc<Shared>, mut queue: mpsc::UnboundedReceiver<Write>) {
    let slots = Arc::new(tokio::sync::Semaphore::new(IN_FLIGHT));
    while let Some(first) = queue.recv().await {
        let slot = slots.clone().acquire_owned().await.expect("never closed");
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(write) => batch.push(write),
                Err(_) => break,
            }
        }
        let shared = shared.clone();
        tokio::spawn(async move {
            commit_and_answer(&shared, batch).await;
            drop(slot);
        });
    }
}

async fn commit_and_answer(shared: &Shared, batch: Vec<Write>) {
    let durable = batch.iter().any(|write| write.op.is_durable());
    let answers = match tokio::time::timeout(WRITE_TIMEOUT, commit(shared, &batch, durable)).await {
        Ok(Ok(answers)) => {
            shared.transactions.fetch_add(1, Ordering::Relaxed);
            if durable {
                shared.durable_commits.fetch_add(1, Ordering::Relaxed);
            }
            answers
        }
        Ok(Err(error)) => {
            let message = error.to_string();
            tracing::warn!(error = %message, "the event store could not commit");
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
    for (write, answer) in batch.into_iter().zip(answers) {
        let _ = write.done.send(answer);
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A pooled connection that goes back to the pool only once its transaction has ended: one
/// given up midway (a timeout) is closed instead, never reused inside an open transaction.
struct Checkout {
    client: Option<deadpool_postgres::Object>,
    ended: bool,
}

impl Drop for Checkout {
    fn drop(&mut self) {
        if let (false, Some(client)) = (self.ended, self.client.take()) {
            drop(deadpool_postgres::Object::take(client));
        }
    }
}

/// One transaction for the whole batch, its statements pipelined (sent together, answered
/// together: one round trip and the commit); an answer per write, in order.
async fn commit(shared: &Shared, batch: &[Write], durable: bool) -> Result<Vec<Answer>, BoxError> {
    let mut checkout = Checkout {
        client: Some(shared.pool.get().await?),
        ended: false,
    };
    let client = checkout.client.as_ref().expect("checked out above");
    let sql = &shared.sql;
    let me = &shared.node_id;

    // An idempotency key goes into one statement once: a second write of it in the batch (two
    // copies of one request on this node) is answered from the first's claim.
    let mut first_of_key: HashMap<&KeyScope, usize> = HashMap::new();
    let mut copies: Vec<(usize, usize)> = Vec::new();
    let mut dispatched: Vec<(&EventRecord, Option<&IdempotencyKey>)> = Vec::new();
    for (index, write) in batch.iter().enumerate() {
        match &write.op {
            Op::Dispatched(event) => dispatched.push((event, None)),
            Op::DispatchedWithKey(event, key) => match first_of_key.get(&key.scope) {
                Some(&first) => copies.push((index, first)),
                None => {
                    first_of_key.insert(&key.scope, index);
                    dispatched.push((event, Some(key)));
                }
            },
            _ => {}
        }
    }
    let keyed = !first_of_key.is_empty();
    let finished: Vec<&NotificationRecord> = batch
        .iter()
        .filter_map(|w| match &w.op {
            Op::Finished(notification) => Some(notification),
            _ => None,
        })
        .collect();
    // Later writes of one notification supersede earlier ones (each carries the whole state).
    let mut updates: HashMap<u64, &NotificationRecord> = HashMap::new();
    for write in batch {
        if let Op::Update(notification) = &write.op {
            updates.insert(notification.event_id.get(), notification);
        }
    }
    let now = unix_ms();
    let (gone, changed): (Vec<&NotificationRecord>, Vec<&NotificationRecord>) = updates
        .into_values()
        .partition(|n| n.state == DeliveryState::Delivered && n.retain_until_ms <= now);
    let revives: Vec<(usize, i64)> = batch
        .iter()
        .enumerate()
        .filter_map(|(index, w)| match &w.op {
            Op::Revive(id) => Some((index, id.get() as i64)),
            _ => None,
        })
        .collect();

    // Prepared once per connection (cached), before the pipelined part.
    let insert = client
        .prepare_cached(if keyed {
            &sql.insert_keyed_events
        } else {
            &sql.insert_events
        })
        .await?;
    let finish = client.prepare_cached(&sql.finish_events).await?;
    let delete = client.prepare_cached(&sql.delete_notifications).await?;
    let update = client.prepare_cached(&sql.update_notifications).await?;
    let revive = client.prepare_cached(&sql.revive).await?;
    let notify = client.prepare_cached(NOTIFY).await?;

    // Rows are found by their primary key, the event id.
    let ids = |n: &[&NotificationRecord]| -> Vec<i64> {
        n.iter().map(|n| n.event_id.get() as i64).collect()
    };
    // Ids are below 2^53; times may be "forever" (`u64::MAX`), kept as the largest bigint.
    let i64s = |values: Vec<u64>| -> Vec<i64> {
        values
            .into_iter()
            .map(|v| v.min(i64::MAX as u64) as i64)
            .collect()
    };
    let insert_params = (
        i64s(dispatched.iter().map(|(e, _)| e.event_id.get()).collect()),
        i64s(
            dispatched
                .iter()
                .map(|(e, _)| e.notification_id.get())
                .collect(),
        ),
        i64s(dispatched.iter().map(|(e, _)| e.instance_id).collect()),
        dispatched
            .iter()
            .map(|(e, _)| e.target.as_str())
            .collect::<Vec<_>>(),
        dispatched
            .iter()
            .map(|(e, _)| e.instance_url)
            .collect::<Vec<_>>(),
        i64s(dispatched.iter().map(|(e, _)| e.accepted_at_ms).collect()),
        dispatched
            .iter()
            .map(|(e, _)| trace::encode(e.trace.as_deref()))
            .collect::<Vec<_>>(),
    );
    let key_part = |part: fn(&IdempotencyKey) -> &str| -> Vec<Option<&str>> {
        dispatched.iter().map(|(_, k)| k.map(part)).collect()
    };
    let key_params = (
        key_part(|k| &k.scope.method),
        key_part(|k| &k.scope.path),
        key_part(|k| &k.scope.key),
        dispatched
            .iter()
            .map(|(_, k)| k.map(|k| &k.fingerprint[..]))
            .collect::<Vec<Option<&[u8]>>>(),
        dispatched
            .iter()
            .map(|(_, k)| k.map(|k| k.expires_at_ms.min(i64::MAX as u64) as i64))
            .collect::<Vec<Option<i64>>>(),
    );
    let finish_params = (
        i64s(finished.iter().map(|n| n.event_id.get()).collect()),
        finished
            .iter()
            .map(|n| state_code(n.state))
            .collect::<Vec<_>>(),
        finished
            .iter()
            .map(|n| n.body.as_ref())
            .collect::<Vec<&[u8]>>(),
        i64s(finished.iter().map(|n| n.next_attempt_at_ms).collect()),
        i64s(finished.iter().map(|n| n.retain_until_ms).collect()),
    );
    let gone_ids = ids(&gone);
    let update_params = (
        ids(&changed),
        changed
            .iter()
            .map(|n| state_code(n.state))
            .collect::<Vec<_>>(),
        changed
            .iter()
            .map(|n| n.attempts as i32)
            .collect::<Vec<_>>(),
        i64s(changed.iter().map(|n| n.next_attempt_at_ms).collect()),
        changed
            .iter()
            .map(|n| n.last_error.as_deref())
            .collect::<Vec<_>>(),
        i64s(changed.iter().map(|n| n.retain_until_ms).collect()),
        changed
            .iter()
            .map(|n| history::encode(&n.history))
            .collect::<Vec<_>>(),
    );
    let now_param = now as i64;

    // Every statement here finds its rows by key. Without the planner's statistics of a table
    // that grew quickly (autovacuum has not analysed it yet) a join with UNNEST can be planned as
    // a scan of the whole table; the indexes are always right here.
    let begin = client.batch_execute(if durable {
        "BEGIN; SET LOCAL enable_seqscan = off"
    } else {
        "BEGIN; SET LOCAL enable_seqscan = off; SET LOCAL synchronous_commit = off"
    });
    // With keys, the events inserted (a keyed one is not if its key is held); else none.
    let inserted = async {
        let p = &insert_params;
        if dispatched.is_empty() {
            return Ok(None);
        }
        if !keyed {
            let params: [&(dyn ToSql + Sync); 8] = [&p.0, &p.1, &p.2, &p.3, &p.4, &p.5, me, &p.6];
            return client.execute(&insert, &params).await.map(|_| None);
        }
        let k = &key_params;
        let params: [&(dyn ToSql + Sync); 14] = [
            &p.0, &p.1, &p.2, &p.3, &p.4, &p.5, me, &k.0, &k.1, &k.2, &k.3, &k.4, &now_param, &p.6,
        ];
        let rows = client.query(&insert, &params).await?;
        Ok(Some(
            rows.iter()
                .map(|row| row.get::<_, i64>(0) as u64)
                .collect::<std::collections::HashSet<u64>>(),
        ))
    };
    let kept = async {
        if finished.is_empty() {
            return Ok(Vec::new());
        }
        let p = &finish_params;
        client
            .query(&finish, &[&p.0, &p.1, &p.2, &p.3, &p.4, me])
            .await
    };
    let deleted = async {
        if gone_ids.is_empty() {
            return Ok(0);
        }
        client.execute(&delete, &[&gone_ids]).await
    };
    let updated = async {
        if changed.is_empty() {
            return Ok(0);
        }
        let p = &update_params;
        client
            .execute(&update, &[&p.0, &p.1, &p.2, &p.3, &p.4, &p.5, &p.6])
            .await
    };
    let revive_params: Vec<[&(dyn ToSql + Sync); 3]> = revives
        .iter()
        .map(|(_, id)| [id as &(dyn ToSql + Sync), &now_param, me])
        .collect();
    // All sent at once, so all are inside the transaction, before its COMMIT.
    let revived = join_all(
        revive_params
            .iter()
            .map(|params| client.query_opt(&revive, params))
            .collect(),
    );
    // Every node hears which events ended (clients wait for it); one taken over meanwhile is
    // named too, which only makes a waiter read its status again.
    let channel = super::nodes::ended_channel(&shared.schema);
    let payloads: Vec<String> = finished
        .chunks(super::nodes::IDS_PER_NOTIFY)
        .map(|chunk| {
            chunk
                .iter()
                .map(|n| n.event_id.to_string())
                .collect::<Vec<_>>()
                .join(",")
        })
        .collect();
    let notify_params: Vec<[&(dyn ToSql + Sync); 2]> = payloads
        .iter()
        .map(|payload| [&channel as &(dyn ToSql + Sync), payload])
        .collect();
    let told = join_all(
        notify_params
            .iter()
            .map(|params| client.execute(&notify, params))
            .collect(),
    );
    let end = client.batch_execute("COMMIT");
    let (begun, inserted, kept, deleted, updated, revived, told, ended) =
        tokio::join!(begin, inserted, kept, deleted, updated, revived, told, end);
    checkout.ended = true;
    // The first failure is the cause; the later ones only say the transaction was aborted.
    begun?;
    let inserted = inserted?;
    let kept: std::collections::HashSet<u64> = kept?
        .iter()
        .map(|row| row.get::<_, i64>(0) as u64)
        .collect();
    deleted?;
    updated?;
    for told in told {
        told?;
    }
    ended?;

    // Keys held by earlier events: who holds them, read now that the commit has waited for
    // any transaction that held them unfinished.
    let held: Vec<&IdempotencyKey> = dispatched
        .iter()
        .filter_map(|(event, key)| {
            let key = (*key)?;
            let claimed = inserted
                .as_ref()
                .is_some_and(|set| set.contains(&event.event_id.get()));
            (!claimed).then_some(key)
        })
        .collect();
    let holders = if held.is_empty() {
        HashMap::new()
    } else {
        key_holders(client, &sql.key_holders, &held).await?
    };

    let mut answers: Vec<Answer> = batch
        .iter()
        .map(|write| match &write.op {
            Op::Finished(notification) if !kept.contains(&notification.event_id.get()) => {
                Err(StoreError::superseded(format!(
                    "event {} was taken over by another node",
                    notification.event_id
                )))
            }
            Op::DispatchedWithKey(event, key) => {
                if inserted
                    .as_ref()
                    .is_some_and(|set| set.contains(&event.event_id.get()))
                {
                    return Ok(Written::Claim(KeyClaim::Claimed));
                }
                match holders.get(&key.scope) {
                    Some(&(event_id, fingerprint)) => Ok(Written::Claim(KeyClaim::Held {
                        event_id,
                        fingerprint,
                    })),
                    // Held when the batch ran, gone now (swept): the client may send it again.
                    None => Err(StoreError::new(
                        "an idempotency key was held and then expired; try again",
                    )),
                }
            }
            _ => Ok(Written::Record(None)),
        })
        .collect();
    // A copy of a key in this batch: held by whatever holds the first.
    for &(copy, first) in &copies {
        let (Op::DispatchedWithKey(first_event, first_key), Ok(Written::Claim(claim))) =
            (&batch[first].op, &answers[first])
        else {
            answers[copy] = Err(StoreError::new("the idempotency key could not be recorded"));
            continue;
        };
        answers[copy] = Ok(Written::Claim(match *claim {
            KeyClaim::Claimed => KeyClaim::Held {
                event_id: first_event.event_id,
                fingerprint: first_key.fingerprint,
            },
            held => held,
        }));
    }
    for ((index, _), row) in revives.iter().zip(revived) {
        answers[*index] = row?
            .map(|row| record_of(&row).map(|stored| stored.finished()))
            .transpose()
            .map(|record| Written::Record(record.flatten()));
    }
    Ok(answers)
}

/// Tells every node (`LISTEN`ing) something, inside the transaction: sent at its commit.
pub(super) const NOTIFY: &str = "SELECT pg_notify($1, $2)";

/// Who holds each of `keys`: the event and the fingerprint, by scope.
async fn key_holders(
    client: &deadpool_postgres::Object,
    sql: &str,
    keys: &[&IdempotencyKey],
) -> Result<HashMap<KeyScope, (EventId, [u8; 32])>, BoxError> {
    let statement = client.prepare_cached(sql).await?;
    let instances: Vec<i64> = keys.iter().map(|k| k.scope.instance_id as i64).collect();
    let part = |part: fn(&KeyScope) -> &str| -> Vec<&str> {
        keys.iter().map(|k| part(&k.scope)).collect()
    };
    let (methods, paths, names) = (part(|s| &s.method), part(|s| &s.path), part(|s| &s.key));
    let rows = client
        .query(&statement, &[&instances, &methods, &paths, &names])
        .await?;
    rows.iter()
        .map(|row| {
            let scope = KeyScope {
                instance_id: row.get::<_, i64>(0) as u64,
                method: row.get(1),
                path: row.get(2),
                key: row.get(3),
            };
            let fingerprint: &[u8] = row.get(5);
            let fingerprint: [u8; 32] = fingerprint
                .try_into()
                .map_err(|_| "an idempotency key's fingerprint is not 32 bytes")?;
            Ok((
                scope,
                (EventId::new(row.get::<_, i64>(4) as u64), fingerprint),
            ))
        })
        .collect()
}

/// Polls every future from the first poll on (so requests they send go out together, in order)
/// until all are done; their outputs, in order.
async fn join_all<F: Future>(futures: Vec<F>) -> Vec<F::Output> {
    let mut futures: Vec<_> = futures.into_iter().map(|f| Some(Box::pin(f))).collect();
    let mut outputs: Vec<Option<F::Output>> = futures.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut done = true;
        for (slot, output) in futures.iter_mut().zip(outputs.iter_mut()) {
            if let Some(future) = slot {
                match future.as_mut().poll(cx) {
                    Poll::Ready(value) => {
                        *output = Some(value);
                        *slot = None;
                    }
                    Poll::Pending => done = false,
                }
            }
        }
        if done {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    })
    .await;
    outputs
        .into_iter()
        .map(|o| o.expect("polled to the end"))
        .collect()
}

pub(super) fn state_code(state: DeliveryState) -> i16 {
    match state {
        DeliveryState::Pending => 1,
        DeliveryState::Delivered => 2,
        DeliveryState::Dead => 3,
        DeliveryState::NotRequested => 4,
    }
}
