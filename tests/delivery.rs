//! The delivery engine against real, scripted receivers on 127.0.0.1:0.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::{body::Body, routing::post, Router};
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use support::{eventually, Answer, Receiver};
use tokio::sync::Notify;
use tower::ServiceExt;
use tower_async_request::event::EventId;
use tower_async_request::store::{DeliveryState, EventSnapshot, EventStore};
use tower_async_request::{
    sink::HttpSink, verify::StandardWebhooksVerifier, AsyncRequestLayer, AsyncRequestLayerBuilder,
};

const WHSEC: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
const MS: fn(u64) -> Duration = Duration::from_millis;

fn builder(receiver: &Receiver) -> AsyncRequestLayerBuilder {
    AsyncRequestLayer::builder()
        .instance_id(30)
        .default_callback_url(receiver.url())
        .standard_webhooks_secret(WHSEC)
        .retry_schedule([MS(50), MS(50), MS(50)])
}

fn app(layer: AsyncRequestLayer) -> Router {
    Router::new()
        .route(
            "/work",
            post(|body: String| async move { format!("done {body}") }),
        )
        .layer(layer)
}

fn async_request() -> Request<Body> {
    Request::post("/work")
        .header("Elements-Async-Request", "true")
        .body(Body::from("job"))
        .unwrap()
}

async fn send(app: &Router, request: Request<Body>) -> (StatusCode, serde_json::Value) {
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null),
    )
}

#[tokio::test]
async fn server_errors_are_retried_until_a_2xx_with_the_same_notification_id() {
    let mut receiver = Receiver::start(vec![Answer::status(500), Answer::status(503)]).await;
    let layer = builder(&receiver).build().unwrap();
    let handle = layer.handle();
    let (status, receipt) = send(&app(layer), async_request()).await;
    assert_eq!(status, StatusCode::ACCEPTED);

    let verifier = StandardWebhooksVerifier::new(WHSEC).unwrap();
    let hits = [
        receiver.next().await,
        receiver.next().await,
        receiver.next().await,
    ];
    assert_eq!(
        hits.each_ref().map(|h| h.answered.as_u16()),
        [500, 503, 200]
    );
    for hit in &hits {
        verifier.verify(&hit.headers, &hit.body).unwrap();
        assert_eq!(hit.json()["eventId"], receipt["eventId"]);
        assert_eq!(hit.headers["webhook-id"], hits[0].headers["webhook-id"]);
        assert_eq!(
            hit.body, hits[0].body,
            "every attempt carries the same notification"
        );
    }
    eventually("delivered", || handle.metrics().delivered == 1).await;
    let metrics = handle.metrics();
    assert_eq!((metrics.retries, metrics.dead, metrics.pending), (2, 0, 0));
}

#[tokio::test]
async fn a_receiver_that_is_down_then_up_loses_nothing() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener); // nothing listens there now: attempts fail to connect
    let layer = AsyncRequestLayer::builder()
        .default_callback_url(format!("http://{addr}/hook"))
        .retry_schedule(vec![MS(100); 50])
        // Its circuit opens after five failures: a short cool-down, so the test need not wait.
        .circuit_breaker(5, MS(200))
        .build()
        .unwrap();
    let handle = layer.handle();
    let app = app(layer);
    let mut event_ids = Vec::new();
    for _ in 0..5 {
        let (status, receipt) = send(&app, async_request()).await;
        assert_eq!(status, StatusCode::ACCEPTED);
        event_ids.push(receipt["eventId"].as_u64().unwrap());
    }
    eventually("failed attempts", || handle.metrics().retries >= 5).await;
    assert_eq!(handle.metrics().delivered, 0);

    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    let mut receiver = Receiver::start_on(listener, vec![]).await;
    let mut seen = Vec::new();
    for _ in 0..5 {
        seen.push(receiver.next().await.json()["eventId"].as_u64().unwrap());
    }
    seen.sort_unstable();
    event_ids.sort_unstable();
    assert_eq!(seen, event_ids);
    eventually("all delivered", || handle.metrics().delivered == 5).await;
}

