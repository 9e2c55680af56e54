use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::HttpConnector;

use crate::request::address::{AddressPolicy, IpNetwork};

use super::guard::{GuardedConnector, GuardedResolver};
use super::pool::ConnectionPool;
use super::{CallbackSink, SinkError, SinkErrorKind, TrustedTarget};

/// Default time one attempt may take, connect to last byte of the answer.
pub const DEFAULT_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(15);

/// Idle keep-alive connections kept per receiver host (each closed after 90 s unused). Enough for
/// the callbacks a busy layer has in flight at once: a smaller pool closes connections after every
/// burst and reopens them for the next (with 64, a load run opened one connection per 21
/// callbacks; with this, a few hundred for the whole run).
const MAX_IDLE_PER_HOST: usize = 1024;

/// How much of a receiver's answer body is kept (for logs and error reports).
const MAX_ANSWER_BYTES: usize = 4 * 1024;

/// The default sink: posts callbacks over HTTP/1.1 or HTTPS.
///
/// Keep-alive connections are pooled per sink (clones share them; up to 1 024 idle connections
/// per host, each closed after 90 s unused; a connection the receiver closed while idle is
/// skipped, not counted as a failed attempt); TLS through rustls with the bundled Mozilla roots,
/// certificates always verified; redirects are never followed (a `3xx` is reported like any other
/// status); each attempt ends after [`HttpSink::timeout`] (default 15 s). At most 4 KiB of the
/// receiver's answer body is read; a connection whose answer was longer is closed, not reused.
///
/// **Address guard**: unless a request carries [`TrustedTarget`] (the layer adds it for the
/// operator's default URL, and for every URL when `allow_private_callbacks(true)`), the sink
/// resolves the host itself, refuses to connect if any address is non-public (loopback, private,
/// link-local, … see the crate's wire contract), and connects only to the addresses it checked,
/// so DNS rebinding cannot switch the target. A refusal is a [`SinkErrorKind::Forbidden`] error,
/// after which the notification is dead at once. [`HttpSink::allow_private`] turns the guard off.
#[derive(Clone)]
pub struct HttpSink {
    guarded: ConnectionPool<HttpsConnector<GuardedConnector>>,
    open: ConnectionPool<HttpsConnector<HttpConnector>>,
    allowed: Vec<IpNetwork>,
    allow_private: bool,
    /// `None` for the layer's own default sink: the layer already times each attempt.
    timeout: Option<Duration>,
}

impl fmt::Debug for HttpSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpSink")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl Default for HttpSink {
    fn default() -> Self {
        Self::new()
    }
}

impl HttpSink {
    /// A sink with the default timeout and connection pool, and the address guard on.
    pub fn new() -> Self {
        let mut open = HttpConnector::new();
        configure(&mut open);
        Self {
            guarded: guarded_pool(&[]),
            open: pool(open),
            allowed: Vec::new(),
            allow_private: false,
            timeout: Some(DEFAULT_ATTEMPT_TIMEOUT),
        }
    }

    /// Lets the address guard pass one private network (repeatable), for an internal receiver.
    pub fn allow_network(mut self, network: IpNetwork) -> Self {
        self.allowed.push(network);
        self.guarded = guarded_pool(&self.allowed);
        self
    }

    /// Lets every request reach non-public addresses (turns the address guard off).
    pub fn allow_private(mut self, allow: bool) -> Self {
        self.allow_private = allow;
        self
    }

    /// How long one attempt may take, from connecting to the last byte of the answer.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// No timer of its own: for the sink the layer makes when none is given, whose every
    /// attempt the layer already ends after `attempt_timeout` (one timer per attempt, not two).
    pub(crate) fn timed_by_caller(mut self) -> Self {
        self.timeout = None;
        self
    }

    async fn exchange(&self, request: Request<Bytes>) -> Result<Response<Bytes>, SinkError> {
        let trusted = self.allow_private || request.extensions().get::<TrustedTarget>().is_some();
        let request = request.map(Full::new);
        let (response, lease) = if trusted {
            self.open.send(request).await?
        } else {
            self.guarded.send(request).await?
        };
        let (parts, mut body) = response.into_parts();
        let mut kept = BytesMut::new();
        while kept.len() < MAX_ANSWER_BYTES {
            match body.frame().await {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        let room = MAX_ANSWER_BYTES - kept.len();
                        kept.extend_from_slice(&data[..data.len().min(room)]);
                    }
                }
                // The status already arrived; a broken answer body does not undo it.
                Some(Err(_)) => break,
                None => {
                    // Read to its end: the connection can carry the next callback.
                    lease.release();
                    break;
                }
            }
        }
        Ok(Response::from_parts(parts, kept.freeze()))
    }
}

fn guarded_pool(allowed: &[IpNetwork]) -> ConnectionPool<HttpsConnector<GuardedConnector>> {
    let policy = Arc::new(AddressPolicy {
        allow_private: false,
        allowed: allowed.to_vec(),
    });
    let mut inner = HttpConnector::new_with_resolver(GuardedResolver::new(policy.clone()));
    configure(&mut inner);
    pool(GuardedConnector { inner, policy })
}

fn configure<R>(connector: &mut HttpConnector<R>) {
    connector.enforce_http(false);
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(DEFAULT_ATTEMPT_TIMEOUT));
}

fn pool<C>(connector: C) -> ConnectionPool<HttpsConnector<C>>
where
    C: tower_service::Service<http::Uri> + Clone + Send + Sync + 'static,
    HttpsConnector<C>: tower_service::Service<http::Uri> + Clone + Send + Sync + 'static,
    <HttpsConnector<C> as tower_service::Service<http::Uri>>::Response:
        hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    <HttpsConnector<C> as tower_service::Service<http::Uri>>::Future: Send,
    <HttpsConnector<C> as tower_service::Service<http::Uri>>::Error: Into<crate::error::BoxError>,
{
    let https = HttpsConnectorBuilder::new()
        .with_provider_and_webpki_roots(crate::wire::crypto::provider())
        .expect("ring supports the default TLS versions")
        .https_or_http()
        .enable_http1()
        .wrap_connector(connector);
    ConnectionPool::new(https, MAX_IDLE_PER_HOST)
}

impl CallbackSink for HttpSink {
    async fn send(&self, request: Request<Bytes>) -> Result<Response<Bytes>, SinkError> {
        let Some(limit) = self.timeout else {
            return self.exchange(request).await;
        };
        match tokio::time::timeout(limit, self.exchange(request)).await {
            Ok(result) => result,
            Err(_) => Err(SinkError::new(
                SinkErrorKind::Timeout,
                format!("no answer within {limit:?}"),
            )),
        }
    }
}
