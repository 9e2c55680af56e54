//! The wire contract of `AsyncRequestLayer`, one test per row, driven through axum and, at the
//! end, through a real server and a real client.

mod support;

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::Path;
use axum::http::HeaderMap;
use axum::routing::{any, post};
use axum::{Json, Router};
use bytes::Bytes;
use http::{header, HeaderName, HeaderValue, Request, Response, StatusCode};
use http_body::Body as _;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tower::{Layer, Service, ServiceExt};
use tower_async_request::sink::{CallbackReceiver, ChannelSink};
use tower_async_request::{
    event::MAX_SAFE_ID, layer::RequestBody, request::MAX_CALLBACK_URL_BYTES, AsyncRequestHandle,
    AsyncRequestLayer, AsyncRequestLayerBuilder, BoxError,
};

use support::*;

/// What the handler answers on the synchronous path.
fn handler_answer() -> Value {
    json!({ "handled": true })
}

/// An app whose `/work` handler counts its calls and answers [`handler_answer`].
fn counting_app(layer: AsyncRequestLayer, calls: Arc<AtomicUsize>) -> Router {
    Router::new()
        .route(
            "/work",
            any(move || {
                let calls = calls.clone();
                async move {
                    bump(&calls);
                    Json(handler_answer())
                }
            }),
        )
        .layer(layer)
}

/// A layer delivering into a channel, with whatever else `configure` sets.
fn channel_layer(
    configure: impl FnOnce(AsyncRequestLayerBuilder) -> AsyncRequestLayerBuilder,
) -> (AsyncRequestLayer, CallbackReceiver) {
    let (sink, callbacks) = ChannelSink::new(1024);
    let layer = configure(AsyncRequestLayer::builder().instance_id(30).sink(sink))
        .build()
        .expect("a valid configuration");
    (layer, callbacks)
}

/// A counting app, its call counter, the layer's handle and its callbacks.
struct Fixture {
    app: Router,
    calls: Arc<AtomicUsize>,
    handle: AsyncRequestHandle,
    callbacks: CallbackReceiver,
}

fn fixture(
    configure: impl FnOnce(AsyncRequestLayerBuilder) -> AsyncRequestLayerBuilder,
) -> Fixture {
    let (layer, callbacks) = channel_layer(configure);
    let calls = counter();
    Fixture {
        handle: layer.handle(),
        app: counting_app(layer, calls.clone()),
        calls,
        callbacks,
    }
}

/// `POST /work` with the given headers (repeats allowed) and body.
fn post_work(headers: &[(&str, HeaderValue)], body: impl Into<Body>) -> Request<Body> {
    let mut request = Request::post("/work").body(body.into()).unwrap();
    for (name, value) in headers {
        request.headers_mut().append(
            HeaderName::from_bytes(name.as_bytes()).unwrap(),
            value.clone(),
        );
    }
    request
}

fn value(text: &str) -> HeaderValue {
    HeaderValue::from_str(text).unwrap()
}

/// Sends a request through the app and returns status, headers and body.
async fn send(app: &Router, request: Request<Body>) -> (StatusCode, HeaderMap, Bytes) {
    let response = app.clone().oneshot(request).await.unwrap();
    let (parts, body) = response.into_parts();
    (parts.status, parts.headers, read_body(body).await)
}

/// Sends a request that must be refused and checks the refusal, that the handler never ran and
/// that nothing was accepted.
/// An empty async request naming `url` as its callback.
fn async_with_callback(url: &str) -> Request<Body> {
    post_work(
        &[(ASYNC_HEADER, value("true")), (CALLBACK_HEADER, value(url))],
        Body::empty(),
    )
}

/// An async request naming `url` as its callback is refused with `400` and `code`.
async fn assert_callback_refused(fixture: &Fixture, url: &str, code: &str) {
    assert_refused(
        fixture,
        async_with_callback(url),
        StatusCode::BAD_REQUEST,
        code,
    )
    .await;
}

async fn assert_refused(
    fixture: &Fixture,
    request: Request<Body>,
    expected_status: StatusCode,
    expected_code: &str,
) {
    let sent = format!("{:?}", request.headers());
    let (status, headers, body) = send(&fixture.app, request).await;
    assert_eq!(
        (status, json(&body)["code"].as_str()),
        (expected_status, Some(expected_code)),
        "request headers {sent}, answer {}",
        String::from_utf8_lossy(&body)
    );
    check_refusal(status, &headers, &body, expected_status, expected_code);
    assert_eq!(
        count(&fixture.calls),
        0,
        "the inner handler ran on a refusal"
    );
    assert_eq!(
        fixture.handle.metrics().accepted,
        0,
        "a refusal recorded an event"
    );
}

/// Sends an async request that must be accepted; returns its event id and the callback that
/// follows, after checking the callback belongs to it and carries the handler's answer.
async fn assert_accepted(
    app: &Router,
    callbacks: &mut CallbackReceiver,
    request: Request<Body>,
) -> (u64, Request<Bytes>) {
    let (status, headers, body) = send(app, request).await;
    let event_id = check_receipt(status, &headers, &body);
    let callback = recv_callback(callbacks).await;
    let notification = json(callback.body());
    assert_eq!(notification["eventId"], event_id, "{notification}");
    assert_eq!(notification["eventStatus"], "completed", "{notification}");
    (event_id, callback)
}

// ---------------------------------------------------------------------------------------------
// Synchronous path

#[tokio::test]
async fn no_async_header_calls_the_inner_service_as_if_the_layer_were_absent() {
    let fixture = fixture(|b| b.default_callback_url(DEFAULT_CALLBACK));
    let (status, headers, body) = send(&fixture.app, post_work(&[], Body::empty())).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers[header::CONTENT_TYPE], "application/json");
    assert!(!headers.contains_key("elements-event-id"));
    assert_eq!(json(&body), handler_answer());
    assert_eq!(count(&fixture.calls), 1);
    assert_eq!(fixture.handle.metrics().accepted, 0);
}

#[tokio::test]
async fn async_header_false_in_any_case_calls_the_inner_service() {
    let mut fixture = fixture(|b| b.default_callback_url(DEFAULT_CALLBACK));
    let spellings = ["false", "False", "FALSE", "fAlSe", "  false ", "\tFalse\t"];
    for spelling in spellings {
        let request = post_work(&[(ASYNC_HEADER, value(spelling))], Body::empty());
        let (status, headers, body) = send(&fixture.app, request).await;
        assert_eq!(status, StatusCode::OK, "{spelling:?}");
        assert!(!headers.contains_key("elements-event-id"), "{spelling:?}");
        assert_eq!(json(&body), handler_answer(), "{spelling:?}");
    }
    assert_eq!(count(&fixture.calls), spellings.len());
    assert_eq!(fixture.handle.metrics().accepted, 0);
    assert!(fixture.callbacks.try_recv().is_none());
}

