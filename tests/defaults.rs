//! The builder's defaults (docs/operating.md, SECURITY.md): each shown by a layer built without
//! setting it. Limits are shown in behaviour at their exact edge; the timeouts of a minute or
//! more run on tokio's paused clock (`start_paused`), which jumps to the next timer whenever
//! nothing else can run, so a 15-minute timeout takes no real time and is measured exactly.
//! Each test also asserts the public `DEFAULT_*` constant the docs name, where there is one, and
//! the setting in the layer's `Debug`, where it shows there.

mod support;

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::routing::post;
use axum::Router;
use bytes::Bytes;
use http::{header, Request, Response, StatusCode};
use serde_json::Value;
use tokio::sync::{mpsc, Semaphore};
use tokio::time::Instant;
use tower::ServiceExt;
use tower_async_request::event::EventId;
use tower_async_request::layer::{
    DEFAULT_JOB_TIMEOUT, DEFAULT_MAX_IN_FLIGHT, DEFAULT_MAX_REQUEST_BYTES,
    DEFAULT_MAX_RESPONSE_BYTES, DEFAULT_REQUEST_BODY_TIMEOUT, DEFAULT_STATUS_RETENTION,
};
use tower_async_request::sink::{
    CallbackReceiver, CallbackSink, ChannelSink, HttpSink, SinkError, DEFAULT_ATTEMPT_TIMEOUT,
};
use tower_async_request::store::{DeliveryState, EventSnapshot};
use tower_async_request::{AsyncRequestHandle, AsyncRequestLayer, AsyncRequestLayerBuilder};

use support::*;

const MIB: usize = 1024 * 1024;
const ONE_SECOND: Duration = Duration::from_secs(1);

/// The builder with nothing set but where callbacks go: the default URL, captured by a
/// `ChannelSink` (the sink is not one of the defaults these tests show, except the attempt
/// timeout's, which has a test of its own).
fn defaults() -> (AsyncRequestLayerBuilder, CallbackReceiver) {
    let (sink, callbacks) = ChannelSink::new(16);
    let builder = AsyncRequestLayer::builder()
        .default_callback_url(DEFAULT_CALLBACK)
        .sink(sink);
    (builder, callbacks)
}

/// `/work` behind the layer, running `handler` with the request body.
fn app<F, Fut>(layer: AsyncRequestLayer, handler: F) -> Router
where
    F: Fn(Bytes) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<Body>> + Send + 'static,
{
    Router::new()
        .route("/work", post(move |body: Bytes| handler(body)))
        .layer(layer)
}

fn async_request(body: impl Into<Body>) -> Request<Body> {
    Request::post("/work")
        .header(ASYNC_HEADER, "true")
        .body(body.into())
        .unwrap()
}

async fn send(app: &Router, request: Request<Body>) -> (StatusCode, http::HeaderMap, Bytes) {
    let response = app.clone().oneshot(request).await.unwrap();
    let (parts, body) = response.into_parts();
    (parts.status, parts.headers, read_body(body).await)
}

/// Answers with the number of body bytes it got.
async fn length(body: Bytes) -> Response<Body> {
    Response::new(Body::from(body.len().to_string()))
}

fn unix_ms(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH).unwrap().as_millis() as u64
}

// ---------------------------------------------------------------------------------------------
// Limits

#[tokio::test]
async fn by_default_an_async_body_may_be_2_mib_and_not_one_byte_more() {
    assert_eq!(DEFAULT_MAX_REQUEST_BYTES, 2 * MIB);
    let (builder, mut callbacks) = defaults();
    let layer = builder.build().unwrap();
    let handle = layer.handle();
    let app = app(layer, length);

    // Announced by its length, and found while reading a body that announces none.
    let announced = async_request(vec![b'x'; 2 * MIB + 1]);
    let streamed = async_request(Body::new(ChunkedBody::new([
        vec![b'x'; MIB],
        vec![b'x'; MIB],
        vec![b'x'; 1],
    ])));
    for request in [announced, streamed] {
        let (status, headers, body) = send(&app, request).await;
        check_refusal(
            status,
            &headers,
            &body,
            StatusCode::PAYLOAD_TOO_LARGE,
            "request_too_large",
        );
    }
    assert_eq!(handle.metrics().accepted, 0);

    // Exactly 2 MiB is taken, and the handler gets all of it.
    let (status, headers, body) = send(&app, async_request(vec![b'x'; 2 * MIB])).await;
    let event_id = check_receipt(status, &headers, &body);
    let notification = json(recv_callback(&mut callbacks).await.body());
    assert_eq!(notification["eventId"], event_id);
    assert_eq!(notification["response"], (2 * MIB).to_string());
}

