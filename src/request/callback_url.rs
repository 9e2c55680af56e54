//! Validation of callback URLs.
//!
//! A URL from a request header is untrusted: it must be an absolute `http`/`https` URL of at most
//! [`MAX_CALLBACK_URL_BYTES`], without credentials, whose host is a plausible DNS name or an IP
//! literal; unless private callbacks are allowed, an IP literal must be public (see
//! [`crate::address`]) and the name `localhost` (or `*.localhost`) is refused. IPv4 literals are
//! read in every spelling resolvers accept (`127.1`, `0x7f.0.0.1`, `2130706433`), so an odd
//! spelling cannot slip a private address past the check.

use std::net::IpAddr;

use http::Uri;

use crate::request::address::{parse_ipv4_lenient, AddressPolicy};
use crate::request::refusal::{Refusal, RefusalCode};

/// Longest callback URL accepted, in bytes.
pub const MAX_CALLBACK_URL_BYTES: usize = 2048;

/// Where a callback URL came from, which decides how far it is trusted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Origin {
    /// From a request header: chosen by the client.
    Request,
    /// The operator's configured default: trusted configuration.
    Operator,
}

/// How request-provided callback URLs are checked.
#[derive(Debug, Clone, Default)]
pub(crate) struct UrlPolicy {
    pub(crate) addresses: AddressPolicy,
    pub(crate) require_https: bool,
}

/// Parses and checks a callback URL.
pub(crate) fn validate(raw: &[u8], origin: Origin, policy: &UrlPolicy) -> Result<Uri, Refusal> {
    let invalid = |why: &str| {
        Refusal::new(
            RefusalCode::InvalidCallbackUrl,
            format!("The callback URL {why}."),
        )
    };
    if raw.len() > MAX_CALLBACK_URL_BYTES {
        return Err(invalid(&format!(
            "is longer than {MAX_CALLBACK_URL_BYTES} bytes"
        )));
    }
    let text = std::str::from_utf8(raw).map_err(|_| invalid("is not valid UTF-8"))?;
    let uri: Uri = text
        .trim()
        .parse()
        .map_err(|_| invalid("is not a valid absolute URL"))?;
    match uri.scheme_str() {
        Some("http") | Some("https") => {}
        Some(_) => return Err(invalid("must use the http or https scheme")),
        None => return Err(invalid("must be absolute (http:// or https://)")),
    }
    let authority = uri.authority().ok_or_else(|| invalid("has no host"))?;
    if authority.as_str().contains('@') {
        return Err(invalid("must not contain credentials"));
    }
    let host = authority.host();
    if host.is_empty() {
        return Err(invalid("has no host"));
    }
    // `Uri` parses an out-of-range port as "no port", and a client would then silently use the
    // scheme's default port instead of the one the URL names.
    let after_host = authority
        .as_str()
        .rsplit_once(']')
        .map_or(authority.as_str(), |(_, rest)| rest);
    if let Some((_, port)) = after_host.rsplit_once(':') {
        if !port.is_empty() && !matches!(authority.port_u16(), Some(1..)) {
            return Err(invalid("has a port outside 1-65535"));
        }
    }
    let ip = if let Some(inner) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(IpAddr::V6(
            inner
                .parse()
                .map_err(|_| invalid("has a malformed IPv6 address"))?,
        ))
    } else {
        if !host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_')
        {
            return Err(invalid(
                "has a host with characters not allowed in a DNS name",
            ));
        }
        match parse_ipv4_lenient(host) {
            Some(Ok(v4)) => Some(IpAddr::V4(v4)),
            Some(Err(())) => return Err(invalid("has a malformed IPv4 address")),
            None => None,
        }
    };
    if origin == Origin::Request && policy.require_https && uri.scheme_str() != Some("https") {
        return Err(Refusal::new(
            RefusalCode::ForbiddenCallbackUrl,
            "The callback URL must use https.",
        ));
    }
    if origin == Origin::Request && !policy.addresses.allow_private {
        let forbidden = |what: &str| {
            Refusal::new(
                RefusalCode::ForbiddenCallbackUrl,
                format!("The callback URL points at {what}, which callbacks may not reach."),
            )
        };
        match ip {
            Some(ip) if !policy.addresses.permits(ip) => {
                return Err(forbidden("a non-public address"))
            }
            Some(_) => {}
            None => {
                let name = host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase();
                if name == "localhost" || name.ends_with(".localhost") {
                    return Err(forbidden("localhost"));
                }
            }
        }
    }
    Ok(uri)
}