#[tokio::test]
async fn passthrough_streams_the_request_and_response_unchanged() {
    // The handler answers at once with the request body as its response body, so the response can
    // only arrive before the request body is complete if neither side is buffered by the layer.
    let (layer, _callbacks) = channel_layer(|b| b.default_callback_url(DEFAULT_CALLBACK));
    let app = Router::new()
        .route(
            "/echo",
            post(|headers: HeaderMap, body: Body| async move {
                Response::builder()
                    .status(StatusCode::CREATED)
                    .header(header::CONTENT_TYPE, "application/x-custom")
                    .header("x-echo-in", headers["x-in"].clone())
                    .header("x-async-seen", headers[ASYNC_HEADER].clone())
                    .body(body)
                    .unwrap()
            }),
        )
        .layer(layer);

    let (sender, request_body) = ChannelBody::new();
    let request = Request::post("/echo")
        .header("x-in", "marker-42")
        .header(ASYNC_HEADER, "false")
        .body(Body::new(request_body))
        .unwrap();
    let response = tokio::time::timeout(RECV_TIMEOUT, app.oneshot(request))
        .await
        .expect("the response must not wait for the whole request body")
        .unwrap();

    assert_eq!(response.status(), StatusCode::CREATED);
    assert_eq!(
        response.headers()[header::CONTENT_TYPE],
        "application/x-custom"
    );
    assert_eq!(response.headers()["x-echo-in"], "marker-42");
    assert_eq!(response.headers()["x-async-seen"], "false");
    assert!(!response.headers().contains_key("elements-event-id"));

    let mut body = response.into_body();
    for chunk in ["first chunk;", "second chunk;", "third \u{2713}"] {
        sender.send(Bytes::from(chunk)).await.unwrap();
        let frame = tokio::time::timeout(RECV_TIMEOUT, body.frame())
            .await
            .expect("each chunk must be streamed through on its own")
            .expect("a frame")
            .unwrap();
        assert_eq!(frame.into_data().unwrap(), chunk);
    }
    drop(sender);
    let end = tokio::time::timeout(RECV_TIMEOUT, body.frame())
        .await
        .expect("the body must end when the request body ends");
    assert!(end.is_none());
}

// ---------------------------------------------------------------------------------------------
// The async header

#[tokio::test]
async fn async_header_true_in_any_case_with_whitespace_is_accepted_with_a_receipt() {
    let mut fixture = fixture(|b| b.default_callback_url(DEFAULT_CALLBACK));
    let spellings = [
        "true",
        "True",
        "TRUE",
        "tRuE",
        " true",
        "true ",
        "\t TRUE \t",
    ];
    let mut event_ids = HashSet::new();
    for spelling in spellings {
        let request = post_work(&[(ASYNC_HEADER, value(spelling))], Body::empty());
        let (event_id, callback) =
            assert_accepted(&fixture.app, &mut fixture.callbacks, request).await;
        assert!(event_ids.insert(event_id), "{spelling:?}: repeated eventId");
        let notification = json(callback.body());
        assert_eq!(notification["statusCode"], 200);
        assert_eq!(notification["response"], handler_answer());
    }
    assert_eq!(count(&fixture.calls), spellings.len());
    assert_eq!(fixture.handle.metrics().accepted, spellings.len() as u64);
}

