//! Dispatch: what happens to an accepted async request before the client gets its receipt.
//!
//! Resolve the request's instance (its own `max_in_flight` and default callback URL apply), read
//! the whole request body (a connection may close once the client has its `202`, so the
//! body cannot be left for later), take ids from the store and commit the event as *dispatched*,
//! call the readied inner service, and spawn one task that runs the job and delivers its
//! notification — carrying the caller's tracing span. The receipt is sent only after the store
//! has committed the event. If the client goes away before that, this future is dropped and
//! nothing was recorded or started. With `Prefer: respond-async, wait=N` the client gets the real
//! response instead when the work completes within N seconds, and no callback is sent.
//!
//! With an `Idempotency-Key`, the key is claimed in the same store write as the event; a request
//! whose key an earlier one holds gets that one's receipt again (`Idempotent-Replayed: true`), or
//! `422 idempotency_key_mismatch` if it is not the same request, and the inner service is not
//! called.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, Uri};
use http_body::Body;
use tokio::sync::oneshot;
use tower_service::Service;
use tracing::Instrument;

use crate::admission::in_flight::Permit;
use crate::error::BoxError;
use crate::event::idempotency::Recording;
use crate::event::job;
use crate::event::jobs::{Progress, Stoppable};
use crate::event::notification::{FailureCode, Outcome};
use crate::event::receipt::receipt;
use crate::event::recovery::ensure_recovered;
use crate::event::shared::Shared;
use crate::event::target::{target, Target};
use crate::metrics::{Counter, Started};
use crate::request::callback_url;
use crate::request::grpc;
use crate::request::idempotency::{fingerprint, key_of};
use crate::request::refusal::{Refusal, RefusalCode};
use crate::store::{
    unix_ms, EventRecord, EventSnapshot, IdempotencyKey, KeyClaim, KeyScope, StoreError,
    TraceContext,
};
use crate::wire::body::{read_to_end, OwnBody, RequestBody};
use crate::wire::header::{IDEMPOTENT_REPLAYED, PREFERENCE_APPLIED};
use crate::wire::ids::EventId;

/// What classification decided about an accepted async request.
#[derive(Debug)]
pub(crate) struct Accepted {
    pub(crate) callback: Option<Uri>,
    pub(crate) wait: Option<Duration>,
    pub(crate) preferred: bool,
    /// A gRPC call: receipts and refusals are gRPC answers.
    pub(crate) grpc: bool,
}

