//! The notification: what a receiver gets when an event's work ends.
//!
//! ```json
//! {"eventId":1028,"instanceId":30,"eventStatus":"completed","statusCode":200,
//!  "response":{"…":"…"},"notificationId":1084}
//! ```
//!
//! `response` is the inner body: parsed JSON when the inner response says JSON
//! (`application/json` or `…+json`) and parses; a JSON string for other UTF-8 text; `null` for an
//! empty body; base64 text with `"responseEncoding":"base64"` beside it for bytes that are not
//! UTF-8. An inner `4xx`/`5xx` is still `completed`. When the work produced no response the event
//! is `failed` with `"error":{"code","message"}` and no `response`. An event a client cancelled
//! is `cancelled`, with neither:
//!
//! ```json
//! {"eventId":1028,"instanceId":30,"eventStatus":"cancelled","notificationId":1084}
//! ```
//!
//! The sender writes the JSON once, into one buffer sized for it; receivers read it with
//! [`Notification`].

use std::fmt;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use bytes::Bytes;
use http::{HeaderValue, StatusCode};
use serde::{Deserialize, Serialize};

use crate::request::grpc::GrpcStatus;
use crate::wire::ids::{EventId, NotificationId};

/// Whether an event's work ran to a response.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum EventStatus {
    /// Accepted; the work has not finished (the receipt says this).
    Dispatched,
    /// The inner service produced a response (of any HTTP status).
    Completed,
    /// The work produced no response; see [`FailureCode`].
    Failed,
    /// A client cancelled the event (`DELETE` on its status URL) before its work ended: the
    /// work was dropped, or never started.
    Cancelled,
}

/// Why an event failed, the `error.code` of a `failed` notification.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum FailureCode {
    /// The inner service returned an error instead of a response.
    InnerError,
    /// The inner service panicked (the layer caught it and keeps working).
    Panic,
    /// The job ran longer than its timeout.
    Timeout,
    /// The inner response body was larger than `max_response_bytes`.
    ResponseTooLarge,
    /// The process ended before the job did (reported on restart by a durable store).
    Interrupted,
}

impl FailureCode {
    /// The stable snake_case code.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InnerError => "inner_error",
            Self::Panic => "panic",
            Self::Timeout => "timeout",
            Self::ResponseTooLarge => "response_too_large",
            Self::Interrupted => "interrupted",
        }
    }
}

impl fmt::Display for FailureCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The `error` object of a failed notification.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotificationError {
    /// Stable code.
    pub code: FailureCode,
    /// Sentence for a human.
    pub message: String,
}

/// A notification as a receiver reads it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Notification {
    /// The event this notification ends.
    pub event_id: EventId,
    /// The configured instance id of the sender.
    pub instance_id: u64,
    /// `completed`, `failed` or `cancelled`.
    pub event_status: EventStatus,
    /// HTTP status of the inner response, when completed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_code: Option<u16>,
    /// The call's gRPC status (from its trailers), when the inner service answered gRPC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc_status: Option<u32>,
    /// The call's `grpc-message`, if it sent one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc_message: Option<String>,
    /// The inner body (see the module docs), when completed: `Some(Value::Null)` for an empty
    /// body, `None` when the event failed.
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub response: Option<serde_json::Value>,
    /// `"base64"` when `response` holds base64 text of a non-UTF-8 body.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_encoding: Option<String>,
    /// Why the event failed, when failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<NotificationError>,
    /// Identifies this notification; stays the same across retries.
    pub notification_id: NotificationId,
}

/// A field that is present is `Some`, even when it is `null`.
fn present<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<serde_json::Value>, D::Error> {
    serde_json::Value::deserialize(deserializer).map(Some)
}

impl Notification {
    /// The response body as bytes: JSON re-serialized, text as UTF-8, base64 decoded, `null` as
    /// empty. `None` when the event failed.
    pub fn response_bytes(&self) -> Option<Vec<u8>> {
        let response = self.response.as_ref()?;
        Some(match response {
            serde_json::Value::Null => Vec::new(),
            serde_json::Value::String(text)
                if self.response_encoding.as_deref() == Some("base64") =>
            {
                STANDARD.decode(text).ok()?
            }
            serde_json::Value::String(text) => text.clone().into_bytes(),
            other => other.to_string().into_bytes(),
        })
    }
}

