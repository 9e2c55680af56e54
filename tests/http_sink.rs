//! `HttpSink` against real receivers on 127.0.0.1:0.

use std::time::Duration;

use axum::{
    body::Bytes,
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Redirect},
    routing::post,
    Router,
};
use tokio::{
    net::{TcpListener, TcpStream},
    sync::mpsc,
};
use tower_async_request::{
    sink::{CallbackSink, HttpSink, SinkErrorKind},
    verify::{ElementsVerifier, StandardWebhooksVerifier},
    AsyncRequestLayer,
};

/// The receivers here are on loopback, which the address guard refuses by default (see
/// `tests/ssrf.rs`).
fn loopback_sink() -> HttpSink {
    HttpSink::new().allow_private(true)
}

async fn serve(router: Router) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    addr
}

fn post_to(url: String, body: &'static str) -> http::Request<Bytes> {
    http::Request::post(url)
        .header("content-type", "application/json")
        .body(Bytes::from_static(body.as_bytes()))
        .unwrap()
}

/// A receiver that forwards what it gets over a channel and answers `status`.
async fn recording_receiver(
    status: StatusCode,
) -> (
    std::net::SocketAddr,
    mpsc::UnboundedReceiver<(HeaderMap, Bytes)>,
) {
    let (tx, rx) = mpsc::unbounded_channel();
    let router = Router::new().route(
        "/hook",
        post(move |headers: HeaderMap, body: Bytes| {
            let tx = tx.clone();
            async move {
                tx.send((headers, body)).unwrap();
                status
            }
        }),
    );
    (serve(router).await, rx)
}

