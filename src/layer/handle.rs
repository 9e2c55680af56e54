//! The handle: graceful shutdown, events, dead letters, redelivery, health and counters, from
//! outside the request path. The [`admin`](crate::admin) service puts it on HTTP.
//!
//! # Example
//!
//! Wired into axum's graceful shutdown: stop taking async work when the signal comes, then give
//! running jobs and pending callbacks time to finish.
//!
//! ```no_run
//! use std::time::Duration;
//! use tower_async_request::AsyncRequestLayer;
//!
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! let layer = AsyncRequestLayer::builder()
//!     .default_callback_url("https://hooks.example.com/in")
//!     .build()?;
//! let handle = layer.handle();
//! let app = axum::Router::new()
//!     .route("/work", axum::routing::post(|| async { "done" }))
//!     .layer(layer);
//!
//! let listener = tokio::net::TcpListener::bind("0.0.0.0:3000").await?;
//! axum::serve(listener, app)
//!     .with_graceful_shutdown(async { tokio::signal::ctrl_c().await.unwrap() })
//!     .await?;
//! let report = handle.shutdown(Duration::from_secs(30)).await;
//! println!("{report:?}");
//! # Ok(())
//! # }
//! ```

use std::sync::Arc;
use std::time::Duration;

use crate::admission::in_flight::Permit;
use crate::delivery::attempt::{deliver, follow_disabled, RECEIVER_DISABLED};
use crate::delivery::receivers::{origin_of, receiver_id, ReceiverStatus};
use crate::event::recovery::ensure_recovered;
use crate::event::shared::Shared;
use crate::metrics::{Counter, Metrics};
use crate::store::{DeadLetterQuery, EventSnapshot, NotificationRecord, StoreError};
use crate::wire::ids::{EventId, NotificationId};

/// How long a [health](AsyncRequestHandle::health) check waits for the store.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(5);

/// Controls a layer from outside the request path; made by
/// [`AsyncRequestLayer::handle`](crate::AsyncRequestLayer::handle). Cheap to clone.
#[derive(Debug, Clone)]
pub struct AsyncRequestHandle {
    config: Arc<Shared>,
}

/// What a [`shutdown`](AsyncRequestHandle::shutdown) finished and what it left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct ShutdownReport {
    /// True when every job ended and every notification was delivered or dead before the
    /// deadline.
    pub drained: bool,
    /// Jobs that ended (completed or failed) during the drain.
    pub jobs_finished: u64,
    /// Notifications delivered during the drain.
    pub delivered: u64,
    /// Notifications that became dead letters during the drain.
    pub dead: u64,
    /// Jobs still running at the deadline.
    pub jobs_left: u64,
    /// Notifications still undelivered at the deadline.
    pub notifications_left: u64,
    /// Whether what was left is kept by a durable store (and resumes on the next start) rather
    /// than abandoned with the process.
    pub persisted: bool,
}

/// Why a redelivery was not started.
#[derive(Debug)]
#[non_exhaustive]
pub enum RedeliverError {
    /// No dead letter has this id.
    NotFound,
    /// The layer is shutting down and starts no new deliveries.
    ShuttingDown,
    /// The store failed.
    Store(StoreError),
}

impl std::fmt::Display for RedeliverError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::NotFound => f.write_str("no dead letter has this notification id"),
            Self::ShuttingDown => f.write_str("the layer is shutting down"),
            Self::Store(error) => error.fmt(f),
        }
    }
}

/// What a [bulk redelivery](AsyncRequestHandle::redeliver_dead_letters) started.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Redelivered {
    /// The dead letters now pending again, lowest id first.
    pub notification_ids: Vec<NotificationId>,
    /// Whether dead letters that were asked for are left (more than the batch, or the layer's
    /// `max_in_flight` was reached): ask again once these have landed.
    pub more: bool,
}

/// What a [health check](AsyncRequestHandle::health) found.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Health {
    /// Why the store cannot be used now; `None` when it answered.
    pub store_error: Option<String>,
    /// Whether the layer is shutting down (it takes no new async requests).
    pub shutting_down: bool,
    /// Events unfinished now: jobs running or waiting, and notifications pending.
    pub in_flight: u64,
    /// The layer's counters now.
    pub metrics: Metrics,
}

impl Health {
    /// Whether the layer can take async requests: the store answers and it is not shutting down.
    pub fn is_ready(&self) -> bool {
        self.store_error.is_none() && !self.shutting_down
    }
}

impl std::error::Error for RedeliverError {}

impl AsyncRequestHandle {
    pub(crate) fn new(config: Arc<Shared>) -> Self {
        Self { config }
    }

    /// The layer's counters now, over every instance.
    pub fn metrics(&self) -> Metrics {
        self.config.counters.snapshot()
    }

