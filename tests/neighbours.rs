//! How `AsyncRequestLayer` composes with tower-http's `TimeoutLayer`, `CompressionLayer`,
//! `RequestBodyLimitLayer`, `CatchPanicLayer` and `TraceLayer`: each layer in the recommended
//! position and, where it matters, in the other one. `docs/neighbours.md` summarises the results
//! and names the test behind each row.
//!
//! axum's `Router::layer` makes the LAST layer added the OUTERMOST, so
//! `.layer(async_layer).layer(X)` puts `X` outside the async layer (it sees the receipt) and
//! `.layer(X).layer(async_layer)` puts it inside (it wraps the handler and runs inside the job).

mod support;

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use http::header::{ACCEPT_ENCODING, CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE};
use http::{Request, Response, StatusCode};
use serde_json::{json, Map, Value};
use tower::{ServiceBuilder, ServiceExt};
use tower_async_request::sink::{CallbackReceiver, ChannelSink};
use tower_async_request::{
    layer::RequestBody, AsyncRequestHandle, AsyncRequestLayer, AsyncRequestLayerBuilder,
};
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::compression::CompressionLayer;
use tower_http::decompression::DecompressionLayer;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;

use support::*;

/// What a slow handler sleeps; every timeout below is well under it.
const SLOW: Duration = Duration::from_millis(1200);
/// The timeouts used against `SLOW`.
const SHORT: Duration = Duration::from_millis(300);

/// A JSON document large enough (> 32 bytes) for `CompressionLayer`'s default predicate.
fn document() -> Value {
    json!({
        "events": [
            { "path": "/documents/reports/2024", "type": "folder", "copied": true },
            { "path": "/documents/reports/2025", "type": "folder", "copied": true }
        ]
    })
}

fn builder(sink: ChannelSink) -> AsyncRequestLayerBuilder {
    AsyncRequestLayer::builder()
        .instance_id(30)
        .default_callback_url(DEFAULT_CALLBACK)
        .sink(sink)
}

/// A layer with a channel sink, its callbacks, and the layer's handle for metrics.
fn layer_with(
    configure: impl FnOnce(AsyncRequestLayerBuilder) -> AsyncRequestLayerBuilder,
) -> (AsyncRequestLayer, CallbackReceiver) {
    let (sink, callbacks) = ChannelSink::new(16);
    let layer = configure(builder(sink))
        .build()
        .expect("a valid configuration");
    (layer, callbacks)
}

fn async_post(path: &str, body: Body) -> Request<Body> {
    Request::post(path)
        .header(ASYNC_HEADER, "true")
        .body(body)
        .unwrap()
}

fn sync_get(path: &str) -> Request<Body> {
    Request::get(path).body(Body::empty()).unwrap()
}

/// Sends one request through `app` and returns the response head and whole body.
async fn send(app: &Router, request: Request<Body>) -> (http::response::Parts, Bytes) {
    let response = app.clone().oneshot(request).await.unwrap();
    let (parts, body) = response.into_parts();
    (parts, read_body(body).await)
}

/// The next notification as a JSON object, checked to belong to `event_id`.
async fn notification(callbacks: &mut CallbackReceiver, event_id: u64) -> Map<String, Value> {
    let callback = recv_callback(callbacks).await;
    assert_eq!(callback.uri().to_string(), DEFAULT_CALLBACK);
    let value = json(callback.body());
    assert_eq!(value["eventId"], event_id, "{value}");
    value.as_object().unwrap().clone()
}

/// No event exists but the `accepted` ones whose receipts the test saw — the receipt's write
/// comes before its answer, so a refused request that made one would show here at once — and no
/// callback is queued: none can come for what was refused.
fn assert_no_other_event(
    handle: &AsyncRequestHandle,
    accepted: u64,
    callbacks: &mut CallbackReceiver,
) {
    assert_eq!(handle.metrics().accepted, accepted, "events accepted");
    if let Some(callback) = callbacks.try_recv() {
        panic!(
            "unexpected callback: {}",
            String::from_utf8_lossy(callback.body())
        );
    }
}

fn assert_completed(object: &Map<String, Value>, status: u16) {
    assert_eq!(object["eventStatus"], "completed", "{object:?}");
    assert_eq!(object["statusCode"], status, "{object:?}");
    assert!(!object.contains_key("error"), "{object:?}");
}

fn assert_failed(object: &Map<String, Value>, code: &str) {
    assert_eq!(object["eventStatus"], "failed", "{object:?}");
    assert_eq!(object["error"]["code"], code, "{object:?}");
    assert!(!object.contains_key("statusCode"), "{object:?}");
    assert!(!object.contains_key("response"), "{object:?}");
}

