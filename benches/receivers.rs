//! Isolation between receivers: does one receiver that hangs slow down the callbacks of the others?
//!
//! `cargo bench --all-features --bench receivers` (10 s per run), or
//! `cargo bench --all-features --bench receivers -- --short` (3 s per run). Options:
//! `--rate R` (async requests per second over all instances, default 1000), `--seconds S` (the
//! length of the offered load of each run, default 10; `--short` sets 3).
//!
//! Ten instances in one `InstanceMap` (the request's `x-instance` header names its instance),
//! each with its own `callback_url` pointing at its own receiver, a hyper server on
//! `127.0.0.1:0`. A healthy receiver reads each callback, notes when it arrived (per eventId, sent
//! to the bench over a channel) and answers `204` at once. The *hanging* receiver accepts TCP
//! connections and reads from them but never answers, keeping each socket open until the sender
//! closes it; it counts the connections open at once (and the most ever) and the eventIds it was
//! sent.
//!
//! The app is `AsyncRequestLayer` (the `InstanceMap`, `attempt_timeout(2 s)`, the default retry
//! schedule, `MemoryStore::new().max_retained(0)` so that delivered notifications are not kept
//! for status queries, see `benches/notification.rs`; everything else its default) over a
//! `service_fn` that answers a small JSON body at once, served by hyper on `127.0.0.1:0`. The
//! client offers load open-loop at a fixed rate (each request its own task, so a slow answer never
//! delays the next request), round-robin over the ten instances, through a pooled keep-alive
//! hyper client.
//!
//! Two runs, one after the other in one process, each with a fresh app and fresh receivers: all
//! ten receivers healthy, then receiver 0 hanging. For the nine receivers that are healthy in
//! both (1 to 9) the table gives delivered/s (callbacks delivered ÷ time from the first request
//! to the last receipt or the last of their callbacks, whichever is later, so requests refused
//! with `503` lower it) and the end-to-end latency (request sent → callback read by its receiver)
//! p50 / p99 / max, and the ratios of the hanging run to the healthy one. Isolation holds when
//! delivered/s stays ≥ 0.9 × and p99 ≤ 1.5 × the healthy run's. After the offered load, a run
//! waits (on the receivers' channel, at most 15 s) until the nine have every callback. The
//! hanging receiver's events also keep their places under the layer-wide `max_in_flight` (10 000
//! by default) while they wait for retries; a run long enough to fill it (about 10 000 ÷ (rate ÷
//! 10) seconds) shows the nine refused too.
//!
//! Sub-millisecond p99s move with anything else running on the machine: compare repeated runs on
//! a quiet one before reading much into a p99 ratio.
//!
//! Everything (client, app, receivers) shares one tokio runtime of 2 worker threads on loopback,
//! so the figures include the cost of the client and of the receivers.

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{header, Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::{JoinHandle, JoinSet};
use tower::Layer;
use tower_async_request::instance::{Instance, InstanceMap};
use tower_async_request::layer::RequestBody;
use tower_async_request::store::MemoryStore;
use tower_async_request::AsyncRequestLayer;

/// How many instances, each with its own receiver.
const INSTANCES: usize = 10;
/// The receiver that hangs in the second run.
const HANGING: usize = 0;
/// Instance ids are `FIRST_ID + receiver index`.
const FIRST_ID: u64 = 100;
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(2);
/// The longest a run waits, after its offered load, for the healthy receivers' last callbacks.
const DRAIN: Duration = Duration::from_secs(15);
/// Isolation holds when the hanging run keeps this share of the healthy run's delivered/s …
const MIN_RATE_RATIO: f64 = 0.9;
/// … and its p99 stays within this multiple of the healthy run's.
const MAX_P99_RATIO: f64 = 1.5;
const WORKERS: usize = 2;

const USAGE: &str =
    "usage: cargo bench --all-features --bench receivers -- [--rate R] [--seconds S] [--short]";

struct Options {
    rate: u64,
    seconds: f64,
}

impl Options {
    fn parse() -> Result<Self, String> {
        let mut options = Options {
            rate: 1000,
            seconds: 10.0,
        };
        let mut args = std::env::args().skip(1);
        while let Some(arg) = args.next() {
            let (name, inline) = match arg.split_once('=') {
                Some((name, value)) => (name.to_owned(), Some(value.to_owned())),
                None => (arg.clone(), None),
            };
            let mut value = |name: &str| {
                inline
                    .clone()
                    .or_else(|| args.next())
                    .ok_or_else(|| format!("{name} needs a value\n{USAGE}"))
            };
            match name.as_str() {
                // `cargo bench` appends `--bench`.
                "--bench" => {}
                "--short" => options.seconds = 3.0,
                "--rate" => {
                    let text = value("--rate")?;
                    options.rate = text
                        .parse()
                        .ok()
                        .filter(|rate| *rate > 0)
                        .ok_or_else(|| format!("--rate: not a positive number: {text:?}"))?;
                }
                "--seconds" => {
                    let text = value("--seconds")?;
                    options.seconds = text
                        .parse()
                        .ok()
                        .filter(|seconds: &f64| *seconds > 0.0)
                        .ok_or_else(|| format!("--seconds: not a positive number: {text:?}"))?;
                }
                "--help" | "-h" => return Err(USAGE.to_owned()),
                _ => return Err(format!("unexpected argument {arg:?}\n{USAGE}")),
            }
        }
        Ok(options)
    }

    fn command_line(&self) -> String {
        format!(
            "cargo bench --all-features --bench receivers -- --rate {} --seconds {}",
            self.rate, self.seconds
        )
    }
}

/// A server's accept loop. Dropped, it stops accepting and closes its connections (they are
/// tasks of a `JoinSet` the loop owns).
struct Served {
    address: SocketAddr,
    accept: JoinHandle<()>,
}

impl Drop for Served {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// Accepts connections on `127.0.0.1:0` and runs `connection` for each.
async fn serve<F, Fut>(connection: F) -> Served
where
    F: Fn(TcpStream) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("local address");
    let accept = tokio::spawn(async move {
        let mut connections = JoinSet::new();
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let _ = tcp.set_nodelay(true);
            connections.spawn(connection(tcp));
            while connections.try_join_next().is_some() {}
        }
    });
    Served { address, accept }
}

