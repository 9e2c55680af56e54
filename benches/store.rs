//! The stores side by side: `MemoryStore`, `RedbStore` (feature `redb`) and `PostgresStore`
//! (feature `postgres`, on `DATABASE_URL` or the local server; one node and two nodes).
//!
//! `cargo bench --features redb,postgres --bench store` (`STORE_BENCH=paced`, `=full` or
//! `=keyed` runs one mode)
//!
//! - **Full load** (criterion): receipts per second, 32 concurrent clients, in-process. Each
//!   iteration is one accepted async request until its receipt; the receipts of all clients count
//!   together (elements/s). Jobs and deliveries (to a drained `ChannelSink`) run concurrently on
//!   the same runtime, as they would in an application.
//! - **Paced**: a fixed 200 events/s for 10 s (`PACED_SECS`, `PACED_RATE`) over real TCP on
//!   loopback: a client sends async requests to the app, the layer's `HttpSink` delivers each
//!   callback to a receiver. Printed per event: the process's CPU (`getrusage`; app, client and
//!   receiver are one process, the same for every store), the store's transactions and durable
//!   commits, and end-to-end latency (request sent → callback received), p50 and p99.
//! - **Keyed**: for each store, 32 clients' receipts with an `Idempotency-Key` each (a new,
//!   random-looking key per request: first-time claims) against receipts without, in turns on
//!   the same app (`support::interleaved_timed`); the ratio printed.

#[path = "support/mod.rs"]
mod support;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
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
    receipts_across(std::slice::from_ref(app), total).await
}

/// The clients spread over the nodes, one node per client.
async fn receipts_across(nodes: &[Router], total: u64) -> Duration {
    receipts_with(nodes, total, false).await
}

/// Keys no request has used before.
static NEXT_KEY: AtomicU64 = AtomicU64::new(0);

