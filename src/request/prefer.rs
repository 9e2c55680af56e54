//! RFC 7240 `Prefer` parsing, for `.prefer_respond_async(true)`.
//!
//! `Prefer: respond-async` asks for the async path; `wait=N` (a separate preference) asks the
//! server to wait up to N seconds for the real answer before falling back to the receipt. The
//! header may repeat and list several preferences, each with `;` parameters; names are
//! case-insensitive; values may be quoted; unknown preferences are ignored; when a preference
//! appears twice the first one counts (RFC 7240 §2).

use std::time::Duration;

use http::{HeaderMap, HeaderName};

/// `Prefer` header name.
pub(crate) const PREFER: HeaderName = HeaderName::from_static("prefer");

/// The longest `wait` honoured; a client asking for more waits this long.
pub const MAX_PREFER_WAIT: Duration = Duration::from_secs(60);

/// The preferences this crate understands.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Preferences {
    pub(crate) respond_async: bool,
    pub(crate) wait: Option<Duration>,
}

pub(crate) fn parse(headers: &HeaderMap) -> Preferences {
    let mut found = Preferences::default();
    let mut seen_wait = false;
    for value in headers.get_all(PREFER) {
        let Ok(text) = value.to_str() else {
            continue;
        };
        for preference in split_outside_quotes(text, ',') {
            let head = split_outside_quotes(preference, ';').next().unwrap_or("");
            let (name, value) = match head.split_once('=') {
                Some((name, value)) => (name.trim(), Some(unquote(value.trim()))),
                None => (head.trim(), None),
            };
            if name.eq_ignore_ascii_case("respond-async") {
                found.respond_async = true;
            } else if name.eq_ignore_ascii_case("wait") && !seen_wait {
                seen_wait = true;
                found.wait = value
                    .and_then(|v| v.parse::<u64>().ok())
                    .map(|seconds| Duration::from_secs(seconds).min(MAX_PREFER_WAIT));
            }
        }
    }
    found
}

fn unquote(value: &str) -> &str {
    value
        .strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .unwrap_or(value)
}

/// Splits at `separator` where it is not inside a quoted string.
fn split_outside_quotes(text: &str, separator: char) -> impl Iterator<Item = &str> {
    let mut rest = Some(text);
    std::iter::from_fn(move || {
        let current = rest?;
        let mut quoted = false;
        let mut escaped = false;
        for (i, c) in current.char_indices() {
            match c {
                _ if escaped => escaped = false,
                '\\' if quoted => escaped = true,
                '"' => quoted = !quoted,
                c if c == separator && !quoted => {
                    rest = Some(&current[i + c.len_utf8()..]);
                    return Some(&current[..i]);
                }
                _ => {}
            }
        }
        rest = None;
        Some(current)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn prefs(values: &[&'static str]) -> Preferences {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append(PREFER, HeaderValue::from_static(value));
        }
        parse(&headers)
    }

    #[test]
    fn reads_respond_async_and_wait_in_any_form() {
        let asynchronous = |wait| Preferences {
            respond_async: true,
            wait,
        };
        assert_eq!(prefs(&["respond-async"]), asynchronous(None));
        assert_eq!(
            prefs(&["Respond-Async, wait=10"]),
            asynchronous(Some(Duration::from_secs(10)))
        );
        assert_eq!(
            prefs(&["wait = 5 ,  RESPOND-ASYNC"]),
            asynchronous(Some(Duration::from_secs(5)))
        );
        assert_eq!(
            prefs(&["return=minimal", "respond-async; foo=bar", "wait=\"3\""]),
            asynchronous(Some(Duration::from_secs(3)))
        );
        assert_eq!(
            prefs(&["respond-async, wait=999999"]),
            asynchronous(Some(MAX_PREFER_WAIT))
        );
    }

    #[test]
    fn ignores_what_it_does_not_know_and_keeps_the_first_wait() {
        assert_eq!(prefs(&[]), Preferences::default());
        assert_eq!(
            prefs(&["return=representation, handling=lenient"]),
            Preferences::default()
        );
        assert_eq!(prefs(&["respond-asynchronously"]), Preferences::default());
        assert_eq!(
            prefs(&["foo=\"a,respond-async\""]),
            Preferences::default(),
            "inside quotes"
        );
        assert_eq!(
            prefs(&["wait=abc, wait=4"]).wait,
            None,
            "the first wait counts"
        );
        assert_eq!(
            prefs(&["wait=2", "wait=4"]).wait,
            Some(Duration::from_secs(2))
        );
        assert!(
            !prefs(&["x; respond-async"]).respond_async,
            "a parameter is not a preference"
        );
    }
}
