//! Keep-alive connections to the upstream that no task of their own drives: the request using
//! one polls it, while it waits for the answer's head and while the answer's body streams back
//! (see [`ProxyBody`](super::ProxyBody)), so a request and its answer cross no channel between
//! tasks. An idle connection is polled by nobody; one the upstream closed meanwhile gives the
//! unsent request back and the next is tried.

use std::collections::VecDeque;
use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, Uri};
use http_body_util::combinators::UnsyncBoxBody;
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use tower_service::Service;

use crate::error::BoxError;

pub(super) type OutBody = UnsyncBoxBody<Bytes, BoxError>;

/// TCP, and TLS over it for an `https` upstream.
pub(super) type Connector = HttpsConnector<HttpConnector>;

type Driver = http1::Connection<<Connector as Service<Uri>>::Response, OutBody>;

/// A connector for `http` and `https` upstreams (TLS by rustls), trusting `roots` for the
/// latter, or the bundled Mozilla roots when `None`; offering HTTP/2 alone by ALPN when `http2`,
/// HTTP/1.1 alone otherwise.
pub(super) fn connector(
    roots: Option<rustls::RootCertStore>,
    http2: bool,
) -> Result<Connector, rustls::Error> {
    let provider = Arc::new(crate::wire::crypto::provider());
    let builder = match roots {
        None => HttpsConnectorBuilder::new().with_provider_and_webpki_roots(provider)?,
        Some(roots) => HttpsConnectorBuilder::new().with_tls_config(
            rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()?
                .with_root_certificates(roots)
                .with_no_client_auth(),
        ),
    };
    let mut tcp = HttpConnector::new();
    tcp.enforce_http(false);
    tcp.set_nodelay(true);
    let builder = builder.https_or_http();
    Ok(if http2 {
        builder.enable_http2().wrap_connector(tcp)
    } else {
        builder.enable_http1().wrap_connector(tcp)
    })
}

/// Most idle connections kept.
const MAX_IDLE: usize = 256;

/// How long an idle connection is kept: nothing polls it, so one the upstream closed meanwhile
/// is found out when it is next used, and dropped (which closes our side) once this has passed.
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// The idle connections to one upstream.
#[derive(Debug)]
pub(super) struct Connections {
    /// The upstream's scheme and authority, to connect to.
    origin: Uri,
    connector: Connector,
    /// Oldest first, each with when it was put back.
    idle: Mutex<VecDeque<(Connection, Instant)>>,
    idle_timeout: Duration,
}

/// One connection: the handle requests are sent on, and the connection itself, which must be
/// polled for anything to happen on it.
pub(super) struct Connection {
    sender: SendRequest<OutBody>,
    driver: Pin<Box<Driver>>,
    ended: bool,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("ended", &self.ended)
            .finish_non_exhaustive()
    }
}

impl Connection {
    /// Lets the connection read and write what it can.
    pub(super) fn drive(&mut self, cx: &mut Context<'_>) {
        if !self.ended && self.driver.as_mut().poll(cx).is_ready() {
            self.ended = true;
        }
    }

    fn usable(&self) -> bool {
        !self.ended && !self.sender.is_closed()
    }
}

impl Connections {
    pub(super) fn new(origin: Uri, connector: Connector) -> Self {
        Self {
            origin,
            connector,
            idle: Mutex::new(VecDeque::new()),
            idle_timeout: IDLE_TIMEOUT,
        }
    }

    /// Keeps `connection` for the next request, if it can carry one; drops those idle for too
    /// long (the oldest are first).
    pub(super) fn release(&self, connection: Connection) {
        let now = Instant::now();
        let expired = {
            let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
            let fresh = idle
                .iter()
                .position(|(_, since)| now.duration_since(*since) < self.idle_timeout)
                .unwrap_or(idle.len());
            let expired: Vec<_> = idle.drain(..fresh).collect();
            if connection.usable() && idle.len() < MAX_IDLE {
                idle.push_back((connection, now));
            }
            expired
        };
        // Closed outside the lock.
        drop(expired);
    }

