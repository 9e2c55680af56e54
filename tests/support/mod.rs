//! Helpers shared by the integration tests: bodies, services and checks (here), log capture,
//! upgrades, a scriptable webhook receiver, a PostgreSQL schema per test, and the
//! `durable_worker` example as a real process.

#![allow(dead_code)]

pub mod capture;
#[cfg(feature = "postgres")]
pub mod pg;
pub mod receiver;
pub mod store;
pub mod upgrade;
pub mod worker;

#[allow(unused_imports)] // each test file uses a different part
pub use self::receiver::{eventually, Answer, Hit, Receiver};

use std::collections::{BTreeSet, VecDeque};
use std::convert::Infallible;
use std::fmt::Debug;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderMap, Request, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use serde_json::Value;
use tokio::sync::mpsc;
use tower_async_request::event::MAX_SAFE_ID;
use tower_async_request::sink::CallbackReceiver;

/// Hang guard around `recv()`: a bug fails the test instead of hanging it.
pub const RECV_TIMEOUT: Duration = Duration::from_secs(5);

pub const SIGNING_KEY: &str = "event-signature-key";
pub const WHSEC: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
pub const DEFAULT_CALLBACK: &str = "https://hooks.example.com/in";
pub const ASYNC_HEADER: &str = "elements-async-request";
pub const CALLBACK_HEADER: &str = "elements-async-callback-url";

/// Counts calls of the inner handler.
pub fn counter() -> Arc<AtomicUsize> {
    Arc::new(AtomicUsize::new(0))
}

pub fn count(counter: &AtomicUsize) -> usize {
    counter.load(Ordering::SeqCst)
}

pub fn bump(counter: &AtomicUsize) {
    counter.fetch_add(1, Ordering::SeqCst);
}

/// The next callback, failing (not hanging) when none arrives.
pub async fn recv_callback(callbacks: &mut CallbackReceiver) -> Request<Bytes> {
    tokio::time::timeout(RECV_TIMEOUT, callbacks.recv())
        .await
        .expect("no callback arrived within the timeout")
        .expect("the callback channel closed")
}

/// The whole body.
pub async fn read_body<B>(body: B) -> Bytes
where
    B: Body,
    B::Error: Debug,
{
    body.collect().await.expect("reading a body").to_bytes()
}

pub fn json(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(bytes)))
}

pub fn keys(value: &Value) -> BTreeSet<&str> {
    value
        .as_object()
        .unwrap_or_else(|| panic!("not a JSON object: {value}"))
        .keys()
        .map(String::as_str)
        .collect()
}

pub fn key_set<'a>(names: &[&'a str]) -> BTreeSet<&'a str> {
    names.iter().copied().collect()
}

/// Checks a receipt (`202`, JSON `{"eventId":N,"eventStatus":"dispatched"}`, `elements-event-id`)
/// and returns its event id.
pub fn check_receipt(status: StatusCode, headers: &HeaderMap, body: &[u8]) -> u64 {
    assert_eq!(
        status,
        StatusCode::ACCEPTED,
        "receipt body: {:?}",
        String::from_utf8_lossy(body)
    );
    assert_eq!(headers[header::CONTENT_TYPE], "application/json");
    let value = json(body);
    assert_eq!(
        keys(&value),
        key_set(&["eventId", "eventStatus"]),
        "{value}"
    );
    assert_eq!(value["eventStatus"], "dispatched");
    let event_id = value["eventId"]
        .as_u64()
        .unwrap_or_else(|| panic!("eventId is not an unsigned integer: {value}"));
    assert!(event_id <= MAX_SAFE_ID, "eventId {event_id} above 2^53 - 1");
    assert_eq!(
        headers
            .get("elements-event-id")
            .expect("the receipt has an elements-event-id header")
            .to_str()
            .unwrap(),
        event_id.to_string()
    );
    event_id
}

/// Checks a refusal: status, `content-type: application/json`, body `{"code","message"}` with the
/// expected code and a non-empty message.
pub fn check_refusal(
    status: StatusCode,
    headers: &HeaderMap,
    body: &[u8],
    expected_status: StatusCode,
    expected_code: &str,
) {
    let value = json(body);
    assert_eq!(status, expected_status, "{value}");
    assert_eq!(headers[header::CONTENT_TYPE], "application/json");
    assert_eq!(keys(&value), key_set(&["code", "message"]), "{value}");
    assert_eq!(value["code"], expected_code, "{value}");
    let message = value["message"].as_str().expect("message is a string");
    assert!(!message.trim().is_empty(), "empty message: {value}");
    assert!(
        !headers.contains_key("elements-event-id"),
        "a refusal carries no event id"
    );
}

/// A body that yields its chunks one by one and announces no size.
#[derive(Debug)]
pub struct ChunkedBody {
    chunks: VecDeque<Bytes>,
}

impl ChunkedBody {
    pub fn new<I, C>(chunks: I) -> Self
    where
        I: IntoIterator<Item = C>,
        C: Into<Bytes>,
    {
        Self {
            chunks: chunks.into_iter().map(Into::into).collect(),
        }
    }
}

impl Body for ChunkedBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.chunks.pop_front().map(|chunk| Ok(Frame::data(chunk))))
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

/// A body fed chunk by chunk from a channel; it ends when the sender is dropped.
#[derive(Debug)]
pub struct ChannelBody {
    receiver: mpsc::Receiver<Bytes>,
}

impl ChannelBody {
    pub fn new() -> (mpsc::Sender<Bytes>, Self) {
        let (sender, receiver) = mpsc::channel(4);
        (sender, Self { receiver })
    }
}

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.receiver
            .poll_recv(cx)
            .map(|chunk| chunk.map(|data| Ok(Frame::data(data))))
    }
}
