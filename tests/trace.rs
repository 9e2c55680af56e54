//! One trace from the request to the callback (feature `opentelemetry`, docs/tracing.md): spans
//! seen by an in-memory OpenTelemetry exporter, the callback's `traceparent` read by a real
//! receiver on 127.0.0.1.
#![cfg(feature = "opentelemetry")]

mod support;

use std::time::Duration;

use axum::{body::Body, routing::post, Router};
use http::{Request, StatusCode};
use opentelemetry::global;
use opentelemetry::trace::{SpanKind, TraceId, TracerProvider as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use support::{eventually, Answer, Hit, Receiver};
use tower::ServiceExt;
use tower_async_request::instance::{Instance, InstanceMap};
use tower_async_request::store::EventSnapshot;
use tower_async_request::{AsyncRequestLayer, AsyncRequestLayerBuilder};
use tracing_subscriber::prelude::*;

const MS: fn(u64) -> Duration = Duration::from_millis;
const TRACE: &str = "0af7651916cd43dd8448eb211c80319c";
const CALLER_SPAN: &str = "b7ad6b7169203331";

/// Spans go to an in-memory exporter, for this test's thread (a current-thread runtime runs
/// every task of the test on it).
fn traced() -> (InMemorySpanExporter, tracing::subscriber::DefaultGuard) {
    global::set_text_map_propagator(TraceContextPropagator::new());
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("tests")));
    (exporter, tracing::subscriber::set_default(subscriber))
}

fn app(layer: AsyncRequestLayer) -> Router {
    Router::new()
        .route("/work", post(|| async { "done" }))
        .layer(layer)
}

fn builder(receiver: &Receiver) -> AsyncRequestLayerBuilder {
    AsyncRequestLayer::builder()
        .instance_id(30)
        .default_callback_url(receiver.url())
        .retry_schedule([MS(30); 3])
}

async fn send_traced(app: &Router) {
    let request = Request::post("/work")
        .header("Elements-Async-Request", "true")
        .header("traceparent", format!("00-{TRACE}-{CALLER_SPAN}-01"))
        .header("tracestate", "vendor=opaque")
        .body(Body::empty())
        .unwrap();
    let response = app.clone().oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
}

/// The trace id and parent span id a callback's `traceparent` names.
fn traceparent(hit: &Hit) -> (String, String) {
    let value = hit.headers["traceparent"].to_str().unwrap();
    let parts: Vec<&str> = value.split('-').collect();
    assert_eq!(parts.len(), 4, "{value}");
    (parts[1].to_owned(), parts[2].to_owned())
}

fn spans(exporter: &InMemorySpanExporter, name: &str) -> Vec<SpanData> {
    exporter
        .get_finished_spans()
        .unwrap()
        .into_iter()
        .filter(|span| span.name == name)
        .collect()
}

#[tokio::test]
async fn the_callers_trace_runs_through_the_job_and_every_attempt_to_the_receiver() {
    let (exporter, _guard) = traced();
    let mut receiver = Receiver::start(vec![Answer::status(503)]).await;
    let layer = builder(&receiver)
        .status_retention(Duration::from_secs(60))
        .build()
        .unwrap();
    let handle = layer.handle();
    let app = app(layer);
    send_traced(&app).await;
    let first = receiver.next().await;
    let second = receiver.next().await;
    assert_eq!(
        (first.answered.as_u16(), second.answered.as_u16()),
        (503, 200)
    );
    // Kept with the event: a restart or another node resumes it in the same trace.
    let id = second.json()["eventId"].as_u64().unwrap();
    eventually("recorded as delivered", || handle.metrics().delivered == 1).await;
    let kept = stored_trace(&handle, id).await.expect("the trace is kept");
    assert_eq!(
        kept.fields,
        [
            (
                "traceparent".to_owned(),
                format!("00-{TRACE}-{CALLER_SPAN}-01")
            ),
            ("tracestate".to_owned(), "vendor=opaque".to_owned()),
        ]
    );
    eventually("two attempt spans and the job's", || {
        spans(&exporter, "delivery_attempt").len() == 2
            && !spans(&exporter, "async_request").is_empty()
    })
    .await;
    let trace = TraceId::from_hex(TRACE).unwrap();
    let receipt = spans(&exporter, "async_request_receipt");
    assert_eq!(receipt.len(), 1);
    assert_eq!(receipt[0].span_context.trace_id(), trace);
    assert_eq!(receipt[0].parent_span_id.to_string(), CALLER_SPAN);
    let jobs = spans(&exporter, "async_request");
    assert_eq!(
        jobs[0].span_context.trace_id(),
        trace,
        "the job is in the caller's trace"
    );
    assert_eq!(
        jobs[0].parent_span_id.to_string(),
        CALLER_SPAN,
        "under the call that asked"
    );
    let attempts = spans(&exporter, "delivery_attempt");
    for (attempt, hit) in attempts.iter().zip([&first, &second]) {
        assert_eq!(attempt.span_context.trace_id(), trace);
        assert_eq!(attempt.span_kind, SpanKind::Client);
        // The receiver's traceparent names this attempt's span: its tracing continues here.
        let (trace_id, parent) = traceparent(hit);
        assert_eq!(trace_id, TRACE);
        assert_eq!(parent, attempt.span_context.span_id().to_string());
        assert_eq!(hit.headers["tracestate"], "vendor=opaque");
        let attribute = |key: &str| {
            attempt
                .attributes
                .iter()
                .find(|kv| kv.key.as_str() == key)
                .map(|kv| kv.value.to_string())
        };
        assert_eq!(attribute("http.request.method").as_deref(), Some("POST"));
        assert_eq!(attribute("url.full"), Some(receiver.url()));
        let status = hit.answered.as_u16().to_string();
        assert_eq!(attribute("http.response.status_code"), Some(status));
    }
    assert_ne!(
        attempts[0].span_context.span_id(),
        attempts[1].span_context.span_id(),
        "a retry is an attempt span of its own"
    );
}

