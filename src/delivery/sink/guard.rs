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

/// A connection was refused because the target address is not public: the callback's message
/// (a dead letter's last error), so it says what was refused and which setting allows it.
#[derive(Debug, Clone)]
pub(crate) enum ForbiddenAddress {
    /// The URL's host is an IP address.
    Literal(IpAddr),
    /// The URL's host is a name; these are the non-public addresses it resolves to.
    Resolved {
        name: String,
        addresses: Vec<IpAddr>,
    },
}

/// Names the setting in the library and the binary's flag for it, for either reader.
const ALLOW_PRIVATE: &str =
    "allow_private_callbacks (--allow-private-callbacks for the proxy) allows";

impl fmt::Display for ForbiddenAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Literal(ip) => write!(f, "{ip} is not a public address; {ALLOW_PRIVATE} it"),
            Self::Resolved { name, addresses } => {
                let (one, them) = match addresses.len() {
                    1 => ("a non-public address", "it"),
                    _ => ("non-public addresses", "them"),
                };
                write!(f, "{name} resolves to {one} (")?;
                for (i, ip) in addresses.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{ip}")?;
                }
                write!(f, "); {ALLOW_PRIVATE} {them}")
            }
        }
    }
}

impl std::error::Error for ForbiddenAddress {}

/// Resolves names and refuses the lot if any address is not permitted.
#[derive(Debug, Clone, Default)]
pub(crate) struct GuardedResolver {
    policy: Arc<AddressPolicy>,
    /// Answers in place of the system resolver, for the unit tests below (a name with several
    /// addresses, one whose answer changes between lookups).
    #[cfg(test)]
    scripted: Option<tests::Script>,
}

