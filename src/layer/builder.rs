//! Configuring the layer: [`AsyncRequestLayerBuilder`] and the [`ConfigError`] `build()` returns.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, StatusCode};
use tokio::sync::OnceCell;

use crate::admission::in_flight::{Runner, DEFAULT_MAX_IN_FLIGHT};
use crate::admission::share::Shares;
use crate::delivery::attempt::{DeadLetterHook, Delivery};
use crate::delivery::circuit::CircuitSettings;
use crate::delivery::receivers::{Receivers, DEFAULT_MAX_CONNECTIONS_PER_RECEIVER};
use crate::delivery::retry::DeliveryPolicy;
use crate::delivery::sink::{CallbackSink, DynSink, HttpSink, DEFAULT_ATTEMPT_TIMEOUT};
use crate::error::ConfigError;
use crate::event::idempotency::Keys;
use crate::event::jobs::{Jobs, DEFAULT_MAX_STATUS_WAITERS};
use crate::event::recovery::start_recovery;
use crate::event::shared::Shared;
use crate::instance::{Instance, Instances, Naming, ResolveInstance};
use crate::layer::layer::AsyncRequestLayer;
use crate::metrics::Counters;
use crate::request::address::{AddressPolicy, IpNetwork};
use crate::request::callback_url::UrlPolicy;
use crate::request::classify::Classifier;
use crate::status::endpoint::StatusEndpoint;
use crate::store::{EventStore, MemoryStore, NotificationRecord};
use crate::wire::header::{ELEMENTS_ASYNC_CALLBACK_URL, ELEMENTS_ASYNC_REQUEST};

/// Default limit on the request body of an async request (2 MiB, as axum's default body limit).
pub const DEFAULT_MAX_REQUEST_BYTES: usize = 2 * 1024 * 1024;
/// Default time an async request's whole body may take to arrive (60 seconds).
pub const DEFAULT_REQUEST_BODY_TIMEOUT: Duration = Duration::from_secs(60);
/// Default limit on the inner response body carried in a notification (1 MiB).
pub const DEFAULT_MAX_RESPONSE_BYTES: usize = 1024 * 1024;
/// Default time a finished event stays readable through the status endpoint (24 hours).
pub const DEFAULT_STATUS_RETENTION: Duration = Duration::from_secs(24 * 60 * 60);
/// Default time a job may run before its event fails with code `timeout` (15 minutes).
pub const DEFAULT_JOB_TIMEOUT: Duration = Duration::from_secs(15 * 60);
/// Default time an `Idempotency-Key` stays claimed by the async request that first used it (24
/// hours); after it, the key may start new work.
pub const DEFAULT_IDEMPOTENCY_RETENTION: Duration = Duration::from_secs(24 * 60 * 60);

