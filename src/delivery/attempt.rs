//! Delivery: getting a notification to its receiver, with retries, or recording it as dead.
//!
//! A pipeline of small typed stages, run for each attempt:
//! [`Delivery::prepare`] signs the request for this attempt (its own Standard Webhooks timestamp,
//! the same notification id), the sink sends it within the attempt timeout, and
//! [`AttemptOutcome::judge`] says what the answer means. [`deliver`] makes the attempt that is due
//! and records it in the event store; a notification that must wait goes to the [`Outbox`] (one
//! timer queue, one task) until its next attempt on the schedule of [`crate::retry`], until it
//! ends *delivered* or *dead*.

use std::collections::hash_map::RandomState;
use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::Poll;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Uri};
use tokio::sync::mpsc;
use tokio_util::time::DelayQueue;
use tracing::Instrument;

use crate::admission::in_flight::Permit;
use crate::admission::share::Share;
use crate::delivery::circuit::{Change, Verdict};
use crate::delivery::operational::Operational;
use crate::delivery::receivers::{Entry, Finished, Receiver, Receivers};
use crate::delivery::retry::{parse_retry_after, DeliveryPolicy};
use crate::delivery::sink::{DynSink, SinkError, SinkErrorKind, TrustedTarget};
use crate::instance::{Instance, Instances};
use crate::metrics::{AttemptResult, Counter, Counters};
use crate::store::{
    history, unix_ms, AttemptRecord, DeliveryState, DisabledReceiver, EventStore,
    NotificationRecord, StoreError,
};
use crate::wire::header::{HeaderText, ELEMENTS_EVENT_ID};

/// The longest wait between two tries to record a delivery the store could not take.
const MAX_DELIVERED_WAIT: Duration = Duration::from_secs(5);
const USER_AGENT: &str = concat!(env!("CARGO_PKG_NAME"), "/", env!("CARGO_PKG_VERSION"));

/// Called with every notification that becomes a dead letter.
pub(crate) type DeadLetterHook = Arc<dyn Fn(&NotificationRecord) + Send + Sync>;

/// What one attempt's answer means for the notification.
#[derive(Debug)]
pub(crate) enum AttemptOutcome {
    /// The receiver answered `2xx`.
    Delivered(StatusCode),
    /// A non-`2xx` answer (`3xx` included: redirects are not followed) that a later attempt may
    /// fix, with the `Retry-After` it asked for on `429`/`503`.
    Rejected {
        status: StatusCode,
        retry_after: Option<Duration>,
    },
    /// No answer (connection error, timeout) that a later attempt may fix.
    Unreachable(SinkError),
    /// Not sent: the instance's settings could not be read; a later attempt may fix it.
    Unsent(String),
    /// The receiver answered `410 Gone`: it wants no more notifications; not retried.
    Gone,
    /// An error after which retrying is pointless: a forbidden target, a closed sink.
    Final(String),
}

impl AttemptOutcome {
    pub(crate) fn judge(result: Result<Response<Bytes>, SinkError>, now: SystemTime) -> Self {
        match result {
            Ok(answer) if answer.status().is_success() => Self::Delivered(answer.status()),
            Ok(answer) if answer.status() == StatusCode::GONE => Self::Gone,
            Ok(answer) => {
                let status = answer.status();
                let retry_after = matches!(
                    status,
                    StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
                )
                .then(|| answer.headers().get(header::RETRY_AFTER))
                .flatten()
                .and_then(|value| parse_retry_after(value, now));
                Self::Rejected {
                    status,
                    retry_after,
                }
            }
            Err(error)
                if matches!(
                    error.kind(),
                    SinkErrorKind::Forbidden | SinkErrorKind::Closed
                ) =>
            {
                Self::Final(error.to_string())
            }
            Err(error) => Self::Unreachable(error),
        }
    }

    /// The receiver's status, when it answered.
    fn status(&self) -> Option<StatusCode> {
        match self {
            Self::Delivered(status) | Self::Rejected { status, .. } => Some(*status),
            Self::Gone => Some(StatusCode::GONE),
            Self::Unreachable(_) | Self::Unsent(_) | Self::Final(_) => None,
        }
    }