pub(crate) async fn dispatch<S, ReqBody, ResBody>(
    mut ready: S,
    request: Request<ReqBody>,
    accepted: Accepted,
    config: Arc<Shared>,
    mut permit: Permit,
    parent: tracing::Span,
    trace: Option<Arc<TraceContext>>,
) -> Response<OwnBody>
where
    S: Service<Request<RequestBody<ReqBody>>, Response = Response<ResBody>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    ReqBody: Body<Data = Bytes> + Send + 'static,
    ReqBody::Error: Into<BoxError>,
    ResBody: Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    let started = Started::now();
    let (parts, body) = request.into_parts();
    let key = match key_of(&parts.headers) {
        Ok(key) => key,
        Err(refusal) => return refusal.respond(accepted.grpc),
    };
    if key.is_none() && config.keys.required {
        return Refusal::new(
            RefusalCode::IdempotencyKeyRequired,
            "This service takes async requests only with an Idempotency-Key header, so that \
             sending one again is safe.",
        )
        .respond(accepted.grpc);
    }
    let instance = match config.instances.for_request(&parts).await {
        Ok(instance) => instance,
        Err(refusal) => return refusal.respond(accepted.grpc),
    };
    if let Err(refusal) = config.admit_to_share(&mut permit, &instance) {
        return refusal.respond(accepted.grpc);
    }
    let target = match target(accepted.callback, &instance, &config) {
        Ok(target) => target,
        Err(refusal) => return refusal.respond(accepted.grpc),
    };
    // A timer only when the body is not already in: `timeout` polls the read first.
    let read = tokio::time::timeout(
        config.request_body_timeout,
        read_to_end(body, config.max_request_bytes),
    );
    let (data, trailers) = match read.await {
        Err(_elapsed) => {
            return Refusal::new(
                RefusalCode::RequestBodyTimeout,
                format!(
                    "The request body did not arrive in full within {:?}.",
                    config.request_body_timeout
                ),
            )
            .respond(accepted.grpc)
        }
        Ok(Ok(read)) => read,
        Ok(Err(error)) if job::is_length_limit(&*error) => {
            return Refusal::request_too_large(config.max_request_bytes).respond(accepted.grpc)
        }
        Ok(Err(error)) => {
            return Refusal::new(
                RefusalCode::RequestBodyError,
                format!("The request body could not be read: {error}."),
            )
            .respond(accepted.grpc)
        }
    };
    let key = key.map(|key| IdempotencyKey {
        fingerprint: fingerprint(
            &parts,
            // The callback URL the request named (not the instance's).
            target
                .url
                .as_ref()
                .filter(|_| !target.from_instance)
                .map(callback_url::to_text)
                .as_deref(),
            &data,
        ),
        scope: KeyScope {
            instance_id: instance.id(),
            method: parts.method.as_str().to_owned(),
            path: parts.uri.path().to_owned(),
            key,
        },
        expires_at_ms: unix_ms()
            .saturating_add(config.keys.retention.as_millis().min(u64::MAX as u128) as u64),
    });
    // A copy of this request being recorded on this node right now: wait for it (at most 2 s).
    // A store that keeps nothing across restarts (memory) claims at once: nothing to wait for.
    let recording: Option<Recording<'_>> = match &key {
        Some(key) if config.store.is_durable() => match config.keys.record(&key.scope).await {
            Ok(recording) => Some(recording),
            Err(refusal) => return refusal.respond(accepted.grpc),
        },
        _ => None,
    };
    let mut request = Request::from_parts(parts, RequestBody::buffered(data, trailers));

    // The request's trace is kept unless its instance keeps callbacks out of it.
    let trace = trace.filter(|_| instance.propagate_trace());
    let recorded = record_dispatched(&config, &target, instance.id(), key.as_ref(), trace).await;
    drop(recording);
    let mut event = match recorded {
        Ok(Recorded::New(event)) => event,
        Ok(Recorded::Held {
            event_id,
            fingerprint,
        }) => {
            let key = key.expect("only a request with a key finds it held");
            if fingerprint != key.fingerprint {
                return Refusal::new(
                    RefusalCode::IdempotencyKeyMismatch,
                    "An earlier request with another method, path, query, Content-Type, callback \
                     URL or body used this Idempotency-Key; use a new key for new work.",
                )
                .respond(accepted.grpc);
            }
            permit.add(&config.counters, Counter::Replayed);
            let mut replay = receipt_for(&config, event_id, accepted.grpc, accepted.preferred);
            replay
                .headers_mut()
                .insert(IDEMPOTENT_REPLAYED, http::HeaderValue::from_static("true"));
            return replay;
        }
        Err((error, written)) => {
            tracing::error!(%error, "could not record an async request; refusing it");
            // The write may have been committed all the same: checked once the store answers.
            if let Some(event) = written {
                confirm_later(&config, *event);
            }
            return Refusal::new(
                RefusalCode::StoreUnavailable,
                "The service could not record the request; nothing was started. Retry later.",
            )
            .respond(accepted.grpc);
        }
    };
    permit.add(&config.counters, Counter::Accepted);
    // What is left until the receipt (spawning the job, writing the receipt) takes no time that
    // matters next to reading the body and the store's commit.
    permit
        .instance_counters(&config.counters)
        .receipt_ready(started);
    let event_id = event.event_id;
    let span = tracing::info_span!(
        parent: &parent,
        "async_request",
        event_id = event_id.get(),
        notification_id = event.notification_id.get(),
        instance_id = event.instance_id,
    );
    // Under the call that asked for it, in a trace viewer.
    #[cfg(feature = "opentelemetry")]
    crate::delivery::trace::follow(&span, event.trace.as_deref());
    // With a status endpoint, clients may cancel the job and watch its progress: the handler
    // finds both in the request's extensions.
    let stop = config.jobs.as_ref().map(|jobs| {
        let (stop, token) = jobs.start(event_id);
        if let Some(token) = token {
            request.extensions_mut().insert(token);
        }
        request.extensions_mut().insert(Progress::new(
            event_id,
            jobs.clone(),
            config.store.clone(),
        ));
        stop
    });
    // `call` itself may panic (a hand-written service); that is the job's panic too.
    // Boxed before the task captures it, so the work's state (which may hold the whole request)
    // is freed when the work ends instead of living as long as the task.
    let work = span.in_scope(|| catch_unwind(AssertUnwindSafe(|| Box::pin(ready.call(request)))));
    // With `Prefer: wait`, the job may hand its response back here instead of notifying.
    let (answer_tx, answer_rx) = match accepted.wait {
        Some(_) => {
            let (tx, rx) = oneshot::channel::<Response<OwnBody>>();
            (Some(tx), Some(rx))
        }
        None => (None, None),
    };
    let shared = config.clone();
    // The parsed URL goes with the job, so its first attempt does not parse the stored text.
    let callback = target.url;
    let job = async move {
        permit.add(&shared.counters, Counter::Running);
        if let Err(error) = shared.store.running(event_id).await {
            tracing::warn!(%error, "could not record that the job started");
        }
        let ended = match work {
            // Boxed too: reading the answer takes far more state than waiting between delivery
            // attempts, and a notification may wait for hours in this same task.
            Ok(work) => {
                let run = Box::pin(job::run(
                    work,
                    shared.max_response_bytes,
                    shared.job_timeout,
                ));
                // A cancel drops the work, the tower way: its future is never polled again
                // (nor at all, if the cancel came first).
                Stoppable::new(stop, run).await
            }
            Err(panic) => Some(Err(job::panicked(panic))),
        };
        permit.sub(&shared.counters, Counter::Running);
        // This node's view of the job ends here; its last report goes with the outcome.
        event.progress = shared
            .jobs
            .as_ref()
            .and_then(|jobs| jobs.end(event_id))
            .map(Box::new);
        let Some(ended) = ended else {
            // A client cancelled the event, or another node ended it (a takeover).
            tracing::info!("the event has another outcome already; its job was dropped");
            return;
        };
        let (outcome, parsed) = match (ended, answer_tx) {
            (Ok(completed), Some(answer)) => {
                let outcome = completed.outcome();
                match answer.send(completed.into_response()) {
                    // The client got the real response: nothing to deliver.
                    Ok(()) => {
                        event.target.clear();
                        event.instance_url = false;
                        (outcome, None)
                    }
                    Err(_) => (outcome, callback),
                }
            }
            (Ok(completed), None) => (completed.into_outcome(), callback),
            (Err(failed), _) => (failed, callback),
        };
        Box::pin(job::conclude(&shared, event, parsed, outcome, permit)).await;
    };
    tokio::spawn(job.instrument(span));

    if let (Some(mut answer), Some(wait)) = (answer_rx, accepted.wait) {
        if let Ok(Ok(response)) = tokio::time::timeout(wait, &mut answer).await {
            return response;
        }
        // Closing first means a response sent from now on fails to send (and is notified), and
        // one sent just before is still here: nothing falls between the two.
        answer.close();
        if let Ok(response) = answer.try_recv() {
            return response;
        }
    }
    receipt_for(&config, event_id, accepted.grpc, accepted.preferred)
}