/// Decompresses a gzip body the way an HTTP client does, with tower-http's `DecompressionLayer`.
async fn gunzip(compressed: Bytes) -> Bytes {
    let service = ServiceBuilder::new()
        .layer(DecompressionLayer::new())
        .service_fn(move |_: Request<Body>| {
            let compressed = compressed.clone();
            async move {
                Ok::<_, Infallible>(
                    Response::builder()
                        .header(CONTENT_ENCODING, "gzip")
                        .body(Body::from(compressed))
                        .unwrap(),
                )
            }
        });
    let response = service.oneshot(Request::new(Body::empty())).await.unwrap();
    read_body(response.into_body()).await
}

fn is_gzip(bytes: &[u8]) -> bool {
    bytes.starts_with(&[0x1f, 0x8b])
}

// ---------------------------------------------------------------------------------------------
// TimeoutLayer
// ---------------------------------------------------------------------------------------------

fn timeout_layer() -> TimeoutLayer {
    TimeoutLayer::with_status_code(StatusCode::REQUEST_TIMEOUT, SHORT)
}

/// What became of a slow handler: whether it ran to the end, and a signal when it ended either
/// way (ran to the end, or was dropped).
#[derive(Default)]
struct Slow {
    finished: AtomicBool,
    ended: tokio::sync::Notify,
}

impl Slow {
    fn finished(&self) -> bool {
        self.finished.load(Ordering::SeqCst)
    }

    /// Waits until the handler has ended, however it ended.
    async fn ended(&self) {
        tokio::time::timeout(Duration::from_secs(20), self.ended.notified())
            .await
            .expect("the slow handler ends");
    }
}

/// Signals `Slow::ended` when the handler's future goes, run to the end or dropped.
struct Ended(Arc<Slow>);

impl Drop for Ended {
    fn drop(&mut self) {
        self.0.ended.notify_one();
    }
}

/// A route that sleeps `SLOW` and then answers JSON, telling `slow` how it went.
fn slow_routes(slow_handler: Arc<Slow>) -> Router {
    let slow = move || {
        let ended = Ended(slow_handler.clone());
        async move {
            tokio::time::sleep(SLOW).await;
            ended.0.finished.store(true, Ordering::SeqCst);
            Json(json!({ "slow": true }))
        }
    };
    Router::new()
        .route("/slow", post(slow.clone()))
        .route("/slow", get(slow))
}

#[tokio::test]
async fn timeout_outside_bounds_the_receipt_not_the_job() {
    let (layer, mut callbacks) = layer_with(|b| b);
    let slow = Arc::new(Slow::default());
    let app = slow_routes(slow.clone())
        .layer(layer)
        .layer(timeout_layer());

    // The receipt, not the timeout's 408: the outer timeout never sees the job.
    let (parts, body) = send(&app, async_post("/slow", Body::empty())).await;
    let event_id = check_receipt(parts.status, &parts.headers, &body);
    // The job runs past the outer timeout and completes with the handler's own answer.
    let object = notification(&mut callbacks, event_id).await;
    assert_completed(&object, 200);
    assert_eq!(object["response"], json!({ "slow": true }));
    assert!(slow.finished());

    // The synchronous path is bounded as usual.
    let (parts, body) = send(&app, sync_get("/slow")).await;
    assert_eq!(parts.status, StatusCode::REQUEST_TIMEOUT);
    assert!(body.is_empty());
}

#[tokio::test]
async fn timeout_outside_bounds_reading_an_async_body_and_nothing_is_accepted() {
    let (layer, mut callbacks) = layer_with(|b| b);
    let handle = layer.handle();
    let calls = counter();
    let seen = calls.clone();
    let app = Router::new()
        .route(
            "/upload",
            post(move |body: Bytes| {
                bump(&seen);
                async move { body.len().to_string() }
            }),
        )
        .layer(layer)
        .layer(timeout_layer());

    // The layer reads an async body completely before it answers; a client that never finishes
    // sending it is cut off by the outer timeout, before any event exists.
    let (sender, stalled) = ChannelBody::new();
    sender
        .send(Bytes::from_static(b"first chunk"))
        .await
        .unwrap();
    let (parts, _) = send(&app, async_post("/upload", Body::new(stalled))).await;
    assert_eq!(parts.status, StatusCode::REQUEST_TIMEOUT);
    assert!(!parts.headers.contains_key("elements-event-id"));
    drop(sender);
    assert_no_other_event(&handle, 0, &mut callbacks);
    assert_eq!(handle.metrics().accepted, 0);
    assert_eq!(count(&calls), 0);
}

