//! Refusals: the layer's own answers when it will not take an async request.
//!
//! A refusal is a response, never an error of the service: `4xx`/`5xx` with a JSON body
//! `{"code":"<stable snake_case code>","message":"<sentence for a human>"}`. The inner service is
//! not called and nothing is recorded.

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};

use crate::request::grpc;
use crate::wire::body::OwnBody;

/// Why the layer refused an async request; each kind has a stable `code` in the JSON body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RefusalCode {
    /// The async header has a value other than `true` or `false`. `400`.
    InvalidAsyncHeader,
    /// No callback URL in the request and no default configured. `400`.
    MissingCallbackUrl,
    /// The callback URL is not an absolute `http`/`https` URL, is too long or is malformed. `400`.
    InvalidCallbackUrl,
    /// The callback URL names a non-public address and private callbacks are not allowed. `400`.
    ForbiddenCallbackUrl,
    /// The request body of an async request exceeds `max_request_bytes`. `413`.
    RequestTooLarge,
    /// The request body of an async request could not be read. `400`.
    RequestBodyError,
    /// The request body of an async request did not arrive in full within
    /// `request_body_timeout`. `408`.
    RequestBodyTimeout,
    /// The layer already holds its maximum of unfinished events. `503` with `Retry-After`.
    Overloaded,
    /// The layer is shutting down and takes no new async work. `503`.
    ShuttingDown,
    /// The event store could not record the event, so it was not accepted. `503`.
    StoreUnavailable,
    /// The layer serves many instances and the request identifies none of them. `401`.
    UnknownInstance,
    /// The instance resolver failed, so the request's instance is not known. `503` with
    /// `Retry-After`.
    InstanceUnavailable,
    /// The request asks to upgrade its connection (`Upgrade`, a WebSocket say), which an async
    /// request cannot do. `400`.
    AsyncUpgrade,
    /// The `Idempotency-Key` header is empty, too long, not visible ASCII, malformed or given
    /// twice. `400`.
    InvalidIdempotencyKey,
    /// The layer requires an `Idempotency-Key` on async requests and this one has none. `400`.
    IdempotencyKeyRequired,
    /// An earlier request with another fingerprint (method, path and query, `Content-Type`,
    /// callback URL, body) holds this key. `422`.
    IdempotencyKeyMismatch,
    /// An earlier request with this key is still being recorded. `409` with `Retry-After`.
    IdempotencyKeyInUse,
}

impl RefusalCode {
    /// The stable snake_case code put in the JSON body.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvalidAsyncHeader => "invalid_async_header",
            Self::MissingCallbackUrl => "missing_callback_url",
            Self::InvalidCallbackUrl => "invalid_callback_url",
            Self::ForbiddenCallbackUrl => "forbidden_callback_url",
            Self::RequestTooLarge => "request_too_large",
            Self::RequestBodyError => "request_body_error",
            Self::RequestBodyTimeout => "request_body_timeout",
            Self::Overloaded => "overloaded",
            Self::ShuttingDown => "shutting_down",
            Self::StoreUnavailable => "store_unavailable",
            Self::UnknownInstance => "unknown_instance",
            Self::InstanceUnavailable => "instance_unavailable",
            Self::AsyncUpgrade => "async_upgrade",
            Self::InvalidIdempotencyKey => "invalid_idempotency_key",
            Self::IdempotencyKeyRequired => "idempotency_key_required",
            Self::IdempotencyKeyMismatch => "idempotency_key_mismatch",
            Self::IdempotencyKeyInUse => "idempotency_key_in_use",
        }
    }

    /// The `grpc-status` the refusal is sent with to a gRPC call.
    pub(crate) fn grpc_code(self) -> u32 {
        match self {
            Self::RequestTooLarge => 8,    // RESOURCE_EXHAUSTED
            Self::RequestBodyTimeout => 4, // DEADLINE_EXCEEDED
            Self::Overloaded
            | Self::ShuttingDown
            | Self::StoreUnavailable
            | Self::InstanceUnavailable => 14, // UNAVAILABLE
            Self::UnknownInstance => 16,   // UNAUTHENTICATED
            Self::IdempotencyKeyMismatch => 9, // FAILED_PRECONDITION
            Self::IdempotencyKeyInUse => 10, // ABORTED
            _ => 3,                        // INVALID_ARGUMENT
        }
    }

    /// The HTTP status the refusal is sent with.
    pub fn status(self) -> StatusCode {
        match self {
            Self::RequestTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::RequestBodyTimeout => StatusCode::REQUEST_TIMEOUT,
            Self::Overloaded
            | Self::ShuttingDown
            | Self::StoreUnavailable
            | Self::InstanceUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            Self::UnknownInstance => StatusCode::UNAUTHORIZED,
            Self::IdempotencyKeyMismatch => StatusCode::UNPROCESSABLE_ENTITY,
            Self::IdempotencyKeyInUse => StatusCode::CONFLICT,
            _ => StatusCode::BAD_REQUEST,
        }
    }
}