    /// Why the notification was not delivered; `None` when it was.
    fn error(&self) -> Option<String> {
        Some(match self {
            Self::Delivered(_) => return None,
            Self::Rejected { status, .. } => format!("the receiver answered {status}"),
            Self::Gone => "the receiver answered 410 Gone".to_owned(),
            Self::Unreachable(error) => error.to_string(),
            Self::Unsent(reason) | Self::Final(reason) => reason.clone(),
        })
    }

    /// The attempt's `error.type`: the status code of a failed answer, or what kept it from one.
    fn error_type(&self) -> Option<std::borrow::Cow<'static, str>> {
        Some(match self {
            Self::Delivered(_) => return None,
            Self::Rejected { status, .. } => status.as_str().to_owned().into(),
            Self::Gone => "410".into(),
            Self::Unreachable(error) => match error.kind() {
                SinkErrorKind::Connect => "connect",
                SinkErrorKind::Timeout => "timeout",
                SinkErrorKind::Protocol => "protocol",
                SinkErrorKind::Forbidden => "forbidden",
                SinkErrorKind::Closed => "closed",
            }
            .into(),
            Self::Unsent(_) => "unsent".into(),
            Self::Final(_) => "refused".into(),
        })
    }

    /// What the answer says about the receiver, for its circuit.
    fn verdict(&self) -> Verdict {
        match self {
            Self::Delivered(_) | Self::Gone => Verdict::Answered,
            Self::Rejected { status, .. }
                if status.is_server_error() || *status == StatusCode::TOO_MANY_REQUESTS =>
            {
                Verdict::Failed
            }
            Self::Rejected { .. } => Verdict::Answered,
            Self::Unreachable(_) => Verdict::Failed,
            Self::Unsent(_) | Self::Final(_) => Verdict::Unknown,
        }
    }

    /// The attempt's `result` label.
    fn result(&self) -> AttemptResult {
        match self {
            Self::Delivered(_) => AttemptResult::Delivered,
            Self::Rejected { .. } => AttemptResult::Rejected,
            Self::Gone => AttemptResult::Gone,
            Self::Unreachable(_) => AttemptResult::Unreachable,
            Self::Unsent(_) => AttemptResult::Unsent,
            Self::Final(_) => AttemptResult::Refused,
        }
    }
}

/// Signs, sends and retries notifications; records each step in the store.
pub(crate) struct Delivery {
    pub(crate) sink: Arc<dyn DynSink>,
    pub(crate) sink_type: &'static str,
    pub(crate) policy: DeliveryPolicy,
    pub(crate) attempt_timeout: Duration,
    pub(crate) store: Arc<dyn EventStore>,
    pub(crate) counters: Arc<Counters>,
    pub(crate) on_dead_letter: Option<DeadLetterHook>,
    /// Whether a sink may reach every target at private addresses; otherwise only the
    /// instance's own configured URL.
    pub(crate) allow_private: bool,
    /// How long a delivered notification stays readable through the status endpoint.
    pub(crate) retention: Duration,
    pub(crate) outbox: Outbox,
    /// Each receiver's bound on connections and circuit, each instance's pace.
    pub(crate) receivers: Receivers<Waiting>,
    /// Whether callbacks carry their attempt's trace context (feature `opentelemetry`).
    #[cfg_attr(not(feature = "opentelemetry"), allow(dead_code))]
    pub(crate) propagate_trace: bool,
}

impl fmt::Debug for Delivery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Delivery")
            .field("sink", &self.sink_type)
            .field("policy", &self.policy)
            .field("attempt_timeout", &self.attempt_timeout)
            .finish_non_exhaustive()
    }
}

impl Delivery {
    /// The signed request for one attempt made at `timestamp` (Unix seconds), with `instance`'s
    /// keys.
    pub(crate) fn prepare(
        &self,
        notification: &NotificationRecord,
        instance: &Instance,
        target: &Uri,
        timestamp: u64,
    ) -> Request<Bytes> {
        let mut request = Request::new(notification.body.clone());
        // Room for every header below at once: growing the map midway rehashes it.
        *request.headers_mut() = HeaderMap::with_capacity(8);
        *request.method_mut() = Method::POST;
        *request.uri_mut() = target.clone();
        if self.allow_private
            || instance.callback_url() == Some(target)
            || instance.operations_url() == Some(target)
        {
            request.extensions_mut().insert(TrustedTarget);
        }
        let headers = request.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        headers.insert(header::USER_AGENT, HeaderValue::from_static(USER_AGENT));
        // The event id and every signature header share one buffer.
        let signer = instance.signer();
        let mut text = HeaderText::with_capacity(20 + signer.text_len());
        text.decimal(ELEMENTS_EVENT_ID, notification.event_id.get());
        signer.sign(
            &mut text,
            notification.notification_id,
            timestamp,
            &notification.body,
        );
        text.insert_into(headers);
        request
    }

