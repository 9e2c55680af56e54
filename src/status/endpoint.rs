//! The status monitor: with `.status_endpoint("/events")`, the layer itself answers
//! `GET /events/{eventId}?token={token}` for clients that poll instead of (or besides) receiving a
//! callback, as the long-running-operation guidelines describe (Azure's asynchronous
//! request-reply, Google AIP-151).
//!
//! Event ids are guessable, so the status URL is a capability: the token is an HMAC of the event
//! id under a per-layer secret (random at start-up unless `.status_secret(..)` sets one, which a
//! durable store needs for links to survive a restart). A missing, wrong or tampered token and an
//! unknown id get the same `404`. The receipt's `Location` header carries the full URL.
//!
//! The answer:
//!
//! ```json
//! {"eventId":1028,"instanceId":30,"eventStatus":"completed","notificationId":1084,
//!  "delivery":{"state":"delivered","attempts":1,"lastError":null},
//!  "statusCode":200,"response":{"…":"…"}}
//! ```
//!
//! `eventStatus` is `dispatched`, `running`, `completed`, `failed` or `cancelled`;
//! `delivery.state` is `none` (nothing to deliver yet, or no callback URL), `pending`,
//! `delivered` or `dead`. A finished event carries `statusCode` and `response` (or `error`)
//! exactly as its notification does; a job that reported progress, `progress`. Unfinished events
//! answer with `Retry-After`. This file reads status URLs and writes the answers; waiting
//! (`Prefer: wait`) and cancelling (`DELETE`) are the event stage's (`event/operation.rs`). Finished events are kept for the status
//! retention (default 24 h; `.status_retention(..)`), within the store's own bounds.

use std::fmt;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use bytes::Bytes;
use hmac::Mac;
use http::{header, HeaderValue, Method, Response, StatusCode, Uri};
use serde_json::{json, Map, Value};

use crate::error::ConfigError;
use crate::request::refusal::{json_error, json_response};
use crate::store::{EventSnapshot, NotificationRecord, ProgressRecord, StoreError};
use crate::wire::ids::EventId;
use crate::wire::signature::{keyed, HmacSha256};

/// Bytes of HMAC kept in a token: 128 bits.
const TOKEN_BYTES: usize = 16;

pub(crate) struct StatusEndpoint {
    prefix: String,
    key: HmacSha256,
}

impl fmt::Debug for StatusEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StatusEndpoint")
            .field("prefix", &self.prefix)
            .field("key", &"<redacted>")
            .finish()
    }
}

