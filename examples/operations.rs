//! The operator's view, on loopback, in one process: the runbook "the receiver was down for an
//! hour" in a few seconds.
//!
//! 1. A Prometheus recorder (`metrics-exporter-prometheus`) is installed before the layer is
//!    built, and an operator's listener serves its `/metrics` beside the admin routes
//!    (`/admin/...`, [`tower_async_request::admin::Admin`]); in production that listener sits
//!    behind your authentication.
//! 2. The receiver is down (`503`): three async requests end as dead letters after their retries.
//! 3. The operator lists the dead letters with their attempts, sees the receiver is back, and
//!    redelivers them all with one `POST /admin/dead-letters/redeliver`.
//! 4. `/metrics` and `/admin/health` show what happened.
//!
//! Run it with `cargo run --features metrics --example operations`. It exits 0 when every step
//! checks out, and non-zero with a message saying what went wrong otherwise.

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::{extract::State, routing::get, routing::post, Router};
use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use metrics_exporter_prometheus::PrometheusBuilder;
use serde_json::Value;
use tokio::net::TcpListener;
use tower_async_request::{admin::Admin, AsyncRequestHandle, AsyncRequestLayer};

type Http = Client<HttpConnector, Full<Bytes>>;

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("operations example failed: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    // 1. The recorder first: the layer registers its metrics when it is built.
    let prometheus = PrometheusBuilder::new().install_recorder()?;
    let receiver_up = Arc::new(AtomicBool::new(false));
    let receiver = serve(
        Router::new()
            .route("/hook", post(receive))
            .with_state(receiver_up.clone()),
    )
    .await?;
    let layer = AsyncRequestLayer::builder()
        .instance_id(30)
        .default_callback_url(format!("http://{receiver}/hook"))
        .signing_key("event-signature-key")
        // Three attempts, 100 ms apart (the default schedule spans a day).
        .retry_schedule([Duration::from_millis(100), Duration::from_millis(100)])
        // This walk-through shows dead letters and their replay, so the circuit breaker is off:
        // on (the default), a receiver that keeps failing has its notifications held until it
        // answers again, rather than spending their attempts (docs/receivers.md).
        .circuit_breaker(0, Duration::from_secs(30))
        // Delivered events stay readable by operators, with their attempts.
        .status_retention(Duration::from_secs(3600))
        .build()?;
    let handle = layer.handle();
    let app = serve(
        Router::new()
            .route("/reports", post(|| async { "report ready" }))
            .layer(layer),
    )
    .await?;
    let operator = serve(
        Router::new()
            .route(
                "/metrics",
                get(move || std::future::ready(prometheus.render())),
            )
            .nest_service("/admin", Admin::new(handle.clone())),
    )
    .await?;
    println!("app on http://{app}, operator's /metrics and /admin on http://{operator}");
    let client: Http = Client::builder(TokioExecutor::new()).build_http();

    // 2. The receiver is down.
    for _ in 0..3 {
        let (status, receipt) = call(
            &client,
            Method::POST,
            &format!("http://{app}/reports"),
            Some(("Elements-Async-Request", "true")),
        )
        .await?;
        check(
            status == StatusCode::ACCEPTED,
            "an async request gets its receipt",
        )?;
        println!("accepted event {}", receipt["eventId"]);
    }
    wait_for(&handle, "three dead letters", |m| m.dead == 3).await?;

    // 3. The runbook: look, fix the receiver, replay.
    let admin = |path: &str| format!("http://{operator}/admin{path}");
    let (_, page) = call(&client, Method::GET, &admin("/dead-letters?limit=10"), None).await?;
    let dead = page["deadLetters"].as_array().cloned().unwrap_or_default();
    check(dead.len() == 3, "three dead letters are listed")?;
    for letter in &dead {
        let statuses: Vec<String> = letter["delivery"]["history"]
            .as_array()
            .map(|h| h.iter().map(|a| a["status"].to_string()).collect())
            .unwrap_or_default();
        println!(
            "dead letter {}: {} attempts, answers [{}], last error {}",
            letter["notificationId"],
            letter["delivery"]["attempts"],
            statuses.join(", "),
            letter["delivery"]["lastError"]
        );
    }
    receiver_up.store(true, Ordering::Relaxed);
    let (status, started) = call(
        &client,
        Method::POST,
        &admin("/dead-letters/redeliver"),
        None,
    )
    .await?;
    check(status == StatusCode::ACCEPTED, "the bulk redelivery starts")?;
    println!("redelivering {}", started["redelivered"]);
    wait_for(&handle, "three deliveries", |m| m.delivered == 3).await?;
    let (_, page) = call(&client, Method::GET, &admin("/dead-letters"), None).await?;
    check(
        page["deadLetters"].as_array().is_some_and(Vec::is_empty),
        "no dead letter is left",
    )?;

    // 4. What the operator's dashboards see.
    let (status, health) = call(&client, Method::GET, &admin("/health"), None).await?;
    check(status == StatusCode::OK, "the layer is healthy")?;
    println!("health: {health}");
    let (_, scrape) = get_text(&client, &format!("http://{operator}/metrics")).await?;
    for line in scrape.lines().filter(|l| {
        l.starts_with("async_request_") && !l.contains("quantile") && !l.ends_with(" 0")
    }) {
        println!("{line}");
    }
    check(
        scrape.contains("async_request_dead_letters_total{instance=\"30\"} 3"),
        "the scrape counts three dead letters",
    )?;
    check(
        scrape.contains("async_request_delivered_total{instance=\"30\"} 3"),
        "the scrape counts three deliveries",
    )?;
    println!("operations example: every step checked out");
    Ok(())
}

/// The webhook receiver: `503` while down, `200` once up.
async fn receive(State(up): State<Arc<AtomicBool>>) -> StatusCode {
    if up.load(Ordering::Relaxed) {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    }
}

async fn serve(router: Router) -> std::io::Result<std::net::SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, router).await });
    Ok(addr)
}

async fn call(
    client: &Http,
    method: Method,
    url: &str,
    header: Option<(&str, &str)>,
) -> Result<(StatusCode, Value), Box<dyn std::error::Error>> {
    let mut request = Request::builder().method(method).uri(url);
    if let Some((name, value)) = header {
        request = request.header(name, value);
    }
    let response = client.request(request.body(Full::default())?).await?;
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    Ok((status, serde_json::from_slice(&body).unwrap_or(Value::Null)))
}

async fn get_text(
    client: &Http,
    url: &str,
) -> Result<(StatusCode, String), Box<dyn std::error::Error>> {
    let response = client.get(url.parse()?).await?;
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    Ok((status, String::from_utf8(body.to_vec())?))
}

async fn wait_for(
    handle: &AsyncRequestHandle,
    what: &str,
    done: impl Fn(tower_async_request::metrics::Metrics) -> bool,
) -> Result<(), String> {
    for _ in 0..500 {
        if done(handle.metrics()) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Err(format!(
        "timed out waiting for {what}: {:?}",
        handle.metrics()
    ))
}

fn check(ok: bool, what: &str) -> Result<(), String> {
    if ok {
        Ok(())
    } else {
        Err(format!("expected: {what}"))
    }
}
