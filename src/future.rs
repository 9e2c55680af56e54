use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use http::Response;
use pin_project_lite::pin_project;

use crate::body::{OwnBody, ResponseBody};

type Dispatching = Pin<Box<dyn Future<Output = Response<OwnBody>> + Send>>;

pin_project! {
    /// Response future of [`AsyncRequest`](crate::AsyncRequest).
    pub struct ResponseFuture<F, B> {
        #[pin]
        kind: Kind<F, B>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F, B> {
        // The synchronous path: the inner service's own future.
        Inner { #[pin] future: F },
        // A refusal decided in `call`.
        Answer { response: Option<Response<ResponseBody<B>>> },
        // An accepted async request: reading the body, then spawning the job; yields the receipt.
        Dispatch { future: Dispatching },
    }
}

impl<F, B> ResponseFuture<F, B> {
    #[inline]
    pub(crate) fn inner(future: F) -> Self {
        Self {
            kind: Kind::Inner { future },
        }
    }

    pub(crate) fn answer(response: Response<OwnBody>) -> Self {
        Self {
            kind: Kind::Answer {
                response: Some(response.map(ResponseBody::own)),
            },
        }
    }

    pub(crate) fn dispatch(future: Dispatching) -> Self {
        Self {
            kind: Kind::Dispatch { future },
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
            KindProj::Answer { response } => Poll::Ready(Ok(response
                .take()
                .expect("ResponseFuture polled after completion"))),
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
            Kind::Answer { .. } => "Answer",
            Kind::Dispatch { .. } => "Dispatch",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .finish()
    }
}
