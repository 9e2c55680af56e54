use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Uri};
use http_body::Body;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::BodyExt;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tower_service::Service;

use super::body::ProxyBody;
use super::connection::{connector, Connections, Connector};
use super::forward::{
    accepts_trailers, add_forwarded, answer_version, join_cookies, strip_hop_by_hop, Base,
};
use super::tunnel::{ConnectionHold, Tunnels};
use crate::error::{BoxError, ConfigError};
use crate::wire::header::{ELEMENTS_ASYNC_CALLBACK_URL, ELEMENTS_ASYNC_REQUEST};

/// How long [`Upstream`] waits for an answer's head by default.
pub const DEFAULT_UPSTREAM_TIMEOUT: Duration = Duration::from_secs(60);

/// The address of the client a request came from, for `Forwarded` and `X-Forwarded-For`: the
/// server in front of [`Upstream`] puts it in the request's extensions (without it, `for=unknown`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerAddr(pub SocketAddr);

type OutBody = UnsyncBoxBody<Bytes, BoxError>;

/// Forwards each request to an upstream HTTP API and streams its answer back; see the
/// [module docs](super). Cheap to clone (clones share the connection pool).
#[derive(Clone)]
pub struct Upstream {
    /// Behind one `Arc`: a clone per request (as a server makes) costs one count, not five.
    shared: Arc<Shared>,
    timeout: Duration,
}

#[derive(Clone)]
struct Shared {
    base: Base,
    /// Trusted for an `https` upstream instead of the Mozilla roots.
    roots: Option<rustls::RootCertStore>,
    /// Whether the upstream is spoken to in HTTP/2: then every request goes through `client`.
    http2: bool,
    /// For upgrades (a WebSocket), and every request to an HTTP/2 upstream: hyper-util's client,
    /// which hands over both connections once the upstream says `101`, and multiplexes HTTP/2.
    client: Client<Connector, OutBody>,
    /// Connections for everything but upgrades, driven by the requests that use them.
    connections: Arc<Connections>,
    /// The upstream's `host[:port]`, the `Host` of every request sent to it.
    host: HeaderValue,
    /// The layer's own headers, which end at the proxy.
    local: [HeaderName; 2],
    /// How clients reach the server in front: `proto` of `Forwarded`, `X-Forwarded-Proto`.
    client_proto: &'static str,
    /// The upgraded connections joined to the upstream's, still open.
    tunnels: Tunnels,
    /// How long a tunnel may carry no byte either way before it is closed.
    tunnel_idle_timeout: Option<Duration>,
}

