use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use tower_service::Service;

use crate::error::BoxError;
use crate::event::dispatch::{dispatch, Accepted};
use crate::event::operation::serve;
use crate::event::shared::Shared;
use crate::layer::future::ResponseFuture;
use crate::request::classify::{classify, is_plain, Classification};
use crate::request::grpc::is_grpc;
use crate::request::prefer;
use crate::request::refusal::Refusal;
use crate::wire::body::{OwnBody, RequestBody, ResponseBody};

/// Middleware that runs requests asking for it as asynchronous requests.
///
/// Made by [`AsyncRequestLayer`](crate::AsyncRequestLayer); see the [crate docs](crate).
///
/// - No async header (or `false`): the request goes to the inner service untouched, its body
///   streamed, with the readiness the caller was granted.
/// - A valid async request: the body is read (up to `max_request_bytes`), the readied inner service
///   is called and its work spawned, and the caller gets the receipt at once.
/// - A malformed async request: a JSON `4xx` refusal; the inner service is not called.
pub struct AsyncRequest<S> {
    inner: S,
    config: Arc<Shared>,
}

impl<S> AsyncRequest<S> {
    pub(crate) fn new(inner: S, config: Arc<Shared>) -> Self {
        Self { inner, config }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Consumes the middleware, returning the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: Clone> Clone for AsyncRequest<S> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            config: self.config.clone(),
        }
    }
}

impl<S: fmt::Debug> fmt::Debug for AsyncRequest<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AsyncRequest")
            .field("inner", &self.inner)
            .field("config", &self.config)
            .finish()
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for AsyncRequest<S>
where
    S: Service<Request<RequestBody<ReqBody>>, Response = Response<ResBody>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    ReqBody: Body<Data = Bytes> + Send + 'static,
    ReqBody::Error: Into<BoxError>,
    ResBody: Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    type Response = Response<ResponseBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, ResBody>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    #[inline]
    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let config = &self.config;
        if is_plain(request.headers(), &config.classifier)
            && !config
                .status
                .as_ref()
                .is_some_and(|status| status.owns(request.method(), request.uri()))
        {
            ResponseFuture::inner(self.inner.call(request.map(RequestBody::streaming)))
        } else {
            self.call_classified(request)
        }
    }
}

impl<S> AsyncRequest<S> {
    /// Everything but a plain synchronous request: kept out of line so `call` stays small.
    #[inline(never)]
    fn call_classified<ReqBody, ResBody>(
        &mut self,
        request: Request<ReqBody>,
    ) -> ResponseFuture<S::Future, ResBody>
    where
        S: Service<Request<RequestBody<ReqBody>>, Response = Response<ResBody>>
            + Clone
            + Send
            + 'static,
        S::Future: Send + 'static,
        S::Error: Into<BoxError>,
        ReqBody: Body<Data = Bytes> + Send + 'static,
        ReqBody::Error: Into<BoxError>,
        ResBody: Body<Data = Bytes> + Send + 'static,
        ResBody::Error: Into<BoxError>,
    {
        if let Some(status) = &self.config.status {
            if status.owns(request.method(), request.uri()) {
                let config = self.config.clone();
                // Only what the answer needs is kept: a wait may be held for a minute.
                let wait = prefer::parse(request.headers()).wait;
                let (parts, _body) = request.into_parts();
                return ResponseFuture::dispatch(Box::pin(async move {
                    serve(config, parts.method, parts.uri, wait)
                        .await
                        .map(OwnBody::from)
                }));
            }
        }
        match classify(request.headers(), &self.config.classifier) {
            Classification::Passthrough => {
                ResponseFuture::inner(self.inner.call(request.map(RequestBody::streaming)))
            }
            Classification::Refuse(refusal) => {
                ResponseFuture::answer(refusal.respond(is_grpc(request.headers())))
            }
            Classification::Async {
                callback,
                wait,
                preferred,
            } => {
                let grpc = is_grpc(request.headers());
                if request.body().size_hint().lower() > self.config.max_request_bytes as u64 {
                    return ResponseFuture::answer(
                        Refusal::request_too_large(self.config.max_request_bytes).respond(grpc),
                    );
                }
                let permit = match self.config.runner.admit() {
                    Ok(permit) => permit,
                    Err(refusal) => return ResponseFuture::answer(refusal.respond(grpc)),
                };
                // Only the instance that was polled ready may be called: keep a fresh clone here
                // and hand the ready one to the dispatch, which calls it once the body is read.
                let fresh = self.inner.clone();
                let ready = std::mem::replace(&mut self.inner, fresh);
                let parent = tracing::Span::current();
                let accepted = Accepted {
                    callback,
                    wait,
                    preferred,
                    grpc,
                };
                #[cfg(feature = "opentelemetry")]
                {
                    use tracing::Instrument;
                    // The receipt's span, in the request's trace; the event keeps the trace.
                    let trace = self
                        .config
                        .delivery
                        .propagate_trace
                        .then(|| crate::delivery::trace::capture(request.headers()))
                        .flatten();
                    let receipt = tracing::info_span!(parent: &parent, "async_request_receipt");
                    crate::delivery::trace::follow(&receipt, trace.as_deref());
                    let config = self.config.clone();
                    let dispatching =
                        dispatch(ready, request, accepted, config, permit, parent, trace);
                    ResponseFuture::dispatch(Box::pin(dispatching.instrument(receipt)))
                }
                #[cfg(not(feature = "opentelemetry"))]
                ResponseFuture::dispatch(Box::pin(dispatch(
                    ready,
                    request,
                    accepted,
                    self.config.clone(),
                    permit,
                    parent,
                    None,
                )))
            }
        }
    }
}
