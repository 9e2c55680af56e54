//! Callback sinks: the transport that carries a signed notification to its receiver.
//!
//! A sink is handed a complete `http::Request<Bytes>` — method, callback URL, headers, signatures
//! and body already set — and reports the receiver's answer or a transport error. It decides
//! nothing else: what counts as delivered and whether to try again is the delivery engine's call.
//!
//! - [`HttpSink`] (the default) posts over HTTP/1.1 or HTTPS on pooled keep-alive connections.
//! - [`ChannelSink`] hands each request to a [`CallbackReceiver`], for embedding and tests; what it
//!   captures is byte for byte what [`HttpSink`] would put on the wire.
//!
//! # Example
//!
//! ```
//! use tower_async_request::{sink::ChannelSink, AsyncRequestLayer};
//!
//! let (sink, mut callbacks) = ChannelSink::new(1024);
//! let layer = AsyncRequestLayer::builder()
//!     .default_callback_url("https://hooks.example.com/in")
//!     .sink(sink)
//!     .build()
//!     .unwrap();
//! # drop((layer, callbacks));
//! ```
//!
//! Your own transport implements [`CallbackSink`]:
//!
//! ```
//! use bytes::Bytes;
//! use tower_async_request::sink::{CallbackSink, SinkError};
//!
//! #[derive(Debug)]
//! struct Discard;
//!
//! impl CallbackSink for Discard {
//!     async fn send(&self, _: http::Request<Bytes>) -> Result<http::Response<Bytes>, SinkError> {
//!         Ok(http::Response::new(Bytes::new()))
//!     }
//! }
//! ```

mod channel;
mod error;
mod guard;
mod http;
mod pool;

use std::future::Future;
use std::pin::Pin;

use bytes::Bytes;

pub use self::channel::{CallbackReceiver, ChannelSink};
pub use self::error::{SinkError, SinkErrorKind};
pub use self::http::{HttpSink, DEFAULT_ATTEMPT_TIMEOUT};

/// Marks a callback request whose target is trusted: the operator's default URL, or any URL when
/// the layer allows private callbacks. The layer puts it in the request's extensions; a sink that
/// guards addresses (as [`HttpSink`] does) lets such requests reach private addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrustedTarget;

/// A transport for signed callbacks. See the [module docs](self).
pub trait CallbackSink: Send + Sync + 'static {
    /// Sends one attempt and returns the receiver's answer (its status decides success), or a
    /// transport error when there was no answer.
    fn send(
        &self,
        request: ::http::Request<Bytes>,
    ) -> impl Future<Output = Result<::http::Response<Bytes>, SinkError>> + Send;
}

pub(crate) type SendFuture<'a> =
    Pin<Box<dyn Future<Output = Result<::http::Response<Bytes>, SinkError>> + Send + 'a>>;

/// Object-safe form of [`CallbackSink`], so the layer can hold any sink without a type parameter.
pub(crate) trait DynSink: Send + Sync {
    fn send_boxed(&self, request: ::http::Request<Bytes>) -> SendFuture<'_>;
}

impl<T: CallbackSink> DynSink for T {
    fn send_boxed(&self, request: ::http::Request<Bytes>) -> SendFuture<'_> {
        Box::pin(self.send(request))
    }
}
