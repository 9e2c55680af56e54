//! The job: the inner service's work for one accepted event, run in a spawned task.
//!
//! [`run`] drives the inner response future (within the job timeout), catches a panic (the layer
//! keeps working), reads the response body up to `max_response_bytes`, and turns whatever
//! happened into an [`Outcome`]. [`conclude`] writes that outcome as the notification, records it
//! as pending, and hands it to delivery.

use std::any::Any;
use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Response, Uri};
use http_body::Body;
use http_body_util::LengthLimitError;
use pin_project_lite::pin_project;

use crate::admission::in_flight::Permit;
use crate::delivery::attempt::deliver;
use crate::error::BoxError;
use crate::event::notification::{FailureCode, Outcome};
use crate::event::shared::Shared;
use crate::metrics::Counter;
use crate::request::grpc;
use crate::store::{unix_ms, DeliveryState, EventRecord, NotificationRecord};
use crate::wire::body::{read_to_end, OwnBody};

/// A response the work produced, its body read in full.
#[derive(Debug)]
pub(crate) struct Completed {
    pub(crate) parts: http::response::Parts,
    pub(crate) body: Bytes,
    pub(crate) trailers: Option<http::HeaderMap>,
}

impl Completed {
    /// The outcome, when the response also goes elsewhere.
    pub(crate) fn outcome(&self) -> Outcome {
        let content_type = self.parts.headers.get(header::CONTENT_TYPE).cloned();
        self.outcome_with(content_type, self.body.clone())
    }

    /// The outcome, when it is all the response is for: its body and content type move into it.
    pub(crate) fn into_outcome(mut self) -> Outcome {
        let content_type = self.parts.headers.remove(header::CONTENT_TYPE);
        let body = std::mem::take(&mut self.body);
        self.outcome_with(content_type, body)
    }

    fn outcome_with(&self, content_type: Option<HeaderValue>, body: Bytes) -> Outcome {
        // A gRPC answer carries its message and its real status in trailers.
        let grpc = content_type
            .as_ref()
            .is_some_and(grpc::is_grpc_type)
            .then(|| grpc::status(&self.parts.headers, self.trailers.as_ref()))
            .map(|status| {
                status.unwrap_or(grpc::GrpcStatus {
                    code: 2,
                    message: None,
                })
            });
        Outcome::Completed {
            status: self.parts.status,
            content_type,
            body: if grpc.is_some() {
                grpc::unframe(&body)
            } else {
                body
            },
            grpc,
        }
    }

    pub(crate) fn into_response(self) -> Response<OwnBody> {
        Response::from_parts(self.parts, OwnBody::new(self.body, self.trailers))
    }
}

/// Runs the work behind one event, giving up after `timeout`: the response it produced, or the
/// `failed` outcome when it produced none.
pub(crate) async fn run<F, B, E>(
    work: F,
    max_response_bytes: usize,
    timeout: Option<Duration>,
) -> Result<Completed, Outcome>
where
    F: Future<Output = Result<Response<B>, E>>,
    B: Body,
    B::Error: Into<BoxError>,
    E: Into<BoxError>,
{
    let Some(limit) = timeout else {
        return run_to_end(work, max_response_bytes).await;
    };
    tokio::time::timeout(limit, run_to_end(work, max_response_bytes))
        .await
        .unwrap_or_else(|_| {
            Err(Outcome::failed(
                FailureCode::Timeout,
                format!("the job did not finish within {limit:?}"),
            ))
        })
}

/// The notification that ends `event` with `outcome`: pending, or not requested when the event
/// has no callback URL (the client polls the status endpoint).
pub(crate) fn notification(
    config: &Shared,
    event: EventRecord,
    outcome: &Outcome,
) -> NotificationRecord {
    let requested = !event.target.is_empty();
    let now = unix_ms();
    NotificationRecord {
        event_id: event.event_id,
        notification_id: event.notification_id,
        instance_id: event.instance_id,
        body: outcome.to_json(event.event_id, event.instance_id, event.notification_id),
        target: event.target,
        instance_url: event.instance_url,
        accepted_at_ms: event.accepted_at_ms,
        attempts: 0,
        history: Vec::new(),
        next_attempt_at_ms: now,
        last_error: None,
        state: if requested {
            DeliveryState::Pending
        } else {
            DeliveryState::NotRequested
        },
        retain_until_ms: now.saturating_add(config.delivery.retention.as_millis() as u64),
        progress: event.progress,
        trace: event.trace,
    }
}