impl StatusEndpoint {
    pub(crate) fn new(prefix: &str, secret: Option<&[u8]>) -> Result<Self, ConfigError> {
        let prefix = prefix.trim_end_matches('/');
        let valid = prefix.starts_with('/')
            && prefix.len() > 1
            && prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"/-_.~".contains(&b));
        if !valid {
            return Err(ConfigError::new(format!(
                "status_endpoint {prefix:?} must be an absolute path such as \"/events\""
            )));
        }
        let key = match secret {
            Some(secret) if secret.len() >= 16 => keyed(secret),
            Some(_) => return Err(ConfigError::new("status_secret must be at least 16 bytes")),
            None => {
                let mut secret = [0u8; 32];
                crate::wire::crypto::provider()
                    .secure_random
                    .fill(&mut secret)
                    .map_err(|_| {
                        ConfigError::new("no secure random source for the status secret")
                    })?;
                keyed(&secret)
            }
        };
        Ok(Self {
            prefix: prefix.to_owned(),
            key,
        })
    }

    fn mac(&self, event_id: EventId) -> HmacSha256 {
        let mut mac = self.key.clone();
        mac.update(b"status:");
        mac.update(&event_id.get().to_be_bytes());
        mac
    }

    pub(crate) fn token(&self, event_id: EventId) -> String {
        URL_SAFE_NO_PAD.encode(&self.mac(event_id).finalize().into_bytes()[..TOKEN_BYTES])
    }

    fn verify(&self, event_id: EventId, token: &str) -> bool {
        match URL_SAFE_NO_PAD.decode(token) {
            Ok(bytes) if bytes.len() == TOKEN_BYTES => {
                self.mac(event_id).verify_truncated_left(&bytes).is_ok()
            }
            _ => false,
        }
    }

    /// The status URL of an event (a path with its token), for the receipt's `Location`.
    pub(crate) fn location(&self, event_id: EventId) -> HeaderValue {
        let url = format!("{}/{event_id}?token={}", self.prefix, self.token(event_id));
        HeaderValue::try_from(url).expect("a checked path, digits and base64url")
    }

    /// Whether the layer answers this request itself: `GET` (the status) and `DELETE` (a
    /// cancel) under the prefix.
    pub(crate) fn owns(&self, method: &Method, uri: &Uri) -> bool {
        (method == Method::GET || method == Method::DELETE)
            && uri
                .path()
                .strip_prefix(self.prefix.as_str())
                .is_some_and(|rest| rest.starts_with('/'))
    }

    /// The event a status URL names, if its token is right.
    pub(crate) fn event(&self, uri: &Uri) -> Option<EventId> {
        let id = uri
            .path()
            .strip_prefix(self.prefix.as_str())?
            .strip_prefix('/')?;
        let id = EventId::new(id.parse().ok()?);
        let token = uri
            .query()?
            .split('&')
            .find_map(|pair| pair.strip_prefix("token="))?;
        self.verify(id, token).then_some(id)
    }
}

/// The status answer's body for what the store (and this node, for a job running here: `live`)
/// knows of an event, and whether the event has ended.
pub(crate) fn body(
    event_id: EventId,
    snapshot: &EventSnapshot,
    live: Option<ProgressRecord>,
) -> (Map<String, Value>, bool) {
    let (mut body, finished, stored) = match snapshot {
        EventSnapshot::Unfinished(event) => {
            let mut body = Map::new();
            body.insert("eventId".into(), json!(event_id));
            body.insert("instanceId".into(), json!(event.instance_id));
            let status = if event.running || live.is_some() {
                "running"
            } else {
                "dispatched"
            };
            body.insert("eventStatus".into(), json!(status));
            body.insert("notificationId".into(), json!(event.notification_id));
            body.insert(
                "delivery".into(),
                json!({"state": "none", "attempts": 0, "lastError": null}),
            );
            (body, false, event.progress.as_deref())
        }
        EventSnapshot::Finished(notification) => (
            finished_body(event_id, notification),
            true,
            notification.progress.as_deref(),
        ),
    };
    // The newer of what this node holds and what the store has.
    let progress = match (live.as_ref(), stored) {
        (Some(live), Some(stored)) if stored.updated_at_ms > live.updated_at_ms => Some(stored),
        (Some(live), _) => Some(live),
        (None, stored) => stored,
    };
    if let Some(progress) = progress {
        body.insert(
            "progress".into(),
            json!({
                "percent": progress.percent,
                "message": progress.message,
                "updatedAt": rfc3339(progress.updated_at_ms),
            }),
        );
    }
    (body, finished)
}

/// A status answer: `status` with `body`; an event not yet ended says when to look again.
pub(crate) fn respond(
    status: StatusCode,
    body: Map<String, Value>,
    finished: bool,
) -> Response<Bytes> {
    let mut response = json_response(status, Value::Object(body).to_string());
    if !finished {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    response
}

/// The status store could not be read.
pub(crate) fn store_unavailable(error: &StoreError) -> Response<Bytes> {
    tracing::error!(%error, "could not read an event's status");
    json_error(
        StatusCode::SERVICE_UNAVAILABLE,
        "store_unavailable",
        "The event's status could not be read. Retry later.",
    )
}

/// Unix milliseconds as RFC 3339 UTC with milliseconds (`2026-12-07T17:29:48.123Z`).
fn rfc3339(unix_ms: u64) -> String {
    let (days, ms) = (unix_ms / 86_400_000, unix_ms % 86_400_000);
    // Days since 1970-01-01 to a civil date (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        ms / 3_600_000,
        ms / 60_000 % 60,
        ms / 1000 % 60,
        ms % 1000
    )
}