    /// Makes one attempt now.
    pub(crate) async fn attempt(
        &self,
        notification: &NotificationRecord,
        instance: &Instance,
        target: &Uri,
    ) -> AttemptOutcome {
        let now = SystemTime::now();
        let timestamp = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        #[allow(unused_mut)] // the trace context is added with the feature `opentelemetry`
        let mut request = self.prepare(notification, instance, target, timestamp);
        #[cfg(feature = "opentelemetry")]
        if self.propagate_trace && instance.propagate_trace() {
            crate::delivery::trace::inject(&tracing::Span::current(), request.headers_mut());
        }
        let result =
            match tokio::time::timeout(self.attempt_timeout, self.sink.send_boxed(request)).await {
                Ok(result) => result,
                Err(_) => Err(SinkError::new(
                    SinkErrorKind::Timeout,
                    format!("no answer within {:?}", self.attempt_timeout),
                )),
            };
        AttemptOutcome::judge(result, now)
    }

    /// The notification's instance as it is now, and where this attempt goes: the instance's
    /// current URL when the event took it, else `parsed` or the record's own target. Else why no
    /// attempt can be made: never (`Final`) or not now (`Unsent`).
    async fn instance_and_target(
        instances: &Instances,
        notification: &NotificationRecord,
        parsed: Option<Uri>,
    ) -> Result<(Instance, Uri), AttemptOutcome> {
        let id = notification.instance_id;
        let instance = match instances.current(id).await {
            Ok(Some(instance)) => instance,
            Ok(None) => {
                return Err(AttemptOutcome::Final(format!(
                    "instance {id} was removed before its notification was delivered"
                )))
            }
            Err(error) => {
                return Err(AttemptOutcome::Unsent(format!(
                    "the settings of instance {id} could not be read: {error}"
                )))
            }
        };
        let target = if notification.instance_url {
            instance.callback_url().cloned().ok_or_else(|| {
                AttemptOutcome::Final(format!("instance {id} no longer has a callback URL"))
            })?
        } else {
            match parsed.map_or_else(|| notification.target.parse::<Uri>(), Ok) {
                Ok(target) => target,
                Err(_) => {
                    return Err(AttemptOutcome::Final(
                        "the stored callback URL is not a valid URI".into(),
                    ))
                }
            }
        };
        Ok((instance, target))
    }

