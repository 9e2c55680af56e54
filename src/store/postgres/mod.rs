//! `PostgresStore`: one PostgreSQL database shared by every node (copy) of an app, so any node
//! answers status queries and redelivers dead letters, and a node that dies has its work finished
//! by another.
//!
//! - `migrate.rs` and `schema_v*.sql`: the schema, versioned and created by the store itself.
//! - `writer.rs`: group commit, and the store contract (what waits for the WAL flush).
//! - `shared.rs`: what the parts share (pool, node, statements); `rows.rs`: reading rows back.
//! - `nodes.rs`: heartbeats, leases and takeover; `LISTEN`/`NOTIFY`; retention.

mod migrate;
mod nodes;
mod rows;
mod shared;
mod writer;

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio::sync::{mpsc, oneshot};
use tokio_postgres::{NoTls, Row};

use self::rows::{record_of, Stored, COLUMNS};
use self::shared::{Shared, Statements};
use self::writer::{Op, Write};
use super::{
    unix_ms, CancelClaim, DeadLetterQuery, DeliveryState, DisabledReceiver, EventRecord,
    EventSnapshot, EventStore, IdempotencyKey, KeyClaim, NotificationRecord, ProgressRecord,
    Recovery, RunningJobs, StoreError, StoreFuture, StoreStats, Written,
};
use crate::wire::ids::{EventId, NotificationId};

/// Default time a node may be silent before its peers take its work over (30 s).
pub const DEFAULT_LEASE_TIMEOUT: Duration = Duration::from_secs(30);
/// Default schema the store's tables live in.
pub const DEFAULT_SCHEMA: &str = "tower_async_request";

/// Batches of ended events' ids the listener holds for the layer before it drops new ones.
const ENDED_BACKLOG: usize = 1024;

/// Ids taken from the sequence at once (its increment).
const ID_BLOCK: i64 = 1024;

/// The shared store on PostgreSQL (cargo feature `postgres`): several nodes of an app use one
/// database, and what one node accepted, another can report, redeliver and, if the first dies,
/// finish.
///
/// - **Ids** come from a sequence, 1024 at a time, so they are unique across nodes and a receipt
///   rarely waits for a round trip of its own; never above 2^53 − 1.
/// - **Durability** follows the [store contract](super#what-waits-for-the-disk): an accepted
///   event and its outcome are committed synchronously before the receipt and before the first
///   delivery attempt; the other writes commit with `synchronous_commit = off`. Concurrent
///   writes share one transaction, one statement per kind of write.
/// - **Nodes**: each store is a node with an id and a heartbeat row, renewed every third of the
///   [lease timeout](PostgresStoreBuilder::lease_timeout). A node silent for longer loses its
///   unfinished events (they end `failed`/`interrupted`, as after a restart) and pending
///   notifications (resumed under their own `notificationId`) to the first node that notices.
///   [`leave`](Self::leave) hands work over at once, telling peers with `NOTIFY`.
/// - **Status, dead letters, redelivery** work from any node. Finished events are deleted past
///   their retention in batches.
/// - **Outages**: while the server cannot be reached new async requests get
///   `503 store_unavailable`; accepted events are not lost; the pool reconnects by itself.
///
/// # Example
///
/// ```no_run
/// use tower_async_request::{store::PostgresStore, AsyncRequestLayer};
///
/// # async fn example() -> Result<(), Box<dyn std::error::Error>> {
/// let store = PostgresStore::builder("postgres://app@db.internal/app")
///     .lease_timeout(std::time::Duration::from_secs(30))
///     .connect()
///     .await?;
/// let layer = AsyncRequestLayer::builder()
///     .default_callback_url("https://hooks.example.com/in")
///     .store(store)
///     .build()?;
/// # Ok(())
/// # }
/// ```
pub struct PostgresStore {
    shared: Arc<Shared>,
    writes: mpsc::UnboundedSender<Write>,
}