impl fmt::Debug for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Upstream")
            .field("base", &self.shared.base)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl Upstream {
    /// Forwards to `url`, an absolute `http://` or `https://` URL whose path (if any) prefixes
    /// every request's path. Keep-alive connections are pooled. An `https` upstream's
    /// certificate is checked against the bundled Mozilla roots (see
    /// [`ca_certificates_pem`](Self::ca_certificates_pem) for a private CA).
    pub fn new(url: &str) -> Result<Self, ConfigError> {
        let base =
            Base::parse(url).map_err(|message| ConfigError::new(format!("upstream {message}")))?;
        let host = HeaderValue::from_str(base.authority().as_str())
            .map_err(|error| ConfigError::new(format!("upstream {url:?}: {error}")))?;
        let (connections, client) = connect_with(&base, None, false)?;
        Ok(Self {
            shared: Arc::new(Shared {
                roots: None,
                http2: false,
                connections,
                host,
                base,
                client,
                local: [ELEMENTS_ASYNC_REQUEST, ELEMENTS_ASYNC_CALLBACK_URL],
                client_proto: "http",
                tunnels: Tunnels::default(),
                tunnel_idle_timeout: None,
            }),
            timeout: DEFAULT_UPSTREAM_TIMEOUT,
        })
    }

    /// Trusts only the CA certificates in `pem` (one or more `BEGIN CERTIFICATE` blocks) for an
    /// `https` upstream, instead of the bundled Mozilla roots: for an upstream whose certificate
    /// a private CA issued. Errors when `pem` holds no certificate or one rustls rejects.
    pub fn ca_certificates_pem(mut self, pem: &[u8]) -> Result<Self, ConfigError> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::CertificateDer;
        let mut roots = rustls::RootCertStore::empty();
        for certificate in CertificateDer::pem_slice_iter(pem) {
            let certificate = certificate
                .map_err(|error| ConfigError::new(format!("upstream CA certificates: {error}")))?;
            roots
                .add(certificate)
                .map_err(|error| ConfigError::new(format!("upstream CA certificates: {error}")))?;
        }
        if roots.is_empty() {
            return Err(ConfigError::new(
                "upstream CA certificates: no `BEGIN CERTIFICATE` block",
            ));
        }
        let shared = Arc::make_mut(&mut self.shared);
        (shared.connections, shared.client) =
            connect_with(&shared.base, Some(roots.clone()), shared.http2)?;
        shared.roots = Some(roots);
        Ok(self)
    }

    /// Speaks HTTP/2 to the upstream (with prior knowledge to an `http://` one, by ALPN to an
    /// `https://` one): for an upstream that only speaks HTTP/2, a gRPC server for one. Requests
    /// to it share its connections, and trailers pass through both ways (`TE: trailers` is
    /// forwarded). An `Upgrade` does not exist in HTTP/2: its headers are dropped and the
    /// upstream answers the request as it is.
    pub fn http2(mut self) -> Result<Self, ConfigError> {
        let shared = Arc::make_mut(&mut self.shared);
        (shared.connections, shared.client) =
            connect_with(&shared.base, shared.roots.clone(), true)?;
        shared.http2 = true;
        Ok(self)
    }

    /// How long to wait for the upstream's answer to begin (its status and headers; the body
    /// then streams for as long as it takes). Default [`DEFAULT_UPSTREAM_TIMEOUT`]; past it the
    /// client gets `504 upstream_timeout`.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Whether clients reach the server in front of this service over TLS: then `Forwarded`
    /// (`proto=`) and `X-Forwarded-Proto` say `https` (default: `http`).
    pub fn client_tls(mut self, tls: bool) -> Self {
        Arc::make_mut(&mut self.shared).client_proto = if tls { "https" } else { "http" };
        self
    }

    /// The upgraded connections (WebSockets, say) this service and its clones joined to the
    /// upstream's and that are still open: a server [closes](Tunnels::close) them when it stops.
    /// A request that asks to upgrade may carry a [`ConnectionHold`] (a request extension) for
    /// the tunnel to keep while it is open.
    pub fn tunnels(&self) -> Tunnels {
        self.shared.tunnels.clone()
    }

    /// Closes an upgraded connection (a WebSocket, say) through which no byte went either way
    /// for `timeout` (default: never), as nginx's `proxy_read_timeout` does: an idle tunnel
    /// otherwise holds its place under a server's connection limit for as long as the client
    /// likes. Keep it above the interval of the application's own pings.
    pub fn tunnel_idle_timeout(mut self, timeout: Duration) -> Self {
        Arc::make_mut(&mut self.shared).tunnel_idle_timeout = Some(timeout);
        self
    }

    /// The names of the layer's async header and callback-URL header, when the layer in front
    /// was configured with other names than the `Elements-*` defaults: they are not forwarded.
    pub fn async_headers(mut self, async_header: HeaderName, callback_header: HeaderName) -> Self {
        Arc::make_mut(&mut self.shared).local = [async_header, callback_header];
        self
    }
}

/// The connections to `base` (driven by the requests that use them) and the client for upgrades,
/// both through one connector.
fn connect_with(
    base: &Base,
    roots: Option<rustls::RootCertStore>,
    http2: bool,
) -> Result<(Arc<Connections>, Client<Connector, OutBody>), ConfigError> {
    let connector = connector(roots, http2)
        .map_err(|error| ConfigError::new(format!("upstream TLS settings: {error}")))?;
    let client = Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .http2_only(http2)
        .build(connector.clone());
    Ok((Arc::new(Connections::new(base.origin(), connector)), client))
}

