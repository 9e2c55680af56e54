//! The status monitor: polling an event through the URL in the receipt's `Location` header.

mod support;

use std::sync::Arc;
use std::time::Duration;

use axum::{body::Body, routing::post, Router};
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use support::{Answer, Receiver};
use tokio::sync::Notify;
use tower::ServiceExt;
use tower_async_request::{sink::ChannelSink, AsyncRequestLayer};

async fn call(app: &Router, request: Request<Body>) -> (StatusCode, http::HeaderMap, Value) {
    let response = app.clone().oneshot(request).await.unwrap();
    let (parts, body) = response.into_parts();
    let bytes = body.collect().await.unwrap().to_bytes();
    (
        parts.status,
        parts.headers,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

fn async_request(callback: Option<&str>) -> Request<Body> {
    let mut request = Request::post("/work").header("Elements-Async-Request", "true");
    if let Some(url) = callback {
        request = request.header("Elements-Async-Callback-Url", url);
    }
    request.body(Body::from("payload")).unwrap()
}

fn get(uri: &str) -> Request<Body> {
    Request::get(uri).body(Body::empty()).unwrap()
}

/// An app whose handler waits for `gate` before answering `{"copied":true}`.
fn gated_app(layer: AsyncRequestLayer, gate: Arc<Notify>) -> Router {
    Router::new()
        .route(
            "/work",
            post(move || {
                let gate = gate.clone();
                async move {
                    gate.notified().await;
                    axum::Json(json!({"copied": true}))
                }
            }),
        )
        .layer(layer)
}

#[tokio::test]
async fn the_receipt_points_at_a_status_that_follows_the_event_to_delivery() {
    let mut receiver = Receiver::start(vec![Answer::status(503)]).await;
    let layer = AsyncRequestLayer::builder()
        .status_endpoint("/events")
        .allow_private_callbacks(true)
        .retry_schedule([Duration::from_millis(300)])
        .build()
        .unwrap();
    let gate = Arc::new(Notify::new());
    let app = gated_app(layer, gate.clone());

    let (status, headers, receipt) = call(&app, async_request(Some(&receiver.url()))).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let location = headers["location"].to_str().unwrap().to_owned();
    assert!(
        location.starts_with(&format!("/events/{}?token=", receipt["eventId"])),
        "{location}"
    );

    let (status, headers, running) = call(&app, get(&location)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        headers.get("retry-after").map(|v| v.to_str().unwrap()),
        Some("1"),
        "unfinished events say to poll again in a second"
    );
    assert_eq!(running["eventId"], receipt["eventId"]);
    assert!(["dispatched", "running"].contains(&running["eventStatus"].as_str().unwrap()));
    assert_eq!(running["delivery"]["state"], "none");
    assert!(running["notificationId"].is_u64());

    gate.notify_one();
    let first = receiver.next().await;
    assert_eq!(first.answered, StatusCode::SERVICE_UNAVAILABLE);
    let pending = poll_until(&app, &location, |s| s["delivery"]["attempts"] == 1).await;
    assert_eq!(pending["eventStatus"], "completed");
    assert_eq!(pending["delivery"]["state"], "pending");
    assert!(pending["delivery"]["lastError"]
        .as_str()
        .unwrap()
        .contains("503"));

    let delivered_hit = receiver.next().await;
    assert_eq!(delivered_hit.answered, StatusCode::OK);
    let notification = delivered_hit.json();
    poll_until(&app, &location, |s| s["delivery"]["state"] == "delivered").await;
    let (status, headers, done) = call(&app, get(&location)).await;
    assert_eq!(status, StatusCode::OK);
    assert!(!headers.contains_key("retry-after"));
    assert_eq!(done["eventStatus"], "completed");
    assert_eq!(done["statusCode"], 200);
    assert_eq!(done["response"], json!({"copied": true}));
    assert_eq!(
        done["response"], notification["response"],
        "exactly as the notification carries it"
    );
    assert_eq!(done["notificationId"], notification["notificationId"]);
    assert_eq!(
        done["delivery"],
        json!({"state": "delivered", "attempts": 2, "lastError": "the receiver answered 503 Service Unavailable"})
    );
}

/// Polls the status URL every 10 ms until `done` holds (failing after 20 s), like a client would.
async fn poll_until(app: &Router, location: &str, done: impl Fn(&Value) -> bool) -> Value {
    for _ in 0..2000 {
        let (_, _, status) = call(app, get(location)).await;
        if done(&status) {
            return status;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the status never reached the expected state");
}

#[tokio::test]
async fn without_a_callback_url_the_event_is_only_recorded_for_polling() {
    let (sink, mut callbacks) = ChannelSink::new(4);
    let layer = AsyncRequestLayer::builder()
        .status_endpoint("/events")
        .sink(sink)
        .build()
        .unwrap();
    let gate = Arc::new(Notify::new());
    let app = gated_app(layer, gate.clone());
    let (status, headers, _) = call(&app, async_request(None)).await;
    assert_eq!(status, StatusCode::ACCEPTED, "not missing_callback_url");
    let location = headers["location"].to_str().unwrap().to_owned();
    gate.notify_one();
    let done = poll_until(&app, &location, |s| s["eventStatus"] == "completed").await;
    assert_eq!(done["delivery"]["state"], "none");
    assert_eq!(done["response"], json!({"copied": true}));
    assert!(
        callbacks.try_recv().is_none(),
        "nothing is delivered without a callback URL"
    );
}

#[tokio::test]
async fn a_wrong_missing_or_tampered_token_and_an_unknown_id_all_get_the_same_404() {
    let (sink, _callbacks) = ChannelSink::new(4);
    let layer = AsyncRequestLayer::builder()
        .status_endpoint("/events")
        .default_callback_url("https://hooks.example.com/in")
        .sink(sink)
        .build()
        .unwrap();
    let other_layer = AsyncRequestLayer::builder()
        .status_endpoint("/events")
        .build()
        .unwrap();
    let app = gated_app(layer, Arc::new(Notify::new()));
    let (_, headers, receipt) = call(&app, async_request(None)).await;
    let location = headers["location"].to_str().unwrap().to_owned();
    let id = receipt["eventId"].as_u64().unwrap();
    let (path, token) = location.split_once("?token=").unwrap();
    let mut tampered = token.to_owned().into_bytes();
    tampered[3] = if tampered[3] == b'x' { b'y' } else { b'x' };
    let other_app = gated_app(other_layer, Arc::new(Notify::new()));
    let (_, other_headers, _) = call(
        &other_app,
        async_request(Some("https://hooks.example.com/in")),
    )
    .await;
    let foreign_token = other_headers["location"]
        .to_str()
        .unwrap()
        .split_once("?token=")
        .unwrap()
        .1
        .to_owned();

    let mut answers = Vec::new();
    for uri in [
        path.to_owned(),
        format!("{path}?token="),
        format!("{path}?token={}", String::from_utf8(tampered).unwrap()),
        format!("{path}?token={foreign_token}"),
        format!("/events/{}?token={token}", id + 1),
        format!("/events/not-a-number?token={token}"),
        format!("/events/{}?token={token}", u64::MAX),
    ] {
        let (status, headers, body) = call(&app, get(&uri)).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{uri}");
        assert_eq!(headers["content-type"], "application/json");
        answers.push(body);
    }
    assert!(
        answers.windows(2).all(|w| w[0] == w[1]),
        "every 404 is the same: {answers:?}"
    );
    assert_eq!(answers[0]["code"], "not_found");
    assert_eq!(call(&app, get(&location)).await.0, StatusCode::OK);
}

#[tokio::test]
async fn finished_events_are_forgotten_after_the_retention() {
    let (sink, mut callbacks) = ChannelSink::new(4);
    let layer = AsyncRequestLayer::builder()
        .status_endpoint("/events")
        .status_retention(Duration::from_millis(50))
        .default_callback_url("https://hooks.example.com/in")
        .sink(sink)
        .build()
        .unwrap();
    let app = Router::new()
        .route("/work", post(|| async { "done" }))
        .layer(layer);
    let (_, headers, _) = call(&app, async_request(None)).await;
    let location = headers["location"].to_str().unwrap().to_owned();
    callbacks.recv().await.unwrap();
    tokio::time::sleep(Duration::from_millis(120)).await;
    assert_eq!(call(&app, get(&location)).await.0, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn failed_events_report_their_error() {
    let (sink, mut callbacks) = ChannelSink::new(4);
    let layer = AsyncRequestLayer::builder()
        .status_endpoint("/events")
        .default_callback_url("https://hooks.example.com/in")
        .job_timeout(Duration::from_millis(20))
        .sink(sink)
        .build()
        .unwrap();
    let app = gated_app(layer, Arc::new(Notify::new())); // never released: the job times out
    let (_, headers, _) = call(&app, async_request(None)).await;
    let location = headers["location"].to_str().unwrap().to_owned();
    callbacks.recv().await.unwrap();
    let failed = poll_until(&app, &location, |s| s["delivery"]["state"] == "delivered").await;
    assert_eq!(failed["eventStatus"], "failed");
    assert_eq!(failed["error"]["code"], "timeout");
    assert!(failed.get("response").is_none());
}

#[tokio::test]
async fn the_layer_owns_only_get_under_its_prefix() {
    let layer = AsyncRequestLayer::builder()
        .status_endpoint("/events")
        .build()
        .unwrap();
    let app = Router::new()
        .route(
            "/events/other",
            axum::routing::any(|| async { "the app's own route" }),
        )
        .route("/eventsfeed", axum::routing::get(|| async { "feed" }))
        .layer(layer);
    let (status, _, body) = call(&app, get("/events/other")).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("not_found"))
    );
    let post = Request::post("/events/other").body(Body::empty()).unwrap();
    let response = app.clone().oneshot(post).await.unwrap();
    assert_eq!(
        response.status(),
        StatusCode::OK,
        "other methods reach the app"
    );
    let response = app.oneshot(get("/eventsfeed")).await.unwrap();
    assert_eq!(
        response.status(),
        StatusCode::OK,
        "a longer path is not under the prefix"
    );
}

#[tokio::test]
async fn a_store_that_cannot_be_read_is_503_store_unavailable() {
    use std::sync::atomic::Ordering;
    let store = Arc::new(support::store::FaultyStore::default());
    let (sink, mut callbacks) = ChannelSink::new(4);
    let layer = AsyncRequestLayer::builder()
        .status_endpoint("/events")
        .default_callback_url("https://hooks.example.com/in")
        .store(store.clone())
        .sink(sink)
        .build()
        .unwrap();
    let app = Router::new()
        .route("/work", post(|| async { "done" }))
        .layer(layer);
    let (_, headers, _) = call(&app, async_request(None)).await;
    let location = headers["location"].to_str().unwrap().to_owned();
    callbacks.recv().await.unwrap();
    assert_eq!(call(&app, get(&location)).await.0, StatusCode::OK);

    store.failing_reads.store(true, Ordering::SeqCst);
    let (status, headers, body) = call(&app, get(&location)).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(headers["content-type"], "application/json");
    assert_eq!(body["code"], "store_unavailable", "{body}");
    assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()));

    // Once the store answers again, so does the status URL.
    store.failing_reads.store(false, Ordering::SeqCst);
    assert_eq!(call(&app, get(&location)).await.0, StatusCode::OK);
}