/// How an event's work ended, before it is written as JSON.
#[derive(Debug, Clone)]
pub(crate) enum Outcome {
    Completed {
        status: StatusCode,
        content_type: Option<HeaderValue>,
        body: Bytes,
        /// The call's gRPC status, for a gRPC answer (whose `body` is then the message).
        grpc: Option<GrpcStatus>,
    },
    Failed {
        code: FailureCode,
        message: String,
    },
    /// A client cancelled the event.
    Cancelled,
}

/// The inner body as it goes into `response`.
enum Response<'a> {
    /// JSON that every reader accepts (checked), without surrounding whitespace: copied as is.
    Json(&'a [u8]),
    Text(&'a str),
    Base64(String),
    Null,
}

impl Response<'_> {
    /// Bytes it takes in the notification (text may grow by its escapes).
    fn len_hint(&self) -> usize {
        match self {
            Self::Json(json) => json.len(),
            Self::Text(text) => text.len() + text.len() / 16,
            Self::Base64(encoded) => encoded.len() + 2,
            Self::Null => 4,
        }
    }
}

/// Writes one JSON object, field by field, in the order given. Names are plain ASCII constants.
struct JsonObject<'a> {
    out: &'a mut Vec<u8>,
    empty: bool,
}

impl<'a> JsonObject<'a> {
    fn begin(out: &'a mut Vec<u8>) -> Self {
        out.push(b'{');
        Self { out, empty: true }
    }

    fn name(&mut self, name: &str) {
        if !self.empty {
            self.out.push(b',');
        }
        self.empty = false;
        self.out.push(b'"');
        self.out.extend_from_slice(name.as_bytes());
        self.out.extend_from_slice(b"\":");
    }

    fn field(&mut self, name: &str, value: &(impl Serialize + ?Sized)) {
        self.name(name);
        serde_json::to_writer(&mut *self.out, value).expect("serializing to a Vec cannot fail");
    }

    /// A field whose value is already JSON.
    fn raw_field(&mut self, name: &str, json: &[u8]) {
        self.name(name);
        self.out.extend_from_slice(json);
    }

    /// A field whose value is an object, written through the one returned.
    fn object(&mut self, name: &str) -> JsonObject<'_> {
        self.name(name);
        JsonObject::begin(self.out)
    }

    fn end(self) {
        self.out.push(b'}');
    }
}

impl Outcome {
    pub(crate) fn failed(code: FailureCode, message: impl Into<String>) -> Self {
        Self::Failed {
            code,
            message: message.into(),
        }
    }

    /// Writes the notification JSON for this outcome, in the wire contract's field order.
    pub(crate) fn to_json(
        &self,
        event_id: EventId,
        instance_id: u64,
        notification_id: NotificationId,
    ) -> Bytes {
        let mut out;
        match self {
            Self::Completed {
                status,
                content_type,
                body,
                grpc,
            } => {
                let grpc_message = grpc.as_ref().and_then(|grpc| grpc.message.as_deref());
                let (response, encoding) =
                    response_value(content_type.as_ref(), body, grpc.is_some());
                out = Vec::with_capacity(
                    response.len_hint() + grpc_message.map_or(0, str::len) + 192,
                );
                let mut object = JsonObject::begin(&mut out);
                object.field("eventId", &event_id);
                object.field("instanceId", &instance_id);
                object.field("eventStatus", &EventStatus::Completed);
                object.field("statusCode", &status.as_u16());
                if let Some(grpc) = grpc {
                    object.field("grpcStatus", &grpc.code);
                    if let Some(message) = grpc_message {
                        object.field("grpcMessage", message);
                    }
                }
                match &response {
                    Response::Json(json) => object.raw_field("response", json),
                    Response::Text(text) => object.field("response", *text),
                    Response::Base64(encoded) => object.field("response", encoded.as_str()),
                    Response::Null => object.raw_field("response", b"null"),
                }
                if let Some(encoding) = encoding {
                    object.field("responseEncoding", encoding);
                }
                object.field("notificationId", &notification_id);
                object.end();
            }
            Self::Failed { code, message } => {
                out = Vec::with_capacity(message.len() + 192);
                let mut object = JsonObject::begin(&mut out);
                object.field("eventId", &event_id);
                object.field("instanceId", &instance_id);
                object.field("eventStatus", &EventStatus::Failed);
                let mut error = object.object("error");
                error.field("code", code);
                error.field("message", message.as_str());
                error.end();
                object.field("notificationId", &notification_id);
                object.end();
            }
            Self::Cancelled => {
                out = Vec::with_capacity(128);
                let mut object = JsonObject::begin(&mut out);
                object.field("eventId", &event_id);
                object.field("instanceId", &instance_id);
                object.field("eventStatus", &EventStatus::Cancelled);
                object.field("notificationId", &notification_id);
                object.end();
            }
        }
        // The notification may wait hours for delivery: keep exactly what it needs. (A `Vec`
        // with room to spare would make `Bytes::from` allocate its shared header at once, which
        // the first copy of the notification allocates anyway; but held by a million waiting
        // notifications, the spare room costs more than one allocation saves.)
        out.shrink_to_fit();
        Bytes::from(out)
    }
}

