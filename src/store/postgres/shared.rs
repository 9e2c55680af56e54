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
    pub(super) finish_events: String,
    pub(super) update_notifications: String,
    pub(super) delete_notifications: String,
    pub(super) revive: String,
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
            revive: format!(
                "UPDATE {schema}.events
                 SET state = 1, attempts = 0, next_attempt_at_ms = $2, owner = $3
                 WHERE notification_id = $1 AND state = 3
                 RETURNING {COLUMNS}"
            ),
        }
    }
}
