//! The status URL as a long-running operation's resource (Google AIP-151, Azure's asynchronous
//! request-reply): `GET` reads it, and with `Prefer: wait=N` answers the moment the event ends
//! (or after N seconds); `DELETE` cancels it.
//!
//! A cancel is recorded in the store first, as the event's outcome, atomically against its job's
//! own (the store's [`cancel`](crate::store::EventStore::cancel)); only then is the job dropped,
//! here or (through the store) on the node that runs it, and the `cancelled` notification
//! delivered like any other. The answer says which outcome won: `202` with the status answer, or
//! `409 already_finished`.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Response, StatusCode, Uri};
use serde_json::json;

use crate::delivery::attempt::deliver;
use crate::event::job;
use crate::event::jobs::Counted;
use crate::event::notification::Outcome;
use crate::event::recovery::ensure_recovered;
use crate::event::shared::Shared;
use crate::metrics::Counter;
use crate::request::refusal::json_error;
use crate::status::endpoint::{body, not_found, respond, store_unavailable};
use crate::store::{CancelClaim, DeliveryState, EventSnapshot};
use crate::wire::header::PREFERENCE_APPLIED;
use crate::wire::ids::EventId;

/// Answers a request the status endpoint owns; `wait` is its `Prefer: wait`, if any.
pub(crate) async fn serve(
    config: Arc<Shared>,
    method: Method,
    uri: Uri,
    wait: Option<Duration>,
) -> Response<Bytes> {
    let status = config.status.as_ref().expect("the status endpoint is on");
    let cancellation = config.jobs.as_ref().is_some_and(|jobs| jobs.cancellation);
    if method == Method::DELETE && !cancellation {
        let mut refusal = json_error(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "This service does not let clients cancel events; a status URL only answers GET.",
        );
        refusal
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET"));
        return refusal;
    }
    let Some(event_id) = status.event(&uri) else {
        return not_found();
    };
    if method == Method::DELETE {
        // Boxed: its state is larger than a wait's, which may be held by the thousand.
        return Box::pin(cancel(&config, event_id)).await;
    }
    match wait {
        Some(wait) => wait_for(&config, event_id, wait).await,
        None => read(&config, event_id).await,
    }
}

/// The status answer as it is now.
async fn read(config: &Shared, event_id: EventId) -> Response<Bytes> {
    match config.store.status(event_id).await {
        Ok(Some(snapshot)) => {
            let (body, finished) = body(event_id, &snapshot, live(config, event_id));
            respond(StatusCode::OK, body, finished)
        }
        Ok(None) => not_found(),
        Err(error) => store_unavailable(&error),
    }
}

fn live(config: &Shared, event_id: EventId) -> Option<crate::store::ProgressRecord> {
    config.jobs.as_ref()?.progress(event_id)
}

/// `Prefer: wait=N`: the answer once the event ends, or after `wait` with its state then. Beyond
/// the bound on held waits, the answer comes at once (with `Retry-After`, as for any unfinished
/// event) and the preference is not applied.
async fn wait_for(config: &Arc<Shared>, event_id: EventId, wait: Duration) -> Response<Bytes> {
    let jobs = config.jobs.as_ref().expect("kept with a status endpoint");
    let Some(waiter) = jobs.wait_for(event_id) else {
        return read(config, event_id).await;
    };
    let _counted = Counted::new(&config.counters);
    // Registered before the first read: an end between the read and the wait still wakes it.
    let notify = Arc::clone(&waiter.notify);
    let notified = notify.notified();
    let mut notified = std::pin::pin!(notified);
    notified.as_mut().enable();
    let first = read(config, event_id).await;
    let unfinished = first.status() == StatusCode::OK
        && first.headers().contains_key(header::RETRY_AFTER)
        && !jobs.closing.is_cancelled();
    let mut answer = if unfinished {
        // Not held while waiting: a wait may last a minute.
        drop(first);
        // Whichever comes first: the end, the deadline, the layer's shutdown.
        let deadline = tokio::time::sleep(wait);
        let closing = jobs.closing.cancelled();
        let (mut deadline, mut closing) = (std::pin::pin!(deadline), std::pin::pin!(closing));
        std::future::poll_fn(|cx| {
            if notified.as_mut().poll(cx).is_ready()
                || deadline.as_mut().poll(cx).is_ready()
                || closing.as_mut().poll(cx).is_ready()
            {
                return std::task::Poll::Ready(());
            }
            std::task::Poll::Pending
        })
        .await;
        read(config, event_id).await
    } else {
        first
    };
    drop(waiter);
    if answer.status() == StatusCode::OK {
        let applied = format!("wait={}", wait.as_secs());
        answer.headers_mut().insert(
            PREFERENCE_APPLIED,
            HeaderValue::try_from(applied).expect("digits"),
        );
    }
    answer
}

/// `DELETE`: ends the event `cancelled` if it has not ended.
async fn cancel(config: &Arc<Shared>, event_id: EventId) -> Response<Bytes> {
    // What an earlier process left is read before this node writes a notification of its own:
    // else recovery would find this one pending and send it a second time.
    if let Err(error) = ensure_recovered(config).await {
        return store_unavailable(&error);
    }
    let event = match config.store.status(event_id).await {
        Ok(Some(EventSnapshot::Unfinished(event))) => event,
        Ok(Some(snapshot @ EventSnapshot::Finished(_))) => {
            return already_finished(event_id, &snapshot)
        }
        Ok(None) => return not_found(),
        Err(error) => return store_unavailable(&error),
    };
    let live = live(config, event_id).map(Box::new);
    let mut notification = job::notification(config, event, &Outcome::Cancelled);
    if live.is_some() {
        notification.progress = live;
    }
    let requested = notification.state == DeliveryState::Pending;
    match config.store.cancel(&notification).await {
        Ok(CancelClaim::Cancelled) => {}
        Ok(CancelClaim::Finished(Some(record))) => {
            return already_finished(event_id, &EventSnapshot::Finished(record))
        }
        Ok(CancelClaim::Finished(None)) => return not_found(),
        Err(error) => {
            tracing::error!(%error, "could not record a cancel");
            return json_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "store_unavailable",
                "The cancel could not be recorded; the event goes on. Retry later.",
            );
        }
    }
    tracing::info!(event_id = event_id.get(), "a client cancelled the event");
    if let Some(jobs) = &config.jobs {
        jobs.drop_job(event_id);
        jobs.ended(event_id);
    }
    config.counters.add(Counter::Cancelled);
    let snapshot = EventSnapshot::Finished(notification.clone());
    if requested {
        // Delivered in its own task: the answer does not wait for room under `max_in_flight`.
        let config = config.clone();
        tokio::spawn(async move {
            let permit = config.permit_for(notification.instance_id).await;
            permit.add(&config.counters, Counter::Pending);
            deliver(config.clone(), notification, permit, None).await;
        });
    }
    let (body, _) = body(event_id, &snapshot, None);
    respond(StatusCode::ACCEPTED, body, true)
}

fn already_finished(event_id: EventId, snapshot: &EventSnapshot) -> Response<Bytes> {
    let (mut body, finished) = body(event_id, snapshot, None);
    body.insert("code".into(), json!("already_finished"));
    body.insert(
        "message".into(),
        json!("The event has already ended; there is nothing to cancel."),
    );
    respond(StatusCode::CONFLICT, body, finished)
}
