//! gRPC: answering async gRPC calls in a way gRPC clients understand.
//!
//! A gRPC client cannot read a JSON `202`: it expects HTTP `200`, `content-type:
//! application/grpc`, length-prefixed messages and a `grpc-status` trailer. So for a request whose
//! content type is `application/grpc…` (and which asks for the async path, with metadata
//! `elements-async-request: true`):
//!
//! - **receipt**: a valid unary answer — one *empty* message (the default value of every protobuf
//!   message type) with `grpc-status: 0` — and the receipt in response metadata:
//!   `elements-event-id` and `elements-event-status: dispatched`;
//! - **refusals**: a trailers-only gRPC error (`grpc-status` `INVALID_ARGUMENT`,
//!   `DEADLINE_EXCEEDED`, `RESOURCE_EXHAUSTED`, `UNAUTHENTICATED`, `FAILED_PRECONDITION`,
//!   `ABORTED` or `UNAVAILABLE`, a `grpc-message`, and the crate's stable code in
//!   `elements-error-code`; no `Retry-After`);
//! - **notification**: `response` is the response *message* bytes (the length prefix removed when
//!   the body is one uncompressed message) in base64 with `"responseEncoding":"base64"` — or
//!   `null`, as for any empty body, when the call produced no message bytes (an error status, or
//!   an empty message) — and `grpcStatus` / `grpcMessage` carry the call's real outcome from its
//!   trailers.
//!
//! Plain (synchronous) gRPC calls pass through untouched, trailers included.

use bytes::Bytes;
use http::{header, HeaderMap, HeaderName, HeaderValue, Response, StatusCode};

use crate::wire::body::OwnBody;
use crate::wire::header::ELEMENTS_EVENT_ID;
use crate::wire::ids::EventId;

const GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
const GRPC_MESSAGE: HeaderName = HeaderName::from_static("grpc-message");
/// Response metadata carrying the receipt's `eventStatus`.
pub(crate) const ELEMENTS_EVENT_STATUS: HeaderName =
    HeaderName::from_static("elements-event-status");
const ELEMENTS_ERROR_CODE: HeaderName = HeaderName::from_static("elements-error-code");

/// The gRPC outcome of a call, read from its trailers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct GrpcStatus {
    pub(crate) code: u32,
    pub(crate) message: Option<String>,
}

/// Whether a content type is gRPC's (`application/grpc`, `application/grpc+proto`, …).
pub(crate) fn is_grpc(headers: &HeaderMap) -> bool {
    headers.get(header::CONTENT_TYPE).is_some_and(is_grpc_type)
}

/// Whether a `content-type` is gRPC's.
pub(crate) fn is_grpc_type(content_type: &HeaderValue) -> bool {
    content_type.as_bytes().starts_with(b"application/grpc")
}

/// The receipt of an async gRPC call: one empty message, `grpc-status: 0`, the receipt in
/// metadata.
pub(crate) fn receipt(event_id: EventId) -> Response<OwnBody> {
    let mut trailers = HeaderMap::new();
    trailers.insert(GRPC_STATUS, HeaderValue::from_static("0"));
    // Uncompressed flag, then a zero length: the empty message.
    let mut response = Response::new(OwnBody::new(
        Bytes::from_static(&[0, 0, 0, 0, 0]),
        Some(trailers),
    ));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    headers.insert(ELEMENTS_EVENT_ID, event_id.get().into());
    headers.insert(
        ELEMENTS_EVENT_STATUS,
        HeaderValue::from_static("dispatched"),
    );
    response
}

/// A trailers-only gRPC error: `grpc-status` `code`, `message` percent-encoded, and the layer's
/// own `error_code` (a refusal's stable code) in `elements-error-code`.
pub(crate) fn error(code: u32, message: &str, error_code: &'static str) -> Response<OwnBody> {
    let mut response = Response::new(OwnBody::new(Bytes::new(), None));
    *response.status_mut() = StatusCode::OK;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    headers.insert(GRPC_STATUS, code.into());
    headers.insert(
        GRPC_MESSAGE,
        HeaderValue::try_from(percent_encode(message))
            .expect("percent-encoded text is a valid header"),
    );
    headers.insert(ELEMENTS_ERROR_CODE, HeaderValue::from_static(error_code));
    response
}

/// The message of a body that is exactly one uncompressed length-prefixed message; otherwise the
/// body as it is.
pub(crate) fn unframe(body: &Bytes) -> Bytes {
    if body.len() >= 5 && body[0] == 0 {
        let len = u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize;
        if body.len() == 5 + len {
            return body.slice(5..);
        }
    }
    body.clone()
}

/// The call's status from its trailers (or, for a trailers-only answer, its headers).
pub(crate) fn status(headers: &HeaderMap, trailers: Option<&HeaderMap>) -> Option<GrpcStatus> {
    let source = trailers
        .filter(|t| t.contains_key(GRPC_STATUS))
        .unwrap_or(headers);
    let code = source
        .get(GRPC_STATUS)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let message = source
        .get(GRPC_MESSAGE)
        .and_then(|m| m.to_str().ok())
        .map(percent_decode)
        .filter(|m| !m.is_empty());
    Some(GrpcStatus { code, message })
}

