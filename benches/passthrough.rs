//! What the layer costs a synchronous request (no async header): the same service bare and behind
//! `AsyncRequestLayer`, side by side, in-process.
//!
//! `cargo bench --bench passthrough`

use std::convert::Infallible;
use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use axum::{body::Body, routing::post, Router};
use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};
use http::Request;
use http_body_util::Full;
use tower::{Layer, Service};
use tower_async_request::{sink::ChannelSink, AsyncRequestLayer, RequestBody};

/// Polls a future that completes without waiting (every service here does) to its output.
fn now<F: Future>(future: F) -> F::Output {
    let mut future = pin!(future);
    match future
        .as_mut()
        .poll(&mut Context::from_waker(Waker::noop()))
    {
        Poll::Ready(output) => output,
        Poll::Pending => panic!("the benchmarked service was expected to answer at once"),
    }
}

fn request() -> Request<Body> {
    Request::post("/hubs/documents/folders/copy")
        .header("content-type", "application/json")
        .header("accept", "application/json")
        .header("authorization", "Bearer abcdefghijklmnopqrstuvwxyz")
        .header("user-agent", "bench/1.0")
        .body(Body::from(r#"{"from":"/a","to":"/b"}"#))
        .unwrap()
}

fn layer() -> AsyncRequestLayer {
    // The sink is never used: no request here asks for the async path.
    let (sink, _callbacks) = ChannelSink::new(1);
    AsyncRequestLayer::builder()
        .default_callback_url("https://hooks.example.com/in")
        .signing_key("event-signature-key")
        .sink(sink)
        .build()
        .unwrap()
}

async fn handler<B>(_request: Request<B>) -> Result<http::Response<Full<Bytes>>, Infallible> {
    Ok(http::Response::new(Full::new(Bytes::from_static(b"ok"))))
}

fn passthrough(c: &mut Criterion) {
    let mut group = c.benchmark_group("passthrough");

    let mut bare = Router::new().route("/hubs/documents/folders/copy", post(|| async { "ok" }));
    let mut layered = Router::new()
        .route("/hubs/documents/folders/copy", post(|| async { "ok" }))
        .layer(layer());
    // What axum itself charges for any layer added with `Router::layer` (a layer that does nothing).
    let mut noop = Router::new()
        .route("/hubs/documents/folders/copy", post(|| async { "ok" }))
        .layer(tower::util::MapRequestLayer::new(
            |request: Request<Body>| request,
        ));
    group.bench_function("axum_bare", |b| {
        b.iter(|| now(bare.call(request())).unwrap())
    });
    group.bench_function("axum_noop_layer", |b| {
        b.iter(|| now(noop.call(request())).unwrap())
    });
    group.bench_function("axum_layered", |b| {
        b.iter(|| now(layered.call(request())).unwrap())
    });

    let mut bare_fn = tower::service_fn(handler::<Body>);
    let mut layered_fn = layer().layer(tower::service_fn(handler::<RequestBody<Body>>));
    group.bench_function("service_fn_bare", |b| {
        b.iter(|| now(bare_fn.call(request())).unwrap())
    });
    group.bench_function("service_fn_layered", |b| {
        b.iter(|| now(layered_fn.call(request())).unwrap())
    });
    group.finish();
}

criterion_group!(benches, passthrough);
criterion_main!(benches);
