//! The `metrics` facade (feature `metrics`) as an operator sees it: a Prometheus recorder, its
//! `/metrics` scraped over real HTTP after real traffic, the numbers checked.
#![cfg(feature = "metrics")]

mod support;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::{routing::get, routing::post, Router};
use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use support::{eventually, Answer, Receiver};
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tower_async_request::instance::{Instance, ResolveError, ResolveFuture, ResolveInstance};
use tower_async_request::sink::HttpSink;
use tower_async_request::AsyncRequestLayer;

/// The process's one recorder, installed by the first test that asks, before it builds its layer
/// (as the facade requires). Each test has an instance id of its own; the series without an
/// instance label (refusals, attempts by host) are shared, so each test keeps to its own.
fn prometheus() -> &'static PrometheusHandle {
    static RECORDER: OnceLock<PrometheusHandle> = OnceLock::new();
    RECORDER.get_or_init(|| PrometheusBuilder::new().install_recorder().unwrap())
}

/// One sample of a scrape: its name, labels, value.
type Sample = (String, BTreeMap<String, String>, f64);

fn parse(scrape: &str) -> Vec<Sample> {
    scrape
        .lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
        .map(|line| {
            let (series, value) = line.rsplit_once(' ').unwrap();
            let (name, labels) = match series.split_once('{') {
                Some((name, labels)) => (name, labels.trim_end_matches('}')),
                None => (series, ""),
            };
            let labels = labels
                .split(',')
                .filter(|pair| !pair.is_empty())
                .map(|pair| {
                    let (key, value) = pair.split_once('=').unwrap();
                    (key.to_owned(), value.trim_matches('"').to_owned())
                })
                .collect();
            (name.to_owned(), labels, value.parse().unwrap())
        })
        .collect()
}