/// Builds an [`AsyncRequestLayer`]; made by [`AsyncRequestLayer::builder`].
///
/// Every method takes and returns the builder; [`build`](Self::build) checks the whole
/// configuration and reports the first problem as a [`ConfigError`].
///
/// | method | default |
/// |---|---|
/// | [`instance_id`](Self::instance_id) | `0` |
/// | [`instances`](Self::instances) | none: one static instance |
/// | [`default_callback_url`](Self::default_callback_url) | none: requests must name one |
/// | [`signing_key`](Self::signing_key) | none: no `Elements-Webhook-Signature` |
/// | [`standard_webhooks_secret`](Self::standard_webhooks_secret) | none: no `webhook-*` headers |
/// | [`allow_private_callbacks`](Self::allow_private_callbacks) | `false` |
/// | [`sink`](Self::sink) | [`HttpSink::new()`] |
/// | [`async_header`](Self::async_header) | `Elements-Async-Request` |
/// | [`callback_url_header`](Self::callback_url_header) | `Elements-Async-Callback-Url` |
/// | [`receipt_status`](Self::receipt_status) | `202 Accepted` |
/// | [`max_request_bytes`](Self::max_request_bytes) | [`DEFAULT_MAX_REQUEST_BYTES`] (2 MiB) |
/// | [`request_body_timeout`](Self::request_body_timeout) | [`DEFAULT_REQUEST_BODY_TIMEOUT`] (60 s) |
/// | [`max_response_bytes`](Self::max_response_bytes) | [`DEFAULT_MAX_RESPONSE_BYTES`] (1 MiB) |
/// | [`retry_schedule`](Self::retry_schedule) | [`DEFAULT_RETRY_SCHEDULE`](crate::retry::DEFAULT_RETRY_SCHEDULE): 0, 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h, ±20 % |
/// | [`attempt_timeout`](Self::attempt_timeout) | [`DEFAULT_ATTEMPT_TIMEOUT`] (15 s) |
/// | [`max_in_flight`](Self::max_in_flight) | [`DEFAULT_MAX_IN_FLIGHT`] (10 000) |
/// | [`max_connections_per_receiver`](Self::max_connections_per_receiver) | [`DEFAULT_MAX_CONNECTIONS_PER_RECEIVER`] (32) |
/// | [`circuit_breaker`](Self::circuit_breaker) | 5 failures, 30 s cool-down doubling to 10 min |
/// | [`disable_receiver_after`](Self::disable_receiver_after) | [`DEFAULT_DISABLE_RECEIVER_AFTER`](crate::delivery::circuit::DEFAULT_DISABLE_RECEIVER_AFTER) (5 days) |
/// | [`job_timeout`](Self::job_timeout) | [`DEFAULT_JOB_TIMEOUT`] (15 min) |
/// | [`store`](Self::store) | [`MemoryStore::new()`] |
/// | [`idempotency_retention`](Self::idempotency_retention) | [`DEFAULT_IDEMPOTENCY_RETENTION`] (24 h) |
/// | [`require_idempotency_key`](Self::require_idempotency_key) | `false` |
/// | [`on_dead_letter`](Self::on_dead_letter) | none |
pub struct AsyncRequestLayerBuilder {
    instance_id: Option<u64>,
    instances: Option<Instances>,
    default_callback_url: Option<String>,
    signing_key: Option<Vec<u8>>,
    standard_secrets: Vec<String>,
    allow_private_callbacks: bool,
    allowed_networks: Vec<String>,
    require_https: bool,
    sink: Option<(Arc<dyn DynSink>, &'static str)>,
    store: Option<(Arc<dyn EventStore>, &'static str)>,
    retry_schedule: Vec<Duration>,
    attempt_timeout: Duration,
    request_body_timeout: Duration,
    max_in_flight: usize,
    max_connections_per_receiver: usize,
    circuit: CircuitSettings,
    job_timeout: Option<Duration>,
    on_dead_letter: Option<DeadLetterHook>,
    status_endpoint: Option<String>,
    status_secret: Option<Vec<u8>>,
    status_retention: Option<Duration>,
    cancellation: bool,
    max_status_waiters: usize,
    prefer_respond_async: bool,
    async_header: HeaderName,
    callback_header: HeaderName,
    receipt_status: StatusCode,
    max_request_bytes: usize,
    max_response_bytes: usize,
    idempotency_retention: Duration,
    require_idempotency_key: bool,
    propagate_trace: bool,
}

impl fmt::Debug for AsyncRequestLayerBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AsyncRequestLayerBuilder")
            .field("instance_id", &self.instance_id)
            .field("instances", &self.instances)
            .field("default_callback_url", &self.default_callback_url)
            .field(
                "signing_key",
                &self.signing_key.as_ref().map(|_| "<redacted>"),
            )
            .field("standard_webhooks_secrets", &self.standard_secrets.len())
            .field("allow_private_callbacks", &self.allow_private_callbacks)
            .field("allowed_networks", &self.allowed_networks)
            .field("require_https", &self.require_https)
            .field("async_header", &self.async_header)
            .field("callback_header", &self.callback_header)
            .field("receipt_status", &self.receipt_status)
            .field("max_request_bytes", &self.max_request_bytes)
            .field("max_response_bytes", &self.max_response_bytes)
            .field("sink", &self.sink.as_ref().map(|(_, name)| name))
            .field("store", &self.store.as_ref().map(|(_, name)| name))
            .field("retry_schedule", &self.retry_schedule)
            .field("attempt_timeout", &self.attempt_timeout)
            .field("request_body_timeout", &self.request_body_timeout)
            .field("max_in_flight", &self.max_in_flight)
            .field(
                "max_connections_per_receiver",
                &self.max_connections_per_receiver,
            )
            .field("circuit", &self.circuit)
            .field("job_timeout", &self.job_timeout)
            .field("status_endpoint", &self.status_endpoint)
            .field(
                "status_secret",
                &self.status_secret.as_ref().map(|_| "<redacted>"),
            )
            .field("status_retention", &self.status_retention)
            .field("cancellation", &self.cancellation)
            .field("max_status_waiters", &self.max_status_waiters)
            .field("prefer_respond_async", &self.prefer_respond_async)
            .field("idempotency_retention", &self.idempotency_retention)
            .field("require_idempotency_key", &self.require_idempotency_key)
            .field("propagate_trace", &self.propagate_trace)
            .finish_non_exhaustive()
    }
}

