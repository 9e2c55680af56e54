//! Load harness (not criterion): real TCP on 127.0.0.1, an app behind `AsyncRequestLayer`, a
//! callback receiver and a pooled keep-alive client, all in this process.
//!
//! ```sh
//! cargo bench --bench load                                   # defaults, well under 2 minutes
//! cargo bench --bench load -- --duration-secs 3 --pending-events 20000
//! cargo bench --features redb --bench load -- --store redb
//! cargo bench --bench load -- --shape processes               # app, client, receiver: 3 processes
//! cargo bench --bench load -- --shape processes --rate 200    # paced, 200 requests/events per s
//! ```
//!
//! `--shape processes` is the shape of a deployment: the harness (the client) starts this same
//! binary twice more, as the app (`--role app`) and the receiver (`--role receiver`), each in a
//! process of its own, and stops them at the end. Per side it reports CPU time and context
//! switches from `/proc/<pid>/task/*`, and the app's allocations and bytes allocated per request
//! and per event (a counting allocator in this binary, counting in the app's process only).
//! `LOAD_APP_WRAPPER="heaptrack -o /tmp/app"` (or `perf record -g -o … --`) runs the app under a
//! profiler. Phase (c) runs in the in-process shape only.
//!
//! Phases, each bounded by a count and a time, so the run ends by itself. (a) and (b) run
//! `--rounds` times, alternately, and the table shows the round whose callbacks/s ÷ sync req/s is
//! the median (every round's ratio is printed too): on a machine shared with other tenants, a
//! neighbour that slows one phase then moves one round, not the result.
//!
//! - (a) sync: `POST /work` without the async header for `--duration-secs`: requests/s, latency.
//! - (b) async: the same route with `Elements-Async-Request: true` and a callback URL naming the
//!   receiver, for `--duration-secs`: receipts/s, receipt latency p50/p99, callbacks delivered/s
//!   and end-to-end latency (request sent → callback received, matched by eventId) p50/p99. The
//!   run then waits (at most `--drain-secs`) for the callbacks still on their way.
//! - (c) memory per pending event: a second app whose callback URL is a closed port on 127.0.0.1,
//!   `retry_schedule([1 h])`, `max_in_flight(200_000)`. `--pending-events` async requests each fail
//!   their first delivery and wait; VmRSS (from /proc/self/status) after minus before, divided by
//!   the events, less the payload each one carries.
//!
//! Options are `--name value` arguments or environment variables (arguments win):
//! `--shape in-process|processes` / `LOAD_SHAPE` (in-process), `--rate` / `LOAD_RATE` (requests or
//! events per second over all connections, 0 for as many as the app takes; default 0),
//! `--concurrency` / `LOAD_CONCURRENCY` (client tasks, default 32), `--rounds` / `LOAD_ROUNDS` (3),
//! `--duration-secs` / `LOAD_DURATION_SECS` (of each phase (a) and (b) in a round, 4),
//! `--payload-bytes` / `LOAD_PAYLOAD_BYTES` (1024), `--pending-events` /
//! `LOAD_PENDING_EVENTS` (100000), `--store memory|redb` / `LOAD_STORE` (memory; redb needs
//! `--features redb`), `--signatures both|elements` / `LOAD_SIGNATURES` (both: the Elements and the
//! Standard Webhooks signature on every callback, the default; elements: the first only),
//! `--threads` / `LOAD_THREADS` (runtime worker threads, default the number of
//! CPUs), `--max-requests` / `LOAD_MAX_REQUESTS` (per phase, 10000000), `--drain-secs` /
//! `LOAD_DRAIN_SECS` (10), `--memory-secs` / `LOAD_MEMORY_SECS` (time cap of phase (c), 45).
//!
//! The app (`--threads` workers), the client (1 thread) and the receiver (1 thread) run on tokio
//! runtimes of their own and compete for the same cores: every rate is what the app achieves
//! while also paying for its load generator and its receiver, a lower bound for the app alone.
//! Because each runtime's threads are known, the CPU time of each side is counted apart
//! (`/proc/self/task/*/schedstat`): the table also gives CPU per request and per event for the
//! app, the client and the receiver, and the app's own ratio (CPU per sync request ÷ CPU per
//! async event, at best 0.5), which does not depend on where the client and receiver run.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::hint::black_box;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::routing::post;
use axum::serve::ListenerExt;
use axum::Router;
use bytes::Bytes;
use http::{header, HeaderMap, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::net::TcpListener;
use tower_async_request::verify::ElementsVerifier;
use tower_async_request::{AsyncRequestHandle, AsyncRequestLayer, AsyncRequestLayerBuilder};

#[path = "../support/counting_alloc.rs"]
mod counting_alloc;

/// Counts only in the app's own process (`--shape processes`); see `counting_alloc`.
#[global_allocator]
static ALLOCATOR: counting_alloc::Counting = counting_alloc::Counting;

const SIGNING_KEY: &str = "event-signature-key";
const WHSEC: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
const PHASE_C_MAX_IN_FLIGHT: usize = 200_000;

// ---------------------------------------------------------------------------------------------
// Options

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StoreKind {
    Memory,
    Redb,
    Postgres,
}

/// Which signatures each callback carries (the receiver checks the Elements one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Signatures {
    /// `Elements-Webhook-Signature` and the Standard Webhooks headers: the costly case.
    Both,
    /// `Elements-Webhook-Signature` only.
    Elements,
}

/// Where the app, the load client and the receiver run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    /// One process, a tokio runtime each.
    InProcess,
    /// Three processes (the app and the receiver started by the harness, which is the client):
    /// the shape of a deployment.
    Processes,
}

/// What a process started by the harness is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    App,
    Receiver,
}

#[derive(Debug, Clone)]
struct Options {
    shape: Shape,
    /// Requests (sync) and events (async) per second, spread over the connections; 0: as many
    /// as the app takes.
    rate: u64,
    role: Option<Role>,
    concurrency: usize,
    rounds: u64,
    duration_secs: u64,
    payload_bytes: usize,
    pending_events: u64,
    store: StoreKind,
    signatures: Signatures,
    threads: usize,
    max_requests: u64,
    drain_secs: u64,
    memory_secs: u64,
}

const USAGE: &str =
    "usage: cargo bench --bench load -- [--shape in-process|processes] [--rate R] [--concurrency N] [--rounds R] [--duration-secs D] \
[--payload-bytes P] [--pending-events K] [--store memory|redb|postgres] [--signatures both|elements] \
[--threads T] [--max-requests M] [--drain-secs S] [--memory-secs S]   (or env LOAD_CONCURRENCY, \
LOAD_DURATION_SECS, …)";