impl fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresStore")
            .field("schema", &self.shared.schema)
            .field("node_id", &self.shared.node_id)
            .field("lease_timeout", &self.shared.lease_timeout)
            .finish_non_exhaustive()
    }
}

/// Configures a [`PostgresStore`]; made by [`PostgresStore::builder`].
#[derive(Debug, Clone)]
pub struct PostgresStoreBuilder {
    url: String,
    schema: String,
    lease_timeout: Duration,
    node_id: Option<u64>,
    pool_size: usize,
}

impl PostgresStoreBuilder {
    /// The schema the store's tables live in (default [`DEFAULT_SCHEMA`]); created if missing.
    /// Lower-case letters, digits and `_`.
    pub fn schema(mut self, schema: impl Into<String>) -> Self {
        self.schema = schema.into();
        self
    }

    /// How long a node may be silent before its peers take its work over (default
    /// [`DEFAULT_LEASE_TIMEOUT`]). Heartbeats go every third of it.
    pub fn lease_timeout(mut self, timeout: Duration) -> Self {
        self.lease_timeout = timeout;
        self
    }

    /// A fixed id for this node (default: a fresh one from the database at each start). A node
    /// that restarts under its old id takes its own unfinished work back at once instead of
    /// after the lease timeout.
    pub fn node_id(mut self, id: u64) -> Self {
        self.node_id = Some(id);
        self
    }

    /// Most connections the store holds (default 16).
    pub fn pool_size(mut self, size: usize) -> Self {
        self.pool_size = size;
        self
    }

    /// Connects, creates or migrates the schema, and registers this node.
    pub async fn connect(self) -> Result<PostgresStore, StoreError> {
        if !migrate::valid_schema(&self.schema) {
            return Err(StoreError::new(format!(
                "schema {:?} must be lower-case letters, digits and _",
                self.schema
            )));
        }
        if self.lease_timeout < Duration::from_secs(1) {
            return Err(StoreError::new("lease_timeout must be at least 1 s"));
        }
        let config: tokio_postgres::Config = self.url.parse().map_err(StoreError::new)?;
        let manager = Manager::from_config(
            config.clone(),
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(self.pool_size.max(2))
            .runtime(Runtime::Tokio1)
            .create_timeout(Some(Duration::from_secs(5)))
            .wait_timeout(Some(Duration::from_secs(5)))
            .build()
            .map_err(StoreError::new)?;
        {
            let mut client = pool.get().await.map_err(StoreError::new)?;
            migrate::migrate(&mut client, &self.schema)
                .await
                .map_err(StoreError::new)?;
        }
        let quoted = migrate::quote(&self.schema);
        let node_id = match self.node_id {
            Some(id) => id as i64,
            None => {
                let client = pool.get().await.map_err(StoreError::new)?;
                client
                    .query_one(&format!("SELECT nextval('{quoted}.node_ids')"), &[])
                    .await
                    .map_err(StoreError::new)?
                    .get(0)
            }
        };
        let shared = Arc::new(Shared {
            pool,
            sql: Statements::new(&quoted),
            sql_register: format!(
                "INSERT INTO {quoted}.nodes (node_id) VALUES ($1)
                 ON CONFLICT (node_id) DO UPDATE SET heartbeat_at = now()"
            ),
            schema: self.schema,
            quoted,
            node_id,
            lease_timeout: self.lease_timeout,
            ids: tokio::sync::Mutex::new((0, 0)),
            running: RunningJobs::default(),
            wake: Arc::default(),
            ended: {
                let (tell, told) = mpsc::channel(ENDED_BACKLOG);
                (tell, tokio::sync::Mutex::new(told))
            },
            recovered_own: Default::default(),
            left: Default::default(),
            transactions: AtomicU64::new(0),
            durable_commits: AtomicU64::new(0),
        });
        nodes::register(&shared).await?;
        let (writes, queue) = mpsc::unbounded_channel();
        tokio::spawn(writer::run(shared.clone(), queue));
        tokio::spawn(nodes::heartbeat(
            Arc::downgrade(&shared),
            self.lease_timeout / 3,
        ));
        tokio::spawn(nodes::listen(Arc::downgrade(&shared), config));
        Ok(PostgresStore { shared, writes })
    }
}

impl PostgresStore {
    /// Starts configuring a store on the database at `url`
    /// (`postgres://user:password@host:port/database`).
    pub fn builder(url: impl Into<String>) -> PostgresStoreBuilder {
        PostgresStoreBuilder {
            url: url.into(),
            schema: DEFAULT_SCHEMA.into(),
            lease_timeout: DEFAULT_LEASE_TIMEOUT,
            node_id: None,
            pool_size: 16,
        }
    }