    /// Makes one attempt now and records what it means: delivered, dead, or when to try again.
    /// The target is `parsed`, or else the record's, parsed here.
    async fn attempt_once(
        &self,
        config: &Arc<dyn Deliverer>,
        notification: &mut NotificationRecord,
        parsed: Option<Uri>,
        permit: &Permit,
    ) -> Next {
        let counters = permit.instance_counters(&self.counters);
        let resolved = Self::instance_and_target(config.instances(), notification, parsed).await;
        // Its turn first (pace, connection slot, circuit): waiting uses none of its budget.
        let ticket = match &resolved {
            Ok((instance, target)) => {
                match self
                    .receivers
                    .enter(instance, target, notification.instance_url, permit.share())
                    .await
                {
                    Entry::Go(ticket) => Some(ticket),
                    Entry::Hold(receiver) => return Next::Hold(receiver),
                    Entry::Disabled(receiver) => {
                        notification.last_error = Some(disabled_reason(&receiver));
                        self.bury(config, Some(instance), notification.clone(), permit)
                            .await;
                        return Next::Done;
                    }
                }
            }
            Err(_) => None,
        };
        let started = Instant::now();
        let at_ms = unix_ms();
        let (instance, outcome) = match resolved {
            Ok((instance, target)) => {
                notification.attempts += 1;
                // A client span, named and attributed as OpenTelemetry's HTTP conventions ask.
                let span = tracing::info_span!(
                    "delivery_attempt",
                    attempt = notification.attempts,
                    otel.kind = "client",
                    http.request.method = "POST",
                    url.full = %WithoutQuery(&target),
                    http.response.status_code = tracing::field::Empty,
                    error.type = tracing::field::Empty,
                );
                #[cfg(feature = "opentelemetry")]
                crate::delivery::trace::follow(&span, notification.trace.as_deref());
                let outcome = self
                    .attempt(notification, &instance, &target)
                    .instrument(span.clone())
                    .await;
                if !span.is_disabled() {
                    if let Some(status) = outcome.status() {
                        span.record("http.response.status_code", status.as_u16());
                    }
                    if let Some(kind) = outcome.error_type() {
                        span.record("error.type", kind.as_ref());
                    }
                }
                // Labelled by host only when the operator configured it: bounded.
                let host = target.host().filter(|_| notification.instance_url);
                counters.attempt(outcome.result(), host);
                (Some(instance), outcome)
            }
            // Counted, so the retry schedule bounds how long a resolver may fail.
            Err(unsent @ AttemptOutcome::Unsent(_)) => {
                notification.attempts += 1;
                counters.attempt(unsent.result(), None);
                (None, unsent)
            }
            // Never attempted: no history entry, only the reason.
            Err(never) => {
                notification.last_error = never.error();
                self.bury(config, None, notification.clone(), permit).await;
                return Next::Done;
            }
        };
        let instance = instance.as_ref();
        if let (Some(ticket), Some(instance)) = (ticket, instance) {
            let finished = ticket.finish(outcome.verdict(), unix_ms(), &self.receivers.circuit);
            self.circuit_changed(config, instance, finished);
        }
        let error = outcome.error();
        history::push(
            &mut notification.history,
            AttemptRecord {
                at_ms,
                duration_us: started.elapsed().as_micros() as u64,
                status: outcome.status().map(|status| status.as_u16()),
                error: error.clone(),
            },
        );
        let retry_after = match outcome {
            AttemptOutcome::Delivered(status) => {
                tracing::debug!(%status, attempts = notification.attempts, "callback delivered");
                notification.state = DeliveryState::Delivered;
                let now = unix_ms();
                notification.retain_until_ms =
                    now.saturating_add(self.retention.as_millis() as u64);
                self.record_delivered(notification).await;
                counters.delivered_after(Duration::from_millis(
                    now.saturating_sub(notification.accepted_at_ms),
                ));
                permit.sub(&self.counters, Counter::Pending);
                permit.add(&self.counters, Counter::Delivered);
                return Next::Done;
            }
            AttemptOutcome::Gone | AttemptOutcome::Final(_) => {
                notification.last_error = error;
                self.bury(config, instance, notification.clone(), permit)
                    .await;
                return Next::Done;
            }
            AttemptOutcome::Rejected { retry_after, .. } => retry_after,
            AttemptOutcome::Unreachable(_) | AttemptOutcome::Unsent(_) => None,
        };
        let delay = self
            .policy
            .delay_before(notification.attempts, retry_after, random_unit());
        notification.last_error = error;
        let Some(delay) = delay else {
            self.bury(config, instance, notification.clone(), permit)
                .await;
            return Next::Done;
        };
        notification.next_attempt_at_ms = unix_ms() + delay.as_millis() as u64;
        tracing::warn!(
            error = notification.last_error.as_deref().unwrap_or_default(),
            attempts = notification.attempts,
            retry_in = ?delay,
            target = %notification.target,
            "callback attempt failed; retrying",
        );
        if let Err(error) = self.store.attempted(notification).await {
            tracing::error!(%error, "could not record a failed attempt");
        }
        permit.add(&self.counters, Counter::Retries);
        Next::Later
    }

    /// Records a delivery, trying again while the store cannot take it (100 ms, doubling up to
    /// 5 s): left unrecorded while this node lives, the event would read `pending` on every node
    /// for good, and a peer taking the node's work over would send it again.
    async fn record_delivered(&self, notification: &NotificationRecord) {
        match self.store.delivered(notification).await {
            Ok(()) => {}
            Err(error) if error.is_superseded() => {}
            // Boxed: the rare retries' state (a timer) stays out of every delivery's future.
            Err(error) => Box::pin(self.record_delivered_again(notification, error)).await,
        }
    }