impl GuardedResolver {
    pub(crate) fn new(policy: Arc<AddressPolicy>) -> Self {
        Self {
            policy,
            #[cfg(test)]
            scripted: None,
        }
    }
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
        #[cfg(test)]
        let scripted = self.scripted.as_ref().map(|script| script.answer());
        #[cfg(not(test))]
        let scripted: Option<Vec<SocketAddr>> = None;
        Box::pin(async move {
            let addrs: Vec<SocketAddr> = match scripted {
                Some(addrs) => addrs,
                None => tokio::net::lookup_host((name.as_str(), 0)).await?.collect(),
            };
            let mut refused: Vec<IpAddr> = Vec::new();
            for ip in addrs.iter().map(SocketAddr::ip) {
                if !policy.permits(ip) && !refused.contains(&ip) {
                    refused.push(ip);
                }
            }
            if !refused.is_empty() {
                return Err(ForbiddenAddress::Resolved {
                    name: name.as_str().to_owned(),
                    addresses: refused,
                }
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
                return Box::pin(async move { Err(ForbiddenAddress::Literal(ip).into()) });
            }
        }
        let connecting = self.inner.call(uri);
        Box::pin(async move {
            connecting.await.map_err(|error| {
                // hyper-util's connector reports every failure of its resolver as "dns error",
                // with the cause beneath: a refusal of the resolver above is its own message.
                let refusal =
                    std::iter::successors(Some(&error as &dyn std::error::Error), |e| e.source())
                        .find_map(|e| e.downcast_ref::<ForbiddenAddress>());
                match refusal {
                    Some(refusal) => refusal.clone().into(),
                    None => error.into(),
                }
            })
        })
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

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};

    use super::*;

    /// A resolver's answers, one per lookup in turn (the last one repeated), counting lookups.
    #[derive(Debug, Clone)]
    pub(crate) struct Script {
        answers: Arc<Vec<Vec<IpAddr>>>,
        lookups: Arc<AtomicUsize>,
    }

    impl Script {
        pub(crate) fn answer(&self) -> Vec<SocketAddr> {
            let turn = self.lookups.fetch_add(1, SeqCst);
            let answer = &self.answers[turn.min(self.answers.len() - 1)];
            answer.iter().map(|ip| SocketAddr::new(*ip, 0)).collect()
        }
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    /// The sink's guarded connector, allowing only 127.0.0.1 (which stands for a public
    /// address: the tests may reach nothing else), with `answers` for every name; and the count
    /// of lookups.
    fn connector(answers: Vec<Vec<IpAddr>>) -> (GuardedConnector, Arc<AtomicUsize>) {
        let policy = Arc::new(AddressPolicy {
            allow_private: false,
            allowed: vec!["127.0.0.1/32".parse().unwrap()],
        });
        let lookups = Arc::new(AtomicUsize::new(0));
        let resolver = GuardedResolver {
            scripted: Some(Script {
                answers: Arc::new(answers),
                lookups: lookups.clone(),
            }),
            ..GuardedResolver::new(policy.clone())
        };
        let mut inner = HttpConnector::new_with_resolver(resolver);
        inner.enforce_http(false);
        (GuardedConnector { inner, policy }, lookups)
    }

    #[tokio::test]
    async fn a_name_is_refused_if_any_of_its_addresses_is_not_permitted() {
        // A receiver at the permitted address, which would get the connection were one
        // permitted address enough.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let uri: Uri = format!(
            "http://hooks.example:{}/",
            listener.local_addr().unwrap().port()
        )
        .parse()
        .unwrap();
        // 127.0.0.2 is loopback like the receiver, but not permitted. Last, a public address
        // and a private one (reached only if the cases before it have already failed).
        for (answer, refused) in [
            (vec![ip("127.0.0.1"), ip("127.0.0.2")], "127.0.0.2"),
            (vec![ip("127.0.0.2"), ip("127.0.0.1")], "127.0.0.2"),
            (vec![ip("1.1.1.1"), ip("10.0.0.7")], "10.0.0.7"),
        ] {
            let (mut connector, lookups) = connector(vec![answer]);
            let error = connector.call(uri.clone()).await.unwrap_err();
            assert!(is_forbidden(&*error), "{error}");
            assert_eq!(
                error.to_string(),
                format!(
                    "hooks.example resolves to a non-public address ({refused}); \
                     allow_private_callbacks (--allow-private-callbacks for the proxy) allows it"
                )
            );
            assert_eq!(lookups.load(SeqCst), 1);
            assert_eq!(
                listener.accept().unwrap_err().kind(),
                std::io::ErrorKind::WouldBlock,
                "the permitted address was connected to"
            );
        }
    }

    #[tokio::test]
    async fn the_connection_goes_to_the_address_checked_without_a_second_lookup() {
        // DNS rebinding: the first answer is permitted, every later one points elsewhere.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let checked = listener.local_addr().unwrap();
        let uri: Uri = format!("http://rebinding.example:{}/", checked.port())
            .parse()
            .unwrap();
        let (mut connector, lookups) =
            connector(vec![vec![ip("127.0.0.1")], vec![ip("127.0.0.2")]]);
        let stream = connector.call(uri.clone()).await.unwrap();
        assert_eq!(lookups.load(SeqCst), 1, "one lookup per connection");
        assert_eq!(stream.inner().peer_addr().unwrap(), checked);
        let (_, from) = listener.accept().await.unwrap();
        assert_eq!(from, stream.inner().local_addr().unwrap());
        // The next connection looks the name up again, and checks that answer too.
        let error = connector.call(uri).await.unwrap_err();
        assert!(is_forbidden(&*error), "{error}");
        assert!(error.to_string().contains("(127.0.0.2)"), "{error}");
        assert_eq!(lookups.load(SeqCst), 2);
    }

    #[test]
    fn a_refusal_names_what_was_refused_and_the_setting_that_allows_it() {
        let literal = ForbiddenAddress::Literal("10.0.0.7".parse().unwrap());
        assert_eq!(
            literal.to_string(),
            "10.0.0.7 is not a public address; allow_private_callbacks \
             (--allow-private-callbacks for the proxy) allows it"
        );
        let resolved = ForbiddenAddress::Resolved {
            name: "hooks.internal".into(),
            addresses: vec!["10.0.0.7".parse().unwrap(), "fd00::7".parse().unwrap()],
        };
        assert_eq!(
            resolved.to_string(),
            "hooks.internal resolves to non-public addresses (10.0.0.7, fd00::7); \
             allow_private_callbacks (--allow-private-callbacks for the proxy) allows them"
        );
    }
}
