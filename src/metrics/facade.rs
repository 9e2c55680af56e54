//! The layer's counts through the [`metrics`] facade (cargo feature `metrics`): whatever recorder
//! the application installed (Prometheus, OpenTelemetry, StatsD …) receives them.
//!
//! Each instance's handles are registered once, when its counters are made (the layer is built,
//! or an instance's first event arrives), so counting an event costs an atomic add per handle,
//! not a lookup by name. That is also why the recorder must be installed before the layer is
//! built: handles registered before it are no-ops.

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use metrics::{describe_counter, describe_gauge, describe_histogram, Counter, Gauge, Histogram};

use super::counter::{AttemptResult, Counter as Count};

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
pub(crate) const REPLAYS: &str = "async_request_idempotent_replays_total";
pub(crate) const STATUS_WAITS: &str = "async_request_status_waits";
pub(crate) const HELD: &str = "async_request_notifications_held";
pub(crate) const THROTTLED: &str = "async_request_delivery_throttled_total";
pub(crate) const CIRCUIT: &str = "async_request_receiver_circuit";

/// One instance's handles.
#[derive(Debug)]
pub(crate) struct Facade {
    accepted: Counter,
    completed: Counter,
    failed: Counter,
    cancelled: Counter,
    running: Gauge,
    waits: Gauge,
    pending: Gauge,
    in_flight: Gauge,
    delivered: Counter,
    dead: Counter,
    replays: Counter,
    held: Gauge,
    throttled: Counter,
    /// Receivers by circuit state: open, half-open, disabled.
    circuits: [Gauge; 3],
    attempts: [Counter; AttemptResult::ALL.len()],
    receipt_seconds: Histogram,
    delivery_seconds: Histogram,
    /// Attempts by receiver host, registered on a host's first attempt with each result: a
    /// lookup by name (and two allocations) per attempt otherwise.
    by_host: Mutex<Vec<ByHost>>,
}

/// Most hosts whose handles one instance keeps (its callback URL's, and earlier ones after the
/// URL changed); attempts to more are counted without keeping their handles.
const MAX_HOSTS: usize = 16;

#[derive(Debug)]
struct ByHost {
    host: Box<str>,
    attempts: [Option<Counter>; AttemptResult::ALL.len()],
}

impl Facade {
    pub(crate) fn new(instance: u64) -> Self {
        describe();
        let instance = instance.to_string();
        Self {
            accepted: metrics::counter!(ACCEPTED, "instance" => instance.clone()),
            completed: metrics::counter!(JOBS, "instance" => instance.clone(), "outcome" => "completed"),
            failed: metrics::counter!(JOBS, "instance" => instance.clone(), "outcome" => "failed"),
            cancelled: metrics::counter!(JOBS, "instance" => instance.clone(), "outcome" => "cancelled"),
            waits: metrics::gauge!(STATUS_WAITS, "instance" => instance.clone()),
            running: metrics::gauge!(JOBS_RUNNING, "instance" => instance.clone()),
            pending: metrics::gauge!(PENDING, "instance" => instance.clone()),
            in_flight: metrics::gauge!(IN_FLIGHT, "instance" => instance.clone()),
            delivered: metrics::counter!(DELIVERED, "instance" => instance.clone()),
            dead: metrics::counter!(DEAD_LETTERS, "instance" => instance.clone()),
            replays: metrics::counter!(REPLAYS, "instance" => instance.clone()),
            held: metrics::gauge!(HELD, "instance" => instance.clone()),
            throttled: metrics::counter!(THROTTLED, "instance" => instance.clone()),
            circuits: ["open", "half-open", "disabled"].map(|state| {
                metrics::gauge!(CIRCUIT, "instance" => instance.clone(), "state" => state)
            }),
            attempts: AttemptResult::ALL.map(|result| {
                metrics::counter!(ATTEMPTS, "instance" => instance.clone(), "result" => result.as_str())
            }),
            receipt_seconds: metrics::histogram!(RECEIPT_SECONDS, "instance" => instance.clone()),
            delivery_seconds: metrics::histogram!(DELIVERY_SECONDS, "instance" => instance.clone()),
            by_host: Mutex::new(Vec::new()),
        }
    }

    pub(crate) fn add(&self, counter: Count) {
        match counter {
            Count::Accepted => self.accepted.increment(1),
            Count::Completed => self.completed.increment(1),
            Count::Failed => self.failed.increment(1),
            Count::Cancelled => self.cancelled.increment(1),
            Count::Waiting => self.waits.increment(1.0),
            Count::Delivered => self.delivered.increment(1),
            Count::Dead => self.dead.increment(1),
            Count::Replayed => self.replays.increment(1),
            Count::Held => self.held.increment(1.0),
            Count::Throttled => self.throttled.increment(1),
            Count::ReceiversOpen => self.circuits[0].increment(1.0),
            Count::ReceiversHalfOpen => self.circuits[1].increment(1.0),
            Count::ReceiversDisabled => self.circuits[2].increment(1.0),
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
            Count::Waiting => self.waits.decrement(1.0),
            Count::Held => self.held.decrement(1.0),
            Count::ReceiversOpen => self.circuits[0].decrement(1.0),
            Count::ReceiversHalfOpen => self.circuits[1].decrement(1.0),
            Count::ReceiversDisabled => self.circuits[2].decrement(1.0),
            _ => {}
        }
    }

