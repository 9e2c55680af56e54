//! What a request and its answer look like on the other side of the proxy: the upstream's URL,
//! the hop-by-hop headers removed (RFC 9110 §7.6.1), the `Forwarded` / `X-Forwarded-*` headers
//! added (RFC 7239), the layer's own headers kept to this hop, the answer in the proxy's own
//! protocol version (RFC 9110 §6.2).

use std::io::Write as _;
use std::net::SocketAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{PathAndQuery, Uri};
use http::Version;

/// Headers that belong to one connection, never forwarded (RFC 9110 §7.6.1), besides those the
/// `Connection` header names.
const HOP_BY_HOP: [HeaderName; 6] = [
    header::CONNECTION,
    HeaderName::from_static("proxy-connection"),
    HeaderName::from_static("keep-alive"),
    header::TE,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// The upstream's base: scheme, authority and a path prefix every request path is joined to.
#[derive(Debug, Clone)]
pub(super) struct Base {
    scheme: http::uri::Scheme,
    authority: http::uri::Authority,
    /// Without a trailing `/` (empty for the root).
    prefix: String,
}

impl Base {
    /// `url` must be an absolute `http` or `https` URL without a query.
    pub(super) fn parse(url: &str) -> Result<Self, String> {
        let uri: Uri = url
            .parse()
            .map_err(|error| format!("{url:?} is not a URL: {error}"))?;
        match uri.scheme_str() {
            Some("http" | "https") => {}
            Some(other) => {
                return Err(format!(
                    "{url:?}: the upstream must be http:// or https:// (not {other}://)"
                ))
            }
            None => {
                return Err(format!(
                    "{url:?} is not an absolute URL (http://host:port/…)"
                ))
            }
        }
        let authority = uri
            .authority()
            .cloned()
            .ok_or_else(|| format!("{url:?} has no host"))?;
        if authority.as_str().contains('@') {
            return Err(format!(
                "{url:?}: credentials in the upstream URL are not supported"
            ));
        }
        if uri.query().is_some() {
            return Err(format!("{url:?}: the upstream URL may not carry a query"));
        }
        Ok(Self {
            scheme: uri.scheme().cloned().expect("checked above"),
            authority,
            prefix: uri.path().trim_end_matches('/').to_owned(),
        })
    }

    /// The upstream URL of a request for `path_and_query`: the base's path, then the request's
    /// path and query exactly as they came (`/api` + `/v1/items?x=1` = `/api/v1/items?x=1`).
    pub(super) fn join(&self, path_and_query: Option<&PathAndQuery>) -> Uri {
        Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone())
            .path_and_query(self.join_path(path_and_query))
            .build()
            .expect("parts of valid URIs")
    }

    /// The upstream path and query of a request for `path_and_query` (see [`Base::join`]).
    pub(super) fn join_path(&self, path_and_query: Option<&PathAndQuery>) -> PathAndQuery {
        match path_and_query {
            // At the root, the request's own (a shared reference to what it was parsed from).
            Some(path) if self.prefix.is_empty() => path.clone(),
            _ => {
                let requested = path_and_query.map_or("/", PathAndQuery::as_str);
                PathAndQuery::try_from(format!("{}{requested}", self.prefix))
                    .expect("a valid path after a valid prefix is valid")
            }
        }
    }

    /// `host[:port]` of the upstream, for the `Host` of every request sent to it.
    pub(super) fn authority(&self) -> &http::uri::Authority {
        &self.authority
    }

    /// `scheme://authority/`: where connections go.
    pub(super) fn origin(&self) -> Uri {
        Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone())
            .path_and_query("/")
            .build()
            .expect("parts of a valid URI")
    }
}

/// Removes the hop-by-hop headers: the fixed ones and every one `Connection` names.
pub(super) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named.iter().chain(HOP_BY_HOP.iter()) {
        headers.remove(name);
    }
}

