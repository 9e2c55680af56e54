//! The status URL as an operation: what it costs an accepted async request, and what held waits
//! cost the process.
//!
//! `cargo bench --bench operation` prints two parts:
//!
//! - `receipt`: receipts per second of an async request to a layer **with a status endpoint**
//!   (whose jobs get a cancellation token and a `Progress` handle; `-- --plain`: without one), in-process on a
//!   current-thread runtime, 7 rounds of 20 000 receipts each, the median printed. The figure is
//!   meant to be compared between two builds taking turns: build this file in both and run the
//!   two binaries alternately (docs/performance.md says how).
//! - `waits`: 10 000 status requests held with `Prefer: wait=60` on one running event: the
//!   bytes they keep allocated and the resident memory they add (from `/proc/self/statm`), per
//!   wait, beside the bytes of as many requests held by a bare service, and the CPU time the process
//!   uses over 10 s while they are held and nothing else happens (from `/proc/self/stat`).
//!   `-- --waits N` holds N instead.
//!
//! `-- --traced` puts a `traceparent` on every async request; with `--features opentelemetry`
//! it also installs the W3C propagator, and `--otel-layer` records the spans with
//! `tracing-opentelemetry` into a tracer provider that exports nowhere: what the feature costs
//! an event that carries a trace, beside a build without the feature sent the same requests.

use std::alloc::{GlobalAlloc, Layout, System};
use std::convert::Infallible;
use std::sync::atomic::{AtomicI64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use tower::{Layer, Service, ServiceExt};
use tower_async_request::{sink::ChannelSink, AsyncRequestLayer};

/// Bytes allocated and not yet freed, for what a held wait keeps (resident memory moves in
/// pages and with what the allocator keeps back).
struct Live;

static LIVE: AtomicI64 = AtomicI64::new(0);

// SAFETY: every call is passed to `System` unchanged; counting allocates nothing.
unsafe impl GlobalAlloc for Live {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as i64, Relaxed);
        // SAFETY: the caller's contract for `layout` is `System`'s.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as i64, Relaxed);
        // SAFETY: `ptr` came from `System` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(new_size as i64 - layout.size() as i64, Relaxed);
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Live = Live;

fn layer(sink: ChannelSink, status: bool) -> AsyncRequestLayer {
    let builder = AsyncRequestLayer::builder()
        .default_callback_url("https://hooks.example.com/in")
        .sink(sink)
        .max_in_flight(1_000_000);
    match status {
        true => builder.status_endpoint("/events"),
        false => builder,
    }
    .build()
    .unwrap()
}

fn async_request() -> Request<Full<Bytes>> {
    let request = Request::post("/work").header("Elements-Async-Request", "true");
    let request = match TRACED.get() {
        Some(_) => request.header(
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        ),
        None => request,
    };
    request
        .body(Full::new(Bytes::from_static(b"payload")))
        .unwrap()
}

/// Set by `--traced`: requests carry a `traceparent`.
static TRACED: std::sync::OnceLock<()> = std::sync::OnceLock::new();

/// `--traced` (feature `opentelemetry`): the W3C propagator installed and a `traceparent` on
/// every request; `--otel-layer` as well: spans recorded by `tracing-opentelemetry` into an SDK
/// tracer provider that exports nowhere.
#[cfg(feature = "opentelemetry")]
fn trace(args: &[String]) {
    use opentelemetry::trace::TracerProvider as _;
    use tracing_subscriber::prelude::*;
    if !args.iter().any(|a| a == "--traced") {
        return;
    }
    TRACED.set(()).unwrap();
    opentelemetry::global::set_text_map_propagator(
        opentelemetry_sdk::propagation::TraceContextPropagator::new(),
    );
    if args.iter().any(|a| a == "--otel-layer") {
        let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
        tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("bench")))
            .init();
    }
}

/// Without the feature, `--traced` only puts the `traceparent` on: the same requests, for a
/// build with the feature to be compared with.
#[cfg(not(feature = "opentelemetry"))]
fn trace(args: &[String]) {
    if args.iter().any(|a| a == "--traced") {
        TRACED.set(()).unwrap();
    }
}

async fn quick(_: Request<impl Send>) -> Result<Response<Full<Bytes>>, Infallible> {
    Ok(Response::new(Full::new(Bytes::from_static(b"done"))))
}

