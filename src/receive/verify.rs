//! Verifying callbacks (receiver side).
//!
//! A receiver written with this crate needs no other code to check that a callback is genuine:
//! [`ElementsVerifier`] checks `Elements-Webhook-Signature`, [`StandardWebhooksVerifier`] checks
//! the `webhook-*` headers including the timestamp tolerance (default five minutes, against replay).
//! Comparisons are constant-time.
//!
//! # Example
//!
//! ```
//! use tower_async_request::verify::{ElementsVerifier, StandardWebhooksVerifier};
//! # use http::{HeaderMap, HeaderName};
//! # fn handle(headers: &HeaderMap, body: &[u8]) {
//! let elements = ElementsVerifier::new("event-signature-key");
//! let standard = StandardWebhooksVerifier::new("whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD")
//!     .expect("a well-formed secret");
//!
//! if elements.verify(headers, body).is_ok() && standard.verify(headers, body).is_ok() {
//!     // The callback came from the layer configured with these keys.
//! }
//! # }
//! ```

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use hmac::Mac;
use http::{HeaderMap, HeaderName};

use crate::error::ConfigError;
use crate::wire::header::{
    ELEMENTS_WEBHOOK_SIGNATURE, WEBHOOK_ID, WEBHOOK_SIGNATURE, WEBHOOK_TIMESTAMP,
};
use crate::wire::signature::{decode_whsec, keyed, standard_update, HmacSha256, ELEMENTS_PREFIX};

/// Default tolerance between a Standard Webhooks timestamp and the receiver's clock.
pub const DEFAULT_TOLERANCE: Duration = Duration::from_secs(5 * 60);

/// Why a callback failed verification.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum VerifyError {
    /// A required header is absent.
    MissingHeader(&'static str),
    /// A header is present but not in the expected format.
    MalformedHeader(&'static str),
    /// The `webhook-timestamp` is further from now than the tolerance.
    TimestampOutOfTolerance,
    /// No signature matches the body under any configured key.
    SignatureMismatch,
}

impl fmt::Display for VerifyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::MissingHeader(name) => write!(f, "the {name} header is missing"),
            Self::MalformedHeader(name) => write!(f, "the {name} header is malformed"),
            Self::TimestampOutOfTolerance => {
                f.write_str("the webhook-timestamp is outside the accepted tolerance")
            }
            Self::SignatureMismatch => f.write_str("no signature matches the body"),
        }
    }
}

impl std::error::Error for VerifyError {}

/// Verifies the Elements scheme: `Elements-Webhook-Signature: sha256=<base64>`.
#[derive(Clone)]
pub struct ElementsVerifier {
    key: HmacSha256,
}

impl fmt::Debug for ElementsVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ElementsVerifier")
            .field("key", &"<redacted>")
            .finish()
    }
}

impl ElementsVerifier {
    /// A verifier for the signing key the sender was configured with.
    pub fn new(key: impl AsRef<[u8]>) -> Self {
        Self {
            key: keyed(key.as_ref()),
        }
    }

    /// Checks the `Elements-Webhook-Signature` header against the exact body bytes.
    pub fn verify(&self, headers: &HeaderMap, body: &[u8]) -> Result<(), VerifyError> {
        const NAME: &str = "Elements-Webhook-Signature";
        let value = headers
            .get(ELEMENTS_WEBHOOK_SIGNATURE)
            .ok_or(VerifyError::MissingHeader(NAME))?;
        self.verify_signature(value.as_bytes(), body)
    }

    /// Checks one header value (`sha256=<base64>`) against the exact body bytes.
    pub fn verify_signature(&self, signature: &[u8], body: &[u8]) -> Result<(), VerifyError> {
        const NAME: &str = "Elements-Webhook-Signature";
        let encoded = signature
            .strip_prefix(ELEMENTS_PREFIX.as_bytes())
            .ok_or(VerifyError::MalformedHeader(NAME))?;
        let mut expected = [0; TAG_BYTES];
        let len = match decode_tag(encoded, &mut expected) {
            Decoded::Tag(len) => len,
            Decoded::TooLong => return Err(VerifyError::SignatureMismatch),
            Decoded::Invalid => return Err(VerifyError::MalformedHeader(NAME)),
        };
        let mut mac = self.key.clone();
        mac.update(body);
        if len == TAG_BYTES && same_tag(&mac.finalize().into_bytes().into(), &expected) {
            Ok(())
        } else {
            Err(VerifyError::SignatureMismatch)
        }
    }
}

/// Verifies the Standard Webhooks scheme (`webhook-id`, `webhook-timestamp`, `webhook-signature`).
#[derive(Clone)]
pub struct StandardWebhooksVerifier {
    keys: Vec<HmacSha256>,
    tolerance: Duration,
}