/// The version of the answer to a request that came in `request`'s: the proxy's own (RFC 9110
/// §6.2), whatever the upstream spoke. HTTP/1.1 to an HTTP/1.x client (hyper's server says
/// HTTP/1.0 to an HTTP/1.0 one, keeping its connection if it asked for keep-alive), HTTP/2 to an
/// HTTP/2 one. An upstream's HTTP/1.0 passed on would close the client's connection after each
/// answer and keep a body of unknown length from being chunked.
pub(super) fn answer_version(request: Version) -> Version {
    match request {
        Version::HTTP_2 | Version::HTTP_3 => request,
        _ => Version::HTTP_11,
    }
}

/// Makes the `cookie` fields of a request one, as HTTP/1.1 wants it (RFC 9113 §8.2.3): an
/// HTTP/2 client may send each cookie in a field of its own.
pub(super) fn join_cookies(headers: &mut HeaderMap) {
    let mut cookies = headers.get_all(header::COOKIE).iter();
    if cookies.next().is_none() || cookies.next().is_none() {
        return;
    }
    let mut joined = Vec::new();
    for cookie in headers.get_all(header::COOKIE) {
        if !joined.is_empty() {
            joined.extend_from_slice(b"; ");
        }
        joined.extend_from_slice(cookie.as_bytes());
    }
    let joined = HeaderValue::from_bytes(&joined).expect("valid values joined by \"; \"");
    headers.insert(header::COOKIE, joined);
}

/// Whether a request's `TE` accepts trailers (`TE: trailers`, RFC 9110 §10.1.4), which a proxy
/// that passes trailers on may say again on the next hop.
pub(super) fn accepts_trailers(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::TE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|coding| {
            let name = coding.split(';').next().unwrap_or_default();
            name.trim().eq_ignore_ascii_case("trailers")
        })
}

/// Adds this hop to `Forwarded` and `X-Forwarded-For` (kept from earlier hops, as a chain) and
/// sets `X-Forwarded-Proto` and `X-Forwarded-Host` (the client's view: `host`, its `Host` as it
/// came, or an HTTP/2 request's authority).
///
/// Every request through the proxy pays for this: each new value is written once, into a buffer
/// of exactly its size, and the host is moved, not copied.
pub(super) fn add_forwarded(
    headers: &mut HeaderMap,
    host: Option<HeaderValue>,
    peer: Option<SocketAddr>,
    proto: &'static str,
) {
    let host = host.filter(|host| host.to_str().is_ok());
    // The peer's address as text: at most 39 characters (IPv6), on the stack.
    let mut ip = [0u8; 48];
    let ip_len = match peer {
        // The usual case, without the formatting machinery (a fifth of this function's time).
        Some(SocketAddr::V4(peer)) => write_ipv4(peer.ip().octets(), &mut ip),
        Some(peer) => {
            let mut cursor = std::io::Cursor::new(&mut ip[..]);
            write!(cursor, "{}", peer.ip()).expect("an IP address fits in 48 bytes");
            cursor.position() as usize
        }
        None => 0,
    };
    let ip = &ip[..ip_len];
    // RFC 7239 §6: an IPv6 address is quoted and bracketed.
    let node: [&[u8]; 3] = match peer {
        Some(SocketAddr::V6(_)) => [b"\"[", ip, b"]\""],
        Some(SocketAddr::V4(_)) => [b"", ip, b""],
        None => [b"", b"unknown", b""],
    };
    let quotable_host = host
        .as_ref()
        .map(HeaderValue::as_bytes)
        .filter(|host| is_token_or_quotable(host));
    let forwarded = [
        &b"for="[..],
        node[0],
        node[1],
        node[2],
        b";proto=",
        proto.as_bytes(),
        if quotable_host.is_some() {
            b";host=\""
        } else {
            b""
        },
        quotable_host.unwrap_or_default(),
        if quotable_host.is_some() { b"\"" } else { b"" },
    ];
    append(headers, header::FORWARDED, &forwarded);
    if peer.is_some() {
        append(headers, X_FORWARDED_FOR, &[ip]);
    }
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(proto));
    if let Some(host) = host {
        headers.insert(X_FORWARDED_HOST, host);
    }
}