    /// A store with the default settings.
    pub async fn connect(url: impl Into<String>) -> Result<Self, StoreError> {
        Self::builder(url).connect().await
    }

    /// This node's id.
    pub fn node_id(&self) -> u64 {
        self.shared.node_id as u64
    }

    /// Hands what this node leaves unfinished to its peers now rather than after the lease
    /// timeout: marks the node as gone, stops its heartbeat and tells the peers (`NOTIFY`). Call
    /// it after the layer's [`shutdown`](crate::AsyncRequestHandle::shutdown) when work is left;
    /// outcomes this node records afterwards for events a peer took are refused.
    pub async fn leave(&self) -> Result<(), StoreError> {
        nodes::leave(&self.shared).await
    }

    /// Deletes the finished events past their retention now (1000 per statement), and expired
    /// idempotency keys, as every node does once a minute by itself; how many events were
    /// deleted.
    pub async fn delete_expired(&self) -> Result<u64, StoreError> {
        nodes::prune(&self.shared).await
    }

    fn write(&self, op: Op) -> StoreFuture<'_, Written> {
        let (done, answer) = oneshot::channel();
        let sent = self.writes.send(Write { op, done }).is_ok();
        Box::pin(async move {
            if !sent {
                return Err(StoreError::new("the store writer has stopped"));
            }
            answer
                .await
                .map_err(|_| StoreError::new("the store writer has stopped"))?
        })
    }

    fn write_unit(&self, op: Op) -> StoreFuture<'_, ()> {
        let write = self.write(op);
        Box::pin(async move { write.await.map(|_| ()) })
    }

    async fn query(&self, sql: &str, id: i64) -> Result<Vec<Row>, StoreError> {
        let client = self.shared.pool.get().await.map_err(StoreError::new)?;
        let statement = client.prepare_cached(sql).await.map_err(StoreError::new)?;
        client
            .query(&statement, &[&id])
            .await
            .map_err(StoreError::new)
    }

    /// One statement in a transaction of its own, committed synchronously; the rows it changed.
    async fn execute_durably(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<u64, StoreError> {
        let client = self.shared.pool.get().await.map_err(StoreError::new)?;
        let statement = client.prepare_cached(sql).await.map_err(StoreError::new)?;
        let changed = client
            .execute(&statement, params)
            .await
            .map_err(StoreError::new)?;
        self.shared.transactions.fetch_add(1, Ordering::Relaxed);
        self.shared.durable_commits.fetch_add(1, Ordering::Relaxed);
        Ok(changed)
    }
}

impl EventStore for PostgresStore {
    fn is_durable(&self) -> bool {
        true
    }

    fn stats(&self) -> StoreStats {
        StoreStats {
            transactions: self.shared.transactions.load(Ordering::Relaxed),
            durable_commits: self.shared.durable_commits.load(Ordering::Relaxed),
        }
    }