    pub(crate) fn attempt(&self, result: AttemptResult, host: Option<&str>) {
        self.attempts[result as usize].increment(1);
        // Only hosts the operator configured (an instance's callback URL): a label taken from
        // request headers would let clients grow the metric without bound.
        let Some(host) = host else {
            return;
        };
        let register = || attempts_by_host(host, result);
        let mut hosts = self.by_host.lock().unwrap_or_else(PoisonError::into_inner);
        let known = match hosts.iter().position(|known| *known.host == *host) {
            Some(index) => &mut hosts[index],
            None if hosts.len() < MAX_HOSTS => {
                hosts.push(ByHost {
                    host: host.into(),
                    attempts: Default::default(),
                });
                hosts.last_mut().expect("just pushed")
            }
            None => return register().increment(1),
        };
        known.attempts[result as usize]
            .get_or_insert_with(register)
            .increment(1);
    }

    pub(crate) fn receipt_ready(&self, took: Duration) {
        self.receipt_seconds.record(took.as_secs_f64());
    }

    pub(crate) fn delivered_after(&self, since_accepted: Duration) {
        self.delivery_seconds.record(since_accepted.as_secs_f64());
    }
}

/// The handle counting attempts to `host` that ended in `result`.
fn attempts_by_host(host: &str, result: AttemptResult) -> Counter {
    metrics::counter!(ATTEMPTS_BY_HOST, "host" => host.to_owned(), "result" => result.as_str())
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
        "Jobs ended, by outcome (completed, failed or cancelled)."
    );
    describe_gauge!(JOBS_RUNNING, Unit::Count, "Jobs running now.");
    describe_gauge!(
        STATUS_WAITS,
        Unit::Count,
        "Status requests waiting now for their event to end (Prefer: wait)."
    );
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
    describe_gauge!(
        HELD,
        Unit::Count,
        "Notifications held now by their receiver's open circuit."
    );
    describe_counter!(
        THROTTLED,
        Unit::Count,
        "Delivery attempts that waited for their turn (max_delivery_rate or a connection slot)."
    );
    describe_gauge!(
        CIRCUIT,
        Unit::Count,
        "Receivers by circuit state (open, half-open, disabled), as this node sees them."
    );
    describe_counter!(
        REPLAYS,
        Unit::Count,
        "Async requests answered with an earlier receipt: their Idempotency-Key was claimed."
    );
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

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::{Arc, Mutex};

    use metrics::{Key, KeyName, Metadata, Recorder, SharedString, Unit};

    use super::*;

    /// Counts by-host registrations, and what each by-host counter was incremented by.
    #[derive(Default)]
    struct ByHostRecorder {
        registered: Mutex<Vec<(String, Arc<AtomicU64>)>>,
    }

    impl Recorder for ByHostRecorder {
        fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
            if key.name() != ATTEMPTS_BY_HOST {
                return Counter::noop();
            }
            let labels: Vec<String> = key
                .labels()
                .map(|label| format!("{}={}", label.key(), label.value()))
                .collect();
            let count = Arc::new(AtomicU64::new(0));
            self.registered
                .lock()
                .unwrap()
                .push((labels.join(","), count.clone()));
            Counter::from_arc(count)
        }
        fn register_gauge(&self, _: &Key, _: &Metadata<'_>) -> Gauge {
            Gauge::noop()
        }
        fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
            Histogram::noop()
        }
    }

    #[test]
    fn attempts_by_host_register_each_host_and_result_once() {
        let recorder = ByHostRecorder::default();
        metrics::with_local_recorder(&recorder, || {
            let facade = Facade::new(7);
            for _ in 0..3 {
                facade.attempt(AttemptResult::Delivered, Some("a.example"));
            }
            facade.attempt(AttemptResult::Rejected, Some("a.example"));
            facade.attempt(AttemptResult::Delivered, Some("b.example"));
            facade.attempt(AttemptResult::Delivered, None);
        });
        let registered = recorder.registered.lock().unwrap();
        let counts: Vec<(&str, u64)> = registered
            .iter()
            .map(|(labels, count)| (labels.as_str(), count.load(Ordering::Relaxed)))
            .collect();
        assert_eq!(
            counts,
            [
                ("host=a.example,result=delivered", 3),
                ("host=a.example,result=rejected", 1),
                ("host=b.example,result=delivered", 1),
            ]
        );
    }

    #[test]
    fn hosts_past_the_limit_are_still_counted() {
        let recorder = ByHostRecorder::default();
        metrics::with_local_recorder(&recorder, || {
            let facade = Facade::new(7);
            for round in 0..2 {
                for host in 0..MAX_HOSTS + 2 {
                    facade.attempt(AttemptResult::Delivered, Some(&format!("h{host}.example")));
                }
                let kept = facade.by_host.lock().unwrap().len();
                assert_eq!(kept, MAX_HOSTS, "round {round}");
            }
        });
        let registered = recorder.registered.lock().unwrap();
        let total: u64 = registered
            .iter()
            .map(|(_, count)| count.load(Ordering::Relaxed))
            .sum();
        assert_eq!(total, 2 * (MAX_HOSTS as u64 + 2), "every attempt counted");
        // Kept hosts registered once; the two past the limit once per attempt.
        assert_eq!(registered.len(), MAX_HOSTS + 2 * 2);
    }
}
