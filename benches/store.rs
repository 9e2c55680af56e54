//! Receipts per second with `MemoryStore` vs `RedbStore`, 32 concurrent clients, in-process.
//!
//! `cargo bench --features redb --bench store`
//!
//! Each iteration is one accepted async request until its receipt; the receipts of all clients
//! count together (criterion reports them as elements/s). Jobs and deliveries (to a drained
//! `ChannelSink`) run concurrently on the same runtime, as they would in an application.

use std::time::{Duration, Instant};

use axum::{body::Body, routing::post, Router};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use http::{Request, StatusCode};
use tower::ServiceExt;
use tower_async_request::{sink::ChannelSink, store::EventStore, AsyncRequestLayer};

const CLIENTS: u64 = 32;

fn app<T: EventStore>(store: T) -> Router {
    let (sink, mut callbacks) = ChannelSink::new(65_536);
    tokio::spawn(async move { while callbacks.recv().await.is_some() {} });
    let layer = AsyncRequestLayer::builder()
        .default_callback_url("https://hooks.example.com/in")
        .max_in_flight(1 << 24)
        .store(store)
        .sink(sink)
        .build()
        .unwrap();
    Router::new()
        .route("/work", post(|| async { "done" }))
        .layer(layer)
}

async fn receipts(app: &Router, total: u64) -> Duration {
    let start = Instant::now();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|client| {
            let app = app.clone();
            let count = total / CLIENTS + u64::from(client < total % CLIENTS);
            tokio::spawn(async move {
                for _ in 0..count {
                    let request = Request::post("/work")
                        .header("Elements-Async-Request", "true")
                        .body(Body::empty())
                        .unwrap();
                    let response = app.clone().oneshot(request).await.unwrap();
                    assert_eq!(response.status(), StatusCode::ACCEPTED);
                }
            })
        })
        .collect();
    for client in clients {
        client.await.unwrap();
    }
    start.elapsed()
}

fn store(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let mut group = c.benchmark_group("receipts_32_clients");
    group.throughput(Throughput::Elements(1));
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(8));

    let memory = runtime.block_on(async { app(tower_async_request::store::MemoryStore::new()) });
    group.bench_function("memory", |b| {
        b.iter_custom(|iters| runtime.block_on(receipts(&memory, iters)))
    });

    #[cfg(feature = "redb")]
    {
        let path = std::env::temp_dir().join(format!("tar-bench-{}.redb", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let redb = runtime
            .block_on(async { app(tower_async_request::store::RedbStore::open(&path).unwrap()) });
        group.bench_function("redb", |b| {
            b.iter_custom(|iters| runtime.block_on(receipts(&redb, iters)))
        });
        let _ = std::fs::remove_file(&path);
    }
    group.finish();
}

criterion_group!(benches, store);
criterion_main!(benches);