/// The receipt of `event_id`: the first answer to its request, and the answer to a copy of it.
fn receipt_for(
    config: &Shared,
    event_id: EventId,
    grpc: bool,
    preferred: bool,
) -> Response<OwnBody> {
    let mut receipt = if grpc {
        grpc::receipt(event_id)
    } else {
        receipt(config.receipt_status, event_id).map(OwnBody::from)
    };
    if let Some(status) = &config.status {
        receipt
            .headers_mut()
            .insert(http::header::LOCATION, status.location(event_id));
    }
    if preferred {
        receipt.headers_mut().insert(
            PREFERENCE_APPLIED,
            http::HeaderValue::from_static("respond-async"),
        );
    }
    receipt
}

/// Checks `event`, whose record's write failed, once the store answers again: if it was recorded
/// after all, it ends `interrupted` (its job never started) and is notified; if not, nothing.
fn confirm_later(config: &Arc<Shared>, event: EventRecord) {
    if !config.unconfirmed.add(event) {
        return;
    }
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    let config = config.clone();
    runtime.spawn(async move {
        let mut wait = Duration::from_millis(100);
        while let Some(events) = config.unconfirmed.take() {
            tokio::time::sleep(wait).await;
            let mut later = Vec::new();
            for event in events {
                match config.store.status(event.event_id).await {
                    Ok(Some(EventSnapshot::Unfinished(recorded))) => {
                        tracing::warn!(
                            event_id = event.event_id.get(),
                            "an event refused as unrecorded was recorded after all; it ends \
                             interrupted, unstarted"
                        );
                        let permit = config.permit_for(recorded.instance_id).await;
                        let outcome = Outcome::failed(
                            FailureCode::Interrupted,
                            "the service could not confirm the request was recorded and \
                             refused it; the work was never started",
                        );
                        job::conclude(&config, recorded, None, outcome, permit).await;
                    }
                    Ok(_) => {}
                    Err(_) => later.push(event),
                }
            }
            if later.is_empty() {
                wait = Duration::from_millis(100);
            } else {
                config.unconfirmed.put_back(later);
                wait = (wait * 2).min(Duration::from_secs(5));
            }
        }
    });
}

