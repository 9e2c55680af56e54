//! What signing a notification costs, for 1 KiB and 64 KiB bodies.
//!
//! `cargo bench --bench sign`
//!
//! The crate's signer is private, so it is measured through its public mirror image in
//! `tower_async_request::verify`, which does the same keyed HMAC-SHA256 over the same bytes:
//!
//! - `raw_hmac`: the baseline, HMAC-SHA256 of the body with `hmac`/`sha2` directly; the keyed state
//!   is made once, outside the loop, and cloned per iteration (as the crate does).
//! - `elements_verify`: `ElementsVerifier::verify_signature` — one keyed HMAC over the body, a
//!   base64 decode and a constant-time compare: the Elements scheme's number.
//! - `standard_verify`: `StandardWebhooksVerifier::verify_signatures(id, ts, sigs, body)` — one
//!   keyed HMAC over `id.ts.body`, base64 decode, compare: the Standard Webhooks scheme's number.
//!
//! The valid signatures are computed once with `hmac` directly, outside the timed loop; every
//! timed call is checked to succeed. Throughput is reported in body bytes/s.
//!
//! Last, each scheme and its raw HMAC take turns (see `support::interleaved`), and the ratios are
//! printed: against raw HMAC of the body for the Elements scheme, and of the very bytes the
//! Standard Webhooks scheme signs (`{id}.{timestamp}.{body}`) for that one.

use std::hint::black_box;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use tower_async_request::verify::{ElementsVerifier, StandardWebhooksVerifier};

mod support;
use support::interleaved;

type HmacSha256 = Hmac<Sha256>;

const ELEMENTS_KEY: &str = "event-signature-key";
const WHSEC: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
const WEBHOOK_ID: &str = "1084";
const WEBHOOK_TIMESTAMP: &str = "1764000000";

/// A notification-like JSON body of exactly `len` bytes.
fn body(len: usize) -> Vec<u8> {
    let head = br#"{"eventId":1028,"instanceId":30,"eventStatus":"completed","statusCode":200,"response":{"data":""#;
    let tail = br#""},"notificationId":1084}"#;
    assert!(len > head.len() + tail.len());
    let mut body = Vec::with_capacity(len);
    body.extend_from_slice(head);
    let filler = len - head.len() - tail.len();
    body.extend((0..filler).map(|i| b"abcdefghijklmnopqrstuvwxyz0123456789"[i % 36]));
    body.extend_from_slice(tail);
    assert_eq!(body.len(), len);
    body
}

fn keyed(key: &[u8]) -> HmacSha256 {
    HmacSha256::new_from_slice(key).unwrap()
}

/// The keyed HMAC states of both schemes, and the public verifiers made from the same secrets.
struct Keys {
    elements_key: HmacSha256,
    standard_key: HmacSha256,
    elements: ElementsVerifier,
    standard: StandardWebhooksVerifier,
}

fn keys() -> Keys {
    Keys {
        elements_key: keyed(ELEMENTS_KEY.as_bytes()),
        standard_key: keyed(
            &STANDARD
                .decode(WHSEC.strip_prefix("whsec_").unwrap())
                .unwrap(),
        ),
        elements: ElementsVerifier::new(ELEMENTS_KEY),
        standard: StandardWebhooksVerifier::new(WHSEC).unwrap(),
    }
}

/// Runs `f` `n` times: one batch for [`interleaved`].
fn repeat(n: u32, mut f: impl FnMut()) -> impl FnMut() {
    move || (0..n).for_each(|_| f())
}

fn sign(c: &mut Criterion) {
    let Keys {
        elements_key,
        standard_key,
        elements,
        standard,
    } = keys();

    let mut group = c.benchmark_group("sign");
    for (label, len) in [("1KiB", 1024), ("64KiB", 64 * 1024)] {
        let body = body(len);

        // The signatures the sender would put on this body, made with `hmac` directly.
        let mut mac = elements_key.clone();
        mac.update(&body);
        let elements_signature = format!("sha256={}", STANDARD.encode(mac.finalize().into_bytes()));
        let mut mac = standard_key.clone();
        mac.update(WEBHOOK_ID.as_bytes());
        mac.update(b".");
        mac.update(WEBHOOK_TIMESTAMP.as_bytes());
        mac.update(b".");
        mac.update(&body);
        let standard_signature = format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()));
        assert_eq!(
            elements.verify_signature(elements_signature.as_bytes(), &body),
            Ok(())
        );
        assert_eq!(
            standard.verify_signatures(WEBHOOK_ID, WEBHOOK_TIMESTAMP, &standard_signature, &body),
            Ok(())
        );

        group.throughput(Throughput::Bytes(len as u64));
        group.bench_with_input(BenchmarkId::new("raw_hmac", label), &body, |b, body| {
            b.iter(|| {
                let mut mac = elements_key.clone();
                mac.update(black_box(body));
                mac.finalize().into_bytes()
            })
        });
        group.bench_with_input(
            BenchmarkId::new("elements_verify", label),
            &body,
            |b, body| {
                b.iter(|| {
                    elements
                        .verify_signature(black_box(elements_signature.as_bytes()), black_box(body))
                        .unwrap()
                })
            },
        );
        group.bench_with_input(
            BenchmarkId::new("standard_verify", label),
            &body,
            |b, body| {
                b.iter(|| {
                    standard
                        .verify_signatures(
                            black_box(WEBHOOK_ID),
                            black_box(WEBHOOK_TIMESTAMP),
                            black_box(&standard_signature),
                            black_box(body),
                        )
                        .unwrap()
                })
            },
        );
    }
    group.finish();
}

fn sign_interleaved(_: &mut Criterion) {
    let Keys {
        elements_key,
        standard_key,
        elements,
        standard,
    } = keys();
    let raw = |key: &HmacSha256, bytes: &[u8]| {
        let mut mac = key.clone();
        mac.update(black_box(bytes));
        mac.finalize().into_bytes()
    };
    for (label, len, batch) in [("1KiB", 1024, 2_000), ("64KiB", 64 * 1024, 40)] {
        let body = body(len);
        let prefixed = [
            format!("{WEBHOOK_ID}.{WEBHOOK_TIMESTAMP}.").as_bytes(),
            &body,
        ]
        .concat();
        let elements_signature = format!("sha256={}", STANDARD.encode(raw(&elements_key, &body)));
        let standard_signature = format!("v1,{}", STANDARD.encode(raw(&standard_key, &prefixed)));
        let elements_ratio = interleaved(
            repeat(batch, || {
                black_box(raw(&elements_key, &body));
            }),
            repeat(batch, || {
                let signature = black_box(elements_signature.as_bytes());
                elements
                    .verify_signature(signature, black_box(&body))
                    .unwrap()
            }),
        );
        let standard_ratio = interleaved(
            repeat(batch, || {
                black_box(raw(&standard_key, &prefixed));
            }),
            repeat(batch, || {
                let signatures = black_box(standard_signature.as_str());
                standard
                    .verify_signatures(WEBHOOK_ID, WEBHOOK_TIMESTAMP, signatures, black_box(&body))
                    .unwrap()
            }),
        );
        println!("sign/interleaved/elements/{label}: verify \u{f7} raw HMAC = {elements_ratio}");
        println!("sign/interleaved/standard/{label}: verify \u{f7} raw HMAC = {standard_ratio}");
    }
}

criterion_group!(benches, sign, sign_interleaved);
criterion_main!(benches);
