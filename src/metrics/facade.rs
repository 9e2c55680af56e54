//! The layer's counts through the [`metrics`] facade (cargo feature `metrics`): whatever recorder
//! the application installed (Prometheus, OpenTelemetry, StatsD …) receives them.
//!
//! Each instance's handles are registered once, when its counters are made (the layer is built,
//! or an instance's first event arrives), so counting an event costs an atomic add per handle,
//! not a lookup by name. That is also why the recorder must be installed before the layer is
//! built: handles registered before it are no-ops.

use std::time::Duration;

use metrics::{describe_counter, describe_gauge, describe_histogram, Counter, Gauge, Histogram};

use super::{AttemptResult, Counter as Count};

pub(crate) const ACCEPTED: &str = "async_request_accepted_total";
pub(crate) const REFUSED: &str = "async_request_refused_total";
pub(crate) const JOBS: &str = "async_request_jobs_total";
pub(crate) const JOBS_RUNNING: &str = "async_request_jobs_running";
pub(crate) const PENDING: &str = "async_request_notifications_pending";
pub(crate) const IN_FLIGHT: &str = "async_request_in_flight";
pub(crate) const ATTEMPTS: &str = "async_request_delivery_attempts_total";
pub(crate) const ATTEMPTS_BY_HOST: &str = "async_request_delivery_attempts_by_host_total";
pub(crate) const DELIVERED: &str = "async_request_delivered_total";
pub(crate) const DEAD_LETTERS: &str = "async_request_dead_letters_total";
pub(crate) const RECEIPT_SECONDS: &str = "async_request_receipt_seconds";
pub(crate) const DELIVERY_SECONDS: &str = "async_request_delivery_seconds";

/// One instance's handles.
#[derive(Debug)]
pub(crate) struct Facade {
    accepted: Counter,
    completed: Counter,
    failed: Counter,
    running: Gauge,
    pending: Gauge,
    in_flight: Gauge,
    delivered: Counter,
    dead: Counter,
    attempts: [Counter; AttemptResult::ALL.len()],
    receipt_seconds: Histogram,
    delivery_seconds: Histogram,
}

impl Facade {
    pub(crate) fn new(instance: u64) -> Self {
        describe();
        let instance = instance.to_string();
        Self {
            accepted: metrics::counter!(ACCEPTED, "instance" => instance.clone()),
            completed: metrics::counter!(JOBS, "instance" => instance.clone(), "outcome" => "completed"),
            failed: metrics::counter!(JOBS, "instance" => instance.clone(), "outcome" => "failed"),
            running: metrics::gauge!(JOBS_RUNNING, "instance" => instance.clone()),
            pending: metrics::gauge!(PENDING, "instance" => instance.clone()),
            in_flight: metrics::gauge!(IN_FLIGHT, "instance" => instance.clone()),
            delivered: metrics::counter!(DELIVERED, "instance" => instance.clone()),
            dead: metrics::counter!(DEAD_LETTERS, "instance" => instance.clone()),
            attempts: AttemptResult::ALL.map(|result| {
                metrics::counter!(ATTEMPTS, "instance" => instance.clone(), "result" => result.as_str())
            }),
            receipt_seconds: metrics::histogram!(RECEIPT_SECONDS, "instance" => instance.clone()),
            delivery_seconds: metrics::histogram!(DELIVERY_SECONDS, "instance" => instance.clone()),
        }
    }

    pub(crate) fn add(&self, counter: Count) {
        match counter {
            Count::Accepted => self.accepted.increment(1),
            Count::Completed => self.completed.increment(1),
            Count::Failed => self.failed.increment(1),
            Count::Delivered => self.delivered.increment(1),
            Count::Dead => self.dead.increment(1),
            Count::Running => {
                self.running.increment(1.0);
                self.in_flight.increment(1.0);
            }
            Count::Pending => {
                self.pending.increment(1.0);
                self.in_flight.increment(1.0);
            }
            // Failed attempts are counted by result.
            Count::Retries => {}
        }
    }

    pub(crate) fn sub(&self, counter: Count) {
        match counter {
            Count::Running => {
                self.running.decrement(1.0);
                self.in_flight.decrement(1.0);
            }
            Count::Pending => {
                self.pending.decrement(1.0);
                self.in_flight.decrement(1.0);
            }
            _ => {}
        }
    }

    pub(crate) fn attempt(&self, result: AttemptResult, host: Option<&str>) {
        self.attempts[result as usize].increment(1);
        // Only hosts the operator configured (an instance's callback URL): a label taken from
        // request headers would let clients grow the metric without bound.
        if let Some(host) = host {
            metrics::counter!(ATTEMPTS_BY_HOST, "host" => host.to_owned(), "result" => result.as_str())
                .increment(1);
        }
    }

    pub(crate) fn receipt_ready(&self, took: Duration) {
        self.receipt_seconds.record(took.as_secs_f64());
    }

    pub(crate) fn delivered_after(&self, since_accepted: Duration) {
        self.delivery_seconds.record(since_accepted.as_secs_f64());
    }
}

/// An async request was refused with `code`.
pub(crate) fn refused(code: &'static str) {
    metrics::counter!(REFUSED, "code" => code).increment(1);
}

/// Tells the recorder what each metric means (a recorder may show it, as Prometheus's `# HELP`).
fn describe() {
    use metrics::Unit;
    describe_counter!(
        ACCEPTED,
        Unit::Count,
        "Async requests accepted (receipts sent)."
    );
    describe_counter!(
        REFUSED,
        Unit::Count,
        "Async requests refused, by refusal code."
    );
    describe_counter!(
        JOBS,
        Unit::Count,
        "Jobs ended, by outcome (completed or failed)."
    );
    describe_gauge!(JOBS_RUNNING, Unit::Count, "Jobs running now.");
    describe_gauge!(
        PENDING,
        Unit::Count,
        "Notifications waiting for delivery now."
    );
    describe_gauge!(
        IN_FLIGHT,
        Unit::Count,
        "Events unfinished now: jobs running and notifications pending."
    );
    describe_counter!(ATTEMPTS, Unit::Count, "Delivery attempts, by result.");
    describe_counter!(
        ATTEMPTS_BY_HOST,
        Unit::Count,
        "Delivery attempts to instances' configured callback hosts, by host and result."
    );
    describe_counter!(
        DELIVERED,
        Unit::Count,
        "Notifications the receiver took (2xx)."
    );
    describe_counter!(
        DEAD_LETTERS,
        Unit::Count,
        "Notifications that became dead letters."
    );
    describe_histogram!(
        RECEIPT_SECONDS,
        Unit::Seconds,
        "Time from an async request reaching the layer to its receipt."
    );
    describe_histogram!(
        DELIVERY_SECONDS,
        Unit::Seconds,
        "Time from an event's acceptance to its notification's delivery."
    );
}
