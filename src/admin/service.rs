use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use serde::Serialize;
use tower_service::Service;

use super::json;
use super::route::{route, Refused, Route, MAX_PAGE};
use crate::layer::handle::{AsyncRequestHandle, RedeliverError, Redelivered};
use crate::request::refusal::{json_error, json_response};
use crate::store::StoreError;

/// The admin service; see the [module docs](super). Cheap to clone.
#[derive(Debug, Clone)]
pub struct Admin {
    handle: AsyncRequestHandle,
}

impl Admin {
    /// The admin service of the layer `handle` controls.
    pub fn new(handle: AsyncRequestHandle) -> Self {
        Self { handle }
    }
}

/// The request's body is never read: no route takes one.
impl<B> Service<Request<B>> for Admin {
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = ResponseFuture;

    #[inline]
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let head = request.method() == Method::HEAD;
        let route = route(request.method(), request.uri());
        let handle = self.handle.clone();
        ResponseFuture {
            inner: Box::pin(async move {
                let mut response = match route {
                    Ok(route) => answer(&handle, route).await,
                    Err(refused) => refusal(&refused),
                };
                if head {
                    *response.body_mut() = Full::default();
                }
                response
            }),
        }
    }
}

/// The future of an [`Admin`] answer.
pub struct ResponseFuture {
    inner: Pin<Box<dyn Future<Output = Response<Full<Bytes>>> + Send>>,
}

impl fmt::Debug for ResponseFuture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl Future for ResponseFuture {
    type Output = Result<Response<Full<Bytes>>, Infallible>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.inner.as_mut().poll(cx).map(Ok)
    }
}

async fn answer(handle: &AsyncRequestHandle, route: Route) -> Response<Full<Bytes>> {
    match route {
        Route::Event(event_id) => match handle.event(event_id).await {
            Ok(Some(snapshot)) => respond(StatusCode::OK, &json::Event::of(&snapshot)),
            Ok(None) => refusal(&Refused::new(
                StatusCode::NOT_FOUND,
                "event_not_found",
                format!(
                    "No event {event_id} is known (or it was delivered and is past its retention)."
                ),
            )),
            Err(error) => store_unavailable(&error),
        },
        Route::DeadLetters(query) => match handle.dead_letter_page(query).await {
            Ok(page) => {
                let next = (page.len() >= query.limit)
                    .then(|| page.last().map(|last| last.notification_id))
                    .flatten();
                let body = json::DeadLetterPage {
                    dead_letters: page.iter().map(json::Event::finished).collect(),
                    next,
                };
                respond(StatusCode::OK, &body)
            }
            Err(error) => store_unavailable(&error),
        },
        Route::Redeliver(notification_id) => match handle.redeliver(notification_id).await {
            Ok(()) => respond(
                StatusCode::ACCEPTED,
                &json::RedeliveryStarted {
                    notification_id,
                    state: "pending",
                },
            ),
            Err(RedeliverError::NotFound) => refusal(&Refused::new(
                StatusCode::NOT_FOUND,
                "dead_letter_not_found",
                format!("No dead letter has notification id {notification_id}."),
            )),
            Err(error) => redeliver_failed(error),
        },
        Route::RedeliverAll { instance, limit } => {
            match handle.redeliver_dead_letters(instance, limit).await {
                Ok(done) => respond(StatusCode::ACCEPTED, &json::BulkRedelivery::from(&done)),
                Err(error) => redeliver_failed(error),
            }
        }
        Route::Receivers(query) => match handle.receivers(query.instance).await {
            Ok(all) => {
                let page: Vec<_> = all
                    .iter()
                    .filter(|receiver| {
                        query
                            .after
                            .as_ref()
                            .is_none_or(|after| receiver.id > *after)
                    })
                    .take(query.limit)
                    .collect();
                let next = (page.len() >= query.limit)
                    .then(|| page.last().map(|last| last.id.as_str()))
                    .flatten();
                let body = json::ReceiverPage {
                    receivers: page
                        .iter()
                        .map(|receiver| json::Receiver::from(*receiver))
                        .collect(),
                    next,
                };
                respond(StatusCode::OK, &body)
            }
            Err(error) => store_unavailable(&error),
        },
        Route::EnableReceiver { id, redeliver } => {
            let known = match handle.receivers(None).await {
                Ok(all) => all.iter().any(|receiver| receiver.id == id),
                Err(error) => return store_unavailable(&error),
            };
            let was_disabled = match handle.enable_receiver(&id).await {
                Ok(was) => was,
                Err(error) => return store_unavailable(&error),
            };
            if !known && !was_disabled {
                return refusal(&Refused::new(
                    StatusCode::NOT_FOUND,
                    "receiver_not_found",
                    format!("No receiver {id} is known here, nor disabled."),
                ));
            }
            let redelivered = if redeliver {
                match handle.redeliver_receiver(&id, MAX_PAGE).await {
                    Ok(done) => done,
                    Err(error) => return redeliver_failed(error),
                }
            } else {
                Redelivered::default()
            };
            respond(
                StatusCode::OK,
                &json::ReceiverEnabled {
                    id: &id,
                    state: "closed",
                    redelivered: &redelivered.notification_ids,
                    more: redelivered.more,
                },
            )
        }
        Route::Health => {
            let health = handle.health().await;
            let status = if health.is_ready() {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            respond(status, &json::HealthReport::from(&health))
        }
    }
}

fn redeliver_failed(error: RedeliverError) -> Response<Full<Bytes>> {
    match error {
        RedeliverError::Store(error) => store_unavailable(&error),
        _ => refusal(&Refused::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting_down",
            "The service is shutting down and starts no redelivery.",
        )),
    }
}

fn store_unavailable(error: &StoreError) -> Response<Full<Bytes>> {
    tracing::error!(%error, "the admin service could not read or write the store");
    refusal(&Refused::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "store_unavailable",
        "The event store could not be used. Retry later.",
    ))
}

fn refusal(refused: &Refused) -> Response<Full<Bytes>> {
    let mut response = json_error(refused.status, refused.code, &refused.message).map(Full::new);
    if let Some(allow) = refused.allow {
        response
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static(allow));
    }
    response
}

fn respond(status: StatusCode, body: &impl Serialize) -> Response<Full<Bytes>> {
    let body = serde_json::to_vec(body).expect("admin answers serialize");
    json_response(status, body).map(Full::new)
}