impl Default for AsyncRequestLayerBuilder {
    fn default() -> Self {
        Self {
            instance_id: None,
            instances: None,
            default_callback_url: None,
            signing_key: None,
            standard_secrets: Vec::new(),
            allow_private_callbacks: false,
            allowed_networks: Vec::new(),
            require_https: false,
            sink: None,
            store: None,
            retry_schedule: DeliveryPolicy::default().schedule,
            attempt_timeout: DEFAULT_ATTEMPT_TIMEOUT,
            request_body_timeout: DEFAULT_REQUEST_BODY_TIMEOUT,
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
            max_connections_per_receiver: DEFAULT_MAX_CONNECTIONS_PER_RECEIVER,
            circuit: CircuitSettings::default(),
            job_timeout: Some(DEFAULT_JOB_TIMEOUT),
            on_dead_letter: None,
            status_endpoint: None,
            status_secret: None,
            status_retention: None,
            cancellation: true,
            max_status_waiters: DEFAULT_MAX_STATUS_WAITERS,
            prefer_respond_async: false,
            async_header: ELEMENTS_ASYNC_REQUEST,
            callback_header: ELEMENTS_ASYNC_CALLBACK_URL,
            receipt_status: StatusCode::ACCEPTED,
            max_request_bytes: DEFAULT_MAX_REQUEST_BYTES,
            max_response_bytes: DEFAULT_MAX_RESPONSE_BYTES,
            idempotency_retention: DEFAULT_IDEMPOTENCY_RETENTION,
            require_idempotency_key: false,
            propagate_trace: true,
        }
    }
}

// Here rather than beside the layer, so the layer's file does not use its builder's.
impl AsyncRequestLayer {
    /// Starts configuring a layer.
    pub fn builder() -> AsyncRequestLayerBuilder {
        AsyncRequestLayerBuilder::default()
    }
}

impl AsyncRequestLayerBuilder {
    /// The `instanceId` written into every notification (at most 2^53 − 1). With
    /// [`default_callback_url`](Self::default_callback_url), [`signing_key`](Self::signing_key)
    /// and [`standard_webhooks_secret`](Self::standard_webhooks_secret), the shorthand for one
    /// static instance; for many, see [`instances`](Self::instances).
    pub fn instance_id(mut self, instance_id: u64) -> Self {
        self.instance_id = Some(instance_id);
        self
    }

    /// Serves many instances (tenants), each with its own callback URL, keys and
    /// `max_in_flight`: `resolver` says which instance an async request belongs to and what an
    /// instance's settings are at each delivery attempt. See [`crate::instance`]. Setting this
    /// and any single-instance option (`instance_id`, `default_callback_url`, `signing_key`,
    /// `standard_webhooks_secret`) is a [`ConfigError`].
    pub fn instances<R: ResolveInstance>(mut self, resolver: R) -> Self {
        self.instances = Some(Instances::resolved(resolver));
        self
    }

    /// Where notifications go when a request names no callback URL. This is trusted operator
    /// configuration: it may point at private addresses. Checked by [`build`](Self::build).
    pub fn default_callback_url(mut self, url: impl Into<String>) -> Self {
        self.default_callback_url = Some(url.into());
        self
    }

    /// Turns on the Elements scheme: `Elements-Webhook-Signature: sha256=<base64 HMAC-SHA256>`
    /// keyed with these bytes.
    pub fn signing_key(mut self, key: impl AsRef<[u8]>) -> Self {
        self.signing_key = Some(key.as_ref().to_vec());
        self
    }