#[tokio::test]
async fn timeout_inside_turns_a_slow_job_into_a_completed_408() {
    let slow = Arc::new(Slow::default());
    let (layer, mut callbacks) = layer_with(|b| b);
    let app = slow_routes(slow.clone())
        .layer(timeout_layer())
        .layer(layer);

    let (parts, body) = send(&app, async_post("/slow", Body::empty())).await;
    let event_id = check_receipt(parts.status, &parts.headers, &body);
    // The timeout's own response is the job's response: `completed`, status 408, empty body.
    let object = notification(&mut callbacks, event_id).await;
    assert_completed(&object, 408);
    assert_eq!(object["response"], Value::Null);
    // The handler was dropped at the timeout, not left running.
    slow.ended().await;
    assert!(!slow.finished(), "the handler ran to the end");
}

#[tokio::test]
async fn job_timeout_makes_a_slow_job_failed_timeout() {
    let slow = Arc::new(Slow::default());
    let (layer, mut callbacks) = layer_with(|b| b.job_timeout(SHORT));
    let app = slow_routes(slow.clone()).layer(layer);

    let (parts, body) = send(&app, async_post("/slow", Body::empty())).await;
    let event_id = check_receipt(parts.status, &parts.headers, &body);
    let object = notification(&mut callbacks, event_id).await;
    assert_failed(&object, "timeout");
    slow.ended().await;
    assert!(!slow.finished(), "the handler ran to the end");

    // `job_timeout` only limits jobs: the same handler, synchronously, runs to the end.
    let (parts, body) = send(&app, sync_get("/slow")).await;
    assert_eq!(parts.status, StatusCode::OK);
    assert_eq!(json(&body), json!({ "slow": true }));
}

#[tokio::test]
async fn timeout_outside_in_a_service_builder_bounds_the_receipt_not_the_job() {
    // `Timeout` makes its own (empty) response body with `Default`, which `ResponseBody` has, so
    // it sits directly outside our layer in a `ServiceBuilder`.
    let (layer, mut callbacks) = layer_with(|b| b);
    let service = ServiceBuilder::new()
        .layer(timeout_layer())
        .layer(layer)
        .service_fn(|_: Request<RequestBody<Body>>| async {
            tokio::time::sleep(SLOW).await;
            Ok::<_, Infallible>(Response::new(Body::from("late but complete")))
        });

    let response = service
        .clone()
        .oneshot(async_post("/", Body::empty()))
        .await;
    let (parts, body) = response.unwrap().into_parts();
    let event_id = check_receipt(parts.status, &parts.headers, &read_body(body).await);
    let object = notification(&mut callbacks, event_id).await;
    assert_completed(&object, 200);
    assert_eq!(object["response"], "late but complete");

    let response = service.oneshot(Request::new(Body::empty())).await.unwrap();
    assert_eq!(response.status(), StatusCode::REQUEST_TIMEOUT);
}

// ---------------------------------------------------------------------------------------------
// CompressionLayer
// ---------------------------------------------------------------------------------------------

fn document_routes() -> Router {
    Router::new()
        .route("/doc", post(|| async { Json(document()) }))
        .route("/doc", get(|| async { Json(document()) }))
}

fn with_gzip(mut request: Request<Body>) -> Request<Body> {
    request
        .headers_mut()
        .insert(ACCEPT_ENCODING, "gzip".parse().unwrap());
    request
}

#[tokio::test]
async fn compression_outside_compresses_the_receipt_and_the_notification_is_plain_json() {
    let (layer, mut callbacks) = layer_with(|b| b);
    let app = document_routes()
        .layer(layer)
        .layer(CompressionLayer::new());

    // The receipt is a response like any other: over 32 bytes, so it is gzip for a client that
    // accepts gzip; its status and headers are unchanged.
    let (parts, body) = send(&app, with_gzip(async_post("/doc", Body::empty()))).await;
    assert_eq!(parts.status, StatusCode::ACCEPTED);
    assert_eq!(parts.headers[CONTENT_ENCODING], "gzip");
    assert_eq!(parts.headers[CONTENT_TYPE], "application/json");
    assert!(parts.headers.contains_key("elements-event-id"));
    assert!(is_gzip(&body), "{body:?}");
    let event_id = check_receipt(parts.status, &parts.headers, &gunzip(body).await);

    // The notification carries the handler's plain JSON: compression never saw it.
    let object = notification(&mut callbacks, event_id).await;
    assert_completed(&object, 200);
    assert_eq!(object["response"], document());
    assert!(!object.contains_key("responseEncoding"));

    // Without accept-encoding the receipt is plain.
    let (parts, body) = send(&app, async_post("/doc", Body::empty())).await;
    assert!(!parts.headers.contains_key(CONTENT_ENCODING));
    let event_id = check_receipt(parts.status, &parts.headers, &body);
    assert_eq!(
        notification(&mut callbacks, event_id).await["response"],
        document()
    );

    // Synchronous responses are compressed as usual.
    let (parts, body) = send(&app, with_gzip(sync_get("/doc"))).await;
    assert_eq!(parts.status, StatusCode::OK);
    assert_eq!(parts.headers[CONTENT_ENCODING], "gzip");
    assert_eq!(json(&gunzip(body).await), document());

    // So are refusals.
    let (parts, body) = send(
        &app,
        with_gzip(bad_callback_url(async_post("/doc", Body::empty()))),
    )
    .await;
    assert_eq!(parts.status, StatusCode::BAD_REQUEST);
    assert_eq!(parts.headers[CONTENT_ENCODING], "gzip");
    assert_eq!(json(&gunzip(body).await)["code"], "invalid_callback_url");
}

