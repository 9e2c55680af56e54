//! SECURITY.md's promises about hostile inputs that no other file shows: a panic's message goes
//! to the log (not to the receiver), an announced body over the limit is refused before a byte
//! of it is sent, a notification's size is bounded by `max_response_bytes`, and request heads
//! over hyper's limit never reach the layer. Real HTTP on 127.0.0.1 where a connection matters.

mod support;

use std::sync::Arc;

use axum::{body::Body, routing::post, Router};
use base64::{engine::general_purpose::STANDARD, Engine};
use bytes::Bytes;
use http::{Request, StatusCode};
use support::capture::{capture, field, take};
use support::{bump, count, counter, json, recv_callback, ASYNC_HEADER, DEFAULT_CALLBACK};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tower::ServiceExt;
use tower_async_request::sink::ChannelSink;
use tower_async_request::{AsyncRequestLayer, AsyncRequestLayerBuilder};
use tracing::Level;

fn builder(sink: ChannelSink) -> AsyncRequestLayerBuilder {
    AsyncRequestLayer::builder()
        .default_callback_url(DEFAULT_CALLBACK)
        .sink(sink)
}

fn async_request(path: &str) -> Request<Body> {
    Request::post(path)
        .header(ASYNC_HEADER, "true")
        .body(Body::empty())
        .unwrap()
}

async fn serve(app: Router) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

/// One HTTP/1.1 answer read off `stream`: its head (lowercased) and its body, as long as its
/// `content-length` says (the connection may stay open: nothing waits for it to close).
async fn read_answer(stream: &mut TcpStream) -> (String, Vec<u8>) {
    let mut buffer = Vec::new();
    let head_end = loop {
        if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            break end + 4;
        }
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await.unwrap();
        assert!(n > 0, "closed before a whole answer head: {buffer:?}");
        buffer.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buffer[..head_end]).to_lowercase();
    let length: usize = head
        .lines()
        .find_map(|line| line.strip_prefix("content-length:"))
        .map_or(0, |value| value.trim().parse().unwrap());
    while buffer.len() < head_end + length {
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await.unwrap();
        assert!(n > 0, "closed before the whole answer body");
        buffer.extend_from_slice(&chunk[..n]);
    }
    (head, buffer[head_end..head_end + length].to_vec())
}

#[tokio::test]
async fn a_panic_message_goes_to_the_log_and_not_to_the_receiver() {
    const SECRET: &str = "the password of db-7 is hunter2";
    let (seen, _guard) = capture();
    let (sink, mut callbacks) = ChannelSink::new(8);
    let app = Router::new()
        .route(
            "/work",
            post(|| async {
                if true {
                    panic!("{SECRET}");
                }
                "never"
            }),
        )
        .layer(builder(sink).build().unwrap());
    let receipt = app.oneshot(async_request("/work")).await.unwrap();
    assert_eq!(receipt.status(), StatusCode::ACCEPTED);

    let callback = recv_callback(&mut callbacks).await;
    let notification = json(callback.body());
    assert_eq!(notification["eventStatus"], "failed");
    assert_eq!(notification["error"]["code"], "panic");
    assert!(
        !String::from_utf8_lossy(callback.body()).contains("hunter2"),
        "the panic message reached the receiver: {notification}"
    );
    // The job logged the panic before it built the notification.
    let seen = take(&seen);
    let logged = seen.events_at(
        Level::ERROR,
        "the inner service panicked while handling an async request",
    );
    assert_eq!(logged.len(), 1, "{:?}", seen.events);
    let message = field(&logged[0].1, "panic").expect("the panic field");
    assert!(message.contains(SECRET), "{message}");
}

#[tokio::test]
async fn an_announced_body_over_the_limit_is_refused_before_a_byte_of_it_is_sent() {
    let (sink, _callbacks) = ChannelSink::new(8);
    let calls = counter();
    let layer = builder(sink).max_request_bytes(1024).build().unwrap();
    let handle = layer.handle();
    let called = calls.clone();
    let app = Router::new()
        .route(
            "/work",
            post(move || {
                bump(&called);
                async { "done" }
            }),
        )
        .layer(layer);
    let addr = serve(app).await;

    // The head alone, announcing a body one byte over the limit; the body is never sent. Were
    // the layer to read before checking, it would wait for those bytes (then answer `408` once
    // `request_body_timeout` passed), not answer `413` now.
    let mut client = TcpStream::connect(addr).await.unwrap();
    client
        .write_all(
            b"POST /work HTTP/1.1\r\nhost: app\r\nelements-async-request: true\r\n\
              content-type: application/json\r\ncontent-length: 1025\r\n\r\n",
        )
        .await
        .unwrap();
    let (head, body) = read_answer(&mut client).await;
    assert!(head.starts_with("http/1.1 413 "), "{head}");
    assert_eq!(json(&body)["code"], "request_too_large");
    assert_eq!(count(&calls), 0, "the handler ran");
    assert_eq!(handle.metrics().accepted, 0);
}

/// What `stream` says until the end of an answer's head, or until the server closes (a reset,
/// when it closed with bytes unread, may take the place of its answer).
async fn answer_head_or_close(stream: &mut TcpStream) -> String {
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 4096];
    while !buffer.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => buffer.extend_from_slice(&chunk[..n]),
        }
    }
    String::from_utf8_lossy(&buffer).into_owned()
}