impl fmt::Debug for StandardWebhooksVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StandardWebhooksVerifier")
            .field("secrets", &self.keys.len())
            .field("tolerance", &self.tolerance)
            .finish()
    }
}

impl StandardWebhooksVerifier {
    /// A verifier for one `whsec_…` secret.
    pub fn new(secret: &str) -> Result<Self, ConfigError> {
        Self {
            keys: Vec::new(),
            tolerance: DEFAULT_TOLERANCE,
        }
        .with_secret(secret)
    }

    /// Also accepts signatures made with `secret` (during key rotation).
    pub fn with_secret(mut self, secret: &str) -> Result<Self, ConfigError> {
        let key = decode_whsec(secret).map_err(ConfigError::new)?;
        self.keys.push(keyed(&key));
        Ok(self)
    }

    /// How far `webhook-timestamp` may be from now (default [`DEFAULT_TOLERANCE`]).
    pub fn tolerance(mut self, tolerance: Duration) -> Self {
        self.tolerance = tolerance;
        self
    }

    /// Verifies a callback against the current time.
    pub fn verify(&self, headers: &HeaderMap, body: &[u8]) -> Result<(), VerifyError> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO)
            .as_secs();
        self.verify_at(headers, body, now)
    }

    /// Verifies a callback as if the current time were `now` (Unix seconds).
    pub fn verify_at(&self, headers: &HeaderMap, body: &[u8], now: u64) -> Result<(), VerifyError> {
        let id = header_text(headers, WEBHOOK_ID, "webhook-id")?;
        let timestamp = header_text(headers, WEBHOOK_TIMESTAMP, "webhook-timestamp")?;
        let signatures = header_text(headers, WEBHOOK_SIGNATURE, "webhook-signature")?;
        let sent: u64 = timestamp
            .parse()
            .map_err(|_| VerifyError::MalformedHeader("webhook-timestamp"))?;
        if now.abs_diff(sent) > self.tolerance.as_secs() {
            return Err(VerifyError::TimestampOutOfTolerance);
        }
        self.verify_signatures(id, timestamp, signatures, body)
    }

    /// Checks a `webhook-signature` value without looking at the clock.
    pub fn verify_signatures(
        &self,
        id: &str,
        timestamp: &str,
        signatures: &str,
        body: &[u8],
    ) -> Result<(), VerifyError> {
        let tag = |key: &HmacSha256| -> [u8; TAG_BYTES] {
            let mut mac = key.clone();
            standard_update(&mut mac, id, timestamp, body);
            mac.finalize().into_bytes().into()
        };
        // One secret is the usual case: its tag lives on the stack, and `rest` stays an empty,
        // unallocated `Vec`.
        let Some((first, rest)) = self.keys.split_first() else {
            return Err(VerifyError::SignatureMismatch);
        };
        let first = tag(first);
        let rest: Vec<[u8; TAG_BYTES]> = rest.iter().map(tag).collect();
        for candidate in signatures.split(' ') {
            let Some(encoded) = candidate.strip_prefix("v1,") else {
                continue; // other versions are not ours to judge
            };
            let mut decoded = [0; TAG_BYTES];
            let Decoded::Tag(TAG_BYTES) = decode_tag(encoded.as_bytes(), &mut decoded) else {
                continue; // not base64 of a whole tag: cannot match
            };
            if std::iter::once(&first)
                .chain(&rest)
                .any(|tag| same_tag(tag, &decoded))
            {
                return Ok(());
            }
        }
        Err(VerifyError::SignatureMismatch)
    }
}

/// Bytes in an HMAC-SHA256 tag.
const TAG_BYTES: usize = 32;

/// What base64 text decoded to, into a tag-sized buffer (no allocation).
enum Decoded {
    /// This many bytes (a valid tag has all 32).
    Tag(usize),
    /// Valid base64, but longer than any tag: it cannot match.
    TooLong,
    /// Not standard base64.
    Invalid,
}

/// Compares two tags in constant time: every byte is looked at, whatever differs, and the
/// differences are folded into one word that is compared once (hidden from the optimizer, so no
/// early exit can be made of it).
fn same_tag(a: &[u8; TAG_BYTES], b: &[u8; TAG_BYTES]) -> bool {
    let difference = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(difference) == 0
}

fn decode_tag(encoded: &[u8], tag: &mut [u8; TAG_BYTES]) -> Decoded {
    match STANDARD.decode_slice(encoded, tag) {
        Ok(len) => Decoded::Tag(len),
        Err(base64::DecodeSliceError::OutputSliceTooSmall) => Decoded::TooLong,
        Err(base64::DecodeSliceError::DecodeError(_)) => Decoded::Invalid,
    }
}