impl Options {
    fn parse() -> Result<Self, String> {
        let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
        let mut values: HashMap<String, String> = HashMap::new();
        for (name, env) in [
            ("shape", "LOAD_SHAPE"),
            ("rate", "LOAD_RATE"),
            ("concurrency", "LOAD_CONCURRENCY"),
            ("rounds", "LOAD_ROUNDS"),
            ("duration-secs", "LOAD_DURATION_SECS"),
            ("payload-bytes", "LOAD_PAYLOAD_BYTES"),
            ("pending-events", "LOAD_PENDING_EVENTS"),
            ("store", "LOAD_STORE"),
            ("signatures", "LOAD_SIGNATURES"),
            ("threads", "LOAD_THREADS"),
            ("max-requests", "LOAD_MAX_REQUESTS"),
            ("drain-secs", "LOAD_DRAIN_SECS"),
            ("memory-secs", "LOAD_MEMORY_SECS"),
        ] {
            if let Ok(value) = std::env::var(env) {
                values.insert(name.to_owned(), value);
            }
        }
        let mut args = std::env::args().skip(1);
        while let Some(arg) = args.next() {
            // `cargo bench` appends `--bench`; a harness that is not criterion ignores it.
            if arg == "--bench" {
                continue;
            }
            if arg == "--help" || arg == "-h" {
                return Err(USAGE.to_owned());
            }
            let Some(name) = arg.strip_prefix("--") else {
                return Err(format!("unexpected argument {arg:?}\n{USAGE}"));
            };
            let (name, value) = match name.split_once('=') {
                Some((name, value)) => (name.to_owned(), value.to_owned()),
                None => {
                    let value = args
                        .next()
                        .ok_or_else(|| format!("--{name} needs a value\n{USAGE}"))?;
                    (name.to_owned(), value)
                }
            };
            values.insert(name, value);
        }
        let store =
            match values.remove("store").as_deref() {
                None | Some("memory") => StoreKind::Memory,
                Some("redb") if cfg!(feature = "redb") => StoreKind::Redb,
                Some("redb") => return Err(
                    "--store redb needs the redb feature: cargo bench --features redb --bench load"
                        .to_owned(),
                ),
                Some("postgres") if cfg!(feature = "postgres") => StoreKind::Postgres,
                Some("postgres") => return Err(
                    "--store postgres needs the postgres feature (and DATABASE_URL, or the local \
                     server): cargo bench --features postgres --bench load"
                        .to_owned(),
                ),
                Some(other) => {
                    return Err(format!("--store: memory, redb or postgres, not {other:?}"))
                }
            };
        let shape = match values.remove("shape").as_deref() {
            None | Some("in-process") => Shape::InProcess,
            Some("processes") => Shape::Processes,
            Some(other) => return Err(format!("--shape: in-process or processes, not {other:?}")),
        };
        let role = match values.remove("role").as_deref() {
            None => None,
            Some("app") => Some(Role::App),
            Some("receiver") => Some(Role::Receiver),
            Some(other) => return Err(format!("--role: app or receiver, not {other:?}")),
        };
        let signatures = match values.remove("signatures").as_deref() {
            None | Some("both") => Signatures::Both,
            Some("elements") => Signatures::Elements,
            Some(other) => return Err(format!("--signatures: both or elements, not {other:?}")),
        };
        let mut take = |name: &str, default: u64| -> Result<u64, String> {
            match values.remove(name) {
                None => Ok(default),
                Some(text) => text
                    .parse()
                    .map_err(|_| format!("--{name}: not a number: {text:?}")),
            }
        };
        let options = Options {
            shape,
            rate: take("rate", 0)?,
            role,
            concurrency: take("concurrency", 32)?.max(1) as usize,
            rounds: take("rounds", 3)?.max(1),
            duration_secs: take("duration-secs", 4)?.max(1),
            payload_bytes: take("payload-bytes", 1024)? as usize,
            pending_events: take("pending-events", 100_000)?,
            threads: take("threads", cpus as u64)?.max(1) as usize,
            max_requests: take("max-requests", 10_000_000)?.max(1),
            drain_secs: take("drain-secs", 10)?,
            memory_secs: take("memory-secs", 45)?.max(1),
            store,
            signatures,
        };
        if let Some(unknown) = values.keys().next() {
            return Err(format!("unknown option --{unknown}\n{USAGE}"));
        }
        Ok(options)
    }

    /// The command that reproduces this run, every option spelled out.
    fn command_line(&self) -> String {
        let features = match self.store {
            StoreKind::Memory => "",
            StoreKind::Redb => " --features redb",
            StoreKind::Postgres => " --features postgres",
        };
        let store = match self.store {
            StoreKind::Memory => "memory",
            StoreKind::Redb => "redb",
            StoreKind::Postgres => "postgres",
        };
        let signatures = match self.signatures {
            Signatures::Both => "both",
            Signatures::Elements => "elements",
        };
        let shape = match self.shape {
            Shape::InProcess => "in-process",
            Shape::Processes => "processes",
        };
        format!(
            "cargo bench{features} --bench load -- --shape {shape} --rate {} --concurrency {} \
             --rounds {} --duration-secs {} \
             --payload-bytes {} --pending-events {} --store {store} --signatures {signatures} \
             --threads {} --max-requests {} --drain-secs {} --memory-secs {}",
            self.rate,
            self.concurrency,
            self.rounds,
            self.duration_secs,
            self.payload_bytes,
            self.pending_events,
            self.threads,
            self.max_requests,
            self.drain_secs,
            self.memory_secs,
        )
    }
}

// ---------------------------------------------------------------------------------------------
// The app and the receiver

/// Files of redb stores made by this run, removed at the end.
static STORE_FILES: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// PostgreSQL schemas made by this run, dropped at the end.
#[cfg_attr(not(feature = "postgres"), allow(dead_code))]
static STORE_SCHEMAS: Mutex<Vec<String>> = Mutex::new(Vec::new());

#[cfg_attr(not(feature = "postgres"), allow(dead_code))]
fn database_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

async fn with_store(
    builder: AsyncRequestLayerBuilder,
    store: StoreKind,
    tag: &str,
) -> AsyncRequestLayerBuilder {
    match store {
        StoreKind::Memory => builder, // MemoryStore is the default
        #[cfg(feature = "redb")]
        StoreKind::Redb => {
            let path = std::env::temp_dir().join(format!(
                "tower-async-request-load-{}-{tag}.redb",
                std::process::id()
            ));
            let _ = std::fs::remove_file(&path);
            let opened = tower_async_request::store::RedbStore::open(&path).expect("open redb");
            STORE_FILES.lock().unwrap().push(path);
            builder.store(opened)
        }
        #[cfg(not(feature = "redb"))]
        StoreKind::Redb => unreachable!("rejected by Options::parse ({tag})"),
        #[cfg(feature = "postgres")]
        StoreKind::Postgres => {
            let schema = format!("tar_load_{}_{tag}", std::process::id());
            let opened = tower_async_request::store::PostgresStore::builder(database_url())
                .schema(schema.clone())
                .connect()
                .await
                .expect("a PostgreSQL server at DATABASE_URL (or the local default)");
            STORE_SCHEMAS.lock().unwrap().push(schema);
            builder.store(opened)
        }
        #[cfg(not(feature = "postgres"))]
        StoreKind::Postgres => unreachable!("rejected by Options::parse ({tag})"),
    }
}