#[tokio::test]
async fn a_slow_receiver_times_out_and_is_retried() {
    let mut receiver =
        Receiver::start(vec![Answer::status(200).after(Duration::from_secs(10))]).await;
    let layer = builder(&receiver).attempt_timeout(MS(200)).build().unwrap();
    let handle = layer.handle();
    send(&app(layer), async_request()).await;
    let _slow = receiver.next().await; // reported when the slow handler finally answers, or not at all
    eventually("delivered after a timeout", || {
        handle.metrics().delivered == 1
    })
    .await;
    assert!(handle.metrics().retries >= 1);
}

#[tokio::test]
async fn gone_stops_retrying_at_once_and_makes_a_dead_letter() {
    let mut receiver = Receiver::start(vec![Answer::status(410)]).await;
    let dead_seen = Arc::new(Mutex::new(Vec::new()));
    let hook_log = dead_seen.clone();
    let layer = builder(&receiver)
        .on_dead_letter(move |dead| hook_log.lock().unwrap().push(dead.notification_id))
        .build()
        .unwrap();
    let handle = layer.handle();
    send(&app(layer), async_request()).await;
    assert_eq!(receiver.next().await.answered, StatusCode::GONE);
    eventually("dead", || handle.metrics().dead == 1).await;
    let dead = handle.dead_letters().await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].attempts, 1);
    assert!(dead[0].last_error.as_deref().unwrap().contains("410"));
    assert_eq!(*dead_seen.lock().unwrap(), vec![dead[0].notification_id]);
    tokio::time::sleep(MS(300)).await; // longer than the whole retry schedule
    assert!(receiver.hits.try_recv().is_err(), "no attempt after 410");
}

#[tokio::test]
async fn redirects_are_failures_not_followed() {
    let mut elsewhere = Receiver::start(vec![]).await;
    let location = elsewhere.url();
    let mut receiver = Receiver::start(vec![
        Answer::status(307).header("location", location.clone()),
        Answer::status(301).header("location", location.clone()),
        Answer::status(302).header("location", location.clone()),
        Answer::status(308).header("location", location),
    ])
    .await;
    let layer = builder(&receiver).build().unwrap();
    let handle = layer.handle();
    send(&app(layer), async_request()).await;
    for expected in [307, 301, 302, 308] {
        assert_eq!(receiver.next().await.answered.as_u16(), expected);
    }
    eventually("dead after the schedule", || handle.metrics().dead == 1).await;
    assert!(
        elsewhere.hits.try_recv().is_err(),
        "the redirect target was contacted"
    );
}

#[tokio::test]
async fn an_exhausted_schedule_makes_a_dead_letter_that_can_be_redelivered() {
    let mut receiver = Receiver::start(vec![Answer::status(500); 4]).await;
    let layer = builder(&receiver).build().unwrap();
    let handle = layer.handle();
    let (_, receipt) = send(&app(layer), async_request()).await;
    for _ in 0..4 {
        assert_eq!(
            receiver.next().await.answered,
            StatusCode::INTERNAL_SERVER_ERROR
        );
    }
    eventually("dead", || handle.metrics().dead == 1).await;
    let dead = handle.dead_letters().await.unwrap();
    assert_eq!((dead.len(), dead[0].attempts), (1, 4));
    assert_eq!(dead[0].event_id.get(), receipt["eventId"].as_u64().unwrap());

    handle.redeliver(dead[0].notification_id).await.unwrap();
    let hit = receiver.next().await;
    assert_eq!(hit.answered, StatusCode::OK);
    assert_eq!(
        hit.json()["notificationId"].as_u64(),
        Some(dead[0].notification_id.get())
    );
    eventually("delivered", || handle.metrics().delivered == 1).await;
    assert!(handle.dead_letters().await.unwrap().is_empty());
    assert!(
        handle.redeliver(dead[0].notification_id).await.is_err(),
        "not dead any more"
    );
}

