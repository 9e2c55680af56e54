//! Header names used on the wire, as constants (the defaults; request header names are
//! configurable on the builder).

use std::fmt::Write as _;
use std::ops::Range;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue};

/// Request header that asks for the async path: `Elements-Async-Request: True`.
pub const ELEMENTS_ASYNC_REQUEST: HeaderName = HeaderName::from_static("elements-async-request");
/// Request header that names where the notification goes.
pub const ELEMENTS_ASYNC_CALLBACK_URL: HeaderName =
    HeaderName::from_static("elements-async-callback-url");
/// The event id, on the receipt and on every callback.
pub const ELEMENTS_EVENT_ID: HeaderName = HeaderName::from_static("elements-event-id");
/// Elements signature scheme: `sha256=<base64 HMAC-SHA256 of the body>`.
pub const ELEMENTS_WEBHOOK_SIGNATURE: HeaderName =
    HeaderName::from_static("elements-webhook-signature");
/// Standard Webhooks message id (the notification id).
pub const WEBHOOK_ID: HeaderName = HeaderName::from_static("webhook-id");
/// Standard Webhooks timestamp (Unix seconds of the attempt).
pub const WEBHOOK_TIMESTAMP: HeaderName = HeaderName::from_static("webhook-timestamp");
/// Standard Webhooks signatures (`v1,<base64>`, space-separated).
pub const WEBHOOK_SIGNATURE: HeaderName = HeaderName::from_static("webhook-signature");

/// Request header that makes an async request safe to send again
/// (draft-ietf-httpapi-idempotency-key-header): `Idempotency-Key: "8e03978e-…"`.
pub const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");
/// On the answer to a request whose idempotency key an earlier request claimed: `true`.
pub const IDEMPOTENT_REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");
/// `Preference-Applied` (RFC 7240): which of a request's `Prefer` preferences the answer honours
/// (`respond-async` on a receipt, `wait=N` on a status answer).
pub const PREFERENCE_APPLIED: HeaderName = HeaderName::from_static("preference-applied");

/// Most values one [`HeaderText`] holds.
const MAX_VALUES: usize = 6;

/// Several header values written one after another into one buffer, then cut from it: two
/// allocations for all of them (the text and, once it is shared, its reference count) where
/// values made one by one cost one or two each. For what the layer writes on every callback:
/// ids, a timestamp, signatures.
pub(crate) struct HeaderText {
    text: String,
    /// Each value's name and where its text ends (it starts where the one before ended).
    values: [(Option<HeaderName>, usize); MAX_VALUES],
    count: usize,
}

impl HeaderText {
    /// Room for `bytes` of text: with enough, the buffer is allocated once.
    pub(crate) fn with_capacity(bytes: usize) -> Self {
        Self {
            text: String::with_capacity(bytes),
            values: [const { (None, 0) }; MAX_VALUES],
            count: 0,
        }
    }

    /// The text so far, to append the value being written to. It must be visible ASCII (and
    /// spaces), as every header value the layer writes is.
    pub(crate) fn text(&mut self) -> &mut String {
        &mut self.text
    }

    /// Ends the value being written as `name`'s; where it lies in the text.
    pub(crate) fn end(&mut self, name: HeaderName) -> Range<usize> {
        assert!(self.count < MAX_VALUES, "at most {MAX_VALUES} values");
        let start = self.count.checked_sub(1).map_or(0, |i| self.values[i].1);
        self.values[self.count] = (Some(name), self.text.len());
        self.count += 1;
        start..self.text.len()
    }

    /// `n` in decimal as `name`'s value.
    pub(crate) fn decimal(&mut self, name: HeaderName, n: u64) -> Range<usize> {
        write!(self.text, "{n}").expect("writing to a String does not fail");
        self.end(name)
    }

    /// A value written before.
    pub(crate) fn get(&self, range: Range<usize>) -> &str {
        &self.text[range]
    }

    /// Inserts every value into `headers`, replacing what they held under the same names.
    pub(crate) fn insert_into(self, headers: &mut HeaderMap) {
        let text = Bytes::from(self.text);
        let mut start = 0;
        for (name, end) in self.values.into_iter().take(self.count) {
            let value = HeaderValue::from_maybe_shared(text.slice(start..end))
                .expect("the layer writes header values in visible ASCII");
            headers.insert(name.expect("a counted value has a name"), value);
            start = end;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_cut_where_they_were_ended() {
        let mut text = HeaderText::with_capacity(8);
        let id = text.decimal(WEBHOOK_ID, 1084);
        text.text().push_str("v1,abc v1,def");
        text.end(WEBHOOK_SIGNATURE);
        text.decimal(WEBHOOK_TIMESTAMP, 0);
        text.end(ELEMENTS_EVENT_ID);
        assert_eq!(text.get(id), "1084");

        let mut headers = HeaderMap::new();
        headers.insert(WEBHOOK_ID, HeaderValue::from_static("replaced"));
        text.insert_into(&mut headers);
        assert_eq!(headers.len(), 4);
        assert_eq!(headers[WEBHOOK_ID], "1084");
        assert_eq!(headers[WEBHOOK_SIGNATURE], "v1,abc v1,def");
        assert_eq!(headers[WEBHOOK_TIMESTAMP], "0");
        assert_eq!(headers[ELEMENTS_EVENT_ID], "", "an empty value is a value");
    }

    #[test]
    #[should_panic(expected = "at most 6 values")]
    fn a_seventh_value_is_a_bug_not_a_lost_header() {
        let mut text = HeaderText::with_capacity(0);
        for n in 0..7 {
            text.decimal(WEBHOOK_ID, n);
        }
    }
}