/// Writes `a.b.c.d` into `out`; how many bytes that took (7 to 15).
fn write_ipv4(octets: [u8; 4], out: &mut [u8]) -> usize {
    let mut at = 0;
    for (i, octet) in octets.into_iter().enumerate() {
        if i > 0 {
            out[at] = b'.';
            at += 1;
        }
        if octet >= 100 {
            out[at] = b'0' + octet / 100;
            at += 1;
        }
        if octet >= 10 {
            out[at] = b'0' + octet / 10 % 10;
            at += 1;
        }
        out[at] = b'0' + octet % 10;
        at += 1;
    }
    at
}

/// A host a quoted string can carry as it is (no quote or backslash to escape).
fn is_token_or_quotable(host: &[u8]) -> bool {
    !host.is_empty()
        && host
            .iter()
            .all(|&b| b.is_ascii_graphic() && b != b'"' && b != b'\\')
}

/// Appends the value made of `parts` to the comma-separated list `name` already holds (all its
/// lines joined; lines that are not visible ASCII are dropped, as before this hop).
fn append(headers: &mut HeaderMap, name: HeaderName, parts: &[&[u8]]) {
    const SEPARATOR: &[u8] = b", ";
    let earlier = || {
        headers
            .get_all(&name)
            .iter()
            .filter(|value| value.to_str().is_ok())
    };
    let size = earlier()
        .map(|value| value.len() + SEPARATOR.len())
        .sum::<usize>()
        + parts.iter().map(|part| part.len()).sum::<usize>();
    let mut joined = Vec::with_capacity(size);
    for value in earlier() {
        joined.extend_from_slice(value.as_bytes());
        joined.extend_from_slice(SEPARATOR);
    }
    for part in parts {
        joined.extend_from_slice(part);
    }
    // Exactly its size: the buffer becomes the value's without another allocation.
    debug_assert_eq!(joined.len(), joined.capacity());
    if let Ok(joined) = HeaderValue::from_maybe_shared(bytes::Bytes::from(joined)) {
        headers.insert(name, joined);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_addresses_are_written_as_std_writes_them() {
        let mut out = [0u8; 15];
        let edges = [0u8, 1, 9, 10, 42, 99, 100, 101, 199, 200, 255];
        for a in edges {
            for b in edges {
                let octets = [a, b, 255 - a, b.wrapping_mul(7)];
                let len = write_ipv4(octets, &mut out);
                let expected = std::net::Ipv4Addr::from(octets).to_string();
                assert_eq!(std::str::from_utf8(&out[..len]).unwrap(), expected);
            }
        }
    }

    fn base(url: &str) -> Base {
        Base::parse(url).unwrap()
    }

    fn joined(base_url: &str, request: &str) -> String {
        let uri: Uri = request.parse().unwrap();
        base(base_url).join(uri.path_and_query()).to_string()
    }

    #[test]
    fn paths_and_queries_join_the_base_path_exactly() {
        assert_eq!(
            joined("http://up:8000", "/v1/items?x=1"),
            "http://up:8000/v1/items?x=1"
        );
        assert_eq!(joined("http://up:8000/", "/v1"), "http://up:8000/v1");
        assert_eq!(
            joined("http://up:8000/api", "/v1/items?x=1&y=%20"),
            "http://up:8000/api/v1/items?x=1&y=%20"
        );
        assert_eq!(joined("http://up:8000/api/", "/"), "http://up:8000/api/");
        assert_eq!(
            joined("http://up:8000/api", "/a//b/../c?q"),
            "http://up:8000/api/a//b/../c?q",
            "no normalising: the upstream sees the path as sent"
        );
    }

    #[test]
    fn https_upstreams_keep_their_scheme() {
        let base = Base::parse("https://up:8443/api").unwrap();
        assert_eq!(base.origin(), "https://up:8443/");
        assert_eq!(
            base.join(Some(&"/a?b".parse().unwrap())),
            "https://up:8443/api/a?b"
        );
    }

    #[test]
    fn upstream_urls_are_checked() {
        for bad in [
            "up:8000",
            "/relative",
            "ftp://up/",
            "http://user:pw@up/",
            "http://up/?q=1",
        ] {
            assert!(Base::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn hop_by_hop_headers_and_those_connection_names_are_removed() {
        let mut headers = HeaderMap::new();
        for (name, value) in [
            ("connection", "keep-alive, X-Secret-Hop"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "h2c"),
            ("proxy-connection", "keep-alive"),
            ("x-secret-hop", "1"),
            ("x-kept", "yes"),
            ("content-type", "application/json"),
        ] {
            headers.append(name, value.parse().unwrap());
        }
        strip_hop_by_hop(&mut headers);
        let left: Vec<&str> = headers.keys().map(HeaderName::as_str).collect();
        assert_eq!(left, ["x-kept", "content-type"]);
    }

    #[test]
    fn answers_are_in_the_proxys_version_towards_the_client() {
        for (request, answer) in [
            (Version::HTTP_10, Version::HTTP_11),
            (Version::HTTP_11, Version::HTTP_11),
            (Version::HTTP_2, Version::HTTP_2),
        ] {
            assert_eq!(answer_version(request), answer, "{request:?}");
        }
    }

    #[test]
    fn cookies_in_several_fields_become_one() {
        let mut headers = HeaderMap::new();
        join_cookies(&mut headers);
        assert!(headers.is_empty());
        headers.append(header::COOKIE, HeaderValue::from_static("a=1"));
        join_cookies(&mut headers);
        assert_eq!(headers[header::COOKIE], "a=1");
        headers.append(header::COOKIE, HeaderValue::from_static("b=2"));
        headers.append(header::COOKIE, HeaderValue::from_static("c=3"));
        join_cookies(&mut headers);
        let cookies: Vec<_> = headers.get_all(header::COOKIE).iter().collect();
        assert_eq!(cookies, ["a=1; b=2; c=3"]);
    }

    #[test]
    fn te_trailers_is_found_among_other_codings() {
        let te = |values: &[&str]| {
            let mut headers = HeaderMap::new();
            for value in values {
                headers.append(header::TE, HeaderValue::from_str(value).unwrap());
            }
            accepts_trailers(&headers)
        };
        assert!(te(&["trailers"]));
        assert!(te(&["gzip;q=0.5, Trailers"]));
        assert!(te(&["gzip", " trailers "]));
        assert!(!te(&[]));
        assert!(!te(&["gzip, deflate;q=0.5"]));
        assert!(!te(&["trailersx"]));
    }

    #[test]
    fn forwarded_headers_extend_the_chain() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::FORWARDED,
            "for=192.0.2.60;proto=https".parse().unwrap(),
        );
        headers.insert("x-forwarded-for", "192.0.2.60".parse().unwrap());
        let host = "api.example.com".parse().unwrap();
        let peer = "10.1.2.3:5555".parse().unwrap();
        add_forwarded(&mut headers, Some(host), Some(peer), "http");
        assert_eq!(
            headers[header::FORWARDED],
            "for=192.0.2.60;proto=https, for=10.1.2.3;proto=http;host=\"api.example.com\""
        );
        assert_eq!(headers["x-forwarded-for"], "192.0.2.60, 10.1.2.3");
        assert_eq!(headers["x-forwarded-proto"], "http");
        assert_eq!(headers["x-forwarded-host"], "api.example.com");

        let mut headers = HeaderMap::new();
        add_forwarded(
            &mut headers,
            None,
            Some("[::1]:80".parse().unwrap()),
            "http",
        );
        assert_eq!(headers[header::FORWARDED], "for=\"[::1]\";proto=http");
        assert_eq!(headers["x-forwarded-for"], "::1");
    }

    #[test]
    fn an_unknown_peer_and_a_host_no_quoted_string_can_carry() {
        let mut headers = HeaderMap::new();
        headers.append(header::FORWARDED, "for=a".parse().unwrap());
        headers.append(
            header::FORWARDED,
            HeaderValue::from_bytes(b"for=\xff").unwrap(),
        );
        headers.append(header::FORWARDED, "for=b".parse().unwrap());
        add_forwarded(&mut headers, Some("we\"ird".parse().unwrap()), None, "http");
        assert_eq!(
            headers[header::FORWARDED],
            "for=a, for=b, for=unknown;proto=http",
            "no host parameter, and a line that is not visible ASCII is dropped"
        );
        assert!(!headers.contains_key("x-forwarded-for"));
        assert_eq!(headers["x-forwarded-host"], "we\"ird");
        assert_eq!(headers.get_all(header::FORWARDED).iter().count(), 1);
    }
}