/// The request names a callback URL the layer refuses (`400 invalid_callback_url`).
fn bad_callback_url(mut request: Request<Body>) -> Request<Body> {
    request.headers_mut().insert(
        "elements-async-callback-url",
        http::HeaderValue::from_static("ftp://hooks.example.com/in"),
    );
    request
}

#[tokio::test]
async fn compression_inside_puts_base64_gzip_in_the_notification() {
    let (layer, mut callbacks) = layer_with(|b| b);
    let app = document_routes()
        .layer(CompressionLayer::new())
        .layer(layer);

    // The receipt is the layer's own, uncompressed.
    let (parts, body) = send(&app, with_gzip(async_post("/doc", Body::empty()))).await;
    assert!(!parts.headers.contains_key(CONTENT_ENCODING));
    let event_id = check_receipt(parts.status, &parts.headers, &body);

    // The job's request still carries the client's accept-encoding, so the handler's JSON is
    // gzipped; the bytes are not UTF-8, so the notification carries them as base64. It does not
    // say they are gzip (the inner content-encoding header is dropped): the receiver has to guess.
    let object = notification(&mut callbacks, event_id).await;
    assert_completed(&object, 200);
    assert_eq!(object["responseEncoding"], "base64");
    let keys: Vec<&str> = object.keys().map(String::as_str).collect();
    assert!(
        !keys
            .iter()
            .any(|k| k.to_ascii_lowercase().contains("content")),
        "{keys:?}"
    );
    let raw = STANDARD
        .decode(object["response"].as_str().expect("a base64 string"))
        .unwrap();
    assert!(is_gzip(&raw), "{raw:?}");
    assert_eq!(json(&gunzip(Bytes::from(raw)).await), document());

    // The same request without accept-encoding gives plain JSON: the notification's shape depends
    // on a header the receiver never sees.
    let (parts, body) = send(&app, async_post("/doc", Body::empty())).await;
    let event_id = check_receipt(parts.status, &parts.headers, &body);
    let object = notification(&mut callbacks, event_id).await;
    assert_eq!(object["response"], document());
    assert!(!object.contains_key("responseEncoding"));
}

// ---------------------------------------------------------------------------------------------
// RequestBodyLimitLayer
// ---------------------------------------------------------------------------------------------

const LIMIT: usize = 16;
const OVERSIZED: &[u8] = b"0123456789abcdef0123456789abcdef0123456789abcdef";

fn upload_routes(calls: Arc<std::sync::atomic::AtomicUsize>) -> Router {
    Router::new().route(
        "/upload",
        post(move |body: Bytes| {
            bump(&calls);
            async move { format!("{} bytes", body.len()) }
        }),
    )
}

/// An async request with an oversized body that announces its length.
fn oversized_with_length() -> Request<Body> {
    let mut request = async_post("/upload", Body::from(OVERSIZED));
    request
        .headers_mut()
        .insert(CONTENT_LENGTH, OVERSIZED.len().into());
    request
}

/// An async request with an oversized body streamed without a length.
fn oversized_streamed() -> Request<Body> {
    async_post(
        "/upload",
        Body::new(ChunkedBody::new([&OVERSIZED[..12], &OVERSIZED[12..]])),
    )
}