fn finished_body(event_id: EventId, notification: &NotificationRecord) -> Map<String, Value> {
    let sent: Map<String, Value> = serde_json::from_slice(&notification.body).unwrap_or_default();
    let mut body = Map::new();
    body.insert("eventId".into(), json!(event_id));
    body.insert("instanceId".into(), json!(notification.instance_id));
    body.insert(
        "eventStatus".into(),
        sent.get("eventStatus").cloned().unwrap_or(Value::Null),
    );
    body.insert("notificationId".into(), json!(notification.notification_id));
    body.insert(
        "delivery".into(),
        json!({
            "state": notification.state.as_str(),
            "attempts": notification.attempts,
            "lastError": notification.last_error,
        }),
    );
    for field in ["statusCode", "response", "responseEncoding", "error"] {
        if let Some(value) = sent.get(field) {
            body.insert(field.into(), value.clone());
        }
    }
    body
}

/// A missing, wrong or tampered token, or an unknown event: all alike.
pub(crate) fn not_found() -> Response<Bytes> {
    json_error(
        StatusCode::NOT_FOUND,
        "not_found",
        "No event matches this status URL.",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint() -> StatusEndpoint {
        StatusEndpoint::new("/events", Some(b"0123456789abcdef0123")).unwrap()
    }

    #[test]
    fn tokens_are_bound_to_their_event_and_secret() {
        let status = endpoint();
        let id = EventId::new(1028);
        let token = status.token(id);
        assert_eq!(token.len(), 22);
        assert!(status.verify(id, &token));
        assert!(!status.verify(EventId::new(1029), &token));
        let other = StatusEndpoint::new("/events", Some(b"another-secret-of-16+")).unwrap();
        assert!(!other.verify(id, &token));
        let mut tampered = token.into_bytes();
        tampered[0] = if tampered[0] == b'A' { b'B' } else { b'A' };
        assert!(!status.verify(id, std::str::from_utf8(&tampered).unwrap()));
        assert!(!status.verify(id, ""));
    }

    #[test]
    fn status_urls_are_parsed_strictly() {
        let status = endpoint();
        let id = EventId::new(1028);
        let location = status.location(id);
        let uri: Uri = location.to_str().unwrap().parse().unwrap();
        assert!(status.owns(&Method::GET, &uri));
        assert!(status.owns(&Method::DELETE, &uri));
        assert!(!status.owns(&Method::POST, &uri));
        assert_eq!(status.event(&uri), Some(id));
        for bad in [
            "/events/1028",
            "/events/1028?token=",
            "/events/x?token=abc",
            "/events/1029?token=abc",
            "/eventsX/1028",
        ] {
            let uri: Uri = bad.parse().unwrap();
            assert_eq!(status.event(&uri), None, "{bad}");
        }
        assert!(!status.owns(&Method::GET, &"/eventsX/1".parse().unwrap()));
        assert!(!status.owns(&Method::GET, &"/other".parse().unwrap()));
    }

    #[test]
    fn progress_times_are_rfc3339_utc() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(951_782_400_001), "2000-02-29T00:00:00.001Z");
        assert_eq!(rfc3339(1_796_664_588_123), "2026-12-07T17:29:48.123Z");
    }

    #[test]
    fn prefixes_and_secrets_are_checked() {
        assert!(StatusEndpoint::new("events", None).is_err());
        assert!(StatusEndpoint::new("/", None).is_err());
        assert!(StatusEndpoint::new("/ev ents", None).is_err());
        assert!(StatusEndpoint::new("/events", Some(b"short")).is_err());
        assert!(StatusEndpoint::new("/api/events/", None).is_ok());
    }
}
