use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use http::Response;
use pin_project_lite::pin_project;

use crate::wire::body::{OwnBody, ResponseBody};

type Dispatching = Pin<Box<dyn Future<Output = Response<OwnBody>> + Send>>;

pin_project! {
    /// Response future of [`AsyncRequest`](crate::layer::AsyncRequest).
    pub struct ResponseFuture<F, B> {
        #[pin]
        kind: Kind<F>,
        _body: PhantomData<fn() -> B>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F> {
        // The synchronous path: the inner service's own future.
        Inner { #[pin] future: F },
        // An accepted async request: reading the body, then spawning the job; yields the receipt.
        Dispatch { future: Dispatching },
    }
}

impl<F, B> ResponseFuture<F, B> {
    #[inline]
    pub(crate) fn inner(future: F) -> Self {
        Self {
            kind: Kind::Inner { future },
            _body: PhantomData,
        }
    }

    /// An answer decided in `call` (a refusal). Boxed like a dispatch: refusals are rare, and
    /// holding a whole response inline would make every passthrough future larger.
    pub(crate) fn answer(response: Response<OwnBody>) -> Self {
        Self::dispatch(Box::pin(std::future::ready(response)))
    }

    pub(crate) fn dispatch(future: Dispatching) -> Self {
        Self {
            kind: Kind::Dispatch { future },
            _body: PhantomData,
        }
    }
}

impl<F, B, E> Future for ResponseFuture<F, B>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<ResponseBody<B>>, E>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Inner { future } => {
                let response = ready!(future.poll(cx))?;
                Poll::Ready(Ok(response.map(ResponseBody::inner)))
            }
            KindProj::Dispatch { future } => {
                let response = ready!(future.as_mut().poll(cx));
                Poll::Ready(Ok(response.map(ResponseBody::own)))
            }
        }
    }
}

impl<F, B> std::fmt::Debug for ResponseFuture<F, B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = match &self.kind {
            Kind::Inner { .. } => "Inner",
            Kind::Dispatch { .. } => "Dispatch",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .finish()
    }
}