    fn allocate_ids(&self) -> StoreFuture<'_, (EventId, NotificationId)> {
        Box::pin(async move {
            let mut block = self.shared.ids.lock().await;
            if block.0 + 2 > block.1 {
                let client = self.shared.pool.get().await.map_err(StoreError::new)?;
                let start: i64 = client
                    .query_one(
                        &format!("SELECT nextval('{}.ids')", self.shared.quoted),
                        &[],
                    )
                    .await
                    .map_err(StoreError::new)?
                    .get(0);
                *block = (start, start + ID_BLOCK);
            }
            let event_id = block.0 as u64;
            block.0 += 2;
            Ok((EventId::new(event_id), NotificationId::new(event_id + 1)))
        })
    }

    fn dispatched<'a>(&'a self, event: &'a EventRecord) -> StoreFuture<'a, ()> {
        self.write_unit(Op::Dispatched(event.clone()))
    }

    fn running(&self, event_id: EventId) -> StoreFuture<'_, ()> {
        self.shared.running.start(event_id)
    }

    fn finished<'a>(&'a self, notification: &'a NotificationRecord) -> StoreFuture<'a, ()> {
        self.shared.running.end(notification.event_id);
        self.write_unit(Op::Finished(notification.clone()))
    }

    /// One transaction, committed synchronously: the event ends `cancelled` unless it has an
    /// outcome already (the row's lock orders it against its job's own `finished`, on any node),
    /// and every node hears of it (`NOTIFY`), so the one running the job drops it.
    fn cancel<'a>(&'a self, notification: &'a NotificationRecord) -> StoreFuture<'a, CancelClaim> {
        Box::pin(async move {
            let client = self.shared.pool.get().await.map_err(StoreError::new)?;
            let cancel = client
                .prepare_cached(&self.shared.sql.cancel)
                .await
                .map_err(StoreError::new)?;
            let notify = client
                .prepare_cached(writer::NOTIFY)
                .await
                .map_err(StoreError::new)?;
            let id = notification.event_id.get() as i64;
            let clamp = |v: u64| v.min(i64::MAX as u64) as i64;
            let channel = nodes::ended_channel(&self.shared.schema);
            let payload = id.to_string();
            let state = writer::state_code(notification.state);
            let body: &[u8] = &notification.body;
            let (next, retain) = (
                clamp(notification.next_attempt_at_ms),
                clamp(notification.retain_until_ms),
            );
            let me = self.shared.node_id;
            let begin = client.batch_execute("BEGIN");
            let cancel_params: [&(dyn tokio_postgres::types::ToSql + Sync); 6] =
                [&id, &state, &body, &next, &retain, &me];
            let notify_params: [&(dyn tokio_postgres::types::ToSql + Sync); 2] =
                [&channel, &payload];
            let cancelled = client.query(&cancel, &cancel_params);
            let told = client.execute(&notify, &notify_params);
            let commit = client.batch_execute("COMMIT");
            let (begun, cancelled, told, committed) = tokio::join!(begin, cancelled, told, commit);
            begun.map_err(StoreError::new)?;
            let cancelled = cancelled.map_err(StoreError::new)?;
            told.map_err(StoreError::new)?;
            committed.map_err(StoreError::new)?;
            self.shared.transactions.fetch_add(1, Ordering::Relaxed);
            self.shared.durable_commits.fetch_add(1, Ordering::Relaxed);
            if !cancelled.is_empty() {
                self.shared.running.end(notification.event_id);
                return Ok(CancelClaim::Cancelled);
            }
            Ok(CancelClaim::Finished(
                match self.status(notification.event_id).await? {
                    Some(EventSnapshot::Finished(record)) => Some(record),
                    _ => None,
                },
            ))
        })
    }

    /// Written on its own, without waiting for the WAL flush (a lost report shows the one
    /// before).
    fn progress<'a>(
        &'a self,
        event_id: EventId,
        progress: &'a ProgressRecord,
    ) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let client = self.shared.pool.get().await.map_err(StoreError::new)?;
            let update = client
                .prepare_cached(&self.shared.sql.progress)
                .await
                .map_err(StoreError::new)?;
            let id = event_id.get() as i64;
            let percent = i16::from(progress.percent);
            let at = progress.updated_at_ms.min(i64::MAX as u64) as i64;
            let begin = client.batch_execute("BEGIN; SET LOCAL synchronous_commit = off");
            let params: [&(dyn tokio_postgres::types::ToSql + Sync); 4] =
                [&id, &percent, &progress.message, &at];
            let updated = client.execute(&update, &params);
            let commit = client.batch_execute("COMMIT");
            let (begun, updated, committed) = tokio::join!(begin, updated, commit);
            begun.map_err(StoreError::new)?;
            updated.map_err(StoreError::new)?;
            committed.map_err(StoreError::new)
        })
    }

    fn ended_elsewhere(&self) -> Option<StoreFuture<'_, Vec<EventId>>> {
        Some(Box::pin(async move {
            let mut told = self.shared.ended.1.lock().await;
            Ok(told.recv().await.unwrap_or_default())
        }))
    }

    fn attempted<'a>(&'a self, notification: &'a NotificationRecord) -> StoreFuture<'a, ()> {
        self.write_unit(Op::Update(notification.clone()))
    }

    fn delivered<'a>(&'a self, notification: &'a NotificationRecord) -> StoreFuture<'a, ()> {
        let mut record = notification.clone();
        record.state = DeliveryState::Delivered;
        self.write_unit(Op::Update(record))
    }

    fn dead<'a>(&'a self, notification: &'a NotificationRecord) -> StoreFuture<'a, ()> {
        let mut record = notification.clone();
        record.state = DeliveryState::Dead;
        self.write_unit(Op::Update(record))
    }

    fn status(&self, event_id: EventId) -> StoreFuture<'_, Option<EventSnapshot>> {
        Box::pin(async move {
            let sql = format!(
                "SELECT {COLUMNS} FROM {}.events WHERE event_id = $1",
                self.shared.quoted
            );
            let rows = self.query(&sql, event_id.get() as i64).await?;
            let Some(row) = rows.first() else {
                return Ok(None);
            };
            Ok(match record_of(row)? {
                Stored::Unfinished(mut event) => {
                    event.running = self.shared.running.contains(event_id);
                    Some(EventSnapshot::Unfinished(event))
                }
                Stored::Finished(notification) => {
                    let expired = matches!(
                        notification.state,
                        DeliveryState::Delivered | DeliveryState::NotRequested
                    ) && notification.retain_until_ms <= unix_ms();
                    (!expired).then_some(EventSnapshot::Finished(notification))
                }
            })
        })
    }

    fn recover(&self) -> StoreFuture<'_, Recovery> {
        let own = !self.shared.recovered_own.swap(true, Ordering::AcqRel);
        Box::pin(nodes::take_over(&self.shared, own))
    }

    fn take_over(&self) -> Option<StoreFuture<'_, Recovery>> {
        Some(Box::pin(async move {
            let every = self.shared.lease_timeout / 3;
            // Either a peer said it left, or it is time to look.
            let _ = tokio::time::timeout(every, self.shared.wake.notified()).await;
            nodes::take_over(&self.shared, false).await
        }))
    }

    fn dead_letters(&self, query: DeadLetterQuery) -> StoreFuture<'_, Vec<NotificationRecord>> {
        Box::pin(async move {
            let sql = format!(
                "SELECT {COLUMNS} FROM {}.events
                 WHERE state = 3 AND notification_id > $1
                     AND ($2::int8 IS NULL OR instance_id = $2)
                 ORDER BY notification_id LIMIT $3",
                self.shared.quoted
            );
            let after = query.after.map_or(0, |id| id.get() as i64);
            let instance = query.instance.map(|id| id as i64);
            let limit = query.limit.min(i64::MAX as usize) as i64;
            let client = self.shared.pool.get().await.map_err(StoreError::new)?;
            let statement = client.prepare_cached(&sql).await.map_err(StoreError::new)?;
            client
                .query(&statement, &[&after, &instance, &limit])
                .await
                .map_err(StoreError::new)?
                .iter()
                .filter_map(|row| record_of(row).map(Stored::finished).transpose())
                .collect()
        })
    }

    /// A round trip to the server on a pooled connection, and the writer still running.
    fn check(&self) -> StoreFuture<'_, ()> {
        Box::pin(async move {
            if self.writes.is_closed() {
                return Err(StoreError::new("the store writer has stopped"));
            }
            let client = self.shared.pool.get().await.map_err(StoreError::new)?;
            client
                .simple_query("SELECT 1")
                .await
                .map(drop)
                .map_err(StoreError::new)
        })
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

    /// An upsert, committed synchronously. Numbers are kept as `bigint` bit for bit (`as i64`),
    /// so every `u64` reads back as it was written.
    fn disable_receiver<'a>(&'a self, receiver: &'a DisabledReceiver) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let sql = format!(
                "INSERT INTO {}.disabled_receivers
                     (id, instance_id, origin, failing_since_ms, disabled_at_ms)
                 VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (id) DO UPDATE SET instance_id = EXCLUDED.instance_id,
                     origin = EXCLUDED.origin, failing_since_ms = EXCLUDED.failing_since_ms,
                     disabled_at_ms = EXCLUDED.disabled_at_ms",
                self.shared.quoted
            );
            let (instance, since, at) = (
                receiver.instance_id as i64,
                receiver.failing_since_ms as i64,
                receiver.disabled_at_ms as i64,
            );
            self.execute_durably(
                &sql,
                &[&receiver.id, &instance, &receiver.origin, &since, &at],
            )
            .await
            .map(drop)
        })
    }

    /// A delete, committed synchronously.
    fn enable_receiver<'a>(&'a self, id: &'a str) -> StoreFuture<'a, bool> {
        Box::pin(async move {
            let sql = format!(
                "DELETE FROM {}.disabled_receivers WHERE id = $1",
                self.shared.quoted
            );
            Ok(self.execute_durably(&sql, &[&id]).await? > 0)
        })
    }

    /// By id byte for byte (`COLLATE "C"`), as the other stores order them, whatever the
    /// database's collation.
    fn keeps_disabled_receivers(&self) -> bool {
        true
    }

    fn disabled_receivers(&self) -> StoreFuture<'_, Vec<DisabledReceiver>> {
        Box::pin(async move {
            let sql = format!(
                "SELECT id, instance_id, origin, failing_since_ms, disabled_at_ms
                 FROM {}.disabled_receivers ORDER BY id COLLATE \"C\"",
                self.shared.quoted
            );
            let client = self.shared.pool.get().await.map_err(StoreError::new)?;
            let statement = client.prepare_cached(&sql).await.map_err(StoreError::new)?;
            let rows = client
                .query(&statement, &[])
                .await
                .map_err(StoreError::new)?;
            rows.iter()
                .map(|row| {
                    let number = |index| row.try_get::<_, i64>(index).map(|n| n as u64);
                    Ok(DisabledReceiver {
                        id: row.try_get(0)?,
                        instance_id: number(1)?,
                        origin: row.try_get(2)?,
                        failing_since_ms: number(3)?,
                        disabled_at_ms: number(4)?,
                    })
                })
                .collect::<Result<_, tokio_postgres::Error>>()
                .map_err(StoreError::new)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// docs/postgres.md: the schema `tower_async_request`, a 30 s lease (heartbeats every 10 s,
    /// a third of it), a fresh node id per start, 16 connections.
    #[test]
    fn the_builder_defaults_are_the_documented_ones() {
        let builder = PostgresStore::builder("postgres://db.internal/app");
        assert_eq!(builder.schema, "tower_async_request");
        assert_eq!(builder.lease_timeout, Duration::from_secs(30));
        assert_eq!(builder.lease_timeout / 3, Duration::from_secs(10));
        assert_eq!((builder.node_id, builder.pool_size), (None, 16));
    }
}