/// The value of the sample named `name` whose labels include `labels`. It must be there: a
/// series that was never written would read as 0 to Prometheus, so a check of 0 could not fail.
fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    let found: Vec<f64> = samples
        .iter()
        .filter(|(n, l, _)| {
            n == name
                && labels
                    .iter()
                    .all(|(k, v)| l.get(*k).map(String::as_str) == Some(v))
        })
        .map(|(.., v)| *v)
        .collect();
    assert!(
        found.len() <= 1,
        "{name} {labels:?} is ambiguous: {found:?}"
    );
    *found
        .first()
        .unwrap_or_else(|| panic!("{name} {labels:?} was never written"))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_prometheus_scrape_after_real_traffic_shows_the_counts() {
    // Installed before the layer is built, as the facade requires.
    let prometheus = prometheus();
    // One event's notification fails twice (503) and is delivered at the third attempt; one
    // fails three times and is dead; three are delivered at once.
    let mut receiver = Receiver::start(vec![
        Answer::status(503),
        Answer::status(503),
        Answer::status(503),
        Answer::status(503),
        Answer::status(503),
    ])
    .await;
    let layer = AsyncRequestLayer::builder()
        .instance_id(30)
        .default_callback_url(receiver.url())
        .allow_private_callbacks(true) // one notification goes to a loopback port that fails
        .retry_schedule([Duration::from_millis(20), Duration::from_millis(20)])
        // The breaker off: five 503s in a row would open it (its series are counted below).
        .circuit_breaker(0, Duration::from_secs(30))
        .build()
        .unwrap();
    let handle = layer.handle();
    // A job that runs until the test lets it finish, and one that fails.
    let release = Arc::new(Notify::new());
    let held = release.clone();
    let app = Router::new()
        .route("/work", post(|| async { "done" }))
        .route(
            "/hold",
            post(move || {
                let held = held.clone();
                async move {
                    held.notified().await;
                    "done"
                }
            }),
        )
        .route(
            "/fail",
            post(|| async {
                if true {
                    panic!("the handler failed");
                }
                "never"
            }),
        )
        .layer(layer);
    let operator = Router::new().route(
        "/metrics",
        get(move || std::future::ready(prometheus.render())),
    );
    let app_addr = serve(app).await;
    let operator_addr = serve(operator).await;
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let send_to = |path: &str, headers: &[(&str, &str)]| {
        let mut request = Request::post(format!("http://{app_addr}{path}"));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        client.request(request.body(Full::default()).unwrap())
    };
    let send = |headers: &[(&str, &str)]| send_to("/work", headers);
    let scrape = || async {
        let body = client
            .get(format!("http://{operator_addr}/metrics").parse().unwrap())
            .await
            .unwrap()
            .into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes();
        String::from_utf8(body.to_vec()).unwrap()
    };
    let instance = ("instance", "30");

    // The first two events take the first five answers (503s) between them.
    for _ in 0..2 {
        let response = send(&[("Elements-Async-Request", "true")]).await.unwrap();
        assert_eq!(response.status(), StatusCode::ACCEPTED);
    }
    eventually("one dead, one delivered", || {
        let m = handle.metrics();
        m.dead == 1 && m.delivered == 1
    })
    .await;
    for _ in 0..3 {
        let response = send(&[("Elements-Async-Request", "true")]).await.unwrap();
        assert_eq!(response.status(), StatusCode::ACCEPTED);
    }
    let refused = send(&[("Elements-Async-Request", "maybe")]).await.unwrap();
    assert_eq!(refused.status(), StatusCode::BAD_REQUEST);
    for url in ["ftp://example.com/", "not a url"] {
        let refused = send(&[
            ("Elements-Async-Request", "true"),
            ("Elements-Async-Callback-Url", url),
        ])
        .await
        .unwrap();
        assert_eq!(refused.status(), StatusCode::BAD_REQUEST);
    }
    let passthrough = send(&[]).await.unwrap();
    assert_eq!(passthrough.status(), StatusCode::OK);
    eventually("four delivered", || handle.metrics().delivered == 4).await;
    for _ in 0..5 + 1 + 3 {
        receiver.next().await;
    }

    // A job that fails (its handler panics): a `failed` notification, delivered.
    let accepted = send_to("/fail", &[("Elements-Async-Request", "true")]).await;
    assert_eq!(accepted.unwrap().status(), StatusCode::ACCEPTED);
    assert_eq!(receiver.next().await.json()["eventStatus"], "failed");
    eventually("five delivered", || handle.metrics().delivered == 5).await;

    // While a job is held, the gauges show it.
    let accepted = send_to("/hold", &[("Elements-Async-Request", "true")]).await;
    assert_eq!(accepted.unwrap().status(), StatusCode::ACCEPTED);
    eventually("the held job runs", || handle.metrics().running == 1).await;
    let samples = parse(&scrape().await);
    assert_eq!(
        value(&samples, "async_request_jobs_running", &[instance]),
        1.0
    );
    assert_eq!(value(&samples, "async_request_in_flight", &[instance]), 1.0);

    // While an attempt is on the wire (its receiver took the connection and does not answer),
    // the notification is pending; then the receiver goes away: unreachable until dead.
    let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_url = format!("http://{}/in", silent.local_addr().unwrap());
    let accepted = send(&[
        ("Elements-Async-Request", "true"),
        ("Elements-Async-Callback-Url", &silent_url),
    ])
    .await;
    assert_eq!(accepted.unwrap().status(), StatusCode::ACCEPTED);
    let (connection, _) = tokio::time::timeout(Duration::from_secs(10), silent.accept())
        .await
        .expect("the first attempt connects")
        .unwrap();
    let samples = parse(&scrape().await);
    assert_eq!(
        value(&samples, "async_request_notifications_pending", &[instance]),
        1.0
    );
    assert_eq!(value(&samples, "async_request_in_flight", &[instance]), 2.0);
    drop((connection, silent));
    eventually("the silent receiver's notification is dead", || {
        handle.metrics().dead == 2
    })
    .await;

    // The held job ends; its notification is delivered.
    release.notify_one();
    assert_eq!(receiver.next().await.json()["eventStatus"], "completed");
    eventually("six delivered", || handle.metrics().delivered == 6).await;

    let scrape = scrape().await;
    let samples = parse(&scrape);
    let of = |name: &str, labels: &[(&str, &str)]| value(&samples, name, labels);

    assert_eq!(
        of("async_request_accepted_total", &[instance]),
        8.0,
        "{scrape}"
    );
    assert_eq!(
        of(
            "async_request_refused_total",
            &[("code", "invalid_async_header")]
        ),
        1.0
    );
    assert_eq!(
        of(
            "async_request_refused_total",
            &[("code", "invalid_callback_url")]
        ),
        2.0
    );
    assert_eq!(
        of(
            "async_request_jobs_total",
            &[instance, ("outcome", "completed")]
        ),
        7.0
    );
    assert_eq!(
        of(
            "async_request_jobs_total",
            &[instance, ("outcome", "failed")]
        ),
        1.0
    );
    assert_eq!(of("async_request_delivered_total", &[instance]), 6.0);
    assert_eq!(of("async_request_dead_letters_total", &[instance]), 2.0);
    let attempts = |result| {
        of(
            "async_request_delivery_attempts_total",
            &[instance, ("result", result)],
        )
    };
    assert_eq!((attempts("delivered"), attempts("rejected")), (6.0, 5.0));
    assert_eq!(attempts("unreachable"), 3.0);
    // The default callback URL is the operator's own: its host is a bounded label.
    assert_eq!(
        of(
            "async_request_delivery_attempts_by_host_total",
            &[("host", "127.0.0.1"), ("result", "rejected")]
        ),
        5.0
    );
    for gauge in [
        "async_request_in_flight",
        "async_request_jobs_running",
        "async_request_notifications_pending",
    ] {
        assert_eq!(of(gauge, &[instance]), 0.0, "{gauge} is back to zero");
    }
    assert_eq!(of("async_request_receipt_seconds_count", &[instance]), 8.0);
    assert_eq!(of("async_request_delivery_seconds_count", &[instance]), 6.0);
    let slowest = of(
        "async_request_delivery_seconds",
        &[instance, ("quantile", "1")],
    );
    assert!(
        slowest >= 0.04,
        "the notification delivered at its third attempt waited two retries: {slowest}"
    );
    assert!(scrape.contains("# HELP async_request_accepted_total"));
}