/// The bound SECURITY.md gives for a notification: 4/3 of `max_response_bytes` (base64) + 200.
fn base64_bound(max_response_bytes: usize) -> usize {
    max_response_bytes * 4 / 3 + 200
}

/// The decimal digits of a JSON number.
fn digits(value: &serde_json::Value) -> usize {
    value.as_u64().unwrap().to_string().len()
}

/// Completes one async request whose answer is `body` with `content_type`, under
/// `max_response_bytes`, for the largest instance id there is; returns the notification.
async fn notification_of(max_response_bytes: usize, content_type: &str, body: Vec<u8>) -> Bytes {
    const MAX_INSTANCE_ID: u64 = (1 << 53) - 1;
    let (sink, mut callbacks) = ChannelSink::new(8);
    let layer = builder(sink)
        .instance_id(MAX_INSTANCE_ID)
        .max_response_bytes(max_response_bytes)
        .build()
        .unwrap();
    let answer = Arc::new(body);
    let content_type = content_type.to_owned();
    let app = Router::new()
        .route(
            "/work",
            post(move || {
                let (answer, content_type) = (answer.clone(), content_type.clone());
                async move { ([("content-type", content_type)], answer.to_vec()) }
            }),
        )
        .layer(layer);
    let receipt = app.oneshot(async_request("/work")).await.unwrap();
    assert_eq!(receipt.status(), StatusCode::ACCEPTED);
    recv_callback(&mut callbacks).await.into_body()
}

#[tokio::test]
async fn a_binary_response_at_max_response_bytes_fits_four_thirds_of_it_plus_200_bytes() {
    // The default limit, and three small ones for each remainder of base64's groups of three.
    for max in [1024 * 1024, 3000, 3001, 3002] {
        // Not UTF-8 (a lone 0x80 … 0xff), so carried as base64.
        let body: Vec<u8> = (0..max).map(|i| (i % 256) as u8).collect();
        let notification = notification_of(max, "application/octet-stream", body.clone()).await;
        let value = json(&notification);
        assert_eq!(
            value["eventStatus"], "completed",
            "{max}: a body at the limit is whole"
        );
        assert_eq!(value["responseEncoding"], "base64");
        let carried = STANDARD
            .decode(value["response"].as_str().unwrap())
            .unwrap();
        assert!(carried == body, "{max}: the response is not the whole body");
        assert!(
            notification.len() <= base64_bound(max),
            "{max}: {} bytes",
            notification.len()
        );
        // Still within it once the ids reach their largest (2^53 - 1, 16 digits).
        let at_largest_ids = notification.len() + 16 - digits(&value["eventId"]) + 16
            - digits(&value["notificationId"]);
        assert!(
            at_largest_ids <= base64_bound(max),
            "{max}: {at_largest_ids}"
        );
    }
}

#[tokio::test]
async fn a_text_response_of_control_characters_takes_six_times_its_size() {
    // Text is carried as a JSON string, and JSON writes each control character as `\u00XX`: six
    // bytes for one. That, not base64, is a notification's largest size.
    let max = 3000;
    let notification = notification_of(max, "text/plain", vec![0x01; max]).await;
    let value = json(&notification);
    assert_eq!(value["eventStatus"], "completed");
    assert_eq!(
        value["response"].as_str().unwrap().as_bytes(),
        &[0x01; 3000]
    );
    assert!(value.get("responseEncoding").is_none());
    assert!(
        notification.len() <= 6 * max + 200,
        "{}",
        notification.len()
    );
    assert!(
        notification.len() > base64_bound(max),
        "base64 is not the worst case: {}",
        notification.len()
    );
}

#[tokio::test]
async fn a_request_head_over_hypers_limit_never_reaches_the_layer() {
    let (sink, _callbacks) = ChannelSink::new(8);
    let calls = counter();
    let reached = counter();
    let (called, arrived) = (calls.clone(), reached.clone());
    let app = Router::new()
        .route(
            "/work",
            post(move || {
                bump(&called);
                async { "done" }
            }),
        )
        .layer(builder(sink).build().unwrap())
        // Outside the layer: counts every request hyper hands to the app.
        .layer(tower::util::MapRequestLayer::new(
            move |request: Request<Body>| {
                bump(&arrived);
                request
            },
        ));
    let addr = serve(app).await;

    // A request of an ordinary size reaches the app: the count counts.
    let mut client = TcpStream::connect(addr).await.unwrap();
    client
        .write_all(b"POST /work HTTP/1.1\r\nhost: app\r\ncontent-length: 0\r\n\r\n")
        .await
        .unwrap();
    let (head, _) = read_answer(&mut client).await;
    assert!(head.starts_with("http/1.1 200 "), "{head}");
    assert_eq!((count(&reached), count(&calls)), (1, 1));

    // A head of 1 MiB (hyper reads at most about 400 KiB of one).
    let head = format!(
        "POST /work HTTP/1.1\r\nhost: app\r\nelements-async-request: true\r\n\
         x-padding: {}\r\ncontent-length: 0\r\n\r\n",
        "a".repeat(1024 * 1024)
    );
    let mut client = TcpStream::connect(addr).await.unwrap();
    // The server may close before all of it is written.
    let _ = client.write_all(head.as_bytes()).await;
    let answer = answer_head_or_close(&mut client).await;
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 431 "),
        "{answer}"
    );
    assert_eq!(
        (count(&reached), count(&calls)),
        (1, 1),
        "the oversized request reached the app"
    );
}