fn response_value<'a>(
    content_type: Option<&HeaderValue>,
    body: &'a [u8],
    binary: bool,
) -> (Response<'a>, Option<&'static str>) {
    if body.is_empty() {
        return (Response::Null, None);
    }
    if binary {
        return (Response::Base64(STANDARD.encode(body)), Some("base64"));
    }
    // Embedded only if every JSON reader can take it back: syntax alone would let `1e999` or a
    // lone surrogate through, which a receiver's parser then rejects. Once that holds, the
    // body is copied as it is, less the whitespace around it.
    if content_type.is_some_and(says_json) && serde_json::from_slice::<Portable>(body).is_ok() {
        return (Response::Json(body.trim_ascii()), None);
    }
    match std::str::from_utf8(body) {
        Ok(text) => (Response::Text(text), None),
        Err(_) => (Response::Base64(STANDARD.encode(body)), Some("base64")),
    }
}

/// Parses any JSON value to nothing, but the way a `serde_json::Value` would be built: numbers as
/// numbers (so an out-of-range one fails) and strings decoded (so a lone surrogate fails).
struct Portable;

impl<'de> Deserialize<'de> for Portable {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(PortableVisitor)
    }
}

struct PortableVisitor;

impl<'de> serde::de::Visitor<'de> for PortableVisitor {
    type Value = Portable;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<Portable, E> {
        Ok(Portable)
    }

    fn visit_i64<E>(self, _: i64) -> Result<Portable, E> {
        Ok(Portable)
    }

    fn visit_u64<E>(self, _: u64) -> Result<Portable, E> {
        Ok(Portable)
    }

    fn visit_f64<E: serde::de::Error>(self, value: f64) -> Result<Portable, E> {
        if value.is_finite() {
            Ok(Portable)
        } else {
            Err(E::custom("number out of range"))
        }
    }

    fn visit_str<E>(self, _: &str) -> Result<Portable, E> {
        Ok(Portable)
    }