/// A key as clients make them (a random UUID's spread, not a counter's order, which would
/// flatter a store's index): 32 hex digits from `n`, mixed (splitmix64).
fn uuid_like(n: u64) -> String {
    let mix = |mut z: u64| {
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    let a = mix(n.wrapping_add(0x9e37_79b9_7f4a_7c15));
    format!("{a:016x}{:016x}", mix(a))
}

/// As [`receipts_across`]; with `keyed`, each request has an `Idempotency-Key` of its own.
async fn receipts_with(nodes: &[Router], total: u64, keyed: bool) -> Duration {
    let start = Instant::now();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|client| {
            let app = nodes[client as usize % nodes.len()].clone();
            let count = total / CLIENTS + u64::from(client < total % CLIENTS);
            tokio::spawn(async move {
                for _ in 0..count {
                    let mut request =
                        Request::post("/work").header("Elements-Async-Request", "true");
                    if keyed {
                        let key = uuid_like(NEXT_KEY.fetch_add(1, Ordering::Relaxed));
                        request = request.header("Idempotency-Key", format!("\"{key}\""));
                    }
                    let request = request.body(Body::empty()).unwrap();
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
    #[cfg(feature = "postgres")]
    {
        let schema = format!("tar_bench_{}", std::process::id());
        let nodes = runtime.block_on(async {
            let mut nodes = Vec::new();
            for _ in 0..2 {
                match postgres::store(&schema).await {
                    Some(store) => nodes.push(app(store)),
                    None => break,
                }
            }
            nodes
        });
        if nodes.len() == 2 {
            group.bench_function("postgres", |b| {
                b.iter_custom(|iters| runtime.block_on(receipts(&nodes[0], iters)))
            });
            group.bench_function("postgres_two_nodes", |b| {
                b.iter_custom(|iters| runtime.block_on(receipts_across(&nodes, iters)))
            });
        }
        drop(nodes);
        runtime.block_on(postgres::drop_schema(&schema));
    }
    group.finish();
}

/// A PostgreSQL server for the bench: `DATABASE_URL`, or the local default.
#[cfg(feature = "postgres")]
mod postgres {
    use tower_async_request::store::PostgresStore;

    fn url() -> String {
        std::env::var("DATABASE_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
    }

    /// A store (a node) on `schema`, or `None` with a line saying why.
    pub async fn store(schema: &str) -> Option<PostgresStore> {
        match PostgresStore::builder(url()).schema(schema).connect().await {
            Ok(store) => Some(store),
            Err(error) => {
                println!(
                    "postgres skipped: no server at {} ({error}); set DATABASE_URL",
                    url()
                );
                None
            }
        }
    }

    pub async fn drop_schema(schema: &str) {
        if let Ok((client, connection)) =
            tokio_postgres::connect(&url(), tokio_postgres::NoTls).await
        {
            tokio::spawn(connection);
            let _ = client
                .batch_execute(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"))
                .await;
        }
    }
}

/// Which modes to run: `STORE_BENCH=full|paced`, both by default.
fn runs(mode: &str) -> bool {
    std::env::var("STORE_BENCH").map_or(true, |only| only == mode)
}

fn full_load(c: &mut Criterion) {
    if runs("full") {
        store(c);
    }
}

/// Receipts with a new `Idempotency-Key` each against receipts without, in turns, per store.
fn keyed(_: &mut Criterion) {
    if !runs("keyed") {
        return;
    }
    const BATCH: u64 = 1000;
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let in_turns = |name: &str, app: &Router| {
        let nodes = std::slice::from_ref(app);
        let ratio = support::interleaved_timed(
            || runtime.block_on(receipts_with(nodes, BATCH, false)),
            || runtime.block_on(receipts_with(nodes, BATCH, true)),
        );
        println!("{name}, {CLIENTS} clients: receipts with an Idempotency-Key / without = {ratio}");
    };
    let memory = runtime.block_on(async { app(tower_async_request::store::MemoryStore::new()) });
    in_turns("memory", &memory);
    #[cfg(feature = "redb")]
    {
        let path =
            std::env::temp_dir().join(format!("tar-bench-keyed-{}.redb", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let redb = runtime
            .block_on(async { app(tower_async_request::store::RedbStore::open(&path).unwrap()) });
        in_turns("redb", &redb);
        drop(redb);
        let _ = std::fs::remove_file(&path);
    }
    #[cfg(feature = "postgres")]
    {
        let schema = format!("tar_bench_keyed_{}", std::process::id());
        if let Some(store) = runtime.block_on(postgres::store(&schema)) {
            let node = runtime.block_on(async { app(store) });
            in_turns("postgres", &node);
        }
        runtime.block_on(postgres::drop_schema(&schema));
    }
}

fn paced(_: &mut Criterion) {
    if !runs("paced") {
        return;
    }
    let env = |name: &str, default: u64| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let (secs, rate, rounds) = (
        env("PACED_SECS", 10),
        env("PACED_RATE", 200),
        env("PACED_ROUNDS", 3).max(1),
    );
    println!(
        "paced: {rate} events/s for {secs} s per store and round, {rounds} rounds (the order \
         turns each round), real TCP on loopback: client -> app (layer) -> HttpSink -> receiver, \
         one process; CPU is this process's (a database server's own is not in it)"
    );
    let header = || {
        println!(
            "{:<8} {:>7} {:>14} {:>14} {:>16} {:>10} {:>10}",
            "store", "events", "CPU/event", "txns/event", "durable/event", "e2e p50", "e2e p99"
        )
    };
    let redb_path = std::env::temp_dir().join(format!("tar-paced-{}.redb", std::process::id()));
    let schema = format!("tar_paced_{}", std::process::id());
    let mut names = vec!["memory"];
    if cfg!(feature = "redb") {
        names.push("redb");
    }
    if cfg!(feature = "postgres") {
        names.push("postgres");
    }
    // Per store, each round's row and its CPU per event over memory's in the same round.
    let mut table: Vec<(&str, Vec<(paced::Row, f64)>)> =
        names.iter().map(|name| (*name, Vec::new())).collect();
    for round in 0..rounds {
        let mut order = names.clone();
        if round % 2 == 1 {
            order.reverse();
        }
        let mut rows = Vec::new();
        for name in order {
            let row = match name {
                "memory" => paced::run(
                    "memory",
                    || async { Some(Arc::new(tower_async_request::store::MemoryStore::new())) },
                    secs,
                    rate,
                ),
                #[cfg(feature = "redb")]
                "redb" => {
                    let _ = std::fs::remove_file(&redb_path);
                    let open = || async {
                        Some(Arc::new(
                            tower_async_request::store::RedbStore::open(&redb_path).unwrap(),
                        ))
                    };
                    paced::run("redb", open, secs, rate)
                }
                #[cfg(feature = "postgres")]
                "postgres" => {
                    let open = || async { postgres::store(&schema).await.map(Arc::new) };
                    paced::run("postgres", open, secs, rate)
                }
                _ => None,
            };
            rows.extend(row);
        }
        let Some(memory) = rows
            .iter()
            .find(|row| row.name == "memory")
            .map(|r| r.cpu_per_event)
        else {
            continue;
        };
        println!("round {} of {rounds}:", round + 1);
        header();
        for row in rows {
            paced::print(&row, row.cpu_per_event / memory);
            let ratio = row.cpu_per_event / memory;
            if let Some((_, runs)) = table.iter_mut().find(|(name, _)| *name == row.name) {
                runs.push((row, ratio));
            }
        }
    }
    let _ = std::fs::remove_file(&redb_path);
    #[cfg(feature = "postgres")]
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(postgres::drop_schema(&schema));
    let _ = &schema;
    println!("median of {rounds} rounds (each figure's own median; ratio to memory per round):");
    header();
    for (_, runs) in &mut table {
        if runs.is_empty() {
            continue;
        }
        let median = |values: &mut Vec<f64>| {
            values.sort_by(f64::total_cmp);
            values[values.len() / 2]
        };
        let pick = |f: fn(&paced::Row) -> f64| -> f64 {
            median(&mut runs.iter().map(|(row, _)| f(row)).collect())
        };
        let ratio = median(&mut runs.iter().map(|(_, ratio)| *ratio).collect());
        let row = paced::Row {
            name: runs[0].0.name,
            events: runs[0].0.events,
            cpu_per_event: pick(|r| r.cpu_per_event),
            transactions_per_event: pick(|r| r.transactions_per_event),
            durable_per_event: pick(|r| r.durable_per_event),
            p50: pick(|r| r.p50),
            p99: pick(|r| r.p99),
        };
        paced::print(&row, ratio);
    }
}

/// The paced mode: a fixed rate of async requests over real TCP, callbacks to a real receiver.
mod paced {
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};

    use axum::{body::Bytes, extract::State, routing::post, Router};
    use http_body_util::{BodyExt, Full};
    use hyper_util::{client::legacy::Client, rt::TokioExecutor};
    use tokio::net::TcpListener;
    use tokio::sync::mpsc;
    use tower_async_request::{store::EventStore, AsyncRequestLayer};

    pub struct Row {
        pub name: &'static str,
        pub events: u64,
        /// Seconds of process CPU per event.
        pub cpu_per_event: f64,
        pub transactions_per_event: f64,
        pub durable_per_event: f64,
        /// Seconds, request sent to callback received.
        pub p50: f64,
        pub p99: f64,
    }

    /// User plus system CPU of the whole process so far, in seconds.
    #[allow(unsafe_code)]
    fn process_cpu() -> f64 {
        let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
        // SAFETY: getrusage writes a whole `rusage` into the pointer it is given.
        let usage = unsafe {
            assert_eq!(libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr()), 0);
            usage.assume_init()
        };
        let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
        seconds(usage.ru_utime) + seconds(usage.ru_stime)
    }

    async fn serve(router: Router) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
        format!("http://{addr}")
    }

    /// The receiver: reports each callback's event id and when it arrived.
    async fn receiver() -> (String, mpsc::UnboundedReceiver<(u64, Instant)>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let router = Router::new()
            .route(
                "/hook",
                post(
                    |State(tx): State<mpsc::UnboundedSender<(u64, Instant)>>, body: Bytes| async move {
                        let at = Instant::now();
                        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
                        let _ = tx.send((json["eventId"].as_u64().unwrap(), at));
                        "ok"
                    },
                ),
            )
            .with_state(tx);
        (format!("{}/hook", serve(router).await), rx)
    }

    /// One line of the table.
    pub fn print(row: &Row, ratio: f64) {
        println!(
            "{:<8} {:>7} {:>8.3} ms {:>4.2}x {:>14.2} {:>16.2} {:>7.2} ms {:>7.2} ms",
            row.name,
            row.events,
            row.cpu_per_event * 1e3,
            ratio,
            row.transactions_per_event,
            row.durable_per_event,
            row.p50 * 1e3,
            row.p99 * 1e3,
        );
    }

    /// Waits for `total` callbacks: when each event's arrived.
    async fn arrivals(
        callbacks: &mut mpsc::UnboundedReceiver<(u64, Instant)>,
        total: u64,
    ) -> HashMap<u64, Instant> {
        let mut arrived = HashMap::new();
        while (arrived.len() as u64) < total {
            let (id, at) = tokio::time::timeout(Duration::from_secs(30), callbacks.recv())
                .await
                .expect("every callback within 30 s")
                .unwrap();
            arrived.insert(id, at);
        }
        arrived
    }

    /// The paced run of the store `make` opens (on the run's own runtime); `None` if it opens none.
    pub fn run<T, F, Fut>(name: &'static str, make: F, secs: u64, rate: u64) -> Option<Row>
    where
        T: EventStore,
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Option<Arc<T>>>,
    {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let store = make().await?;
            let (hook, mut callbacks) = receiver().await;
            let layer = AsyncRequestLayer::builder()
                .default_callback_url(hook) // operator config: loopback is fine
                .store(store.clone())
                .build()
                .unwrap();
            let app = Router::new()
                .route("/work", post(|body: Bytes| async move { body }))
                .layer(layer);
            let url = format!("{}/work", serve(app).await);
            let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
            let payload = Bytes::from(format!(r#"{{"data":"{}"}}"#, "x".repeat(1000)));

            // One second to warm up (connections, allocator, the store's file), then the run.
            let send = |total: u64| {
                let (client, url, payload) = (client.clone(), url.clone(), payload.clone());
                async move {
                    let sent: Arc<Mutex<HashMap<u64, Instant>>> = Arc::default();
                    let mut ticks = tokio::time::interval(Duration::from_secs(1) / rate as u32);
                    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
                    for _ in 0..total {
                        ticks.tick().await;
                        let (client, url, payload, sent) =
                            (client.clone(), url.clone(), payload.clone(), sent.clone());
                        tokio::spawn(async move {
                            let request = http::Request::post(url)
                                .header("Elements-Async-Request", "true")
                                .header("content-type", "application/json")
                                .body(Full::new(payload))
                                .unwrap();
                            let at = Instant::now();
                            let response = client.request(request).await.unwrap();
                            assert_eq!(response.status(), 202);
                            let body = response.into_body().collect().await.unwrap().to_bytes();
                            let receipt: serde_json::Value = serde_json::from_slice(&body).unwrap();
                            let id = receipt["eventId"].as_u64().unwrap();
                            sent.lock().unwrap().insert(id, at);
                        });
                    }
                    sent
                }
            };
            send(rate).await;
            arrivals(&mut callbacks, rate).await;

            let total = secs * rate;
            let (stats, cpu) = (store.stats(), process_cpu());
            let sent = send(total).await;
            let arrived = arrivals(&mut callbacks, total).await;
            let (cpu, after) = (process_cpu() - cpu, store.stats());
            // A callback can overtake its receipt on the way back to the client.
            while (sent.lock().unwrap().len() as u64) < total {
                tokio::task::yield_now().await;
            }
            let sent = sent.lock().unwrap();
            let mut latencies: Vec<f64> = arrived
                .iter()
                .map(|(id, at)| at.duration_since(sent[id]).as_secs_f64())
                .collect();
            latencies.sort_by(f64::total_cmp);
            let per_event = |n: u64| n as f64 / total as f64;
            Some(Row {
                name,
                events: total,
                cpu_per_event: cpu / total as f64,
                transactions_per_event: per_event(after.transactions - stats.transactions),
                durable_per_event: per_event(after.durable_commits - stats.durable_commits),
                p50: latencies[latencies.len() / 2],
                p99: latencies[latencies.len() * 99 / 100],
            })
        })
    }
}

criterion_group!(benches, full_load, paced, keyed);
criterion_main!(benches);