    /// Turns on the Standard Webhooks scheme with a `whsec_<base64>` secret. Call it again to add
    /// more secrets (key rotation): every callback then carries one signature per secret.
    /// A malformed secret is reported by [`build`](Self::build).
    pub fn standard_webhooks_secret(mut self, secret: impl Into<String>) -> Self {
        self.standard_secrets.push(secret.into());
        self
    }

    /// Lets callback URLs from requests target loopback, private and other non-public addresses
    /// and `localhost`. For development and tests; off by default.
    pub fn allow_private_callbacks(mut self, allow: bool) -> Self {
        self.allow_private_callbacks = allow;
        self
    }

    /// Lets callback URLs reach one private network (CIDR, `"10.20.0.0/16"`, or one address),
    /// for internal receivers, without allowing every private address. Repeatable. Applies to URL
    /// literals at request time and, for the default [`HttpSink`], to resolved addresses at
    /// connect time (a sink you pass yourself takes [`HttpSink::allow_network`]). A malformed
    /// network is reported by [`build`](Self::build).
    pub fn allow_callback_network(mut self, cidr: impl Into<String>) -> Self {
        self.allowed_networks.push(cidr.into());
        self
    }

    /// Refuses callback URLs from requests that are not `https` (`400`,
    /// `forbidden_callback_url`). Off by default.
    pub fn require_https(mut self, require: bool) -> Self {
        self.require_https = require;
        self
    }

    /// The transport for callbacks (default [`HttpSink::new()`] with the
    /// [`attempt_timeout`](Self::attempt_timeout)).
    pub fn sink<K: CallbackSink>(mut self, sink: K) -> Self {
        self.sink = Some((Arc::new(sink), std::any::type_name::<K>()));
        self
    }

    /// Where each event's life is recorded (default [`MemoryStore::new()`]). A durable store
    /// (`store::RedbStore`, feature `redb`) keeps the delivery promise across a crash.
    pub fn store<T: EventStore>(mut self, store: T) -> Self {
        self.store = Some((Arc::new(store), std::any::type_name::<T>()));
        self
    }

    /// The delays before retry 1, 2, …; a notification gets `1 + len` attempts. Each delay gets
    /// ±20 % jitter and is lengthened to a receiver's `Retry-After` on `429`/`503` (capped at
    /// [`MAX_RETRY_AFTER`](crate::retry::MAX_RETRY_AFTER)). An empty schedule means one attempt.
    pub fn retry_schedule(mut self, delays: impl IntoIterator<Item = Duration>) -> Self {
        self.retry_schedule = delays.into_iter().collect();
        self
    }

    /// How long one delivery attempt may take before it counts as failed and is retried.
    pub fn attempt_timeout(mut self, timeout: Duration) -> Self {
        self.attempt_timeout = timeout;
        self
    }

    /// How long an async request's body may take to arrive in full. The layer reads it before
    /// answering, holding a place among [`max_in_flight`](Self::max_in_flight) meanwhile, so a
    /// client that sends it slowly, or stops, is refused with `408 request_body_timeout` once
    /// this has passed, and nothing is recorded. Synchronous bodies stream to the inner service
    /// untouched.
    pub fn request_body_timeout(mut self, timeout: Duration) -> Self {
        self.request_body_timeout = timeout;
        self
    }

    /// The most unfinished events at once — jobs running plus notifications not yet delivered
    /// or dead. At the bound, async requests get `503` with `Retry-After`, code `overloaded`;
    /// synchronous requests are never limited.
    pub fn max_in_flight(mut self, max: usize) -> Self {
        self.max_in_flight = max;
        self
    }

    /// The most delivery attempts in flight at once to one receiver (an instance's callback
    /// origin: scheme, host, port); further due notifications wait their turn without using
    /// their attempt budget, so a receiver that hangs holds at most this many connections.
    /// An instance may set its own ([`InstanceBuilder::max_connections`](crate::instance::InstanceBuilder::max_connections)).
    pub fn max_connections_per_receiver(mut self, max: usize) -> Self {
        self.max_connections_per_receiver = max;
        self
    }

