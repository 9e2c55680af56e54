//! End to end, what an async request costs until its signed notification comes out of a
//! `ChannelSink`, for JSON and text responses of 1 KiB and 64 KiB.
//!
//! `cargo bench --bench notification`
//!
//! The inner service is a `tower::service_fn` that answers a prebuilt body (`application/json` or
//! `text/plain`) behind `AsyncRequestLayer`. Each iteration sends one async request, takes its
//! `202` receipt and awaits `callbacks.recv()`: the timing covers dispatch, the spawned job
//! (reading the inner body), the notification JSON (embedding JSON as is, or escaping text into a
//! JSON string), signing, and the channel. One client, tokio current-thread runtime.
//!
//! `signed` has both schemes on (`signing_key` + one `standard_webhooks_secret`, i.e. two HMACs
//! over the notification); `unsigned` has none, so the difference is what signing costs here.
//! Throughput is reported in inner-response bytes/s.
//!
//! The store is `MemoryStore::new().max_retained(0)`: by default a `MemoryStore` keeps every
//! delivered notification, body included, for status queries (24 h, up to 100 000 of them) even
//! when no status endpoint is configured. With 64 KiB bodies that grows the process by ~87 KB per
//! iteration (gigabytes over a criterion run) and the timing becomes mostly the kernel zeroing
//! fresh pages. `json_signed_default_store/1KiB` keeps the default store, to show what that
//! bookkeeping costs per event where memory stays small.

use std::convert::Infallible;
use std::hint::black_box;
use std::time::Instant;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use tower::{Layer, Service, ServiceExt};
use tower_async_request::sink::{CallbackReceiver, ChannelSink};
use tower_async_request::store::MemoryStore;
use tower_async_request::{layer::RequestBody, AsyncRequestLayer};

/// A JSON document of exactly `len` bytes: an array of small objects, padded.
fn json_body(len: usize) -> Bytes {
    let mut out = String::from(r#"{"items":["#);
    let mut i = 0;
    loop {
        let item = format!(
            r#"{{"id":{i},"name":"document-{i:06}","size":{}}},"#,
            i * 37
        );
        if out.len() + item.len() + 32 > len {
            break;
        }
        out.push_str(&item);
        i += 1;
    }
    out.pop(); // the last comma
    out.push_str(r#"],"pad":""#);
    let pad = len - out.len() - 2;
    out.extend(std::iter::repeat_n('x', pad));
    out.push_str(r#""}"#);
    assert_eq!(out.len(), len);
    serde_json::from_str::<serde_json::Value>(&out).expect("valid JSON");
    Bytes::from(out)
}

/// Plain text of exactly `len` bytes: lines with quotes and newlines, which JSON must escape.
fn text_body(len: usize) -> Bytes {
    let line = "Copied \"/a/report.pdf\" to \"/b/report.pdf\"\tin 12 ms\n";
    let text: String = line.chars().cycle().take(len).collect();
    assert_eq!(text.len(), len);
    Bytes::from(text)
}

/// The inner service: answers `body` with `content_type`, at once.
fn inner(
    content_type: &'static str,
    body: Bytes,
) -> impl Service<
    Request<RequestBody<Full<Bytes>>>,
    Response = Response<Full<Bytes>>,
    Error = Infallible,
    Future: Send + 'static,
> + Clone
       + Send
       + 'static {
    tower::service_fn(move |_request: Request<RequestBody<Full<Bytes>>>| {
        let body = body.clone();
        async move {
            Ok::<_, Infallible>(
                Response::builder()
                    .header(http::header::CONTENT_TYPE, content_type)
                    .body(Full::new(body))
                    .unwrap(),
            )
        }
    })
}

fn layer(signed: bool, retain: bool, sink: ChannelSink) -> AsyncRequestLayer {
    let mut builder = AsyncRequestLayer::builder()
        .instance_id(30)
        .default_callback_url("https://hooks.example.com/in")
        .max_in_flight(1 << 24)
        .sink(sink);
    if !retain {
        builder = builder.store(MemoryStore::new().max_retained(0));
    }
    if signed {
        builder = builder
            .signing_key("event-signature-key")
            .standard_webhooks_secret("whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD");
    }
    builder.build().unwrap()
}

fn request() -> Request<Full<Bytes>> {
    Request::post("/work")
        .header("Elements-Async-Request", "true")
        .body(Full::new(Bytes::from_static(br#"{"from":"/a","to":"/b"}"#)))
        .unwrap()
}

/// One async request until its callback is off the channel; returns the callback.
async fn round_trip<S>(service: &mut S, callbacks: &mut CallbackReceiver) -> Request<Bytes>
where
    S: Service<
        Request<Full<Bytes>>,
        Response = Response<tower_async_request::layer::ResponseBody<Full<Bytes>>>,
    >,
    S::Error: std::fmt::Debug,
{
    let receipt = service
        .ready()
        .await
        .unwrap()
        .call(request())
        .await
        .unwrap();
    debug_assert_eq!(receipt.status(), StatusCode::ACCEPTED);
    black_box(receipt);
    callbacks.recv().await.expect("a callback")
}

fn notification(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut group = c.benchmark_group("notification");

    for (kind, content_type) in [("json", "application/json"), ("text", "text/plain")] {
        for (size, len) in [("1KiB", 1024), ("64KiB", 64 * 1024)] {
            let body = match kind {
                "json" => json_body(len),
                _ => text_body(len),
            };
            group.throughput(Throughput::Bytes(len as u64));
            let mut variants = vec![("signed", true, false), ("unsigned", false, false)];
            if kind == "json" && len == 1024 {
                variants.push(("signed_default_store", true, true));
            }
            for (name, signed, retain) in variants {
                let (sink, mut callbacks) = ChannelSink::new(16);
                let mut service = runtime.block_on(async {
                    layer(signed, retain, sink).layer(inner(content_type, body.clone()))
                });

                // Check one notification before timing: it embeds the body as expected.
                let callback = runtime.block_on(round_trip(&mut service, &mut callbacks));
                let sent: serde_json::Value = serde_json::from_slice(callback.body()).unwrap();
                match kind {
                    "json" => assert!(sent["response"].is_object()),
                    _ => assert_eq!(sent["response"].as_str().unwrap().as_bytes(), &body[..]),
                }
                assert_eq!(
                    callback
                        .headers()
                        .contains_key("elements-webhook-signature"),
                    signed
                );

                group.bench_function(BenchmarkId::new(format!("{kind}_{name}"), size), |b| {
                    b.iter_custom(|iters| {
                        runtime.block_on(async {
                            let start = Instant::now();
                            for _ in 0..iters {
                                black_box(round_trip(&mut service, &mut callbacks).await);
                            }
                            start.elapsed()
                        })
                    })
                });
            }
        }
    }
    group.finish();
}

criterion_group!(benches, notification);
criterion_main!(benches);