/// One callback as a healthy receiver read it: receiver index, eventId, when.
type Arrival = (usize, u64, Instant);

fn event_id_header(headers: &http::HeaderMap) -> Option<u64> {
    headers
        .get("elements-event-id")?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// A healthy receiver: reads each callback, reports it and answers `204` at once.
async fn healthy_receiver(
    index: usize,
    arrivals: mpsc::UnboundedSender<Arrival>,
    connections: Arc<AtomicU64>,
) -> Served {
    serve(move |tcp| {
        let arrivals = arrivals.clone();
        connections.fetch_add(1, Ordering::Relaxed);
        async move {
            let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                let arrivals = arrivals.clone();
                async move {
                    let event_id = event_id_header(request.headers());
                    // Read the whole callback, so the connection stays reusable.
                    let _ = request.into_body().collect().await;
                    if let Some(event_id) = event_id {
                        let _ = arrivals.send((index, event_id, Instant::now()));
                    }
                    Ok::<_, Infallible>(
                        Response::builder()
                            .status(StatusCode::NO_CONTENT)
                            .body(Empty::<Bytes>::new())
                            .unwrap(),
                    )
                }
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), service)
                .await;
        }
    })
    .await
}

/// What the hanging receiver saw.
#[derive(Default)]
struct Hanging {
    open: AtomicU64,
    max_open: AtomicU64,
    connections: AtomicU64,
    event_ids: Mutex<HashSet<u64>>,
}

/// The eventId in the head of a callback, from its `Elements-Event-Id` header.
fn event_id_in(head: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(head).ok()?;
    text.split("\r\n").find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.trim()
            .eq_ignore_ascii_case("elements-event-id")
            .then(|| value.trim().parse().ok())?
    })
}

/// A receiver that accepts and reads, but never answers; a connection stays open until the
/// sender closes it.
async fn hanging_receiver(seen: Arc<Hanging>) -> Served {
    serve(move |mut tcp| {
        let seen = seen.clone();
        async move {
            seen.connections.fetch_add(1, Ordering::Relaxed);
            let now = seen.open.fetch_add(1, Ordering::Relaxed) + 1;
            seen.max_open.fetch_max(now, Ordering::Relaxed);
            let mut head = Vec::new();
            let mut noted = false;
            let mut buffer = [0u8; 4096];
            loop {
                match tcp.read(&mut buffer).await {
                    Ok(0) | Err(_) => break,
                    Ok(read) => {
                        if !noted {
                            head.extend_from_slice(&buffer[..read]);
                            if let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") {
                                noted = true;
                                if let Some(id) = event_id_in(&head[..end]) {
                                    seen.event_ids.lock().unwrap().insert(id);
                                }
                            }
                        }
                    }
                }
            }
            seen.open.fetch_sub(1, Ordering::Relaxed);
        }
    })
    .await
}

