//! The synchronous path's fixtures, shared by `passthrough` and `passthrough_instructions`: one
//! request, one handler, the layer, and a poll-once executor.

use std::convert::Infallible;
use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use axum::{body::Body, routing::post, Router};
use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use tower_async_request::{sink::ChannelSink, AsyncRequestLayer};

/// Polls a future that completes without waiting (every service here does) to its output.
pub fn now<F: Future>(future: F) -> F::Output {
    let mut future = pin!(future);
    match future
        .as_mut()
        .poll(&mut Context::from_waker(Waker::noop()))
    {
        Poll::Ready(output) => output,
        Poll::Pending => panic!("the benchmarked service was expected to answer at once"),
    }
}

pub fn request() -> Request<Body> {
    Request::post("/hubs/documents/folders/copy")
        .header("content-type", "application/json")
        .header("accept", "application/json")
        .header("authorization", "Bearer abcdefghijklmnopqrstuvwxyz")
        .header("user-agent", "bench/1.0")
        .body(Body::from(r#"{"from":"/a","to":"/b"}"#))
        .unwrap()
}

pub fn layer() -> AsyncRequestLayer {
    // The sink is never used: no request here asks for the async path.
    let (sink, _callbacks) = ChannelSink::new(1);
    AsyncRequestLayer::builder()
        .default_callback_url("https://hooks.example.com/in")
        .signing_key("event-signature-key")
        .sink(sink)
        .build()
        .unwrap()
}

pub async fn handler<B>(_request: Request<B>) -> Result<http::Response<Full<Bytes>>, Infallible> {
    Ok(http::Response::new(Full::new(Bytes::from_static(b"ok"))))
}

/// The same axum route three ways.
pub struct Routers {
    pub bare: Router,
    /// Behind a layer that does nothing: what axum itself charges for any `Router::layer`.
    pub noop: Router,
    pub layered: Router,
}

pub fn routers() -> Routers {
    let route = || Router::new().route("/hubs/documents/folders/copy", post(|| async { "ok" }));
    Routers {
        bare: route(),
        noop: route().layer(tower::util::MapRequestLayer::new(
            |request: Request<Body>| request,
        )),
        layered: route().layer(layer()),
    }
}
