//! The job: the inner service's work for one accepted event, run in a spawned task.
//!
//! It drives the inner response future, catches a panic (the layer keeps working), reads the
//! response body up to `max_response_bytes`, and turns whatever happened into an [`Outcome`] for
//! the notification.

use std::any::Any;
use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::task::{Context, Poll};

use http::{header, Response};
use http_body::Body;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use pin_project_lite::pin_project;

use crate::notification::{FailureCode, Outcome};
use crate::BoxError;

/// Runs the work behind one event to its outcome.
pub(crate) async fn run<F, B, E>(work: F, max_response_bytes: usize) -> Outcome
where
    F: Future<Output = Result<Response<B>, E>>,
    B: Body,
    B::Error: Into<BoxError>,
    E: Into<BoxError>,
{
    let response = match CatchUnwind::new(work).await {
        Ok(Ok(response)) => response,
        Ok(Err(error)) => {
            return Outcome::failed(FailureCode::InnerError, error.into().to_string())
        }
        Err(panic) => return panicked(panic),
    };
    let (parts, body) = response.into_parts();
    if body.size_hint().lower() > max_response_bytes as u64 {
        return too_large(max_response_bytes);
    }
    match CatchUnwind::new(Limited::new(body, max_response_bytes).collect()).await {
        Ok(Ok(collected)) => Outcome::Completed {
            status: parts.status,
            content_type: parts.headers.get(header::CONTENT_TYPE).cloned(),
            body: collected.to_bytes(),
        },
        Ok(Err(error)) if error.is::<LengthLimitError>() => too_large(max_response_bytes),
        Ok(Err(error)) => Outcome::failed(
            FailureCode::InnerError,
            format!("the response body failed: {error}"),
        ),
        Err(panic) => panicked(panic),
    }
}

fn too_large(limit: usize) -> Outcome {
    Outcome::failed(
        FailureCode::ResponseTooLarge,
        format!("the response body is larger than the limit of {limit} bytes"),
    )
}

fn panicked(payload: Box<dyn Any + Send>) -> Outcome {
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
    use bytes::Bytes;
    use http::StatusCode;
    use http_body_util::Full;
    use std::convert::Infallible;

    fn ok(body: &'static str) -> Result<Response<Full<Bytes>>, Infallible> {
        Ok(Response::builder()
            .status(StatusCode::CREATED)
            .header("content-type", "text/plain")
            .body(Full::new(Bytes::from_static(body.as_bytes())))
            .unwrap())
    }

    #[tokio::test]
    async fn a_response_becomes_completed_with_status_and_body() {
        match run(async { ok("done") }, 1024).await {
            Outcome::Completed {
                status,
                body,
                content_type,
            } => {
                assert_eq!(status, StatusCode::CREATED);
                assert_eq!(body, "done");
                assert_eq!(content_type.unwrap(), "text/plain");
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[tokio::test]
    async fn an_inner_error_becomes_failed_inner_error() {
        let work = async { Err::<Response<Full<Bytes>>, _>(std::io::Error::other("db down")) };
        match run(work, 1024).await {
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
        match run(work, 1024).await {
            Outcome::Failed { code, message } => {
                assert_eq!(code, FailureCode::Panic);
                assert!(!message.contains("secret"));
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_body_over_the_limit_becomes_response_too_large() {
        for limit in [3, 4] {
            let outcome = run(async { ok("12345") }, limit).await;
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
            run(async { ok("12345") }, 5).await,
            Outcome::Completed { .. }
        ));
    }
}
