//! Serving a listener: hyper's HTTP/1.1 and HTTP/2 connections (by ALPN over TLS, by the first
//! bytes in cleartext) under the connection limit and timeouts of [`Limits`], until stopped.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::{header, Request, Response};
use hyper::body::{Body, Incoming};
use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::sync::{oneshot, Semaphore};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::{Service, ServiceExt};
use tower_async_request::proxy::{ConnectionHold, PeerAddr, Tunnels};

use crate::{tls, LOG_TARGET};

/// What a client connection may take, and how it is spoken to.
pub(crate) struct Limits {
    /// Also the time a client has to complete a TLS handshake and send its first bytes, and
    /// the longest an HTTP/2 connection is kept without a new request (up to twice it).
    pub(crate) header_read_timeout: Duration,
    pub(crate) max_connections: usize,
    pub(crate) tls: Option<TlsAcceptor>,
}

/// Serves `service` on every connection `listener` accepts until `stopping`, then stops
/// accepting, waits for the connections to finish what they started (idle ones close now), and
/// only then closes the `tunnels` of upgraded ones.
///
/// hyper's own HTTP/1.1 and HTTP/2 connections, each told its peer's address: every request
/// through the proxy pays for what sits between the socket and the layer, so nothing else does
/// (a router, a body boxed on the way in and again on the way out).
pub(crate) async fn serve<S, B>(
    listener: tokio::net::TcpListener,
    service: S,
    limits: Limits,
    tunnels: Option<Tunnels>,
    stopping: CancellationToken,
) where
    S: Service<Request<Incoming>, Response = Response<B>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    // hyper's own connections, HTTP/1.1 or HTTP/2: which one is known before either starts
    // (TLS's ALPN, or the first bytes of a cleartext connection read under a timeout).
    let mut h1 = http1::Builder::new();
    h1.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    let mut h2 = http2::Builder::new(TokioExecutor::new());
    h2.timer(TokioTimer::new())
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        .max_header_list_size(MAX_HEADER_LIST_SIZE)
        // A peer that stops answering pings is gone.
        .keep_alive_interval(limits.header_read_timeout);
    let (h1, h2) = (Arc::new(h1), Arc::new(h2));
    let idle_timeout = limits.header_read_timeout;
    // Each connection holds a place until it ends; an upgraded one, until its tunnel closes.
    let open = Arc::new(Semaphore::new(limits.max_connections));
    // One sender per connection, to tell it to finish: a channel of its own, which costs a
    // connection nothing to watch (a token shared by all would be a lock on every poll).
    let mut stops: Vec<oneshot::Sender<()>> = Vec::new();
    // The connections' tasks, which end once a connection is closed or upgraded.
    let connections = TaskTracker::new();
    let mut kept = 64;
    let mut full = false;
    loop {
        // At the limit, accept nothing until a connection ends: new ones wait in the backlog.
        if open.available_permits() == 0 && !full {
            tracing::warn!(
                target: LOG_TARGET,
                max_connections = limits.max_connections,
                "at the connection limit; new connections wait until one closes"
            );
        }
        full = open.available_permits() == 0;
        let place = tokio::select! {
            place = open.clone().acquire_owned() => place.expect("the semaphore is never closed"),
            () = stopping.cancelled() => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors, say: wait a little rather than spin.
                    tracing::warn!(target: LOG_TARGET, %error, "could not accept a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = stopping.cancelled() => break,
        };
        let _ = stream.set_nodelay(true);
        let place = Arc::new(place);
        let service = service.clone();
        let (h1, h2, tls) = (h1.clone(), h2.clone(), limits.tls.clone());
        let (stop, mut stopping) = oneshot::channel();
        stops.push(stop);
        if stops.len() >= 2 * kept {
            // Forget the connections that ended (their receivers are gone).
            stops.retain(|stop| !stop.is_closed());
            kept = stops.len().max(64);
        }
        connections.spawn(async move {
            // The TLS handshake and the first bytes have the time a request head has.
            let opened = tokio::time::timeout(idle_timeout, open_connection(stream, tls)).await;
            let (io, protocol) = match opened {
                Ok(Ok(opened)) => opened,
                Ok(Err(error)) => {
                    tracing::debug!(target: LOG_TARGET, %error, %peer, "connection not opened");
                    return;
                }
                Err(_) => {
                    tracing::debug!(target: LOG_TARGET, %peer, "no TLS handshake or first bytes within --header-read-timeout");
                    return;
                }
            };
            let io = TokioIo::new(io);
            let ended = match protocol {
                Protocol::Http1 => {
                    let answer = answer(service, peer, Some(place.clone()), None);
                    let connection = h1.serve_connection(io, answer).with_upgrades();
                    let mut connection = std::pin::pin!(connection);
                    tokio::select! {
                        biased;
                        ended = connection.as_mut() => ended,
                        _ = stopping => {
                            // Finish the request in progress, if any, then close.
                            connection.as_mut().graceful_shutdown();
                            connection.await
                        }
                    }
                }
                Protocol::Http2 => {
                    // Without a new request for the idle timeout, it is closed (HTTP/1.1's
                    // header read timer does this for HTTP/1.1).
                    let begun = Arc::new(AtomicU64::new(0));
                    let answer = answer(service, peer, None, Some(begun.clone()));
                    let connection = h2.serve_connection(io, answer);
                    let mut connection = std::pin::pin!(connection);
                    tokio::select! {
                        biased;
                        ended = connection.as_mut() => ended,
                        _ = &mut stopping => {
                            connection.as_mut().graceful_shutdown();
                            connection.await
                        }
                        () = no_new_request(&begun, idle_timeout) => {
                            // Streams in progress finish; then it closes.
                            connection.as_mut().graceful_shutdown();
                            connection.await
                        }
                    }
                }
            };
            if let Err(error) = ended {
                tracing::debug!(target: LOG_TARGET, %error, %peer, "connection ended with an error");
            }
            drop(place);
        });
    }
    drop(listener);
    for stop in stops {
        let _ = stop.send(());
    }
    // The requests in progress finish first: a tunnel is still open meanwhile.
    connections.close();
    connections.wait().await;
    if let Some(tunnels) = tunnels {
        // Upgraded connections have nothing to finish that the proxy can see.
        tunnels.close().await;
    }
    // Every place back: every connection has ended.
    let _all = open.acquire_many(limits.max_connections as u32).await;
}