#[tokio::test]
async fn retry_after_on_503_is_honoured() {
    let mut receiver = Receiver::start(vec![Answer::status(503).header("retry-after", "1")]).await;
    let layer = builder(&receiver).retry_schedule([MS(10)]).build().unwrap();
    send(&app(layer), async_request()).await;
    let first = receiver.next().await;
    let second = receiver.next().await;
    assert_eq!(second.answered, StatusCode::OK);
    // The schedule alone would retry after ~10 ms; the receiver asked for one second.
    assert!(
        second.at - first.at >= MS(900),
        "retried after {:?}",
        second.at - first.at
    );
}

#[tokio::test]
async fn too_many_requests_is_retried_after_its_retry_after_with_a_timestamp_of_its_own() {
    let mut receiver = Receiver::start(vec![Answer::status(429).header("retry-after", "1")]).await;
    let layer = builder(&receiver).retry_schedule([MS(10)]).build().unwrap();
    send(&app(layer), async_request()).await;
    let first = receiver.next().await;
    let second = receiver.next().await;
    assert_eq!(
        (first.answered.as_u16(), second.answered.as_u16()),
        (429, 200)
    );
    // The schedule alone would retry after ~10 ms; the receiver asked for one second.
    assert!(
        second.at - first.at >= MS(900),
        "retried after {:?}",
        second.at - first.at
    );
    // The same notification, each attempt signed at its own time.
    assert_eq!(second.body, first.body);
    assert_eq!(second.headers["webhook-id"], first.headers["webhook-id"]);
    let timestamp = |hit: &support::Hit| -> u64 {
        hit.headers["webhook-timestamp"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap()
    };
    assert!(
        timestamp(&second) > timestamp(&first),
        "{} then {}",
        timestamp(&first),
        timestamp(&second)
    );
    let verifier = StandardWebhooksVerifier::new(WHSEC).unwrap();
    for hit in [&first, &second] {
        verifier.verify(&hit.headers, &hit.body).unwrap();
    }
}

#[tokio::test]
async fn an_undelivered_notification_holds_its_place_under_max_in_flight() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // A receiver that takes the first attempt's connection and answers only when told.
    let receiver = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let layer = AsyncRequestLayer::builder()
        .instance_id(30)
        .default_callback_url(format!("http://{}/in", receiver.local_addr().unwrap()))
        .max_in_flight(1)
        .build()
        .unwrap();
    let handle = layer.handle();
    let app = app(layer);
    assert_eq!(send(&app, async_request()).await.0, StatusCode::ACCEPTED);
    let (mut attempt, _) = receiver.accept().await.unwrap();
    let mut head = Vec::new();
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let mut chunk = [0; 4096];
        let read = attempt.read(&mut chunk).await.unwrap();
        assert!(read > 0, "the attempt ended before its head");
        head.extend_from_slice(&chunk[..read]);
    }
    // Its job is done, its notification on the wire and not delivered: the one place is taken.
    assert_eq!(handle.metrics().completed, 1);
    let (status, body) = send(&app, async_request()).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body["code"], "overloaded");
    // Delivered: the place is free again.
    attempt
        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
        .await
        .unwrap();
    eventually("delivered", || handle.metrics().delivered == 1).await;
    assert_eq!(send(&app, async_request()).await.0, StatusCode::ACCEPTED);
}

#[tokio::test]
async fn bulk_redelivery_stops_where_max_in_flight_is_full_and_says_there_is_more() {
    let mut receiver = Receiver::start(vec![Answer::status(410); 3]).await;
    let layer = builder(&receiver).max_in_flight(2).build().unwrap();
    let handle = layer.handle();
    let app = app(layer);
    for dead in 1..=3 {
        assert_eq!(send(&app, async_request()).await.0, StatusCode::ACCEPTED);
        assert_eq!(receiver.next().await.answered, StatusCode::GONE);
        assert_eq!(receiver.arrival().await.answered, StatusCode::GONE);
        eventually("a dead letter", || handle.metrics().dead == dead).await;
    }
    // The receiver holds the redelivered attempts, so each keeps its place meanwhile.
    let held = Answer::status(200).after(Duration::from_secs(60));
    receiver.then([held.clone(), held]);
    let redelivered = handle.redeliver_dead_letters(None, 10).await.unwrap();
    assert_eq!(redelivered.notification_ids.len(), 2, "{redelivered:?}");
    assert!(redelivered.more, "a third dead letter is left");
    assert_eq!(handle.dead_letters().await.unwrap().len(), 1);
    // Both redelivered attempts are out, and they are those two.
    for _ in 0..2 {
        let attempt = receiver.arrival().await;
        let id = attempt.json()["notificationId"].as_u64().unwrap();
        assert!(
            redelivered.notification_ids.iter().any(|n| n.get() == id),
            "{id} was not redelivered"
        );
    }
    assert_eq!(handle.metrics().pending, 2);
}

