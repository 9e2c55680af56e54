//! The notification a receiver gets, one test per shape, captured with a `ChannelSink`: its JSON
//! fields, its HTTP request (method, URL, headers) and its signatures, checked with the crate's own
//! verifiers and with the official `standardwebhooks` crate.

mod support;

use std::collections::BTreeSet;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

use axum::body::Body;
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use http::{header, HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::Full;
use serde_json::{json, Map, Value};
use tower::util::MapRequestLayer;
use tower::{Layer, ServiceExt};
use tower_async_request::notification::{EventStatus, FailureCode, Notification};
use tower_async_request::sink::{CallbackReceiver, ChannelSink};
use tower_async_request::verify::{ElementsVerifier, StandardWebhooksVerifier};
use tower_async_request::{
    event::MAX_SAFE_ID, layer::RequestBody, AsyncRequestLayer, AsyncRequestLayerBuilder,
};

use support::*;

const INSTANCE_ID: u64 = 30;

/// The layer every test uses: both signature schemes, a default callback URL, a channel sink.
fn builder(sink: ChannelSink) -> AsyncRequestLayerBuilder {
    AsyncRequestLayer::builder()
        .instance_id(INSTANCE_ID)
        .default_callback_url(DEFAULT_CALLBACK)
        .signing_key(SIGNING_KEY)
        .standard_webhooks_secret(WHSEC)
        .sink(sink)
}

/// An app with one route per response shape behind the layer; `calls` counts requests that
/// reached the routes.
fn app(layer: AsyncRequestLayer, calls: Arc<AtomicUsize>) -> Router {
    Router::new()
        .route(
            "/json",
            post(|| async {
                Json(json!({ "events": [{ "path": "/copy", "type": "folder" }], "copied": true }))
            }),
        )
        .route(
            "/problem",
            post(|| async {
                (
                    [(
                        header::CONTENT_TYPE,
                        "application/problem+json; charset=utf-8",
                    )],
                    r#"{"type":"about:blank","title":"Conflict","detail":[1,2.5,null]}"#,
                )
            }),
        )
        .route("/text", post(|| async { "hello \u{2713} world" }))
        .route(
            "/json-looking-text",
            post(|| async { ([(header::CONTENT_TYPE, "text/plain")], r#"{"a":1}"#) }),
        )
        .route(
            "/broken-json",
            post(|| async { ([(header::CONTENT_TYPE, "application/json")], "{not json") }),
        )
        .route("/empty", post(|| async {}))
        .route("/no-content", post(|| async { StatusCode::NO_CONTENT }))
        .route(
            "/binary",
            post(|| async {
                (
                    [(header::CONTENT_TYPE, "application/octet-stream")],
                    Bytes::from_static(b"\xff\x00\xfe\x80\x01"),
                )
            }),
        )
        .route(
            "/not-found",
            post(|| async {
                (
                    StatusCode::NOT_FOUND,
                    Json(json!({ "code": "no_such_folder" })),
                )
            }),
        )
        .route(
            "/unavailable",
            post(|| async { (StatusCode::SERVICE_UNAVAILABLE, "try later") }),
        )
        .route("/panic", post(panicking_handler))
        .route("/sync", get(|| async { "still here" }))
        .route("/exact", post(|| async { "0123456789abcdef" }))
        .route("/large", post(|| async { "0123456789abcdefg" }))
        .route(
            "/large-stream",
            post(|| async { Body::new(ChunkedBody::new(["01234567", "89abcdef", "g"])) }),
        )
        .layer(MapRequestLayer::new(move |request: Request<Body>| {
            bump(&calls);
            request
        }))
        .layer(layer)
}

async fn panicking_handler() -> &'static str {
    panic!("the handler exploded")
}

struct Fixture {
    app: Router,
    calls: Arc<AtomicUsize>,
    callbacks: CallbackReceiver,
}

fn fixture(
    configure: impl FnOnce(AsyncRequestLayerBuilder) -> AsyncRequestLayerBuilder,
) -> Fixture {
    let (sink, callbacks) = ChannelSink::new(64);
    let layer = configure(builder(sink))
        .build()
        .expect("a valid configuration");
    let calls = counter();
    Fixture {
        app: app(layer, calls.clone()),
        calls,
        callbacks,
    }
}

/// Sends an async `POST` to `path` and returns the receipt's event id.
async fn dispatch(app: &Router, path: &str) -> u64 {
    let request = Request::post(path)
        .header(ASYNC_HEADER, "true")
        .body(Body::empty())
        .unwrap();
    let response = app.clone().oneshot(request).await.unwrap();
    let (parts, body) = response.into_parts();
    check_receipt(parts.status, &parts.headers, &read_body(body).await)
}

/// Checks everything every callback must carry and returns the notification JSON object.
fn check_callback(callback: &Request<Bytes>, event_id: u64) -> Map<String, Value> {
    assert_eq!(callback.method(), Method::POST);
    assert_eq!(callback.uri().to_string(), DEFAULT_CALLBACK);
    let headers = callback.headers();
    assert_eq!(headers[header::CONTENT_TYPE], "application/json");
    let user_agent = headers[header::USER_AGENT].to_str().unwrap();
    assert!(
        user_agent.starts_with("tower-async-request/"),
        "user-agent: {user_agent}"
    );
    assert!(
        user_agent.len() > "tower-async-request/".len(),
        "user-agent names no version: {user_agent}"
    );
    assert_eq!(headers["elements-event-id"], event_id.to_string().as_str());

    let body = callback.body();
    check_signatures(headers, body);

    let value = json(body);
    let object = value
        .as_object()
        .unwrap_or_else(|| panic!("not a JSON object: {value}"))
        .clone();
    assert_eq!(object["eventId"], event_id, "{value}");
    assert_eq!(object["instanceId"], INSTANCE_ID, "{value}");
    let notification_id = object
        .get("notificationId")
        .and_then(Value::as_u64)
        .unwrap_or_else(|| panic!("no integer notificationId: {value}"));
    assert_ne!(notification_id, event_id, "{value}");
    assert!(notification_id <= MAX_SAFE_ID);
    assert_eq!(headers["webhook-id"], notification_id.to_string().as_str());

    // The crate's receiver-side type reads it (its full round trip is checked in
    // `notification_type_reads_every_shape_back`).
    let parsed: Notification = serde_json::from_slice(body).expect("a Notification");
    assert_eq!(parsed.event_id.get(), event_id);
    assert_eq!(parsed.instance_id, INSTANCE_ID);
    assert_eq!(parsed.notification_id.get(), notification_id);
    object
}

/// Both signature schemes verify, with the crate's verifiers and the official crate, and fail on a
/// tampered body.
fn check_signatures(headers: &HeaderMap, body: &[u8]) {
    let signature = headers["elements-webhook-signature"].to_str().unwrap();
    assert!(signature.starts_with("sha256="), "{signature}");
    let timestamp: u64 = headers["webhook-timestamp"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(timestamp > 1_700_000_000, "webhook-timestamp {timestamp}");
    assert!(headers["webhook-signature"]
        .to_str()
        .unwrap()
        .starts_with("v1,"));

    let elements = ElementsVerifier::new(SIGNING_KEY);
    let standard = StandardWebhooksVerifier::new(WHSEC).unwrap();
    let official = standardwebhooks::Webhook::new(WHSEC).unwrap();
    elements
        .verify(headers, body)
        .expect("ElementsVerifier accepts the callback");
    standard
        .verify(headers, body)
        .expect("StandardWebhooksVerifier accepts the callback");
    official
        .verify(body, headers)
        .expect("the standardwebhooks crate accepts the callback");

    let mut tampered = body.to_vec();
    tampered.push(b' ');
    assert!(elements.verify(headers, &tampered).is_err());
    assert!(standard.verify(headers, &tampered).is_err());
    assert!(official.verify(&tampered, headers).is_err());
    assert!(ElementsVerifier::new("another-key")
        .verify(headers, body)
        .is_err());
}

fn field_names(object: &Map<String, Value>) -> BTreeSet<&str> {
    object.keys().map(String::as_str).collect()
}

/// A `completed` notification has exactly these fields (plus `responseEncoding` for base64).
fn check_completed(object: &Map<String, Value>, status: u16) {
    assert_eq!(object["eventStatus"], "completed", "{object:?}");
    assert_eq!(object["statusCode"], status, "{object:?}");
    let mut expected = key_set(&[
        "eventId",
        "instanceId",
        "eventStatus",
        "statusCode",
        "response",
        "notificationId",
    ]);
    if object.contains_key("responseEncoding") {
        expected.insert("responseEncoding");
    }
    assert_eq!(field_names(object), expected, "{object:?}");
}

/// A `failed` notification has exactly these fields and an `error` with the code.
fn check_failed(object: &Map<String, Value>, code: &str) {
    assert_eq!(object["eventStatus"], "failed", "{object:?}");
    assert_eq!(
        field_names(object),
        key_set(&[
            "eventId",
            "instanceId",
            "eventStatus",
            "error",
            "notificationId"
        ]),
        "{object:?}"
    );
    let error = &object["error"];
    assert_eq!(keys(error), key_set(&["code", "message"]), "{error}");
    assert_eq!(error["code"], code, "{error}");
    let message = error["message"]
        .as_str()
        .expect("error.message is a string");
    assert!(!message.trim().is_empty(), "{error}");
}

/// Dispatches to `path` and returns the checked notification of that event.
async fn notification_for(fixture: &mut Fixture, path: &str) -> Map<String, Value> {
    let event_id = dispatch(&fixture.app, path).await;
    let callback = recv_callback(&mut fixture.callbacks).await;
    check_callback(&callback, event_id)
}

#[tokio::test]
async fn json_response_is_embedded_as_json() {
    let mut fixture = fixture(|b| b);
    let object = notification_for(&mut fixture, "/json").await;
    check_completed(&object, 200);
    assert_eq!(
        object["response"],
        json!({ "events": [{ "path": "/copy", "type": "folder" }], "copied": true })
    );
    assert_eq!(count(&fixture.calls), 1);
}

#[tokio::test]
async fn plus_json_response_is_embedded_as_json() {
    let mut fixture = fixture(|b| b);
    let object = notification_for(&mut fixture, "/problem").await;
    check_completed(&object, 200);
    assert_eq!(
        object["response"],
        json!({ "type": "about:blank", "title": "Conflict", "detail": [1, 2.5, null] })
    );
}

#[tokio::test]
async fn json_content_type_with_an_unparsable_body_becomes_a_string() {
    let mut fixture = fixture(|b| b);
    let object = notification_for(&mut fixture, "/broken-json").await;
    check_completed(&object, 200);
    assert_eq!(object["response"], json!("{not json"));
}

#[tokio::test]
async fn text_response_becomes_a_json_string() {
    let mut fixture = fixture(|b| b);
    let object = notification_for(&mut fixture, "/text").await;
    check_completed(&object, 200);
    assert_eq!(object["response"], json!("hello \u{2713} world"));
    assert!(!object.contains_key("responseEncoding"));

    // Text that looks like JSON stays text when the response does not say JSON.
    let object = notification_for(&mut fixture, "/json-looking-text").await;
    check_completed(&object, 200);
    assert_eq!(object["response"], json!(r#"{"a":1}"#));
}

#[tokio::test]
async fn empty_response_is_null() {
    let mut fixture = fixture(|b| b);
    let object = notification_for(&mut fixture, "/empty").await;
    check_completed(&object, 200);
    assert!(object.contains_key("response"), "response must be present");
    assert_eq!(object["response"], Value::Null);
    assert!(!object.contains_key("responseEncoding"));

    let object = notification_for(&mut fixture, "/no-content").await;
    check_completed(&object, 204);
    assert_eq!(object["response"], Value::Null);
}

#[tokio::test]
async fn binary_response_is_base64_with_response_encoding() {
    let mut fixture = fixture(|b| b);
    let object = notification_for(&mut fixture, "/binary").await;
    check_completed(&object, 200);
    assert_eq!(object["response"], json!("/wD+gAE="));
    assert_eq!(object["responseEncoding"], "base64");
    let parsed: Notification = serde_json::from_value(Value::Object(object)).unwrap();
    assert_eq!(parsed.response_encoding.as_deref(), Some("base64"));
    assert_eq!(parsed.response_bytes().unwrap(), b"\xff\x00\xfe\x80\x01");
}

#[tokio::test]
async fn error_status_responses_are_still_completed() {
    let mut fixture = fixture(|b| b);
    let object = notification_for(&mut fixture, "/not-found").await;
    check_completed(&object, 404);
    assert_eq!(object["response"], json!({ "code": "no_such_folder" }));
    let parsed: Notification = serde_json::from_value(Value::Object(object)).unwrap();
    assert_eq!(parsed.event_status, EventStatus::Completed);
    assert_eq!(parsed.status_code, Some(404));
    assert!(parsed.error.is_none());

    let object = notification_for(&mut fixture, "/unavailable").await;
    check_completed(&object, 503);
    assert_eq!(object["response"], json!("try later"));
}

#[tokio::test]
async fn inner_service_error_is_failed_inner_error() {
    let (sink, mut callbacks) = ChannelSink::new(8);
    let layer = builder(sink).build().unwrap();
    let calls = counter();
    let seen = calls.clone();
    let service = layer.layer(tower::service_fn(
        move |_request: Request<RequestBody<Full<Bytes>>>| {
            bump(&seen);
            async { Err::<Response<Full<Bytes>>, _>(std::io::Error::other("database unavailable")) }
        },
    ));

    let request = Request::post("/work")
        .header(ASYNC_HEADER, "true")
        .body(Full::new(Bytes::from_static(b"{}")))
        .unwrap();
    let response = service.clone().oneshot(request).await.expect("a receipt");
    let (parts, body) = response.into_parts();
    let event_id = check_receipt(parts.status, &parts.headers, &read_body(body).await);

    let callback = recv_callback(&mut callbacks).await;
    let object = check_callback(&callback, event_id);
    check_failed(&object, "inner_error");
    let parsed: Notification = serde_json::from_value(Value::Object(object)).unwrap();
    assert_eq!(parsed.event_status, EventStatus::Failed);
    assert_eq!(parsed.error.unwrap().code, FailureCode::InnerError);
    assert!(parsed.response.is_none() && parsed.status_code.is_none());
    assert_eq!(count(&calls), 1);

    // On the synchronous path the error is the caller's, unchanged.
    let request = Request::post("/work")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let error = service.oneshot(request).await.unwrap_err();
    assert_eq!(error.to_string(), "database unavailable");
    assert_eq!(count(&calls), 2);
}

#[tokio::test]
async fn a_panic_in_the_inner_services_call_is_failed_panic_after_a_receipt() {
    let (sink, mut callbacks) = ChannelSink::new(8);
    let layer = builder(sink).build().unwrap();
    // A hand-written service can panic in `call` itself, not only in its future.
    let service = layer.layer(tower::service_fn(
        |_request: Request<RequestBody<Full<Bytes>>>| -> std::future::Ready<Result<Response<Full<Bytes>>, std::io::Error>> {
            panic!("panicked in call")
        },
    ));
    let request = Request::post("/work")
        .header(ASYNC_HEADER, "true")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = service.oneshot(request).await.expect("a receipt");
    let (parts, body) = response.into_parts();
    let event_id = check_receipt(parts.status, &parts.headers, &read_body(body).await);
    let object = check_callback(&recv_callback(&mut callbacks).await, event_id);
    check_failed(&object, "panic");
}

#[tokio::test]
async fn handler_panic_is_failed_panic_and_the_layer_keeps_working() {
    let mut fixture = fixture(|b| b);
    let object = notification_for(&mut fixture, "/panic").await;
    check_failed(&object, "panic");

    // The same app still serves async and synchronous requests.
    let object = notification_for(&mut fixture, "/json").await;
    check_completed(&object, 200);
    assert_eq!(object["response"]["copied"], true);

    let object = notification_for(&mut fixture, "/panic").await;
    check_failed(&object, "panic");

    let response = fixture
        .app
        .clone()
        .oneshot(Request::get("/sync").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(read_body(response.into_body()).await, "still here");
}

#[tokio::test]
async fn response_over_max_response_bytes_is_failed_response_too_large() {
    let mut fixture = fixture(|b| b.max_response_bytes(16));

    // A body that announces its length.
    let object = notification_for(&mut fixture, "/large").await;
    check_failed(&object, "response_too_large");
    // A streamed body that does not.
    let object = notification_for(&mut fixture, "/large-stream").await;
    check_failed(&object, "response_too_large");
    // Exactly at the limit is delivered.
    let object = notification_for(&mut fixture, "/exact").await;
    check_completed(&object, 200);
    assert_eq!(object["response"], "0123456789abcdef");
}

#[tokio::test]
async fn callback_goes_to_the_url_named_in_the_request() {
    let mut fixture = fixture(|b| b);
    let target = "https://receiver.example.net/hooks/in?tenant=7";
    let request = Request::post("/json")
        .header(ASYNC_HEADER, "true")
        .header(CALLBACK_HEADER, target)
        .body(Body::empty())
        .unwrap();
    let response = fixture.app.clone().oneshot(request).await.unwrap();
    let (parts, body) = response.into_parts();
    let event_id = check_receipt(parts.status, &parts.headers, &read_body(body).await);
    let callback = recv_callback(&mut fixture.callbacks).await;
    assert_eq!(callback.method(), Method::POST);
    assert_eq!(callback.uri().to_string(), target);
    assert_eq!(
        callback.headers()["elements-event-id"],
        event_id.to_string().as_str()
    );
    check_signatures(callback.headers(), callback.body());
}

#[tokio::test]
async fn every_notification_of_a_layer_has_distinct_ids() {
    let mut fixture = fixture(|b| b);
    let mut seen = BTreeSet::new();
    for path in [
        "/json",
        "/text",
        "/empty",
        "/binary",
        "/panic",
        "/not-found",
    ] {
        let object = notification_for(&mut fixture, path).await;
        for field in ["eventId", "notificationId"] {
            let id = object[field].as_u64().unwrap();
            assert!(seen.insert(id), "{field} {id} repeated");
        }
    }
}

#[tokio::test]
async fn notification_type_reads_every_shape_back() {
    // What a receiver using `tower_async_request::notification::Notification` gets: the inner body
    // through `response_bytes()` (`None` only when the event failed), and the same JSON when it
    // writes the notification out again.
    let mut fixture = fixture(|b| b);
    let cases: [(&str, Option<&[u8]>); 6] = [
        ("/text", Some("hello \u{2713} world".as_bytes())),
        ("/json-looking-text", Some(br#"{"a":1}"#)),
        ("/binary", Some(b"\xff\x00\xfe\x80\x01")),
        ("/empty", Some(b"")),
        ("/no-content", Some(b"")),
        ("/panic", None),
    ];
    let mut wrong = Vec::new();
    for (path, expected) in cases {
        let object = notification_for(&mut fixture, path).await;
        let value = Value::Object(object);
        let parsed: Notification = serde_json::from_value(value.clone()).unwrap();
        let bytes = parsed.response_bytes();
        if bytes.as_deref() != expected {
            wrong.push(format!(
                "{path}: response_bytes() = {bytes:?}, expected {expected:?} (notification {value})"
            ));
        }
        let again = serde_json::to_value(&parsed).unwrap();
        if again != value {
            wrong.push(format!("{path}: read {value}, written back as {again}"));
        }
    }
    let object = notification_for(&mut fixture, "/json").await;
    let parsed: Notification = serde_json::from_value(Value::Object(object.clone())).unwrap();
    let bytes = parsed
        .response_bytes()
        .expect("a completed event has a response");
    assert_eq!(json(&bytes), object["response"]);
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}
