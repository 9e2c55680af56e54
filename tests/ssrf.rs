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
