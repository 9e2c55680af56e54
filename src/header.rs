//! Header names used on the wire, as constants (the defaults; request header names are
//! configurable on the builder).

use http::HeaderName;

/// Request header that asks for the async path: `Elements-Async-Request: True`.
pub const ELEMENTS_ASYNC_REQUEST: HeaderName = HeaderName::from_static("elements-async-request");
/// Request header that names where the notification goes.
pub const ELEMENTS_ASYNC_CALLBACK_URL: HeaderName =
    HeaderName::from_static("elements-async-callback-url");
/// The event id, on the receipt and on every callback.
pub const ELEMENTS_EVENT_ID: HeaderName = HeaderName::from_static("elements-event-id");
/// Elements signature scheme: `sha256=<base64 HMAC-SHA256 of the body>`.
pub const ELEMENTS_WEBHOOK_SIGNATURE: HeaderName =
    HeaderName::from_static("elements-webhook-signature");
/// Standard Webhooks message id (the notification id).
pub const WEBHOOK_ID: HeaderName = HeaderName::from_static("webhook-id");
/// Standard Webhooks timestamp (Unix seconds of the attempt).
pub const WEBHOOK_TIMESTAMP: HeaderName = HeaderName::from_static("webhook-timestamp");
/// Standard Webhooks signatures (`v1,<base64>`, space-separated).
pub const WEBHOOK_SIGNATURE: HeaderName = HeaderName::from_static("webhook-signature");
