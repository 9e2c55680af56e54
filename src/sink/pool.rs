//! Keep-alive connections to receivers, for [`HttpSink`](super::HttpSink).
//!
//! One idle list per scheme and authority. An attempt takes the oldest idle connection (the one
//! most likely to have finished its previous exchange), or opens a new one through the connector
//! (which is where the address guard and TLS sit), sends one request on it and, once the answer
//! body has been read to its end, puts it back. A connection that closed while idle (the receiver
//! hung up) gives the unsent request back and the next one is tried, so a stale connection never
//! costs an attempt. Connections unused for [`IDLE_TIMEOUT`] are closed by a sweeper task that
//! lives as long as the pool.
//!
//! Why not `hyper_util`'s pooled client: it does the same and more (HTTP/2, proxies, racing a new
//! connection against a checkout), and under load its per-request bookkeeping (pool key, `Host`
//! formatted anew, checkout and connect futures raced, waiters) cost as much application CPU per
//! callback as signing it. A callback is one HTTP/1.1 POST to a known authority; this is all it needs.

use std::collections::{HashMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::HOST;
use http::uri::{Authority, Scheme};
use http::{HeaderValue, Request, Response, Uri};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper::rt::{Read, Write};
use tower_service::Service;

use super::{SinkError, SinkErrorKind};
use crate::BoxError;

/// How long an idle connection is kept.
pub(crate) const IDLE_TIMEOUT: Duration = Duration::from_secs(90);

type Sender = SendRequest<Full<Bytes>>;

/// Where a connection goes: `https` or not, and the authority (compared case-insensitively).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Key {
    https: bool,
    authority: Authority,
}

impl Hash for Key {
    /// Agrees with the case-insensitive `Eq`, as `Authority`'s own `Hash` does, but hashes the
    /// lowercased bytes in one call instead of one call per byte (it is done twice per callback).
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.https.hash(state);
        let authority = self.authority.as_str().as_bytes();
        state.write_usize(authority.len());
        let mut lower = [0u8; 64];
        for chunk in authority.chunks(lower.len()) {
            let lower = &mut lower[..chunk.len()];
            lower.copy_from_slice(chunk);
            lower.make_ascii_lowercase();
            state.write(lower);
        }
    }
}

struct Idle {
    sender: Sender,
    since: Instant,
}

/// The idle connections of one pool, shared by the pool and its leases.
struct Connections {
    max_idle_per_host: usize,
    idle: Mutex<HashMap<Key, VecDeque<Idle>>>,
    sweeper: std::sync::Once,
}

/// A connector (`Service<Uri>` giving an IO) and the idle connections it made. Clones share them.
#[derive(Clone)]
pub(crate) struct ConnectionPool<C> {
    connector: C,
    connections: Arc<Connections>,
}

/// A connection on loan for one exchange. [`Lease::release`] puts it back once the answer has
/// been read to its end; dropped instead, the connection closes.
pub(crate) struct Lease {
    sender: Sender,
    key: Key,
    connections: Arc<Connections>,
}

impl Lease {
    /// Returns the connection to the pool (the answer was read to its end).
    pub(crate) fn release(self) {
        self.connections.checkin(self.key, self.sender);
    }
}

impl Connections {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, VecDeque<Idle>>> {
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Keeps `sender` for the next exchange with `key`, unless it closed or the list is full.
    fn checkin(&self, key: Key, sender: Sender) {
        if sender.is_closed() {
            return;
        }
        let mut idle = self.lock();
        let list = idle.entry(key).or_default();
        if list.len() < self.max_idle_per_host {
            list.push_back(Idle {
                sender,
                since: Instant::now(),
            });
        }
    }

    /// The oldest idle connection to `key` that is still open and not expired; the closed and
    /// expired ones met on the way are dropped (which closes them).
    fn checkout(&self, key: &Key) -> Option<Sender> {
        let mut idle = self.lock();
        let list = idle.get_mut(key)?;
        while let Some(entry) = list.pop_front() {
            if entry.usable(Instant::now()) {
                return Some(entry.sender);
            }
        }
        None
    }