#[tokio::test]
async fn body_limit_outside_refuses_oversized_async_requests_before_any_event() {
    let (layer, mut callbacks) = layer_with(|b| b);
    let handle = layer.handle();
    let calls = counter();
    let app = upload_routes(calls.clone())
        .layer(layer)
        .layer(RequestBodyLimitLayer::new(LIMIT));

    // Content-Length over the limit: tower-http answers 413 itself (plain text), before our layer.
    let (parts, body) = send(&app, oversized_with_length()).await;
    assert_eq!(parts.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(parts.headers[CONTENT_TYPE], "text/plain; charset=utf-8");
    assert_eq!(body, "length limit exceeded");

    // No length: our layer reads the body through tower-http's limit (wrapped in `axum::Error`
    // by the Router) and refuses the request as too large.
    let (parts, body) = send(&app, oversized_streamed()).await;
    assert_eq!(parts.status, StatusCode::PAYLOAD_TOO_LARGE, "{parts:?}");
    assert_eq!(json(&body)["code"], "request_too_large");

    assert_no_other_event(&handle, 0, &mut callbacks);
    assert_eq!(handle.metrics().accepted, 0);
    assert_eq!(count(&calls), 0);

    // Within the limit, the request is accepted as usual.
    let (parts, body) = send(&app, async_post("/upload", Body::from("small"))).await;
    let event_id = check_receipt(parts.status, &parts.headers, &body);
    let object = notification(&mut callbacks, event_id).await;
    assert_completed(&object, 200);
    assert_eq!(object["response"], "5 bytes");
}

#[tokio::test]
async fn body_limit_outside_in_a_service_builder_is_refused_as_request_too_large() {
    // In a plain `ServiceBuilder` nothing re-wraps the body between the two layers, so the limit
    // error reaches our layer as it is and the refusal is our JSON `413 request_too_large`.
    let (layer, mut callbacks) = layer_with(|b| b);
    let handle = layer.handle();
    let service = ServiceBuilder::new()
        .layer(RequestBodyLimitLayer::new(LIMIT))
        .layer(layer)
        .service_fn(
            |_: Request<RequestBody<tower_http::body::Limited<Body>>>| async {
                Ok::<_, Infallible>(Response::new(Body::from("handled")))
            },
        );
    let response = service.oneshot(oversized_streamed()).await.unwrap();
    let (parts, body) = response.into_parts();
    check_refusal(
        parts.status,
        &parts.headers,
        &read_body(body).await,
        StatusCode::PAYLOAD_TOO_LARGE,
        "request_too_large",
    );
    assert_no_other_event(&handle, 0, &mut callbacks);
}

#[tokio::test]
async fn body_limit_inside_accepts_then_reports_413_in_the_notification() {
    let (layer, mut callbacks) = layer_with(|b| b);
    let handle = layer.handle();
    let calls = counter();
    let app = upload_routes(calls.clone())
        .layer(RequestBodyLimitLayer::new(LIMIT))
        .layer(layer);

    // Our layer (2 MiB default) accepts the body, so the client gets a receipt; the limit acts in
    // the job, and the client learns of the refusal only from the notification.
    let (parts, body) = send(&app, oversized_with_length()).await;
    let event_id = check_receipt(parts.status, &parts.headers, &body);
    let object = notification(&mut callbacks, event_id).await;
    assert_completed(&object, 413);
    assert_eq!(object["response"], "length limit exceeded");
    assert_eq!(count(&calls), 0, "tower-http refused before the handler");

    // Without a Content-Length the handler's body extractor hits the limit: also a 413.
    let (parts, body) = send(&app, oversized_streamed()).await;
    let event_id = check_receipt(parts.status, &parts.headers, &body);
    let object = notification(&mut callbacks, event_id).await;
    assert_completed(&object, 413);
    assert_eq!(
        object["response"],
        "Failed to buffer the request body: length limit exceeded"
    );
    assert_eq!(handle.metrics().accepted, 2);
}

#[tokio::test]
async fn max_request_bytes_refuses_with_413_request_too_large() {
    let (layer, mut callbacks) = layer_with(|b| b.max_request_bytes(LIMIT));
    let handle = layer.handle();
    let calls = counter();
    let app = upload_routes(calls.clone()).layer(layer);

    for request in [oversized_with_length(), oversized_streamed()] {
        let (parts, body) = send(&app, request).await;
        check_refusal(
            parts.status,
            &parts.headers,
            &body,
            StatusCode::PAYLOAD_TOO_LARGE,
            "request_too_large",
        );
    }
    assert_no_other_event(&handle, 0, &mut callbacks);
    assert_eq!(count(&calls), 0);

    // It limits async requests only: the synchronous path is not limited by it.
    let (parts, body) = send(
        &app,
        Request::post("/upload")
            .body(Body::from(OVERSIZED))
            .unwrap(),
    )
    .await;
    assert_eq!(parts.status, StatusCode::OK);
    assert_eq!(body, format!("{} bytes", OVERSIZED.len()));
}

// ---------------------------------------------------------------------------------------------
// CatchPanicLayer
// ---------------------------------------------------------------------------------------------

async fn exploding() -> &'static str {
    panic!("the handler exploded")
}