#[tokio::test]
async fn accepted_receipt_is_202_json_with_event_id_and_dispatched() {
    let mut fixture = fixture(|b| b.default_callback_url(DEFAULT_CALLBACK));
    let request = post_work(&[(ASYNC_HEADER, value("True"))], Body::empty());
    let (status, headers, body) = send(&fixture.app, request).await;
    // check_receipt asserts 202, content-type, the exact body shape, the id range and the header.
    let event_id = check_receipt(status, &headers, &body);
    assert_eq!(
        std::str::from_utf8(&body).unwrap(),
        format!(r#"{{"eventId":{event_id},"eventStatus":"dispatched"}}"#)
    );
    let callback = recv_callback(&mut fixture.callbacks).await;
    assert_eq!(json(callback.body())["eventId"], event_id);
    assert_eq!(count(&fixture.calls), 1);
}

#[tokio::test]
async fn a_configured_2xx_receipt_status_is_the_receipts_status_with_the_same_body() {
    for receipt_status in [StatusCode::OK, StatusCode::CREATED] {
        let mut fixture = fixture(|b| {
            b.default_callback_url(DEFAULT_CALLBACK)
                .receipt_status(receipt_status)
        });
        let request = post_work(&[(ASYNC_HEADER, value("true"))], Body::empty());
        let (status, headers, body) = send(&fixture.app, request).await;
        assert_eq!(status, receipt_status);
        assert_eq!(headers[header::CONTENT_TYPE], "application/json");
        let event_id = json(&body)["eventId"].as_u64().expect("an eventId");
        assert_eq!(
            std::str::from_utf8(&body).unwrap(),
            format!(r#"{{"eventId":{event_id},"eventStatus":"dispatched"}}"#)
        );
        assert_eq!(headers["elements-event-id"], event_id.to_string());
        let callback = recv_callback(&mut fixture.callbacks).await;
        assert_eq!(json(callback.body())["eventId"], event_id);
        assert_eq!(count(&fixture.calls), 1);
    }
}

#[tokio::test]
async fn async_header_with_any_other_value_is_invalid_async_header() {
    let fixture = fixture(|b| b.default_callback_url(DEFAULT_CALLBACK));
    for bad in [
        "",
        "yes",
        "1",
        "0",
        "on",
        "truee",
        "t",
        "true,false",
        "\"true\"",
        "tr ue",
    ] {
        let request = post_work(&[(ASYNC_HEADER, value(bad))], Body::empty());
        assert_refused(
            &fixture,
            request,
            StatusCode::BAD_REQUEST,
            "invalid_async_header",
        )
        .await;
    }
    let non_utf8 = HeaderValue::from_bytes(b"tr\xffue").unwrap();
    assert_refused(
        &fixture,
        post_work(&[(ASYNC_HEADER, non_utf8)], Body::empty()),
        StatusCode::BAD_REQUEST,
        "invalid_async_header",
    )
    .await;
}

#[tokio::test]
async fn async_header_repeated_is_invalid_async_header() {
    let fixture = fixture(|b| b.default_callback_url(DEFAULT_CALLBACK));
    for (first, second) in [
        ("true", "true"),
        ("true", "false"),
        ("false", "true"),
        ("false", "false"),
    ] {
        let request = post_work(
            &[(ASYNC_HEADER, value(first)), (ASYNC_HEADER, value(second))],
            Body::empty(),
        );
        assert_refused(
            &fixture,
            request,
            StatusCode::BAD_REQUEST,
            "invalid_async_header",
        )
        .await;
    }
}

#[tokio::test]
async fn an_async_request_that_asks_to_upgrade_is_async_upgrade() {
    let fixture = fixture(|b| b.default_callback_url(DEFAULT_CALLBACK));
    let request = post_work(
        &[
            (ASYNC_HEADER, value("true")),
            ("connection", value("upgrade")),
            ("upgrade", value("websocket")),
        ],
        Body::empty(),
    );
    assert_refused(&fixture, request, StatusCode::BAD_REQUEST, "async_upgrade").await;
    // Without the async header the upgrade is the inner service's business.
    let (status, ..) = send(
        &fixture.app,
        post_work(&[("upgrade", value("websocket"))], Body::empty()),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
}

// ---------------------------------------------------------------------------------------------
// The callback URL

#[tokio::test]
async fn async_without_callback_url_or_default_is_missing_callback_url() {
    let fixture = fixture(|b| b);
    let request = post_work(&[(ASYNC_HEADER, value("true"))], Body::empty());
    assert_refused(
        &fixture,
        request,
        StatusCode::BAD_REQUEST,
        "missing_callback_url",
    )
    .await;
}

#[tokio::test]
async fn async_without_callback_header_goes_to_the_default_callback_url() {
    let mut fixture = fixture(|b| b.default_callback_url(DEFAULT_CALLBACK));
    let request = post_work(&[(ASYNC_HEADER, value("true"))], Body::empty());
    let (_, callback) = assert_accepted(&fixture.app, &mut fixture.callbacks, request).await;
    assert_eq!(callback.method(), http::Method::POST);
    assert_eq!(callback.uri().to_string(), DEFAULT_CALLBACK);
}

#[tokio::test]
async fn callback_header_takes_precedence_over_the_default() {
    let mut fixture = fixture(|b| b.default_callback_url(DEFAULT_CALLBACK));
    let target = "https://receiver.example.net:8443/hooks/in?tenant=7";
    let request = post_work(
        &[
            (ASYNC_HEADER, value("true")),
            (CALLBACK_HEADER, value(target)),
        ],
        Body::empty(),
    );
    let (_, callback) = assert_accepted(&fixture.app, &mut fixture.callbacks, request).await;
    assert_eq!(callback.uri().to_string(), target);
}

#[tokio::test]
async fn callback_url_not_absolute_http_or_https_is_invalid_callback_url() {
    let fixture = fixture(|b| b.default_callback_url(DEFAULT_CALLBACK));
    for bad in [
        "",
        "not a url",
        "/relative/path",
        "hooks.example.com/in",
        "//hooks.example.com/in",
        "ftp://hooks.example.com/in",
        "ws://hooks.example.com/in",
        "file:///etc/passwd",
        "javascript:alert(1)",
        "mailto:ops@example.com",
        "https://",
        "http:///path",
    ] {
        assert_callback_refused(&fixture, bad, "invalid_callback_url").await;
    }
}

#[tokio::test]
async fn callback_url_longer_than_2048_bytes_is_invalid_callback_url() {
    assert_eq!(MAX_CALLBACK_URL_BYTES, 2048);
    let mut fixture = fixture(|b| b.default_callback_url(DEFAULT_CALLBACK));
    let prefix = "https://hooks.example.com/";
    let exact = format!("{prefix}{}", "a".repeat(2048 - prefix.len()));
    assert_eq!(exact.len(), 2048);
    let over = format!("{exact}a");

    let request = post_work(
        &[
            (ASYNC_HEADER, value("true")),
            (CALLBACK_HEADER, value(&over)),
        ],
        Body::empty(),
    );
    assert_refused(
        &fixture,
        request,
        StatusCode::BAD_REQUEST,
        "invalid_callback_url",
    )
    .await;

    // Exactly at the limit is fine.
    let request = post_work(
        &[
            (ASYNC_HEADER, value("true")),
            (CALLBACK_HEADER, value(&exact)),
        ],
        Body::empty(),
    );
    let (_, callback) = assert_accepted(&fixture.app, &mut fixture.callbacks, request).await;
    assert_eq!(callback.uri().to_string(), exact);
}

#[tokio::test]
async fn callback_url_with_credentials_is_invalid_callback_url() {
    let fixture = fixture(|b| b.default_callback_url(DEFAULT_CALLBACK));
    for bad in [
        "https://user:password@hooks.example.com/in",
        "https://user@hooks.example.com/in",
        "http://:secret@hooks.example.com/in",
        "https://a@8.8.8.8/in",
    ] {
        assert_callback_refused(&fixture, bad, "invalid_callback_url").await;
    }
}

#[tokio::test]
async fn malformed_or_non_utf8_callback_url_is_invalid_callback_url() {
    let fixture = fixture(|b| b.default_callback_url(DEFAULT_CALLBACK));
    let mut bad: Vec<HeaderValue> = [
        "https://[::1/in",
        "https://[not-an-ip]/in",
        "https://256.1.1.1/in",
        "https://1.2.3.4.5/in",
        "https://exa%6dple.com/in",
        "https://hooks example.com/in",
    ]
    .into_iter()
    .map(value)
    .collect();
    bad.push(HeaderValue::from_bytes(b"https://hooks.ex\xffample.com/in").unwrap());
    bad.push(HeaderValue::from_bytes(b"https://hooks.example.com/\xe2\x28\xa1").unwrap());
    for url in bad {
        let request = post_work(
            &[
                (ASYNC_HEADER, value("true")),
                (CALLBACK_HEADER, url.clone()),
            ],
            Body::empty(),
        );
        let (status, headers, body) = send(&fixture.app, request).await;
        assert_eq!(
            status,
            StatusCode::BAD_REQUEST,
            "{url:?}: {}",
            String::from_utf8_lossy(&body)
        );
        check_refusal(
            status,
            &headers,
            &body,
            StatusCode::BAD_REQUEST,
            "invalid_callback_url",
        );
    }
    assert_eq!(count(&fixture.calls), 0);
    assert_eq!(fixture.handle.metrics().accepted, 0);
}

#[tokio::test]
async fn callback_url_with_an_out_of_range_port_is_invalid_callback_url() {
    // A port above 65535 cannot be connected to: the URL is malformed.
    let fixture = fixture(|b| b.default_callback_url(DEFAULT_CALLBACK));
    for bad in [
        "https://hooks.example.com:65536/in",
        "https://hooks.example.com:99999999/in",
        "https://8.8.8.8:70000/in",
    ] {
        assert_callback_refused(&fixture, bad, "invalid_callback_url").await;
    }
}

#[tokio::test]
async fn callback_header_repeated_is_invalid_callback_url() {
    let fixture = fixture(|b| b.default_callback_url(DEFAULT_CALLBACK));
    let request = post_work(
        &[
            (ASYNC_HEADER, value("true")),
            (CALLBACK_HEADER, value("https://a.example.com/in")),
            (CALLBACK_HEADER, value("https://b.example.com/in")),
        ],
        Body::empty(),
    );
    assert_refused(
        &fixture,
        request,
        StatusCode::BAD_REQUEST,
        "invalid_callback_url",
    )
    .await;
}

/// Non-public targets, in the spellings resolvers accept.
const NON_PUBLIC_CALLBACKS: &[&str] = &[
    // loopback
    "http://127.0.0.1/in",
    "http://127.0.0.1:8080/in",
    "http://127.1/in",
    "http://127.0.0.1./in",
    "http://2130706433/in",
    "http://0x7f000001/in",
    "http://0x7f.0.0.1/in",
    "http://0177.0.0.1/in",
    "http://[::1]/in",
    "http://[0:0:0:0:0:0:0:1]/in",
    "http://localhost/in",
    "http://LOCALHOST:3000/in",
    "http://localhost./in",
    "http://api.localhost/in",
    "HTTP://LocalHost/in",
    // private (RFC 1918)
    "http://10.0.0.1/in",
    "http://10.255.255.255/in",
    "http://172.16.0.1/in",
    "http://172.31.255.254/in",
    "http://192.168.1.1/in",
    "http://0xc0a80101/in",
    // link-local, cloud metadata
    "http://169.254.169.254/latest/meta-data/",
    "http://[fe80::1]/in",
    // CGNAT
    "http://100.64.0.1/in",
    "http://100.127.255.254/in",
    // unique-local IPv6
    "http://[fd00::1]/in",
    "http://[fc00::1]/in",
    // IPv4-mapped / embedded forms of private addresses
    "http://[::ffff:127.0.0.1]/in",
    "http://[::ffff:7f00:1]/in",
    "http://[::ffff:10.0.0.1]/in",
    "http://[::ffff:169.254.169.254]/in",
    "http://[64:ff9b::a00:1]/in",
    "http://[2002:7f00:1::]/in",
    // unspecified, broadcast, multicast, documentation
    "http://0.0.0.0/in",
    "http://0/in",
    "http://[::]/in",
    "http://255.255.255.255/in",
    "http://224.0.0.1/in",
    "http://[ff02::1]/in",
    "http://192.0.2.1/in",
    "http://[2001:db8::1]/in",
];

#[tokio::test]
async fn non_public_callback_url_in_any_spelling_is_forbidden_callback_url() {
    let fixture = fixture(|b| b.default_callback_url(DEFAULT_CALLBACK));
    for url in NON_PUBLIC_CALLBACKS {
        let request = async_with_callback(url);
        let (status, headers, body) = send(&fixture.app, request).await;
        let refusal = json(&body);
        assert_eq!(
            refusal["code"], "forbidden_callback_url",
            "{url}: {refusal}"
        );
        check_refusal(
            status,
            &headers,
            &body,
            StatusCode::BAD_REQUEST,
            "forbidden_callback_url",
        );
    }
    assert_eq!(count(&fixture.calls), 0);
    assert_eq!(fixture.handle.metrics().accepted, 0);
}

#[tokio::test]
async fn public_ip_literal_callback_urls_are_accepted() {
    let mut fixture = fixture(|b| b);
    for url in [
        "https://8.8.8.8/in",
        "http://1.1.1.1:8080/in",
        "https://[2606:4700:4700::1111]/in",
    ] {
        let request = async_with_callback(url);
        let (_, callback) = assert_accepted(&fixture.app, &mut fixture.callbacks, request).await;
        assert_eq!(callback.uri().to_string(), url);
    }
}

#[tokio::test]
async fn non_public_callback_url_is_accepted_when_private_callbacks_are_allowed() {
    let mut fixture = fixture(|b| b.allow_private_callbacks(true));
    for url in [
        "http://127.0.0.1:9/in",
        "http://localhost:8080/in",
        "http://[::1]:9/in",
        "http://10.1.2.3/in",
    ] {
        let request = async_with_callback(url);
        let (_, callback) = assert_accepted(&fixture.app, &mut fixture.callbacks, request).await;
        assert_eq!(callback.uri().to_string(), url);
    }
    assert_eq!(count(&fixture.calls), 4);
}

#[tokio::test]
async fn private_default_callback_url_is_trusted_operator_config() {
    let default = "http://10.0.0.5:9000/hooks";
    let mut fixture = fixture(|b| b.default_callback_url(default));
    let request = post_work(&[(ASYNC_HEADER, value("true"))], Body::empty());
    let (_, callback) = assert_accepted(&fixture.app, &mut fixture.callbacks, request).await;
    assert_eq!(callback.uri().to_string(), default);
    // ...but the same address from a request is still refused.
    let request = post_work(
        &[
            (ASYNC_HEADER, value("true")),
            (CALLBACK_HEADER, value(default)),
        ],
        Body::empty(),
    );
    let (status, headers, body) = send(&fixture.app, request).await;
    check_refusal(
        status,
        &headers,
        &body,
        StatusCode::BAD_REQUEST,
        "forbidden_callback_url",
    );
    assert_eq!(count(&fixture.calls), 1);
}

// ---------------------------------------------------------------------------------------------
// The request body

#[tokio::test]
async fn async_request_body_over_max_request_bytes_is_request_too_large() {
    let mut fixture = fixture(|b| {
        b.default_callback_url(DEFAULT_CALLBACK)
            .max_request_bytes(16)
    });
    let request = post_work(&[(ASYNC_HEADER, value("true"))], "x".repeat(17));
    assert_refused(
        &fixture,
        request,
        StatusCode::PAYLOAD_TOO_LARGE,
        "request_too_large",
    )
    .await;
    // Exactly at the limit is accepted.
    let request = post_work(&[(ASYNC_HEADER, value("true"))], "x".repeat(16));
    assert_accepted(&fixture.app, &mut fixture.callbacks, request).await;
    assert_eq!(count(&fixture.calls), 1);
}

#[tokio::test]
async fn async_request_body_that_stops_arriving_is_request_body_timeout_and_frees_its_place() {
    let mut fixture = fixture(|b| {
        b.default_callback_url(DEFAULT_CALLBACK)
            .request_body_timeout(Duration::from_millis(300))
            .max_in_flight(1)
    });
    // A first part, then nothing: the client holds its connection open and sends no more.
    let (sender, stalled) = ChannelBody::new();
    sender
        .send(Bytes::from_static(b"{\"part\":"))
        .await
        .unwrap();
    let request = post_work(&[(ASYNC_HEADER, value("true"))], Body::new(stalled));
    assert_refused(
        &fixture,
        request,
        StatusCode::REQUEST_TIMEOUT,
        "request_body_timeout",
    )
    .await;
    drop(sender);
    // The refused request held the only place among `max_in_flight` while its body was awaited;
    // it is free again.
    let request = post_work(&[(ASYNC_HEADER, value("true"))], "{}");
    assert_accepted(&fixture.app, &mut fixture.callbacks, request).await;
    assert_eq!(count(&fixture.calls), 1);
    assert_eq!(fixture.handle.metrics().accepted, 1);
}

#[tokio::test]
async fn a_client_that_disconnects_while_its_async_body_is_read_leaves_nothing_behind() {
    use tokio::io::AsyncWriteExt;
    let mut fixture = fixture(|b| b.default_callback_url(DEFAULT_CALLBACK).max_in_flight(1));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let served = fixture.app.clone();
    tokio::spawn(async move { axum::serve(listener, served).await.unwrap() });

    // A head announcing 1000 bytes and the first few: the request holds the only place among
    // `max_in_flight` while its body is awaited.
    let mut client = tokio::net::TcpStream::connect(addr).await.unwrap();
    client
        .write_all(
            b"POST /work HTTP/1.1\r\nhost: app\r\nelements-async-request: true\r\n\
              content-length: 1000\r\n\r\n{\"part\":",
        )
        .await
        .unwrap();
    let in_flight = |expected: u64| {
        let handle = fixture.handle.clone();
        async move {
            let deadline = std::time::Instant::now() + Duration::from_secs(20);
            while handle.health().await.in_flight != expected {
                assert!(
                    std::time::Instant::now() < deadline,
                    "in flight never became {expected}"
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    };
    in_flight(1).await;
    // The client goes; the server sees its body end early: the place is free again.
    drop(client);
    in_flight(0).await;
    assert_eq!(
        count(&fixture.calls),
        0,
        "the inner service ran for the lost request"
    );
    assert_eq!(
        fixture.handle.metrics().accepted,
        0,
        "the lost request was recorded"
    );
    // And the next one is taken as usual.
    let request = post_work(&[(ASYNC_HEADER, value("true"))], "{}");
    assert_accepted(&fixture.app, &mut fixture.callbacks, request).await;
    assert_eq!(count(&fixture.calls), 1);
}

#[tokio::test]
async fn streamed_async_request_body_over_max_request_bytes_is_request_too_large() {
    // No length announced: the limit must hold while reading.
    let mut fixture = fixture(|b| {
        b.default_callback_url(DEFAULT_CALLBACK)
            .max_request_bytes(16)
    });
    let body = Body::new(ChunkedBody::new(["aaaaaa", "bbbbbb", "ccccc"]));
    assert_eq!(body.size_hint().upper(), None);
    let request = post_work(&[(ASYNC_HEADER, value("true"))], body);
    assert_refused(
        &fixture,
        request,
        StatusCode::PAYLOAD_TOO_LARGE,
        "request_too_large",
    )
    .await;
    let body = Body::new(ChunkedBody::new(["aaaaaa", "bbbbbb", "cccc"]));
    let request = post_work(&[(ASYNC_HEADER, value("true"))], body);
    assert_accepted(&fixture.app, &mut fixture.callbacks, request).await;
    assert_eq!(count(&fixture.calls), 1);
}

/// A body whose first part arrives and whose stream then fails, as a client's broken one does.
#[derive(Debug, Default)]
struct BrokenBody {
    sent_first_part: bool,
}

impl http_body::Body for BrokenBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, std::io::Error>>> {
        if std::mem::replace(&mut self.sent_first_part, true) {
            Poll::Ready(Some(Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionReset,
                "the client's stream broke",
            ))))
        } else {
            Poll::Ready(Some(Ok(http_body::Frame::data(Bytes::from_static(
                b"{\"part\":",
            )))))
        }
    }
}

#[tokio::test]
async fn async_request_body_whose_stream_fails_is_request_body_error() {
    let mut fixture = fixture(|b| b.default_callback_url(DEFAULT_CALLBACK).max_in_flight(1));
    let request = post_work(
        &[(ASYNC_HEADER, value("true"))],
        Body::new(BrokenBody::default()),
    );
    assert_refused(
        &fixture,
        request,
        StatusCode::BAD_REQUEST,
        "request_body_error",
    )
    .await;
    assert!(fixture.callbacks.try_recv().is_none());
    // Its place among `max_in_flight` (the only one) is free again.
    assert_eq!(fixture.handle.health().await.in_flight, 0);
    let request = post_work(&[(ASYNC_HEADER, value("true"))], "{}");
    assert_accepted(&fixture.app, &mut fixture.callbacks, request).await;
}

#[tokio::test]
async fn synchronous_request_body_is_not_limited_by_max_request_bytes() {
    let (layer, _callbacks) = channel_layer(|b| b.max_request_bytes(16));
    let app = Router::new()
        .route("/echo", post(|body: Bytes| async move { body }))
        .layer(layer);
    let payload = "y".repeat(1000);
    let (status, _, body) = send(
        &app,
        Request::post("/echo")
            .body(Body::from(payload.clone()))
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, payload);
}

#[tokio::test]
async fn async_request_body_reaches_the_handler_intact() {
    let (layer, mut callbacks) = channel_layer(|b| b.default_callback_url(DEFAULT_CALLBACK));
    let calls = counter();
    let seen = calls.clone();
    let app = Router::new()
        .route(
            "/echo",
            post(move |headers: HeaderMap, body: Bytes| {
                let seen = seen.clone();
                async move {
                    bump(&seen);
                    let content_type = headers[header::CONTENT_TYPE].clone();
                    ([(header::CONTENT_TYPE, content_type)], body)
                }
            }),
        )
        .layer(layer);

    let items: Vec<Value> = (0..2000)
        .map(|i| json!({ "i": i, "name": format!("file-{i}.txt"), "unicode": "\u{e9}\u{2713}" }))
        .collect();
    let payload = json!({ "from": "/Folder", "to": "/Copy", "items": items });
    let text = serde_json::to_string(&payload).unwrap();
    assert!(text.len() > 64 * 1024);

    let request = Request::post("/echo")
        .header(ASYNC_HEADER, "true")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(text.clone()))
        .unwrap();
    let (status, headers, body) = send(&app, request).await;
    let event_id = check_receipt(status, &headers, &body);

    let callback = recv_callback(&mut callbacks).await;
    let notification = json(callback.body());
    assert_eq!(notification["eventId"], event_id);
    assert_eq!(notification["eventStatus"], "completed");
    assert_eq!(notification["statusCode"], 200);
    assert_eq!(notification["response"], payload);
    assert_eq!(count(&calls), 1);
}

// ---------------------------------------------------------------------------------------------
// Capacity and shutdown

#[tokio::test]
async fn async_request_at_max_in_flight_is_overloaded_with_retry_after() {
    let (layer, mut callbacks) =
        channel_layer(|b| b.default_callback_url(DEFAULT_CALLBACK).max_in_flight(1));
    let handle = layer.handle();
    let calls = counter();
    let gate = Arc::new(Semaphore::new(0));
    let (seen, held) = (calls.clone(), gate.clone());
    let app = Router::new()
        .route(
            "/work",
            post(move |headers: HeaderMap| {
                let (seen, held) = (seen.clone(), held.clone());
                async move {
                    bump(&seen);
                    if headers.contains_key(ASYNC_HEADER) {
                        // Async work stays unfinished until the test opens the gate.
                        held.acquire().await.unwrap().forget();
                    }
                    "done"
                }
            }),
        )
        .layer(layer);

    let first = post_work(&[(ASYNC_HEADER, value("true"))], Body::empty());
    let (status, headers, body) = send(&app, first).await;
    let first_id = check_receipt(status, &headers, &body);

    let second = post_work(&[(ASYNC_HEADER, value("true"))], Body::empty());
    let (status, headers, body) = send(&app, second).await;
    check_refusal(
        status,
        &headers,
        &body,
        StatusCode::SERVICE_UNAVAILABLE,
        "overloaded",
    );
    let retry_after = headers
        .get(header::RETRY_AFTER)
        .expect("an overload refusal carries Retry-After");
    let seconds: u64 = retry_after.to_str().unwrap().parse().unwrap();
    assert!(seconds >= 1, "Retry-After: {seconds}");
    assert_eq!(handle.metrics().accepted, 1);

    // Synchronous requests are never limited, even at the bound.
    let (status, _, body) = send(&app, post_work(&[], Body::empty())).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, "done");

    gate.add_permits(1);
    let callback = recv_callback(&mut callbacks).await;
    let notification = json(callback.body());
    assert_eq!(notification["eventId"], first_id);
    assert_eq!(notification["response"], "done");
    // The first async request and the synchronous one; never the refused one.
    assert_eq!(count(&calls), 2, "the refused request reached the handler");
    assert!(callbacks.try_recv().is_none());
}

#[tokio::test]
async fn async_request_while_shutting_down_is_refused_and_sync_still_works() {
    let fixture = fixture(|b| b.default_callback_url(DEFAULT_CALLBACK));
    let report = fixture.handle.shutdown(Duration::from_secs(5)).await;
    assert!(report.drained);
    let request = post_work(&[(ASYNC_HEADER, value("true"))], Body::empty());
    let (status, headers, body) = send(&fixture.app, request).await;
    check_refusal(
        status,
        &headers,
        &body,
        StatusCode::SERVICE_UNAVAILABLE,
        "shutting_down",
    );
    assert_eq!(count(&fixture.calls), 0);
    let (status, _, body) = send(&fixture.app, post_work(&[], Body::empty())).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(json(&body), handler_answer());
    assert_eq!(count(&fixture.calls), 1);
}

// ---------------------------------------------------------------------------------------------
// The event store

#[tokio::test]
async fn an_event_the_store_cannot_record_is_store_unavailable_and_nothing_starts() {
    let store = Arc::new(support::store::FaultyStore::default());
    store.failing_dispatched.store(true, Ordering::SeqCst);
    let mut fixture = fixture(|b| {
        b.default_callback_url(DEFAULT_CALLBACK)
            .store(store.clone())
            .max_in_flight(1)
    });
    let request = post_work(&[(ASYNC_HEADER, value("true"))], "{}");
    // `assert_refused`: the handler was not called and nothing was accepted.
    assert_refused(
        &fixture,
        request,
        StatusCode::SERVICE_UNAVAILABLE,
        "store_unavailable",
    )
    .await;
    let health = fixture.handle.health().await;
    assert_eq!(
        health.in_flight, 0,
        "no job and no notification hold a place"
    );
    assert_eq!(health.metrics.running, 0);
    assert!(fixture.callbacks.try_recv().is_none(), "no notification");

    // The store answers again: the same request is taken.
    store.failing_dispatched.store(false, Ordering::SeqCst);
    let request = post_work(&[(ASYNC_HEADER, value("true"))], "{}");
    assert_accepted(&fixture.app, &mut fixture.callbacks, request).await;
    assert_eq!(count(&fixture.calls), 1);
}

// ---------------------------------------------------------------------------------------------
// The order of the rows: a request that two rows apply to gets the earlier row's answer

/// Polls the layer's health until `done` holds (failing after 20 s).
async fn until_health(
    handle: &AsyncRequestHandle,
    done: impl Fn(&tower_async_request::layer::Health) -> bool,
) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !done(&handle.health().await) {
        assert!(
            std::time::Instant::now() < deadline,
            "the layer never got there"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Sends an async request whose body does not end until the returned sender is dropped, so it
/// holds its place under `max_in_flight` (and its instance's) while the layer waits for the body.
/// It must name a callback URL: without one it is refused before its body is read.
fn hold_a_place(app: &Router, headers: &[(&str, HeaderValue)]) -> tokio::sync::mpsc::Sender<Bytes> {
    let (sender, stalled) = ChannelBody::new();
    let request = post_work(headers, Body::new(stalled));
    tokio::spawn(app.clone().oneshot(request));
    sender
}

/// What a request is meant to show, its headers and body, and the answer it must get.
type Case = (
    &'static str,
    Vec<(&'static str, HeaderValue)>,
    Body,
    StatusCode,
    &'static str,
);

#[tokio::test]
async fn the_first_row_that_applies_answers_from_the_headers_to_the_store() {
    let store = Arc::new(support::store::FaultyStore::default());
    store.failing_dispatched.store(true, Ordering::SeqCst);
    let fixture = fixture(|b| b.max_request_bytes(16).store(store.clone()));
    let callback = |url: &str| (CALLBACK_HEADER, value(url));
    let asks = || (ASYNC_HEADER, value("true"));
    let upgrade = ("upgrade", value("websocket"));
    let cases: Vec<Case> = vec![
        (
            "a bad async header before an upgrade and a bad callback URL",
            vec![
                (ASYNC_HEADER, value("maybe")),
                upgrade.clone(),
                callback("ftp://x"),
            ],
            Body::empty(),
            StatusCode::BAD_REQUEST,
            "invalid_async_header",
        ),
        (
            "an upgrade before a bad callback URL",
            vec![asks(), upgrade.clone(), callback("ftp://x")],
            Body::empty(),
            StatusCode::BAD_REQUEST,
            "async_upgrade",
        ),
        (
            "a malformed callback URL (credentials) before a private one",
            vec![asks(), callback("http://user:pw@127.0.0.1/in")],
            Body::empty(),
            StatusCode::BAD_REQUEST,
            "invalid_callback_url",
        ),
        (
            "a private callback URL before an announced body too large",
            vec![asks(), callback("http://127.0.0.1/in")],
            Body::from("x".repeat(17)),
            StatusCode::BAD_REQUEST,
            "forbidden_callback_url",
        ),
        (
            "an announced body too large before a missing callback URL",
            vec![asks()],
            Body::from("x".repeat(17)),
            StatusCode::PAYLOAD_TOO_LARGE,
            "request_too_large",
        ),
        (
            "a missing callback URL before a body found too large while read",
            vec![asks()],
            Body::new(ChunkedBody::new(["x".repeat(10), "x".repeat(10)])),
            StatusCode::BAD_REQUEST,
            "missing_callback_url",
        ),
        (
            "a missing callback URL before a broken body",
            vec![asks()],
            Body::new(BrokenBody::default()),
            StatusCode::BAD_REQUEST,
            "missing_callback_url",
        ),
        (
            "a body found too large while read before the store",
            vec![asks(), callback(DEFAULT_CALLBACK)],
            Body::new(ChunkedBody::new(["x".repeat(10), "x".repeat(10)])),
            StatusCode::PAYLOAD_TOO_LARGE,
            "request_too_large",
        ),
        (
            "a broken body before the store",
            vec![asks(), callback(DEFAULT_CALLBACK)],
            Body::new(BrokenBody::default()),
            StatusCode::BAD_REQUEST,
            "request_body_error",
        ),
        (
            "and the store, when nothing else applies",
            vec![asks(), callback(DEFAULT_CALLBACK)],
            Body::from("{}"),
            StatusCode::SERVICE_UNAVAILABLE,
            "store_unavailable",
        ),
    ];
    for (case, headers, body, status, code) in cases {
        let (answered, _, body) = send(&fixture.app, post_work(&headers, body)).await;
        assert_eq!(
            (answered, json(&body)["code"].as_str()),
            (status, Some(code)),
            "{case}"
        );
    }
    assert_eq!(count(&fixture.calls), 0);
    assert_eq!(fixture.handle.metrics().accepted, 0);
}

#[tokio::test]
async fn the_first_row_that_applies_answers_at_the_bound_and_while_shutting_down() {
    let fixture = fixture(|b| b.max_request_bytes(16).max_in_flight(1));
    let asks = || (ASYNC_HEADER, value("true"));
    let to_default = (CALLBACK_HEADER, value(DEFAULT_CALLBACK));
    let held = hold_a_place(&fixture.app, &[asks(), to_default]);
    until_health(&fixture.handle, |h| h.in_flight == 1).await;

    // At the bound: an announced body too large before overloaded, overloaded before a missing
    // callback URL.
    let too_large = post_work(&[asks()], "x".repeat(17));
    assert_refused(
        &fixture,
        too_large,
        StatusCode::PAYLOAD_TOO_LARGE,
        "request_too_large",
    )
    .await;
    let missing = post_work(&[asks()], Body::empty());
    assert_refused(
        &fixture,
        missing,
        StatusCode::SERVICE_UNAVAILABLE,
        "overloaded",
    )
    .await;

    // Shutting down, and still at the bound: too large, then shutting down, before overloaded.
    let handle = fixture.handle.clone();
    tokio::spawn(async move { handle.shutdown(Duration::from_secs(60)).await });
    until_health(&fixture.handle, |h| h.shutting_down).await;
    let too_large = post_work(&[asks()], "x".repeat(17));
    assert_refused(
        &fixture,
        too_large,
        StatusCode::PAYLOAD_TOO_LARGE,
        "request_too_large",
    )
    .await;
    let missing = post_work(&[asks()], Body::empty());
    assert_refused(
        &fixture,
        missing,
        StatusCode::SERVICE_UNAVAILABLE,
        "shutting_down",
    )
    .await;
    drop(held);
}

#[tokio::test]
async fn the_first_row_that_applies_answers_for_instances() {
    use tower_async_request::instance::{Instance, InstanceMap};
    // `x-instance: N` names instance N. Instance 30 may hold one event, 31 many; neither has a
    // callback URL, so a request naming none is `missing_callback_url` once its instance is known.
    let instances =
        InstanceMap::new(|parts| parts.headers.get("x-instance")?.to_str().ok()?.parse().ok());
    instances.insert(Instance::builder(30).max_in_flight(1).build().unwrap());
    instances.insert(Instance::builder(31).build().unwrap());
    let (sink, callbacks) = ChannelSink::new(16);
    let layer = AsyncRequestLayer::builder()
        .instances(instances)
        .max_in_flight(2)
        .sink(sink)
        .build()
        .unwrap();
    let calls = counter();
    let fixture = Fixture {
        handle: layer.handle(),
        app: counting_app(layer, calls.clone()),
        calls,
        callbacks,
    };
    let asks = || (ASYNC_HEADER, value("true"));
    let instance = |id: &str| ("x-instance", value(id));

    // No instance named: unknown_instance before missing_callback_url.
    let request = post_work(&[asks()], Body::empty());
    assert_refused(
        &fixture,
        request,
        StatusCode::UNAUTHORIZED,
        "unknown_instance",
    )
    .await;

    // Instance 30 at its own bound: overloaded before missing_callback_url.
    let to_default = (CALLBACK_HEADER, value(DEFAULT_CALLBACK));
    let held_30 = hold_a_place(&fixture.app, &[asks(), instance("30"), to_default.clone()]);
    until_health(&fixture.handle, |h| h.in_flight == 1).await;
    let request = post_work(&[asks(), instance("30")], Body::empty());
    assert_refused(
        &fixture,
        request,
        StatusCode::SERVICE_UNAVAILABLE,
        "overloaded",
    )
    .await;
    // Instance 31 is below its own: missing_callback_url.
    let request = post_work(&[asks(), instance("31")], Body::empty());
    assert_refused(
        &fixture,
        request,
        StatusCode::BAD_REQUEST,
        "missing_callback_url",
    )
    .await;

    // The layer at its bound: overloaded before unknown_instance.
    let held_31 = hold_a_place(&fixture.app, &[asks(), instance("31"), to_default]);
    until_health(&fixture.handle, |h| h.in_flight == 2).await;
    let request = post_work(&[asks()], Body::empty());
    assert_refused(
        &fixture,
        request,
        StatusCode::SERVICE_UNAVAILABLE,
        "overloaded",
    )
    .await;
    drop((held_30, held_31));
}

// ---------------------------------------------------------------------------------------------
// Signatures

#[tokio::test]
async fn standard_webhooks_secret_given_twice_signs_every_callback_with_both() {
    use tower_async_request::StandardWebhooksVerifier;
    const ROTATED: &str = "whsec_YSBzZWNvbmQga2V5LCBhZnRlciByb3RhdGlvbiEh";
    let mut fixture = fixture(|b| {
        b.default_callback_url(DEFAULT_CALLBACK)
            .standard_webhooks_secret(WHSEC)
            .standard_webhooks_secret(ROTATED)
    });
    let request = post_work(&[(ASYNC_HEADER, value("true"))], Body::empty());
    let (_, callback) = assert_accepted(&fixture.app, &mut fixture.callbacks, request).await;
    let signatures: Vec<&str> = callback.headers()["webhook-signature"]
        .to_str()
        .unwrap()
        .split(' ')
        .collect();
    assert_eq!(signatures.len(), 2, "{signatures:?}");
    // The first verifies with the first secret only, the second with the second only.
    for (signature, secret, other) in [
        (signatures[0], WHSEC, ROTATED),
        (signatures[1], ROTATED, WHSEC),
    ] {
        assert!(signature.starts_with("v1,"), "{signature}");
        let mut headers = callback.headers().clone();
        headers.insert("webhook-signature", value(signature));
        StandardWebhooksVerifier::new(secret)
            .unwrap()
            .verify(&headers, callback.body())
            .unwrap_or_else(|e| panic!("{signature} does not verify with its secret: {e}"));
        assert!(
            StandardWebhooksVerifier::new(other)
                .unwrap()
                .verify(&headers, callback.body())
                .is_err(),
            "{signature} is made with one secret"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Configuration of header names

#[tokio::test]
async fn configured_header_names_replace_the_defaults() {
    let async_name = HeaderName::from_static("x-run-async");
    let callback_name = HeaderName::from_static("x-notify-url");
    let mut fixture = fixture(|b| {
        b.async_header(async_name.clone())
            .callback_url_header(callback_name.clone())
    });
    let target = "https://hooks.example.org/custom";

    // The configured names select the async path and the callback URL (names match in any case).
    let request = post_work(
        &[
            ("X-Run-Async", value("TRUE")),
            ("X-Notify-Url", value(target)),
        ],
        Body::empty(),
    );
    let (_, callback) = assert_accepted(&fixture.app, &mut fixture.callbacks, request).await;
    assert_eq!(callback.uri().to_string(), target);
    assert_eq!(count(&fixture.calls), 1);

    // The default async header no longer means anything: the request passes through.
    let request = post_work(
        &[
            (ASYNC_HEADER, value("true")),
            (CALLBACK_HEADER, value(target)),
        ],
        Body::empty(),
    );
    let (status, headers, body) = send(&fixture.app, request).await;
    assert_eq!(status, StatusCode::OK);
    assert!(!headers.contains_key("elements-event-id"));
    assert_eq!(json(&body), handler_answer());
    assert_eq!(count(&fixture.calls), 2);

    // The default callback header is not read: no callback URL, no default.
    let request = post_work(
        &[
            (async_name.as_str(), value("true")),
            (CALLBACK_HEADER, value(target)),
        ],
        Body::empty(),
    );
    let (status, headers, body) = send(&fixture.app, request).await;
    check_refusal(
        status,
        &headers,
        &body,
        StatusCode::BAD_REQUEST,
        "missing_callback_url",
    );

    // Refusals name the configured header and apply to it.
    let request = post_work(&[(async_name.as_str(), value("maybe"))], Body::empty());
    let (status, headers, body) = send(&fixture.app, request).await;
    check_refusal(
        status,
        &headers,
        &body,
        StatusCode::BAD_REQUEST,
        "invalid_async_header",
    );
    let request = post_work(
        &[
            (async_name.as_str(), value("true")),
            (callback_name.as_str(), value("http://127.0.0.1/in")),
        ],
        Body::empty(),
    );
    let (status, headers, body) = send(&fixture.app, request).await;
    check_refusal(
        status,
        &headers,
        &body,
        StatusCode::BAD_REQUEST,
        "forbidden_callback_url",
    );
    assert_eq!(count(&fixture.calls), 2);
}

// ---------------------------------------------------------------------------------------------
// A real server and a real client

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_server_with_300_concurrent_async_requests() {
    const REQUESTS: usize = 300;
    let (sink, mut callbacks) = ChannelSink::new(REQUESTS * 2);
    let layer = AsyncRequestLayer::builder()
        .instance_id(30)
        .default_callback_url(DEFAULT_CALLBACK)
        .sink(sink)
        .build()
        .unwrap();
    let calls = counter();
    let seen = calls.clone();
    let app = Router::new()
        .route(
            "/work/{i}",
            post(move |Path(i): Path<u64>, Json(body): Json<Value>| {
                let seen = seen.clone();
                async move {
                    bump(&seen);
                    Json(json!({ "i": i, "echo": body }))
                }
            }),
        )
        .layer(layer);

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let mut requests = tokio::task::JoinSet::new();
    for i in 0..REQUESTS as u64 {
        let client = client.clone();
        requests.spawn(async move {
            let request = Request::post(format!("http://{addr}/work/{i}"))
                .header(ASYNC_HEADER, "True")
                .header(header::CONTENT_TYPE, "application/json")
                .body(Full::new(Bytes::from(json!({ "n": i }).to_string())))
                .unwrap();
            let response = tokio::time::timeout(Duration::from_secs(30), client.request(request))
                .await
                .expect("the request hung")
                .expect("the request failed");
            let (parts, body) = response.into_parts();
            let body = body.collect().await.unwrap().to_bytes();
            (i, check_receipt(parts.status, &parts.headers, &body))
        });
    }
    // eventId -> request index
    let mut receipts: HashMap<u64, u64> = HashMap::new();
    while let Some(joined) = requests.join_next().await {
        let (i, event_id) = joined.unwrap();
        assert!(event_id <= MAX_SAFE_ID);
        assert!(
            receipts.insert(event_id, i).is_none(),
            "eventId {event_id} handed out twice"
        );
    }
    assert_eq!(receipts.len(), REQUESTS);

    let mut notification_ids = HashSet::new();
    let mut answered = HashSet::new();
    for _ in 0..REQUESTS {
        let callback = recv_callback(&mut callbacks).await;
        assert_eq!(callback.method(), http::Method::POST);
        assert_eq!(callback.uri().to_string(), DEFAULT_CALLBACK);
        let notification = json(callback.body());
        let event_id = notification["eventId"].as_u64().expect("eventId");
        let i = *receipts
            .get(&event_id)
            .unwrap_or_else(|| panic!("callback for an unknown eventId: {notification}"));
        assert!(answered.insert(event_id), "two callbacks for {event_id}");
        assert_eq!(
            callback.headers()["elements-event-id"].to_str().unwrap(),
            event_id.to_string()
        );
        assert_eq!(notification["eventStatus"], "completed");
        assert_eq!(notification["statusCode"], 200);
        assert_eq!(
            notification["response"],
            json!({ "i": i, "echo": { "n": i } }),
            "the callback of request {i} carries another request's answer"
        );
        let notification_id = notification["notificationId"]
            .as_u64()
            .expect("notificationId");
        assert!(notification_id <= MAX_SAFE_ID);
        assert_ne!(notification_id, event_id);
        assert!(
            notification_ids.insert(notification_id),
            "notificationId {notification_id} repeated"
        );
    }
    assert_eq!(answered.len(), REQUESTS);
    assert_eq!(notification_ids.len(), REQUESTS);
    assert_eq!(count(&calls), REQUESTS);
    server.abort();
}

// ---------------------------------------------------------------------------------------------
// Readiness

/// A hand-made `ConcurrencyLimit(1)` (tower's `limit` feature is not enabled here): `poll_ready`
/// takes the single permit, `call` panics without one, and the response future holds the permit
/// until the work ends. A clone starts without a permit, as tower requires.
struct ConcurrencyLimitOne<S> {
    inner: S,
    semaphore: Arc<Semaphore>,
    permit: Option<OwnedSemaphorePermit>,
    acquiring: Option<Pin<Box<dyn Future<Output = OwnedSemaphorePermit> + Send>>>,
}

impl<S> ConcurrencyLimitOne<S> {
    fn new(inner: S) -> Self {
        Self {
            inner,
            semaphore: Arc::new(Semaphore::new(1)),
            permit: None,
            acquiring: None,
        }
    }
}

impl<S: Clone> Clone for ConcurrencyLimitOne<S> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            semaphore: self.semaphore.clone(),
            permit: None,
            acquiring: None,
        }
    }
}

impl<S, R> Service<R> for ConcurrencyLimitOne<S>
where
    S: Service<R>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        if self.permit.is_none() {
            let semaphore = self.semaphore.clone();
            let acquiring = self.acquiring.get_or_insert_with(|| {
                Box::pin(async move { semaphore.acquire_owned().await.unwrap() })
            });
            let permit = std::task::ready!(acquiring.as_mut().poll(cx));
            self.acquiring = None;
            self.permit = Some(permit);
        }
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: R) -> Self::Future {
        let permit = self
            .permit
            .take()
            .expect("call() without a successful poll_ready()");
        let future = self.inner.call(request);
        Box::pin(async move {
            let result = future.await;
            drop(permit);
            result
        })
    }
}

#[tokio::test]
async fn readiness_of_a_concurrency_limited_inner_service_is_respected() {
    let (layer, mut callbacks) = channel_layer(|b| b.default_callback_url(DEFAULT_CALLBACK));
    let calls = counter();
    let seen = calls.clone();
    let inner = tower::service_fn(move |request: Request<RequestBody<Full<Bytes>>>| {
        let seen = seen.clone();
        async move {
            bump(&seen);
            let body = request.into_body().collect().await?.to_bytes();
            Ok::<_, BoxError>(
                Response::builder()
                    .header(header::CONTENT_TYPE, "text/plain")
                    .body(Full::new(body))
                    .unwrap(),
            )
        }
    });
    let mut service = layer.layer(ConcurrencyLimitOne::new(inner));

    let mut event_ids = Vec::new();
    for i in 0..5 {
        let request = Request::post("/work")
            .header(ASYNC_HEADER, "true")
            .body(Full::new(Bytes::from(format!("job {i}"))))
            .unwrap();
        let ready = tokio::time::timeout(
            RECV_TIMEOUT,
            ServiceExt::<Request<Full<Bytes>>>::ready(&mut service),
        )
        .await
        .expect("the inner service never became ready again")
        .unwrap();
        let response = ready.call(request).await.unwrap();
        let (parts, body) = response.into_parts();
        event_ids.push(check_receipt(
            parts.status,
            &parts.headers,
            &read_body(body).await,
        ));

        // A synchronous request through the same service in between.
        let request = Request::post("/work")
            .body(Full::new(Bytes::from(format!("sync {i}"))))
            .unwrap();
        let ready = tokio::time::timeout(
            RECV_TIMEOUT,
            ServiceExt::<Request<Full<Bytes>>>::ready(&mut service),
        )
        .await
        .expect("the inner service never became ready again")
        .unwrap();
        let response = ready.call(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(read_body(response.into_body()).await, format!("sync {i}"));
    }

    let mut answers = HashMap::new();
    for _ in 0..5 {
        let notification = json(recv_callback(&mut callbacks).await.body());
        assert_eq!(notification["eventStatus"], "completed", "{notification}");
        assert_eq!(notification["statusCode"], 200);
        answers.insert(
            notification["eventId"].as_u64().unwrap(),
            notification["response"].as_str().unwrap().to_owned(),
        );
    }
    for (i, event_id) in event_ids.iter().enumerate() {
        assert_eq!(answers[event_id], format!("job {i}"));
    }
    assert_eq!(count(&calls), 10);
}
