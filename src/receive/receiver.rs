//! The receiving side for axum (feature `axum`): an extractor that verifies an incoming callback
//! with either signature scheme and hands the handler the parsed [`Notification`].
//!
//! # Example
//!
//! ```
//! use axum::{routing::post, Router};
//! use tower_async_request::receiver::{Callback, CallbackVerifier};
//!
//! async fn hook(callback: Callback) -> &'static str {
//!     println!("event {} is {:?}", callback.notification.event_id, callback.notification.event_status);
//!     "ok"
//! }
//!
//! let verifier = CallbackVerifier::new()
//!     .elements_key("event-signature-key")
//!     .standard_webhooks_secret("whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD")
//!     .unwrap();
//! let app: Router = Router::new().route("/hook", post(hook)).with_state(verifier);
//! ```
//!
//! A request that no configured scheme verifies is refused with `401` and
//! `{"code":"invalid_signature",…}`; a verified body that is not a notification with `400`
//! `invalid_notification`; a body over the limit with `413` `callback_too_large`. Put the
//! verifier in your own state type with `axum::extract::FromRef`.

use axum::extract::{FromRef, FromRequest, Request};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::{HeaderMap, StatusCode};

use crate::error::ConfigError;
use crate::event::notification::Notification;
use crate::receive::verify::{ElementsVerifier, StandardWebhooksVerifier, VerifyError};

/// The largest callback body the extractor reads by default (4 MiB: a notification of a 1 MiB
/// response in base64 with room to spare).
pub const DEFAULT_MAX_CALLBACK_BYTES: usize = 4 * 1024 * 1024;

/// Which signatures a receiver accepts; a callback passes when any configured scheme verifies.
#[derive(Debug, Clone)]
pub struct CallbackVerifier {
    elements: Option<ElementsVerifier>,
    standard: Option<StandardWebhooksVerifier>,
    max_bytes: usize,
}

impl Default for CallbackVerifier {
    fn default() -> Self {
        Self::new()
    }
}

impl CallbackVerifier {
    /// A verifier with no scheme yet (it refuses everything until one is added).
    pub fn new() -> Self {
        Self {
            elements: None,
            standard: None,
            max_bytes: DEFAULT_MAX_CALLBACK_BYTES,
        }
    }

    /// Accepts the Elements scheme signed with `key`.
    pub fn elements_key(mut self, key: impl AsRef<[u8]>) -> Self {
        self.elements = Some(ElementsVerifier::new(key));
        self
    }

    /// Accepts the Standard Webhooks scheme signed with `secret`; call again to accept several
    /// (rotation).
    pub fn standard_webhooks_secret(mut self, secret: &str) -> Result<Self, ConfigError> {
        self.standard = Some(match self.standard.take() {
            Some(verifier) => verifier.with_secret(secret)?,
            None => StandardWebhooksVerifier::new(secret)?,
        });
        Ok(self)
    }

    /// The largest callback body read (default [`DEFAULT_MAX_CALLBACK_BYTES`]).
    pub fn max_bytes(mut self, max: usize) -> Self {
        self.max_bytes = max;
        self
    }

    /// Checks a callback's headers and exact body against every configured scheme.
    pub fn verify(&self, headers: &HeaderMap, body: &[u8]) -> Result<(), VerifyError> {
        let mut last = VerifyError::MissingHeader("a signature");
        if let Some(elements) = &self.elements {
            match elements.verify(headers, body) {
                Ok(()) => return Ok(()),
                Err(error) => last = error,
            }
        }
        if let Some(standard) = &self.standard {
            match standard.verify(headers, body) {
                Ok(()) => return Ok(()),
                Err(error) => last = error,
            }
        }
        Err(last)
    }
}

/// A verified callback: the parsed notification, and the raw request for anything else.
#[derive(Debug, Clone)]
pub struct Callback {
    /// The notification.
    pub notification: Notification,
    /// The callback's headers (`webhook-id` to de-duplicate, `Elements-Event-Id`, …).
    pub headers: HeaderMap,
    /// The exact body that was verified.
    pub body: Bytes,
}

#[cfg(feature = "opentelemetry")]
impl Callback {
    /// The trace context the callback carries (`traceparent`, `tracestate`: the sender's
    /// delivery attempt), read with the globally installed propagator (feature
    /// `opentelemetry`). Not covered by the signature: it tells where to file the receiver's
    /// spans, nothing to trust.
    pub fn trace_context(&self) -> opentelemetry::Context {
        opentelemetry::global::get_text_map_propagator(|propagator| {
            propagator.extract(&opentelemetry_http::HeaderExtractor(&self.headers))
        })
    }

    /// Continues the sender's trace: makes `span` (the handler's, say
    /// `tracing::Span::current()`) a child of the delivery attempt that sent this callback.
    /// Does nothing when the callback carries no trace context or the span is not recorded by
    /// a `tracing-opentelemetry` layer.
    pub fn continue_trace(&self, span: &tracing::Span) {
        use opentelemetry::trace::TraceContextExt;
        use tracing_opentelemetry::OpenTelemetrySpanExt;
        let context = self.trace_context();
        if context.span().span_context().is_valid() {
            let _ = span.set_parent(context);
        }
    }
}

/// Why a callback was refused; answers with a JSON `{code, message}`.
#[derive(Debug)]
#[non_exhaustive]
pub enum CallbackRejection {
    /// No configured scheme verified the signature (`401`).
    InvalidSignature(VerifyError),
    /// The body is not a notification (`400`).
    InvalidNotification(serde_json::Error),
    /// The body could not be read or is over the limit (`413`).
    Body(axum::Error),
}

impl IntoResponse for CallbackRejection {
    fn into_response(self) -> Response {
        let (status, code, message) = match self {
            Self::InvalidSignature(error) => (
                StatusCode::UNAUTHORIZED,
                "invalid_signature",
                format!("The callback's signature is not valid: {error}."),
            ),
            Self::InvalidNotification(error) => (
                StatusCode::BAD_REQUEST,
                "invalid_notification",
                format!("The callback is not a notification: {error}."),
            ),
            Self::Body(error) => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "callback_too_large",
                format!("The callback body could not be read: {error}."),
            ),
        };
        let body = serde_json::json!({ "code": code, "message": message }).to_string();
        (
            status,
            [(http::header::CONTENT_TYPE, "application/json")],
            body,
        )
            .into_response()
    }
}

impl<S> FromRequest<S> for Callback
where
    S: Send + Sync,
    CallbackVerifier: FromRef<S>,
{
    type Rejection = CallbackRejection;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        let verifier = CallbackVerifier::from_ref(state);
        let (parts, body) = request.into_parts();
        let body = axum::body::to_bytes(body, verifier.max_bytes)
            .await
            .map_err(CallbackRejection::Body)?;
        verifier
            .verify(&parts.headers, &body)
            .map_err(CallbackRejection::InvalidSignature)?;
        let notification =
            serde_json::from_slice(&body).map_err(CallbackRejection::InvalidNotification)?;
        Ok(Self {
            notification,
            headers: parts.headers,
            body,
        })
    }
}