#[tokio::test]
async fn an_instance_that_opts_out_gets_no_traceparent_and_keeps_no_context() {
    let (_exporter, _guard) = traced();
    let mut receiver = Receiver::start(Vec::new()).await;
    let map = InstanceMap::new(|_| Some(7));
    map.insert(
        Instance::builder(7)
            .callback_url(receiver.url())
            .propagate_trace(false)
            .build()
            .unwrap(),
    );
    let layer = AsyncRequestLayer::builder()
        .instances(map)
        .status_retention(Duration::from_secs(60))
        .build()
        .unwrap();
    let handle = layer.handle();
    send_traced(&app(layer)).await;
    let hit = receiver.next().await;
    assert!(
        hit.headers.get("traceparent").is_none(),
        "{:?}",
        hit.headers
    );
    let id = hit.json()["eventId"].as_u64().unwrap();
    eventually("recorded as delivered", || handle.metrics().delivered == 1).await;
    assert!(
        stored_trace(&handle, id).await.is_none(),
        "no context stored"
    );
}

/// The trace context the store keeps with event `id` (delivered, kept for its retention).
async fn stored_trace(
    handle: &tower_async_request::AsyncRequestHandle,
    id: u64,
) -> Option<std::sync::Arc<tower_async_request::store::TraceContext>> {
    let snapshot = handle
        .event(tower_async_request::event::EventId::new(id))
        .await
        .unwrap()
        .expect("kept for its retention");
    match snapshot {
        EventSnapshot::Finished(notification) => notification.trace,
        EventSnapshot::Unfinished(event) => event.trace,
    }
}

#[tokio::test]
async fn a_layer_that_opts_out_sends_no_traceparent() {
    let (_exporter, _guard) = traced();
    let mut receiver = Receiver::start(Vec::new()).await;
    let app = app(builder(&receiver).propagate_trace(false).build().unwrap());
    send_traced(&app).await;
    assert!(receiver.next().await.headers.get("traceparent").is_none());
}

#[tokio::test]
async fn without_a_traceparent_the_callback_starts_no_trace_of_the_callers() {
    let (_exporter, _guard) = traced();
    let mut receiver = Receiver::start(Vec::new()).await;
    let app = app(builder(&receiver).build().unwrap());
    let request = Request::post("/work")
        .header("Elements-Async-Request", "true")
        .body(Body::empty())
        .unwrap();
    assert_eq!(app.oneshot(request).await.unwrap().status(), 202);
    let hit = receiver.next().await;
    // The attempt's own span still has a context: the receiver gets a trace that starts here.
    let (trace_id, _) = traceparent(&hit);
    assert_ne!(trace_id, TRACE);
}

#[tokio::test]
async fn a_receiver_written_with_this_crate_continues_the_trace_in_one_line() {
    use tower_async_request::receiver::{Callback, CallbackVerifier};
    let (exporter, _guard) = traced();
    let (seen, mut seen_rx) = tokio::sync::mpsc::unbounded_channel();
    let receiver = Router::new()
        .route(
            "/hook",
            post(move |callback: Callback| {
                let seen = seen.clone();
                async move {
                    let span = tracing::info_span!("handle_callback");
                    callback.continue_trace(&span);
                    span.in_scope(|| tracing::info!("handled"));
                    drop(span);
                    let _ = seen.send(callback.headers["traceparent"].clone());
                    StatusCode::NO_CONTENT
                }
            }),
        )
        .with_state(CallbackVerifier::new().elements_key("event-signature-key"));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, receiver).await.unwrap() });
    let layer = AsyncRequestLayer::builder()
        .instance_id(30)
        .default_callback_url(url)
        .signing_key("event-signature-key")
        .build()
        .unwrap();
    send_traced(&app(layer)).await;
    let traceparent = seen_rx.recv().await.unwrap();
    eventually("the receiver's span", || {
        !spans(&exporter, "handle_callback").is_empty()
    })
    .await;
    let handled = &spans(&exporter, "handle_callback")[0];
    assert_eq!(
        handled.span_context.trace_id(),
        TraceId::from_hex(TRACE).unwrap()
    );
    let parent = traceparent
        .to_str()
        .unwrap()
        .split('-')
        .nth(2)
        .unwrap()
        .to_owned();
    assert_eq!(
        handled.parent_span_id.to_string(),
        parent,
        "under the attempt that sent it"
    );
}
