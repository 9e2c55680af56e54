//! `HttpSink`'s connect-time address guard: however a loopback target is spelled or resolved, an
//! untrusted callback never reaches the receiver listening there.

mod support;

use std::time::Duration;

use bytes::Bytes;
use support::Receiver;
use tower_async_request::sink::{CallbackSink, HttpSink, SinkErrorKind, TrustedTarget};

fn callback(url: &str) -> http::Request<Bytes> {
    http::Request::post(url)
        .body(Bytes::from_static(b"{}"))
        .unwrap()
}

#[tokio::test]
async fn loopback_in_any_spelling_is_refused_at_connect_time() {
    let mut receiver = Receiver::start(vec![]).await;
    let port = receiver.addr.port();
    let sink = HttpSink::new();
    for host in [
        "127.0.0.1".to_owned(),
        "localhost".to_owned(),
        "2130706433".to_owned(),
        "0x7f.1".to_owned(),
        "0177.0.0.1".to_owned(),
        "127.1".to_owned(),
        "[::ffff:127.0.0.1]".to_owned(),
        "LOCALHOST".to_owned(),
    ] {
        let url = format!("http://{host}:{port}/hook");
        let error = sink.send(callback(&url)).await.unwrap_err();
        assert_eq!(error.kind(), SinkErrorKind::Forbidden, "{url}: {error}");
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        receiver.hits.try_recv().is_err(),
        "the loopback receiver was reached"
    );
}

#[tokio::test]
async fn a_refusal_says_what_the_name_resolves_to_and_which_setting_allows_it() {
    let receiver = Receiver::start(vec![]).await;
    let port = receiver.addr.port();
    let sink = HttpSink::new();
    // What a dead letter's last error says: the sink error's text.
    let error = sink
        .send(callback(&format!("http://localhost:{port}/hook")))
        .await
        .unwrap_err();
    assert_eq!(error.kind(), SinkErrorKind::Forbidden);
    let text = error.to_string();
    assert!(text.contains("localhost resolves to "), "{text}");
    assert!(text.contains("non-public address"), "{text}");
    assert!(text.contains("127.0.0.1"), "{text}");
    assert!(
        text.contains("allow_private_callbacks (--allow-private-callbacks for the proxy)"),
        "{text}"
    );
    assert!(!text.contains("dns error"), "{text}");
    // A literal says so too.
    let error = sink
        .send(callback(&format!("http://127.0.0.1:{port}/hook")))
        .await
        .unwrap_err();
    let text = error.to_string();
    assert!(text.contains("127.0.0.1 is not a public address"), "{text}");
    assert!(text.contains("allow_private_callbacks"), "{text}");
}

#[tokio::test]
async fn trusted_targets_and_allow_private_reach_loopback() {
    let mut receiver = Receiver::start(vec![]).await;
    let mut trusted = callback(&receiver.url());
    trusted.extensions_mut().insert(TrustedTarget);
    assert_eq!(HttpSink::new().send(trusted).await.unwrap().status(), 200);
    receiver.next().await;

    let url = format!("http://localhost:{}/hook", receiver.addr.port());
    let sink = HttpSink::new().allow_private(true);
    assert_eq!(sink.send(callback(&url)).await.unwrap().status(), 200);
    receiver.next().await;
}

#[tokio::test]
async fn an_allow_listed_network_opens_only_itself() {
    let mut receiver = Receiver::start(vec![]).await;
    let url = receiver.url();
    let other = HttpSink::new().allow_network("10.0.0.0/8".parse().unwrap());
    let error = other.send(callback(&url)).await.unwrap_err();
    assert_eq!(error.kind(), SinkErrorKind::Forbidden);

    let sink = HttpSink::new().allow_network("127.0.0.0/8".parse().unwrap());
    assert_eq!(sink.send(callback(&url)).await.unwrap().status(), 200);
    receiver.next().await;
}

#[tokio::test]
async fn the_layer_delivers_to_an_allow_listed_network_through_its_default_sink() {
    use axum::{body::Body, routing::post, Router};
    use tower::ServiceExt;
    use tower_async_request::AsyncRequestLayer;

    let mut receiver = Receiver::start(vec![]).await;
    let layer = AsyncRequestLayer::builder()
        .allow_callback_network("127.0.0.1")
        .build()
        .unwrap();
    let app = Router::new()
        .route("/work", post(|| async { "done" }))
        .layer(layer);
    let request = http::Request::post("/work")
        .header("Elements-Async-Request", "true")
        .header("Elements-Async-Callback-Url", receiver.url())
        .body(Body::empty())
        .unwrap();
    assert_eq!(app.clone().oneshot(request).await.unwrap().status(), 202);
    assert_eq!(receiver.next().await.json()["response"], "done");

    let elsewhere = http::Request::post("/work")
        .header("Elements-Async-Request", "true")
        .header("Elements-Async-Callback-Url", "http://127.0.0.2:9/hook")
        .body(Body::empty())
        .unwrap();
    assert_eq!(app.oneshot(elsewhere).await.unwrap().status(), 400);
}
