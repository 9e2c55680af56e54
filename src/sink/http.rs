use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::address::{AddressPolicy, IpNetwork};

use super::guard::{is_forbidden, GuardedConnector, GuardedResolver};
use super::{CallbackSink, SinkError, SinkErrorKind, TrustedTarget};

/// Default time one attempt may take, connect to last byte of the answer.
pub const DEFAULT_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(15);

/// Idle keep-alive connections kept per receiver host (each closes after 90 s unused). Enough for
/// the callbacks a busy layer has in flight at once: a smaller pool closes connections after every
/// burst and reopens them for the next (with 64, a load run opened one connection per 21
/// callbacks; with this, a few hundred for the whole run).
const MAX_IDLE_PER_HOST: usize = 1024;

/// How much of a receiver's answer body is kept (for logs and error reports).
const MAX_ANSWER_BYTES: usize = 4 * 1024;

/// The default sink: posts callbacks over HTTP/1.1 or HTTPS.
///
/// One pooled keep-alive client per sink (clones share it; up to 1 024 idle connections per
/// host, each closed after 90 s unused); TLS through rustls with the bundled
/// Mozilla roots, certificates always verified; redirects are never followed (a `3xx` is reported
/// like any other status); each attempt ends after [`HttpSink::timeout`] (default 15 s). At most
/// 4 KiB of the receiver's answer body is read.
///
/// **Address guard**: unless a request carries [`TrustedTarget`] (the layer adds it for the
/// operator's default URL, and for every URL when `allow_private_callbacks(true)`), the sink
/// resolves the host itself, refuses to connect if any address is non-public (loopback, private,
/// link-local, … see the crate's wire contract), and connects only to the addresses it checked,
/// so DNS rebinding cannot switch the target. A refusal is a [`SinkErrorKind::Forbidden`] error,
/// after which the notification is dead at once. [`HttpSink::allow_private`] turns the guard off.
#[derive(Clone)]
pub struct HttpSink {
    guarded: Client<HttpsConnector<GuardedConnector>, Full<Bytes>>,
    open: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    allowed: Vec<IpNetwork>,
    allow_private: bool,
    timeout: Duration,
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
            guarded: guarded_client(&[]),
            open: client(open),
            allowed: Vec::new(),
            allow_private: false,
            timeout: DEFAULT_ATTEMPT_TIMEOUT,
        }
    }

    /// Lets the address guard pass one private network (repeatable), for an internal receiver.
    pub fn allow_network(mut self, network: IpNetwork) -> Self {
        self.allowed.push(network);
        self.guarded = guarded_client(&self.allowed);
        self
    }

    /// Lets every request reach non-public addresses (turns the address guard off).
    pub fn allow_private(mut self, allow: bool) -> Self {
        self.allow_private = allow;
        self
    }

    /// How long one attempt may take, from connecting to the last byte of the answer.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    async fn exchange(&self, request: Request<Bytes>) -> Result<Response<Bytes>, SinkError> {
        let trusted = self.allow_private || request.extensions().get::<TrustedTarget>().is_some();
        let request = request.map(Full::new);
        let sent = if trusted {
            self.open.request(request).await
        } else {
            self.guarded.request(request).await
        };
        let response = sent.map_err(|error| {
            let kind = if is_forbidden(&error) {
                SinkErrorKind::Forbidden
            } else if error.is_connect() {
                SinkErrorKind::Connect
            } else {
                SinkErrorKind::Protocol
            };
            SinkError::new(kind, error)
        })?;
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
                Some(Err(_)) | None => break,
            }
        }
        Ok(Response::from_parts(parts, kept.freeze()))
    }
}

fn guarded_client(allowed: &[IpNetwork]) -> Client<HttpsConnector<GuardedConnector>, Full<Bytes>> {
    let policy = Arc::new(AddressPolicy {
        allow_private: false,
        allowed: allowed.to_vec(),
    });
    let mut inner = HttpConnector::new_with_resolver(GuardedResolver {
        policy: policy.clone(),
    });
    configure(&mut inner);
    client(GuardedConnector { inner, policy })
}

fn configure<R>(connector: &mut HttpConnector<R>) {
    connector.enforce_http(false);
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(DEFAULT_ATTEMPT_TIMEOUT));
}

fn client<C>(connector: C) -> Client<HttpsConnector<C>, Full<Bytes>>
where
    C: tower_service::Service<http::Uri> + Clone + Send + Sync + 'static,
    HttpsConnector<C>: hyper_util::client::legacy::connect::Connect + Clone + Send + Sync + 'static,
{
    let https = HttpsConnectorBuilder::new()
        .with_provider_and_webpki_roots(rustls::crypto::ring::default_provider())
        .expect("ring supports the default TLS versions")
        .https_or_http()
        .enable_http1()
        .wrap_connector(connector);
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(MAX_IDLE_PER_HOST)
        .build(https)
}

impl CallbackSink for HttpSink {
    async fn send(&self, request: Request<Bytes>) -> Result<Response<Bytes>, SinkError> {
        match tokio::time::timeout(self.timeout, self.exchange(request)).await {
            Ok(result) => result,
            Err(_) => Err(SinkError::new(
                SinkErrorKind::Timeout,
                format!("no answer within {:?}", self.timeout),
            )),
        }
    }
}
