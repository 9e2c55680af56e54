//! `Idempotency-Key` (draft-ietf-httpapi-idempotency-key-header): the key a client gives an async
//! request so that sending it again never starts the work twice. This reads the key (a
//! structured-field string, or a bare token as Stripe's clients send) and takes the request's
//! fingerprint; the [event](crate::event) stage claims the key with the accepted event.

use http::request::Parts;
use http::HeaderMap;
use sha2::{Digest, Sha256};

use crate::request::refusal::{Refusal, RefusalCode};
use crate::wire::header::IDEMPOTENCY_KEY;

/// The longest key taken, in characters.
pub const MAX_IDEMPOTENCY_KEY_LEN: usize = 255;

/// The request's idempotency key: `None` without one; a refusal (`400 invalid_idempotency_key`)
/// for a key that is empty, longer than [`MAX_IDEMPOTENCY_KEY_LEN`], not visible ASCII, not a
/// well-formed string, or given twice.
pub(crate) fn key_of(headers: &HeaderMap) -> Result<Option<String>, Refusal> {
    let mut values = headers.get_all(IDEMPOTENCY_KEY).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(invalid("is given more than once"));
    }
    let text = value.as_bytes();
    let key = match text {
        [b'"', inner @ .., b'"'] => unquote(inner)?,
        [b'"', ..] => return Err(invalid("is a string without its closing quote")),
        _ => text.to_vec(),
    };
    if key.is_empty() {
        return Err(invalid("is empty"));
    }
    if key.len() > MAX_IDEMPOTENCY_KEY_LEN {
        return Err(invalid(&format!(
            "is longer than {MAX_IDEMPOTENCY_KEY_LEN} characters"
        )));
    }
    if !key.iter().all(u8::is_ascii_graphic) || key.contains(&b'"') && text[0] != b'"' {
        return Err(invalid("may hold only visible ASCII characters"));
    }
    Ok(Some(
        String::from_utf8(key).expect("visible ASCII is UTF-8"),
    ))
}

/// A structured-field string's content: `\"` and `\\` are its only escapes.
fn unquote(inner: &[u8]) -> Result<Vec<u8>, Refusal> {
    let mut key = Vec::with_capacity(inner.len());
    let mut bytes = inner.iter();
    while let Some(&byte) = bytes.next() {
        match byte {
            b'\\' => match bytes.next() {
                Some(&escaped @ (b'"' | b'\\')) => key.push(escaped),
                _ => return Err(invalid("has a backslash that escapes neither \" nor \\")),
            },
            b'"' => return Err(invalid("has a quote inside the string that is not escaped")),
            _ => key.push(byte),
        }
    }
    Ok(key)
}

fn invalid(why: &str) -> Refusal {
    Refusal::new(
        RefusalCode::InvalidIdempotencyKey,
        format!(
            "The Idempotency-Key header {why}: send one key of 1 to {MAX_IDEMPOTENCY_KEY_LEN} \
             visible ASCII characters, as a string (\"…\") or a bare token."
        ),
    )
}

/// The request's fingerprint: SHA-256 over its method, path and query, `Content-Type`, the
/// callback URL it names (if any) and its body, each with its length before it.
pub(crate) fn fingerprint(parts: &Parts, callback: Option<&str>, body: &[u8]) -> [u8; 32] {
    let mut hash = Sha256::new();
    let mut part = |bytes: &[u8]| {
        hash.update((bytes.len() as u64).to_be_bytes());
        hash.update(bytes);
    };
    part(parts.method.as_str().as_bytes());
    part(
        parts
            .uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .as_bytes(),
    );
    part(
        parts
            .headers
            .get(http::header::CONTENT_TYPE)
            .map_or(&b""[..], |v| v.as_bytes()),
    );
    part(callback.unwrap_or("").as_bytes());
    part(body);
    hash.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn key(values: &[&[u8]]) -> Result<Option<String>, RefusalCode> {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append(IDEMPOTENCY_KEY, HeaderValue::from_bytes(value).unwrap());
        }
        key_of(&headers).map_err(|refusal| refusal.code)
    }

    #[test]
    fn strings_and_bare_tokens_are_keys() {
        assert_eq!(key(&[]), Ok(None));
        let uuid = "8e03978e-40d5-43e8-bc93-6894a57f9324";
        assert_eq!(
            key(&[format!("\"{uuid}\"").as_bytes()]),
            Ok(Some(uuid.into()))
        );
        assert_eq!(key(&[uuid.as_bytes()]), Ok(Some(uuid.into())));
        assert_eq!(key(&[br#""a\"b\\c""#]), Ok(Some(r#"a"b\c"#.into())));
        let longest = "k".repeat(MAX_IDEMPOTENCY_KEY_LEN);
        assert_eq!(key(&[longest.as_bytes()]), Ok(Some(longest.clone())));
    }

    #[test]
    fn every_malformed_spelling_is_refused() {
        let too_long = "k".repeat(MAX_IDEMPOTENCY_KEY_LEN + 1);
        let quoted_too_long = format!("\"{too_long}\"");
        for bad in [
            &b""[..],
            b"\"\"",
            too_long.as_bytes(),
            quoted_too_long.as_bytes(),
            b"two words",
            b"\"two words\"",
            b"tab\there",
            b"caf\xc3\xa9",
            b"\"unclosed",
            b"\"in\"side\"",
            b"\"bad\\escape\"",
            b"bare\"quote",
        ] {
            assert_eq!(
                key(&[bad]),
                Err(RefusalCode::InvalidIdempotencyKey),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        assert_eq!(
            key(&[b"one", b"one"]),
            Err(RefusalCode::InvalidIdempotencyKey),
            "given twice"
        );
    }

    #[test]
    fn the_fingerprint_covers_each_part() {
        let parts = |method: &str, uri: &str, content_type: &str| {
            let mut request = http::Request::builder().method(method).uri(uri);
            if !content_type.is_empty() {
                request = request.header(http::header::CONTENT_TYPE, content_type);
            }
            request.body(()).unwrap().into_parts().0
        };
        let base = fingerprint(&parts("POST", "/copy?a=1", "application/json"), None, b"{}");
        assert_eq!(
            base,
            fingerprint(&parts("POST", "/copy?a=1", "application/json"), None, b"{}")
        );
        for other in [
            fingerprint(&parts("PUT", "/copy?a=1", "application/json"), None, b"{}"),
            fingerprint(&parts("POST", "/copy?a=2", "application/json"), None, b"{}"),
            fingerprint(&parts("POST", "/copy?a=1", "text/plain"), None, b"{}"),
            fingerprint(&parts("POST", "/copy?a=1", ""), None, b"{}"),
            fingerprint(
                &parts("POST", "/copy?a=1", "application/json"),
                Some("https://hooks.example.com/in"),
                b"{}",
            ),
            fingerprint(
                &parts("POST", "/copy?a=1", "application/json"),
                None,
                b"{ }",
            ),
        ] {
            assert_ne!(base, other);
        }
    }
}