    /// Each receiver's circuit breaker: after `failures` consecutive failed attempts
    /// (connection refused, timeout, `5xx`, `429`) its circuit opens and its notifications are
    /// held, no attempt made and none counted against their schedule, for `cool_down` (doubling
    /// on each failed probe, up to 10 minutes or `cool_down` if longer); then one is tried, and
    /// a `2xx` closes the circuit and releases the rest. `failures` `0` turns it off. Default:
    /// 5 failures, 30 s.
    pub fn circuit_breaker(mut self, failures: u32, cool_down: Duration) -> Self {
        self.circuit.failures = failures;
        self.circuit.cool_down = cool_down;
        self
    }

    /// Disables a receiver that has failed without a single success for this long (default
    /// [`DEFAULT_DISABLE_RECEIVER_AFTER`](crate::delivery::circuit::DEFAULT_DISABLE_RECEIVER_AFTER), 5 days; `None`: never): its held and new
    /// notifications become dead letters (reason `receiver_disabled`), kept and redeliverable,
    /// until an operator enables it again
    /// ([`AsyncRequestHandle::enable_receiver`](crate::AsyncRequestHandle::enable_receiver)
    /// or the admin route).
    pub fn disable_receiver_after(mut self, after: Option<Duration>) -> Self {
        self.circuit.disable_after = after;
        self
    }

    /// How long an `Idempotency-Key` stays claimed by the async request that first used it
    /// (default [`DEFAULT_IDEMPOTENCY_RETENTION`], 24 hours): within it, the same request sent
    /// again gets the first receipt (with `Idempotent-Replayed: true`) and starts nothing; after
    /// it, the key may start new work. This is the key expiry policy the IETF draft asks a
    /// server to publish (`docs/idempotency.md` in the repository says the rest).
    pub fn idempotency_retention(mut self, retention: Duration) -> Self {
        self.idempotency_retention = retention;
        self
    }

    /// Refuses async requests without an `Idempotency-Key` (`400 idempotency_key_required`),
    /// for APIs whose clients must be able to retry safely. Off by default; synchronous requests
    /// are never asked for one.
    pub fn require_idempotency_key(mut self, required: bool) -> Self {
        self.require_idempotency_key = required;
        self
    }

    /// With the feature `opentelemetry`: whether events keep the request's trace context and
    /// callbacks carry their attempt's (`traceparent`, `tracestate`), for every instance (each
    /// may also turn it off: `InstanceBuilder::propagate_trace`). On by default. The spans are
    /// made either way; this is what crosses to the receiver. Without the feature it changes
    /// nothing.
    pub fn propagate_trace(mut self, propagate: bool) -> Self {
        self.propagate_trace = propagate;
        self
    }

    /// How long a job may run before its event fails with code `timeout`.
    pub fn job_timeout(mut self, timeout: Duration) -> Self {
        self.job_timeout = Some(timeout);
        self
    }

    /// Makes the layer answer `GET {path}/{eventId}?token=…` with the event's status, put that URL
    /// in the receipt's `Location` header, and accept async requests without any callback URL
    /// (the client polls instead). See the [crate docs](crate#status-monitor).
    pub fn status_endpoint(mut self, path: impl Into<String>) -> Self {
        self.status_endpoint = Some(path.into());
        self
    }

    /// The secret status tokens are made with (at least 16 bytes). Random per start-up by default,
    /// so status URLs die with the process; set it when a durable store outlives the process.
    pub fn status_secret(mut self, secret: impl AsRef<[u8]>) -> Self {
        self.status_secret = Some(secret.as_ref().to_vec());
        self
    }

    /// How long a finished event stays readable through the status endpoint and the
    /// [admin](crate::admin) routes (the store may also bound how many it keeps). Default: 24 h
    /// ([`DEFAULT_STATUS_RETENTION`]) with a status endpoint, else nothing is kept once delivered;
    /// set it to keep delivered events (their attempts) readable by operators without one.
    pub fn status_retention(mut self, retention: Duration) -> Self {
        self.status_retention = Some(retention);
        self
    }

    /// Whether clients may cancel an event with `DELETE` on its status URL (on by default with a
    /// status endpoint; off, such a request gets `405` with `Allow: GET`). See the
    /// [crate docs](crate#the-status-endpoint).
    pub fn cancellation(mut self, enabled: bool) -> Self {
        self.cancellation = enabled;
        self
    }

    /// Most status requests held waiting (`Prefer: wait=N`) at once (default
    /// [`DEFAULT_MAX_STATUS_WAITERS`]); beyond it, a status request is answered at once, with
    /// `Retry-After`.
    pub fn max_status_waiters(mut self, max: usize) -> Self {
        self.max_status_waiters = max;
        self
    }