    fn visit_unit<E>(self) -> Result<Portable, E> {
        Ok(Portable)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Portable, A::Error> {
        while seq.next_element::<Portable>()?.is_some() {}
        Ok(Portable)
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Portable, A::Error> {
        while map.next_entry::<Portable, Portable>()?.is_some() {}
        Ok(Portable)
    }
}

/// `application/json` or any `…+json` media type, parameters ignored.
fn says_json(content_type: &HeaderValue) -> bool {
    let Ok(text) = content_type.to_str() else {
        return false;
    };
    let essence = text.split(';').next().unwrap_or("").trim();
    essence.eq_ignore_ascii_case("application/json")
        || (essence.len() > 5
            && essence.is_char_boundary(essence.len() - 5)
            && essence[essence.len() - 5..].eq_ignore_ascii_case("+json"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn completed(content_type: Option<&'static str>, body: &'static [u8]) -> Value {
        let outcome = Outcome::Completed {
            status: StatusCode::OK,
            content_type: content_type.map(HeaderValue::from_static),
            body: Bytes::from_static(body),
            grpc: None,
        };
        serde_json::from_slice(&outcome.to_json(EventId::new(1028), 30, NotificationId::new(1084)))
            .unwrap()
    }

    #[test]
    fn a_cancelled_event_says_so_and_nothing_else() {
        let json = Outcome::Cancelled.to_json(EventId::new(1028), 30, NotificationId::new(1084));
        assert_eq!(
            std::str::from_utf8(&json).unwrap(),
            r#"{"eventId":1028,"instanceId":30,"eventStatus":"cancelled","notificationId":1084}"#
        );
        let read: Notification = serde_json::from_slice(&json).unwrap();
        assert_eq!(read.event_status, EventStatus::Cancelled);
        assert_eq!((read.response, read.error), (None, None));
    }

    #[test]
    fn json_body_is_embedded_as_json_in_field_order() {
        let outcome = Outcome::Completed {
            status: StatusCode::OK,
            content_type: Some(HeaderValue::from_static("application/json; charset=utf-8")),
            body: Bytes::from_static(br#"{"events":[1,2]}"#),
            grpc: None,
        };
        let json = outcome.to_json(EventId::new(1028), 30, NotificationId::new(1084));
        assert_eq!(
            std::str::from_utf8(&json).unwrap(),
            r#"{"eventId":1028,"instanceId":30,"eventStatus":"completed","statusCode":200,"response":{"events":[1,2]},"notificationId":1084}"#
        );
    }

    #[test]
    fn embedded_json_loses_only_its_surrounding_whitespace() {
        let outcome = Outcome::Completed {
            status: StatusCode::CREATED,
            content_type: Some(HeaderValue::from_static("application/json")),
            body: Bytes::from_static(b" \r\n\t{ \"a\" : [1, \"x y\"] }\n "),
            grpc: None,
        };
        let json = outcome.to_json(EventId::new(7), 0, NotificationId::new(8));
        assert_eq!(
            std::str::from_utf8(&json).unwrap(),
            r#"{"eventId":7,"instanceId":0,"eventStatus":"completed","statusCode":201,"response":{ "a" : [1, "x y"] },"notificationId":8}"#
        );
    }

    #[test]
    fn text_is_an_escaped_string() {
        let outcome = Outcome::Completed {
            status: StatusCode::OK,
            content_type: Some(HeaderValue::from_static("text/plain")),
            body: Bytes::from_static("line \"one\"\n\u{1}é".as_bytes()),
            grpc: None,
        };
        let json = outcome.to_json(EventId::new(7), 0, NotificationId::new(8));
        assert_eq!(
            std::str::from_utf8(&json).unwrap(),
            r#"{"eventId":7,"instanceId":0,"eventStatus":"completed","statusCode":200,"response":"line \"one\"\n\u0001é","notificationId":8}"#
        );
    }

    #[test]
    fn plus_json_media_types_count_as_json() {
        assert_eq!(
            completed(Some("application/problem+json"), br#"{"a":1}"#)["response"],
            json!({"a": 1})
        );
        assert_eq!(
            completed(Some("APPLICATION/JSON"), b"[1]")["response"],
            json!([1])
        );
    }

    #[test]
    fn invalid_json_and_text_become_a_string() {
        assert_eq!(
            completed(Some("application/json"), b"{not json")["response"],
            json!("{not json")
        );
        assert_eq!(
            completed(Some("text/plain"), b"hello \xe2\x9c\x93")["response"],
            json!("hello ✓")
        );
        assert_eq!(
            completed(None, br#"{"a":1}"#)["response"],
            json!(r#"{"a":1}"#)
        );
    }

    #[test]
    fn json_that_other_parsers_reject_is_sent_as_text() {
        // Found by the `notification` fuzz target: valid syntax, but no f64 holds it.
        for body in [&b"1e999"[..], b"[1, -2E400]", br#"{"a":"\ud800"}"#] {
            let value = completed(
                Some("application/json"),
                Box::leak(body.to_vec().into_boxed_slice()),
            );
            assert_eq!(value["response"], json!(std::str::from_utf8(body).unwrap()));
        }
        assert_eq!(
            completed(Some("application/json"), b"[1.5e300, 12345678901234567890]")["response"],
            json!([1.5e300, 12345678901234567890u64])
        );
    }

    #[test]
    fn empty_body_is_null() {
        let value = completed(Some("application/json"), b"");
        assert!(value.as_object().unwrap().contains_key("response"));
        assert_eq!(value["response"], Value::Null);
        assert!(value.get("responseEncoding").is_none());
        let parsed: Notification = serde_json::from_value(value.clone()).unwrap();
        assert_eq!(
            parsed.response_bytes(),
            Some(Vec::new()),
            "empty, not failed"
        );
        assert_eq!(
            serde_json::to_value(&parsed).unwrap(),
            value,
            "round-trips with the null"
        );
    }

    #[test]
    fn binary_body_is_base64_with_encoding() {
        let value = completed(Some("application/octet-stream"), b"\xff\x00\xfe");
        assert_eq!(value["response"], json!("/wD+"));
        assert_eq!(value["responseEncoding"], json!("base64"));
        let parsed: Notification = serde_json::from_value(value).unwrap();
        assert_eq!(parsed.response_bytes().unwrap(), b"\xff\x00\xfe");
    }

    #[test]
    fn grpc_answers_carry_their_status_and_base64_message() {
        let outcome = Outcome::Completed {
            status: StatusCode::OK,
            content_type: Some(HeaderValue::from_static("application/grpc")),
            body: Bytes::from_static(b"\x0a\x02ok"), // valid UTF-8, still base64 for gRPC
            grpc: Some(GrpcStatus {
                code: 0,
                message: None,
            }),
        };
        let json = outcome.to_json(EventId::new(1), 2, NotificationId::new(3));
        assert_eq!(
            std::str::from_utf8(&json).unwrap(),
            r#"{"eventId":1,"instanceId":2,"eventStatus":"completed","statusCode":200,"grpcStatus":0,"response":"CgJvaw==","responseEncoding":"base64","notificationId":3}"#
        );
        let parsed: Notification = serde_json::from_slice(&json).unwrap();
        assert_eq!(parsed.grpc_status, Some(0));
        assert_eq!(parsed.response_bytes().unwrap(), b"\x0a\x02ok");
    }

    #[test]
    fn error_statuses_are_still_completed() {
        let outcome = Outcome::Completed {
            status: StatusCode::NOT_FOUND,
            content_type: None,
            body: Bytes::from_static(b"missing"),
            grpc: None,
        };
        let value: Value =
            serde_json::from_slice(&outcome.to_json(EventId::new(1), 2, NotificationId::new(3)))
                .unwrap();
        assert_eq!(value["eventStatus"], "completed");
        assert_eq!(value["statusCode"], 404);
    }

    #[test]
    fn failure_has_error_and_no_response() {
        let outcome = Outcome::failed(FailureCode::ResponseTooLarge, "too big");
        let json = outcome.to_json(EventId::new(1), 2, NotificationId::new(3));
        assert_eq!(
            std::str::from_utf8(&json).unwrap(),
            r#"{"eventId":1,"instanceId":2,"eventStatus":"failed","error":{"code":"response_too_large","message":"too big"},"notificationId":3}"#
        );
        let parsed: Notification = serde_json::from_slice(&json).unwrap();
        assert_eq!(parsed.event_status, EventStatus::Failed);
        assert_eq!(parsed.error.unwrap().code, FailureCode::ResponseTooLarge);
        assert!(parsed.response.is_none());
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    fn content_type() -> impl Strategy<Value = Option<&'static str>> {
        prop_oneof![
            Just(None),
            Just(Some("application/json")),
            Just(Some("application/problem+json; charset=utf-8")),
            Just(Some("text/plain")),
            Just(Some("application/octet-stream")),
        ]
    }

    proptest! {
        #[test]
        fn any_body_makes_valid_json_that_gives_the_body_back(body in proptest::collection::vec(any::<u8>(), 0..512), ct in content_type(), status in 100u16..600) {
            let outcome = Outcome::Completed {
                status: StatusCode::from_u16(status).unwrap(),
                content_type: ct.map(HeaderValue::from_static),
                body: Bytes::from(body.clone()),
                grpc: None,
            };
            let json = outcome.to_json(EventId::new(1), 2, NotificationId::new(3));
            let parsed: Notification = serde_json::from_slice(&json).expect("valid JSON");
            prop_assert_eq!(parsed.status_code, Some(status));
            let back = parsed.response_bytes().expect("a completed event has a response");
            match serde_json::from_slice::<serde_json::Value>(&body) {
                // A JSON body comes back as the same JSON value (whitespace may differ).
                Ok(value) if ct.is_some_and(|c| c.contains("json")) => {
                    prop_assert_eq!(serde_json::from_slice::<serde_json::Value>(&back).unwrap(), value);
                }
                _ => prop_assert_eq!(back, body),
            }
        }

        #[test]
        fn any_failure_message_makes_valid_json(message in ".{0,200}") {
            let json = Outcome::failed(FailureCode::InnerError, message.clone()).to_json(EventId::new(1), 2, NotificationId::new(3));
            let parsed: Notification = serde_json::from_slice(&json).expect("valid JSON");
            prop_assert_eq!(parsed.error.unwrap().message, message);
        }
    }
}