/// A refusal: its code and a message for a human.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Refusal {
    pub(crate) code: RefusalCode,
    pub(crate) message: String,
}

impl Refusal {
    pub(crate) fn new(code: RefusalCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    /// The refusal of an async request whose body is over `limit` bytes.
    pub(crate) fn request_too_large(limit: usize) -> Self {
        Self::new(
            RefusalCode::RequestTooLarge,
            format!("The request body of an async request may not exceed {limit} bytes."),
        )
    }

    /// The refusal as an answer: JSON, or a gRPC error for a gRPC call.
    pub(crate) fn respond(self, grpc: bool) -> Response<OwnBody> {
        #[cfg(feature = "metrics")]
        crate::metrics::refused(self.code.as_str());
        if grpc {
            grpc::error(self.code.grpc_code(), &self.message, self.code.as_str())
        } else {
            self.into_response().map(OwnBody::from)
        }
    }

    pub(crate) fn into_response(self) -> Response<Bytes> {
        let mut response = json_error(self.code.status(), self.code.as_str(), &self.message);
        if matches!(
            self.code,
            RefusalCode::Overloaded
                | RefusalCode::InstanceUnavailable
                | RefusalCode::IdempotencyKeyInUse
        ) {
            // Unfinished events end as jobs finish and callbacks land, and a resolver's backend
            // comes back; a second is a fair guess.
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

/// `status` with a JSON body.
pub(crate) fn json_response(status: StatusCode, body: impl Into<Bytes>) -> Response<Bytes> {
    let mut response = Response::new(body.into());
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// `status` with `{"code":"…","message":"…"}`: the shape of every error the crate answers with
/// (refusals, the status endpoint, the admin routes, the proxy).
pub(crate) fn json_error(status: StatusCode, code: &str, message: &str) -> Response<Bytes> {
    let body = serde_json::json!({ "code": code, "message": message });
    json_response(status, body.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusal_is_a_json_body_with_code_and_message() {
        let response = Refusal::new(RefusalCode::RequestTooLarge, "too \"big\"").into_response();
        assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(response.headers()[header::CONTENT_TYPE], "application/json");
        let body: serde_json::Value = serde_json::from_slice(response.body()).unwrap();
        assert_eq!(
            body,
            serde_json::json!({"code": "request_too_large", "message": "too \"big\""})
        );
        assert!(!response.headers().contains_key(header::RETRY_AFTER));
    }

    #[test]
    fn instance_refusals_have_their_statuses() {
        let unknown = Refusal::new(RefusalCode::UnknownInstance, "who?").into_response();
        assert_eq!(unknown.status(), StatusCode::UNAUTHORIZED);
        assert!(!unknown.headers().contains_key(header::RETRY_AFTER));
        let down = Refusal::new(RefusalCode::InstanceUnavailable, "later").into_response();
        assert_eq!(down.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(down.headers()[header::RETRY_AFTER], "1");
    }

    #[test]
    fn overload_is_503_with_retry_after() {
        let response = Refusal::new(RefusalCode::Overloaded, "busy").into_response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()[header::RETRY_AFTER], "1");
        let response = Refusal::new(RefusalCode::ShuttingDown, "bye").into_response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    }
}