/// Longest wait between two tries to record an outcome the store refused.
const MAX_FINISHED_WAIT: Duration = Duration::from_secs(5);

/// Ends an event: counts its outcome, records its notification as pending and delivers it.
/// `event.target` is the stored callback URL (empty: none); `parsed`, the same URL parsed, when
/// the caller has it at hand.
pub(crate) async fn conclude(
    config: &Arc<Shared>,
    event: EventRecord,
    parsed: Option<Uri>,
    outcome: Outcome,
    permit: Permit,
) {
    let counter = match outcome {
        Outcome::Completed { .. } => Counter::Completed,
        Outcome::Failed { .. } => Counter::Failed,
        Outcome::Cancelled => Counter::Cancelled,
    };
    let notification = notification(config, event, &outcome);
    let requested = notification.state == DeliveryState::Pending;
    // The inner body may be a slice of a larger buffer (a request's, say): let it go now rather
    // than hold it through a retry schedule of hours.
    drop(outcome);
    // A report the job made last and the store has not had yet goes first: the status answer
    // keeps showing it after the end. (Written only now, so that nothing else is held across it.)
    if let Some(progress) = &notification.progress {
        if let Err(error) = config.store.progress(notification.event_id, progress).await {
            tracing::debug!(%error, "could not record a job's last progress");
        }
    }
    // The outcome must be in the store before the first attempt (the store contract): were a
    // delivered `completed` unknown to the store, a crash could recover it into a contradicting
    // `interrupted`. While the store cannot take it, the notification waits.
    let mut wait = Duration::from_millis(100);
    loop {
        match config.store.finished(&notification).await {
            Ok(()) => break,
            Err(error) if error.is_superseded() => {
                // A client cancelled the event, or another node took it over and ends it; a
                // second outcome would contradict the first.
                tracing::warn!(%error, "the event has another outcome already; not delivering");
                return;
            }
            Err(error) => {
                tracing::error!(%error, retry_in = ?wait, "could not record a finished event; trying again before delivering");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(MAX_FINISHED_WAIT);
            }
        }
    }
    permit.add(&config.counters, counter);
    if let Some(jobs) = &config.jobs {
        jobs.ended(notification.event_id);
    }
    if requested {
        permit.add(&config.counters, Counter::Pending);
        deliver(config.clone(), notification, permit, parsed).await;
    }
}

async fn run_to_end<F, B, E>(work: F, max_response_bytes: usize) -> Result<Completed, Outcome>
where
    F: Future<Output = Result<Response<B>, E>>,
    B: Body,
    B::Error: Into<BoxError>,
    E: Into<BoxError>,
{
    let response = match CatchUnwind::new(work).await {
        Ok(Ok(response)) => response,
        Ok(Err(error)) => {
            return Err(Outcome::failed(
                FailureCode::InnerError,
                error.into().to_string(),
            ))
        }
        Err(panic) => return Err(panicked(panic)),
    };
    let (parts, body) = response.into_parts();
    if body.size_hint().lower() > max_response_bytes as u64 {
        return Err(too_large(max_response_bytes));
    }
    match CatchUnwind::new(read_to_end(body, max_response_bytes)).await {
        Ok(Ok((body, trailers))) => Ok(Completed {
            parts,
            body,
            trailers,
        }),
        Ok(Err(error)) if is_length_limit(&*error) => Err(too_large(max_response_bytes)),
        Ok(Err(error)) => Err(Outcome::failed(
            FailureCode::InnerError,
            format!("the response body failed: {error}"),
        )),
        Err(panic) => Err(panicked(panic)),
    }
}

