//! Signing notifications (sender side). Receivers verify with [`crate::verify`].
//!
//! Two schemes, either or both:
//!
//! - **Elements**: `Elements-Webhook-Signature: sha256=<base64(HMAC-SHA256(key, body))>`.
//! - **Standard Webhooks**: `webhook-id`, `webhook-timestamp` and
//!   `webhook-signature: v1,<base64(HMAC-SHA256(secret, "id.timestamp.body"))>`, one signature per
//!   configured secret, space-separated, so receivers can rotate secrets.
//!
//! Keys are absorbed into HMAC state once, at `build()`; each signature clones that state instead
//! of re-keying.

use std::fmt;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::wire::header::{
    HeaderText, ELEMENTS_WEBHOOK_SIGNATURE, WEBHOOK_ID, WEBHOOK_SIGNATURE, WEBHOOK_TIMESTAMP,
};
use crate::wire::ids::NotificationId;

pub(crate) type HmacSha256 = Hmac<Sha256>;

/// Prefix of a Standard Webhooks secret.
pub(crate) const WHSEC_PREFIX: &str = "whsec_";

pub(crate) fn keyed(key: &[u8]) -> HmacSha256 {
    HmacSha256::new_from_slice(key).expect("HMAC accepts keys of any length")
}

/// Decodes a `whsec_<base64>` secret into its key bytes.
pub(crate) fn decode_whsec(secret: &str) -> Result<Vec<u8>, &'static str> {
    let encoded = secret
        .strip_prefix(WHSEC_PREFIX)
        .ok_or("a Standard Webhooks secret must start with \"whsec_\"")?;
    let key = STANDARD
        .decode(encoded)
        .map_err(|_| "a Standard Webhooks secret must be standard base64 after \"whsec_\"")?;
    if key.is_empty() {
        return Err("a Standard Webhooks secret must not be empty");
    }
    Ok(key)
}

/// Signs notification bodies with the configured keys.
#[derive(Clone, Default)]
pub(crate) struct Signer {
    elements: Option<HmacSha256>,
    standard: Vec<HmacSha256>,
}

impl fmt::Debug for Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Signer")
            .field(
                "elements_key",
                &self.elements.as_ref().map(|_| "<redacted>"),
            )
            .field("standard_webhooks_secrets", &self.standard.len())
            .finish()
    }
}

impl Signer {
    pub(crate) fn new(elements_key: Option<&[u8]>, standard_keys: &[Vec<u8>]) -> Self {
        Self {
            elements: elements_key.map(keyed),
            standard: standard_keys.iter().map(|key| keyed(key)).collect(),
        }
    }

    /// Bytes of header text [`sign`](Self::sign) writes at most.
    pub(crate) fn text_len(&self) -> usize {
        let elements = if self.elements.is_some() {
            ELEMENTS_PREFIX.len() + TAG_BASE64_LEN
        } else {
            0
        };
        // Two decimal u64s (id, timestamp) and "v1," and a tag per secret, a space between.
        let standard = match self.standard.len() {
            0 => 0,
            n => 2 * 20 + n * (3 + TAG_BASE64_LEN + 1) - 1,
        };
        elements + standard
    }

    /// Writes the signature headers of every configured scheme for one attempt.
    pub(crate) fn sign(
        &self,
        headers: &mut HeaderText,
        notification_id: NotificationId,
        timestamp: u64,
        body: &[u8],
    ) {
        if let Some(key) = &self.elements {
            let mut mac = key.clone();
            mac.update(body);
            let text = headers.text();
            text.push_str(ELEMENTS_PREFIX);
            STANDARD.encode_string(mac.finalize().into_bytes(), text);
            headers.end(ELEMENTS_WEBHOOK_SIGNATURE);
        }
        if !self.standard.is_empty() {
            let id = headers.decimal(WEBHOOK_ID, notification_id.get());
            let timestamp = headers.decimal(WEBHOOK_TIMESTAMP, timestamp);
            for (i, key) in self.standard.iter().enumerate() {
                let tag = standard_mac(
                    key,
                    headers.get(id.clone()),
                    headers.get(timestamp.clone()),
                    body,
                );
                let text = headers.text();
                if i > 0 {
                    text.push(' ');
                }
                text.push_str("v1,");
                STANDARD.encode_string(tag, text);
            }
            headers.end(WEBHOOK_SIGNATURE);
        }
    }
}