    /// Drops every connection that closed or expired by `now`, and the lists left empty.
    fn sweep(&self, now: Instant) {
        let expired: Vec<Idle> = {
            let mut idle = self.lock();
            let mut expired = Vec::new();
            idle.retain(|_, list| {
                let (keep, gone) = list.drain(..).partition(|entry| entry.usable(now));
                expired.extend::<VecDeque<Idle>>(gone);
                *list = keep;
                !list.is_empty()
            });
            expired
        };
        // Closed outside the lock.
        drop(expired);
    }
}

impl Idle {
    fn usable(&self, now: Instant) -> bool {
        !self.sender.is_closed() && now.saturating_duration_since(self.since) < IDLE_TIMEOUT
    }
}

impl<C> ConnectionPool<C>
where
    C: Service<Uri> + Clone + Send + Sync + 'static,
    C::Response: Read + Write + Unpin + Send + 'static,
    C::Future: Send,
    C::Error: Into<BoxError>,
{
    /// A pool that keeps up to `max_idle_per_host` idle connections per authority.
    pub(crate) fn new(connector: C, max_idle_per_host: usize) -> Self {
        Self {
            connector,
            connections: Arc::new(Connections {
                max_idle_per_host,
                idle: Mutex::new(HashMap::new()),
                sweeper: std::sync::Once::new(),
            }),
        }
    }

    /// Sends `request` (an absolute `http` or `https` URI) on an idle connection to its authority,
    /// or on a new one. The answer's body is still to be read; then [`Lease::release`].
    pub(crate) async fn send(
        &self,
        mut request: Request<Full<Bytes>>,
    ) -> Result<(Response<Incoming>, Lease), SinkError> {
        let key = prepare(&mut request)?;
        while let Some(mut sender) = self.connections.checkout(&key) {
            // Just back from its previous exchange, the connection may not have said it wants
            // the next request yet; that takes one turn of its task (or fails if it closed).
            if !sender.is_ready() && sender.ready().await.is_err() {
                continue;
            }
            match sender.try_send_request(request).await {
                Ok(response) => return Ok((response, self.lease(sender, key))),
                Err(mut error) => match error.take_message() {
                    // Closed before a byte was written: try the next connection.
                    Some(unsent) => request = unsent,
                    None => {
                        return Err(SinkError::new(SinkErrorKind::Protocol, error.into_error()))
                    }
                },
            }
        }
        let mut sender = self.connect(&key).await?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|error| SinkError::new(SinkErrorKind::Protocol, error))?;
        Ok((response, self.lease(sender, key)))
    }

    fn lease(&self, sender: Sender, key: Key) -> Lease {
        Lease {
            sender,
            key,
            connections: self.connections.clone(),
        }
    }

    async fn connect(&self, key: &Key) -> Result<Sender, SinkError> {
        let uri = Uri::builder()
            .scheme(if key.https {
                Scheme::HTTPS
            } else {
                Scheme::HTTP
            })
            .authority(key.authority.clone())
            .path_and_query("/")
            .build()
            .map_err(|error| SinkError::new(SinkErrorKind::Protocol, error))?;
        let mut connector = self.connector.clone();
        std::future::poll_fn(|cx| connector.poll_ready(cx))
            .await
            .map_err(connect_error)?;
        let io = connector.call(uri).await.map_err(connect_error)?;
        let (sender, connection) = http1::handshake(io)
            .await
            .map_err(|error| SinkError::new(SinkErrorKind::Connect, error))?;
        tokio::spawn(async move {
            // The receiver hung up or broke the protocol; the exchange on it (if any) reports that.
            let _ = connection.await;
        });
        self.start_sweeper();
        Ok(sender)
    }

