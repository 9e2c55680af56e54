//! Nodes sharing one store: each has a heartbeat row; a node silent for longer than the lease
//! timeout loses its unfinished events and pending notifications to the first node that notices
//! (`FOR UPDATE SKIP LOCKED` on its node row, so only one does). Nodes look every third of the
//! lease timeout, and at once when a peer that leaves says so with `NOTIFY`.

use std::future::{poll_fn, Future as _};
use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio_postgres::{AsyncMessage, NoTls};

use super::rows::{record_of, Stored, COLUMNS};
use super::shared::Shared;
use crate::store::{unix_ms, Recovery, StoreError};
use crate::wire::ids::EventId;

/// How often finished events past their retention are deleted, and how many per statement.
const PRUNE_EVERY: Duration = Duration::from_secs(60);
const PRUNE_BATCH: i64 = 1000;

/// The channel peers `NOTIFY` when they leave with work left.
pub(super) fn channel(schema: &str) -> String {
    format!("tower_async_request_{schema}")
}

/// The channel every node `NOTIFY`s with the ids of the events it ended (finished or
/// cancelled), comma-separated; at most 63 bytes, PostgreSQL's limit for a name.
pub(super) fn ended_channel(schema: &str) -> String {
    let mut name = format!("tower_async_request_ended_{schema}");
    name.truncate(63);
    name
}

/// Most ids in one `NOTIFY` of [`ended_channel`]: 17 bytes each at most, under the 8000-byte
/// payload limit.
pub(super) const IDS_PER_NOTIFY: usize = 400;

/// Keeps this node's heartbeat and deletes expired events, until the store is dropped.
pub(super) async fn heartbeat(shared: Weak<Shared>, every: Duration) {
    let mut last_prune = tokio::time::Instant::now();
    loop {
        tokio::time::sleep(every).await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        if shared.left.load(std::sync::atomic::Ordering::Acquire) {
            return;
        }
        if let Err(error) = beat(&shared).await {
            tracing::warn!(%error, "could not renew this node's lease in the event store");
        }
        if let Err(error) = find_ended_elsewhere(&shared).await {
            tracing::debug!(%error, "could not look for jobs ended on other nodes");
        }
        if last_prune.elapsed() >= PRUNE_EVERY {
            last_prune = tokio::time::Instant::now();
            if let Err(error) = prune(&shared).await {
                tracing::warn!(%error, "could not delete expired events from the store");
            }
        }
    }
}

async fn beat(shared: &Shared) -> Result<(), StoreError> {
    let client = shared.pool.get().await.map_err(StoreError::new)?;
    // Re-inserted if a peer declared this node dead meanwhile: what it took stays taken.
    client
        .execute(&shared.sql_register, &[&shared.node_id])
        .await
        .map_err(StoreError::new)?;
    Ok(())
}

/// The fallback for a `NOTIFY` the listener missed (its connection was down): which of the jobs
/// running here were ended by another node (a client's cancel, a takeover).
async fn find_ended_elsewhere(shared: &Shared) -> Result<(), StoreError> {
    let running: Vec<i64> = shared
        .running
        .ids()
        .into_iter()
        .map(|id| id.get() as i64)
        .collect();
    if running.is_empty() {
        return Ok(());
    }
    let client = shared.pool.get().await.map_err(StoreError::new)?;
    let query = client
        .prepare_cached(&shared.sql.ended_elsewhere)
        .await
        .map_err(StoreError::new)?;
    let ended: Vec<EventId> = client
        .query(&query, &[&running, &shared.node_id])
        .await
        .map_err(StoreError::new)?
        .iter()
        .map(|row| EventId::new(row.get::<_, i64>(0) as u64))
        .collect();
    if !ended.is_empty() {
        tracing::debug!(
            count = ended.len(),
            "the heartbeat found jobs here that other nodes ended"
        );
        // Not running here any more: the layer drops them.
        for &event_id in &ended {
            shared.running.end(event_id);
        }
        let _ = shared.ended.0.try_send(ended);
    }
    Ok(())
}

/// Registers this node (or renews its row).
pub(super) async fn register(shared: &Shared) -> Result<(), StoreError> {
    beat(shared).await
}

/// Deletes delivered and not-requested events past their retention, in batches, and expired
/// idempotency keys; how many events.
pub(super) async fn prune(shared: &Shared) -> Result<u64, StoreError> {
    let client = shared.pool.get().await.map_err(StoreError::new)?;
    let sql = format!(
        "DELETE FROM {schema}.events WHERE event_id IN (
             SELECT event_id FROM {schema}.events
             WHERE state IN (2, 4) AND retain_until_ms <= $1 LIMIT $2)",
        schema = shared.quoted
    );
    let mut total = 0;
    loop {
        let deleted = client
            .execute(&sql, &[&(unix_ms() as i64), &PRUNE_BATCH])
            .await
            .map_err(StoreError::new)?;
        total += deleted;
        if deleted < PRUNE_BATCH as u64 {
            break;
        }
    }
    // Idempotency keys past their retention: free for new work (they are, expired, already).
    let keys = format!(
        "DELETE FROM {schema}.idempotency_keys WHERE ctid = ANY(ARRAY(
             SELECT ctid FROM {schema}.idempotency_keys WHERE expires_at_ms <= $1 LIMIT $2))",
        schema = shared.quoted
    );
    loop {
        let deleted = client
            .execute(&keys, &[&(unix_ms() as i64), &PRUNE_BATCH])
            .await
            .map_err(StoreError::new)?;
        if deleted < PRUNE_BATCH as u64 {
            return Ok(total);
        }
    }
}