    /// One instance's counters now: `None` for an instance the layer has not seen an event of
    /// (since it was built). With the single-instance shorthand, its instance's counters are the
    /// layer's.
    pub fn instance_metrics(&self, instance_id: u64) -> Option<Metrics> {
        match self.config.instances.single() {
            Some(instance) => {
                (instance.id() == instance_id).then(|| self.config.counters.snapshot())
            }
            None => self
                .config
                .shares
                .get(instance_id)
                .map(|share| share.counters.snapshot()),
        }
    }

    /// What the store knows about an event: unfinished, or its notification with its delivery
    /// (attempts, their history, the exact body). Delivered events are kept only for the
    /// status retention ([`status_retention`](crate::AsyncRequestLayerBuilder::status_retention)).
    pub async fn event(&self, event_id: EventId) -> Result<Option<EventSnapshot>, StoreError> {
        self.config.store.status(event_id).await
    }

    /// Notifications that could not be delivered, lowest id (oldest) first.
    pub async fn dead_letters(&self) -> Result<Vec<NotificationRecord>, StoreError> {
        self.config.store.dead_letters(DeadLetterQuery::all()).await
    }

    /// The dead letters `query` asks for: one page of the listing, by notification id.
    pub async fn dead_letter_page(
        &self,
        query: DeadLetterQuery,
    ) -> Result<Vec<NotificationRecord>, StoreError> {
        self.config.store.dead_letters(query).await
    }

    /// Delivers a dead letter again, with a fresh retry schedule starting now. Returns once the
    /// redelivery has started (it waits for room under `max_in_flight`).
    pub async fn redeliver(&self, notification_id: NotificationId) -> Result<(), RedeliverError> {
        self.ready_to_redeliver().await?;
        let permit = self.config.runner.wait_for_permit().await;
        match self.revive(notification_id, permit).await? {
            true => Ok(()),
            false => Err(RedeliverError::NotFound),
        }
    }

    /// Delivers up to `limit` dead letters again (all of them, or `instance`'s), lowest id first,
    /// each with a fresh schedule. It does not wait for room under `max_in_flight`: it stops
    /// there and says [`more`](Redelivered::more).
    pub async fn redeliver_dead_letters(
        &self,
        instance: Option<u64>,
        limit: usize,
    ) -> Result<Redelivered, RedeliverError> {
        self.ready_to_redeliver().await?;
        let query = DeadLetterQuery {
            instance,
            after: None,
            limit,
        };
        let batch = self
            .config
            .store
            .dead_letters(query)
            .await
            .map_err(RedeliverError::Store)?;
        let mut notification_ids = Vec::with_capacity(batch.len());
        for dead in &batch {
            let Ok(permit) = self.config.runner.admit() else {
                break;
            };
            // Not revived: redelivered meanwhile by someone else.
            if self.revive(dead.notification_id, permit).await? {
                notification_ids.push(dead.notification_id);
            }
        }
        let left = self
            .config
            .store
            .dead_letters(DeadLetterQuery { limit: 1, ..query })
            .await
            .map_err(RedeliverError::Store)?;
        Ok(Redelivered {
            notification_ids,
            more: !left.is_empty(),
        })
    }

    /// Every receiver this node has sent to (of `instance`, if given) and every disabled one,
    /// by id: its circuit, failures, held notifications and attempts in flight. Circuits are
    /// each node's own; disabling is stored, so read here fresh from the store.
    pub async fn receivers(
        &self,
        instance: Option<u64>,
    ) -> Result<Vec<ReceiverStatus>, StoreError> {
        ensure_recovered(&self.config).await?;
        follow_disabled(&self.config.delivery, |id| self.config.share_of(id)).await?;
        Ok(self.config.delivery.receivers.views(instance))
    }

    /// Enables a disabled receiver again (on every node: the store forgets the disabling, and
    /// peers follow within seconds): its circuit closes and new notifications go to it. Its dead
    /// letters stay dead; [`redeliver_receiver`](Self::redeliver_receiver) sends them again.
    /// Returns whether it was disabled.
    pub async fn enable_receiver(&self, id: &str) -> Result<bool, StoreError> {
        ensure_recovered(&self.config).await?;
        let stored = self.config.store.enable_receiver(id).await?;
        let here = self
            .config
            .delivery
            .receivers
            .by_id(id)
            .is_some_and(|receiver| receiver.enable());
        if stored || here {
            tracing::info!(receiver = id, "a disabled receiver was enabled");
        }
        Ok(stored || here)
    }

