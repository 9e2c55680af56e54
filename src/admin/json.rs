//! The admin answers' JSON: camelCase like the wire contract, times in Unix milliseconds, the
//! notification body exactly as it is delivered.

use serde::Serialize;
use serde_json::value::RawValue;

use crate::delivery::receivers::ReceiverStatus;
use crate::layer::handle::{Health, Redelivered};
use crate::store::{AttemptRecord, EventSnapshot, NotificationRecord};
use crate::wire::ids::{EventId, NotificationId};

/// An event as the admin service shows it.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct Event<'a> {
    event_id: EventId,
    notification_id: NotificationId,
    instance_id: u64,
    /// `dispatched`, `running`, `completed` or `failed`.
    event_status: &'a str,
    accepted_at: u64,
    /// Where the notification goes; `null`: nowhere (the client polls).
    callback_url: Option<&'a str>,
    /// Whether that is the instance's configured URL (each attempt takes its current value).
    instance_url: bool,
    delivery: Delivery<'a>,
    /// The notification exactly as delivered; `null` until the job has finished.
    notification: Option<&'a RawValue>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Delivery<'a> {
    state: &'a str,
    attempts: u32,
    next_attempt_at: Option<u64>,
    last_error: Option<&'a str>,
    history: Vec<Attempt<'a>>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Attempt<'a> {
    at: u64,
    duration_ms: f64,
    status: Option<u16>,
    error: Option<&'a str>,
}

impl<'a> From<&'a AttemptRecord> for Attempt<'a> {
    fn from(attempt: &'a AttemptRecord) -> Self {
        Self {
            at: attempt.at_ms,
            duration_ms: attempt.duration_us as f64 / 1000.0,
            status: attempt.status,
            error: attempt.error.as_deref(),
        }
    }
}

impl<'a> Event<'a> {
    pub(super) fn of(snapshot: &'a EventSnapshot) -> Self {
        match snapshot {
            EventSnapshot::Unfinished(event) => Self {
                event_id: event.event_id,
                notification_id: event.notification_id,
                instance_id: event.instance_id,
                event_status: if event.running {
                    "running"
                } else {
                    "dispatched"
                },
                accepted_at: event.accepted_at_ms,
                callback_url: (!event.target.is_empty()).then_some(event.target.as_str()),
                instance_url: event.instance_url,
                delivery: Delivery {
                    state: "none",
                    attempts: 0,
                    next_attempt_at: None,
                    last_error: None,
                    history: Vec::new(),
                },
                notification: None,
            },
            EventSnapshot::Finished(notification) => Self::finished(notification),
        }
    }

    pub(super) fn finished(notification: &'a NotificationRecord) -> Self {
        let body: Option<&RawValue> = serde_json::from_slice(&notification.body).ok();
        let event_status = body
            .and_then(|body| {
                #[derive(serde::Deserialize)]
                #[serde(rename_all = "camelCase")]
                struct Status<'b> {
                    #[serde(borrow)]
                    event_status: &'b str,
                }
                serde_json::from_str::<Status<'_>>(body.get()).ok()
            })
            .map_or("completed", |status| {
                if status.event_status == "failed" {
                    "failed"
                } else {
                    "completed"
                }
            });
        Self {
            event_id: notification.event_id,
            notification_id: notification.notification_id,
            instance_id: notification.instance_id,
            event_status,
            accepted_at: notification.accepted_at_ms,
            callback_url: (!notification.target.is_empty()).then_some(notification.target.as_str()),
            instance_url: notification.instance_url,
            delivery: Delivery {
                state: notification.state.as_str(),
                attempts: notification.attempts,
                next_attempt_at: (notification.state == crate::store::DeliveryState::Pending)
                    .then_some(notification.next_attempt_at_ms),
                last_error: notification.last_error.as_deref(),
                history: notification.history.iter().map(Attempt::from).collect(),
            },
            notification: body,
        }
    }
}

/// One page of dead letters and the cursor of the next.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct DeadLetterPage<'a> {
    pub(super) dead_letters: Vec<Event<'a>>,
    /// `after` for the next page; `null` when this page is the last.
    pub(super) next: Option<NotificationId>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct RedeliveryStarted {
    pub(super) notification_id: NotificationId,
    pub(super) state: &'static str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct BulkRedelivery<'a> {
    redelivered: &'a [NotificationId],
    more: bool,
}

impl<'a> From<&'a Redelivered> for BulkRedelivery<'a> {
    fn from(done: &'a Redelivered) -> Self {
        Self {
            redelivered: &done.notification_ids,
            more: done.more,
        }
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct HealthReport<'a> {
    /// `ok` or `unavailable`.
    status: &'a str,
    /// `ok`, or why the store cannot be used.
    store: &'a str,
    shutting_down: bool,
    in_flight: u64,
    jobs_running: u64,
    notifications_pending: u64,
    /// Async requests answered with an earlier receipt (their `Idempotency-Key` was claimed).
    idempotent_replays: u64,
}

impl<'a> From<&'a Health> for HealthReport<'a> {
    fn from(health: &'a Health) -> Self {
        Self {
            status: if health.is_ready() {
                "ok"
            } else {
                "unavailable"
            },
            store: health.store_error.as_deref().unwrap_or("ok"),
            shutting_down: health.shutting_down,
            in_flight: health.in_flight,
            jobs_running: health.metrics.running,
            notifications_pending: health.metrics.pending,
            idempotent_replays: health.metrics.idempotent_replays,
        }
    }
}

/// A page of receivers; `next` is the `after` of the next page, `null` on the last.
#[derive(Serialize)]
pub(super) struct ReceiverPage<'a> {
    pub(super) receivers: Vec<Receiver<'a>>,
    pub(super) next: Option<&'a str>,
}

/// A receiver as the admin service shows it.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct Receiver<'a> {
    id: &'a str,
    instance_id: u64,
    origin: &'a str,
    /// `closed`, `open`, `half-open` or `disabled`.
    state: &'a str,
    consecutive_failures: u32,
    failing_since: Option<u64>,
    held: usize,
    in_flight: usize,
    max_connections: usize,
}

impl<'a> From<&'a ReceiverStatus> for Receiver<'a> {
    fn from(receiver: &'a ReceiverStatus) -> Self {
        Self {
            id: &receiver.id,
            instance_id: receiver.instance_id,
            origin: &receiver.origin,
            state: receiver.state.as_str(),
            consecutive_failures: receiver.consecutive_failures,
            failing_since: receiver.failing_since_ms,
            held: receiver.held,
            in_flight: receiver.in_flight,
            max_connections: receiver.max_connections,
        }
    }
}

/// What enabling a receiver did.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct ReceiverEnabled<'a> {
    pub(super) id: &'a str,
    pub(super) state: &'a str,
    /// The dead letters sent again (`?redeliver=since`), lowest id first.
    pub(super) redelivered: &'a [NotificationId],
    pub(super) more: bool,
}
