//! An app whose async requests survive a crash: `RedbStore`, graceful shutdown on Ctrl-C or
//! SIGTERM, and recovery on start-up. The kill -9 test (`tests/kill9.rs`) runs it.
//!
//! ```sh
//! cargo run --features redb --example durable_worker -- \
//!     --db /tmp/async.redb --callback http://127.0.0.1:9000/hook [--retry-ms 5000,60000] \
//!     [--signing-key KEY]
//! ```
//!
//! With `--postgres URL [--schema NAME] [--lease-ms N] [--node-id N]` instead of `--db` (feature
//! `postgres`), the events live in PostgreSQL, shared with every other worker started so: a worker
//! that is killed has its work finished by another (`tests/postgres_failover.rs`).
//!
//! With `--signing-key`, the app serves its one tenant as an instance of an `InstanceMap`, so a
//! restart with another key shows that what was pending is signed with the instance's current key.
//!
//! `POST /work?ms=N` sleeps N milliseconds and answers `{"slept":N}`; send it with
//! `Elements-Async-Request: true`. A JSON body with a `seq` field (`{"seq":7}`) is echoed in the
//! answer, `{"slept":N,"seq":7}`, so a load client can tell its requests' notifications apart
//! (the chaos harness, `benches/chaos/`). The receipt's `Location` is the event's status
//! (`GET /events/{eventId}?token=…`, tokens made with `--status-secret S` or a fixed example
//! secret), which the crash tests read to tell when a notification was recorded as delivered.
//! The first line printed is `listening on <addr>`; the crate's log (`tracing`, debug and up, or
//! `--log info`) goes to stderr, one line per record, for the tests to read, after a line
//! `node <id>` on PostgreSQL. `--attempt-timeout-ms N` bounds each delivery attempt;
//! `--circuit-breaker FAILURES,COOL_DOWN_MS` and `--disable-receiver-after-ms N` set the
//! receivers' circuit breaker and when a failing receiver is disabled.
//! `--trace` (feature `opentelemetry`) records spans with W3C trace context, so each callback
//! carries its attempt's `traceparent` in the trace of the request's.

use std::io::Write;
use std::time::Duration;

use axum::{extract::Query, routing::post, Json, Router};
use serde_json::{json, Value};
use tower_async_request::instance::{Instance, InstanceMap};
#[cfg(feature = "postgres")]
use tower_async_request::store::PostgresStore;
use tower_async_request::{store::RedbStore, AsyncRequestLayer};

#[derive(serde::Deserialize)]
struct Work {
    #[serde(default)]
    ms: u64,
}

async fn work(Query(work): Query<Work>, body: axum::body::Bytes) -> Json<Value> {
    tokio::time::sleep(Duration::from_millis(work.ms)).await;
    let seq = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|body| body.get("seq").cloned());
    match seq {
        Some(seq) => Json(json!({ "slept": work.ms, "seq": seq })),
        None => Json(json!({ "slept": work.ms })),
    }
}

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("a SIGTERM handler");
        tokio::select! { _ = ctrl_c => {}, _ = term.recv() => {} }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    use tracing_subscriber::prelude::*;
    let level = match arg("--log").as_deref() {
        None | Some("debug") => tracing::Level::DEBUG,
        Some("info") => tracing::Level::INFO,
        Some(other) => return Err(format!("--log debug|info, not {other:?}").into()),
    };
    // With `--trace` (feature `opentelemetry`): W3C trace context and spans recorded (exported
    // nowhere), so callbacks carry `traceparent`.
    #[cfg(feature = "opentelemetry")]
    let traced = std::env::args().any(|arg| arg == "--trace").then(|| {
        use opentelemetry::trace::TracerProvider as _;
        opentelemetry::global::set_text_map_propagator(
            opentelemetry_sdk::propagation::TraceContextPropagator::new(),
        );
        let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
        tracing_opentelemetry::layer().with_tracer(provider.tracer("durable_worker"))
    });
    #[cfg(not(feature = "opentelemetry"))]
    let traced: Option<tracing_subscriber::layer::Identity> = None;
    tracing_subscriber::registry()
        .with(traced)
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(false),
        )
        .with(tracing_subscriber::filter::Targets::new().with_target("tower_async_request", level))
        .init();
    let callback = arg("--callback").ok_or("--callback URL is required")?;
    let schedule = arg("--retry-ms")
        .map(|list| {
            list.split(',')
                .map(|ms| ms.trim().parse().map(Duration::from_millis))
                .collect::<Result<Vec<_>, _>>()
        })
        .transpose()?;

    // A fixed status secret, so a status URL stays valid across this worker's restarts and on
    // every worker sharing a PostgreSQL store; a real app reads its own from configuration.
    let status_secret =
        arg("--status-secret").unwrap_or_else(|| "durable_worker example status secret".into());
    let mut builder = AsyncRequestLayer::builder()
        .status_endpoint("/events")
        .status_secret(status_secret);
    #[cfg(feature = "postgres")]
    let mut postgres = None;
    match (arg("--db"), arg("--postgres")) {
        (Some(db), None) => builder = builder.store(RedbStore::open(&db)?),
        #[cfg(feature = "postgres")]
        (None, Some(url)) => {
            let mut store = PostgresStore::builder(url);
            if let Some(schema) = arg("--schema") {
                store = store.schema(schema);
            }
            if let Some(ms) = arg("--lease-ms") {
                store = store.lease_timeout(Duration::from_millis(ms.parse()?));
            }
            if let Some(id) = arg("--node-id") {
                store = store.node_id(id.parse()?);
            }
            let store = std::sync::Arc::new(store.connect().await?);
            eprintln!("node {}", store.node_id());
            postgres = Some(store.clone());
            builder = builder.store(store);
        }
        _ => return Err("one of --db PATH or --postgres URL is required".into()),
    }
    builder = match arg("--signing-key") {
        Some(key) => {
            let instances = InstanceMap::new(|_| Some(30));
            instances.insert(
                Instance::builder(30)
                    .callback_url(callback)
                    .signing_key(key)
                    .build()?,
            );
            builder.instances(instances)
        }
        None => builder.instance_id(30).default_callback_url(callback),
    };
    if let Some(schedule) = schedule {
        builder = builder.retry_schedule(schedule);
    }
    if let Some(ms) = arg("--attempt-timeout-ms") {
        builder = builder.attempt_timeout(Duration::from_millis(ms.parse()?));
    }
    if let Some(breaker) = arg("--circuit-breaker") {
        let (failures, ms) = breaker
            .split_once(',')
            .ok_or("--circuit-breaker FAILURES,COOL_DOWN_MS")?;
        builder = builder.circuit_breaker(failures.parse()?, Duration::from_millis(ms.parse()?));
    }
    if let Some(ms) = arg("--disable-receiver-after-ms") {
        builder = builder.disable_receiver_after(Some(Duration::from_millis(ms.parse()?)));
    }
    let layer = builder.build()?;
    let handle = layer.handle();
    let app = Router::new().route("/work", post(work)).layer(layer);

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    println!("listening on {}", listener.local_addr()?);
    std::io::stdout().flush()?;
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown_signal())
        .await?;

    let report = handle.shutdown(Duration::from_secs(10)).await;
    println!("shutdown: {report:?}");
    #[cfg(feature = "postgres")]
    if let Some(store) = postgres {
        if !report.drained {
            store.leave().await?; // peers take over what is left at once
        }
    }
    Ok(())
}