/// Instance 31, whose settings cannot be read once, after `fail_next_read`.
struct Tenant {
    instance: Instance,
    fail_next_read: AtomicBool,
}

impl ResolveInstance for Tenant {
    fn resolve<'a>(&'a self, _: &'a http::request::Parts) -> ResolveFuture<'a> {
        Box::pin(async { Ok(Some(self.instance.clone())) })
    }

    fn by_id(&self, _: u64) -> ResolveFuture<'_> {
        Box::pin(async {
            if self.fail_next_read.swap(false, Ordering::SeqCst) {
                return Err(ResolveError::new("the tenant database is down"));
            }
            Ok(Some(self.instance.clone()))
        })
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn attempts_that_end_gone_unsent_or_refused_are_counted_by_result() {
    let prometheus = prometheus();
    // Answers `410` first, then `200`.
    let mut receiver = Receiver::start(vec![Answer::status(410)]).await;
    // The instance's own URL by name: its host label is this test's alone.
    let instance_url = format!("http://localhost:{}/hook", receiver.addr.port());
    let tenant = Arc::new(Tenant {
        instance: Instance::builder(31)
            .callback_url(instance_url)
            .build()
            .unwrap(),
        fail_next_read: AtomicBool::new(false),
    });
    let layer = AsyncRequestLayer::builder()
        .instances(tenant.clone())
        // Request-supplied URLs may name 127.0.0.1, but the sink given here was not told: it
        // refuses to connect there (the operator's own URL is trusted and passes).
        .allow_callback_network("127.0.0.1")
        .sink(HttpSink::new())
        .retry_schedule([Duration::from_millis(20)])
        .build()
        .unwrap();
    let handle = layer.handle();
    let app = Router::new()
        .route("/work", post(|| async { "done" }))
        .layer(layer);
    let app_addr = serve(app).await;
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let send = |callback: Option<&str>| {
        let mut request = Request::post(format!("http://{app_addr}/work"))
            .header("Elements-Async-Request", "true");
        if let Some(url) = callback {
            request = request.header("Elements-Async-Callback-Url", url);
        }
        client.request(request.body(Full::default()).unwrap())
    };

    // gone: the receiver answers 410.
    assert_eq!(send(None).await.unwrap().status(), StatusCode::ACCEPTED);
    assert_eq!(receiver.next().await.answered, StatusCode::GONE);
    // unsent: the first attempt finds the instance's settings unreadable; the retry delivers.
    tenant.fail_next_read.store(true, Ordering::SeqCst);
    assert_eq!(send(None).await.unwrap().status(), StatusCode::ACCEPTED);
    assert_eq!(receiver.next().await.answered, StatusCode::OK);
    assert!(!tenant.fail_next_read.load(Ordering::SeqCst));
    // refused: a target the sink will not reach.
    let refused = send(Some(&receiver.url())).await.unwrap();
    assert_eq!(refused.status(), StatusCode::ACCEPTED);
    // Every notification delivered or dead, each attempt counted.
    let report = handle.shutdown(Duration::from_secs(20)).await;
    assert!(report.drained);
    let metrics = handle.metrics();
    assert_eq!((metrics.delivered, metrics.dead), (1, 2));
    assert!(
        receiver.hits.try_recv().is_err(),
        "the refused target was reached"
    );

    let operator = Router::new().route(
        "/metrics",
        get(move || std::future::ready(prometheus.render())),
    );
    let operator_addr = serve(operator).await;
    let scrape = client
        .get(format!("http://{operator_addr}/metrics").parse().unwrap())
        .await
        .unwrap()
        .into_body()
        .collect()
        .await
        .unwrap()
        .to_bytes();
    let scrape = String::from_utf8(scrape.to_vec()).unwrap();
    let samples = parse(&scrape);
    let of = |name: &str, labels: &[(&str, &str)]| value(&samples, name, labels);
    let attempts = |result| {
        of(
            "async_request_delivery_attempts_total",
            &[("instance", "31"), ("result", result)],
        )
    };
    for (result, count) in [
        ("gone", 1.0),
        ("unsent", 1.0),
        ("refused", 1.0),
        ("delivered", 1.0),
    ] {
        assert_eq!(attempts(result), count, "{result}: {scrape}");
    }
    // Only attempts to the instance's own URL carry its host; an unsent one went nowhere.
    let by_host = |result| {
        of(
            "async_request_delivery_attempts_by_host_total",
            &[("host", "localhost"), ("result", result)],
        )
    };
    assert_eq!((by_host("gone"), by_host("delivered")), (1.0, 1.0));
    assert_eq!(
        of("async_request_delivered_total", &[("instance", "31")]),
        1.0
    );
    assert_eq!(
        of("async_request_dead_letters_total", &[("instance", "31")]),
        2.0
    );
}

async fn serve(router: Router) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    addr
}