#[tokio::test]
async fn posts_the_exact_request_and_reports_the_answer() {
    let (addr, mut received) = recording_receiver(StatusCode::NO_CONTENT).await;
    let answer = loopback_sink()
        .send(post_to(format!("http://{addr}/hook"), r#"{"eventId":1}"#))
        .await
        .unwrap();
    assert_eq!(answer.status(), StatusCode::NO_CONTENT);
    let (headers, body) = received.recv().await.unwrap();
    assert_eq!(body, r#"{"eventId":1}"#);
    assert_eq!(headers["content-type"], "application/json");
}

#[tokio::test]
async fn reports_error_statuses_and_keeps_a_short_answer_body() {
    let router = Router::new().route(
        "/hook",
        post(|| async { (StatusCode::SERVICE_UNAVAILABLE, "x".repeat(10_000)) }),
    );
    let addr = serve(router).await;
    let answer = loopback_sink()
        .send(post_to(format!("http://{addr}/hook"), "{}"))
        .await
        .unwrap();
    assert_eq!(answer.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(answer.body().len(), 4096);
}

#[tokio::test]
async fn never_follows_redirects() {
    let (target, mut redirected) = recording_receiver(StatusCode::OK).await;
    let location = format!("http://{target}/hook");
    let router = Router::new().route(
        "/hook",
        post(move || async move { Redirect::temporary(&location).into_response() }),
    );
    let addr = serve(router).await;
    let answer = loopback_sink()
        .send(post_to(format!("http://{addr}/hook"), "{}"))
        .await
        .unwrap();
    assert_eq!(answer.status(), StatusCode::TEMPORARY_REDIRECT);
    assert!(
        redirected.try_recv().is_err(),
        "the redirect target must not be contacted"
    );
}

#[tokio::test]
async fn a_slow_receiver_is_a_timeout() {
    let router = Router::new().route(
        "/hook",
        post(|| async {
            tokio::time::sleep(Duration::from_secs(30)).await;
            StatusCode::OK
        }),
    );
    let addr = serve(router).await;
    let error = loopback_sink()
        .timeout(Duration::from_millis(200))
        .send(post_to(format!("http://{addr}/hook"), "{}"))
        .await
        .unwrap_err();
    assert_eq!(error.kind(), SinkErrorKind::Timeout);
}

#[tokio::test]
async fn a_closed_port_is_a_connect_error() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let error = loopback_sink()
        .send(post_to(format!("http://{addr}/hook"), "{}"))
        .await
        .unwrap_err();
    assert_eq!(error.kind(), SinkErrorKind::Connect);
}

#[tokio::test]
async fn the_layer_delivers_a_signed_callback_through_the_default_http_sink() {
    let (receiver, mut received) = recording_receiver(StatusCode::OK).await;
    let layer = AsyncRequestLayer::builder()
        .instance_id(7)
        .default_callback_url(format!("http://{receiver}/hook"))
        .signing_key("event-signature-key")
        .standard_webhooks_secret("whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD")
        .build()
        .unwrap();
    let app = serve(
        Router::new()
            .route(
                "/work",
                post(|body: String| async move { format!("got {body}") }),
            )
            .layer(layer),
    )
    .await;

    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http();
    let request = http::Request::post(format!("http://{app}/work"))
        .header("Elements-Async-Request", "true")
        .body(http_body_util::Full::new(Bytes::from_static(b"payload")))
        .unwrap();
    let receipt = client.request(request).await.unwrap();
    assert_eq!(receipt.status(), StatusCode::ACCEPTED);

    let (headers, body) = tokio::time::timeout(Duration::from_secs(10), received.recv())
        .await
        .unwrap()
        .unwrap();
    ElementsVerifier::new("event-signature-key")
        .verify(&headers, &body)
        .unwrap();
    StandardWebhooksVerifier::new("whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD")
        .unwrap()
        .verify(&headers, &body)
        .unwrap();
    let notification: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(notification["instanceId"], 7);
    assert_eq!(notification["statusCode"], 200);
    assert_eq!(notification["response"], "got payload");
    assert_eq!(
        headers["elements-event-id"],
        notification["eventId"].to_string()
    );
}

#[tokio::test]
async fn keeps_its_connections_for_the_next_wave_of_callbacks() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use tokio::sync::Barrier;

    // More callbacks at once than a small idle pool would keep: each wave holds every request
    // until all have arrived, so the sink needs one connection per callback.
    const WAVE: usize = 100;
    let accepted = Arc::new(AtomicUsize::new(0));
    let barrier = Arc::new(Barrier::new(WAVE));
    let router = Router::new().route(
        "/hook",
        post(move || {
            let barrier = barrier.clone();
            async move {
                barrier.wait().await;
                StatusCode::NO_CONTENT
            }
        }),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let counter = accepted.clone();
    let listener = axum::serve::ListenerExt::tap_io(listener, move |_| {
        counter.fetch_add(1, Ordering::Relaxed);
    });
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });

    let sink = loopback_sink();
    let wave = || {
        let sends = (0..WAVE).map(|_| {
            let sink = sink.clone();
            let url = format!("http://{addr}/hook");
            tokio::spawn(async move { sink.send(post_to(url, "{}")).await })
        });
        join_in_order(sends.collect())
    };
    for answer in wave().await {
        assert_eq!(answer.unwrap().status(), StatusCode::NO_CONTENT);
    }
    let after_first = accepted.load(Ordering::Relaxed);
    assert_eq!(after_first, WAVE, "one connection per concurrent callback");
    // Let the finished exchanges hand their connections back to the pool.
    tokio::time::sleep(Duration::from_millis(200)).await;
    for answer in wave().await {
        assert_eq!(answer.unwrap().status(), StatusCode::NO_CONTENT);
    }
    assert_eq!(
        accepted.load(Ordering::Relaxed),
        after_first,
        "the second wave reuses the pooled connections"
    );
}

/// Awaits every task, in order.
async fn join_in_order<T>(tasks: Vec<tokio::task::JoinHandle<T>>) -> Vec<T> {
    let mut out = Vec::with_capacity(tasks.len());
    for task in tasks {
        out.push(task.await.unwrap());
    }
    out
}

/// A receiver speaking raw HTTP/1.1: it answers every request on a connection with `answer`
/// (keep-alive), and hangs up `hang_up_after` each answer if given. Returns its address and the
/// count of connections it accepted.
async fn raw_receiver(
    answer: Vec<u8>,
    hang_up_after: Option<Duration>,
) -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::AsyncWriteExt;

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = std::sync::Arc::new(AtomicUsize::new(0));
    let counter = accepted.clone();
    let answer = std::sync::Arc::new(answer);
    tokio::spawn(async move {
        loop {
            let (mut stream, _) = listener.accept().await.unwrap();
            counter.fetch_add(1, Ordering::Relaxed);
            let answer = answer.clone();
            tokio::spawn(async move {
                let mut buffer = Vec::new();
                loop {
                    // One request: its head, then as many body bytes as Content-Length says.
                    let head_end = loop {
                        if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                            break end + 4;
                        }
                        if !read_more(&mut stream, &mut buffer).await {
                            return;
                        }
                    };
                    let head = String::from_utf8_lossy(&buffer[..head_end]).to_lowercase();
                    let length: usize = head
                        .lines()
                        .find_map(|line| line.strip_prefix("content-length:"))
                        .map_or(0, |value| value.trim().parse().unwrap());
                    while buffer.len() < head_end + length {
                        if !read_more(&mut stream, &mut buffer).await {
                            return;
                        }
                    }
                    buffer.drain(..head_end + length);
                    if stream.write_all(&answer).await.is_err() {
                        return;
                    }
                    if let Some(delay) = hang_up_after {
                        tokio::time::sleep(delay).await;
                        return;
                    }
                }
            });
        }
    });
    (addr, accepted)
}

