//! RFC 7240 `Prefer: respond-async`, with and without `wait`, and only when enabled.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::{body::Body, extract::Query, routing::post, Router};
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use tower::ServiceExt;
use tower_async_request::{
    sink::{CallbackReceiver, ChannelSink},
    AsyncRequestHandle, AsyncRequestLayer,
};

#[derive(serde::Deserialize)]
struct Work {
    #[serde(default)]
    ms: u64,
    #[serde(default)]
    fail: bool,
}

struct Fixture {
    app: Router,
    callbacks: CallbackReceiver,
    handle: AsyncRequestHandle,
    calls: Arc<AtomicUsize>,
}

fn fixture(enabled: bool) -> Fixture {
    let (sink, callbacks) = ChannelSink::new(16);
    let layer = AsyncRequestLayer::builder()
        .default_callback_url("https://hooks.example.com/in")
        .prefer_respond_async(enabled)
        .sink(sink)
        .build()
        .unwrap();
    let handle = layer.handle();
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let app = Router::new()
        .route(
            "/work",
            post(move |Query(work): Query<Work>| {
                let counter = counter.clone();
                async move {
                    counter.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(work.ms)).await;
                    if work.fail {
                        panic!("the handler failed");
                    }
                    (
                        StatusCode::CREATED,
                        [("x-real", "yes")],
                        format!("slept {}", work.ms),
                    )
                }
            }),
        )
        .layer(layer);
    Fixture {
        app,
        callbacks,
        handle,
        calls,
    }
}

async fn send(app: &Router, uri: &str, prefer: &[&str]) -> (StatusCode, http::HeaderMap, String) {
    let mut request = Request::post(uri);
    for value in prefer {
        request = request.header("Prefer", *value);
    }
    let response = app
        .clone()
        .oneshot(request.body(Body::empty()).unwrap())
        .await
        .unwrap();
    let (parts, body) = response.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    (
        parts.status,
        parts.headers,
        String::from_utf8(body.to_vec()).unwrap(),
    )
}

async fn next_callback(callbacks: &mut CallbackReceiver) -> serde_json::Value {
    let callback = tokio::time::timeout(Duration::from_secs(10), callbacks.recv())
        .await
        .expect("a callback within 10 s")
        .unwrap();
    serde_json::from_slice(callback.body()).unwrap()
}

#[tokio::test]
async fn prefer_is_ignored_unless_enabled() {
    let mut f = fixture(false);
    let (status, headers, body) = send(&f.app, "/work", &["respond-async"]).await;
    assert_eq!((status, body.as_str()), (StatusCode::CREATED, "slept 0"));
    assert!(!headers.contains_key("preference-applied"));
    assert!(f.callbacks.try_recv().is_none());
}

#[tokio::test]
async fn respond_async_gets_a_receipt_with_preference_applied_and_a_callback() {
    let mut f = fixture(true);
    let (status, headers, body) = send(&f.app, "/work", &["respond-async"]).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(headers["preference-applied"], "respond-async");
    let receipt: serde_json::Value = serde_json::from_str(&body).unwrap();
    let notification = next_callback(&mut f.callbacks).await;
    assert_eq!(notification["eventId"], receipt["eventId"]);
    assert_eq!(notification["response"], "slept 0");
}

#[tokio::test]
async fn work_that_finishes_within_wait_is_answered_directly_without_a_callback() {
    let mut f = fixture(true);
    let (status, headers, body) = send(&f.app, "/work?ms=10", &["respond-async, wait=10"]).await;
    assert_eq!((status, body.as_str()), (StatusCode::CREATED, "slept 10"));
    assert_eq!(
        headers["x-real"], "yes",
        "the real response, headers included"
    );
    for _ in 0..100 {
        if f.handle.metrics().completed == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let metrics = f.handle.metrics();
    assert_eq!(
        (
            metrics.accepted,
            metrics.completed,
            metrics.pending,
            metrics.delivered
        ),
        (1, 1, 0, 0)
    );
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(
        f.callbacks.try_recv().is_none(),
        "no callback after a direct answer"
    );
    assert_eq!(f.calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn work_slower_than_wait_gets_the_receipt_then_the_callback() {
    let mut f = fixture(true);
    let (status, headers, body) = send(&f.app, "/work?ms=1500", &["wait=1", "respond-async"]).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(headers["preference-applied"], "respond-async");
    let receipt: serde_json::Value = serde_json::from_str(&body).unwrap();
    let notification = next_callback(&mut f.callbacks).await;
    assert_eq!(notification["eventId"], receipt["eventId"]);
    assert_eq!(notification["eventStatus"], "completed");
    assert_eq!(notification["response"], "slept 1500");
}

#[tokio::test]
async fn work_that_fails_within_wait_is_notified_as_failed() {
    let mut f = fixture(true);
    let (status, _, _) = send(&f.app, "/work?fail=true", &["respond-async, wait=5"]).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let notification = next_callback(&mut f.callbacks).await;
    assert_eq!(notification["eventStatus"], "failed");
    assert_eq!(notification["error"]["code"], "panic");
}

#[tokio::test]
async fn an_explicit_async_header_decides_and_other_preferences_change_nothing() {
    let f = fixture(true);
    let request = Request::post("/work")
        .header("Elements-Async-Request", "false")
        .header("Prefer", "respond-async")
        .body(Body::empty())
        .unwrap();
    assert_eq!(
        f.app.clone().oneshot(request).await.unwrap().status(),
        StatusCode::CREATED
    );
    let (status, _, _) = send(&f.app, "/work", &["return=minimal, handling=strict"]).await;
    assert_eq!(status, StatusCode::CREATED);
}