    async fn record_delivered_again(&self, notification: &NotificationRecord, error: StoreError) {
        let mut wait = Duration::from_millis(100);
        tracing::warn!(%error, retry_in = ?wait, "could not record a delivery; trying again");
        tokio::time::sleep(wait).await;
        wait *= 2;
        loop {
            match self.store.delivered(notification).await {
                Ok(()) => return,
                Err(error) if error.is_superseded() => return,
                Err(error) => {
                    tracing::warn!(%error, retry_in = ?wait, "could not record a delivery; trying again");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(MAX_DELIVERED_WAIT);
                }
            }
        }
    }

    /// Acts on what an attempt's verdict did to its receiver's circuit: counts the move, starts
    /// the probe timer of an opened circuit, releases what a closed one held, buries what a
    /// disabled one held.
    fn circuit_changed(
        &self,
        config: &Arc<dyn Deliverer>,
        instance: &Instance,
        finished: Finished<Waiting>,
    ) {
        let Finished {
            change,
            released,
            receiver,
        } = finished;
        if change == Change::None {
            return;
        }
        let status = receiver.view();
        match change {
            Change::None => {}
            Change::Opened { until } | Change::Reopened { until } => {
                if matches!(change, Change::Opened { .. }) {
                    tracing::warn!(
                        receiver = %receiver.origin,
                        instance_id = receiver.instance_id,
                        "the receiver keeps failing; its circuit is open, its notifications held",
                    );
                    config.clone().tell_operators(
                        receiver.instance_id,
                        Some(instance),
                        Operational::ReceiverFailing {
                            receiver_id: status.id,
                            origin: status.origin,
                            consecutive_failures: status.consecutive_failures,
                            failing_since_ms: status.failing_since_ms.unwrap_or_default(),
                        },
                    );
                }
                tokio::spawn(probe_at(receiver, until));
            }
            Change::ProbeAgain => release(released),
            Change::Closed => {
                tracing::info!(
                    receiver = %receiver.origin,
                    instance_id = receiver.instance_id,
                    held = released.len(),
                    "the receiver answers again; its circuit is closed",
                );
                config.clone().tell_operators(
                    receiver.instance_id,
                    Some(instance),
                    Operational::ReceiverRecovered {
                        receiver_id: status.id,
                        origin: status.origin,
                    },
                );
                release(released);
            }
            Change::Disabled => {
                tracing::error!(
                    receiver = %receiver.origin,
                    instance_id = receiver.instance_id,
                    "the receiver has failed for too long; it is disabled",
                );
                let record = DisabledReceiver {
                    id: status.id,
                    instance_id: status.instance_id,
                    origin: status.origin,
                    failing_since_ms: status.failing_since_ms.unwrap_or_default(),
                    disabled_at_ms: unix_ms(),
                };
                config.clone().tell_operators(
                    record.instance_id,
                    Some(instance),
                    Operational::ReceiverDisabled {
                        receiver_id: record.id.clone(),
                        origin: record.origin.clone(),
                        failing_since_ms: record.failing_since_ms,
                        disabled_at_ms: record.disabled_at_ms,
                    },
                );
                let store = self.store.clone();
                tokio::spawn(async move {
                    // Stored first: a crash while burying must not forget the disabling.
                    match store.disable_receiver(&record).await {
                        Ok(()) => receiver.disabling_stored(),
                        Err(error) => {
                            tracing::error!(%error, "could not record a disabled receiver")
                        }
                    }
                    bury_all(&receiver, released).await;
                });
            }
        }
    }

    /// Records a notification as a dead letter, and tells the instance's operators.
    async fn bury(
        &self,
        config: &Arc<dyn Deliverer>,
        instance: Option<&Instance>,
        mut notification: NotificationRecord,
        permit: &Permit,
    ) {
        notification.state = DeliveryState::Dead;
        tracing::error!(
            error = notification.last_error.as_deref().unwrap_or_default(),
            attempts = notification.attempts,
            target = %notification.target,
            "callback not delivered; kept as a dead letter",
        );
        if let Err(error) = self.store.dead(&notification).await {
            tracing::error!(%error, "could not record a dead letter");
        }
        permit.sub(&self.counters, Counter::Pending);
        permit.add(&self.counters, Counter::Dead);
        if let Some(hook) = &self.on_dead_letter {
            hook(&notification);
        }
        config.clone().tell_operators(
            notification.instance_id,
            instance,
            Operational::NotificationDead {
                event_id: notification.event_id,
                notification_id: notification.notification_id,
                attempts: notification.attempts,
                reason: notification.last_error,
                target: notification.target,
            },
        );
    }
}