    /// Starts, once, the task that closes connections idle for longer than [`IDLE_TIMEOUT`]. It
    /// holds the pool weakly and ends when the pool is dropped.
    fn start_sweeper(&self) {
        self.connections.sweeper.call_once(|| {
            let pool = Arc::downgrade(&self.connections);
            tokio::spawn(sweep(pool));
        });
    }
}

async fn sweep(pool: Weak<Connections>) {
    let mut ticks = tokio::time::interval(IDLE_TIMEOUT / 3);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await;
    loop {
        ticks.tick().await;
        let Some(connections) = pool.upgrade() else {
            return;
        };
        connections.sweep(Instant::now());
    }
}

/// Checks the target, and turns the request into what goes on an HTTP/1.1 connection: the
/// request-target in origin form and a `Host` header.
fn prepare(request: &mut Request<Full<Bytes>>) -> Result<Key, SinkError> {
    let uri = request.uri();
    let https = match uri.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        _ => return Err(unsupported(uri)),
    };
    let Some(authority) = uri.authority().cloned() else {
        return Err(unsupported(uri));
    };
    if !request.headers().contains_key(HOST) {
        // The authority without any user information: `host[:port]`.
        let host = authority
            .as_str()
            .rsplit_once('@')
            .map_or(authority.as_str(), |(_, host)| host);
        let host = HeaderValue::from_str(host)
            .map_err(|error| SinkError::new(SinkErrorKind::Protocol, error))?;
        request.headers_mut().insert(HOST, host);
    }
    let origin = match request.uri().path_and_query() {
        Some(path) if path.as_str() != "/" => {
            let mut parts = http::uri::Parts::default();
            parts.path_and_query = Some(path.clone());
            Uri::from_parts(parts).expect("a path alone is a valid URI")
        }
        _ => Uri::from_static("/"),
    };
    *request.uri_mut() = origin;
    Ok(Key { https, authority })
}

fn unsupported(uri: &Uri) -> SinkError {
    SinkError::new(
        SinkErrorKind::Protocol,
        format!("not an absolute http or https URL: {uri}"),
    )
}