/// Takes over what nodes silent for longer than the lease timeout left unfinished (and, with
/// `own`, what an earlier life of this node id left).
pub(super) async fn take_over(shared: &Shared, own: bool) -> Result<Recovery, StoreError> {
    let mut client = shared.pool.get().await.map_err(StoreError::new)?;
    let txn = client.transaction().await.map_err(StoreError::new)?;
    // By key and partial index only (see the writer).
    txn.batch_execute("SET LOCAL enable_seqscan = off")
        .await
        .map_err(StoreError::new)?;
    let schema = &shared.quoted;
    let lease = shared.lease_timeout.as_secs_f64();
    let dead: Vec<i64> = txn
        .query(
            &format!(
                "SELECT node_id FROM {schema}.nodes
                 WHERE node_id <> $1 AND heartbeat_at < now() - make_interval(secs => $2)
                 FOR UPDATE SKIP LOCKED"
            ),
            &[&shared.node_id, &lease],
        )
        .await
        .map_err(StoreError::new)?
        .iter()
        .map(|row| row.get(0))
        .collect();
    let mut owners = dead.clone();
    if own {
        owners.push(shared.node_id);
    }
    let rows = txn
        .query(
            &format!(
                "UPDATE {schema}.events SET owner = $1
                 WHERE owner = ANY($2::int8[]) AND state <= 1
                 RETURNING {COLUMNS}"
            ),
            &[&shared.node_id, &owners],
        )
        .await
        .map_err(StoreError::new)?;
    txn.execute(
        &format!("DELETE FROM {schema}.nodes WHERE node_id = ANY($1::int8[])"),
        &[&dead],
    )
    .await
    .map_err(StoreError::new)?;
    txn.commit().await.map_err(StoreError::new)?;
    let mut recovery = Recovery::default();
    for row in &rows {
        match record_of(row)? {
            Stored::Unfinished(event) => recovery.unfinished.push(event),
            Stored::Finished(notification) => recovery.pending.push(notification),
        }
    }
    if !dead.is_empty() {
        tracing::warn!(
            nodes = ?dead,
            interrupted = recovery.unfinished.len(),
            pending = recovery.pending.len(),
            "took over the work of nodes that stopped",
        );
    }
    Ok(recovery)
}

/// Marks this node as gone, so peers take over what it leaves at once, and tells them.
pub(super) async fn leave(shared: &Shared) -> Result<(), StoreError> {
    shared
        .left
        .store(true, std::sync::atomic::Ordering::Release);
    let client = shared.pool.get().await.map_err(StoreError::new)?;
    client
        .batch_execute(&format!(
            "UPDATE {schema}.nodes SET heartbeat_at = 'epoch' WHERE node_id = {node};
             NOTIFY \"{channel}\";",
            schema = shared.quoted,
            node = shared.node_id,
            channel = channel(&shared.schema),
        ))
        .await
        .map_err(StoreError::new)
}

/// Listens for peers leaving, waking the takeover, until the store is dropped; reconnects when
/// the connection is lost.
pub(super) async fn listen(shared: Weak<Shared>, config: tokio_postgres::Config) {
    loop {
        let Some(strong) = shared.upgrade() else {
            return;
        };
        let channel = channel(&strong.schema);
        let ended = ended_channel(&strong.schema);
        let wake = Arc::clone(&strong.wake);
        drop(strong);
        match config.connect(NoTls).await {
            Ok((client, mut connection)) => {
                let listening = async {
                    client
                        .batch_execute(&format!("LISTEN \"{channel}\"; LISTEN \"{ended}\""))
                        .await
                };
                // The connection must be polled for the LISTEN to go through.
                let mut listening = std::pin::pin!(listening);
                let mut listened = false;
                loop {
                    let next = poll_fn(|cx| {
                        if !listened {
                            if let std::task::Poll::Ready(result) = listening.as_mut().poll(cx) {
                                listened = true;
                                if let Err(error) = result {
                                    return std::task::Poll::Ready(Some(Err(error)));
                                }
                            }
                        }
                        connection.poll_message(cx)
                    });
                    // Looks up now and then whether the store is still there.
                    let Ok(message) = tokio::time::timeout(Duration::from_secs(1), next).await
                    else {
                        if shared.strong_count() == 0 {
                            return;
                        }
                        continue;
                    };
                    match message {
                        Some(Ok(AsyncMessage::Notification(note))) if note.channel() == ended => {
                            let Some(strong) = shared.upgrade() else {
                                return;
                            };
                            let ids: Vec<EventId> = note
                                .payload()
                                .split(',')
                                .filter_map(|id| id.parse().ok())
                                .map(EventId::new)
                                .collect();
                            // Ended: not running here any more (if it ran here, the layer
                            // drops it).
                            for &event_id in &ids {
                                strong.running.end(event_id);
                            }
                            // Full: the layer is behind (or gone); a waiter wakes at its own
                            // deadline, and the job, if it ran here, is dropped when it ends.
                            let _ = strong.ended.0.try_send(ids);
                        }
                        Some(Ok(AsyncMessage::Notification(_))) => wake.notify_one(),
                        Some(Ok(_)) => {}
                        Some(Err(error)) => {
                            tracing::debug!(%error, "the event store's listener lost its connection");
                            break;
                        }
                        None => break,
                    }
                    if shared.strong_count() == 0 {
                        return;
                    }
                }
            }
            Err(error) => {
                tracing::debug!(%error, "the event store's listener could not connect");
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