/// gRPC's `grpc-message` encoding: printable ASCII except `%` as is, everything else `%XX`.
fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if (0x20..=0x7e).contains(&byte) && byte != b'%' {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = |b: u8| (b as char).to_digit(16);
            if let (Some(high), Some(low)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push((high * 16 + low) as u8);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::refusal::{Refusal, RefusalCode};
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn the_receipt_is_one_empty_message_with_status_ok_and_metadata() {
        let response = receipt(EventId::new(1028));
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()["content-type"], "application/grpc");
        assert_eq!(response.headers()["elements-event-id"], "1028");
        assert_eq!(response.headers()["elements-event-status"], "dispatched");
        let collected = response.into_body().collect().await.unwrap();
        assert_eq!(collected.trailers().unwrap()["grpc-status"], "0");
        assert_eq!(&collected.to_bytes()[..], &[0, 0, 0, 0, 0]);
    }

    #[tokio::test]
    async fn refusals_are_trailers_only_grpc_errors() {
        let response = Refusal::new(RefusalCode::Overloaded, "busy, 100% full").respond(true);
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()["grpc-status"], "14");
        assert_eq!(response.headers()["grpc-message"], "busy, 100%25 full");
        assert_eq!(response.headers()["elements-error-code"], "overloaded");

        // Every code, with the `grpc-status` docs/wire-contract.md gives it: the `400` codes
        // INVALID_ARGUMENT, then DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED, UNAUTHENTICATED, and the
        // `503` codes UNAVAILABLE; and the idempotency codes' own (`422`, `409`).
        let mapping = [
            (RefusalCode::InvalidAsyncHeader, 3),
            (RefusalCode::MissingCallbackUrl, 3),
            (RefusalCode::InvalidCallbackUrl, 3),
            (RefusalCode::ForbiddenCallbackUrl, 3),
            (RefusalCode::RequestBodyError, 3),
            (RefusalCode::AsyncUpgrade, 3),
            (RefusalCode::RequestBodyTimeout, 4),
            (RefusalCode::RequestTooLarge, 8),
            (RefusalCode::UnknownInstance, 16),
            (RefusalCode::Overloaded, 14),
            (RefusalCode::ShuttingDown, 14),
            (RefusalCode::StoreUnavailable, 14),
            (RefusalCode::InstanceUnavailable, 14),
            (RefusalCode::InvalidIdempotencyKey, 3),
            (RefusalCode::IdempotencyKeyRequired, 3),
            (RefusalCode::IdempotencyKeyMismatch, 9), // FAILED_PRECONDITION
            (RefusalCode::IdempotencyKeyInUse, 10),   // ABORTED
        ];
        for (code, grpc_status) in mapping {
            let for_http = Refusal::new(code, "why").respond(false);
            let response = Refusal::new(code, "why").respond(true);
            let headers = response.headers();
            assert_eq!(response.status(), StatusCode::OK, "{code:?}");
            assert_eq!(headers["content-type"], "application/grpc", "{code:?}");
            assert_eq!(headers["grpc-status"], grpc_status.to_string(), "{code:?}");
            assert_eq!(headers["elements-error-code"], code.as_str());
            // Retry-After is for HTTP clients only.
            assert!(
                !headers.contains_key(header::RETRY_AFTER),
                "{code:?}: {headers:?}"
            );
            if matches!(
                code,
                RefusalCode::Overloaded
                    | RefusalCode::InstanceUnavailable
                    | RefusalCode::IdempotencyKeyInUse
            ) {
                assert!(
                    for_http.headers().contains_key(header::RETRY_AFTER),
                    "{code:?}"
                );
            }
            // Trailers-only: no message, no trailers.
            let collected = response.into_body().collect().await.unwrap();
            assert!(collected.trailers().is_none(), "{code:?}");
            assert!(collected.to_bytes().is_empty(), "{code:?}");
        }
    }

    #[test]
    fn one_message_is_unframed_and_anything_else_kept() {
        assert_eq!(
            unframe(&Bytes::from_static(&[0, 0, 0, 0, 2, 8, 1])),
            Bytes::from_static(&[8, 1])
        );
        assert_eq!(unframe(&Bytes::from_static(&[0, 0, 0, 0, 0])), Bytes::new());
        let two = Bytes::from_static(&[0, 0, 0, 0, 1, 8, 0, 0, 0, 0, 1, 9]);
        assert_eq!(unframe(&two), two);
        let compressed = Bytes::from_static(&[1, 0, 0, 0, 1, 8]);
        assert_eq!(unframe(&compressed), compressed);
    }

    #[test]
    fn status_comes_from_trailers_or_a_trailers_only_answer() {
        let mut trailers = HeaderMap::new();
        trailers.insert(GRPC_STATUS, HeaderValue::from_static("5"));
        trailers.insert(GRPC_MESSAGE, HeaderValue::from_static("no%20such%20folder"));
        assert_eq!(
            status(&HeaderMap::new(), Some(&trailers)),
            Some(GrpcStatus {
                code: 5,
                message: Some("no such folder".into())
            })
        );
        let mut headers = HeaderMap::new();
        headers.insert(GRPC_STATUS, HeaderValue::from_static("0"));
        assert_eq!(
            status(&headers, None),
            Some(GrpcStatus {
                code: 0,
                message: None
            })
        );
        assert_eq!(status(&HeaderMap::new(), None), None);
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode(&percent_encode("é ok %")), "é ok %");
        assert_eq!(
            percent_decode("%é%"),
            "%é%",
            "no panic inside a multibyte character"
        );
    }
}