/// Appends what `stream` has to `buffer`; false once the peer is gone.
async fn read_more(stream: &mut TcpStream, buffer: &mut Vec<u8>) -> bool {
    use tokio::io::AsyncReadExt;
    let mut chunk = [0u8; 4096];
    match stream.read(&mut chunk).await {
        Ok(0) | Err(_) => false,
        Ok(n) => {
            buffer.extend_from_slice(&chunk[..n]);
            true
        }
    }
}

fn keep_alive_answer(body_len: usize) -> Vec<u8> {
    let mut answer = format!("HTTP/1.1 200 OK\r\ncontent-length: {body_len}\r\n\r\n").into_bytes();
    answer.resize(answer.len() + body_len, b'a');
    answer
}

#[tokio::test]
async fn a_connection_the_receiver_closed_while_idle_costs_no_attempt() {
    use std::sync::atomic::Ordering;

    let (addr, accepted) =
        raw_receiver(keep_alive_answer(2), Some(Duration::from_millis(20))).await;
    let sink = loopback_sink();
    for round in 1..=3 {
        let answer = sink
            .send(post_to(format!("http://{addr}/hook"), "{}"))
            .await
            .unwrap_or_else(|error| panic!("callback {round}: {error}"));
        assert_eq!(answer.status(), StatusCode::OK);
        assert_eq!(answer.body(), "aa");
        // The receiver hangs up while the connection sits in the pool.
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    assert_eq!(
        accepted.load(Ordering::Relaxed),
        3,
        "a new connection each time"
    );
}

#[tokio::test]
async fn only_an_answer_read_to_its_end_leaves_its_connection_for_the_next_callback() {
    use std::sync::atomic::Ordering;

    // Short answers: one connection carries every callback.
    let (addr, accepted) = raw_receiver(keep_alive_answer(100), None).await;
    let sink = loopback_sink();
    for _ in 0..3 {
        let answer = sink
            .send(post_to(format!("http://{addr}/hook"), "{}"))
            .await
            .unwrap();
        assert_eq!(answer.body().len(), 100);
    }
    assert_eq!(accepted.load(Ordering::Relaxed), 1);

    // Answers longer than the 4 KiB the sink reads: the rest is never read, so the connection
    // cannot carry another exchange and is closed rather than pooled.
    let (addr, accepted) = raw_receiver(keep_alive_answer(64 * 1024), None).await;
    for _ in 0..3 {
        let answer = sink
            .send(post_to(format!("http://{addr}/hook"), "{}"))
            .await
            .unwrap();
        assert_eq!(answer.body().len(), 4 * 1024);
    }
    assert_eq!(accepted.load(Ordering::Relaxed), 3);
}

#[tokio::test]
async fn a_default_sink_gives_up_on_a_silent_receiver_after_15_seconds() {
    use tokio::io::AsyncReadExt;
    use tower_async_request::sink::DEFAULT_ATTEMPT_TIMEOUT;

    assert_eq!(DEFAULT_ATTEMPT_TIMEOUT, Duration::from_secs(15));
    // A receiver that takes the callback and never answers.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let started = tokio::time::Instant::now();
    let sending = tokio::spawn(async move { loopback_sink().send(post_to(url, "{}")).await });
    let (mut connection, _) = listener.accept().await.unwrap();
    let mut received = Vec::new();
    while !received.ends_with(b"\r\n\r\n{}") {
        let mut chunk = [0u8; 1024];
        let n = connection.read(&mut chunk).await.unwrap();
        assert!(n > 0, "the sink hung up: {received:?}");
        received.extend_from_slice(&chunk[..n]);
    }
    // All that is left is to wait: let the clock jump to the next timer instead.
    tokio::time::pause();
    let error = sending.await.unwrap().unwrap_err();
    let waited = started.elapsed();
    assert_eq!(error.kind(), SinkErrorKind::Timeout, "{error}");
    assert!(
        waited >= DEFAULT_ATTEMPT_TIMEOUT
            && waited < DEFAULT_ATTEMPT_TIMEOUT + Duration::from_secs(1),
        "{waited:?}"
    );
    drop(connection);
}

/// The rustls error beneath `error`, if any. An `io::Error`'s `source` skips the error it wraps,
/// so each is opened with `get_ref`.
fn tls_error(error: &(dyn std::error::Error + 'static)) -> Option<rustls::Error> {
    if let Some(tls) = error.downcast_ref::<rustls::Error>() {
        return Some(tls.clone());
    }
    let wrapped = error
        .downcast_ref::<std::io::Error>()
        .and_then(std::io::Error::get_ref)
        .map(|inner| inner as &(dyn std::error::Error + 'static));
    wrapped.or_else(|| error.source()).and_then(tls_error)
}

/// An `https` receiver on 127.0.0.1 with the certificate `tests/data/tls/upstream.pem` (for
/// `127.0.0.1`, issued by the test CA, which no bundled root signed), on a thread of its own.
/// It reports how each handshake ended; after one that succeeds it answers `204`.
fn tls_receiver() -> (
    std::net::SocketAddr,
    mpsc::UnboundedReceiver<Result<(), rustls::Error>>,
) {
    use rustls::pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};
    use std::io::{Read, Write};

    let read = |name: &str| {
        std::fs::read(format!(
            "{}/tests/data/tls/{name}",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap()
    };
    let certificates = CertificateDer::pem_slice_iter(&read("upstream.pem"))
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_slice(&read("upstream.key")).unwrap();
    // ring's provider, as the sink's (deprecated in rustls 0.23.48 for want of post-quantum key
    // exchange).
    #[allow(deprecated)]
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = std::sync::Arc::new(
        rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(certificates, key)
            .unwrap(),
    );
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (handshakes, reports) = mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let mut stream = stream.unwrap();
            let mut tls = rustls::ServerConnection::new(config.clone()).unwrap();
            let mut ended = Ok(());
            while tls.is_handshaking() {
                if let Err(error) = tls.complete_io(&mut stream) {
                    ended =
                        Err(tls_error(&error).unwrap_or(rustls::Error::General(error.to_string())));
                    break;
                }
            }
            let served = ended.is_ok();
            if handshakes.send(ended).is_err() {
                return;
            }
            if served {
                let mut tls = rustls::StreamOwned::new(tls, stream);
                let _ = tls.read(&mut [0u8; 4096]);
                let _ = tls.write_all(b"HTTP/1.1 204 No Content\r\n\r\n");
                let _ = tls.flush();
            }
        }
    });
    (addr, reports)
}

#[tokio::test]
async fn an_https_receiver_with_a_certificate_no_bundled_root_signed_gets_no_callback() {
    let (addr, mut handshakes) = tls_receiver();
    let url = format!("https://127.0.0.1:{}/hook", addr.port());
    // Both of the sink's ways to connect: to trusted targets, and guarded (here to an allowed
    // network). The certificate names 127.0.0.1 and is valid: only its issuer is unknown.
    let sinks = [
        loopback_sink(),
        HttpSink::new().allow_network("127.0.0.0/8".parse().unwrap()),
    ];
    for sink in sinks {
        let error = sink.send(post_to(url.clone(), "{}")).await.unwrap_err();
        assert_eq!(error.kind(), SinkErrorKind::Connect, "{error}");
        assert_eq!(
            tls_error(&error),
            Some(rustls::Error::InvalidCertificate(
                rustls::CertificateError::UnknownIssuer
            )),
            "{error:?}"
        );
        // The receiver heard why: the sink refused its certificate, before sending anything.
        assert_eq!(
            handshakes.recv().await.unwrap(),
            Err(rustls::Error::AlertReceived(
                rustls::AlertDescription::UnknownCA
            ))
        );
    }
}