fn connect_error(error: impl Into<BoxError>) -> SinkError {
    let error = error.into();
    let kind = if super::guard::is_forbidden(&*error) {
        SinkErrorKind::Forbidden
    } else {
        SinkErrorKind::Connect
    };
    SinkError::new(kind, error)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prepared(url: &str) -> (Request<Full<Bytes>>, Result<Key, SinkError>) {
        let mut request = Request::post(url).body(Full::new(Bytes::new())).unwrap();
        let key = prepare(&mut request);
        (request, key)
    }

    #[test]
    fn origin_form_and_host_with_its_port() {
        let (request, key) = prepared("http://Receiver.example:8080/hooks/in?tenant=7");
        let key = key.unwrap();
        assert!(!key.https);
        assert_eq!(key.authority, "receiver.example:8080");
        assert_eq!(request.uri(), "/hooks/in?tenant=7");
        assert_eq!(request.headers()[HOST], "Receiver.example:8080");
    }

    #[test]
    fn a_bare_authority_gets_a_slash_and_user_information_stays_out_of_host() {
        let (request, key) = prepared("https://user:secret@receiver.example");
        assert!(key.unwrap().https);
        assert_eq!(request.uri(), "/");
        assert_eq!(request.headers()[HOST], "receiver.example");
    }

    #[test]
    fn keys_that_are_equal_hash_alike() {
        use std::hash::BuildHasher;
        let state = std::collections::hash_map::RandomState::new();
        let long = format!("{}.example:8443", "Sub".repeat(40));
        for (a, b) in [
            (
                "http://Receiver.Example:80/a",
                "http://receiver.example:80/b",
            ),
            (
                &*format!("https://{long}/a"),
                &*format!("https://{}/b", long.to_lowercase()),
            ),
        ] {
            let (a, b) = (prepared(a).1.unwrap(), prepared(b).1.unwrap());
            assert_eq!(a, b);
            assert_eq!(state.hash_one(&a), state.hash_one(&b));
        }
        let (http, https) = (
            prepared("http://receiver.example/").1.unwrap(),
            prepared("https://receiver.example/").1.unwrap(),
        );
        assert_ne!(http, https);
    }

    /// A real HTTP/1.1 connection over an in-memory pipe; dropping the returned peer closes it.
    async fn connection() -> (Sender, tokio::io::DuplexStream) {
        let (ours, peer) = tokio::io::duplex(1024);
        let (sender, connection) = http1::handshake(hyper_util::rt::TokioIo::new(ours))
            .await
            .unwrap();
        tokio::spawn(connection);
        (sender, peer)
    }

    fn connections() -> Connections {
        Connections {
            max_idle_per_host: 2,
            idle: Mutex::new(HashMap::new()),
            sweeper: std::sync::Once::new(),
        }
    }

    fn key(url: &str) -> Key {
        prepared(url).1.unwrap()
    }

    #[tokio::test]
    async fn lends_open_connections_and_keeps_at_most_the_limit() {
        let pool = connections();
        let (a, _peer_a) = connection().await;
        let (b, _peer_b) = connection().await;
        let (c, _peer_c) = connection().await;
        let (closed, peer) = connection().await;
        drop(peer);
        while !closed.is_closed() {
            tokio::task::yield_now().await;
        }
        let one = key("http://one.example/");
        pool.checkin(one.clone(), closed);
        assert!(
            pool.checkout(&one).is_none(),
            "a closed connection is not kept"
        );
        for sender in [a, b, c] {
            pool.checkin(one.clone(), sender);
        }
        assert_eq!(pool.lock()[&one].len(), 2, "the third is over the limit");
        assert!(pool.checkout(&key("http://other.example/")).is_none());
        assert!(pool.checkout(&key("https://one.example/")).is_none());
        assert!(pool.checkout(&one).is_some());
        assert!(pool.checkout(&one).is_some());
        assert!(pool.checkout(&one).is_none());
    }

    #[tokio::test]
    async fn expired_connections_are_not_lent_and_the_sweep_closes_them() {
        let pool = connections();
        let (old, old_peer) = connection().await;
        let (fresh, _fresh_peer) = connection().await;
        let one = key("http://one.example/");
        pool.checkin(one.clone(), old);
        pool.checkin(key("http://two.example/"), fresh);
        let expired = Instant::now().checked_sub(IDLE_TIMEOUT).unwrap();
        pool.lock().get_mut(&one).unwrap()[0].since = expired;
        assert!(pool.checkout(&one).is_none(), "idle for the whole timeout");
        pool.sweep(Instant::now());
        assert_eq!(pool.lock().len(), 1, "the emptied list is gone");
        pool.sweep(Instant::now() + IDLE_TIMEOUT);
        assert!(pool.lock().is_empty(), "the sweep drops what expired");
        // Dropped means closed: the peer reads the end of the stream.
        let mut old_peer = old_peer;
        let mut rest = Vec::new();
        tokio::io::AsyncReadExt::read_to_end(&mut old_peer, &mut rest)
            .await
            .unwrap();
        assert!(rest.is_empty());
    }

    #[test]
    fn a_host_already_set_is_kept() {
        let mut request = Request::post("http://10.0.0.7/in")
            .header(HOST, "receiver.internal")
            .body(Full::new(Bytes::new()))
            .unwrap();
        prepare(&mut request).unwrap();
        assert_eq!(request.headers()[HOST], "receiver.internal");
    }

    #[test]
    fn other_schemes_and_relative_urls_are_refused() {
        for url in ["ftp://receiver.example/in", "/in"] {
            let error = prepared(url).1.unwrap_err();
            assert_eq!(error.kind(), SinkErrorKind::Protocol, "{url}");
            assert!(
                error.to_string().contains("not an absolute http"),
                "{error}"
            );
        }
    }
}