/// A checked URL as the text the store keeps: what `uri.to_string()` gives, written straight
/// into a string of the right size instead of through the formatter (once per event).
pub(crate) fn to_text(uri: &Uri) -> String {
    let scheme = uri.scheme_str().unwrap_or_default();
    let authority = uri.authority().map_or("", |authority| authority.as_str());
    let path = uri.path();
    let query = uri.query();
    let mut text = String::with_capacity(
        scheme.len() + 3 + authority.len() + path.len() + query.map_or(0, |q| q.len() + 1),
    );
    if !scheme.is_empty() {
        text.push_str(scheme);
        text.push_str("://");
    }
    text.push_str(authority);
    text.push_str(path);
    if let Some(query) = query {
        text.push('?');
        text.push_str(query);
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn to_text_writes_what_display_writes() {
        for url in [
            "https://receiver.example/hooks/in",
            "https://receiver.example",
            "http://receiver.example?tenant=7",
            "https://Receiver.Example:8443/a/b?x=1&y=%20#frag",
            "http://[2001:db8::1]:8080/in",
            "http://8.8.8.8/",
            "https://receiver.example/?",
        ] {
            let uri: Uri = url.parse().unwrap();
            assert_eq!(to_text(&uri), uri.to_string(), "{url}");
            let text = to_text(&uri);
            assert_eq!(text.capacity(), text.len(), "{url}: sized once");
        }
    }

    fn check(url: &str) -> Result<Uri, RefusalCode> {
        validate(url.as_bytes(), Origin::Request, &UrlPolicy::default()).map_err(|r| r.code)
    }

    fn allowing_private() -> UrlPolicy {
        UrlPolicy {
            addresses: AddressPolicy {
                allow_private: true,
                allowed: vec![],
            },
            require_https: false,
        }
    }

    #[test]
    fn accepts_public_http_and_https_urls() {
        for url in [
            "https://hooks.example.com/in",
            "http://hooks.example.com:8080/a/b?c=d",
            "https://8.8.8.8/x",
            "https://[2606:4700:4700::1111]/x",
            "  https://example.com/padded  ",
        ] {
            assert!(check(url).is_ok(), "{url}");
        }
    }

    #[test]
    fn refuses_malformed_urls_as_invalid() {
        let long = format!("https://example.com/{}", "a".repeat(MAX_CALLBACK_URL_BYTES));
        for url in [
            "",
            "not a url",
            "/relative/path",
            "example.com/in",
            "ftp://example.com/",
            "javascript:alert(1)",
            "https://",
            "https://user:pw@example.com/",
            "https://a@127.0.0.1/",
            "https://[::1/",
            "https://256.1.1.1/",
            "https://exa%6dple.com/",
            "https://1.2.3.4.5/",
            long.as_str(),
        ] {
            assert_eq!(
                check(url).unwrap_err(),
                RefusalCode::InvalidCallbackUrl,
                "{url:?}"
            );
        }
        assert_eq!(
            validate(
                b"https://ex\xffample.com/",
                Origin::Request,
                &UrlPolicy::default()
            )
            .unwrap_err()
            .code,
            RefusalCode::InvalidCallbackUrl
        );
    }

    #[test]
    fn refuses_private_targets_in_every_spelling() {
        for url in [
            "http://127.0.0.1/",
            "http://127.1:8080/",
            "http://2130706433/",
            "http://0x7f000001/",
            "http://0177.0.0.1/",
            "http://127.0.0.1./",
            "http://[::1]/",
            "http://[::ffff:127.0.0.1]/",
            "http://[::ffff:7f00:1]/",
            "http://169.254.169.254/latest/meta-data/",
            "http://10.0.0.1/",
            "http://192.168.0.1/",
            "http://172.16.0.1/",
            "http://100.64.0.1/",
            "http://[fd00::1]/",
            "http://[fe80::1]/",
            "http://0.0.0.0/",
            "http://255.255.255.255/",
            "http://224.0.0.1/",
            "http://192.0.2.1/",
            "http://localhost/",
            "http://LOCALHOST./",
            "http://api.localhost/",
            "HTTP://LocalHost:3000/",
        ] {
            assert_eq!(
                check(url).unwrap_err(),
                RefusalCode::ForbiddenCallbackUrl,
                "{url}"
            );
        }
    }

    #[test]
    fn private_targets_are_allowed_when_configured_or_from_the_operator() {
        for url in ["http://127.0.0.1:9/", "http://localhost/", "http://[::1]/"] {
            assert!(
                validate(url.as_bytes(), Origin::Request, &allowing_private()).is_ok(),
                "{url}"
            );
            assert!(
                validate(url.as_bytes(), Origin::Operator, &UrlPolicy::default()).is_ok(),
                "{url}"
            );
        }
    }

    #[test]
    fn allow_listed_networks_open_only_themselves() {
        let policy = UrlPolicy {
            addresses: AddressPolicy {
                allow_private: false,
                allowed: vec!["10.20.0.0/16".parse().unwrap()],
            },
            require_https: false,
        };
        assert!(validate(b"http://10.20.3.4/hook", Origin::Request, &policy).is_ok());
        assert!(validate(b"http://[::ffff:10.20.3.4]/hook", Origin::Request, &policy).is_ok());
        let refused = validate(b"http://10.21.0.1/hook", Origin::Request, &policy).unwrap_err();
        assert_eq!(refused.code, RefusalCode::ForbiddenCallbackUrl);
        let refused = validate(b"http://localhost/hook", Origin::Request, &policy).unwrap_err();
        assert_eq!(refused.code, RefusalCode::ForbiddenCallbackUrl);
    }

    #[test]
    fn require_https_refuses_plain_http_from_requests() {
        let policy = UrlPolicy {
            require_https: true,
            ..UrlPolicy::default()
        };
        assert!(validate(b"https://hooks.example.com/", Origin::Request, &policy).is_ok());
        let refused = validate(b"http://hooks.example.com/", Origin::Request, &policy).unwrap_err();
        assert_eq!(refused.code, RefusalCode::ForbiddenCallbackUrl);
        assert!(refused.message.contains("https"));
    }

    #[test]
    fn length_limit_is_inclusive() {
        let prefix = "https://example.com/";
        let exact = format!(
            "{prefix}{}",
            "a".repeat(MAX_CALLBACK_URL_BYTES - prefix.len())
        );
        assert!(check(&exact).is_ok());
        let over = format!("{exact}a");
        assert_eq!(check(&over).unwrap_err(), RefusalCode::InvalidCallbackUrl);
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use crate::request::address::is_public;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic_and_never_yield_a_private_literal(raw in proptest::collection::vec(any::<u8>(), 0..300)) {
            if let Ok(uri) = validate(&raw, Origin::Request, &UrlPolicy::default()) {
                let host = uri.host().unwrap();
                let literal = host
                    .strip_prefix('[')
                    .and_then(|h| h.strip_suffix(']'))
                    .and_then(|h| h.parse().ok())
                    .or_else(|| parse_ipv4_lenient(host).and_then(Result::ok).map(IpAddr::V4));
                if let Some(ip) = literal {
                    prop_assert!(is_public(ip), "{} passed", uri);
                }
            }
        }

        #[test]
        fn url_shaped_input_never_reaches_loopback(octets: [u8; 3], port in 1u16.., path in "[a-z/]{0,20}") {
            for url in [
                format!("http://127.{}.{}.{}:{port}/{path}", octets[0], octets[1], octets[2]),
                format!("http://[::ffff:127.{}.{}.{}]:{port}/{path}", octets[0], octets[1], octets[2]),
                format!("http://{}:{port}/{path}", (127u32 << 24) | (u32::from(octets[0]) << 16) | (u32::from(octets[1]) << 8) | u32::from(octets[2])),
            ] {
                let refused = validate(url.as_bytes(), Origin::Request, &UrlPolicy::default());
                prop_assert!(refused.is_err(), "{} was accepted", url);
            }
        }
    }
}