/// Whether a body error is (or wraps, as `axum::Error` does) a length limit being hit.
pub(crate) fn is_length_limit(error: &(dyn std::error::Error + 'static)) -> bool {
    crate::error::wraps::<LengthLimitError>(error)
}

fn too_large(limit: usize) -> Outcome {
    Outcome::failed(
        FailureCode::ResponseTooLarge,
        format!("the response body is larger than the limit of {limit} bytes"),
    )
}

pub(crate) fn panicked(payload: Box<dyn Any + Send>) -> Outcome {
    // The payload may hold internals; it goes to the log, not to the receiver.
    let detail = payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("<non-string panic payload>");
    tracing::error!(
        panic = detail,
        "the inner service panicked while handling an async request"
    );
    Outcome::failed(FailureCode::Panic, "the request handler panicked")
}

pin_project! {
    /// Polls a future, turning a panic into `Err(payload)`.
    struct CatchUnwind<F> {
        #[pin]
        future: F,
    }
}

impl<F> CatchUnwind<F> {
    fn new(future: F) -> Self {
        Self { future }
    }
}

impl<F: Future> Future for CatchUnwind<F> {
    type Output = Result<F::Output, Box<dyn Any + Send>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let future = self.project().future;
        // A future that panicked is never polled again, so no broken invariant is observed.
        match catch_unwind(AssertUnwindSafe(|| future.poll(cx))) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(output)) => Poll::Ready(Ok(output)),
            Err(payload) => Poll::Ready(Err(payload)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::StatusCode;
    use http_body_util::Full;
    use std::convert::Infallible;

    async fn run_outcome<F, B, E>(work: F, max: usize, timeout: Option<Duration>) -> Outcome
    where
        F: Future<Output = Result<Response<B>, E>>,
        B: Body,
        B::Error: Into<BoxError>,
        E: Into<BoxError>,
    {
        match run(work, max, timeout).await {
            Ok(completed) => completed.into_outcome(),
            Err(failed) => failed,
        }
    }

    fn ok(body: &'static str) -> Result<Response<Full<Bytes>>, Infallible> {
        Ok(Response::builder()
            .status(StatusCode::CREATED)
            .header("content-type", "text/plain")
            .body(Full::new(Bytes::from_static(body.as_bytes())))
            .unwrap())
    }

    #[tokio::test]
    async fn a_response_becomes_completed_with_status_and_body() {
        match run_outcome(async { ok("done") }, 1024, None).await {
            Outcome::Completed {
                status,
                body,
                content_type,
                grpc: None,
            } => {
                assert_eq!(status, StatusCode::CREATED);
                assert_eq!(body, "done");
                assert_eq!(content_type.unwrap(), "text/plain");
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn a_grpc_answer_becomes_its_message_and_its_trailer_status() {
        let mut parts = Response::new(()).into_parts().0;
        parts
            .headers
            .insert(header::CONTENT_TYPE, "application/grpc".parse().unwrap());
        let mut trailers = http::HeaderMap::new();
        trailers.insert("grpc-status", "5".parse().unwrap());
        trailers.insert("grpc-message", "not%20found".parse().unwrap());
        let completed = Completed {
            parts,
            body: Bytes::from_static(&[0, 0, 0, 0, 2, 8, 1]),
            trailers: Some(trailers),
        };
        match completed.outcome() {
            Outcome::Completed {
                body,
                grpc: Some(grpc),
                ..
            } => {
                assert_eq!(body, Bytes::from_static(&[8, 1]));
                assert_eq!((grpc.code, grpc.message.as_deref()), (5, Some("not found")));
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[tokio::test]
    async fn an_inner_error_becomes_failed_inner_error() {
        let work = async { Err::<Response<Full<Bytes>>, _>(std::io::Error::other("db down")) };
        match run_outcome(work, 1024, None).await {
            Outcome::Failed { code, message } => {
                assert_eq!(code, FailureCode::InnerError);
                assert_eq!(message, "db down");
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_panic_becomes_failed_panic_without_leaking_the_payload() {
        let work = async {
            if true {
                panic!("secret internals");
            }
            ok("unreachable")
        };
        match run_outcome(work, 1024, None).await {
            Outcome::Failed { code, message } => {
                assert_eq!(code, FailureCode::Panic);
                assert!(!message.contains("secret"));
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_job_past_its_timeout_becomes_failed_timeout() {
        let work = async {
            tokio::time::sleep(Duration::from_secs(60)).await;
            ok("late")
        };
        let outcome = run_outcome(work, 1024, Some(Duration::from_secs(1))).await;
        assert!(
            matches!(
                outcome,
                Outcome::Failed {
                    code: FailureCode::Timeout,
                    ..
                }
            ),
            "{outcome:?}"
        );
    }

    #[tokio::test]
    async fn a_body_over_the_limit_becomes_response_too_large() {
        for limit in [3, 4] {
            let outcome = run_outcome(async { ok("12345") }, limit, None).await;
            assert!(
                matches!(
                    outcome,
                    Outcome::Failed {
                        code: FailureCode::ResponseTooLarge,
                        ..
                    }
                ),
                "{outcome:?}"
            );
        }
        assert!(matches!(
            run_outcome(async { ok("12345") }, 5, None).await,
            Outcome::Completed { .. }
        ));
    }
}