/// What a notification on its way reads and keeps alive: the delivery engine and the instances
/// whose keys and URLs each attempt looks up. The layer's shared state is one (`event::shared`).
pub(crate) trait Deliverer: fmt::Debug + Send + Sync + 'static {
    /// Signs, sends and records.
    fn delivery(&self) -> &Delivery;
    /// Each notification's instance as it is now.
    fn instances(&self) -> &Instances;
    /// Sends `what` to the instance's operations URL, if it has one, as a notification of its
    /// own; returns at once. `instance` is its settings when the caller has them at hand (else
    /// they are read).
    fn tell_operators(
        self: Arc<Self>,
        instance_id: u64,
        instance: Option<&Instance>,
        what: Operational,
    );
}

/// What follows an attempt.
enum Next {
    /// Delivered or dead: the event is finished.
    Done,
    /// Try again at `next_attempt_at_ms`.
    Later,
    /// Not attempted: its receiver's circuit is open.
    Hold(Arc<Receiver<Waiting>>),
}

/// How the reason of a dead letter its receiver's disabling made begins.
pub(crate) const RECEIVER_DISABLED: &str = "receiver_disabled";

/// A target as `url.full` shows it: without its query, which may carry a client's token.
struct WithoutQuery<'a>(&'a Uri);

impl fmt::Display for WithoutQuery<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(scheme) = self.0.scheme_str() {
            write!(f, "{scheme}://")?;
        }
        if let Some(authority) = self.0.authority() {
            f.write_str(authority.as_str())?;
        }
        f.write_str(self.0.path())
    }
}

/// The dead letter's reason when its receiver is disabled.
fn disabled_reason(receiver: &Receiver<Waiting>) -> String {
    format!(
        "{RECEIVER_DISABLED}: {} is disabled after failing for too long (receiver {})",
        receiver.origin, receiver.id
    )
}

/// Sends what a circuit held, through its receiver's connection bound.
fn release(released: Vec<Waiting>) {
    for waiting in released {
        tokio::spawn(deliver(
            waiting.config,
            waiting.notification,
            waiting.permit,
            None,
        ));
    }
}

/// After the cool-down, tries the first held notification as the probe.
async fn probe_at(receiver: Arc<Receiver<Waiting>>, until: Instant) {
    tokio::time::sleep_until(until.into()).await;
    if let Some(probe) = receiver.take_probe(Instant::now()) {
        release(vec![probe]);
    }
}

/// Buries what a disabled receiver held.
pub(crate) async fn bury_all(receiver: &Receiver<Waiting>, held: Vec<Waiting>) {
    let reason = disabled_reason(receiver);
    for Waiting {
        config,
        mut notification,
        permit,
    } in held
    {
        notification.last_error = Some(reason.clone());
        config
            .delivery()
            .bury(&config, None, notification, &permit)
            .await;
    }
}

/// Makes this node's receivers agree with the store's disabled ones, burying what a receiver
/// disabled elsewhere held here. `share_of` gives an instance's counters.
pub(crate) async fn follow_disabled(
    delivery: &Delivery,
    share_of: impl Fn(u64) -> Option<Arc<Share>>,
) -> Result<(), StoreError> {
    if !delivery.store.keeps_disabled_receivers() {
        return Ok(());
    }
    let disabled = delivery.store.disabled_receivers().await?;
    for (receiver, held) in delivery.receivers.follow(&disabled, share_of) {
        bury_all(&receiver, held).await;
    }
    Ok(())
}

/// Delivers a pending notification: an attempt now if it is due, and each later one from the
/// outbox, until it is delivered or dead. `permit` is the event's place under `max_in_flight`,
/// held until then. `parsed` is the notification's target already parsed, if the caller has it.
pub(crate) async fn deliver(
    mut config: Arc<dyn Deliverer>,
    mut notification: NotificationRecord,
    mut permit: Permit,
    mut parsed: Option<Uri>,
) {
    if notification.next_attempt_at_ms <= unix_ms() {
        loop {
            let next = config
                .delivery()
                .attempt_once(&config, &mut notification, parsed, &permit)
                .await;
            match next {
                Next::Done => return,
                Next::Later => break,
                Next::Hold(receiver) => {
                    let waiting = Waiting {
                        config,
                        notification,
                        permit,
                    };
                    let Some(back) = receiver.hold(waiting) else {
                        return;
                    };
                    (config, notification, permit, parsed) =
                        (back.config, back.notification, back.permit, None);
                }
            }
        }
    }
    config
        .delivery()
        .outbox
        .schedule(&config, notification, permit);
}