/// What answers each request of a connection from `peer`: `service`, the request told its
/// peer's address and, should it ask to upgrade (HTTP/1.1), given `hold` for its tunnel to keep;
/// counted in `begun` (HTTP/2's idle rule).
fn answer<S, B>(
    service: S,
    peer: SocketAddr,
    hold: Option<Arc<tokio::sync::OwnedSemaphorePermit>>,
    begun: Option<Arc<AtomicU64>>,
) -> impl hyper::service::Service<
    Request<Incoming>,
    Response = Response<B>,
    Error = Infallible,
    Future = tower::util::Oneshot<S, Request<Incoming>>,
>
where
    S: Service<Request<Incoming>, Response = Response<B>, Error = Infallible> + Clone,
    B: Body,
{
    hyper::service::service_fn(move |mut request: Request<Incoming>| {
        if let Some(begun) = &begun {
            begun.fetch_add(1, Ordering::Relaxed);
        }
        request.extensions_mut().insert(PeerAddr(peer));
        if let Some(hold) = &hold {
            if request.headers().contains_key(header::UPGRADE) {
                // Should it become a tunnel, the tunnel keeps the connection's place.
                request
                    .extensions_mut()
                    .insert(ConnectionHold::new(hold.clone()));
            }
        }
        service.clone().oneshot(request)
    })
}

/// Most requests in progress at once on one HTTP/2 connection (nginx's default).
const MAX_CONCURRENT_STREAMS: u32 = 128;
/// Request heads on an HTTP/2 connection are smaller than this, decoded and counted as HTTP/2
/// does (h2 answers `431` to one of this size or more); hyper's HTTP/1.1 limit is close.
const MAX_HEADER_LIST_SIZE: u32 = 64 * 1024;
/// How an HTTP/2 client with prior knowledge opens its connection (RFC 9113 §3.4).
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The protocol of a client connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protocol {
    Http1,
    Http2,
}

/// TLS, when the listener has it, then which protocol the client speaks: by ALPN over TLS; in
/// cleartext, HTTP/2 when its first bytes are HTTP/2's preface (read without taking them).
async fn open_connection(
    stream: tokio::net::TcpStream,
    tls: Option<TlsAcceptor>,
) -> std::io::Result<(tls::MaybeTls, Protocol)> {
    if let Some(tls) = tls {
        let stream = tls.accept(stream).await?;
        let protocol = match stream.get_ref().1.alpn_protocol() {
            Some(b"h2") => Protocol::Http2,
            _ => Protocol::Http1,
        };
        return Ok((tls::MaybeTls::Right(stream), protocol));
    }
    let mut first = [0u8; H2_PREFACE.len()];
    let protocol = loop {
        let read = stream.peek(&mut first).await?;
        if read == 0 || first[..read] != H2_PREFACE[..read] {
            break Protocol::Http1;
        }
        if read == H2_PREFACE.len() {
            break Protocol::Http2;
        }
        // Part of the preface so far: peeking again at once would find the same bytes.
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    Ok((tls::MaybeTls::Left(stream), protocol))
}

/// Ends once `timeout` has passed without a new request counted in `begun`; checked once per
/// `timeout`, so within two of them.
async fn no_new_request(begun: &AtomicU64, timeout: Duration) {
    let mut seen = begun.load(Ordering::Relaxed);
    loop {
        tokio::time::sleep(timeout).await;
        let now = begun.load(Ordering::Relaxed);
        if now == seen {
            return;
        }
        seen = now;
    }
}
