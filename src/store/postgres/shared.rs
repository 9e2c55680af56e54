//! What the store's parts share: the pool, this node, and the statements written once for the
//! store's schema.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::Pool;
use tokio::sync::Notify;

use super::rows::COLUMNS;
use crate::store::RunningJobs;

pub(super) struct Shared {
    pub(super) pool: Pool,
    pub(super) schema: String,
    pub(super) quoted: String,
    pub(super) node_id: i64,
    pub(super) lease_timeout: Duration,
    pub(super) sql: Statements,
    pub(super) sql_register: String,
    /// The current block of ids: next, end.
    pub(super) ids: tokio::sync::Mutex<(i64, i64)>,
    pub(super) running: RunningJobs,
    /// Woken when a peer leaves with work left.
    pub(super) wake: Arc<Notify>,
    /// Ids of events ended by any node (`NOTIFY`, or this node's heartbeat finding its running
    /// jobs ended elsewhere), for [`EventStore::ended_elsewhere`](crate::store::EventStore).
    pub(super) ended: (
        tokio::sync::mpsc::Sender<Vec<crate::wire::ids::EventId>>,
        tokio::sync::Mutex<tokio::sync::mpsc::Receiver<Vec<crate::wire::ids::EventId>>>,
    ),
    /// Whether this node's own earlier life (a fixed node id) was taken back yet.
    pub(super) recovered_own: std::sync::atomic::AtomicBool,
    /// Set by `leave`: no more heartbeats.
    pub(super) left: std::sync::atomic::AtomicBool,
    pub(super) transactions: AtomicU64,
    pub(super) durable_commits: AtomicU64,
}

/// The statements, written once for the store's schema.
#[derive(Debug)]
pub(super) struct Statements {
    pub(super) insert_events: String,
    /// As `insert_events`, for a batch with idempotency keys: each keyed event only if its key
    /// is claimed (free or expired) in the same statement; the events inserted.
    pub(super) insert_keyed_events: String,
    /// The holders of idempotency keys, by scope.
    pub(super) key_holders: String,
    pub(super) finish_events: String,
    pub(super) update_notifications: String,
    pub(super) delete_notifications: String,
    pub(super) revive: String,
    /// A client's cancel: ends the event if it is unfinished, on whichever node it runs.
    pub(super) cancel: String,
    pub(super) progress: String,
    /// Which of this node's running jobs ended elsewhere (cancelled, or taken over).
    pub(super) ended_elsewhere: String,
}

impl Statements {
    pub(super) fn new(schema: &str) -> Self {
        Self {
            insert_events: format!(
                "INSERT INTO {schema}.events
                     (event_id, notification_id, instance_id, target, instance_url, accepted_at_ms,
                      trace, owner, state)
                 SELECT e, n, i, t, u, a, tr, $7, 0
                 FROM UNNEST($1::int8[], $2::int8[], $3::int8[], $4::text[], $5::bool[], $6::int8[],
                     $8::text[])
                     AS x(e, n, i, t, u, a, tr)"
            ),
            // A key held by a transaction not yet committed makes this one wait for it (the
            // unique index), then find it taken or, if it rolled back, free. Keys go in one
            // order, so two batches never wait for each other in a circle.
            insert_keyed_events: format!(
                "WITH x AS (
                     SELECT * FROM UNNEST($1::int8[], $2::int8[], $3::int8[], $4::text[],
                         $5::bool[], $6::int8[], $8::text[], $9::text[], $10::text[],
                         $11::bytea[], $12::int8[], $14::text[])
                         AS x(e, n, i, t, u, a, km, kp, kk, kf, kx, tr)
                 ), claimed AS (
                     INSERT INTO {schema}.idempotency_keys AS k
                         (instance_id, method, path, key, fingerprint, event_id, expires_at_ms)
                     SELECT i, km, kp, kk, kf, e, kx FROM x WHERE kk IS NOT NULL
                     ORDER BY i, km, kp, kk
                     ON CONFLICT (instance_id, method, path, key) DO UPDATE
                         SET fingerprint = EXCLUDED.fingerprint, event_id = EXCLUDED.event_id,
                             expires_at_ms = EXCLUDED.expires_at_ms
                         WHERE k.expires_at_ms <= $13
                     RETURNING event_id
                 )
                 INSERT INTO {schema}.events
                     (event_id, notification_id, instance_id, target, instance_url, accepted_at_ms,
                      trace, owner, state)
                 SELECT e, n, i, t, u, a, tr, $7, 0 FROM x
                 WHERE kk IS NULL OR e IN (SELECT event_id FROM claimed)
                 RETURNING event_id"
            ),
            key_holders: format!(
                "SELECT k.instance_id, k.method, k.path, k.key, k.event_id, k.fingerprint
                 FROM {schema}.idempotency_keys AS k
                 JOIN UNNEST($1::int8[], $2::text[], $3::text[], $4::text[]) AS x(i, m, p, kk)
                     ON k.instance_id = x.i AND k.method = x.m AND k.path = x.p AND k.key = x.kk"
            ),
            // Only an event this node still owns: one taken over meanwhile ends elsewhere. The
            // same outcome written again counts: a commit whose answer was lost (the connection
            // broke) is tried again, and must not read as taken over.
            finish_events: format!(
                "UPDATE {schema}.events AS ev
                 SET state = x.s, body = x.b, next_attempt_at_ms = x.nx, retain_until_ms = x.r
                 FROM UNNEST($1::int8[], $2::int2[], $3::bytea[], $4::int8[], $5::int8[])
                     AS x(e, s, b, nx, r)
                 WHERE ev.event_id = x.e AND ev.owner = $6
                     AND (ev.state = 0 OR (ev.state = x.s AND ev.body = x.b))
                 RETURNING ev.event_id"
            ),
            update_notifications: format!(
                "UPDATE {schema}.events AS ev
                 SET state = x.s, attempts = x.at, next_attempt_at_ms = x.nx, last_error = x.le,
                     retain_until_ms = x.r, history = x.h::jsonb
                 FROM UNNEST($1::int8[], $2::int2[], $3::int4[], $4::int8[], $5::text[], $6::int8[],
                     $7::text[])
                     AS x(e, s, at, nx, le, r, h)
                 WHERE ev.event_id = x.e"
            ),
            delete_notifications: format!(
                "DELETE FROM {schema}.events WHERE event_id = ANY($1::int8[])"
            ),
            cancel: format!(
                "UPDATE {schema}.events
                 SET state = $2, body = $3, next_attempt_at_ms = $4, retain_until_ms = $5,
                     owner = $6
                 WHERE event_id = $1 AND state = 0
                 RETURNING event_id"
            ),
            progress: format!(
                "UPDATE {schema}.events
                 SET progress_percent = $2, progress_message = $3, progress_at_ms = $4
                 WHERE event_id = $1 AND (progress_at_ms IS NULL OR progress_at_ms <= $4)"
            ),
            ended_elsewhere: format!(
                "SELECT event_id FROM {schema}.events
                 WHERE event_id = ANY($1::int8[]) AND NOT (state = 0 AND owner = $2)"
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