/// Notifications waiting for their next attempt, all in one timer queue served by one task.
///
/// A waiting notification is then only its record and its permit in the queue — not a task with
/// its futures — so a receiver that is down for hours costs little memory per event.
#[derive(Debug, Default)]
pub(crate) struct Outbox {
    queue: OnceLock<mpsc::UnboundedSender<Waiting>>,
}

#[derive(Debug)]
pub(crate) struct Waiting {
    // Each waiting notification keeps the layer's configuration alive, so dropping the layer
    // (the last router using it, say) does not silently drop its pending deliveries.
    config: Arc<dyn Deliverer>,
    notification: NotificationRecord,
    permit: Permit,
}

impl Outbox {
    fn schedule(
        &self,
        config: &Arc<dyn Deliverer>,
        notification: NotificationRecord,
        permit: Permit,
    ) {
        let queue = self.queue.get_or_init(|| {
            let (sender, receiver) = mpsc::unbounded_channel();
            tokio::spawn(serve_outbox(receiver));
            sender
        });
        let waiting = Waiting {
            config: config.clone(),
            notification,
            permit,
        };
        if queue.send(waiting).is_err() {
            tracing::error!("the outbox has stopped; a notification waits for the next start");
        }
    }
}

/// The outbox task: starts each notification's next attempt when it is due. It ends once the
/// layer is gone and nothing waits any more (the `Shared` owning the sending side was dropped).
async fn serve_outbox(mut incoming: mpsc::UnboundedReceiver<Waiting>) {
    let mut waiting = DelayQueue::new();
    loop {
        let next = std::future::poll_fn(|cx| {
            if let Poll::Ready(incoming) = incoming.poll_recv(cx) {
                return Poll::Ready(Step::Incoming(incoming));
            }
            // An empty queue answers `None` at once; it is polled again after the next insert.
            if !waiting.is_empty() {
                if let Poll::Ready(Some(due)) = waiting.poll_expired(cx) {
                    return Poll::Ready(Step::Due(due.into_inner()));
                }
            }
            Poll::Pending
        })
        .await;
        match next {
            Step::Incoming(Some(entry)) => {
                let wait = entry
                    .notification
                    .next_attempt_at_ms
                    .saturating_sub(unix_ms());
                waiting.insert(entry, Duration::from_millis(wait));
            }
            Step::Incoming(None) => return,
            Step::Due(Waiting {
                config,
                notification,
                permit,
            }) => {
                let span = tracing::info_span!(
                    "async_request",
                    event_id = notification.event_id.get(),
                    notification_id = notification.notification_id.get(),
                    instance_id = notification.instance_id,
                );
                #[cfg(feature = "opentelemetry")]
                crate::delivery::trace::follow(&span, notification.trace.as_deref());
                tokio::spawn(deliver(config, notification, permit, None).instrument(span));
            }
        }
    }
}

enum Step {
    Incoming(Option<Waiting>),
    Due(Waiting),
}

