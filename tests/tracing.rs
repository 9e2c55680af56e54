//! The event's tracing span follows the work into the spawned task and carries its ids.

mod support;

use axum::{body::Body, routing::post, Router};
use http::Request;
use http_body_util::BodyExt;
use tower::ServiceExt;
use tower_async_request::{sink::ChannelSink, AsyncRequestLayer};
use tracing::Instrument;

use support::capture::{capture, field};

#[tokio::test]
async fn the_event_span_follows_the_work_and_names_its_ids() {
    let (seen, _guard) = capture();

    let (sink, mut callbacks) = ChannelSink::new(4);
    let layer = AsyncRequestLayer::builder()
        .instance_id(30)
        .default_callback_url("https://hooks.example.com/in")
        .sink(sink)
        .build()
        .unwrap();
    let app = Router::new()
        .route(
            "/work",
            post(|| async {
                tracing::info!("handler ran");
                "done"
            }),
        )
        .layer(layer);

    let request = Request::post("/work")
        .header("Elements-Async-Request", "true")
        .body(Body::empty())
        .unwrap();
    // As `TraceLayer` does: the request's span is entered whenever its future is polled.
    let outer = tracing::info_span!("incoming_request");
    let response = app.oneshot(request).instrument(outer).await.unwrap();
    let receipt: serde_json::Value =
        serde_json::from_slice(&response.into_body().collect().await.unwrap().to_bytes()).unwrap();
    let event_id = receipt["eventId"].to_string();
    let callback = callbacks.recv().await.unwrap();
    let notification: serde_json::Value = serde_json::from_slice(callback.body()).unwrap();

    let seen = seen.lock().unwrap().clone();
    let (_, fields, parent) = seen.span("async_request").expect("an async_request span");
    assert_eq!(
        field(fields, "event_id"),
        Some(event_id.as_str()),
        "{fields:?}"
    );
    let notification_id = notification["notificationId"].to_string();
    assert_eq!(
        field(fields, "notification_id"),
        Some(notification_id.as_str())
    );
    assert_eq!(notification["instanceId"], 30);
    assert_eq!(field(fields, "instance_id"), Some("30"), "{fields:?}");
    assert_eq!(
        parent.as_deref(),
        Some("incoming_request"),
        "the caller's span is the parent"
    );

    let handler = seen.events("handler ran");
    assert_eq!(
        handler[0].2,
        ["incoming_request", "async_request"],
        "the spawned work runs inside the event's span"
    );

    let (_, fields, parent) = seen
        .span("delivery_attempt")
        .expect("a delivery_attempt span");
    assert_eq!(field(fields, "attempt"), Some("1"));
    assert_eq!(parent.as_deref(), Some("async_request"));
}