#[tokio::test]
async fn by_default_a_response_over_1_mib_is_failed_response_too_large() {
    assert_eq!(DEFAULT_MAX_RESPONSE_BYTES, MIB);
    let (builder, mut callbacks) = defaults();
    // The request says how many bytes to answer with.
    let app = app(builder.build().unwrap(), |body: Bytes| async move {
        let size: usize = std::str::from_utf8(&body).unwrap().parse().unwrap();
        Response::new(Body::from(vec![b'y'; size]))
    });

    send(&app, async_request((MIB + 1).to_string())).await;
    let notification = json(recv_callback(&mut callbacks).await.body());
    assert_eq!(
        notification["eventStatus"],
        "failed",
        "{} bytes of response",
        notification["response"].as_str().map_or(0, str::len)
    );
    assert_eq!(notification["error"]["code"], "response_too_large");

    send(&app, async_request(MIB.to_string())).await;
    let notification = json(recv_callback(&mut callbacks).await.body());
    assert_eq!(notification["eventStatus"], "completed");
    assert_eq!(notification["response"].as_str().map(str::len), Some(MIB));
}

#[tokio::test]
async fn by_default_10_000_events_may_be_unfinished_and_the_next_is_overloaded() {
    assert_eq!(DEFAULT_MAX_IN_FLIGHT, 10_000);
    let (builder, _callbacks) = defaults();
    let layer = builder.build().unwrap();
    let handle = layer.handle();
    let config = format!("{layer:?}");
    // Every job waits for a gate the test never opens.
    let gate = Arc::new(Semaphore::new(0));
    let app = app(layer, move |_| {
        let gate = gate.clone();
        async move {
            let _never = gate.acquire().await;
            Response::new(Body::empty())
        }
    });

    for _ in 0..DEFAULT_MAX_IN_FLIGHT {
        let (status, headers, body) = send(&app, async_request(Body::empty())).await;
        check_receipt(status, &headers, &body);
    }
    assert_eq!(handle.health().await.in_flight, 10_000);
    let (status, headers, body) = send(&app, async_request(Body::empty())).await;
    check_refusal(
        status,
        &headers,
        &body,
        StatusCode::SERVICE_UNAVAILABLE,
        "overloaded",
    );
    assert_eq!(headers[header::RETRY_AFTER], "1");
    assert_eq!(handle.metrics().accepted, 10_000);
    assert!(config.contains("max_in_flight: 10000"), "{config}");
}

// ---------------------------------------------------------------------------------------------
// Timeouts, on the paused clock

#[tokio::test(start_paused = true)]
async fn by_default_an_async_body_has_60_seconds_to_arrive() {
    assert_eq!(DEFAULT_REQUEST_BODY_TIMEOUT, Duration::from_secs(60));
    let (builder, _callbacks) = defaults();
    let layer = builder.build().unwrap();
    let config = format!("{layer:?}");
    let app = app(layer, length);

    // A first part, then nothing.
    let (sender, stalled) = ChannelBody::new();
    sender
        .send(Bytes::from_static(b"{\"part\":"))
        .await
        .unwrap();
    let started = Instant::now();
    let (status, headers, body) = send(&app, async_request(Body::new(stalled))).await;
    let waited = started.elapsed();
    check_refusal(
        status,
        &headers,
        &body,
        StatusCode::REQUEST_TIMEOUT,
        "request_body_timeout",
    );
    assert!(
        waited >= DEFAULT_REQUEST_BODY_TIMEOUT
            && waited < DEFAULT_REQUEST_BODY_TIMEOUT + ONE_SECOND,
        "refused after {waited:?}"
    );
    drop(sender);
    assert!(config.contains("request_body_timeout: 60s"), "{config}");
}

#[tokio::test(start_paused = true)]
async fn by_default_a_job_has_15_minutes_then_fails_with_timeout() {
    assert_eq!(DEFAULT_JOB_TIMEOUT, Duration::from_secs(15 * 60));
    let (builder, mut callbacks) = defaults();
    let layer = builder.build().unwrap();
    let config = format!("{layer:?}");
    let app = app(layer, |_| std::future::pending());

    let started = Instant::now();
    let (status, headers, body) = send(&app, async_request(Body::empty())).await;
    let event_id = check_receipt(status, &headers, &body);
    // Not `recv_callback`: its guard would time out first on this clock.
    let callback = callbacks.recv().await.unwrap();
    let waited = started.elapsed();
    let notification = json(callback.body());
    assert_eq!(notification["eventId"], event_id);
    assert_eq!(notification["eventStatus"], "failed");
    assert_eq!(notification["error"]["code"], "timeout", "{notification}");
    assert!(
        waited >= DEFAULT_JOB_TIMEOUT && waited < DEFAULT_JOB_TIMEOUT + ONE_SECOND,
        "failed after {waited:?}"
    );
    assert!(config.contains("job_timeout: Some(900s)"), "{config}");
}

/// A sink whose receiver never answers: each attempt ends only by its timeout. It reports when
/// each attempt began.
#[derive(Debug)]
struct Silent(mpsc::UnboundedSender<Instant>);

impl CallbackSink for Silent {
    async fn send(&self, _: Request<Bytes>) -> Result<Response<Bytes>, SinkError> {
        self.0.send(Instant::now()).unwrap();
        std::future::pending().await
    }
}

