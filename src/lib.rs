//! Run any endpoint of a tower-based HTTP service (axum, tonic, hyper) as an *asynchronous
//! request*.
//!
//! A client sends an ordinary request with `Elements-Async-Request: True` (and optionally
//! `Elements-Async-Callback-Url: <url>`). The layer answers at once with a receipt,
//! `202 {"eventId":1028,"eventStatus":"dispatched"}`, runs the endpoint in a spawned task, and
//! delivers its real response to the callback URL as a signed notification:
//!
//! ```json
//! {"eventId":1028,"instanceId":30,"eventStatus":"completed","statusCode":200,
//!  "response":{"…":"…"},"notificationId":1084}
//! ```
//!
//! Requests without the header pass straight through, untouched.
//!
//! # Example
//!
//! ```
//! use axum::{routing::post, Json, Router};
//! use tower_async_request::{sink::ChannelSink, AsyncRequestLayer};
//!
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! async fn copy_folder() -> Json<serde_json::Value> {
//!     Json(serde_json::json!({ "copied": true }))
//! }
//!
//! let (sink, mut callbacks) = ChannelSink::new(1024);
//! let layer = AsyncRequestLayer::builder()
//!     .instance_id(30)
//!     .default_callback_url("https://hooks.example.com/in")
//!     .signing_key("event-signature-key")
//!     .standard_webhooks_secret("whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD")
//!     .sink(sink) // or leave it out: HttpSink posts over HTTP(S)
//!     .build()?;
//!
//! let app = Router::new()
//!     .route("/hubs/documents/folders/copy", post(copy_folder))
//!     .layer(layer);
//!
//! // An async request gets its receipt at once...
//! use tower::ServiceExt;
//! let request = http::Request::post("/hubs/documents/folders/copy")
//!     .header("Elements-Async-Request", "True")
//!     .body(axum::body::Body::empty())?;
//! let receipt = app.oneshot(request).await?;
//! assert_eq!(receipt.status(), http::StatusCode::ACCEPTED);
//!
//! // ...and the real response follows as a signed callback.
//! let callback = callbacks.recv().await.expect("a callback");
//! assert_eq!(callback.uri(), "https://hooks.example.com/in");
//! assert!(callback.headers().contains_key("elements-webhook-signature"));
//! assert!(callback.headers().contains_key("webhook-signature"));
//! # Ok(())
//! # }
//! # tokio::runtime::Runtime::new().unwrap().block_on(example()).unwrap();
//! ```
//!
//! # Where things happen
//!
//! | step | module |
//! |---|---|
//! | sync or async, or a refusal | `classify`, `callback_url`, `address`, `refusal` |
//! | which tenant it belongs to; its URL, keys and share | [`instance`] |
//! | body read, ids taken, work spawned, receipt sent | `dispatch`, `receipt`, `ids` |
//! | the work run to an outcome (errors, panics, size limit) | `job` |
//! | the notification JSON | [`notification`] |
//! | admission: `max_in_flight`, shutting down | `runner` |
//! | signing, sending, retrying; dead letters | `signature`, `delivery`, [`retry`], [`sink`] |
//! | recording each event's life; resuming after a restart | [`store`], `recovery` |
//! | answering status queries | `status` |
//! | RFC 7240 `Prefer: respond-async` and `wait` | `prefer` |
//! | gRPC receipts, refusals and notifications | `grpc` |
//! | shutdown, dead letters, counters from outside | `handle`, `metrics` |
//! | the operator's HTTP routes: events, dead letters, replay, health | [`admin`] |
//! | forwarding to an upstream API in any language (feature `proxy`) | `proxy` |
//! | verifying a callback on the receiving side | [`verify`], `receiver` (feature `axum`) |
//!
//! # Wire contract
//!
//! | request | answer |
//! |---|---|
//! | no `Elements-Async-Request`, or `false` (any case) | the inner service's own response |
//! | `true` (any case, whitespace ignored), valid | `202`, `{"eventId":N,"eventStatus":"dispatched"}` |
//! | any other value, or the header twice | `400`, `invalid_async_header` |
//! | no callback URL and no default | `400`, `missing_callback_url` |
//! | callback URL not absolute `http(s)`, over 2048 bytes, with credentials | `400`, `invalid_callback_url` |
//! | callback URL names a non-public address (unless allowed) | `400`, `forbidden_callback_url` |
//! | request body over `max_request_bytes` | `413`, `request_too_large` |
//! | request body not in within `request_body_timeout` | `408`, `request_body_timeout` |
//! | `max_in_flight` unfinished events already | `503` + `Retry-After`, `overloaded` |
//! | shutting down | `503`, `shutting_down` |
//! | the store could not record the event | `503`, `store_unavailable` |
//! | [many instances](instance): none identified | `401`, `unknown_instance` |
//! | many instances: the resolver failed | `503` + `Retry-After`, `instance_unavailable` |
//! | async, and asks to upgrade its connection (`Upgrade`) | `400`, `async_upgrade` |
//! | many instances: the instance holds its own `max_in_flight` | `503` + `Retry-After`, `overloaded` |
//!
//! Refusals carry `{"code":"…","message":"…"}` and never reach the inner service.
//!
//! # Status monitor
//!
//! With [`status_endpoint("/events")`](AsyncRequestLayerBuilder::status_endpoint) the layer also
//! answers `GET /events/{eventId}?token=…` (the receipt's `Location`), so clients that cannot
//! receive webhooks can poll; such clients may then omit the callback URL altogether. The token
//! is an HMAC of the event id, so status URLs cannot be guessed; any wrong token or unknown id is
//! the same `404`.
//!
//! ```json
//! {"eventId":1028,"instanceId":30,"eventStatus":"completed","notificationId":1084,
//!  "delivery":{"state":"delivered","attempts":1,"lastError":null},
//!  "statusCode":200,"response":{"…":"…"}}
//! ```

#![forbid(unsafe_code)]
#![warn(
    missing_docs,
    unreachable_pub,
    missing_debug_implementations,
    rust_2018_idioms
)]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod admin;
mod admission;
mod delivery;
mod error;
mod event;
pub mod instance;
mod layer;
mod metrics;
#[cfg(feature = "proxy")]
#[cfg_attr(docsrs, doc(cfg(feature = "proxy")))]
pub mod proxy;
mod receive;
mod request;
mod status;
pub mod store;
mod wire;

pub use self::admission::DEFAULT_MAX_IN_FLIGHT;
pub use self::delivery::{retry, sink};
pub use self::error::{BoxError, ConfigError};
pub use self::event::notification;
pub use self::layer::{
    AsyncRequest, AsyncRequestHandle, AsyncRequestLayer, AsyncRequestLayerBuilder, Health,
    RedeliverError, Redelivered, ResponseFuture, ShutdownReport, DEFAULT_JOB_TIMEOUT,
    DEFAULT_MAX_REQUEST_BYTES, DEFAULT_MAX_RESPONSE_BYTES, DEFAULT_REQUEST_BODY_TIMEOUT,
    DEFAULT_STATUS_RETENTION,
};
pub use self::metrics::Metrics;
#[cfg(feature = "axum")]
#[cfg_attr(docsrs, doc(cfg(feature = "axum")))]
pub use self::receive::receiver;
pub use self::receive::verify;
pub use self::request::{IpNetwork, RefusalCode, MAX_CALLBACK_URL_BYTES, MAX_PREFER_WAIT};
pub use self::wire::body::{RequestBody, ResponseBody};
pub use self::wire::header;
pub use self::wire::ids::{EventId, NotificationId, MAX_SAFE_ID};

#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod __fuzz;