/// `Idempotency-Key`: a request sent again is counted as a replay of its instance; one that
/// reuses the key for other work is counted as refused with its code.
#[tokio::test]
async fn replays_and_key_mismatches_are_counted() {
    let prometheus = prometheus();
    let receiver = Receiver::start(Vec::new()).await;
    let layer = AsyncRequestLayer::builder()
        .instance_id(33)
        .default_callback_url(receiver.url())
        .build()
        .unwrap();
    let app = Router::new()
        .route("/work", post(|body: String| async move { body }))
        .layer(layer);
    let addr = serve(app).await;
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let send = |body: &'static str| {
        let request = Request::post(format!("http://{addr}/work"))
            .header("Elements-Async-Request", "true")
            .header("Idempotency-Key", "\"metrics-key\"")
            .body(Full::from(body))
            .unwrap();
        client.request(request)
    };
    let statuses = [
        send("a").await.unwrap().status(),
        send("a").await.unwrap().status(),
        send("a").await.unwrap().status(),
        send("b").await.unwrap().status(),
    ];
    assert_eq!(
        statuses,
        [202, 202, 202, 422].map(|s| StatusCode::from_u16(s).unwrap())
    );
    let samples = parse(&prometheus.render());
    assert_eq!(
        value(
            &samples,
            "async_request_idempotent_replays_total",
            &[("instance", "33")]
        ),
        2.0
    );
    assert_eq!(
        value(
            &samples,
            "async_request_accepted_total",
            &[("instance", "33")]
        ),
        1.0
    );
    assert_eq!(
        value(
            &samples,
            "async_request_refused_total",
            &[("code", "idempotency_key_mismatch")]
        ),
        1.0
    );
}