/// What [`record_dispatched`] did.
enum Recorded {
    /// The event is recorded (with its key, if it had one).
    New(EventRecord),
    /// An earlier event holds the request's idempotency key; nothing was recorded.
    Held {
        event_id: EventId,
        fingerprint: [u8; 32],
    },
}

/// Takes ids and commits the event (claiming `key` with it); the receipt may be sent once this
/// returns. An error names the event whose write failed, if it came to that write (its commit may
/// have happened all the same).
async fn record_dispatched(
    config: &Arc<Shared>,
    target: &Target,
    instance_id: u64,
    key: Option<&IdempotencyKey>,
    trace: Option<Arc<TraceContext>>,
) -> Result<Recorded, (StoreError, Option<Box<EventRecord>>)> {
    ensure_recovered(config)
        .await
        .map_err(|error| (error, None))?;
    let (event_id, notification_id) = config
        .store
        .allocate_ids()
        .await
        .map_err(|error| (error, None))?;
    let event = EventRecord {
        event_id,
        notification_id,
        instance_id,
        // An empty target: no callback, the client polls the status endpoint.
        target: target
            .url
            .as_ref()
            .map(callback_url::to_text)
            .unwrap_or_default(),
        instance_url: target.from_instance,
        accepted_at_ms: unix_ms(),
        running: false,
        progress: None,
        trace,
    };
    let Some(key) = key else {
        return match config.store.dispatched(&event).await {
            Ok(()) => Ok(Recorded::New(event)),
            Err(error) => Err((error, Some(Box::new(event)))),
        };
    };
    let claim = match config.store.dispatched_with_key(&event, key).await {
        Ok(claim) => claim,
        Err(error) => return Err((error, Some(Box::new(event)))),
    };
    Ok(match claim {
        KeyClaim::Claimed => Recorded::New(event),
        KeyClaim::Held {
            event_id,
            fingerprint,
        } => Recorded::Held {
            event_id,
            fingerprint,
        },
    })
}