fn receipts(status: bool) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let (sink, mut callbacks) = ChannelSink::new(1 << 20);
        let service = layer(sink, status).layer(tower::service_fn(quick));
        tokio::spawn(async move { while callbacks.recv().await.is_some() {} });
        let mut rates = Vec::new();
        for _ in 0..7 {
            let start = Instant::now();
            for _ in 0..20_000 {
                let receipt = service.clone().oneshot(async_request()).await.unwrap();
                assert_eq!(receipt.status(), StatusCode::ACCEPTED);
                // Let the job and its notification run, untimed work of the same kind.
                tokio::task::yield_now().await;
            }
            rates.push(20_000.0 / start.elapsed().as_secs_f64());
        }
        rates.sort_by(f64::total_cmp);
        println!(
            "receipt {}: {:.0} receipts/s (median of 7 rounds; {:.0}–{:.0})",
            if status {
                "with a status endpoint"
            } else {
                "without a status endpoint"
            },
            rates[3],
            rates[0],
            rates[6]
        );
    });
}

/// Resident bytes of this process.
fn resident() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

/// User plus system CPU time of this process.
fn cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    // Fields after the command's closing parenthesis: utime and stime are the 12th and 13th.
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<u64> = after
        .split_whitespace()
        .skip(11)
        .take(2)
        .map(|f| f.parse().unwrap())
        .collect();
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    Duration::from_millis((fields[0] + fields[1]) * 1000 / ticks)
}

fn waits(count: usize) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let (sink, _callbacks) = ChannelSink::new(16);
        let layer = AsyncRequestLayer::builder()
            .status_endpoint("/events")
            .default_callback_url("https://hooks.example.com/in")
            .sink(sink)
            .max_status_waiters(count)
            .build()
            .unwrap();
        let handle = layer.handle();
        let mut service = layer.layer(tower::service_fn(|_: Request<_>| async {
            std::future::pending::<Result<Response<Full<Bytes>>, Infallible>>().await
        }));
        let receipt = service
            .ready()
            .await
            .unwrap()
            .call(async_request())
            .await
            .unwrap();
        let location = receipt.headers()["location"].to_str().unwrap().to_owned();
        let status = |wait: bool| {
            let mut request = Request::get(location.as_str());
            if wait {
                request = request.header("Prefer", "wait=60");
            }
            request.body(Full::new(Bytes::new())).unwrap()
        };
        // Everything a wait needs, made once before measuring (the first answer, the tables).
        service.clone().oneshot(status(false)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        let mut held = Vec::with_capacity(count);
        let (before, live_before) = (resident(), LIVE.load(Relaxed));
        for _ in 0..count {
            held.push(tokio::spawn(service.clone().oneshot(status(true))));
        }
        while handle.metrics().status_waits < count as u64 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let (after, live) = (resident(), LIVE.load(Relaxed) - live_before);
        let idle_from = cpu();
        tokio::time::sleep(Duration::from_secs(10)).await;
        let idle = cpu() - idle_from;
        println!(
            "{count} held waits: {:.0} B allocated each, {:.0} B resident each ({} KiB in all), \
             {:?} CPU over 10 s idle ({:.2} % of one core)",
            live as f64 / count as f64,
            (after.saturating_sub(before)) as f64 / count as f64,
            after.saturating_sub(before) / 1024,
            idle,
            idle.as_secs_f64() / 10.0 * 100.0,
        );
        handle.shutdown(Duration::from_millis(10)).await;
        for wait in held {
            assert_eq!(wait.await.unwrap().unwrap().status(), StatusCode::OK);
        }
        // For scale: the same number of requests held by a bare service that never answers
        // (a spawned task, the request, the service's future), without the layer.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let bare = tower::service_fn(|request: Request<Full<Bytes>>| async move {
            let _held = request;
            std::future::pending::<Result<Response<Full<Bytes>>, Infallible>>().await
        });
        let mut held = Vec::with_capacity(count);
        let live_before = LIVE.load(Relaxed);
        for _ in 0..count {
            held.push(tokio::spawn(bare.oneshot(status(true))));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let live = LIVE.load(Relaxed) - live_before;
        println!(
            "for scale, {count} requests held by a bare service: {:.0} B allocated each",
            live as f64 / count as f64,
        );
        for task in held {
            task.abort();
        }
    });
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let count = args
        .iter()
        .position(|a| a == "--waits")
        .and_then(|i| args.get(i + 1))
        .map_or(10_000, |n| n.parse().unwrap());
    trace(&args);
    if !args.iter().any(|a| a == "--waits-only") {
        // `--plain`: the layer without a status endpoint (no cancellation token, no progress).
        receipts(!args.iter().any(|a| a == "--plain"));
    }
    if !args.iter().any(|a| a == "--receipt-only") {
        waits(count);
    }
}