pub(crate) const ELEMENTS_PREFIX: &str = "sha256=";
/// Characters in the standard base64 of a 32-byte tag.
const TAG_BASE64_LEN: usize = 44;

pub(crate) fn standard_mac(key: &HmacSha256, id: &str, timestamp: &str, body: &[u8]) -> [u8; 32] {
    let mut mac = key.clone();
    standard_update(&mut mac, id, timestamp, body);
    mac.finalize().into_bytes().into()
}

pub(crate) fn standard_update(mac: &mut HmacSha256, id: &str, timestamp: &str, body: &[u8]) {
    // `{id}.{timestamp}.` in one call when it is short (it always is for our own ids): every call
    // to `update` has a fixed cost, about that of hashing a few dozen bytes.
    let mut prefix = [0; 64];
    let len = id.len() + timestamp.len() + 2;
    if len <= prefix.len() {
        let (id_part, rest) = prefix.split_at_mut(id.len());
        id_part.copy_from_slice(id.as_bytes());
        rest[0] = b'.';
        rest[1..=timestamp.len()].copy_from_slice(timestamp.as_bytes());
        rest[timestamp.len() + 1] = b'.';
        mac.update(&prefix[..len]);
    } else {
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.as_bytes());
        mac.update(b".");
    }
    mac.update(body);
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderMap;
    use serde_json::Value;

    /// The headers `signer` writes for one attempt, and checks it wrote no more than it said.
    pub(super) fn signed(
        signer: &Signer,
        notification_id: u64,
        timestamp: u64,
        body: &[u8],
    ) -> HeaderMap {
        let mut text = HeaderText::with_capacity(signer.text_len());
        signer.sign(
            &mut text,
            NotificationId::new(notification_id),
            timestamp,
            body,
        );
        let mut headers = HeaderMap::new();
        text.insert_into(&mut headers);
        let written: usize = headers.values().map(|value| value.len()).sum();
        assert!(
            written <= signer.text_len(),
            "{written} > {}",
            signer.text_len()
        );
        headers
    }

    fn vectors() -> Value {
        serde_json::from_str(include_str!("../../tests/data/signatures.json")).unwrap()
    }

    #[test]
    fn elements_scheme_matches_every_vector() {
        let vectors = vectors();
        for case in vectors["elements_webhook_signature"]["cases"]
            .as_array()
            .unwrap()
        {
            let signer = Signer::new(Some(case["key"].as_str().unwrap().as_bytes()), &[]);
            let headers = signed(&signer, 1, 0, case["body"].as_str().unwrap().as_bytes());
            assert_eq!(
                headers[ELEMENTS_WEBHOOK_SIGNATURE],
                case["expected"].as_str().unwrap()
            );
            assert!(!headers.contains_key(WEBHOOK_SIGNATURE));
        }
    }

    #[test]
    fn the_standard_prefix_is_signed_the_same_whatever_its_length() {
        // Short prefixes go to the MAC in one piece, long ones in four: same bytes, same tag.
        let key = keyed(b"secret");
        for id in [
            "",
            "1084",
            "msg_2KWPBgLlAfxdpx2AI54pPJ85f4W",
            &"x".repeat(61),
            &"z".repeat(52),
            &"y".repeat(300),
        ] {
            for timestamp in ["", "1764000000"] {
                let mut whole = key.clone();
                whole.update(format!("{id}.{timestamp}.").as_bytes());
                whole.update(b"{}");
                let expected: [u8; 32] = whole.finalize().into_bytes().into();
                assert_eq!(
                    standard_mac(&key, id, timestamp, b"{}"),
                    expected,
                    "{} + {}",
                    id.len(),
                    timestamp.len()
                );
            }
        }
    }

    #[test]
    fn standard_scheme_matches_every_vector() {
        let vectors = vectors();
        for case in vectors["standard_webhooks"]["cases"].as_array().unwrap() {
            let key = decode_whsec(case["secret"].as_str().unwrap()).unwrap();
            let mac = standard_mac(
                &keyed(&key),
                case["id"].as_str().unwrap(),
                &case["timestamp"].as_u64().unwrap().to_string(),
                case["body"].as_str().unwrap().as_bytes(),
            );
            let mut expected = String::from("v1,");
            STANDARD.encode_string(mac, &mut expected);
            assert_eq!(expected, case["expected"].as_str().unwrap());
        }
    }

    #[test]
    fn both_schemes_and_rotation_sign_one_attempt() {
        let vectors = vectors();
        let case = &vectors["standard_webhooks"]["cases"][1];
        let secret = decode_whsec(case["secret"].as_str().unwrap()).unwrap();
        let other = decode_whsec("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let signer = Signer::new(Some(b"event-signature-key"), &[secret, other]);
        let body = case["body"].as_str().unwrap().as_bytes();
        let headers = signed(&signer, 1084, 1_764_000_000, body);
        assert_eq!(headers[WEBHOOK_ID], "1084");
        assert_eq!(headers[WEBHOOK_TIMESTAMP], "1764000000");
        let signatures = headers[WEBHOOK_SIGNATURE].to_str().unwrap();
        let parts: Vec<&str> = signatures.split(' ').collect();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0], case["expected"].as_str().unwrap());
        assert_ne!(parts[1], parts[0]);
        assert_eq!(
            headers[ELEMENTS_WEBHOOK_SIGNATURE],
            vectors["elements_webhook_signature"]["cases"][1]["expected"]
                .as_str()
                .unwrap()
        );
    }

    #[test]
    fn malformed_secrets_are_refused() {
        assert!(decode_whsec("C2FVsBQIhrscChlQIMV+b5sSYspob7oD").is_err());
        assert!(decode_whsec("whsec_not base64!").is_err());
        assert!(decode_whsec("whsec_").is_err());
    }

    #[test]
    fn debug_never_shows_keys() {
        let signer = Signer::new(Some(b"super-secret-key"), &[b"another-secret".to_vec()]);
        let text = format!("{signer:?}");
        assert!(!text.contains("super-secret"));
        assert!(text.contains("redacted"));
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use crate::receive::verify::{ElementsVerifier, StandardWebhooksVerifier};
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn what_is_signed_verifies_and_any_change_does_not(
            key in proptest::collection::vec(any::<u8>(), 0..64),
            secret in proptest::collection::vec(any::<u8>(), 1..64),
            body in proptest::collection::vec(any::<u8>(), 0..256),
            id: u64,
            timestamp: u32,
            flip: usize,
        ) {
            let signer = Signer::new(Some(&key), std::slice::from_ref(&secret));
            let headers = super::tests::signed(&signer, id, u64::from(timestamp), &body);
            let elements = ElementsVerifier::new(&key);
            let whsec = format!("whsec_{}", STANDARD.encode(&secret));
            let standard = StandardWebhooksVerifier::new(&whsec).unwrap();
            prop_assert!(elements.verify(&headers, &body).is_ok());
            prop_assert!(standard.verify_at(&headers, &body, u64::from(timestamp)).is_ok());

            let mut tampered = body.clone();
            if tampered.is_empty() {
                tampered.push(0);
            } else {
                let i = flip % tampered.len();
                tampered[i] ^= 1;
            }
            prop_assert!(elements.verify(&headers, &tampered).is_err());
            prop_assert!(standard.verify_at(&headers, &tampered, u64::from(timestamp)).is_err());
        }
    }
}