fn panic_routes() -> Router {
    Router::new()
        .route("/panic", post(exploding))
        .route("/panic", get(exploding))
        .route("/fine", post(|| async { "fine" }))
}

#[tokio::test]
async fn catch_panic_inside_turns_a_panic_into_a_completed_500() {
    let (layer, mut callbacks) = layer_with(|b| b);
    let handle = layer.handle();
    let app = panic_routes().layer(CatchPanicLayer::new()).layer(layer);

    let (parts, body) = send(&app, async_post("/panic", Body::empty())).await;
    let event_id = check_receipt(parts.status, &parts.headers, &body);
    let object = notification(&mut callbacks, event_id).await;
    assert_completed(&object, 500);
    assert_eq!(object["response"], "Service panicked");
    let metrics = handle.metrics();
    assert_eq!((metrics.completed, metrics.failed), (1, 0));
}

/// A service that panics in `Service::call` itself, before it returns a future (as a
/// `service_fn` closure or a hand-written service can; axum's `Router` defers to its future).
fn explode_in_call(
    _: Request<RequestBody<Body>>,
) -> std::future::Ready<Result<Response<Body>, Infallible>> {
    panic!("exploded in call")
}

#[tokio::test]
async fn catch_panic_inside_also_catches_a_panic_in_call() {
    let (layer, mut callbacks) = layer_with(|b| b);
    let service = ServiceBuilder::new()
        .layer(layer)
        .layer(CatchPanicLayer::new())
        .service_fn(explode_in_call);

    let response = service.oneshot(async_post("/", Body::empty())).await;
    let (parts, body) = response.unwrap().into_parts();
    let event_id = check_receipt(parts.status, &parts.headers, &read_body(body).await);
    let object = notification(&mut callbacks, event_id).await;
    assert_completed(&object, 500);
    assert_eq!(object["response"], "Service panicked");
}