    /// Lets RFC 7240 `Prefer: respond-async` ask for the async path (off by default: a server
    /// ignores preferences it has not opted into). The receipt then says
    /// `Preference-Applied: respond-async`. With `wait=N` as well, the layer waits up to N
    /// seconds (at most [`MAX_PREFER_WAIT`](crate::request::MAX_PREFER_WAIT)): if the work completes in
    /// time the client gets the real response and no callback is sent; otherwise the receipt is
    /// sent at N seconds and the callback follows as usual.
    pub fn prefer_respond_async(mut self, enabled: bool) -> Self {
        self.prefer_respond_async = enabled;
        self
    }

    /// Called with each notification that becomes a dead letter, for example to alert on it.
    /// It runs on the delivery task: keep it short.
    pub fn on_dead_letter(
        mut self,
        hook: impl Fn(&NotificationRecord) + Send + Sync + 'static,
    ) -> Self {
        self.on_dead_letter = Some(Arc::new(hook));
        self
    }

    /// The request header that asks for the async path (default `Elements-Async-Request`).
    pub fn async_header(mut self, name: HeaderName) -> Self {
        self.async_header = name;
        self
    }

    /// The request header that carries the callback URL (default `Elements-Async-Callback-Url`).
    pub fn callback_url_header(mut self, name: HeaderName) -> Self {
        self.callback_header = name;
        self
    }

    /// The status of the receipt (default `202 Accepted`); must be a `2xx`.
    pub fn receipt_status(mut self, status: StatusCode) -> Self {
        self.receipt_status = status;
        self
    }

    /// The largest request body an async request may carry; larger ones get `413`,
    /// code `request_too_large`. Synchronous requests are never buffered or limited by the layer.
    pub fn max_request_bytes(mut self, limit: usize) -> Self {
        self.max_request_bytes = limit;
        self
    }

    /// The largest inner response body carried in a notification; a larger one makes the event
    /// `failed` with code `response_too_large`.
    pub fn max_response_bytes(mut self, limit: usize) -> Self {
        self.max_response_bytes = limit;
        self
    }

