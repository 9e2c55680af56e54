//! Classification: does a request take the synchronous path, the async path, or a refusal?
//!
//! This is the only work the layer does for a synchronous request: one header lookup (two when
//! `Prefer: respond-async` is enabled).

use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue, Uri};

use crate::request::callback_url::{self, Origin, UrlPolicy};
use crate::request::prefer::{self, Preferences, PREFER};
use crate::request::refusal::{Refusal, RefusalCode};

/// The path a request takes.
#[derive(Debug)]
pub(crate) enum Classification {
    /// No async header, or `false`: the inner service handles it as if the layer were absent.
    Passthrough,
    /// A valid async request, with the callback URL it names itself, if any (where its
    /// notification goes is settled by the event stage once its instance is known).
    Async {
        callback: Option<Uri>,
        /// How long to wait for the real answer before sending the receipt (`Prefer: wait`).
        wait: Option<Duration>,
        /// Asked for with `Prefer: respond-async` (the receipt says `Preference-Applied`).
        preferred: bool,
    },
    /// An async request the layer will not take.
    Refuse(Refusal),
}

/// What classification reads a request with: the layer's header names and settings.
#[derive(Debug)]
pub(crate) struct Classifier {
    pub(crate) async_header: HeaderName,
    pub(crate) callback_header: HeaderName,
    pub(crate) prefer_respond_async: bool,
    pub(crate) url_policy: UrlPolicy,
}

/// True when a request's headers certainly ask for the synchronous path: no async header and no
/// `Prefer` the layer listens to (the service also checks that it is not for the status
/// endpoint). Small enough to inline into `call`, so a synchronous request pays only this;
/// anything else goes to [`classify`].
#[inline]
pub(crate) fn is_plain(headers: &HeaderMap, config: &Classifier) -> bool {
    find(headers, &config.async_header).is_none()
        && !(config.prefer_respond_async && headers.contains_key(PREFER))
}

pub(crate) fn classify(headers: &HeaderMap, config: &Classifier) -> Classification {
    let preferences = if config.prefer_respond_async && headers.contains_key(PREFER) {
        prefer::parse(headers)
    } else {
        Preferences::default()
    };
    // An explicit async header decides; without one, `Prefer: respond-async` may ask.
    let wants_async = match find(headers, &config.async_header) {
        Some(value) => async_requested(headers, &config.async_header, value.as_bytes()),
        None => Ok(preferences.respond_async),
    };
    match wants_async {
        Ok(false) => Classification::Passthrough,
        // The client would get a `202` on a connection it meant to take over (a WebSocket, say):
        // there is nothing to run in the background.
        Ok(true) if headers.contains_key(http::header::UPGRADE) => {
            Classification::Refuse(Refusal::new(
                RefusalCode::AsyncUpgrade,
                "A request that asks to upgrade its connection (Upgrade) cannot be asynchronous; \
                 send it without Elements-Async-Request.",
            ))
        }
        Ok(true) => match callback(headers, config) {
            Ok(callback) => Classification::Async {
                callback,
                wait: preferences.wait.filter(|_| preferences.respond_async),
                preferred: preferences.respond_async,
            },
            Err(refusal) => Classification::Refuse(refusal),
        },
        Err(refusal) => Classification::Refuse(refusal),
    }
}

/// Up to this many distinct names, [`find`] compares names instead of hashing the one it seeks.
const SCAN_UP_TO: usize = 16;

/// `headers.get(name)`, cheaper when the name is absent from a small map, as the async header is
/// on every synchronous request: `HeaderMap` hashes all of a custom name's bytes (22 for
/// `elements-async-request`), while comparing it with a standard name is a tag check and with a
/// custom one a length check.
#[inline]
fn find<'a>(headers: &'a HeaderMap, name: &HeaderName) -> Option<&'a HeaderValue> {
    if headers.keys_len() <= SCAN_UP_TO && !headers.keys().any(|key| key == name) {
        return None;
    }
    headers.get(name)
}

fn async_requested(headers: &HeaderMap, name: &HeaderName, first: &[u8]) -> Result<bool, Refusal> {
    let invalid = |why: &str| {
        Refusal::new(
            RefusalCode::InvalidAsyncHeader,
            format!("The {name} header {why}; send \"true\" or \"false\"."),
        )
    };
    if headers.get_all(name).iter().nth(1).is_some() {
        return Err(invalid("appears more than once"));
    }
    let value = first.trim_ascii();
    if value.eq_ignore_ascii_case(b"true") {
        Ok(true)
    } else if value.eq_ignore_ascii_case(b"false") {
        Ok(false)
    } else {
        Err(invalid("has an unknown value"))
    }
}

fn callback(headers: &HeaderMap, config: &Classifier) -> Result<Option<Uri>, Refusal> {
    let mut values = headers.get_all(&config.callback_header).iter();
    match (values.next(), values.next()) {
        (Some(_), Some(_)) => Err(Refusal::new(
            RefusalCode::InvalidCallbackUrl,
            format!(
                "The {} header appears more than once.",
                config.callback_header
            ),
        )),
        (Some(url), None) => {
            callback_url::validate(url.as_bytes(), Origin::Request, &config.url_policy).map(Some)
        }
        (None, _) => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn find_agrees_with_get_on_small_and_large_maps() {
        let name = HeaderName::from_static("elements-async-request");
        // Standard names, a custom name of the same length, a prefix and an extension of the one
        // sought, then numbered fillers past the scanning limit.
        let near = [
            "content-type",
            "accept",
            "elements-async-respond",
            "elements-async-reques",
            "elements-async-request-id",
        ];
        for size in 0..40 {
            for with_name in [false, true] {
                let mut headers = HeaderMap::new();
                for i in 0..size {
                    let other = near
                        .get(i)
                        .map_or(format!("x-filler-{i}"), |n| n.to_string());
                    let other = HeaderName::from_bytes(other.as_bytes()).unwrap();
                    headers.append(other, HeaderValue::from_static("v"));
                    headers.append(http::header::ACCEPT, HeaderValue::from_static("*/*"));
                }
                if with_name {
                    headers.insert(&name, HeaderValue::from_static("true"));
                }
                assert_eq!(
                    find(&headers, &name),
                    headers.get(&name),
                    "{size} {with_name}"
                );
                assert_eq!(find(&headers, &name).is_some(), with_name);
            }
        }
    }
}
