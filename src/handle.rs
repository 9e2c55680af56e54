//! The handle: graceful shutdown, dead letters, redelivery and counters, from outside the
//! request path.
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

use crate::config::Config;
use crate::delivery::deliver;
use crate::ids::NotificationId;
use crate::metrics::{Counter, Metrics};
use crate::recovery::ensure_recovered;
use crate::store::{NotificationRecord, StoreError};

/// Controls a layer from outside the request path; made by
/// [`AsyncRequestLayer::handle`](crate::AsyncRequestLayer::handle). Cheap to clone.
#[derive(Debug, Clone)]
pub struct AsyncRequestHandle {
    config: Arc<Config>,
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
    /// The store failed.
    Store(StoreError),
}

impl std::fmt::Display for RedeliverError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::NotFound => f.write_str("no dead letter has this notification id"),
            Self::Store(error) => error.fmt(f),
        }
    }
}

impl std::error::Error for RedeliverError {}

impl AsyncRequestHandle {
    pub(crate) fn new(config: Arc<Config>) -> Self {
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

    /// Notifications that could not be delivered, oldest first.
    pub async fn dead_letters(&self) -> Result<Vec<NotificationRecord>, StoreError> {
        self.config.store.dead_letters().await
    }

    /// Delivers a dead letter again, with a fresh retry schedule starting now. Returns once the
    /// redelivery has started (it waits for room under `max_in_flight`).
    pub async fn redeliver(&self, notification_id: NotificationId) -> Result<(), RedeliverError> {
        ensure_recovered(&self.config)
            .await
            .map_err(RedeliverError::Store)?;
        let mut permit = self.config.runner.wait_for_permit().await;
        let notification = self
            .config
            .store
            .revive(notification_id)
            .await
            .map_err(RedeliverError::Store)?
            .ok_or(RedeliverError::NotFound)?;
        self.config
            .count_in_share(&mut permit, notification.instance_id);
        permit.add(&self.config.counters, Counter::Pending);
        let config = self.config.clone();
        tokio::spawn(deliver(config, notification, permit, None));
        Ok(())
    }

    /// Stops taking async requests (they get `503`, code `shutting_down`; synchronous requests
    /// are untouched), then waits up to `deadline` for running jobs and pending notifications to
    /// finish. What is left is reported, and logged: kept for the next start by a durable store,
    /// or abandoned with an in-memory one.
    pub async fn shutdown(&self, deadline: Duration) -> ShutdownReport {
        let config = &self.config;
        config.runner.stop_admitting();
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