/// Drops the schemas this run made.
#[cfg(feature = "postgres")]
fn drop_schemas() {
    let schemas: Vec<String> = STORE_SCHEMAS.lock().unwrap().drain(..).collect();
    if schemas.is_empty() {
        return;
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        if let Ok((client, connection)) =
            tokio_postgres::connect(&database_url(), tokio_postgres::NoTls).await
        {
            tokio::spawn(connection);
            for schema in schemas {
                let _ = client
                    .batch_execute(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"))
                    .await;
            }
        }
    });
}

/// The endpoint: echoes the request body as JSON, so each notification carries the payload.
async fn work(body: Bytes) -> ([(header::HeaderName, &'static str); 1], Bytes) {
    ([(header::CONTENT_TYPE, "application/json")], body)
}

/// Serves `router` on 127.0.0.1 (an ephemeral port, TCP_NODELAY) on `side`'s runtime until the
/// process ends.
async fn serve(router: Router, side: Side) -> SocketAddr {
    side.runtime()
        .spawn(serve_here(router, side))
        .await
        .expect("serve")
}

/// Serves `router` on the runtime this is called on.
async fn serve_here(router: Router, side: Side) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().unwrap();
    let listener = listener.tap_io(move |tcp| {
        let _ = tcp.set_nodelay(true);
        ACCEPTED[side as usize].fetch_add(1, Ordering::Relaxed);
    });
    tokio::spawn(async move { axum::serve(listener, router).await.expect("serve") });
    address
}

// ---------------------------------------------------------------------------------------------
// Where the CPU goes

/// The three parts of a run, each on a tokio runtime of its own so their CPU time can be told
/// apart (they still share the machine's cores).
#[derive(Debug, Clone, Copy)]
enum Side {
    /// The app behind the layer, with its job tasks and the callbacks it sends.
    App,
    /// The load generator.
    Client,
    /// The callback receiver.
    Receiver,
}

const SIDES: [Side; 3] = [Side::App, Side::Client, Side::Receiver];

/// Thread ids of each side's runtime, and the runtimes of the client and the receiver.
static THREADS: [Mutex<Vec<u32>>; 3] = [
    Mutex::new(Vec::new()),
    Mutex::new(Vec::new()),
    Mutex::new(Vec::new()),
];
static RUNTIMES: OnceLock<[tokio::runtime::Runtime; 2]> = OnceLock::new();
/// With `--shape processes`: the process ids of the app and the receiver.
static REMOTE_PIDS: [OnceLock<u32>; 3] = [OnceLock::new(), OnceLock::new(), OnceLock::new()];
/// Connections each side's servers accepted (the receiver's count shows whether callbacks reuse
/// pooled connections).
static ACCEPTED: [AtomicU64; 3] = [AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)];

impl Side {
    /// Also the name of its threads (for `perf report --comm`, `top -H`).
    fn name(self) -> &'static str {
        match self {
            Side::App => "app",
            Side::Client => "client",
            Side::Receiver => "receiver",
        }
    }

    fn threads(self) -> &'static Mutex<Vec<u32>> {
        &THREADS[self as usize]
    }

    fn runtime(self) -> tokio::runtime::Handle {
        match self {
            Side::App => tokio::runtime::Handle::current(),
            Side::Client | Side::Receiver => RUNTIMES.get().expect("runtimes")[self as usize - 1]
                .handle()
                .clone(),
        }
    }

    /// A multi-thread runtime whose threads register under this side.
    fn build_runtime(self, threads: usize) -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name(self.name())
            .enable_all()
            .on_thread_start(move || {
                if let Some(tid) = thread_id() {
                    self.threads().lock().unwrap().push(tid);
                }
            })
            .build()
            .expect("runtime")
    }

    /// The `/proc` directories of this side's threads: its runtime's threads in this process, or
    /// every thread of its own process (`--shape processes`).
    fn tasks(self) -> Vec<PathBuf> {
        if let Some(pid) = REMOTE_PIDS[self as usize].get() {
            return std::fs::read_dir(format!("/proc/{pid}/task"))
                .map(|dir| dir.filter_map(|entry| Some(entry.ok()?.path())).collect())
                .unwrap_or_default();
        }
        self.threads()
            .lock()
            .unwrap()
            .iter()
            .map(|tid| PathBuf::from(format!("/proc/self/task/{tid}")))
            .collect()
    }

    /// CPU time this side's threads have had so far, in nanoseconds (Linux `schedstat`), and
    /// how often they were switched out (voluntarily or not).
    fn usage(self) -> (u64, u64) {
        self.tasks().iter().fold((0, 0), |(cpu, switches), task| {
            let ns = std::fs::read_to_string(task.join("schedstat"))
                .ok()
                .and_then(|stat| stat.split_whitespace().next()?.parse::<u64>().ok())
                .unwrap_or(0);
            let status = std::fs::read_to_string(task.join("status")).unwrap_or_default();
            let switched: u64 = status
                .lines()
                .filter(|line| line.contains("ctxt_switches:"))
                .filter_map(|line| line.split_whitespace().nth(1)?.parse::<u64>().ok())
                .sum();
            (cpu + ns, switches + switched)
        })
    }
}

/// This thread's id, from `/proc/thread-self` (a link to `<pid>/task/<tid>`).
fn thread_id() -> Option<u32> {
    let link = std::fs::read_link("/proc/thread-self").ok()?;
    link.file_name()?.to_str()?.parse().ok()
}

/// CPU time and context switches of every side, read together.
#[derive(Debug, Clone, Copy, Default)]
struct Usage {
    cpu_ns: [u64; 3],
    switches: [u64; 3],
}

/// What each side spent per item (request or event).
#[derive(Debug, Clone, Copy, Default)]
struct PerItem {
    /// Microseconds of CPU, by [`Side`].
    cpu: [f64; 3],
    /// Context switches, by [`Side`].
    switches: [f64; 3],
}

impl Usage {
    fn now() -> Self {
        let read = SIDES.map(Side::usage);
        Self {
            cpu_ns: read.map(|(cpu, _)| cpu),
            switches: read.map(|(_, switches)| switches),
        }
    }

    /// Per item, for each side, since `earlier`.
    fn per_item_since(self, earlier: Usage, items: u64) -> PerItem {
        let items = items.max(1) as f64;
        let mut per = PerItem::default();
        for side in SIDES {
            let i = side as usize;
            per.cpu[i] = self.cpu_ns[i].saturating_sub(earlier.cpu_ns[i]) as f64 / 1e3 / items;
            per.switches[i] = self.switches[i].saturating_sub(earlier.switches[i]) as f64 / items;
        }
        per
    }
}

/// What the callback receiver saw.
#[derive(Default)]
struct Received {
    count: AtomicU64,
    bad_signatures: AtomicU64,
    arrivals: Mutex<Vec<(u64, Instant)>>,
}

async fn receive(
    State((received, verifier)): State<(Arc<Received>, ElementsVerifier)>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let now = Instant::now();
    let event_id = headers
        .get("elements-event-id")
        .and_then(|value| value.to_str().ok())
        .and_then(|text| text.parse().ok())
        .unwrap_or(0);
    if verifier.verify(&headers, &body).is_err() {
        received.bad_signatures.fetch_add(1, Ordering::Relaxed);
    }
    received.arrivals.lock().unwrap().push((event_id, now));
    received.count.fetch_add(1, Ordering::Relaxed);
    StatusCode::OK
}