#[tokio::test(start_paused = true)]
async fn by_default_a_delivery_attempt_has_15_seconds() {
    assert_eq!(DEFAULT_ATTEMPT_TIMEOUT, Duration::from_secs(15));
    // A sink that never answers; one attempt only, so its end is a dead letter.
    let (attempts, mut attempt_started) = mpsc::unbounded_channel();
    let (dead, mut dead_letters) = mpsc::unbounded_channel();
    let layer = AsyncRequestLayer::builder()
        .default_callback_url(DEFAULT_CALLBACK)
        .sink(Silent(attempts))
        .retry_schedule([])
        .on_dead_letter(move |record| {
            dead.send((Instant::now(), record.last_error.clone()))
                .unwrap();
        })
        .build()
        .unwrap();
    let app = app(layer, length);
    let (status, headers, body) = send(&app, async_request(Body::empty())).await;
    check_receipt(status, &headers, &body);
    let began = attempt_started.recv().await.unwrap();
    let (ended, error) = dead_letters.recv().await.unwrap();
    let took = ended - began;
    assert!(
        took >= DEFAULT_ATTEMPT_TIMEOUT && took < DEFAULT_ATTEMPT_TIMEOUT + ONE_SECOND,
        "the attempt ended after {took:?}"
    );
    let error = error.expect("the attempt's error");
    assert!(error.contains("time"), "{error}");

    // The default sink is an `HttpSink` whose attempts the layer times so; an `HttpSink` made on
    // its own times them so itself.
    let layer = AsyncRequestLayer::builder()
        .default_callback_url(DEFAULT_CALLBACK)
        .build()
        .unwrap();
    let config = format!("{layer:?}");
    assert!(config.contains("HttpSink"), "{config}");
    assert!(config.contains("attempt_timeout: 15s"), "{config}");
    let sink = format!("{:?}", HttpSink::new());
    assert!(sink.contains("timeout: Some(15s)"), "{sink}");
}

// ---------------------------------------------------------------------------------------------
// Status retention and the instance id

/// The event's record, once its notification is delivered.
async fn once_delivered(handle: &AsyncRequestHandle, event_id: u64) -> Option<EventSnapshot> {
    eventually("the notification is delivered", || {
        handle.metrics().delivered == 1
    })
    .await;
    handle.event(EventId::new(event_id)).await.unwrap()
}

#[tokio::test]
async fn with_a_status_endpoint_a_delivered_event_is_kept_24_hours() {
    assert_eq!(DEFAULT_STATUS_RETENTION, Duration::from_secs(24 * 60 * 60));
    let retention = DEFAULT_STATUS_RETENTION.as_millis() as u64;
    let (builder, mut callbacks) = defaults();
    let layer = builder.status_endpoint("/events").build().unwrap();
    let handle = layer.handle();
    let app = app(layer, length);

    let before = unix_ms(SystemTime::now());
    let (_, headers, body) = send(&app, async_request(Body::empty())).await;
    let event_id = json(&body)["eventId"].as_u64().unwrap();
    recv_callback(&mut callbacks).await;
    let Some(EventSnapshot::Finished(record)) = once_delivered(&handle, event_id).await else {
        panic!("a delivered event is kept");
    };
    let after = unix_ms(SystemTime::now());
    assert_eq!(record.state, DeliveryState::Delivered);
    assert!(
        (before + retention..=after + retention).contains(&record.retain_until_ms),
        "kept until {}, delivered between {before} and {after}",
        record.retain_until_ms
    );

    // And readable through the status endpoint.
    let location = headers[header::LOCATION].to_str().unwrap();
    let (status, _, body) = send(&app, Request::get(location).body(Body::empty()).unwrap()).await;
    assert_eq!(status, StatusCode::OK);
    let status: Value = json(&body);
    assert_eq!(status["delivery"]["state"], "delivered", "{status}");
}

#[tokio::test]
async fn without_a_status_endpoint_a_delivered_event_is_not_kept() {
    let (builder, mut callbacks) = defaults();
    let layer = builder.build().unwrap();
    let handle = layer.handle();
    let app = app(layer, length);

    let (status, headers, body) = send(&app, async_request(Body::empty())).await;
    let event_id = check_receipt(status, &headers, &body);
    recv_callback(&mut callbacks).await;
    assert!(
        once_delivered(&handle, event_id).await.is_none(),
        "retention 0: nothing is kept once delivered"
    );
}

#[tokio::test]
async fn by_default_notifications_say_instance_0() {
    let (builder, mut callbacks) = defaults();
    let app = app(builder.build().unwrap(), length);
    let (status, headers, body) = send(&app, async_request(Body::empty())).await;
    let event_id = check_receipt(status, &headers, &body);
    let notification = json(recv_callback(&mut callbacks).await.body());
    assert_eq!(notification["eventId"], event_id);
    assert_eq!(notification["instanceId"], 0, "{notification}");
}
