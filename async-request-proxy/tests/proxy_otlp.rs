//! Traces over OTLP through the real binary on 127.0.0.1, as docs/proxy.md tells it: with
//! `--otlp-endpoint`, an async request's receipt, job and delivery attempt spans reach a collector
//! (a tiny OTLP/HTTP receiver decoding protobuf) in the caller's trace, flushed when the proxy
//! stops. Each waits on what the proxy does (a callback, its exit, an export), never on a sleep.

// The library's test helpers, shared rather than copied.
#[path = "../../tests/support/mod.rs"]
#[allow(unexpected_cfgs)] // its PostgreSQL helper is behind the library's `postgres` feature
mod support;

// The running binary and the helpers the proxy's test files share.
mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use axum::body::Bytes;
use axum::routing::post;
use axum::Router;
use common::{accepted, async_post, axum_upstream, serve, terminated, Proxy};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;
use support::Receiver;
use tokio::sync::mpsc;

/// The caller's trace, and its span the proxy's spans hang from.
const TRACE_ID: &str = "4bf92f3577b34da6a3ce929a0e0e4736";
const PARENT_ID: &str = "00f067aa0ba902b7";

/// A collector on 127.0.0.1: every span `POST /v1/traces` brings, by name, on the channel
/// (name, trace id, service name).
async fn collector() -> (
    SocketAddr,
    mpsc::UnboundedReceiver<(String, String, String)>,
) {
    let (sender, spans) = mpsc::unbounded_channel();
    let router = Router::new().route(
        "/v1/traces",
        post(move |headers: http::HeaderMap, body: Bytes| async move {
            assert_eq!(
                headers.get(http::header::CONTENT_TYPE).unwrap(),
                "application/x-protobuf"
            );
            let export = ExportTraceServiceRequest::decode(body).expect("an OTLP protobuf body");
            for resource in export.resource_spans {
                let service = resource
                    .resource
                    .iter()
                    .flat_map(|resource| &resource.attributes)
                    .find(|attribute| attribute.key == "service.name")
                    .map(|attribute| format!("{:?}", attribute.value))
                    .unwrap_or_default();
                for span in resource.scope_spans.into_iter().flat_map(|s| s.spans) {
                    let trace: String = span.trace_id.iter().map(|b| format!("{b:02x}")).collect();
                    let _ = sender.send((span.name, trace, service.clone()));
                }
            }
            // An empty ExportTraceServiceResponse.
            (
                [(http::header::CONTENT_TYPE, "application/x-protobuf")],
                Vec::new(),
            )
        }),
    );
    (serve(router).await, spans)
}

#[tokio::test(flavor = "multi_thread")]
async fn an_async_requests_spans_reach_the_collector_in_the_callers_trace() {
    let (collector, mut spans) = collector().await;
    let upstream = axum_upstream().await;
    let mut receiver = Receiver::start(Vec::new()).await;
    let proxy = Proxy::unsigned(
        &format!("http://{upstream}/api"),
        &[
            "--callback-url",
            &receiver.url(),
            "--otlp-endpoint",
            &format!("http://{collector}"),
            "--otel-service-name",
            "proxy-under-test",
        ],
    );
    let mut request = async_post(proxy.url("/report"));
    request.headers_mut().insert(
        "traceparent",
        format!("00-{TRACE_ID}-{PARENT_ID}-01").parse().unwrap(),
    );
    accepted(request).await;
    let callback = receiver.next().await;
    assert_eq!(callback.json()["statusCode"], 200);
    // Stopped, it exports what its batch still holds.
    terminated(proxy, 0).await;

    let mut seen: HashMap<String, (String, String)> = HashMap::new();
    // The proxy's own span of the request, and the library's receipt, job and attempt spans.
    let wanted = [
        "proxy_request",
        "async_request_receipt",
        "async_request",
        "delivery_attempt",
    ];
    tokio::time::timeout(Duration::from_secs(20), async {
        while !wanted.iter().all(|name| seen.contains_key(*name)) {
            let (name, trace, service) = spans.recv().await.expect("the collector runs");
            seen.insert(name, (trace, service));
        }
    })
    .await
    .unwrap_or_else(|_| panic!("request, receipt, job and attempt spans exported; got {seen:?}"));
    for name in wanted {
        let (trace, service) = &seen[name];
        assert_eq!(trace, TRACE_ID, "{name} is in the caller's trace");
        assert!(service.contains("proxy-under-test"), "{name}: {service}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_forwarded_request_is_traced_with_the_standard_variable_alone() {
    let (collector, mut spans) = collector().await;
    let upstream = axum_upstream().await;
    let endpoint = format!("http://{collector}/");
    let proxy = Proxy::start_with(
        &[
            "--unsigned-callbacks",
            "--upstream",
            &format!("http://{upstream}/api"),
        ],
        &[("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint)],
    );
    let request = http::Request::get(proxy.url("/hello"))
        .header("traceparent", format!("00-{TRACE_ID}-{PARENT_ID}-01"))
        .body(http_body_util::Full::default())
        .unwrap();
    let (status, _, body) = common::call(request).await;
    assert_eq!((status, &body[..]), (http::StatusCode::OK, &b"hello"[..]));
    terminated(proxy, 0).await;
    let (name, trace, service) = tokio::time::timeout(Duration::from_secs(20), spans.recv())
        .await
        .expect("the request's span exported")
        .unwrap();
    assert_eq!(name, "proxy_request");
    assert_eq!(trace, TRACE_ID, "in the caller's trace");
    assert!(service.contains("async-request-proxy"), "{service}");
}

#[tokio::test]
async fn a_bad_otlp_endpoint_or_ratio_is_refused() {
    let message = common::refused(&[
        "--unsigned-callbacks",
        "--upstream",
        "http://127.0.0.1:1",
        "--otlp-endpoint",
        "collector:4318",
    ]);
    assert!(message.contains("--otlp-endpoint"), "{message}");
    let message = common::refused(&[
        "--unsigned-callbacks",
        "--upstream",
        "http://127.0.0.1:1",
        "--otel-sample-ratio",
        "1.5",
    ]);
    assert!(message.contains("--otel-sample-ratio"), "{message}");
    let mut command = std::process::Command::new(common::BIN);
    command
        .args(["--listen", "127.0.0.1:0", "--unsigned-callbacks"])
        .args(["--upstream", "http://127.0.0.1:1"])
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4318");
    let (code, _, stderr) = common::ended(command);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("OTEL_EXPORTER_OTLP_ENDPOINT"), "{stderr}");
}
