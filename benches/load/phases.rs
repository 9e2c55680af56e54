//! The phases of a run: (a) sync requests, (b) async requests and their callbacks, (c) memory per
//! pending event.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use axum::routing::post;
use axum::Router;
use http::Uri;

use crate::app::{layer_builder, serve, work};
use crate::client::{drive, payload, HttpClient, Shot, Tally};
use crate::figures::resident_bytes;
use crate::options::Options;
use crate::sides::{PerItem, Side, Usage};
use crate::store::with_store;
use crate::views::{allocations_per, AppView, ReceiverView};

const PHASE_C_MAX_IN_FLIGHT: usize = 200_000;

pub(crate) struct SyncFigures {
    pub(crate) tally: Tally,
    pub(crate) elapsed: Duration,
    /// CPU and context switches per request, by [`Side`].
    pub(crate) usage: PerItem,
    /// The app's allocations and bytes allocated per request, where counted.
    pub(crate) allocations: Option<(f64, f64)>,
}

pub(crate) struct AsyncFigures {
    pub(crate) tally: Tally,
    pub(crate) elapsed: Duration,
    pub(crate) delivered_in_window: u64,
    pub(crate) matched: u64,
    pub(crate) drained_after: Duration,
    pub(crate) end_to_end: Vec<Duration>,
    pub(crate) bad_signatures: u64,
    pub(crate) metrics: String,
    /// CPU and context switches per event, by [`Side`], from the first request to the last
    /// callback.
    pub(crate) usage: PerItem,
    /// The app's allocations and bytes allocated per event, where counted.
    pub(crate) allocations: Option<(f64, f64)>,
}

pub(crate) struct MemoryFigures {
    pub(crate) accepted: u64,
    pub(crate) refused: u64,
    pub(crate) waiting: u64,
    pub(crate) before: u64,
    pub(crate) after: u64,
    pub(crate) send_elapsed: Duration,
}

/// With `--rate`: each connection's period.
fn period(options: &Options) -> Option<Duration> {
    (options.rate > 0)
        .then(|| Duration::from_secs_f64(options.concurrency as f64 / options.rate as f64))
}

pub(crate) async fn phase_sync(
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

pub(crate) async fn phase_async(
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

pub(crate) async fn phase_memory(options: &Options, client: &HttpClient) -> MemoryFigures {
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