#[tokio::test]
async fn at_the_bound_async_requests_get_503_overloaded_and_sync_ones_pass() {
    let receiver = Receiver::start(vec![]).await;
    let release = Arc::new(Notify::new());
    let started = Arc::new(AtomicUsize::new(0));
    let layer = builder(&receiver).max_in_flight(2).build().unwrap();
    let handle = layer.handle();
    let (gate, count) = (release.clone(), started.clone());
    let app = Router::new()
        .route(
            "/work",
            post(move || {
                let (gate, count) = (gate.clone(), count.clone());
                async move {
                    count.fetch_add(1, Ordering::SeqCst);
                    gate.notified().await;
                    "done"
                }
            }),
        )
        .route("/sync", post(|| async { "sync" }))
        .layer(layer);
    for _ in 0..2 {
        assert_eq!(send(&app, async_request()).await.0, StatusCode::ACCEPTED);
    }
    eventually("both jobs running", || started.load(Ordering::SeqCst) == 2).await;

    let response = app.clone().oneshot(async_request()).await.unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(response.headers().contains_key("retry-after"));
    let body: serde_json::Value =
        serde_json::from_slice(&response.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(body["code"], "overloaded");
    assert_eq!(
        started.load(Ordering::SeqCst),
        2,
        "the inner service must not run"
    );

    let sync = Request::post("/sync").body(Body::empty()).unwrap();
    assert_eq!(send(&app, sync).await.0, StatusCode::OK);

    release.notify_waiters();
    eventually("delivered", || handle.metrics().delivered == 2).await;
    assert_eq!(send(&app, async_request()).await.0, StatusCode::ACCEPTED);
}

#[tokio::test]
async fn a_job_past_its_timeout_fails_with_timeout() {
    let mut receiver = Receiver::start(vec![]).await;
    let layer = builder(&receiver).job_timeout(MS(100)).build().unwrap();
    let app = Router::new()
        .route(
            "/work",
            post(|| async {
                tokio::time::sleep(Duration::from_secs(30)).await;
                "late"
            }),
        )
        .layer(layer);
    send(&app, async_request()).await;
    let notification = receiver.next().await.json();
    assert_eq!(notification["eventStatus"], "failed");
    assert_eq!(notification["error"]["code"], "timeout");
    assert!(notification.get("response").is_none());
}

#[tokio::test]
async fn shutdown_drains_jobs_and_deliveries_then_refuses_async_work() {
    let mut receiver = Receiver::start(vec![]).await;
    let layer = builder(&receiver).build().unwrap();
    let handle = layer.handle();
    let app = Router::new()
        .route(
            "/work",
            post(|| async {
                tokio::time::sleep(MS(200)).await;
                "done"
            }),
        )
        .route("/sync", post(|| async { "sync" }))
        .layer(layer);
    for _ in 0..3 {
        send(&app, async_request()).await;
    }
    let report = handle.shutdown(Duration::from_secs(20)).await;
    assert!(report.drained);
    assert_eq!(
        (
            report.jobs_finished,
            report.delivered,
            report.jobs_left,
            report.notifications_left
        ),
        (3, 3, 0, 0)
    );
    for _ in 0..3 {
        receiver.next().await;
    }
    let (status, body) = send(&app, async_request()).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, Some("shutting_down"))
    );
    let sync = Request::post("/sync").body(Body::empty()).unwrap();
    assert_eq!(send(&app, sync).await.0, StatusCode::OK);
}

