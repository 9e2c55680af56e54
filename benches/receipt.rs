//! What an accepted async request costs until its receipt, next to the same router's synchronous
//! path: one client, in-process (`tower::ServiceExt::oneshot`), a tokio current-thread runtime.
//!
//! `cargo bench --bench receipt`
//!
//! Three functions in one group, so ratios can be read off directly:
//!
//! - `sync`: no async header; the handler's own `200` (the layer only looks at one header).
//! - `async_receipt`: `Elements-Async-Request: true` until the `202` receipt. Only the time to
//!   the receipt is counted; after each receipt the spawned job, the signed notification and the
//!   drained `ChannelSink` are left to finish (untimed), so every request starts with no backlog.
//! - `async_receipt_and_callback`: the same request plus everything it sets off (job,
//!   notification JSON, both signatures, channel, the draining task), timed until the callback is
//!   taken off the channel: what one async request costs the process in total on one core.
//!
//! - `async_receipt_instances`: `async_receipt` through a layer serving an `InstanceMap` of
//!   10 000 instances (each with its own URL and keys), the request's instance told by the
//!   `Element <token>` part of its `Authorization` header.
//!
//! Each iteration is one request; criterion reports elements/s. At the end, the receipt and the
//! whole event with 10 000 instances are also measured in turns against one static instance
//! (`support::interleaved`), and the ratios printed; with `--features metrics`, so are both with
//! the layer's metrics going to a Prometheus recorder against the same layer without one.

#[path = "support/mod.rs"]
mod support;

use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::{body::Body, routing::post, Router};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use http::{Request, StatusCode};
use tokio::runtime::Runtime;
use tower::ServiceExt;
use tower_async_request::instance::{Instance, InstanceMap};
use tower_async_request::{sink::ChannelSink, AsyncRequestLayer};

const ROUTE: &str = "/hubs/documents/folders/copy";

fn request(async_request: bool) -> Request<Body> {
    request_keyed(async_request, None)
}