/// The app: `AsyncRequestLayer` over a service that answers a small JSON body at once.
async fn app(instances: InstanceMap) -> Served {
    let layer = AsyncRequestLayer::builder()
        .instances(instances)
        .allow_private_callbacks(true)
        .attempt_timeout(ATTEMPT_TIMEOUT)
        .store(MemoryStore::new().max_retained(0))
        .build()
        .expect("layer");
    let inner = tower::service_fn(|_request: Request<RequestBody<Incoming>>| async {
        Ok::<_, Infallible>(
            Response::builder()
                .header(header::CONTENT_TYPE, "application/json")
                .body(Full::new(Bytes::from_static(br#"{"copied":true}"#)))
                .unwrap(),
        )
    });
    let service = layer.layer(inner);
    serve(move |tcp| {
        let service = TowerToHyperService::new(service.clone());
        async move {
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), service)
                .await;
        }
    })
    .await
}

/// What became of one request.
enum Sent {
    /// `202`: its instance index, eventId, and when the request was sent.
    Accepted(usize, u64, Instant),
    /// Any other status (say `503` overloaded): its instance index.
    Refused(usize),
    /// No answer, or a `202` without an eventId.
    Failed,
}

type HttpClient = Client<HttpConnector, Full<Bytes>>;

async fn send(client: HttpClient, app: SocketAddr, index: usize) -> Sent {
    let request = Request::post(format!("http://{app}/hubs/documents/folders/copy"))
        .header(header::CONTENT_TYPE, "application/json")
        .header("Elements-Async-Request", "true")
        .header("x-instance", (FIRST_ID + index as u64).to_string())
        .body(Full::new(Bytes::from_static(br#"{"from":"/a","to":"/b"}"#)))
        .unwrap();
    let sent = Instant::now();
    let Ok(response) = client.request(request).await else {
        return Sent::Failed;
    };
    let status = response.status();
    let event_id = event_id_header(response.headers());
    if response.into_body().collect().await.is_err() {
        return Sent::Failed;
    }
    match (status, event_id) {
        (StatusCode::ACCEPTED, Some(event_id)) => Sent::Accepted(index, event_id, sent),
        (StatusCode::ACCEPTED, None) => Sent::Failed,
        _ => Sent::Refused(index),
    }
}

/// The figures of one run.
#[derive(Default)]
struct Figures {
    /// Of the nine receivers that are healthy in both runs.
    accepted: u64,
    delivered: u64,
    delivered_per_s: f64,
    latencies: Vec<Duration>,
    /// Requests for the nine refused (not `202`).
    healthy_refused: u64,
    /// Of the whole run.
    refused: u64,
    failed: u64,
    /// Receiver 0's events: accepted, and (healthy) delivered or (hanging) attempted.
    first_accepted: u64,
    first_reached: u64,
    /// Receiver 0 hanging: connections opened to it, most open at once.
    hanging_connections: u64,
    hanging_max_open: u64,
    /// Connections the app opened to the nine.
    healthy_connections: u64,
    drained_in: Duration,
    /// From the first request to the last receipt.
    offered_for: Duration,
}

impl Figures {
    fn percentile(&self, p: f64) -> Option<Duration> {
        let sorted = &self.latencies;
        if sorted.is_empty() {
            return None;
        }
        let rank = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len());
        Some(sorted[rank - 1])
    }
}

async fn run(options: &Options, hang: bool) -> Figures {
    let (arrivals, mut arrived) = mpsc::unbounded_channel::<Arrival>();
    let healthy_connections = Arc::new(AtomicU64::new(0));
    let hanging = Arc::new(Hanging::default());
    let mut receivers = Vec::new();
    let instances =
        InstanceMap::new(|parts| parts.headers.get("x-instance")?.to_str().ok()?.parse().ok());
    for index in 0..INSTANCES {
        let receiver = if hang && index == HANGING {
            hanging_receiver(hanging.clone()).await
        } else {
            let connections = if index == HANGING {
                Arc::new(AtomicU64::new(0))
            } else {
                healthy_connections.clone()
            };
            healthy_receiver(index, arrivals.clone(), connections).await
        };
        instances.insert(
            Instance::builder(FIRST_ID + index as u64)
                .callback_url(format!("http://{}/callbacks", receiver.address))
                .signing_key(format!("receiver-{index}-signing-key"))
                .build()
                .expect("instance"),
        );
        receivers.push(receiver);
    }
    drop(arrivals);
    let app = app(instances).await;

    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client: HttpClient = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(256)
        .build(connector);

    // The offered load: request `i` is due at `i / rate` after the start, sent by a task of its
    // own.
    let total = (options.rate as f64 * options.seconds).round() as u64;
    let mut requests = JoinSet::new();
    let start = Instant::now();
    for i in 0..total {
        let due = start + Duration::from_secs_f64(i as f64 / options.rate as f64);
        if due > Instant::now() {
            tokio::time::sleep_until(due.into()).await;
        }
        requests.spawn(send(
            client.clone(),
            app.address,
            (i % INSTANCES as u64) as usize,
        ));
    }
    let mut figures = Figures::default();
    // (receiver index, eventId) → when its request was sent.
    let mut pending: HashMap<(usize, u64), Instant> = HashMap::new();
    while let Some(sent) = requests.join_next().await {
        match sent.expect("request task") {
            Sent::Accepted(index, event_id, at) => {
                pending.insert((index, event_id), at);
                if index == HANGING {
                    figures.first_accepted += 1;
                } else {
                    figures.accepted += 1;
                }
            }
            Sent::Refused(index) => {
                figures.refused += 1;
                if index != HANGING {
                    figures.healthy_refused += 1;
                }
            }
            Sent::Failed => figures.failed += 1,
        }
    }
    figures.offered_for = start.elapsed();

    // Wait for the healthy receivers' callbacks: every accepted event of the nine (and, when it
    // is healthy, of receiver 0).
    let mut outstanding = pending
        .keys()
        .filter(|(index, _)| !(hang && *index == HANGING))
        .count();
    let mut last = start;
    let deadline = tokio::time::Instant::now() + DRAIN;
    let drain_start = Instant::now();
    while outstanding > 0 {
        let Ok(Some((index, event_id, at))) =
            tokio::time::timeout_at(deadline, arrived.recv()).await
        else {
            break;
        };
        // Only the first delivery of each event counts (delivery is at least once).
        let Some(sent) = pending.remove(&(index, event_id)) else {
            continue;
        };
        outstanding -= 1;
        if index == HANGING {
            figures.first_reached += 1;
            continue;
        }
        figures.delivered += 1;
        figures.latencies.push(at.saturating_duration_since(sent));
        last = last.max(at);
    }
    figures.drained_in = drain_start.elapsed();
    // Over the offered load or until the last callback, whichever is longer: refused requests
    // (say `503` once `max_in_flight` is full) lower the rate instead of shortening the window.
    let window = (last - start).max(figures.offered_for);
    figures.delivered_per_s = figures.delivered as f64 / window.as_secs_f64().max(1e-9);
    figures.latencies.sort_unstable();
    figures.healthy_connections = healthy_connections.load(Ordering::Relaxed);
    if hang {
        figures.first_reached = hanging.event_ids.lock().unwrap().len() as u64;
        figures.hanging_connections = hanging.connections.load(Ordering::Relaxed);
        figures.hanging_max_open = hanging.max_open.load(Ordering::Relaxed);
    }
    drop(app);
    drop(receivers);
    figures
}

fn ms(duration: Option<Duration>) -> String {
    duration.map_or_else(
        || "-".to_owned(),
        |d| format!("{:.2} ms", d.as_secs_f64() * 1e3),
    )
}

fn ratio(ours: f64, theirs: f64) -> f64 {
    if theirs > 0.0 {
        ours / theirs
    } else {
        f64::NAN
    }
}

fn report(healthy: &Figures, hanging: &Figures) -> bool {
    let rate_ratio = ratio(hanging.delivered_per_s, healthy.delivered_per_s);
    let p99 = |f: &Figures| f.percentile(0.99).map_or(0.0, |d| d.as_secs_f64());
    let p99_ratio = ratio(p99(hanging), p99(healthy));
    let row = |name: &str, a: String, b: String, r: String| {
        println!("{name:<42} {a:>14} {b:>20}   {r}");
    };
    row(
        "",
        "all healthy".into(),
        format!("receiver {HANGING} hanging"),
        "ratio".into(),
    );
    row(
        "last receipt after",
        format!("{:.2} s", healthy.offered_for.as_secs_f64()),
        format!("{:.2} s", hanging.offered_for.as_secs_f64()),
        String::new(),
    );
    row(
        "all: refused (non-202) / failed requests",
        format!("{} / {}", healthy.refused, healthy.failed),
        format!("{} / {}", hanging.refused, hanging.failed),
        String::new(),
    );
    row(
        "nine healthy: refused",
        healthy.healthy_refused.to_string(),
        hanging.healthy_refused.to_string(),
        String::new(),
    );
    row(
        "nine healthy: accepted",
        healthy.accepted.to_string(),
        hanging.accepted.to_string(),
        String::new(),
    );
    row(
        "nine healthy: delivered",
        healthy.delivered.to_string(),
        hanging.delivered.to_string(),
        String::new(),
    );
    row(
        "nine healthy: delivered/s",
        format!("{:.1}", healthy.delivered_per_s),
        format!("{:.1}", hanging.delivered_per_s),
        format!("{rate_ratio:.3}  (want >= {MIN_RATE_RATIO})"),
    );
    for (name, p) in [("p50", 0.50), ("p99", 0.99)] {
        let r = if p == 0.99 {
            format!("{p99_ratio:.3}  (want <= {MAX_P99_RATIO})")
        } else {
            String::new()
        };
        row(
            &format!("nine healthy: e2e {name}"),
            ms(healthy.percentile(p)),
            ms(hanging.percentile(p)),
            r,
        );
    }
    row(
        "nine healthy: e2e max",
        ms(healthy.latencies.last().copied()),
        ms(hanging.latencies.last().copied()),
        String::new(),
    );
    row(
        "nine healthy: connections opened",
        healthy.healthy_connections.to_string(),
        hanging.healthy_connections.to_string(),
        String::new(),
    );
    row(
        "nine healthy: drained after load in",
        format!("{:.2} s", healthy.drained_in.as_secs_f64()),
        format!("{:.2} s", hanging.drained_in.as_secs_f64()),
        String::new(),
    );
    row(
        &format!("receiver {HANGING}: accepted"),
        healthy.first_accepted.to_string(),
        hanging.first_accepted.to_string(),
        String::new(),
    );
    row(
        &format!("receiver {HANGING}: delivered | attempted"),
        format!("{} delivered", healthy.first_reached),
        format!("{} attempted", hanging.first_reached),
        String::new(),
    );
    row(
        &format!("receiver {HANGING}: connections opened"),
        "-".into(),
        hanging.hanging_connections.to_string(),
        String::new(),
    );
    row(
        &format!("receiver {HANGING}: max connections at once"),
        "-".into(),
        hanging.hanging_max_open.to_string(),
        String::new(),
    );
    let complete = healthy.delivered == healthy.accepted
        && hanging.delivered == hanging.accepted
        && healthy.accepted > 0;
    let isolated = complete && rate_ratio >= MIN_RATE_RATIO && p99_ratio <= MAX_P99_RATIO;
    println!(
        "isolation: {} (delivered/s ratio {rate_ratio:.3} >= {MIN_RATE_RATIO}, p99 ratio \
         {p99_ratio:.3} <= {MAX_P99_RATIO}{})",
        if isolated { "HELD" } else { "NOT HELD" },
        if complete {
            ""
        } else {
            ", and every accepted callback delivered: not so"
        },
    );
    isolated
}

fn main() -> ExitCode {
    let options = match Options::parse() {
        Ok(options) => options,
        Err(message) => {
            eprintln!("{message}");
            return ExitCode::from(2);
        }
    };
    println!("reproduce: {}", options.command_line());
    println!(
        "{INSTANCES} instances, each with its own loopback receiver; {} async requests/s in all, \
         round-robin, open-loop, for {} s per run; attempt_timeout {} s, default retry schedule, \
         MemoryStore::new().max_retained(0), no receiver-health settings (the build's defaults); \
         one tokio runtime of {WORKERS} workers for client, app and receivers on {} CPU(s). \
         Run 1: all receivers healthy. Run 2: receiver {HANGING} accepts and never answers.",
        options.rate,
        options.seconds,
        ATTEMPT_TIMEOUT.as_secs(),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(WORKERS)
        .enable_all()
        .build()
        .expect("runtime");
    let healthy = runtime.block_on(run(&options, false));
    let hanging = runtime.block_on(run(&options, true));
    report(&healthy, &hanging);
    // The hanging run's notifications wait for retries hours away: do not wait for them.
    runtime.shutdown_background();
    ExitCode::SUCCESS
}