// ---------------------------------------------------------------------------------------------
// Three processes (`--shape processes`)
//
// The harness starts this same binary twice more, as `--role app` and `--role receiver`, each
// printing `LISTENING <address>` once it serves and stopping when its standard input closes. Each
// also answers `GET /__stats` (outside the layer) with what the harness cannot read from `/proc`.

/// The receiver's routes: callbacks on `/cb`, and its tally on `/__stats?since=N` (the count,
/// bad signatures and the arrivals from the N-th on, as Unix nanoseconds).
fn receiver_router(received: Arc<Received>) -> Router {
    Router::new()
        .route("/cb", post(receive))
        .with_state((received.clone(), ElementsVerifier::new(SIGNING_KEY)))
        .route(
            "/__stats",
            axum::routing::get(move |query: axum::extract::RawQuery| {
                let since: usize = query
                    .0
                    .as_deref()
                    .and_then(|q| q.strip_prefix("since="))
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(0);
                let (now, unix_now) = (Instant::now(), unix_ns());
                let arrivals: Vec<(u64, u128)> = received
                    .arrivals
                    .lock()
                    .unwrap()
                    .get(since..)
                    .unwrap_or_default()
                    .iter()
                    .map(|(id, at)| (*id, unix_now - (now - *at).as_nanos()))
                    .collect();
                let body = serde_json::json!({
                    "count": received.count.load(Ordering::Relaxed),
                    "badSignatures": received.bad_signatures.load(Ordering::Relaxed),
                    "arrivals": arrivals,
                });
                std::future::ready(axum::Json(body))
            }),
        )
}

fn unix_ns() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

/// Runs this process as the app or the receiver until its standard input closes.
fn child_main(options: Options, role: Role) -> ExitCode {
    let (runtime, router) = match role {
        Role::App => {
            counting_alloc::enable();
            let runtime = Side::App.build_runtime(options.threads);
            let router = runtime.block_on(async {
                let layer = with_store(layer_builder(options.signatures), options.store, "load")
                    .await
                    .build()
                    .expect("layer");
                let handle = layer.handle();
                Router::new().route("/work", post(work)).layer(layer).route(
                    "/__stats",
                    axum::routing::get(move || {
                        let (allocations, bytes) = counting_alloc::totals();
                        std::future::ready(axum::Json(serde_json::json!({
                            "allocations": allocations,
                            "bytes": bytes,
                            "metrics": format!("{:?}", handle.metrics()),
                        })))
                    }),
                )
            });
            (runtime, router)
        }
        Role::Receiver => (
            Side::Receiver.build_runtime(1),
            receiver_router(Arc::default()),
        ),
    };
    runtime.block_on(async {
        let side = match role {
            Role::App => Side::App,
            Role::Receiver => Side::Receiver,
        };
        let address = serve_here(router, side).await;
        println!("LISTENING {address}");
        use std::io::Write;
        let _ = std::io::stdout().flush();
        // Until the harness closes our standard input (or goes away).
        let _ = tokio::task::spawn_blocking(|| {
            let mut sink = Vec::new();
            let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut sink);
        })
        .await;
    });
    runtime.shutdown_background();
    for path in STORE_FILES.lock().unwrap().drain(..) {
        let _ = std::fs::remove_file(path);
    }
    #[cfg(feature = "postgres")]
    drop_schemas();
    ExitCode::SUCCESS
}

/// A process the harness started: stopped and reaped when dropped.
struct ChildProcess {
    child: std::process::Child,
    address: SocketAddr,
}

impl ChildProcess {
    fn start(options: &Options, role: Role) -> Self {
        use std::io::BufRead;
        let command = options.command_line();
        let args = command.split_once(" -- ").map_or("", |(_, args)| args);
        let role_name = match role {
            Role::App => "app",
            Role::Receiver => "receiver",
        };
        // `LOAD_APP_WRAPPER="heaptrack -o /tmp/app"` (say) runs the app under a profiler.
        let wrapper = std::env::var("LOAD_APP_WRAPPER")
            .ok()
            .filter(|_| role == Role::App);
        let exe = std::env::current_exe().expect("this binary");
        let mut command = match wrapper.as_deref().map(str::split_whitespace) {
            Some(mut words) => {
                let mut command = std::process::Command::new(words.next().expect("a command"));
                command.args(words).arg(exe);
                command
            }
            None => std::process::Command::new(exe),
        };
        let mut child = command
            .args(args.split_whitespace())
            .args(["--role", role_name])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("start a child process");
        // The first line that says where it listens (a wrapper may print before it); the rest
        // of its output is passed on.
        let mut lines = std::io::BufReader::new(child.stdout.take().expect("piped")).lines();
        let address = loop {
            match lines.next() {
                Some(Ok(line)) => match line.trim().strip_prefix("LISTENING ") {
                    Some(address) => break address.parse().expect("an address"),
                    None => println!("[{role_name}] {line}"),
                },
                _ => panic!("the {role_name} process ended without saying where it listens"),
            }
        };
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                println!("[{role_name}] {line}");
            }
        });
        let side = match role {
            Role::App => Side::App,
            Role::Receiver => Side::Receiver,
        };
        let _ = REMOTE_PIDS[side as usize].set(child.id());
        Self { child, address }
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        drop(self.child.stdin.take()); // asks it to stop
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn get_json(client: &HttpClient, url: String) -> serde_json::Value {
    let response = client
        .get(url.parse().unwrap())
        .await
        .expect("a child process answers");
    let body = response.into_body().collect().await.unwrap().to_bytes();
    serde_json::from_slice(&body).expect("JSON")
}

/// The receiver, in this process or its own.
enum ReceiverView {
    Local(Arc<Received>),
    Remote(SocketAddr),
}

/// What the receiver has seen: bad signatures, and when each event's callback came.
struct Arrivals {
    bad_signatures: u64,
    at: HashMap<u64, Instant>,
}

impl ReceiverView {
    async fn count(&self, client: &HttpClient) -> u64 {
        match self {
            Self::Local(received) => received.count.load(Ordering::Relaxed),
            Self::Remote(address) => {
                // Only the count: ask for arrivals from far past the end.
                get_json(
                    client,
                    format!("http://{address}/__stats?since={}", usize::MAX >> 1),
                )
                .await
                .get("count")
                .and_then(|c| c.as_u64())
                .unwrap_or(0)
            }
        }
    }

    /// Everything from the `since`-th callback on.
    async fn arrivals(&self, client: &HttpClient, since: u64) -> Arrivals {
        match self {
            Self::Local(received) => Arrivals {
                bad_signatures: received.bad_signatures.load(Ordering::Relaxed),
                at: received.arrivals.lock().unwrap()[since as usize..]
                    .iter()
                    .copied()
                    .collect(),
            },
            Self::Remote(address) => {
                let stats =
                    get_json(client, format!("http://{address}/__stats?since={since}")).await;
                // Both processes read the same clock: map Unix time onto this process's instants.
                let (now, unix_now) = (Instant::now(), unix_ns());
                let at = stats["arrivals"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|pair| {
                        let id = pair.get(0)?.as_u64()?;
                        let unix = pair.get(1)?.as_u64()? as u128;
                        let ago = Duration::from_nanos(unix_now.saturating_sub(unix) as u64);
                        Some((id, now.checked_sub(ago)?))
                    })
                    .collect();
                Arrivals {
                    bad_signatures: stats["badSignatures"].as_u64().unwrap_or(0),
                    at,
                }
            }
        }
    }
}

