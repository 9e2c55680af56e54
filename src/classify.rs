//! Classification: does a request take the synchronous path, the async path, or a refusal?
//!
//! This is the only work the layer does for a synchronous request: one header lookup (two when
//! `Prefer: respond-async` is enabled).

use std::time::Duration;

use http::{HeaderMap, HeaderName, Uri};

use crate::callback_url::{self, Origin};
use crate::config::Config;
use crate::prefer::{self, Preferences, PREFER};
use crate::refusal::{Refusal, RefusalCode};

/// The path a request takes.
#[derive(Debug)]
pub(crate) enum Classification {
    /// No async header, or `false`: the inner service handles it as if the layer were absent.
    Passthrough,
    /// A valid async request and where its notification goes (`None`: the client polls the
    /// status endpoint instead).
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

pub(crate) fn classify(headers: &HeaderMap, config: &Config) -> Classification {
    let preferences = if config.prefer_respond_async && headers.contains_key(PREFER) {
        prefer::parse(headers)
    } else {
        Preferences::default()
    };
    // An explicit async header decides; without one, `Prefer: respond-async` may ask.
    let wants_async = match headers.get(&config.async_header) {
        Some(value) => async_requested(headers, &config.async_header, value.as_bytes()),
        None => Ok(preferences.respond_async),
    };
    match wants_async {
        Ok(false) => Classification::Passthrough,
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

fn callback(headers: &HeaderMap, config: &Config) -> Result<Option<Uri>, Refusal> {
    let mut values = headers.get_all(&config.callback_header).iter();
    match (values.next(), values.next()) {
        (Some(_), Some(_)) => Err(Refusal::new(
            RefusalCode::InvalidCallbackUrl,
            format!("The {} header appears more than once.", config.callback_header),
        )),
        (Some(url), None) => {
            callback_url::validate(url.as_bytes(), Origin::Request, &config.url_policy).map(Some)
        }
        (None, _) if config.default_callback.is_some() => Ok(config.default_callback.clone()),
        (None, _) if config.status.is_some() => Ok(None),
        (None, _) => Err(Refusal::new(
            RefusalCode::MissingCallbackUrl,
            format!(
                "An async request needs a callback URL in the {} header, and this service has no default.",
                config.callback_header
            ),
        )),
    }
}