fn header_text<'a>(
    headers: &'a HeaderMap,
    header: HeaderName,
    name: &'static str,
) -> Result<&'a str, VerifyError> {
    headers
        .get(header)
        .ok_or(VerifyError::MissingHeader(name))?
        .to_str()
        .map_err(|_| VerifyError::MalformedHeader(name))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;
    use serde_json::Value;

    fn vectors() -> Value {
        serde_json::from_str(include_str!("../../tests/data/signatures.json")).unwrap()
    }

    fn standard_headers(id: &str, timestamp: u64, signature: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(WEBHOOK_ID, HeaderValue::from_str(id).unwrap());
        headers.insert(WEBHOOK_TIMESTAMP, timestamp.into());
        headers.insert(WEBHOOK_SIGNATURE, HeaderValue::from_str(signature).unwrap());
        headers
    }

    #[test]
    fn elements_verifier_accepts_every_vector_and_rejects_tampering() {
        let vectors = vectors();
        for case in vectors["elements_webhook_signature"]["cases"]
            .as_array()
            .unwrap()
        {
            let verifier = ElementsVerifier::new(case["key"].as_str().unwrap());
            let body = case["body"].as_str().unwrap().as_bytes();
            let expected = case["expected"].as_str().unwrap().as_bytes();
            assert_eq!(verifier.verify_signature(expected, body), Ok(()));
            let mut tampered = body.to_vec();
            tampered.push(b' ');
            assert_eq!(
                verifier.verify_signature(expected, &tampered),
                Err(VerifyError::SignatureMismatch)
            );
        }
        let verifier = ElementsVerifier::new("k");
        assert_eq!(
            verifier.verify(&HeaderMap::new(), b"{}"),
            Err(VerifyError::MissingHeader("Elements-Webhook-Signature"))
        );
        assert_eq!(
            verifier.verify_signature(b"md5=abc", b"{}"),
            Err(VerifyError::MalformedHeader("Elements-Webhook-Signature"))
        );
    }

    #[test]
    fn signatures_of_the_wrong_length_are_mismatches_and_bad_base64_is_malformed() {
        // Decoded into a tag-sized buffer: too short, too long and empty must still be judged.
        let verifier = ElementsVerifier::new("k");
        let long = format!("sha256={}", STANDARD.encode([7u8; 48]));
        let short = format!("sha256={}", STANDARD.encode([7u8; 16]));
        for signature in [long.as_str(), short.as_str(), "sha256="] {
            assert_eq!(
                verifier.verify_signature(signature.as_bytes(), b"{}"),
                Err(VerifyError::SignatureMismatch),
                "{signature}"
            );
        }
        assert_eq!(
            verifier.verify_signature(b"sha256=not*base64", b"{}"),
            Err(VerifyError::MalformedHeader("Elements-Webhook-Signature"))
        );

        // The right tag in another spelling (unpadded, or with the unused low bits of the last
        // character set) is not standard base64: refused, as a decoder would refuse it.
        let mut mac = verifier.key.clone();
        mac.update(b"{}");
        let right = STANDARD.encode(mac.finalize().into_bytes());
        let mut odd_bits = right.clone().into_bytes();
        odd_bits[42] += 1; // 44 characters, one `=`: the 43rd carries two unused bits
        let odd_bits = String::from_utf8(odd_bits).unwrap();
        assert_eq!(
            verifier.verify_signature(format!("sha256={right}").as_bytes(), b"{}"),
            Ok(())
        );
        for spelling in [right.trim_end_matches('='), odd_bits.as_str()] {
            assert_eq!(
                verifier.verify_signature(format!("sha256={spelling}").as_bytes(), b"{}"),
                Err(VerifyError::MalformedHeader("Elements-Webhook-Signature")),
                "{spelling}"
            );
        }

        let secret = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
        let standard = StandardWebhooksVerifier::new(secret).unwrap();
        let key = decode_whsec(secret).unwrap();
        let mut mac = keyed(&key);
        standard_update(&mut mac, "1084", "1764000000", b"{}");
        let good = format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()));
        // Unusable candidates are skipped, the good one after them still counts.
        let signatures = format!("v1,{} v1, v1,*** v2,abc {good}", STANDARD.encode([7u8; 48]));
        assert_eq!(
            standard.verify_signatures("1084", "1764000000", &signatures, b"{}"),
            Ok(())
        );
        assert_eq!(
            standard.verify_signatures(
                "1084",
                "1764000000",
                &signatures[..signatures.len() - good.len()],
                b"{}"
            ),
            Err(VerifyError::SignatureMismatch)
        );
    }

    #[test]
    fn standard_verifier_accepts_every_vector() {
        let vectors = vectors();
        for case in vectors["standard_webhooks"]["cases"].as_array().unwrap() {
            let verifier = StandardWebhooksVerifier::new(case["secret"].as_str().unwrap()).unwrap();
            let timestamp = case["timestamp"].as_u64().unwrap();
            let headers = standard_headers(
                case["id"].as_str().unwrap(),
                timestamp,
                case["expected"].as_str().unwrap(),
            );
            let body = case["body"].as_str().unwrap().as_bytes();
            assert_eq!(verifier.verify_at(&headers, body, timestamp), Ok(()));
        }
    }

    #[test]
    fn standard_verifier_rejects_every_must_reject_vector() {
        let vectors = vectors();
        for case in vectors["standard_webhooks"]["must_reject"]
            .as_array()
            .unwrap()
        {
            let verifier = StandardWebhooksVerifier::new(case["secret"].as_str().unwrap()).unwrap();
            let timestamp = case["timestamp"].as_u64().unwrap();
            let headers = standard_headers(
                case["id"].as_str().unwrap(),
                timestamp,
                case["signature"].as_str().unwrap(),
            );
            let body = case["body"].as_str().unwrap().as_bytes();
            assert_eq!(
                verifier.verify_at(&headers, body, timestamp),
                Err(VerifyError::SignatureMismatch),
                "{}",
                case["why"]
            );
        }
    }

    #[test]
    fn standard_verifier_enforces_the_timestamp_tolerance() {
        let vectors = vectors();
        let case = &vectors["standard_webhooks"]["cases"][0];
        let verifier = StandardWebhooksVerifier::new(case["secret"].as_str().unwrap()).unwrap();
        let timestamp = case["timestamp"].as_u64().unwrap();
        let headers = standard_headers(
            case["id"].as_str().unwrap(),
            timestamp,
            case["expected"].as_str().unwrap(),
        );
        let body = case["body"].as_str().unwrap().as_bytes();
        assert_eq!(verifier.verify_at(&headers, body, timestamp + 300), Ok(()));
        assert_eq!(verifier.verify_at(&headers, body, timestamp - 300), Ok(()));
        assert_eq!(
            verifier.verify_at(&headers, body, timestamp + 301),
            Err(VerifyError::TimestampOutOfTolerance)
        );
        assert_eq!(
            verifier.verify_at(&headers, body, timestamp - 301),
            Err(VerifyError::TimestampOutOfTolerance)
        );
        let strict = verifier.tolerance(Duration::from_secs(10));
        assert_eq!(
            strict.verify_at(&headers, body, timestamp + 11),
            Err(VerifyError::TimestampOutOfTolerance)
        );
    }

    #[test]
    fn standard_verifier_accepts_any_rotated_secret_and_any_listed_signature() {
        let vectors = vectors();
        let case = &vectors["standard_webhooks"]["cases"][0];
        let (id, timestamp) = (
            case["id"].as_str().unwrap(),
            case["timestamp"].as_u64().unwrap(),
        );
        let body = case["body"].as_str().unwrap().as_bytes();
        let listed = format!(
            "v2,abc v1,R3PTzyfHASBKHH98a7yexTwaJ4yNIcGhFQc1yuN+BPU= {}",
            case["expected"].as_str().unwrap()
        );
        let headers = standard_headers(id, timestamp, &listed);
        let rotated = StandardWebhooksVerifier::new("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
            .unwrap()
            .with_secret(case["secret"].as_str().unwrap())
            .unwrap();
        assert_eq!(rotated.verify_at(&headers, body, timestamp), Ok(()));
        let other_only =
            StandardWebhooksVerifier::new("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        assert_eq!(
            other_only.verify_at(&headers, body, timestamp),
            Err(VerifyError::SignatureMismatch)
        );
    }

    #[test]
    fn standard_verifier_reports_missing_and_malformed_headers() {
        let verifier =
            StandardWebhooksVerifier::new("whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD").unwrap();
        assert_eq!(
            verifier.verify_at(&HeaderMap::new(), b"", 0),
            Err(VerifyError::MissingHeader("webhook-id"))
        );
        let mut headers = standard_headers("1", 0, "v1,abc");
        headers.insert(WEBHOOK_TIMESTAMP, HeaderValue::from_static("yesterday"));
        assert_eq!(
            verifier.verify_at(&headers, b"", 0),
            Err(VerifyError::MalformedHeader("webhook-timestamp"))
        );
        assert!(StandardWebhooksVerifier::new("not-a-secret").is_err());
    }
}