/// A uniform number in `[0, 1)` for jitter; randomly keyed per process, no extra dependency.
fn random_unit() -> f64 {
    static KEYS: OnceLock<RandomState> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut hasher = KEYS.get_or_init(RandomState::new).build_hasher();
    hasher.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    (hasher.finish() >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delivery::sink::ChannelSink;
    use crate::store::MemoryStore;
    use crate::wire::ids::{EventId, NotificationId};

    fn answer(
        status: u16,
        retry_after: Option<&'static str>,
    ) -> Result<Response<Bytes>, SinkError> {
        let mut response = Response::new(Bytes::new());
        *response.status_mut() = StatusCode::from_u16(status).unwrap();
        if let Some(value) = retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static(value));
        }
        Ok(response)
    }

    fn judge(result: Result<Response<Bytes>, SinkError>) -> AttemptOutcome {
        AttemptOutcome::judge(result, SystemTime::UNIX_EPOCH)
    }

    #[test]
    fn only_2xx_is_delivered_and_410_is_final() {
        assert!(matches!(
            judge(answer(200, None)),
            AttemptOutcome::Delivered(_)
        ));
        assert!(matches!(
            judge(answer(204, None)),
            AttemptOutcome::Delivered(_)
        ));
        for status in [301, 302, 307, 400, 429, 500, 503] {
            assert!(
                matches!(judge(answer(status, None)), AttemptOutcome::Rejected { status: s, retry_after: None } if s.as_u16() == status)
            );
        }
        assert!(matches!(judge(answer(410, None)), AttemptOutcome::Gone));
        let forbidden = SinkError::new(SinkErrorKind::Forbidden, "private");
        assert!(matches!(judge(Err(forbidden)), AttemptOutcome::Final(_)));
        let refused = SinkError::new(SinkErrorKind::Connect, "refused");
        assert!(matches!(
            judge(Err(refused)),
            AttemptOutcome::Unreachable(_)
        ));
    }

    #[test]
    fn retry_after_is_read_only_on_429_and_503() {
        let asked = |status| match judge(answer(status, Some("42"))) {
            AttemptOutcome::Rejected { retry_after, .. } => retry_after,
            other => panic!("{other:?}"),
        };
        assert_eq!(asked(429), Some(Duration::from_secs(42)));
        assert_eq!(asked(503), Some(Duration::from_secs(42)));
        assert_eq!(asked(500), None);
    }

    #[test]
    fn random_units_are_in_range_and_vary() {
        let values: Vec<f64> = (0..100).map(|_| random_unit()).collect();
        assert!(values.iter().all(|v| (0.0..1.0).contains(v)));
        assert!(values.windows(2).any(|w| w[0] != w[1]));
    }

    #[tokio::test]
    async fn prepared_request_is_a_signed_json_post_to_the_target() {
        let (sink, mut callbacks) = ChannelSink::new(1);
        let delivery = Delivery {
            sink: Arc::new(sink),
            sink_type: "ChannelSink",
            policy: DeliveryPolicy::default(),
            attempt_timeout: Duration::from_secs(5),
            store: Arc::new(MemoryStore::new()),
            counters: Arc::default(),
            on_dead_letter: None,
            allow_private: false,
            retention: Duration::from_secs(60),
            outbox: Outbox::default(),
            receivers: Receivers::new(1, Default::default(), Arc::default()),
            propagate_trace: true,
        };
        let notification = NotificationRecord {
            event_id: EventId::new(1028),
            notification_id: NotificationId::new(1084),
            instance_id: 30,
            instance_url: false,
            target: "https://hooks.example.com/in".into(),
            body: Bytes::from_static(b"{}"),
            accepted_at_ms: 0,
            attempts: 0,
            history: Vec::new(),
            next_attempt_at_ms: 0,
            last_error: None,
            state: DeliveryState::Pending,
            retain_until_ms: 0,
            progress: None,
            trace: None,
        };
        let instance = Instance::builder(30)
            .callback_url("https://hooks.example.com/in")
            .signing_key("event-signature-key")
            .build()
            .unwrap();
        let target = notification.target.parse().unwrap();
        assert!(matches!(
            delivery.attempt(&notification, &instance, &target).await,
            AttemptOutcome::Delivered(_)
        ));
        let sent = callbacks.recv().await.unwrap();
        assert_eq!(sent.method(), Method::POST);
        assert_eq!(sent.uri(), "https://hooks.example.com/in");
        assert_eq!(sent.headers()[header::CONTENT_TYPE], "application/json");
        assert_eq!(sent.headers()[ELEMENTS_EVENT_ID], "1028");
        assert!(sent.headers()[header::USER_AGENT]
            .to_str()
            .unwrap()
            .starts_with("tower-async-request/"));
        assert!(
            sent.headers()[crate::wire::header::ELEMENTS_WEBHOOK_SIGNATURE]
                .to_str()
                .unwrap()
                .starts_with("sha256=")
        );
        assert_eq!(sent.body(), "{}");
        assert!(
            sent.extensions().get::<TrustedTarget>().is_some(),
            "the default URL is trusted"
        );

        let elsewhere = "https://other.example.com/in".parse().unwrap();
        let request = delivery.prepare(&notification, &instance, &elsewhere, 0);
        assert!(request.extensions().get::<TrustedTarget>().is_none());
    }
}
