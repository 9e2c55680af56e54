//! Entry points for the fuzz targets in `fuzz/` (feature `fuzzing`). Not public API: each runs
//! one internal function on hostile input and checks the invariants that must hold for any input.

use std::net::IpAddr;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};

use crate::event::notification::{Notification, Outcome};
use crate::request::address::{is_public, parse_ipv4_lenient};
use crate::request::callback_url::{validate, Origin, UrlPolicy};
use crate::wire::ids::{EventId, NotificationId};

/// Callback URL validation: never panics; an accepted URL never names a non-public literal.
pub fn callback_url(raw: &[u8]) {
    if let Ok(uri) = validate(raw, Origin::Request, &UrlPolicy::default()) {
        let host = uri.host().expect("an accepted URL has a host");
        let literal = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .and_then(|h| h.parse().ok())
            .or_else(|| {
                parse_ipv4_lenient(host)
                    .and_then(Result::ok)
                    .map(IpAddr::V4)
            });
        if let Some(ip) = literal {
            assert!(is_public(ip), "{uri} was accepted");
        }
        assert!(uri.to_string().len() <= crate::request::callback_url::MAX_CALLBACK_URL_BYTES + 8);
    }
}

/// Header classification: never panics, whatever the async and callback header values are.
pub fn classify(async_value: &[u8], callback_value: &[u8], twice: bool) {
    let mut headers = HeaderMap::new();
    let (Ok(a), Ok(c)) = (
        HeaderValue::from_bytes(async_value),
        HeaderValue::from_bytes(callback_value),
    ) else {
        return;
    };
    headers.append(HeaderName::from_static("elements-async-request"), a.clone());
    if twice {
        headers.append(HeaderName::from_static("elements-async-request"), a);
    }
    headers.append(HeaderName::from_static("elements-async-callback-url"), c);
    static LAYER: std::sync::OnceLock<crate::layer::layer::AsyncRequestLayer> =
        std::sync::OnceLock::new();
    let layer = LAYER.get_or_init(|| {
        crate::layer::layer::AsyncRequestLayer::builder()
            .build()
            .expect("defaults")
    });
    let _ = crate::request::classify::classify(&headers, &layer.config_for_fuzzing().classifier);
}

/// Notification building: always valid JSON that reads back.
pub fn notification(content_type: &[u8], body: &[u8], status: u16) {
    let outcome = Outcome::Completed {
        status: StatusCode::from_u16(100 + status % 500).expect("a valid status"),
        content_type: HeaderValue::from_bytes(content_type).ok(),
        body: Bytes::copy_from_slice(body),
        grpc: None,
    };
    let json = outcome.to_json(EventId::new(1), 2, NotificationId::new(3));
    let parsed: Notification =
        serde_json::from_slice(&json).expect("the notification is valid JSON");
    assert!(parsed.response_bytes().is_some());
}

/// `Prefer` parsing: never panics, and a `wait` is never above the cap.
pub fn prefer(value: &[u8]) {
    let Ok(value) = HeaderValue::from_bytes(value) else {
        return;
    };
    let mut headers = HeaderMap::new();
    headers.insert(crate::request::prefer::PREFER, value);
    let preferences = crate::request::prefer::parse(&headers);
    assert!(preferences
        .wait
        .is_none_or(|wait| wait <= crate::request::prefer::MAX_PREFER_WAIT));
}