/// The app, in this process or its own.
enum AppView {
    Local(AsyncRequestHandle),
    Remote(SocketAddr),
}

impl AppView {
    /// The layer's counters, as text.
    async fn metrics(&self, client: &HttpClient) -> String {
        match self {
            Self::Local(handle) => format!("{:?}", handle.metrics()),
            Self::Remote(address) => get_json(client, format!("http://{address}/__stats")).await
                ["metrics"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        }
    }

    /// Allocations and bytes allocated so far, where counted (the app's own process).
    async fn allocations(&self, client: &HttpClient) -> Option<(u64, u64)> {
        match self {
            Self::Local(_) => None,
            Self::Remote(address) => {
                let stats = get_json(client, format!("http://{address}/__stats")).await;
                Some((stats["allocations"].as_u64()?, stats["bytes"].as_u64()?))
            }
        }
    }
}

/// Allocations and bytes per item between two readings.
fn allocations_per(
    before: Option<(u64, u64)>,
    after: Option<(u64, u64)>,
    items: u64,
) -> Option<(f64, f64)> {
    let ((count0, bytes0), (count1, bytes1)) = (before?, after?);
    let items = items.max(1) as f64;
    Some((
        count1.saturating_sub(count0) as f64 / items,
        bytes1.saturating_sub(bytes0) as f64 / items,
    ))
}

// ---------------------------------------------------------------------------------------------
// The client

type HttpClient = Client<HttpConnector, Full<Bytes>>;

fn client(concurrency: usize) -> HttpClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(concurrency)
        .pool_idle_timeout(Duration::from_secs(90))
        .build(connector)
}

/// What to send in one phase.
#[derive(Clone)]
struct Shot {
    uri: Uri,
    payload: Bytes,
    /// `Some(callback URL)` (or `Some("")` for none): an async request.
    asynchronous: Option<String>,
    /// With `--rate`: how often each connection sends.
    period: Option<Duration>,
}

impl Shot {
    fn request(&self) -> Request<Full<Bytes>> {
        let mut builder = Request::post(self.uri.clone())
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::ACCEPT, "application/json");
        if let Some(callback) = &self.asynchronous {
            builder = builder.header("Elements-Async-Request", "true");
            if !callback.is_empty() {
                builder = builder.header("Elements-Async-Callback-Url", callback.as_str());
            }
        }
        builder.body(Full::new(self.payload.clone())).unwrap()
    }
}

/// What the client tasks of one phase saw.
#[derive(Default)]
struct Tally {
    /// `200` (sync) or `202` (async) answers.
    ok: u64,
    overloaded: u64,
    other_status: u64,
    errors: u64,
    latencies: Vec<Duration>,
    /// eventId and the instant its request was sent (async only).
    events: Vec<(u64, Instant)>,
    first_error: Option<String>,
}

impl Tally {
    fn merge(&mut self, other: Tally) {
        self.ok += other.ok;
        self.overloaded += other.overloaded;
        self.other_status += other.other_status;
        self.errors += other.errors;
        self.latencies.extend(other.latencies);
        self.events.extend(other.events);
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
    }
}

/// Runs `concurrency` client tasks until `deadline` or until `limit` requests were sent.
async fn drive(
    client: &HttpClient,
    shot: &Shot,
    concurrency: usize,
    deadline: Instant,
    limit: u64,
) -> Tally {
    let issued = Arc::new(AtomicU64::new(0));
    let expected = if shot.asynchronous.is_some() {
        StatusCode::ACCEPTED
    } else {
        StatusCode::OK
    };
    let tasks: Vec<_> = (0..concurrency)
        .map(|task| {
            let (client, shot, issued) = (client.clone(), shot.clone(), issued.clone());
            Side::Client.runtime().spawn(async move {
                let mut tally = Tally::default();
                // Paced: the connections take turns, evenly spread over each period.
                let mut ticker = shot.period.map(|period| {
                    let offset = period.mul_f64(task as f64 / concurrency as f64);
                    let mut ticker =
                        tokio::time::interval_at(tokio::time::Instant::now() + offset, period);
                    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    ticker
                });
                while Instant::now() < deadline && issued.fetch_add(1, Ordering::Relaxed) < limit {
                    if let Some(ticker) = &mut ticker {
                        ticker.tick().await;
                        if Instant::now() >= deadline {
                            break;
                        }
                    }
                    let sent = Instant::now();
                    let response = match client.request(shot.request()).await {
                        Ok(response) => response,
                        Err(error) => {
                            tally.errors += 1;
                            tally
                                .first_error
                                .get_or_insert_with(|| format!("{error:?}"));
                            continue;
                        }
                    };
                    let (parts, body) = response.into_parts();
                    let body = match body.collect().await {
                        Ok(body) => body.to_bytes(),
                        Err(error) => {
                            tally.errors += 1;
                            tally
                                .first_error
                                .get_or_insert_with(|| format!("{error:?}"));
                            continue;
                        }
                    };
                    let latency = sent.elapsed();
                    if parts.status == expected {
                        tally.ok += 1;
                        tally.latencies.push(latency);
                        if expected == StatusCode::ACCEPTED {
                            let event_id = parts
                                .headers
                                .get("elements-event-id")
                                .and_then(|value| value.to_str().ok())
                                .and_then(|text| text.parse().ok())
                                .expect("a receipt carries Elements-Event-Id");
                            tally.events.push((event_id, sent));
                        }
                    } else if parts.status == StatusCode::SERVICE_UNAVAILABLE {
                        tally.overloaded += 1;
                    } else {
                        tally.other_status += 1;
                        tally.first_error.get_or_insert_with(|| {
                            format!("{} {}", parts.status, String::from_utf8_lossy(&body))
                        });
                    }
                    black_box(body);
                }
                tally
            })
        })
        .collect();
    let mut total = Tally::default();
    for task in tasks {
        total.merge(task.await.expect("client task"));
    }
    total
}

// ---------------------------------------------------------------------------------------------
// Figures

fn percentile(sorted: &[Duration], p: f64) -> Option<Duration> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len());
    Some(sorted[rank - 1])
}

fn ms(duration: Option<Duration>) -> String {
    duration.map_or_else(
        || "-".to_owned(),
        |d| format!("{:.2} ms", d.as_secs_f64() * 1e3),
    )
}

fn p50_p99(latencies: &mut [Duration]) -> String {
    latencies.sort_unstable();
    format!(
        "{} / {}",
        ms(percentile(latencies, 0.50)),
        ms(percentile(latencies, 0.99))
    )
}