    /// Checks the configuration and builds the layer.
    pub fn build(mut self) -> Result<AsyncRequestLayer, ConfigError> {
        if !self.receipt_status.is_success() {
            return Err(ConfigError::new(format!(
                "receipt_status must be a 2xx status, not {}",
                self.receipt_status
            )));
        }
        if self.max_in_flight == 0 || self.max_in_flight > u32::MAX as usize {
            return Err(ConfigError::new(format!(
                "max_in_flight must be between 1 and {}, not {}",
                u32::MAX,
                self.max_in_flight
            )));
        }
        if self.max_connections_per_receiver == 0
            || self.max_connections_per_receiver > crate::instance::MAX_CONNECTIONS
        {
            return Err(ConfigError::new(format!(
                "max_connections_per_receiver must be between 1 and {}, not {}",
                crate::instance::MAX_CONNECTIONS,
                self.max_connections_per_receiver
            )));
        }
        if self.circuit.failures > 0 && self.circuit.cool_down.is_zero() {
            return Err(ConfigError::new(
                "circuit_breaker: the cool-down must be longer than zero",
            ));
        }
        if self
            .circuit
            .disable_after
            .is_some_and(|after| after.is_zero())
        {
            return Err(ConfigError::new(
                "disable_receiver_after must be longer than zero (None: never)",
            ));
        }
        if self.attempt_timeout.is_zero()
            || self.request_body_timeout.is_zero()
            || self.job_timeout.is_some_and(|t| t.is_zero())
            || self.idempotency_retention.is_zero()
        {
            return Err(ConfigError::new(
                "attempt_timeout, request_body_timeout, job_timeout and idempotency_retention \
                 must be longer than zero",
            ));
        }
        if self.async_header == self.callback_header {
            return Err(ConfigError::new(
                "async_header and callback_url_header must differ",
            ));
        }
        let allowed = self
            .allowed_networks
            .iter()
            .map(|cidr| {
                cidr.parse::<IpNetwork>()
                    .map_err(|error| ConfigError::new(format!("allow_callback_network: {error}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let url_policy = UrlPolicy {
            addresses: AddressPolicy {
                allow_private: self.allow_private_callbacks,
                allowed: allowed.clone(),
            },
            require_https: self.require_https,
        };
        let instances = self.take_instances()?;
        if self.require_https
            && instances
                .single()
                .and_then(Instance::callback_url)
                .is_some_and(|url| url.scheme_str() != Some("https"))
        {
            return Err(ConfigError::new(
                "default_callback_url must use https when require_https is on",
            ));
        }
        let (sink, sink_type) = self.sink.unwrap_or_else(|| {
            let sink = allowed
                .iter()
                .fold(HttpSink::new(), |sink, net| sink.allow_network(*net))
                .timed_by_caller();
            (Arc::new(sink), std::any::type_name::<HttpSink>())
        });
        let (store, store_type) = self.store.unwrap_or_else(|| {
            (
                Arc::new(MemoryStore::new()),
                std::any::type_name::<MemoryStore>(),
            )
        });
        // Counted as the one instance's, or (many instances) as the sum of theirs, each of which
        // reports through the `metrics` facade on its own.
        let counters = Arc::new(match instances.single() {
            Some(instance) => Counters::for_instance(instance.id()),
            None => Counters::default(),
        });
        let delivery = Delivery {
            sink,
            sink_type,
            policy: DeliveryPolicy {
                schedule: self.retry_schedule,
                ..DeliveryPolicy::default()
            },
            attempt_timeout: self.attempt_timeout,
            store: store.clone(),
            counters: Arc::clone(&counters),
            on_dead_letter: self.on_dead_letter,
            allow_private: self.allow_private_callbacks,
            // Finished events are kept only for someone to read: the status endpoint by default.
            retention: match (self.status_retention, &self.status_endpoint) {
                (Some(retention), _) => retention,
                (None, Some(_)) => DEFAULT_STATUS_RETENTION,
                (None, None) => Duration::ZERO,
            },
            outbox: Default::default(),
            receivers: Receivers::new(
                self.max_connections_per_receiver,
                self.circuit,
                Arc::clone(&counters),
            ),
            propagate_trace: self.propagate_trace,
        };
        let status = self
            .status_endpoint
            .as_deref()
            .map(|path| StatusEndpoint::new(path, self.status_secret.as_deref()))
            .transpose()?;
        let config = Arc::new(Shared {
            classifier: Classifier {
                async_header: self.async_header,
                callback_header: self.callback_header,
                prefer_respond_async: self.prefer_respond_async,
                url_policy,
            },
            receipt_status: self.receipt_status,
            instances,
            shares: Shares::default(),
            max_request_bytes: self.max_request_bytes,
            request_body_timeout: self.request_body_timeout,
            max_response_bytes: self.max_response_bytes,
            job_timeout: self.job_timeout,
            status,
            runner: Runner::new(self.max_in_flight as u32),
            delivery,
            store,
            store_type,
            counters,
            recovered: OnceCell::new(),
            keys: Keys::new(self.require_idempotency_key, self.idempotency_retention),
            jobs: self
                .status_endpoint
                .is_some()
                .then(|| Arc::new(Jobs::new(self.cancellation, self.max_status_waiters))),
            unconfirmed: Default::default(),
        });
        start_recovery(&config);
        Ok(AsyncRequestLayer::from_config(config))
    }
}

impl AsyncRequestLayerBuilder {
    /// The resolver, or the one static instance the single-instance options describe.
    fn take_instances(&mut self) -> Result<Instances, ConfigError> {
        let single = self.instance_id.is_some()
            || self.default_callback_url.is_some()
            || self.signing_key.is_some()
            || !self.standard_secrets.is_empty();
        if let Some(instances) = self.instances.take() {
            if single {
                return Err(ConfigError::new(
                    "instances(..) serves many instances, each with its own id, callback URL and keys; \
                     instance_id, default_callback_url, signing_key and standard_webhooks_secret \
                     describe one static instance and cannot be set as well",
                ));
            }
            return Ok(instances);
        }
        let mut instance = Instance::builder(self.instance_id.unwrap_or(0));
        if let Some(url) = self.default_callback_url.take() {
            instance = instance.callback_url(url);
        }
        if let Some(key) = self.signing_key.take() {
            instance = instance.signing_key(key);
        }
        for secret in self.standard_secrets.drain(..) {
            instance = instance.standard_webhooks_secret(secret);
        }
        instance.build_named(Naming::Layer).map(Instances::Static)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(builder: AsyncRequestLayerBuilder) -> String {
        builder.build().unwrap_err().to_string()
    }

    #[test]
    fn bad_default_urls_fail_at_build() {
        for url in [
            "",
            "hooks.example.com/in",
            "ftp://example.com/",
            "https://user:pw@example.com/",
        ] {
            let message = error(AsyncRequestLayer::builder().default_callback_url(url));
            assert!(message.contains("default_callback_url"), "{url}: {message}");
        }
    }

    #[test]
    fn private_default_urls_are_trusted() {
        AsyncRequestLayer::builder()
            .default_callback_url("http://127.0.0.1:9000/hooks")
            .build()
            .unwrap();
    }

    #[test]
    fn malformed_secrets_fail_at_build_without_echoing_them() {
        for secret in [
            "C2FVsBQIhrscChlQIMV+b5sSYspob7oD",
            "whsec_***not-base64***",
            "whsec_",
        ] {
            let message = error(AsyncRequestLayer::builder().standard_webhooks_secret(secret));
            assert!(message.contains("standard_webhooks_secret"), "{message}");
            assert!(!message.contains(secret), "{message}");
        }
    }

    #[test]
    fn other_settings_are_checked() {
        assert!(error(AsyncRequestLayer::builder().instance_id(1 << 53)).contains("instance_id"));
        assert!(error(
            AsyncRequestLayer::builder()
                .receipt_status(StatusCode::OK)
                .receipt_status(StatusCode::FOUND)
        )
        .contains("receipt_status"));
        assert!(
            error(AsyncRequestLayer::builder().callback_url_header(ELEMENTS_ASYNC_REQUEST))
                .contains("differ")
        );
        assert!(error(AsyncRequestLayer::builder().max_in_flight(0)).contains("max_in_flight"));
        assert!(
            error(AsyncRequestLayer::builder().attempt_timeout(Duration::ZERO))
                .contains("attempt_timeout")
        );
        assert!(
            error(AsyncRequestLayer::builder().job_timeout(Duration::ZERO)).contains("job_timeout")
        );
        assert!(
            error(AsyncRequestLayer::builder().request_body_timeout(Duration::ZERO))
                .contains("request_body_timeout")
        );
        assert!(
            error(AsyncRequestLayer::builder().allow_callback_network("10.0.0.0/40"))
                .contains("allow_callback_network")
        );
        let plain = AsyncRequestLayer::builder()
            .require_https(true)
            .default_callback_url("http://hooks.example.com/");
        assert!(error(plain).contains("https"));
        AsyncRequestLayer::builder()
            .allow_callback_network("10.0.0.0/8")
            .allow_callback_network("fd00::/8")
            .build()
            .unwrap();
    }

    #[test]
    fn instances_and_the_single_instance_options_exclude_each_other() {
        let map = || crate::instance::InstanceMap::new(|_| None);
        AsyncRequestLayer::builder()
            .instances(map())
            .build()
            .unwrap();
        let single: [fn(AsyncRequestLayerBuilder) -> AsyncRequestLayerBuilder; 4] = [
            |b| b.instance_id(30),
            |b| b.default_callback_url("https://hooks.example.com/in"),
            |b| b.signing_key("key"),
            |b| b.standard_webhooks_secret("whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD"),
        ];
        for set in single {
            let message = error(set(AsyncRequestLayer::builder().instances(map())));
            assert!(message.contains("instances(..)"), "{message}");
            set(AsyncRequestLayer::builder()).build().unwrap();
        }
    }

    #[test]
    fn debug_redacts_the_signing_key() {
        let builder = AsyncRequestLayer::builder()
            .signing_key("event-signature-key")
            .standard_webhooks_secret("whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD");
        let text = format!("{builder:?}");
        assert!(!text.contains("event-signature-key"));
        assert!(!text.contains("C2FVsBQ"));
        let layer = builder.build().unwrap();
        let text = format!("{layer:?}");
        assert!(!text.contains("event-signature-key"));
        assert!(!text.contains("C2FVsBQ"));
    }
}