/// A cancel is counted as a job of outcome `cancelled`, and a held `Prefer: wait` in the gauge
/// `async_request_status_waits` while it is held.
#[tokio::test]
async fn cancels_and_held_waits_are_counted() {
    let prometheus = prometheus();
    let receiver = Receiver::start(Vec::new()).await;
    let layer = AsyncRequestLayer::builder()
        .instance_id(34)
        .status_endpoint("/events")
        .default_callback_url(receiver.url())
        .allow_private_callbacks(true)
        .build()
        .unwrap();
    let handle = layer.handle();
    let app = Router::new()
        .route("/work", post(std::future::pending::<&'static str>))
        .layer(layer);
    let addr = serve(app).await;
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let accepted = client
        .request(
            Request::post(format!("http://{addr}/work"))
                .header("Elements-Async-Request", "true")
                .body(Full::default())
                .unwrap(),
        )
        .await
        .unwrap();
    let location = accepted.headers()["location"].to_str().unwrap().to_owned();
    let waiting = tokio::spawn({
        let (client, url) = (client.clone(), format!("http://{addr}{location}"));
        async move {
            let request = Request::get(url)
                .header("Prefer", "wait=60")
                .body(Full::default())
                .unwrap();
            client.request(request).await.unwrap().status()
        }
    });
    support::eventually("the wait is held", || handle.metrics().status_waits == 1).await;
    let gauge =
        |samples: &[Sample]| value(samples, "async_request_status_waits", &[("instance", "34")]);
    assert_eq!(gauge(&parse(&prometheus.render())), 1.0);
    let cancel = Request::delete(format!("http://{addr}{location}"))
        .body(Full::default())
        .unwrap();
    assert_eq!(client.request(cancel).await.unwrap().status(), 202);
    assert_eq!(waiting.await.unwrap(), 200, "the cancel ends the wait");
    let samples = parse(&prometheus.render());
    assert_eq!(
        value(
            &samples,
            "async_request_jobs_total",
            &[("instance", "34"), ("outcome", "cancelled")]
        ),
        1.0
    );
    assert_eq!(gauge(&samples), 0.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn receivers_circuits_held_notifications_and_throttled_waits_are_reported() {
    let prometheus = prometheus();
    let mut receiver = Receiver::start(vec![Answer::status(503); 2]).await;
    // The callback URL from the request: attempts to it carry no host label (another test's).
    let layer = AsyncRequestLayer::builder()
        .instance_id(35)
        .allow_private_callbacks(true)
        .circuit_breaker(2, Duration::from_millis(300))
        .max_connections_per_receiver(1)
        .retry_schedule([Duration::from_millis(20); 20])
        .build()
        .unwrap();
    let handle = layer.handle();
    let app = Router::new()
        .route("/work", post(|| async { "done" }))
        .layer(layer);
    let addr = serve(app).await;
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let accept = || {
        client.request(
            Request::post(format!("http://{addr}/work"))
                .header("Elements-Async-Request", "true")
                .header("Elements-Async-Callback-Url", receiver.url())
                .body(Full::default())
                .unwrap(),
        )
    };
    accept().await.unwrap();
    eventually("the circuit is open", || {
        handle.metrics().receivers_open == 1
    })
    .await;
    accept().await.unwrap();
    accept().await.unwrap();
    eventually("three are held", || handle.metrics().held == 3).await;
    let samples = parse(&prometheus.render());
    let series = |samples: &[Sample], name, labels: &[(&str, &str)]| value(samples, name, labels);
    let open = [("instance", "35"), ("state", "open")];
    assert_eq!(
        series(&samples, "async_request_receiver_circuit", &open),
        1.0
    );
    let instance = [("instance", "35")];
    assert_eq!(
        series(&samples, "async_request_notifications_held", &instance),
        3.0
    );
    // The probe closes it; the three go one at a time (one connection), the others waiting.
    for _ in 0..5 {
        receiver.next().await;
    }
    eventually("all delivered", || handle.metrics().delivered == 3).await;
    let samples = parse(&prometheus.render());
    assert_eq!(
        series(&samples, "async_request_receiver_circuit", &open),
        0.0
    );
    assert_eq!(
        series(&samples, "async_request_notifications_held", &instance),
        0.0
    );
    let throttled = series(
        &samples,
        "async_request_delivery_throttled_total",
        &instance,
    );
    assert!(throttled >= 1.0, "{throttled}");
    assert_eq!(throttled, handle.metrics().throttled as f64);
}