/// The request, with an `Idempotency-Key` if given.
fn request_keyed(async_request: bool, key: Option<u64>) -> Request<Body> {
    let mut builder = Request::post(ROUTE)
        .header("content-type", "application/json")
        .header("accept", "application/json")
        .header(
            "authorization",
            "User abcdefghijklmnop, Element element-4711",
        )
        .header("user-agent", "bench/1.0");
    if async_request {
        builder = builder.header("Elements-Async-Request", "true");
    }
    if let Some(key) = key {
        builder = builder.header("Idempotency-Key", format!("\"copy-{key}\""));
    }
    builder
        .body(Body::from(r#"{"from":"/a","to":"/b"}"#))
        .unwrap()
}

const INSTANCES: u64 = 10_000;

/// `Authorization: User <secret>, Element element-<id>`.
fn element_of(parts: &http::request::Parts) -> Option<u64> {
    let value = parts
        .headers
        .get(http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let token = value
        .split(',')
        .find_map(|p| p.trim().strip_prefix("Element "))?;
    token.strip_prefix("element-")?.parse().ok()
}

/// The router behind the layer, and the count of callbacks the draining task has taken: one
/// static instance, or an `InstanceMap` of [`INSTANCES`].
fn make_app(many: bool) -> (Router, Arc<AtomicU64>) {
    let (sink, mut callbacks) = ChannelSink::new(65_536);
    let received = Arc::new(AtomicU64::new(0));
    let counter = received.clone();
    tokio::spawn(async move {
        while let Some(callback) = callbacks.recv().await {
            black_box(callback);
            counter.fetch_add(1, Ordering::Relaxed);
        }
    });
    let builder = if many {
        let instances = InstanceMap::new(element_of);
        for id in 0..INSTANCES {
            instances.insert(
                Instance::builder(id)
                    .callback_url(format!("https://hooks.example.com/in/{id}"))
                    .signing_key(format!("event-signature-key-{id}"))
                    .standard_webhooks_secret("whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD")
                    .build()
                    .unwrap(),
            );
        }
        AsyncRequestLayer::builder().instances(instances)
    } else {
        AsyncRequestLayer::builder()
            .instance_id(30)
            .default_callback_url("https://hooks.example.com/in")
            .signing_key("event-signature-key")
            .standard_webhooks_secret("whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD")
    };
    let layer = builder.max_in_flight(1 << 24).sink(sink).build().unwrap();
    let router = Router::new()
        .route(ROUTE, post(|| async { "ok" }))
        .layer(layer);
    (router, received)
}

/// Yields to the runtime until the draining task has seen `target` callbacks.
async fn drained(received: &AtomicU64, target: u64) {
    while received.load(Ordering::Relaxed) < target {
        tokio::task::yield_now().await;
    }
}

fn receipt(c: &mut Criterion) {
    let runtime: Runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (app, received) = runtime.block_on(async { make_app(false) });
    let (many, many_received) = runtime.block_on(async { make_app(true) });

    // One of each, checked, before anything is timed.
    runtime.block_on(async {
        let sync = app.clone().oneshot(request(false)).await.unwrap();
        assert_eq!(sync.status(), StatusCode::OK);
        let receipt = app.clone().oneshot(request(true)).await.unwrap();
        assert_eq!(receipt.status(), StatusCode::ACCEPTED);
        drained(&received, 1).await;
        let receipt = many.clone().oneshot(request(true)).await.unwrap();
        assert_eq!(receipt.status(), StatusCode::ACCEPTED);
        drained(&many_received, 1).await;
    });
    let mut sent = 1;
    let mut many_sent = 1;

    // `count` receipts through `app`, each followed by its (untimed) callback: the receipts' time,
    // or with `whole`, the time of everything.
    // With `keyed`, each request has a new `Idempotency-Key` (a first-time claim).
    let keyed_batch = |app: &Router,
                       received: &AtomicU64,
                       sent: &mut u64,
                       count: u32,
                       whole: bool,
                       keyed: bool| {
        runtime.block_on(async {
            let mut timed = Duration::ZERO;
            let start = Instant::now();
            for _ in 0..count {
                let receipt_start = Instant::now();
                let request = request_keyed(true, keyed.then_some(*sent));
                let response = app.clone().oneshot(request).await.unwrap();
                timed += receipt_start.elapsed();
                debug_assert_eq!(response.status(), StatusCode::ACCEPTED);
                black_box(response);
                *sent += 1;
                drained(received, *sent).await;
            }
            if whole {
                start.elapsed()
            } else {
                timed
            }
        })
    };

    let batch = |app: &Router, received: &AtomicU64, sent: &mut u64, count: u32, whole: bool| {
        keyed_batch(app, received, sent, count, whole, false)
    };

    let mut group = c.benchmark_group("receipt");
    group.throughput(Throughput::Elements(1));

    group.bench_function("sync", |b| {
        b.iter_custom(|iters| {
            runtime.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    let response = app.clone().oneshot(request(false)).await.unwrap();
                    debug_assert_eq!(response.status(), StatusCode::OK);
                    black_box(response);
                }
                start.elapsed()
            })
        })
    });

    group.bench_function("async_receipt", |b| {
        b.iter_custom(|iters| {
            runtime.block_on(async {
                let mut timed = Duration::ZERO;
                for _ in 0..iters {
                    let start = Instant::now();
                    let response = app.clone().oneshot(request(true)).await.unwrap();
                    timed += start.elapsed();
                    debug_assert_eq!(response.status(), StatusCode::ACCEPTED);
                    black_box(response);
                    sent += 1;
                    drained(&received, sent).await;
                }
                timed
            })
        })
    });

    group.bench_function("async_receipt_instances", |b| {
        b.iter_custom(|iters| batch(&many, &many_received, &mut many_sent, iters as u32, false))
    });

    group.bench_function("async_receipt_and_callback", |b| {
        b.iter_custom(|iters| {
            runtime.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    let response = app.clone().oneshot(request(true)).await.unwrap();
                    debug_assert_eq!(response.status(), StatusCode::ACCEPTED);
                    black_box(response);
                    sent += 1;
                    drained(&received, sent).await;
                }
                start.elapsed()
            })
        })
    });
    group.finish();

    for (what, whole) in [("receipt", false), ("receipt and callback", true)] {
        let ratio = support::interleaved_timed(
            || batch(&app, &received, &mut sent, 200, whole),
            || batch(&many, &many_received, &mut many_sent, 200, whole),
        );
        println!("{what}: InstanceMap of {INSTANCES} instances / one static instance = {ratio}");
    }

    // Receipts with a new Idempotency-Key each, in turns against receipts without (two apps
    // built alike, the memory store).
    let (keyed_app, keyed_received) = runtime.block_on(async { make_app(false) });
    let mut keyed_sent = 0;
    let ratio = support::interleaved_timed(
        || batch(&app, &received, &mut sent, 200, false),
        || {
            keyed_batch(
                &keyed_app,
                &keyed_received,
                &mut keyed_sent,
                200,
                false,
                true,
            )
        },
    );
    println!("receipt: with an Idempotency-Key / without = {ratio}");

    // With `--features metrics`: the same static app reporting to a Prometheus recorder, in
    // turns against `app`, whose facade handles were registered with no recorder (no-ops).
    #[cfg(feature = "metrics")]
    {
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let prometheus = recorder.handle();
        // The layer registers its handles when built: with this recorder, here.
        let (measured, measured_received) =
            metrics::with_local_recorder(&recorder, || runtime.block_on(async { make_app(false) }));
        let mut measured_sent = 0;
        for (what, whole) in [("receipt", false), ("receipt and callback", true)] {
            let ratio = support::interleaved_timed(
                || batch(&app, &received, &mut sent, 200, whole),
                || {
                    batch(
                        &measured,
                        &measured_received,
                        &mut measured_sent,
                        200,
                        whole,
                    )
                },
            );
            println!("{what}: metrics to a Prometheus recorder / no recorder = {ratio}");
        }
        let scrape = prometheus.render();
        let accepted = format!("async_request_accepted_total{{instance=\"30\"}} {measured_sent}");
        assert!(
            scrape.contains(&accepted),
            "the recorder saw every event:\n{scrape}"
        );
    }
}

criterion_group!(benches, receipt);
criterion_main!(benches);