    /// Delivers again, as [`redeliver_dead_letters`](Self::redeliver_dead_letters) does, up to
    /// `limit` of the dead letters receiver `id`'s disabling made (reason `receiver_disabled`),
    /// lowest id first; enable it first, or they die again.
    pub async fn redeliver_receiver(
        &self,
        id: &str,
        limit: usize,
    ) -> Result<Redelivered, RedeliverError> {
        self.ready_to_redeliver().await?;
        let buried_by_disabling = |dead: &NotificationRecord| {
            dead.last_error
                .as_deref()
                .is_some_and(|reason| reason.starts_with(RECEIVER_DISABLED))
                && dead
                    .target
                    .parse()
                    .is_ok_and(|target| receiver_id(dead.instance_id, &origin_of(&target)) == id)
        };
        let mut query = DeadLetterQuery {
            instance: None,
            after: None,
            limit: 1000,
        };
        let mut notification_ids = Vec::new();
        loop {
            let page = self
                .config
                .store
                .dead_letters(query)
                .await
                .map_err(RedeliverError::Store)?;
            let Some(last) = page.last() else {
                return Ok(Redelivered {
                    notification_ids,
                    more: false,
                });
            };
            query.after = Some(last.notification_id);
            for dead in page.iter().filter(|dead| buried_by_disabling(dead)) {
                let permit = match self.config.runner.admit() {
                    Ok(permit) if notification_ids.len() < limit => permit,
                    _ => {
                        return Ok(Redelivered {
                            notification_ids,
                            more: true,
                        })
                    }
                };
                if self.revive(dead.notification_id, permit).await? {
                    notification_ids.push(dead.notification_id);
                }
            }
        }
    }

    async fn ready_to_redeliver(&self) -> Result<(), RedeliverError> {
        if self.config.runner.is_shutting_down() {
            return Err(RedeliverError::ShuttingDown);
        }
        ensure_recovered(&self.config)
            .await
            .map_err(RedeliverError::Store)
    }

    /// Makes a dead letter pending and starts its delivery under `permit`; false if it is not a
    /// dead letter (any more).
    async fn revive(
        &self,
        notification_id: NotificationId,
        mut permit: Permit,
    ) -> Result<bool, RedeliverError> {
        let Some(notification) = self
            .config
            .store
            .revive(notification_id)
            .await
            .map_err(RedeliverError::Store)?
        else {
            return Ok(false);
        };
        self.config
            .count_in_share(&mut permit, notification.instance_id);
        permit.add(&self.config.counters, Counter::Pending);
        tokio::spawn(deliver(self.config.clone(), notification, permit, None));
        Ok(true)
    }

    /// Whether the store answers (within 5 s) and the layer takes async requests, with what is
    /// in flight.
    pub async fn health(&self) -> Health {
        let store_error =
            match tokio::time::timeout(HEALTH_TIMEOUT, self.config.store.check()).await {
                Ok(Ok(())) => None,
                Ok(Err(error)) => Some(error.to_string()),
                Err(_) => Some(format!(
                    "the store did not answer within {HEALTH_TIMEOUT:?}"
                )),
            };
        Health {
            store_error,
            shutting_down: self.config.runner.is_shutting_down(),
            in_flight: self.config.runner.in_flight(),
            metrics: self.config.counters.snapshot(),
        }
    }

    /// Stops taking async requests (they get `503`, code `shutting_down`; synchronous requests
    /// are untouched), then waits up to `deadline` for running jobs and pending notifications to
    /// finish. What is left is reported, and logged: kept for the next start by a durable store,
    /// or abandoned with an in-memory one.
    pub async fn shutdown(&self, deadline: Duration) -> ShutdownReport {
        let config = &self.config;
        config.runner.stop_admitting();
        // Clients waiting for an event's end get its state now.
        if let Some(jobs) = &config.jobs {
            jobs.closing.cancel();
        }
        let before = config.counters.snapshot();
        let drained = config.runner.drained(deadline).await;
        let after = config.counters.snapshot();
        let notifications_left = after.pending;
        let jobs_left = config.runner.in_flight().saturating_sub(notifications_left);
        let report = ShutdownReport {
            drained,
            jobs_finished: (after.completed + after.failed) - (before.completed + before.failed),
            delivered: after.delivered - before.delivered,
            dead: after.dead - before.dead,
            jobs_left,
            notifications_left,
            persisted: config.store.is_durable(),
        };
        if drained {
            tracing::info!(?report, "async request layer drained");
        } else if report.persisted {
            tracing::warn!(
                jobs_left,
                notifications_left,
                "shutdown deadline passed; unfinished work stays in the store and resumes on the next start",
            );
        } else {
            tracing::error!(
                jobs_left,
                notifications_left,
                "shutdown deadline passed; unfinished work is ABANDONED: the in-memory store does not survive the process",
            );
        }
        report
    }
}
