//! A reverse proxy in front of any HTTP API (cargo feature `proxy`), so an API written in any
//! language gets asynchronous requests: [`Upstream`] is a tower `Service` that forwards each
//! request to an upstream base URL, and `AsyncRequestLayer` in front of it does the rest.
//!
//! - Bodies stream both ways; nothing is buffered on the synchronous path.
//! - Hop-by-hop headers (RFC 9110 §7.6.1: `Connection` and the headers it names, `Keep-Alive`,
//!   `Proxy-Connection`, `TE`, `Transfer-Encoding`, `Upgrade`) stop at the proxy, both ways;
//!   so do the layer's own `Elements-Async-Request` and `Elements-Async-Callback-Url`.
//! - `Forwarded` and `X-Forwarded-For` gain this hop (the client's address from [`PeerAddr`]),
//!   `X-Forwarded-Proto` and `X-Forwarded-Host` say what the client asked for; `Host` becomes
//!   the upstream's.
//! - HTTP/1.1 to the upstream, or HTTP/2 with [`Upstream::http2`] (a gRPC server, say; trailers
//!   pass through and `TE: trailers` is forwarded). A request that came in HTTP/2 gets a `Host`
//!   from its authority and, towards HTTP/1.1, its cookies in one `cookie` field.
//! - The answer is in the proxy's own protocol version towards the client (RFC 9110 §6.2),
//!   whatever the upstream spoke: an HTTP/1.0 upstream (Python's `http.server`, say), which
//!   closes its connection after each answer, leaves the client's open, and a body it ends by
//!   closing reaches an HTTP/1.1 client chunked.
//! - An `https://` upstream is reached over TLS (rustls), its certificate checked against the
//!   bundled Mozilla roots or, for a private CA, [`Upstream::ca_certificates_pem`].
//! - The request's path and query are appended to the upstream's base path exactly as sent
//!   (`http://api:8000/v2` + `/items?x=1` = `http://api:8000/v2/items?x=1`).
//! - Upstream unreachable: an [`UpstreamError`], which
//!   [`into_response`](UpstreamError::into_response) makes `502 upstream_unavailable`; no answer
//!   within the [timeout](Upstream::timeout): `504 upstream_timeout` — JSON `{code, message}` like
//!   every refusal of the layer. Behind the layer, an async request whose upstream failed so
//!   ends in a `failed` notification (`inner_error`, with the same message).
//! - `Upgrade` (a WebSocket) passes through on the synchronous path; the layer refuses an async
//!   request that asks to upgrade (`400 async_upgrade`). Once both sides said `101`, the two
//!   connections are joined by a tunnel that [`Upstream::tunnels`] counts and closes, and that
//!   keeps the client connection's [`ConnectionHold`] (its place under a server's connection
//!   limit) while it is open.
//!
//! - `upstream.rs`: [`Upstream`], its future and [`PeerAddr`].
//! - `connection.rs`: keep-alive connections to the upstream, each driven by the request using
//!   it (no task and no channel between a request and its answer).
//! - `forward.rs`: the upstream URL, hop-by-hop and forwarding headers, the answer's version.
//! - `tunnel.rs`: [`Tunnels`], the upgraded connections joined to the upstream's.
//! - `body.rs`: [`ProxyBody`], the upstream's body streamed (driving its connection until the
//!   end, then giving it back), or the proxy's JSON error.
//!
//! # Example
//!
//! ```no_run
//! use tower::ServiceBuilder;
//! use tower_async_request::{proxy::Upstream, AsyncRequestLayer};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let service = ServiceBuilder::new()
//!     .layer(
//!         AsyncRequestLayer::builder()
//!             .default_callback_url("https://hooks.example.com/in")
//!             .build()?,
//!     )
//!     .service(Upstream::new("http://127.0.0.1:8000")?);
//! # drop(service);
//! # Ok(())
//! # }
//! ```

mod body;
mod connection;
mod forward;
mod tunnel;
mod upstream;

pub use self::body::ProxyBody;
pub use self::tunnel::{ConnectionHold, Tunnels};
pub use self::upstream::{
    PeerAddr, ResponseFuture, Upstream, UpstreamError, UpstreamErrorKind, DEFAULT_UPSTREAM_TIMEOUT,
};
