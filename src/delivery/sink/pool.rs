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
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
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
use crate::error::BoxError;

/// How long an idle connection is kept.
pub(crate) const IDLE_TIMEOUT: Duration = Duration::from_secs(90);

type Sender = SendRequest<Full<Bytes>>;

/// Where a connection goes: `https` or not, and the authority (compared case-insensitively).
#[derive(Debug, Clone)]
struct Key {
    https: bool,
    authority: Authority,
}

impl PartialEq for Key {
    fn eq(&self, other: &Self) -> bool {
        let (ours, theirs) = (self.authority.as_str(), other.authority.as_str());
        // The same text is the usual case, and one memcmp; `Authority`'s own `eq` folds the
        // case of every byte.
        self.https == other.https && (ours == theirs || ours.eq_ignore_ascii_case(theirs))
    }
}

impl Eq for Key {}

impl Hash for Key {
    /// Agrees with the case-insensitive `Eq`, as `Authority`'s own `Hash` does, but hashes the
    /// scheme and the lowercased authority in one call (usually) instead of one call per byte.
    fn hash<H: Hasher>(&self, state: &mut H) {
        let mut lower = [0u8; 64];
        lower[0] = u8::from(self.https);
        let mut filled = 1;
        for &byte in self.authority.as_str().as_bytes() {
            if filled == lower.len() {
                state.write(&lower);
                filled = 0;
            }
            lower[filled] = byte.to_ascii_lowercase();
            filled += 1;
        }
        state.write(&lower[..filled]);
    }
}

struct Idle {
    sender: Sender,
    since: Instant,
}

/// The idle connections to one scheme and authority, and the `Host` header every request to it
/// carries (written once, not once per request). An exchange holds its `Host` from checkout to
/// release, so putting the connection back does not look the authority up a second time.
struct Host {
    idle: Mutex<VecDeque<Idle>>,
    header: HeaderValue,
}

/// The hosts of one pool.
struct Connections {
    max_idle_per_host: usize,
    hosts: Mutex<HashMap<Key, Arc<Host>>>,
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
    host: Arc<Host>,
    max_idle: usize,
}

impl Lease {
    /// Returns the connection to the pool (the answer was read to its end).
    pub(crate) fn release(self) {
        self.host.checkin(self.sender, self.max_idle);
    }
}

impl Host {
    fn new(key: &Key) -> Self {
        // The authority without any user information: `host[:port]`. Every byte an authority
        // may hold is header text.
        let authority = key.authority.as_str();
        let host = authority
            .rsplit_once('@')
            .map_or(authority, |(_, host)| host);
        Self {
            idle: Mutex::default(),
            header: HeaderValue::from_str(host).expect("an authority is header text"),
        }
    }

    fn lock(&self) -> MutexGuard<'_, VecDeque<Idle>> {
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Keeps `sender` for the next exchange, unless it closed or `max` are kept already.
    fn checkin(&self, sender: Sender, max: usize) {
        if sender.is_closed() {
            return;
        }
        let mut idle = self.lock();
        if idle.len() < max {
            idle.push_back(Idle {
                sender,
                since: Instant::now(),
            });
        }
    }

    /// The oldest idle connection that is still open and not expired; the closed and expired
    /// ones met on the way are dropped (which closes them).
    fn checkout(&self) -> Option<Sender> {
        let mut idle = self.lock();
        while let Some(entry) = idle.pop_front() {
            if entry.usable(Instant::now()) {
                return Some(entry.sender);
            }
        }
        None
    }
}

impl Connections {
    /// The host `key` names, made on first use.
    fn host(&self, key: &Key) -> Arc<Host> {
        let mut hosts = self.hosts.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(host) = hosts.get(key) {
            return host.clone();
        }
        let host = Arc::new(Host::new(key));
        hosts.insert(key.clone(), host.clone());
        host
    }

