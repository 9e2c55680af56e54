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
//! A receiver checks a callback with [`ElementsVerifier`] or [`StandardWebhooksVerifier`] and
//! reads it as a [`Notification`].
//!
#![doc = include_str!("../docs/layout.md")]
//!
//! [`notification`]: crate::event::notification
//! [`retry`]: crate::delivery::retry
//! [`sink`]: crate::delivery::sink
//! [`verify`]: crate::receive::verify
//!
#![doc = include_str!("../docs/wire-contract.md")]
#![forbid(unsafe_code)]
#![warn(
    missing_docs,
    unreachable_pub,
    missing_debug_implementations,
    rust_2018_idioms
)]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod admin;
pub mod admission;
pub mod delivery;
pub mod error;
pub mod event;
pub mod instance;
pub mod layer;
pub mod metrics;
#[cfg(feature = "proxy")]
#[cfg_attr(docsrs, doc(cfg(feature = "proxy")))]
pub mod proxy;
pub mod receive;
pub mod request;
pub mod status;
pub mod store;
pub mod wire;

// What a first program writes.
pub use self::error::{BoxError, ConfigError};
pub use self::event::jobs::Progress;
pub use self::event::notification::Notification;
pub use self::layer::{AsyncRequestHandle, AsyncRequestLayer, AsyncRequestLayerBuilder};
pub use self::receive::verify::{ElementsVerifier, StandardWebhooksVerifier};

// The modules' paths from before the stages (shared/API.md).
pub use self::delivery::{retry, sink};
pub use self::event::notification;
#[cfg(feature = "axum")]
#[cfg_attr(docsrs, doc(cfg(feature = "axum")))]
pub use self::receive::receiver;
pub use self::receive::verify;
pub use self::wire::header;

#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod __fuzz;