#[tokio::test]
async fn shutdown_reports_what_it_leaves_behind() {
    let receiver = Receiver::start(vec![]).await;
    let layer = builder(&receiver).sink(HttpSink::new()).build().unwrap();
    let handle = layer.handle();
    let app = Router::new()
        .route("/work", post(std::future::pending::<&'static str>))
        .layer(layer);
    send(&app, async_request()).await;
    let report = handle.shutdown(MS(100)).await;
    assert!(!report.drained);
    assert_eq!(
        (
            report.jobs_left,
            report.notifications_left,
            report.persisted
        ),
        (1, 0, false)
    );
}

#[tokio::test]
async fn with_the_memory_store_work_left_at_shutdown_is_logged_as_an_error() {
    use support::capture::{capture, field, take};
    use tracing::Level;

    let (seen, _guard) = capture();
    let receiver = Receiver::start(vec![]).await;
    let layer = builder(&receiver).build().unwrap();
    let handle = layer.handle();
    let app = Router::new()
        .route("/work", post(std::future::pending::<&'static str>))
        .layer(layer);
    assert_eq!(send(&app, async_request()).await.0, StatusCode::ACCEPTED);
    // A deadline of zero: the job that never ends is left at once, no clock involved.
    let report = handle.shutdown(Duration::ZERO).await;
    assert_eq!(
        (report.drained, report.jobs_left, report.persisted),
        (false, 1, false)
    );
    let seen = take(&seen);
    let abandoned = seen.events_at(
        Level::ERROR,
        "shutdown deadline passed; unfinished work is ABANDONED: the in-memory store does not \
         survive the process",
    );
    assert_eq!(abandoned.len(), 1, "{:?}", seen.events);
    assert_eq!(field(&abandoned[0].1, "jobs_left"), Some("1"));
    assert_eq!(field(&abandoned[0].1, "notifications_left"), Some("0"));
}

#[cfg(feature = "redb")]
#[tokio::test]
async fn with_a_durable_store_shutdown_reports_what_it_leaves_as_kept() {
    use tower_async_request::store::RedbStore;
    let file = std::env::temp_dir().join(format!("tar-shutdown-{}.redb", std::process::id()));
    let _ = std::fs::remove_file(&file);
    // One job that never ends, and one notification refused and waiting an hour for its retry.
    let mut receiver = Receiver::start(vec![Answer::status(503)]).await;
    let layer = builder(&receiver)
        .retry_schedule([Duration::from_secs(3600)])
        .store(RedbStore::open(&file).unwrap())
        .build()
        .unwrap();
    let handle = layer.handle();
    let app = Router::new()
        .route("/work", post(|| async { "done" }))
        .route("/forever", post(std::future::pending::<&'static str>))
        .layer(layer);
    send(&app, async_request()).await;
    assert_eq!(
        receiver.next().await.answered,
        StatusCode::SERVICE_UNAVAILABLE
    );
    let forever = Request::post("/forever")
        .header("Elements-Async-Request", "true")
        .body(Body::empty())
        .unwrap();
    assert_eq!(send(&app, forever).await.0, StatusCode::ACCEPTED);
    eventually("the job runs and the notification waits", || {
        let m = handle.metrics();
        m.running == 1 && m.pending == 1
    })
    .await;
    let report = handle.shutdown(MS(100)).await;
    assert!(!report.drained);
    assert_eq!(
        (
            report.jobs_left,
            report.notifications_left,
            report.persisted
        ),
        (1, 1, true)
    );
    drop((app, handle));
    let _ = std::fs::remove_file(&file);
}

#[tokio::test]
async fn retries_go_on_after_the_layer_and_its_router_are_dropped() {
    let mut receiver = Receiver::start(vec![Answer::status(500)]).await;
    let layer = builder(&receiver).build().unwrap();
    // No handle either: nothing outside the delivery itself keeps the layer's configuration.
    let (status, receipt) = send(&app(layer), async_request()).await; // the router is dropped here
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(
        receiver.next().await.answered,
        StatusCode::INTERNAL_SERVER_ERROR
    );
    let retried = receiver.next().await;
    assert_eq!(retried.answered, StatusCode::OK);
    assert_eq!(retried.json()["eventId"], receipt["eventId"]);
}

#[tokio::test]
async fn an_outcome_the_store_cannot_record_waits_and_is_delivered_once_it_can() {
    let mut receiver = Receiver::start(vec![]).await;
    let store = Arc::new(support::store::FaultyStore::failing_outcomes(3));
    let layer = builder(&receiver).store(store.clone()).build().unwrap();
    let handle = layer.handle();
    let (status, receipt) = send(&app(layer), async_request()).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    // Tried again after 100, 200 and 400 ms; no attempt before the outcome is recorded.
    let started = std::time::Instant::now();
    let hit = receiver.next().await;
    assert!(
        started.elapsed() >= Duration::from_millis(600),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(store.failing_outcomes.load(Ordering::SeqCst), 0);
    assert_eq!(hit.json()["eventId"], receipt["eventId"]);
    eventually("delivered", || handle.metrics().delivered == 1).await;
}

/// Found by the chaos harness (docs/chaos.md): a delivery made while the database restarted was
/// never recorded, so the event read `pending` on every node for good. Now the write is tried
/// again until the store takes it, and the status says `delivered`.
#[tokio::test]
async fn a_delivery_the_store_cannot_record_is_recorded_once_it_can() {
    let mut receiver = Receiver::start(vec![]).await;
    let store = Arc::new(support::store::FaultyStore::default());
    store.failing_deliveries.store(3, Ordering::SeqCst);
    // With a status endpoint the store keeps delivered events, for their status.
    let layer = builder(&receiver)
        .store(store.clone())
        .status_endpoint("/events")
        .build()
        .unwrap();
    let handle = layer.handle();
    let (status, receipt) = send(&app(layer), async_request()).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(receiver.next().await.answered, StatusCode::OK);
    let event_id = EventId::new(receipt["eventId"].as_u64().unwrap());
    eventually("recorded as delivered", || {
        store.failing_deliveries.load(Ordering::SeqCst) == 0 && handle.metrics().delivered == 1
    })
    .await;
    match store.status(event_id).await.unwrap() {
        Some(EventSnapshot::Finished(notification)) => {
            assert_eq!(notification.state, DeliveryState::Delivered)
        }
        other => panic!("not recorded as delivered: {other:?}"),
    }
}

/// Found by the chaos harness (an immediate PostgreSQL stop): the write of a new event was
/// committed but its answer lost, so the client was refused with `503`, and the event stayed
/// unfinished for as long as the node lived (its job never started; no peer took it over; a
/// request sent again under its key was answered with its receipt). Now the node checks such an
/// event once the store answers: recorded, it ends `interrupted`, notified once.
#[tokio::test]
async fn an_event_refused_as_unrecorded_but_recorded_after_all_ends_interrupted() {
    let mut receiver = Receiver::start(vec![]).await;
    let store = Arc::new(support::store::FaultyStore::default());
    store.lost_dispatch_acks.store(1, Ordering::SeqCst);
    let layer = builder(&receiver).store(store.clone()).build().unwrap();
    let handle = layer.handle();
    let (status, refusal) = send(&app(layer), async_request()).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(refusal["code"], "store_unavailable");
    let notification = receiver.next().await.json();
    assert_eq!(notification["eventStatus"], "failed");
    assert_eq!(notification["error"]["code"], "interrupted");
    let event_id = EventId::new(notification["eventId"].as_u64().unwrap());
    eventually("recorded as delivered", || handle.metrics().delivered == 1).await;
    assert!(
        !matches!(
            store.status(event_id).await.unwrap(),
            Some(EventSnapshot::Unfinished(_))
        ),
        "no longer unfinished"
    );
    let metrics = handle.metrics();
    assert_eq!(
        (metrics.accepted, metrics.completed, metrics.failed),
        (0, 0, 1)
    );
}