#[tokio::test]
async fn catch_panic_outside_covers_the_sync_path_and_the_job_reports_failed_panic() {
    let (layer, mut callbacks) = layer_with(|b| b);
    let handle = layer.handle();
    let app = panic_routes().layer(layer).layer(CatchPanicLayer::new());

    // The panic happens in the job, after the receipt: the outer layer never sees it, and our
    // layer catches it and reports `failed`/`panic` (the panic message is not sent).
    let (parts, body) = send(&app, async_post("/panic", Body::empty())).await;
    let event_id = check_receipt(parts.status, &parts.headers, &body);
    let object = notification(&mut callbacks, event_id).await;
    assert_failed(&object, "panic");
    assert!(!object["error"]["message"]
        .as_str()
        .unwrap()
        .contains("exploded"));
    let metrics = handle.metrics();
    assert_eq!((metrics.completed, metrics.failed), (0, 1));

    // The synchronous path gets CatchPanic's 500.
    let (parts, body) = send(&app, sync_get("/panic")).await;
    assert_eq!(parts.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(body, "Service panicked");

    // The app keeps working.
    let (parts, body) = send(&app, async_post("/fine", Body::empty())).await;
    let event_id = check_receipt(parts.status, &parts.headers, &body);
    assert_completed(&notification(&mut callbacks, event_id).await, 200);
}

#[tokio::test]
async fn without_catch_panic_a_sync_panic_reaches_the_caller() {
    let (layer, mut callbacks) = layer_with(|b| b);
    let app = panic_routes().layer(layer);

    // Our layer catches panics of jobs only; a synchronous request is passed through untouched,
    // panic included (under `axum::serve` it ends that connection's task).
    let sync = tokio::spawn(app.clone().oneshot(sync_get("/panic")));
    assert!(sync.await.unwrap_err().is_panic());

    let (parts, body) = send(&app, async_post("/panic", Body::empty())).await;
    let event_id = check_receipt(parts.status, &parts.headers, &body);
    assert_failed(&notification(&mut callbacks, event_id).await, "panic");
}

// ---------------------------------------------------------------------------------------------
// TraceLayer
// ---------------------------------------------------------------------------------------------

use support::capture::{capture, field, take};

fn traced_routes() -> Router {
    let work = || async {
        tracing::info!("handler ran");
        "done"
    };
    Router::new()
        .route("/work", post(work))
        .route("/work", get(work))
}

const FINISHED: &str = "finished processing request";

#[tokio::test]
async fn trace_outside_parents_the_event_span_and_logs_the_receipt() {
    let (captured, _guard) = capture();
    let (layer, mut callbacks) = layer_with(|b| b);
    let app = traced_routes()
        .layer(layer)
        .layer(TraceLayer::new_for_http());

    let (parts, body) = send(&app, async_post("/work", Body::empty())).await;
    let event_id = check_receipt(parts.status, &parts.headers, &body);
    assert_completed(&notification(&mut callbacks, event_id).await, 200);

    let seen = take(&captured);
    // TraceLayer's request span is the parent of the event's span...
    let (_, fields, parent) = seen.span("async_request").expect("an async_request span");
    assert_eq!(parent.as_deref(), Some("request"));
    assert_eq!(
        field(fields, "event_id"),
        Some(event_id.to_string().as_str())
    );
    let (_, fields, parent) = seen.span("request").expect("a request span");
    assert_eq!(parent, &None);
    assert_eq!(field(fields, "uri"), Some("/work"));
    // ...so the job's own events are under both.
    let handler = seen.events("handler ran");
    assert_eq!(handler.len(), 1);
    assert_eq!(handler[0].2, ["request", "async_request"]);
    // TraceLayer logs the receipt: status 202, latency of the receipt, not of the job.
    let finished = seen.events(FINISHED);
    assert_eq!(finished.len(), 1, "{finished:?}");
    assert_eq!(field(&finished[0].1, "status"), Some("202"));
    assert_eq!(finished[0].2, ["request"]);
    // Delivery attempts are under the event's span too.
    let (_, _, parent) = seen
        .span("delivery_attempt")
        .expect("a delivery_attempt span");
    assert_eq!(parent.as_deref(), Some("async_request"));

    // A refusal is logged by it too, with its status.
    let (parts, _) = send(&app, bad_callback_url(async_post("/work", Body::empty()))).await;
    assert_eq!(parts.status, StatusCode::BAD_REQUEST);
    let seen = take(&captured);
    let finished = seen.events(FINISHED);
    assert_eq!(finished.len(), 1, "{finished:?}");
    assert_eq!(field(&finished[0].1, "status"), Some("400"));

    // The synchronous path is traced as usual, with no event span.
    let (parts, body) = send(&app, sync_get("/work")).await;
    assert_eq!(
        (parts.status, body.as_ref()),
        (StatusCode::OK, &b"done"[..])
    );
    let seen = take(&captured);
    assert!(seen.span("async_request").is_none());
    assert_eq!(seen.events("handler ran")[0].2, ["request"]);
    let finished = seen.events(FINISHED);
    assert_eq!(finished.len(), 1, "{finished:?}");
    assert_eq!(field(&finished[0].1, "status"), Some("200"));
}

#[tokio::test]
async fn trace_inside_gives_each_job_a_request_span_with_the_real_status() {
    let (captured, _guard) = capture();
    let (layer, mut callbacks) = layer_with(|b| b);
    let app = traced_routes()
        .layer(TraceLayer::new_for_http())
        .layer(layer);

    let (parts, body) = send(&app, async_post("/work", Body::empty())).await;
    let event_id = check_receipt(parts.status, &parts.headers, &body);
    assert_completed(&notification(&mut callbacks, event_id).await, 200);

    let seen = take(&captured);
    // The request span is made in the job, under the event's span; the event span has no parent.
    let (_, _, parent) = seen.span("async_request").expect("an async_request span");
    assert_eq!(parent, &None);
    let (_, _, parent) = seen.span("request").expect("a request span");
    assert_eq!(parent.as_deref(), Some("async_request"));
    assert_eq!(
        seen.events("handler ran")[0].2,
        ["async_request", "request"]
    );
    // TraceLayer logs the job's real response (200); the receipt and refusals are not traced.
    let finished = seen.events(FINISHED);
    assert_eq!(finished.len(), 1, "{finished:?}");
    assert_eq!(field(&finished[0].1, "status"), Some("200"));
    assert_eq!(finished[0].2, ["async_request", "request"]);

    // Synchronous requests pass through to the inner TraceLayer and are traced as usual.
    let (parts, _) = send(&app, sync_get("/work")).await;
    assert_eq!(parts.status, StatusCode::OK);
    let seen = take(&captured);
    assert!(seen.span("async_request").is_none());
    assert_eq!(seen.events("handler ran")[0].2, ["request"]);
    let finished = seen.events(FINISHED);
    assert_eq!(finished.len(), 1, "{finished:?}");
    assert_eq!(field(&finished[0].1, "status"), Some("200"));
}

// ---------------------------------------------------------------------------------------------
// The recommended stack, as in docs/neighbours.md
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn recommended_router_stack_serves_sync_and_async_requests() {
    let (layer, mut callbacks) = layer_with(|b| b.job_timeout(Duration::from_secs(60)));
    let handle = layer.handle();
    let app = Router::new()
        .route("/doc", post(|| async { Json(document()) }))
        .route("/doc", get(|| async { Json(document()) }))
        .route("/panic", post(exploding))
        .layer(layer) // innermost of these: the others see the receipt
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            Duration::from_secs(10),
        ))
        .layer(RequestBodyLimitLayer::new(LIMIT))
        .layer(CompressionLayer::new())
        .layer(CatchPanicLayer::new())
        .layer(TraceLayer::new_for_http()); // outermost

    let (parts, body) = send(&app, with_gzip(async_post("/doc", Body::empty()))).await;
    assert_eq!(parts.headers[CONTENT_ENCODING], "gzip");
    let event_id = check_receipt(parts.status, &parts.headers, &gunzip(body).await);
    let object = notification(&mut callbacks, event_id).await;
    assert_completed(&object, 200);
    assert_eq!(object["response"], document());

    let (parts, body) = send(&app, async_post("/panic", Body::empty())).await;
    let event_id = check_receipt(parts.status, &parts.headers, &body);
    assert_failed(&notification(&mut callbacks, event_id).await, "panic");

    let (parts, _) = send(&app, oversized_with_length()).await;
    assert_eq!(parts.status, StatusCode::PAYLOAD_TOO_LARGE);

    let (parts, body) = send(&app, with_gzip(sync_get("/doc"))).await;
    assert_eq!(parts.status, StatusCode::OK);
    assert_eq!(json(&gunzip(body).await), document());
    assert_no_other_event(&handle, 2, &mut callbacks);
}