fn rate(count: u64, elapsed: Duration) -> f64 {
    count as f64 / elapsed.as_secs_f64().max(1e-9)
}

fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

/// A JSON document of exactly `len` bytes (at least `{"d":""}`, 8 bytes).
fn payload(len: usize) -> Bytes {
    let len = len.max(8);
    let mut text = String::with_capacity(len);
    text.push_str(r#"{"d":""#);
    text.extend(std::iter::repeat_n('x', len - 8));
    text.push_str(r#""}"#);
    Bytes::from(text)
}

fn layer_builder(signatures: Signatures) -> AsyncRequestLayerBuilder {
    let builder = AsyncRequestLayer::builder()
        .instance_id(30)
        .signing_key(SIGNING_KEY)
        .allow_private_callbacks(true);
    match signatures {
        Signatures::Both => builder.standard_webhooks_secret(WHSEC),
        Signatures::Elements => builder,
    }
}

// ---------------------------------------------------------------------------------------------
// The run

struct SyncFigures {
    tally: Tally,
    elapsed: Duration,
    /// CPU and context switches per request, by [`Side`].
    usage: PerItem,
    /// The app's allocations and bytes allocated per request, where counted.
    allocations: Option<(f64, f64)>,
}

struct AsyncFigures {
    tally: Tally,
    elapsed: Duration,
    delivered_in_window: u64,
    matched: u64,
    drained_after: Duration,
    end_to_end: Vec<Duration>,
    bad_signatures: u64,
    metrics: String,
    /// CPU and context switches per event, by [`Side`], from the first request to the last
    /// callback.
    usage: PerItem,
    /// The app's allocations and bytes allocated per event, where counted.
    allocations: Option<(f64, f64)>,
}

struct MemoryFigures {
    accepted: u64,
    refused: u64,
    waiting: u64,
    before: u64,
    after: u64,
    send_elapsed: Duration,
}

/// With `--rate`: each connection's period.
fn period(options: &Options) -> Option<Duration> {
    (options.rate > 0)
        .then(|| Duration::from_secs_f64(options.concurrency as f64 / options.rate as f64))
}

async fn phase_sync(
    options: &Options,
    client: &HttpClient,
    app: SocketAddr,
    app_view: &AppView,
) -> SyncFigures {
    let shot = Shot {
        uri: format!("http://{app}/work").parse().unwrap(),
        payload: payload(options.payload_bytes),
        asynchronous: None,
        period: None,
    };
    // Warm-up: open the pooled connections, untimed.
    let warm = drive(
        client,
        &shot,
        options.concurrency,
        Instant::now() + Duration::from_secs(1),
        options.concurrency as u64 * 20,
    )
    .await;
    assert!(warm.ok > 0, "warm-up failed: {:?}", warm.first_error);

    let shot = Shot {
        period: period(options),
        ..shot
    };
    let allocations_start = app_view.allocations(client).await;
    let start = Instant::now();
    let usage_start = Usage::now();
    let tally = drive(
        client,
        &shot,
        options.concurrency,
        start + Duration::from_secs(options.duration_secs),
        options.max_requests,
    )
    .await;
    let elapsed = start.elapsed();
    let usage = Usage::now().per_item_since(usage_start, tally.ok);
    let allocations = allocations_per(
        allocations_start,
        app_view.allocations(client).await,
        tally.ok,
    );
    SyncFigures {
        usage,
        allocations,
        tally,
        elapsed,
    }
}

async fn phase_async(
    options: &Options,
    client: &HttpClient,
    app: SocketAddr,
    app_view: &AppView,
    receiver_view: &ReceiverView,
    receiver: SocketAddr,
) -> AsyncFigures {
    let shot = Shot {
        uri: format!("http://{app}/work").parse().unwrap(),
        payload: payload(options.payload_bytes),
        asynchronous: Some(format!("http://{receiver}/cb")),
        period: period(options),
    };
    let received_before = receiver_view.count(client).await;
    let allocations_start = app_view.allocations(client).await;
    let start = Instant::now();
    let usage_start = Usage::now();
    let mut tally = drive(
        client,
        &shot,
        options.concurrency,
        start + Duration::from_secs(options.duration_secs),
        options.max_requests,
    )
    .await;
    let elapsed = start.elapsed();
    let window_end = start + elapsed;

    // Wait for the callbacks still on their way (asking a receiver process every 50 ms costs it
    // a few requests, nothing next to the phase).
    let drain_deadline = Instant::now() + Duration::from_secs(options.drain_secs);
    let poll = match receiver_view {
        ReceiverView::Local(_) => Duration::from_millis(10),
        ReceiverView::Remote(_) => Duration::from_millis(50),
    };
    while receiver_view.count(client).await - received_before < tally.ok
        && Instant::now() < drain_deadline
    {
        tokio::time::sleep(poll).await;
    }
    let usage = Usage::now().per_item_since(usage_start, tally.ok);
    let allocations = allocations_per(
        allocations_start,
        app_view.allocations(client).await,
        tally.ok,
    );
    let arrivals = receiver_view.arrivals(client, received_before).await;
    let delivered_in_window = arrivals
        .at
        .values()
        .filter(|&&at| start <= at && at <= window_end)
        .count() as u64;
    let mut end_to_end = Vec::with_capacity(tally.events.len());
    let mut last = start;
    for (event_id, sent) in &tally.events {
        if let Some(&arrived) = arrivals.at.get(event_id) {
            end_to_end.push(arrived.saturating_duration_since(*sent));
            last = last.max(arrived);
        }
    }
    tally.events.clear();
    AsyncFigures {
        matched: end_to_end.len() as u64,
        tally,
        elapsed,
        delivered_in_window,
        drained_after: last - start,
        end_to_end,
        bad_signatures: arrivals.bad_signatures,
        metrics: app_view.metrics(client).await,
        usage,
        allocations,
    }
}

async fn phase_memory(options: &Options, client: &HttpClient) -> MemoryFigures {
    // A port nobody listens on: bind an ephemeral one and let it go.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let layer = with_store(layer_builder(options.signatures), options.store, "pending")
        .await
        .default_callback_url(format!("http://{closed}/cb"))
        .retry_schedule([Duration::from_secs(3600)])
        .max_in_flight(PHASE_C_MAX_IN_FLIGHT.max(options.pending_events as usize))
        .build()
        .expect("phase (c) layer");
    let handle = layer.handle();
    let app = serve(
        Router::new().route("/work", post(work)).layer(layer),
        Side::App,
    )
    .await;

    let uri: Uri = format!("http://{app}/work").parse().unwrap();
    let payload = payload(options.payload_bytes);
    // Warm-up with sync requests: connections and their buffers exist before the first reading.
    let sync = Shot {
        uri: uri.clone(),
        payload: payload.clone(),
        asynchronous: None,
        period: None,
    };
    drive(
        client,
        &sync,
        options.concurrency,
        Instant::now() + Duration::from_secs(1),
        options.concurrency as u64 * 20,
    )
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = resident_bytes().unwrap_or(0);

    let shot = Shot {
        uri,
        payload,
        asynchronous: Some(String::new()), // the default callback URL: the closed port
        period: None,
    };
    let start = Instant::now();
    let deadline = start + Duration::from_secs(options.memory_secs);
    let tally = drive(
        client,
        &shot,
        options.concurrency,
        deadline,
        options.pending_events,
    )
    .await;
    let send_elapsed = start.elapsed();
    // Every event fails its first attempt (connection refused), then waits an hour.
    let settle = Instant::now() + Duration::from_secs(15);
    while handle.metrics().retries < tally.ok && Instant::now() < settle {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let after = resident_bytes().unwrap_or(0);
    MemoryFigures {
        accepted: tally.ok,
        refused: tally.overloaded + tally.other_status + tally.errors,
        waiting: handle.metrics().retries,
        before,
        after,
        send_elapsed,
    }
}

/// One round's (a) and (b).
struct Round {
    sync: SyncFigures,
    asynchronous: AsyncFigures,
    rss_after_sync: u64,
    rss_after_async: u64,
    callbacks_ratio: f64,
}

async fn run(options: Options) {
    let client = client(options.concurrency);

    // The receiver and the app of phases (a) and (b) (default HttpSink, default max_in_flight):
    // here, or each in a process of its own (kept until the end of the run).
    let (receiver, receiver_view, app, app_view, _children) = match options.shape {
        Shape::InProcess => {
            let received = Arc::new(Received::default());
            let receiver = serve(receiver_router(received.clone()), Side::Receiver).await;
            let layer = with_store(layer_builder(options.signatures), options.store, "load")
                .await
                .build()
                .expect("layer");
            let handle = layer.handle();
            let app = serve(
                Router::new().route("/work", post(work)).layer(layer),
                Side::App,
            )
            .await;
            let views = (ReceiverView::Local(received), AppView::Local(handle));
            (receiver, views.0, app, views.1, Vec::new())
        }
        Shape::Processes => {
            let receiver = ChildProcess::start(&options, Role::Receiver);
            let app = ChildProcess::start(&options, Role::App);
            (
                receiver.address,
                ReceiverView::Remote(receiver.address),
                app.address,
                AppView::Remote(app.address),
                vec![receiver, app],
            )
        }
    };
    println!("app on http://{app}/work, receiver on http://{receiver}/cb");

    // Rounds of (a) then (b), each ratio from two phases seconds apart: a neighbour on a shared
    // machine that slows one phase of a round does not decide the result, the median round does.
    let mut rounds = Vec::new();
    for round in 1..=options.rounds {
        println!("round {round} of {}", options.rounds);
        let rss_start = resident_bytes().unwrap_or(0);
        println!("(a) sync for {} s …", options.duration_secs);
        let sync = phase_sync(&options, &client, app, &app_view).await;
        let rss_after_sync = resident_bytes().unwrap_or(0);
        println!(
            "    {} × 200, {} other answers, {} errors in {:.2} s; VmRSS {} → {}{}",
            sync.tally.ok,
            sync.tally.other_status + sync.tally.overloaded,
            sync.tally.errors,
            sync.elapsed.as_secs_f64(),
            mib(rss_start),
            mib(rss_after_sync),
            sync.tally
                .first_error
                .as_deref()
                .map(|e| format!(" (first: {e})"))
                .unwrap_or_default()
        );

        println!(
            "(b) async for {} s, then up to {} s for the last callbacks …",
            options.duration_secs, options.drain_secs
        );
        let asynchronous =
            phase_async(&options, &client, app, &app_view, &receiver_view, receiver).await;
        let rss_after_async = resident_bytes().unwrap_or(0);
        println!(
            "    {} × 202, {} × 503 overloaded, {} other answers, {} errors in {:.2} s; \
             {} callbacks matched, {} bad signatures, receiver accepted {} connections (in-process \
             shape); VmRSS {} → {}; \
             layer metrics {}{}",
            asynchronous.tally.ok,
            asynchronous.tally.overloaded,
            asynchronous.tally.other_status,
            asynchronous.tally.errors,
            asynchronous.elapsed.as_secs_f64(),
            asynchronous.matched,
            asynchronous.bad_signatures,
            ACCEPTED[Side::Receiver as usize].load(Ordering::Relaxed),
            mib(rss_after_sync),
            mib(rss_after_async),
            asynchronous.metrics,
            asynchronous
                .tally
                .first_error
                .as_deref()
                .map(|e| format!(" (first: {e})"))
                .unwrap_or_default()
        );
        let callbacks_ratio = rate(asynchronous.delivered_in_window, asynchronous.elapsed)
            / rate(sync.tally.ok, sync.elapsed).max(1e-9);
        let app = Side::App as usize;
        let app_cpu_ratio = sync.usage.cpu[app] / asynchronous.usage.cpu[app].max(1e-9);
        println!(
            "    round {round}: callbacks/s ÷ sync req/s = {callbacks_ratio:.3}; \
             app CPU per sync request ÷ per async event = {app_cpu_ratio:.3} \
             ({:.1} / {:.1} µs); app context switches per request / event = {:.3} / {:.3}",
            sync.usage.cpu[app],
            asynchronous.usage.cpu[app],
            sync.usage.switches[app],
            asynchronous.usage.switches[app],
        );
        rounds.push(Round {
            sync,
            asynchronous,
            rss_after_sync,
            rss_after_async,
            callbacks_ratio,
        });
    }
    let all_ratios: Vec<String> = rounds
        .iter()
        .map(|round| format!("{:.3}", round.callbacks_ratio))
        .collect();
    rounds.sort_by(|a, b| a.callbacks_ratio.total_cmp(&b.callbacks_ratio));
    let Round {
        mut sync,
        mut asynchronous,
        rss_after_sync,
        rss_after_async,
        ..
    } = rounds.swap_remove(rounds.len() / 2);

    // Phase (c) reads this process's memory: the in-process shape only.
    let memory = if options.shape == Shape::InProcess && options.pending_events > 0 {
        println!(
            "(c) {} pending events (callback URL: a closed port; retry in 1 h), at most {} s …",
            options.pending_events, options.memory_secs
        );
        let memory = phase_memory(&options, &client).await;
        println!(
            "    {} accepted in {:.2} s, {} not accepted, {} waiting for their retry; \
             VmRSS {} → {}",
            memory.accepted,
            memory.send_elapsed.as_secs_f64(),
            memory.refused,
            memory.waiting,
            mib(memory.before),
            mib(memory.after),
        );
        Some(memory)
    } else {
        println!("(c) skipped (it runs in the in-process shape, with --pending-events above 0)");
        None
    };

    // The table.
    let sync_rate = rate(sync.tally.ok, sync.elapsed);
    let receipts_rate = rate(asynchronous.tally.ok, asynchronous.elapsed);
    let window_rate = rate(asynchronous.delivered_in_window, asynchronous.elapsed);
    let drained_rate = rate(asynchronous.matched, asynchronous.drained_after);
    let ratio = |value: f64| format!("{:.3}", value / sync_rate.max(1e-9));
    let per_event = memory
        .filter(|memory| memory.accepted > 0)
        .map(|memory| (memory.after as f64 - memory.before as f64) / memory.accepted as f64);
    // What the app alone pays, wherever its client and receiver run: an async event is one
    // inbound exchange and one outbound callback, so at best twice a synchronous request.
    let (app, client_side, receiver_side) = (
        Side::App as usize,
        Side::Client as usize,
        Side::Receiver as usize,
    );
    let app_cpu_ratio = sync.usage.cpu[app] / asynchronous.usage.cpu[app].max(1e-9);
    let allocations = |per: Option<(f64, f64)>| {
        per.map_or(
            "- (counted with --shape processes)".to_owned(),
            |(count, bytes)| format!("{count:.1} / {bytes:.0} B"),
        )
    };
    let rows: Vec<(String, String, String)> = vec![
        (
            "(a) sync requests/s".into(),
            format!("{sync_rate:.0}"),
            ratio(sync_rate),
        ),
        (
            "(b) receipts/s".into(),
            format!("{receipts_rate:.0}"),
            ratio(receipts_rate),
        ),
        (
            "(b) callbacks delivered/s, during the send window".into(),
            format!("{window_rate:.0}"),
            ratio(window_rate),
        ),
        (
            "(b) callbacks delivered/s, first request → last callback".into(),
            format!("{drained_rate:.0}"),
            ratio(drained_rate),
        ),
        (
            "(a) sync latency p50 / p99".into(),
            p50_p99(&mut sync.tally.latencies),
            String::new(),
        ),
        (
            "(b) receipt latency p50 / p99".into(),
            p50_p99(&mut asynchronous.tally.latencies),
            String::new(),
        ),
        (
            "(b) end-to-end latency p50 / p99 (sent → callback)".into(),
            p50_p99(&mut asynchronous.end_to_end),
            String::new(),
        ),
        (
            "(b) 503 overloaded / callbacks missing".into(),
            format!(
                "{} / {}",
                asynchronous.tally.overloaded,
                asynchronous.tally.ok - asynchronous.matched
            ),
            String::new(),
        ),
        (
            "(b) VmRSS growth over the phase, all delivered".into(),
            mib(rss_after_async.saturating_sub(rss_after_sync)),
            String::new(),
        ),
        (
            "(a) CPU per sync request: app / client".into(),
            format!(
                "{:.1} / {:.1} µs",
                sync.usage.cpu[app], sync.usage.cpu[client_side]
            ),
            String::new(),
        ),
        (
            "(b) CPU per async event: app / client / receiver".into(),
            format!(
                "{:.1} / {:.1} / {:.1} µs",
                asynchronous.usage.cpu[app],
                asynchronous.usage.cpu[client_side],
                asynchronous.usage.cpu[receiver_side]
            ),
            String::new(),
        ),
        (
            "app CPU per sync request ÷ per async event (limit 0.5)".into(),
            format!("{app_cpu_ratio:.3}"),
            String::new(),
        ),
        (
            "app CPU per async event ÷ per sync request".into(),
            format!("{:.2} ×", 1.0 / app_cpu_ratio.max(1e-9)),
            String::new(),
        ),
        (
            "(a) context switches per sync request: app / client".into(),
            format!(
                "{:.3} / {:.3}",
                sync.usage.switches[app], sync.usage.switches[client_side]
            ),
            String::new(),
        ),
        (
            "(b) context switches per async event: app / client / receiver".into(),
            format!(
                "{:.3} / {:.3} / {:.3}",
                asynchronous.usage.switches[app],
                asynchronous.usage.switches[client_side],
                asynchronous.usage.switches[receiver_side]
            ),
            String::new(),
        ),
        (
            "(a) app allocations / bytes per sync request".into(),
            allocations(sync.allocations),
            String::new(),
        ),
        (
            "(b) app allocations / bytes per async event".into(),
            allocations(asynchronous.allocations),
            String::new(),
        ),
        (
            "(c) memory per pending event".into(),
            per_event.map_or("-".into(), |b| format!("{b:.0} B")),
            String::new(),
        ),
        (
            format!("(c)   less the {} B payload", options.payload_bytes),
            per_event.map_or("-".into(), |b| {
                format!("{:.0} B", b - options.payload_bytes as f64)
            }),
            String::new(),
        ),
    ];
    let width = rows
        .iter()
        .map(|row| row.0.chars().count())
        .max()
        .unwrap_or(0);
    let value_width = rows
        .iter()
        .map(|row| row.1.chars().count())
        .max()
        .unwrap_or(0);
    let mut table = String::new();
    let _ = writeln!(
        table,
        "| {:width$} | {:>value_width$} | ÷ sync req/s |",
        "metric", "value"
    );
    let _ = writeln!(
        table,
        "|{}|{}|--------------|",
        "-".repeat(width + 2),
        "-".repeat(value_width + 2)
    );
    for (metric, value, ratio) in rows {
        let _ = writeln!(
            table,
            "| {metric:width$} | {value:>value_width$} | {ratio:>12} |"
        );
    }
    println!();
    println!(
        "The median of {} rounds (callbacks/s ÷ sync req/s by round: {}):",
        options.rounds,
        all_ratios.join(", ")
    );
    print!("{table}");
    println!(
        "callbacks/s ÷ sync req/s = {}; receipts/s ÷ sync req/s = {}; \
         app CPU per sync request ÷ per async event = {app_cpu_ratio:.3} (async ÷ sync {:.2} ×); \
         app context switches per async event = {:.3}",
        ratio(window_rate),
        ratio(receipts_rate),
        1.0 / app_cpu_ratio.max(1e-9),
        asynchronous.usage.switches[app],
    );
}

fn main() -> ExitCode {
    let options = match Options::parse() {
        Ok(options) => options,
        Err(message) => {
            eprintln!("{message}");
            return ExitCode::from(2);
        }
    };
    if let Some(role) = options.role {
        return child_main(options, role);
    }
    println!("reproduce: {}", options.command_line());
    println!(
        "NOTE: the app ({} worker threads), the client ({} tasks, 1 thread) and the callback \
         receiver (1 thread) run on tokio runtimes of their own, so the CPU time of each is \
         counted apart, but they share the machine's {} CPU(s): the load generator and the \
         receiver compete with the app for the same cores, so every rate is a lower bound for \
         the app alone. Loopback TCP only (127.0.0.1). Payload: {} B of JSON, echoed by the \
         endpoint; signatures: {:?}; store: {:?}.",
        options.threads,
        options.concurrency,
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        options.payload_bytes,
        options.signatures,
        options.store,
    );
    let runtime = Side::App.build_runtime(options.threads);
    let _ = RUNTIMES.set([
        Side::Client.build_runtime(1),
        Side::Receiver.build_runtime(1),
    ]);
    let started = Instant::now();
    runtime.block_on(run(options));
    // Phase (c) leaves its events waiting an hour for their retry: do not wait for them.
    runtime.shutdown_background();
    for path in STORE_FILES.lock().unwrap().drain(..) {
        let _ = std::fs::remove_file(path);
    }
    #[cfg(feature = "postgres")]
    drop_schemas();
    println!("total {:.1} s", started.elapsed().as_secs_f64());
    ExitCode::SUCCESS
}