    /// The most recently used idle connection that is still usable.
    fn checkout(&self) -> Option<Connection> {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        while let Some((connection, since)) = idle.pop_back() {
            if connection.usable() && now.duration_since(since) < self.idle_timeout {
                return Some(connection);
            }
        }
        None
    }

    async fn connect(&self) -> Result<Connection, BoxError> {
        let mut connector = self.connector.clone();
        poll_fn(|cx| connector.poll_ready(cx)).await?;
        let io = connector.call(self.origin.clone()).await?;
        let (sender, driver) = http1::handshake(io).await?;
        Ok(Connection {
            sender,
            driver: Box::pin(driver),
            ended: false,
        })
    }

    /// Sends `request` (in origin form, with its `Host`) on an idle connection or a new one;
    /// the answer's head and the connection its body still comes on.
    pub(super) async fn send(
        self: &Arc<Self>,
        mut request: Request<OutBody>,
    ) -> Result<(Response<Incoming>, Connection), BoxError> {
        loop {
            let (mut connection, reused) = match self.checkout() {
                Some(connection) => (connection, true),
                // Boxed: connecting takes more state than sending on a kept connection, which is
                // the usual case, and every request's future would carry it.
                None => (Box::pin(self.connect()).await?, false),
            };
            let ready = poll_fn(|cx| {
                connection.drive(cx);
                if connection.ended {
                    return Poll::Ready(false);
                }
                connection.sender.poll_ready(cx).map(|ready| ready.is_ok())
            })
            .await;
            if !ready {
                if reused {
                    continue;
                }
                return Err("the upstream closed a new connection".into());
            }
            let mut answer = std::pin::pin!(connection.sender.try_send_request(request));
            let answered = poll_fn(|cx| {
                connection.drive(cx);
                answer.as_mut().poll(cx)
            })
            .await;
            match answered {
                Ok(response) => return Ok((response, connection)),
                Err(mut error) => match error.take_message() {
                    // Closed before a byte was written: the next connection.
                    Some(unsent) if reused => request = unsent,
                    _ => return Err(error.into_error().into()),
                },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body::Body as _;
    use http_body_util::{BodyExt, Empty};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// An upstream that answers `200` with an empty body to every request on a connection.
    async fn upstream() -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            loop {
                let (mut stream, _) = listener.accept().await.unwrap();
                tokio::spawn(async move {
                    let mut buffer = Vec::new();
                    let mut chunk = [0u8; 1024];
                    loop {
                        while let Some(at) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                            buffer.drain(..at + 4);
                            let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";
                            if stream.write_all(answer).await.is_err() {
                                return;
                            }
                        }
                        match stream.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buffer.extend_from_slice(&chunk[..n]),
                        }
                    }
                });
            }
        });
        address
    }

    /// One request on `connections`; the connection goes back when the (empty) answer ends.
    async fn exchange(connections: &Arc<Connections>) {
        let request = Request::get("/")
            .header(http::header::HOST, "upstream")
            .body(Empty::new().map_err(Into::into).boxed_unsync())
            .unwrap();
        let (response, connection) = connections.send(request).await.unwrap();
        assert_eq!(response.status(), http::StatusCode::OK);
        assert!(response.body().is_end_stream());
        connections.release(connection);
    }

    fn idle(connections: &Connections) -> usize {
        connections.idle.lock().unwrap().len()
    }

    #[tokio::test]
    async fn connections_idle_past_the_timeout_are_dropped_when_another_comes_back() {
        let origin = format!("http://{}/", upstream().await).parse().unwrap();
        let mut connections = Connections::new(origin, connector(None, false).unwrap());
        connections.idle_timeout = Duration::from_millis(200);
        let connections = Arc::new(connections);
        // Three at once: three connections, all kept.
        tokio::join!(
            exchange(&connections),
            exchange(&connections),
            exchange(&connections)
        );
        assert_eq!(idle(&connections), 3);
        // The most recent one is used again while it is fresh; the two below it are not.
        tokio::time::sleep(Duration::from_millis(150)).await;
        exchange(&connections).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        exchange(&connections).await;
        // By now the two unused ones are past the timeout: putting the other back dropped them.
        assert_eq!(idle(&connections), 1);
    }
}