impl<B> Service<Request<B>> for Upstream
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response<ProxyBody>;
    type Error = UpstreamError;
    type Future = ResponseFuture;

    #[inline]
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        let shared = &*self.shared;
        // A connection upgrade (a WebSocket) is forwarded as such: its headers stay, and once
        // both sides said `101` the two connections are joined.
        let upgrade = match shared.http2 {
            false => request.headers().get(header::UPGRADE).cloned(),
            true => None,
        };
        let client_side = upgrade.as_ref().map(|_| hyper::upgrade::on(&mut request));
        let (mut parts, body) = request.into_parts();
        let peer = parts.extensions.get::<PeerAddr>().map(|peer| peer.0);
        let version = answer_version(parts.version);
        let headers = &mut parts.headers;
        let trailers = accepts_trailers(headers);
        strip_hop_by_hop(headers);
        if trailers {
            // The one `TE` that crosses a proxy: a gRPC server wants it, and the answer's
            // trailers stream back to the client.
            headers.insert(header::TE, HeaderValue::from_static("trailers"));
        }
        if parts.version == http::Version::HTTP_2 && !shared.http2 {
            join_cookies(headers);
        }
        for name in &shared.local {
            headers.remove(name);
        }
        if let Some(upgrade) = upgrade {
            headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            headers.insert(header::UPGRADE, upgrade);
        }
        // The client's `Host` (an HTTP/2 client names it in the authority) goes to
        // `X-Forwarded-Host`; `Host` becomes the upstream's authority (set below, or by
        // hyper-util's client for an upgrade and an HTTP/2 upstream).
        let host = headers.remove(header::HOST).or_else(|| {
            let authority = parts.uri.authority()?;
            HeaderValue::from_str(authority.as_str()).ok()
        });
        add_forwarded(headers, host, peer, shared.client_proto);
        if client_side.is_none() && !shared.http2 {
            // Everything but an upgrade: on a connection this request drives itself.
            parts.headers.insert(header::HOST, shared.host.clone());
            parts.uri = Uri::from(shared.base.join_path(parts.uri.path_and_query()));
            let outgoing = Request::from_parts(parts, body.map_err(Into::into).boxed_unsync());
            let (connections, timeout) = (shared.connections.clone(), self.timeout);
            return ResponseFuture {
                inner: Box::pin(async move {
                    match tokio::time::timeout(timeout, connections.send(outgoing)).await {
                        Ok(Ok((mut response, connection))) => {
                            strip_hop_by_hop(response.headers_mut());
                            *response.version_mut() = version;
                            Ok(response
                                .map(|body| ProxyBody::driven(body, connection, connections)))
                        }
                        Ok(Err(error)) => Err(unavailable(&*error)),
                        Err(_) => Err(timed_out(timeout)),
                    }
                }),
            };
        }
        parts.uri = shared.base.join(parts.uri.path_and_query());
        // Every request to an HTTP/2 upstream, and upgrades: through hyper-util's client.
        let hold = parts.extensions.remove::<ConnectionHold>();
        let outgoing = Request::from_parts(parts, body.map_err(Into::into).boxed_unsync());
        let (client, timeout) = (shared.client.clone(), self.timeout);
        let (tunnels, idle_timeout) = (shared.tunnels.clone(), shared.tunnel_idle_timeout);
        ResponseFuture {
            inner: Box::pin(async move {
                let mut response =
                    match tokio::time::timeout(timeout, client.request(outgoing)).await {
                        Ok(Ok(response)) => response,
                        Ok(Err(error)) => return Err(unavailable(&error)),
                        Err(_) => return Err(timed_out(timeout)),
                    };
                match (response.status(), client_side) {
                    (StatusCode::SWITCHING_PROTOCOLS, Some(client_side)) => {
                        let upstream_side = hyper::upgrade::on(&mut response);
                        tunnels.join(
                            async { client_side.await.map(TokioIo::new) },
                            async { upstream_side.await.map(TokioIo::new) },
                            idle_timeout,
                            hold,
                        );
                    }
                    _ => strip_hop_by_hop(response.headers_mut()),
                }
                *response.version_mut() = version;
                Ok(response.map(ProxyBody::upstream))
            }),
        }
    }
}

/// Why [`Upstream`] has no answer to give: the service's error, so that behind the layer an
/// async request whose upstream failed ends in a `failed` notification. In front of clients,
/// [`into_response`](Self::into_response) makes it the proxy's JSON answer (`502`/`504`).
#[derive(Debug)]
pub struct UpstreamError {
    kind: UpstreamErrorKind,
    message: String,
}

/// What went wrong with the upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum UpstreamErrorKind {
    /// It could not be reached, or broke off its answer. `502 upstream_unavailable`.
    Unavailable,
    /// Its answer did not begin within the timeout. `504 upstream_timeout`.
    Timeout,
}

impl UpstreamError {
    /// What went wrong.
    pub fn kind(&self) -> UpstreamErrorKind {
        self.kind
    }

    /// The stable code of the JSON answer.
    pub fn code(&self) -> &'static str {
        match self.kind {
            UpstreamErrorKind::Unavailable => "upstream_unavailable",
            UpstreamErrorKind::Timeout => "upstream_timeout",
        }
    }

    /// The HTTP status of the JSON answer.
    pub fn status(&self) -> StatusCode {
        match self.kind {
            UpstreamErrorKind::Unavailable => StatusCode::BAD_GATEWAY,
            UpstreamErrorKind::Timeout => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// The answer for the client: the status and `{"code":"…","message":"…"}`.
    pub fn into_response(self) -> Response<ProxyBody> {
        crate::request::refusal::json_error(self.status(), self.code(), &self.message)
            .map(ProxyBody::own)
    }
}

/// `502 upstream_unavailable`, logged with its cause.
fn unavailable(error: &(dyn std::error::Error + 'static)) -> UpstreamError {
    let cause = error
        .source()
        .map_or_else(|| error.to_string(), ToString::to_string);
    tracing::warn!(%cause, "the upstream could not be reached");
    UpstreamError {
        kind: UpstreamErrorKind::Unavailable,
        message: format!(
            "The upstream service could not be reached or broke off its answer: {cause}."
        ),
    }
}

/// `504 upstream_timeout`.
fn timed_out(timeout: Duration) -> UpstreamError {
    UpstreamError {
        kind: UpstreamErrorKind::Timeout,
        message: format!("The upstream service did not answer within {timeout:?}."),
    }
}

impl fmt::Display for UpstreamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code(), self.message)
    }
}

impl std::error::Error for UpstreamError {}

type Answer = Result<Response<ProxyBody>, UpstreamError>;

/// The future of an [`Upstream`] answer.
pub struct ResponseFuture {
    inner: Pin<Box<dyn Future<Output = Answer> + Send>>,
}

impl fmt::Debug for ResponseFuture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl Future for ResponseFuture {
    type Output = Answer;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.inner.as_mut().poll(cx)
    }
}
