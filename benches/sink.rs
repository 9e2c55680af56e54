//! One callback through `HttpSink`, next to the same POST on a bare hyper HTTP/1.1 connection:
//! what the sink's pool, address handling and answer reading cost on top of hyper itself.
//!
//! `cargo bench --bench sink`
//!
//! A receiver (axum, `204 No Content`) on 127.0.0.1:0 and the sender share one tokio
//! current-thread runtime, so each figure is the whole round trip on one core, receiver included;
//! the difference between the two functions is the sink's own cost.
//!
//! - `hyper_conn`: `hyper::client::conn::http1::SendRequest` on one kept-alive connection, the
//!   request already in origin form with its `Host` header: the least any HTTP/1.1 client can do.
//! - `http_sink`: `HttpSink::send` with the absolute callback URL, as the layer calls it (pooled
//!   connection, `Host` and origin form set by the sink, up to 4 KiB of the answer read).
//!
//! Both post the same 1.3 KB JSON body with the headers a signed notification carries.

use std::hint::black_box;

use axum::{routing::post, Router};
use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Runtime;
use tower_async_request::sink::{CallbackSink, HttpSink};

fn notification() -> Bytes {
    let mut body = br#"{"eventId":1028,"instanceId":30,"eventStatus":"completed","statusCode":200,"response":{"data":""#.to_vec();
    body.resize(body.len() + 1200, b'x');
    body.extend_from_slice(br#""},"notificationId":1084}"#);
    Bytes::from(body)
}

fn request<B>(uri: &str, host: Option<&str>, body: B) -> Request<B> {
    let mut builder = Request::post(uri)
        .header("content-type", "application/json")
        .header("user-agent", "tower-async-request")
        .header("elements-event-id", "1028")
        .header(
            "elements-webhook-signature",
            "sha256=Yw2ZlJ7c9vO9wWJ0ZqGk4s3l0QfQ1m6mJ3bX2bX3c4E=",
        )
        .header("webhook-id", "1084")
        .header("webhook-timestamp", "1764400000")
        .header(
            "webhook-signature",
            "v1,K5oZfzN95Z9UVu1EsfQmfVNQhnkZ2pj9o9NDN/H/pI4=",
        );
    if let Some(host) = host {
        builder = builder.header("host", host);
    }
    builder.body(body).unwrap()
}

fn bench(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let addr = runtime.block_on(async {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let receiver = Router::new().route("/hooks/in", post(|| async { StatusCode::NO_CONTENT }));
        tokio::spawn(async move { axum::serve(listener, receiver).await.unwrap() });
        addr
    });
    let body = notification();
    let url = format!("http://{addr}/hooks/in");
    let host = addr.to_string();

    let mut group = c.benchmark_group("callback");
    group.throughput(Throughput::Elements(1));

    let mut sender = runtime.block_on(async {
        let stream = TcpStream::connect(addr).await.unwrap();
        stream.set_nodelay(true).unwrap();
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(connection);
        sender
    });
    group.bench_function("hyper_conn", |b| {
        b.iter(|| run(&runtime, hyper_once(&mut sender, &host, body.clone())))
    });

    let sink = HttpSink::new().allow_private(true);
    group.bench_function("http_sink", |b| {
        b.iter(|| {
            run(&runtime, async {
                let answer = sink.send(request(&url, None, body.clone())).await.unwrap();
                assert_eq!(answer.status(), StatusCode::NO_CONTENT);
                black_box(answer);
            })
        })
    });
    group.finish();
}

async fn hyper_once(
    sender: &mut hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    host: &str,
    body: Bytes,
) {
    sender.ready().await.unwrap();
    let answer = sender
        .send_request(request("/hooks/in", Some(host), Full::new(body)))
        .await
        .unwrap();
    assert_eq!(answer.status(), StatusCode::NO_CONTENT);
    black_box(answer.into_body().collect().await.unwrap());
}

fn run<F: std::future::Future>(runtime: &Runtime, future: F) -> F::Output {
    runtime.block_on(future)
}

criterion_group!(benches, bench);
criterion_main!(benches);