/// docs/neighbours.md: in the `Router` form the body limit and the timeout may be swapped.
#[tokio::test]
async fn the_router_stack_with_limit_and_timeout_swapped_serves_the_same() {
    let (layer, mut callbacks) = layer_with(|b| b);
    let handle = layer.handle();
    let app = Router::new()
        .route("/doc", post(|| async { Json(document()) }))
        .layer(layer)
        .layer(RequestBodyLimitLayer::new(LIMIT))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            Duration::from_secs(10),
        ))
        .layer(CompressionLayer::new())
        .layer(TraceLayer::new_for_http());

    let (parts, body) = send(&app, async_post("/doc", Body::empty())).await;
    let event_id = check_receipt(parts.status, &parts.headers, &body);
    assert_eq!(
        notification(&mut callbacks, event_id).await["response"],
        document()
    );
    let (parts, _) = send(&app, oversized_with_length()).await;
    assert_eq!(parts.status, StatusCode::PAYLOAD_TOO_LARGE);
    let (parts, body) = send(&app, oversized_streamed()).await;
    check_refusal(
        parts.status,
        &parts.headers,
        &body,
        StatusCode::PAYLOAD_TOO_LARGE,
        "request_too_large",
    );
    assert_no_other_event(&handle, 1, &mut callbacks);
}

#[tokio::test]
async fn recommended_service_builder_stack_serves_sync_and_async_requests() {
    let (layer, mut callbacks) = layer_with(|b| b);
    let handle = layer.handle();
    let stack = ServiceBuilder::new()
        .layer(TraceLayer::new_for_http()) // outermost
        .layer(CatchPanicLayer::new())
        .layer(CompressionLayer::new())
        .layer(RequestBodyLimitLayer::new(LIMIT))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            Duration::from_secs(10),
        ))
        .layer(layer); // innermost of these: the others see the receipt
    let app = Router::new()
        .route("/doc", post(|| async { Json(document()) }))
        .route("/doc", get(|| async { Json(document()) }))
        .layer(stack);

    let (parts, body) = send(&app, with_gzip(async_post("/doc", Body::empty()))).await;
    assert_eq!(parts.headers[CONTENT_ENCODING], "gzip");
    let event_id = check_receipt(parts.status, &parts.headers, &gunzip(body).await);
    let object = notification(&mut callbacks, event_id).await;
    assert_completed(&object, 200);
    assert_eq!(object["response"], document());

    let (parts, _) = send(&app, oversized_with_length()).await;
    assert_eq!(parts.status, StatusCode::PAYLOAD_TOO_LARGE);
    let (parts, body) = send(&app, oversized_streamed()).await;
    check_refusal(
        parts.status,
        &parts.headers,
        &body,
        StatusCode::PAYLOAD_TOO_LARGE,
        "request_too_large",
    );

    let (parts, body) = send(&app, with_gzip(sync_get("/doc"))).await;
    assert_eq!(parts.status, StatusCode::OK);
    assert_eq!(json(&gunzip(body).await), document());
    assert_no_other_event(&handle, 1, &mut callbacks);
}
