//! What the layer costs a synchronous request (no async header): the same service bare and behind
//! `AsyncRequestLayer`, side by side, in-process.
//!
//! `cargo bench --bench passthrough`
//!
//! Criterion measures each function on its own, one after the other; on a shared machine the
//! speed of the whole machine can change between two of them. So the bench ends with an
//! interleaved comparison as well: bare and layered take turns (bare, layered, layered, bare) in
//! rounds of a few thousand calls, and the median of the per-round ratios is printed.

use std::convert::Infallible;
use std::future::Future;
use std::hint::black_box;
use std::pin::pin;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

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

/// Calls `service` `calls` times with fresh requests; the elapsed time.
fn timed<S>(service: &mut S, calls: u32) -> Duration
where
    S: Service<Request<Body>>,
    S::Error: std::fmt::Debug,
{
    let start = Instant::now();
    for _ in 0..calls {
        black_box(now(service.call(request())).unwrap());
    }
    start.elapsed()
}

/// Layered ÷ bare, from rounds in which the two take turns (ABBA, so a drift in machine speed
/// within a round cancels out): the median round, and the middle half of the rounds.
fn interleaved<A, B>(bare: &mut A, layered: &mut B) -> (f64, f64, f64)
where
    A: Service<Request<Body>>,
    A::Error: std::fmt::Debug,
    B: Service<Request<Body>>,
    B::Error: std::fmt::Debug,
{
    const ROUNDS: usize = 41;
    const CALLS: u32 = 5_000;
    timed(bare, CALLS); // warm-up
    timed(layered, CALLS);
    let mut ratios: Vec<f64> = (0..ROUNDS)
        .map(|_| {
            let a = timed(bare, CALLS);
            let b = timed(layered, CALLS) + timed(layered, CALLS);
            let a = a + timed(bare, CALLS);
            b.as_secs_f64() / a.as_secs_f64()
        })
        .collect();
    ratios.sort_by(f64::total_cmp);
    (
        ratios[ROUNDS / 2],
        ratios[ROUNDS / 4],
        ratios[ROUNDS * 3 / 4],
    )
}

fn passthrough_interleaved(_: &mut Criterion) {
    let mut bare_fn = tower::service_fn(handler::<Body>);
    let mut layered_fn = layer().layer(tower::service_fn(handler::<RequestBody<Body>>));
    let mut bare = Router::new().route("/hubs/documents/folders/copy", post(|| async { "ok" }));
    let mut layered = Router::new()
        .route("/hubs/documents/folders/copy", post(|| async { "ok" }))
        .layer(layer());
    let mut noop = Router::new()
        .route("/hubs/documents/folders/copy", post(|| async { "ok" }))
        .layer(tower::util::MapRequestLayer::new(
            |request: Request<Body>| request,
        ));
    // For scale: tower-http's body-size limit, another layer that wraps both bodies, in front of
    // the same service.
    let mut limited_fn = tower_http::limit::RequestBodyLimitLayer::new(1 << 20).layer(
        tower::service_fn(handler::<tower_http::body::Limited<Body>>),
    );
    for (name, (median, low, high)) in [
        ("service_fn", interleaved(&mut bare_fn, &mut layered_fn)),
        (
            "service_fn_tower_http_limit",
            interleaved(&mut bare_fn, &mut limited_fn),
        ),
        ("axum", interleaved(&mut bare, &mut layered)),
        // What is left once axum's own charge for any `Router::layer` is taken out.
        ("axum_vs_noop_layer", interleaved(&mut noop, &mut layered)),
    ] {
        println!(
            "passthrough/interleaved/{name}: layered \u{f7} bare = {median:.3} \
             (median of 41 ABBA rounds of 4 \u{d7} 5 000 calls; middle half {low:.3}\u{2013}{high:.3})"
        );
    }
}

criterion_group!(benches, passthrough, passthrough_interleaved);
criterion_main!(benches);