    /// Drops every connection that closed or expired by `now`, and the hosts left with none
    /// and no exchange under way.
    fn sweep(&self, now: Instant) {
        let mut expired: Vec<Idle> = Vec::new();
        {
            let mut hosts = self.hosts.lock().unwrap_or_else(PoisonError::into_inner);
            hosts.retain(|_, host| {
                let mut idle = host.lock();
                let (keep, gone): (VecDeque<Idle>, VecDeque<Idle>) =
                    idle.drain(..).partition(|entry| entry.usable(now));
                expired.extend(gone);
                *idle = keep;
                !idle.is_empty() || Arc::strong_count(host) > 1
            });
        }
        // Closed outside the locks.
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
                hosts: Mutex::new(HashMap::new()),
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
        let host = self.connections.host(&key);
        if !request.headers().contains_key(HOST) {
            request.headers_mut().insert(HOST, host.header.clone());
        }
        // Started with the first host, so hosts that never connect are swept away too.
        self.start_sweeper();
        while let Some(mut sender) = host.checkout() {
            // Just back from its previous exchange, the connection may not have said it wants
            // the next request yet; that takes one turn of its task (or fails if it closed).
            if !sender.is_ready() && sender.ready().await.is_err() {
                continue;
            }
            match sender.try_send_request(request).await {
                Ok(response) => return Ok((response, self.lease(sender, host))),
                Err(mut error) => match error.take_message() {
                    // Closed before a byte was written: try the next connection.
                    Some(unsent) => request = unsent,
                    None => {
                        return Err(SinkError::new(SinkErrorKind::Protocol, error.into_error()))
                    }
                },
            }
        }
        // Boxed: connecting (resolving, TLS) takes far more state than sending on a kept
        // connection, and most callbacks find one; the future every attempt allocates stays small.
        let mut sender = Box::pin(self.connect(&key)).await?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|error| SinkError::new(SinkErrorKind::Protocol, error))?;
        Ok((response, self.lease(sender, host)))
    }

    fn lease(&self, sender: Sender, host: Arc<Host>) -> Lease {
        Lease {
            sender,
            host,
            max_idle: self.connections.max_idle_per_host,
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
        Ok(sender)
    }

    /// Starts, once, the task that closes connections idle for longer than [`IDLE_TIMEOUT`] and
    /// forgets hosts left without any (so callbacks to ever new hosts that never answer do not
    /// grow the pool). It holds the pool weakly and ends when the pool is dropped.
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
/// request-target in origin form; where it goes.
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
        assert_eq!(Host::new(&key).header, "Receiver.example:8080");
    }

    #[test]
    fn a_bare_authority_gets_a_slash_and_user_information_stays_out_of_host() {
        let (request, key) = prepared("https://user:secret@receiver.example");
        let key = key.unwrap();
        assert!(key.https);
        assert_eq!(request.uri(), "/");
        assert_eq!(Host::new(&key).header, "receiver.example");
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
            hosts: Mutex::new(HashMap::new()),
            sweeper: std::sync::Once::new(),
        }
    }

    fn key(url: &str) -> Key {
        prepared(url).1.unwrap()
    }

    fn hosts(pool: &Connections) -> usize {
        pool.hosts.lock().unwrap().len()
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
        let one = pool.host(&key("http://One.example/"));
        assert!(
            Arc::ptr_eq(&one, &pool.host(&key("http://one.example/x"))),
            "one host per scheme and authority, whatever the case"
        );
        one.checkin(closed, 2);
        assert!(one.checkout().is_none(), "a closed connection is not kept");
        for sender in [a, b, c] {
            one.checkin(sender, 2);
        }
        assert_eq!(one.lock().len(), 2, "the third is over the limit");
        assert!(pool
            .host(&key("http://other.example/"))
            .checkout()
            .is_none());
        assert!(pool.host(&key("https://one.example/")).checkout().is_none());
        assert_eq!(hosts(&pool), 3);
        assert!(one.checkout().is_some());
        assert!(one.checkout().is_some());
        assert!(one.checkout().is_none());
    }

    #[tokio::test]
    async fn expired_connections_are_not_lent_and_the_sweep_closes_them() {
        let pool = connections();
        let (old, old_peer) = connection().await;
        let (fresh, _fresh_peer) = connection().await;
        let one = pool.host(&key("http://one.example/"));
        one.checkin(old, 2);
        pool.host(&key("http://two.example/")).checkin(fresh, 2);
        let expired = Instant::now().checked_sub(IDLE_TIMEOUT).unwrap();
        one.lock()[0].since = expired;
        assert!(one.checkout().is_none(), "idle for the whole timeout");
        pool.sweep(Instant::now());
        assert_eq!(hosts(&pool), 2, "a host with an exchange under way stays");
        drop(one);
        pool.sweep(Instant::now());
        assert_eq!(hosts(&pool), 1, "the emptied host is gone");
        pool.sweep(Instant::now() + IDLE_TIMEOUT);
        assert_eq!(hosts(&pool), 0, "the sweep drops what expired");
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
