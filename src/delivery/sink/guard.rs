//! The connect-time address guard of [`HttpSink`](super::HttpSink).
//!
//! A callback URL's literal is checked when the request arrives, but a *name* can resolve to a
//! private address (or be re-pointed there after the check: DNS rebinding). So the sink resolves
//! names itself, refuses the connection if any resolved address is non-public, and connects only to
//! the addresses it checked — there is no second lookup for an attacker to switch.

use std::fmt;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::Uri;
use hyper_util::client::legacy::connect::dns::Name;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tower_service::Service;

use crate::error::BoxError;
use crate::request::address::{parse_ipv4_lenient, AddressPolicy};

/// A connection was refused because the target address is not public.
#[derive(Debug)]
pub(crate) struct ForbiddenAddress(pub(crate) String);

impl fmt::Display for ForbiddenAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} is not a public address", self.0)
    }
}

impl std::error::Error for ForbiddenAddress {}

/// Resolves names and refuses the lot if any address is not permitted.
#[derive(Debug, Clone, Default)]
pub(crate) struct GuardedResolver {
    pub(crate) policy: Arc<AddressPolicy>,
}

impl Service<Name> for GuardedResolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let policy = self.policy.clone();
        Box::pin(async move {
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((name.as_str(), 0)).await?.collect();
            if let Some(bad) = addrs.iter().find(|addr| !policy.permits(addr.ip())) {
                return Err(ForbiddenAddress(format!(
                    "{} (resolved from {})",
                    bad.ip(),
                    name.as_str()
                ))
                .into());
            }
            Ok(addrs.into_iter())
        })
    }
}

/// An HTTP connector that refuses non-public IP literals and resolves names with
/// [`GuardedResolver`].
#[derive(Debug, Clone)]
pub(crate) struct GuardedConnector {
    pub(crate) inner: HttpConnector<GuardedResolver>,
    pub(crate) policy: Arc<AddressPolicy>,
}

impl Service<Uri> for GuardedConnector {
    type Response = TokioIo<TcpStream>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        if let Some(ip) = literal_ip(&uri) {
            if !self.policy.permits(ip) {
                return Box::pin(async move { Err(ForbiddenAddress(ip.to_string()).into()) });
            }
        }
        let connecting = self.inner.call(uri);
        Box::pin(async move { connecting.await.map_err(Into::into) })
    }
}

/// The host of `uri` if it is an IP address in any spelling a resolver would accept.
fn literal_ip(uri: &Uri) -> Option<IpAddr> {
    let host = uri.host()?;
    if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        return v6.parse().ok();
    }
    match parse_ipv4_lenient(host) {
        Some(Ok(v4)) => Some(IpAddr::V4(v4)),
        _ => None,
    }
}

/// Whether `error` (or anything it wraps) is a refusal by this guard.
pub(crate) fn is_forbidden(error: &(dyn std::error::Error + 'static)) -> bool {
    crate::error::wraps::<ForbiddenAddress>(error)
}
