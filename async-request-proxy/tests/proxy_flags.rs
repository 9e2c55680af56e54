//! The promises docs/proxy.md makes about the binary's flags, each through the real binary on
//! 127.0.0.1: configured from the environment alone, a flag over its variable, Standard Webhooks
//! secrets, `--max-body`, `--drain-timeout`, `--allow-private-callbacks`, `--store postgres:URL`,
//! `--upstream-timeout`, the admin listener's 64 connections, and HTTP/2's 128 streams and 64 KiB
//! of request head. Each waits on what the proxy does (an answer, a callback, a log line, a
//! changed health, its exit), never on a sleep; the only clocks are hang guards of 20 s.

// The library's test helpers, shared rather than copied.
#[path = "../../tests/support/mod.rs"]
#[allow(unexpected_cfgs)] // its PostgreSQL helper is behind the library's `postgres` feature
mod support;

// The running binary and the helpers the proxy's test files share.
mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::routing::post;
use axum::Router;
use common::{
    async_post, axum_upstream, call, closed_port, exit_and_report, get_json, holding_upstream,
    read_until, serve, temp, write, Proxy, BIN,
};
use http::{header, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::Value;
use support::{Receiver, WHSEC};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tower_async_request::verify::{ElementsVerifier, StandardWebhooksVerifier, VerifyError};

/// The binary started without a single argument: everything it knows comes from `env`, and
/// nothing else of the test's environment reaches it.
fn start_from_env(env: &[(&str, &str)]) -> Proxy {
    let mut child = Command::new(BIN)
        .env_clear()
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the proxy binary starts");
    let (sender, log) = std::sync::mpsc::channel();
    let errors = BufReader::new(child.stderr.take().unwrap()).lines();
    std::thread::spawn(move || {
        for line in errors.map_while(Result::ok) {
            eprintln!("{line}");
            let _ = sender.send(line);
        }
    });
    let stdout = child.stdout.take().unwrap();
    Proxy::listening(child, stdout, log)
}

/// An upstream whose `POST /count` answers with the body it got, counting its calls.
async fn counting_upstream() -> (SocketAddr, Arc<AtomicUsize>) {
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    let address = serve(Router::new().route(
        "/count",
        post(move |body: Bytes| {
            counted.fetch_add(1, Ordering::SeqCst);
            async move { body }
        }),
    ))
    .await;
    (address, calls)
}

/// An upstream that takes every connection and never answers; each one is said on the channel
/// as it comes.
async fn silent_upstream() -> (SocketAddr, tokio::sync::mpsc::UnboundedReceiver<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let (came, comes) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut kept = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            kept.push(stream);
            let _ = came.send(());
        }
    });
    (address, comes)
}

/// An async `POST` of `body` to `url`, with `headers` too.
fn async_post_of(
    url: String,
    body: impl Into<Bytes>,
    headers: &[(&str, &str)],
) -> Request<Full<Bytes>> {
    let mut request = Request::post(url).header("Elements-Async-Request", "true");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.body(Full::new(body.into())).unwrap()
}

/// A refusal's status and `code`, checking it is the documented JSON.
fn refusal((status, headers, body): (StatusCode, http::HeaderMap, Bytes)) -> (StatusCode, String) {
    assert_eq!(headers[header::CONTENT_TYPE], "application/json");
    let json: Value = serde_json::from_slice(&body)
        .unwrap_or_else(|_| panic!("not JSON: {}", String::from_utf8_lossy(&body)));
    assert!(
        json["message"].is_string(),
        "not a refusal: {status} {json}"
    );
    (status, json["code"].as_str().unwrap().to_owned())
}

fn event_id(receipt: &[u8]) -> Value {
    serde_json::from_slice::<Value>(receipt).unwrap()["eventId"].clone()
}

#[tokio::test(flavor = "multi_thread")]
async fn configured_only_by_environment_variables_it_serves_and_signs_with_their_keys() {
    let upstream = axum_upstream().await;
    let mut default = Receiver::start(Vec::new()).await;
    let mut named = Receiver::start(Vec::new()).await;
    let upstream_url = format!("http://{upstream}/api");
    let default_url = default.url();
    let proxy = start_from_env(&[
        ("ASYNC_REQUEST_PROXY_LISTEN", "127.0.0.1:0"),
        ("ASYNC_REQUEST_PROXY_LOG_FORMAT", "json"),
        ("RUST_LOG", "warn"),
        ("ASYNC_REQUEST_PROXY_UPSTREAM", &upstream_url),
        ("ASYNC_REQUEST_PROXY_CALLBACK_URL", &default_url),
        ("ASYNC_REQUEST_PROXY_INSTANCE_ID", "41"),
        (
            "ASYNC_REQUEST_PROXY_SIGNING_KEY",
            "key-from-the-environment",
        ),
        ("ASYNC_REQUEST_PROXY_STANDARD_WEBHOOKS_SECRET", WHSEC),
        ("ASYNC_REQUEST_PROXY_MAX_BODY", "64"),
        ("ASYNC_REQUEST_PROXY_ALLOW_PRIVATE_CALLBACKS", "true"),
    ]);

    // Forwarded to the upstream the environment named.
    let (status, _, body) = call(
        Request::get(proxy.url("/hello"))
            .body(Full::default())
            .unwrap(),
    )
    .await;
    assert_eq!((status, &body[..]), (StatusCode::OK, &b"hello"[..]));

    // An async answer at the default callback URL, as instance 41, signed both ways.
    let (status, _, receipt) = call(async_post(proxy.url("/report"))).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let hit = default.next().await;
    ElementsVerifier::new("key-from-the-environment")
        .verify(&hit.headers, &hit.body)
        .expect("signed with ASYNC_REQUEST_PROXY_SIGNING_KEY");
    StandardWebhooksVerifier::new(WHSEC)
        .unwrap()
        .verify(&hit.headers, &hit.body)
        .expect("signed with ASYNC_REQUEST_PROXY_STANDARD_WEBHOOKS_SECRET");
    let notification = hit.json();
    assert_eq!(notification["eventId"], event_id(&receipt));
    assert_eq!(notification["instanceId"], 41);
    assert_eq!(notification["response"]["report"], "ready");

    // ASYNC_REQUEST_PROXY_MAX_BODY: 65 bytes are one too many.
    let over = async_post_of(proxy.url("/echo"), vec![b'x'; 65], &[]);
    assert_eq!(
        refusal(call(over).await),
        (StatusCode::PAYLOAD_TOO_LARGE, "request_too_large".into())
    );
    // ASYNC_REQUEST_PROXY_ALLOW_PRIVATE_CALLBACKS=true: a loopback URL named by the request.
    let request = async_post_of(
        proxy.url("/report"),
        "{}",
        &[("Elements-Async-Callback-Url", &named.url())],
    );
    let (status, _, receipt) = call(request).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(named.next().await.json()["eventId"], event_id(&receipt));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_flag_on_the_command_line_wins_over_its_environment_variable() {
    let upstream = axum_upstream().await;
    let from_env = Receiver::start(Vec::new()).await;
    let mut from_flag = Receiver::start(Vec::new()).await;
    let (env_key, flag_key) = (temp("env-over.env.key"), temp("env-over.flag.key"));
    write(&env_key, "key-of-the-variable\n");
    write(&flag_key, "key-of-the-flag\n");
    let env_upstream = format!("http://{}", closed_port());
    let env_callback = from_env.url();
    let proxy = Proxy::start_with(
        &[
            "--upstream",
            &format!("http://{upstream}/api"),
            "--callback-url",
            &from_flag.url(),
            "--signing-key-file",
            flag_key.to_str().unwrap(),
            "--instance-id",
            "2",
        ],
        &[
            ("ASYNC_REQUEST_PROXY_UPSTREAM", &env_upstream),
            ("ASYNC_REQUEST_PROXY_CALLBACK_URL", &env_callback),
            (
                "ASYNC_REQUEST_PROXY_SIGNING_KEY_FILE",
                env_key.to_str().unwrap(),
            ),
            ("ASYNC_REQUEST_PROXY_INSTANCE_ID", "1"),
        ],
    );
    // The variable's upstream is down; the flag's answers.
    let (status, _, body) = call(
        Request::get(proxy.url("/hello"))
            .body(Full::default())
            .unwrap(),
    )
    .await;
    assert_eq!((status, &body[..]), (StatusCode::OK, &b"hello"[..]));
    assert_eq!(
        call(async_post(proxy.url("/report"))).await.0,
        StatusCode::ACCEPTED
    );
    let hit = from_flag.next().await;
    assert_eq!(hit.json()["instanceId"], 2);
    ElementsVerifier::new("key-of-the-flag")
        .verify(&hit.headers, &hit.body)
        .expect("signed with the flag's key");
    assert_eq!(
        ElementsVerifier::new("key-of-the-variable").verify(&hit.headers, &hit.body),
        Err(VerifyError::SignatureMismatch)
    );
    let _ = std::fs::remove_file(env_key);
    let _ = std::fs::remove_file(flag_key);
}

#[tokio::test(flavor = "multi_thread")]
async fn standard_webhooks_secrets_from_the_file_each_sign_the_callback() {
    let upstream = axum_upstream().await;
    let mut receiver = Receiver::start(Vec::new()).await;
    // Two secrets while rotating, one a line, as an editor leaves the file.
    let second = format!("whsec_{}", {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode([7u8; 32])
    });
    let secrets = temp("standard-webhooks.secrets");
    write(&secrets, &format!("{WHSEC}\n{second}\n"));
    let proxy = Proxy::start(&[
        "--upstream",
        &format!("http://{upstream}/api"),
        "--callback-url",
        &receiver.url(),
        "--standard-webhooks-secret-file",
        secrets.to_str().unwrap(),
    ]);
    assert_eq!(
        call(async_post(proxy.url("/report"))).await.0,
        StatusCode::ACCEPTED
    );
    let hit = receiver.next().await;
    let notification = hit.json();
    assert_eq!(
        hit.headers["webhook-id"],
        notification["notificationId"].to_string()
    );
    assert!(hit.headers.contains_key("webhook-timestamp"));
    let signatures = hit.headers["webhook-signature"].to_str().unwrap();
    assert_eq!(signatures.split(' ').count(), 2, "{signatures}");
    for secret in [WHSEC, &second] {
        StandardWebhooksVerifier::new(secret)
            .unwrap()
            .verify(&hit.headers, &hit.body)
            .unwrap_or_else(|error| panic!("{secret}: {error}"));
    }
    let wrong = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    assert_eq!(
        StandardWebhooksVerifier::new(wrong)
            .unwrap()
            .verify(&hit.headers, &hit.body),
        Err(VerifyError::SignatureMismatch)
    );
    // Only the scheme configured.
    assert!(!hit.headers.contains_key("elements-webhook-signature"));
    let _ = std::fs::remove_file(secrets);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_async_body_over_max_body_is_413_before_the_upstream_and_one_at_it_is_accepted() {
    let (upstream, calls) = counting_upstream().await;
    let mut receiver = Receiver::start(Vec::new()).await;
    let proxy = Proxy::start(&[
        "--unsigned-callbacks",
        "--upstream",
        &format!("http://{upstream}"),
        "--callback-url",
        &receiver.url(),
        "--max-body",
        "1000",
    ]);
    // Announced by its length...
    let over = async_post_of(proxy.url("/count"), vec![b'x'; 1001], &[]);
    assert_eq!(
        refusal(call(over).await),
        (StatusCode::PAYLOAD_TOO_LARGE, "request_too_large".into())
    );
    // ...or found while it is read (chunked, no length).
    let mut stream = TcpStream::connect(proxy.address).await.unwrap();
    let mut request = b"POST /count HTTP/1.1\r\nhost: proxy\r\nelements-async-request: true\r\n\
        transfer-encoding: chunked\r\n\r\n3e9\r\n"
        .to_vec();
    request.extend_from_slice(&[b'x'; 1001]);
    request.extend_from_slice(b"\r\n0\r\n\r\n");
    stream.write_all(&request).await.unwrap();
    let answer = String::from_utf8(read_until(&mut stream, b"}").await).unwrap();
    assert!(answer.starts_with("HTTP/1.1 413 "), "{answer}");
    assert!(
        answer.contains("\"code\":\"request_too_large\""),
        "{answer}"
    );

    // Exactly the limit: accepted, and all of it reaches the upstream.
    let at = async_post_of(proxy.url("/count"), vec![b'y'; 1000], &[]);
    let (status, _, receipt) = call(at).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let notification = receiver.next().await.json();
    assert_eq!(notification["eventId"], event_id(&receipt));
    assert_eq!(notification["response"], "y".repeat(1000));
    // The refused two never reached it.
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

/// Polls `/admin/health` until it answers `503`: the drain has begun.
async fn draining(admin: SocketAddr) {
    let health = format!("http://{admin}/admin/health");
    let deadline = Instant::now() + Duration::from_secs(20);
    while get_json(health.clone()).await.0 != StatusCode::SERVICE_UNAVAILABLE {
        assert!(Instant::now() < deadline, "no drain began");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_drain_timeout_decides_whether_a_held_job_is_waited_for_or_abandoned() {
    let (short_upstream, mut short_begun, _never) = holding_upstream().await;
    let (long_upstream, mut long_begun, release) = holding_upstream().await;
    let mut receiver = Receiver::start(Vec::new()).await;
    let callback = receiver.url();
    let start = |upstream: SocketAddr, drain: &str| {
        Proxy::start(&[
            "--unsigned-callbacks",
            "--upstream",
            &format!("http://{upstream}"),
            "--callback-url",
            &callback,
            "--drain-timeout",
            drain,
            "--admin-listen",
            "127.0.0.1:0",
        ])
    };
    let short = start(short_upstream, "300ms");
    let mut long = start(long_upstream, "60m");
    for proxy in [&short, &long] {
        assert_eq!(
            call(async_post(proxy.url("/hold"))).await.0,
            StatusCode::ACCEPTED
        );
    }
    short_begun.recv().await.expect("the short one's job runs");
    long_begun.recv().await.expect("the long one's job runs");

    // The long one drains first, and is still draining when the short one has given up.
    long.signal(libc::SIGTERM);
    draining(long.admin.unwrap()).await;
    short.signal(libc::SIGTERM);
    let (code, report) = exit_and_report(short).await;
    assert_eq!(code, Some(3), "{report}");
    assert!(report.contains("drained=false"), "{report}");
    assert!(report.contains("jobs_left=1"), "{report}");
    assert!(
        long.child.try_wait().unwrap().is_none(),
        "--drain-timeout 60m ended its drain with the job still held"
    );
    // Its job finishes within the timeout: delivered, and exit 0.
    release.add_permits(1);
    assert_eq!(receiver.next().await.json()["response"], "held");
    let (code, report) = exit_and_report(long).await;
    assert_eq!(code, Some(0), "{report}");
    assert!(
        report.contains("drained=true jobs_finished=1 delivered=1"),
        "{report}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_loopback_callback_url_from_a_request_needs_allow_private_callbacks() {
    let (upstream, calls) = counting_upstream().await;
    let mut configured = Receiver::start(Vec::new()).await;
    let mut named = Receiver::start(Vec::new()).await;
    let port = named.addr.port();
    let guarded = Proxy::start(&[
        "--unsigned-callbacks",
        "--upstream",
        &format!("http://{upstream}"),
        "--callback-url",
        &configured.url(),
    ]);
    for url in [
        named.url(),
        format!("http://localhost:{port}/hook"),
        format!("http://127.1:{port}/hook"),
    ] {
        let request = async_post_of(
            guarded.url("/count"),
            "{}",
            &[("Elements-Async-Callback-Url", &url)],
        );
        assert_eq!(
            refusal(call(request).await),
            (StatusCode::BAD_REQUEST, "forbidden_callback_url".into()),
            "{url}"
        );
    }
    // The operator's own --callback-url on loopback is trusted.
    let (status, _, receipt) = call(async_post(guarded.url("/count"))).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(
        configured.next().await.json()["eventId"],
        event_id(&receipt)
    );
    // The refused ones never reached the upstream.
    assert_eq!(calls.load(Ordering::SeqCst), 1);

    let open = Proxy::start(&[
        "--unsigned-callbacks",
        "--upstream",
        &format!("http://{upstream}"),
        "--allow-private-callbacks",
    ]);
    let request = async_post_of(
        open.url("/count"),
        "{}",
        &[("Elements-Async-Callback-Url", &named.url())],
    );
    let (status, _, receipt) = call(request).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(named.next().await.json()["eventId"], event_id(&receipt));
}

/// Whether PostgreSQL answers at `url`, by the rule of tests/support/pg.rs: where it must (`CI`
/// or `DATABASE_URL` is set), a server that does not fails the test; elsewhere it is skipped
/// with one line.
async fn postgres_available(url: &str) -> bool {
    use tower_async_request::store::PostgresStore;
    let error = match PostgresStore::connect(url).await {
        Ok(store) => {
            let _ = store.leave().await;
            return true;
        }
        Err(error) => error,
    };
    if std::env::var_os("CI").is_some() || std::env::var_os("DATABASE_URL").is_some() {
        panic!("proxy_flags needs PostgreSQL at {url} (CI or DATABASE_URL is set): {error}");
    }
    // Straight to stderr: the test harness keeps what `eprintln!` says from passing tests.
    use std::io::Write;
    let _ = writeln!(
        std::io::stderr(),
        "skipped proxy_flags' PostgreSQL test: no PostgreSQL at {url} ({error}); start one or set DATABASE_URL to run it"
    );
    false
}

#[tokio::test(flavor = "multi_thread")]
async fn on_postgres_a_second_proxy_answers_for_the_event_the_first_delivered() {
    let url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
    if !postgres_available(&url).await {
        return;
    }
    let upstream = axum_upstream().await;
    let mut receiver = Receiver::start(Vec::new()).await;
    // Proxies sharing a store share the status secret, for any of them to answer.
    let secret = temp("postgres-status.secret");
    write(&secret, "a status secret shared by both proxies\n");
    let store = format!("postgres:{url}");
    let callback = receiver.url();
    let start = || {
        Proxy::start(&[
            "--unsigned-callbacks",
            "--upstream",
            &format!("http://{upstream}/api"),
            "--callback-url",
            &callback,
            "--store",
            &store,
            "--status-path",
            "/events",
            "--status-secret-file",
            secret.to_str().unwrap(),
        ])
    };
    let first = start();
    let (status, headers, receipt) = call(async_post(first.url("/report"))).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let id = event_id(&receipt);
    let location = headers[header::LOCATION].to_str().unwrap().to_owned();
    // The schema is the store's default, shared with other runs: skip anything of theirs.
    while receiver.next().await.json()["eventId"] != id {}

    // Another process, on the same database, knows the event and its answer.
    let second = start();
    let (status, event) = get_json(second.url(&location)).await;
    assert_eq!(status, StatusCode::OK, "{event}");
    assert_eq!(event["eventId"], id);
    assert_eq!(event["eventStatus"], "completed", "{event}");
    assert_eq!(event["response"]["report"], "ready", "{event}");

    for proxy in [first, second] {
        proxy.signal(libc::SIGTERM);
        let (code, report) = exit_and_report(proxy).await;
        assert_eq!(code, Some(0), "{report}");
    }
    let _ = std::fs::remove_file(secret);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_upstream_that_never_answers_is_504_sync_and_failed_async_at_the_upstream_timeout() {
    let (upstream, mut connections) = silent_upstream().await;
    let mut receiver = Receiver::start(Vec::new()).await;
    let proxy = Proxy::start(&[
        "--unsigned-callbacks",
        "--upstream",
        &format!("http://{upstream}"),
        "--callback-url",
        &receiver.url(),
        "--upstream-timeout",
        "300ms",
    ]);
    // A hang guard only: the answer is due 300 ms after the upstream took the request.
    let answer = tokio::time::timeout(
        Duration::from_secs(20),
        call(Request::get(proxy.url("/x")).body(Full::default()).unwrap()),
    )
    .await
    .expect("answered at the upstream timeout");
    connections
        .recv()
        .await
        .expect("the request reached the upstream");
    let (status, _, body) = answer;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
    let body: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(body["code"], "upstream_timeout", "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("300ms"),
        "{body}"
    );

    let (status, _, receipt) = call(async_post(proxy.url("/x"))).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let notification = receiver.next().await.json();
    assert_eq!(notification["eventId"], event_id(&receipt));
    assert_eq!(notification["eventStatus"], "failed", "{notification}");
    assert_eq!(
        notification["error"]["code"], "inner_error",
        "{notification}"
    );
    let message = notification["error"]["message"].as_str().unwrap();
    assert!(
        message.starts_with("upstream_timeout:") && message.contains("300ms"),
        "{message}"
    );
}

/// One `GET /admin/health` on a kept-alive connection; checks the answer.
async fn health(stream: &mut TcpStream) {
    stream
        .write_all(b"GET /admin/health HTTP/1.1\r\nhost: admin\r\n\r\n")
        .await
        .unwrap();
    let answer = read_until(stream, b"}").await;
    assert!(answer.starts_with(b"HTTP/1.1 200"), "{answer:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_admin_listener_serves_at_most_64_connections_at_once() {
    let proxy = Proxy::start(&[
        "--unsigned-callbacks",
        "--upstream",
        &format!("http://{}", closed_port()),
        "--admin-listen",
        "127.0.0.1:0",
    ]);
    let admin = proxy.admin.expect("--admin-listen serves");
    let mut open = Vec::new();
    for _ in 0..64 {
        let mut stream = TcpStream::connect(admin).await.unwrap();
        health(&mut stream).await;
        open.push(stream);
    }
    // The 64th took the last place.
    proxy.logged(&["at the connection limit", "\"max_connections\":64"]);
    // A 65th gets into the kernel's backlog, but the proxy takes nothing from it...
    let mut waiting = TcpStream::connect(admin).await.unwrap();
    waiting
        .write_all(b"GET /admin/health HTTP/1.1\r\nhost: admin\r\n\r\n")
        .await
        .unwrap();
    // ...while the 64 are served.
    for stream in &mut open {
        health(stream).await;
    }
    let mut chunk = [0u8; 64];
    match waiting.try_read(&mut chunk) {
        Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {}
        other => panic!("the 65th connection was served: {other:?}"),
    }
    // One closes: the 65th is taken in and answered.
    drop(open.remove(0));
    let answer = read_until(&mut waiting, b"}").await;
    assert!(answer.starts_with(b"HTTP/1.1 200"), "{answer:?}");
}

/// A client that writes HTTP/2 frames itself (RFC 9113), to do what client libraries will not:
/// open more streams than the server allows.
struct RawH2 {
    stream: TcpStream,
}

/// An HTTP/2 frame's type, flags, stream and payload.
struct Frame {
    kind: u8,
    flags: u8,
    stream: u32,
    payload: Vec<u8>,
}

const HEADERS: u8 = 1;
const RST_STREAM: u8 = 3;
const SETTINGS: u8 = 4;
const PING: u8 = 6;
const END_HEADERS: u8 = 4;
const ACK: u8 = 1;
const REFUSED_STREAM: u32 = 7;

impl RawH2 {
    /// Connected with prior knowledge, its preface and (empty) settings sent.
    async fn connect(address: SocketAddr) -> Self {
        let mut raw = Self {
            stream: TcpStream::connect(address).await.unwrap(),
        };
        raw.stream
            .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            .await
            .unwrap();
        raw.send(SETTINGS, 0, 0, &[]).await;
        raw
    }

    async fn send(&mut self, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
        let mut frame = (payload.len() as u32).to_be_bytes()[1..].to_vec();
        frame.extend_from_slice(&[kind, flags]);
        frame.extend_from_slice(&stream.to_be_bytes());
        frame.extend_from_slice(payload);
        self.stream.write_all(&frame).await.unwrap();
    }

    /// The next frame from the server other than SETTINGS and PING, which are acknowledged.
    /// Fails after 20 s without one.
    async fn next(&mut self) -> Frame {
        loop {
            let mut head = [0u8; 9];
            tokio::time::timeout(Duration::from_secs(20), self.stream.read_exact(&mut head))
                .await
                .expect("a frame within 20 s")
                .expect("the connection stays open");
            let length = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
            let mut payload = vec![0u8; length];
            self.stream.read_exact(&mut payload).await.unwrap();
            let frame = Frame {
                kind: head[3],
                flags: head[4],
                stream: u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff,
                payload,
            };
            match frame.kind {
                SETTINGS if frame.flags & ACK == 0 => self.send(SETTINGS, ACK, 0, &[]).await,
                PING if frame.flags & ACK == 0 => self.send(PING, ACK, 0, &frame.payload).await,
                SETTINGS | PING => {}
                _ => return frame,
            }
        }
    }
}

/// An HPACK field of a static table name (RFC 7541 §6.2.2: without indexing) and a short value.
fn field(name_index: u8, value: &str) -> Vec<u8> {
    assert!(name_index < 16 && value.len() < 127);
    let mut field = vec![name_index, value.len() as u8];
    field.extend_from_slice(value.as_bytes());
    field
}

#[tokio::test(flavor = "multi_thread")]
async fn an_http2_client_is_refused_a_129th_stream_while_128_are_open() {
    let (upstream, mut begun, _never) = holding_upstream().await;
    let proxy = Proxy::start(&[
        "--unsigned-callbacks",
        "--upstream",
        &format!("http://{upstream}"),
    ]);
    let mut h2 = RawH2::connect(proxy.address).await;
    // `POST /hold` whose body never ends: each stream stays open, its request held upstream.
    let mut head = vec![0x83, 0x86]; // :method POST, :scheme http
    head.extend(field(4, "/hold")); // :path
    head.extend(field(1, "proxy")); // :authority
    for stream in (1..=255).step_by(2) {
        h2.send(HEADERS, END_HEADERS, stream, &head).await;
    }
    for _ in 0..128 {
        begun
            .recv()
            .await
            .expect("each of the 128 reaches the upstream");
    }
    h2.send(HEADERS, END_HEADERS, 257, &head).await;
    let refused = loop {
        let frame = h2.next().await;
        if frame.kind == RST_STREAM {
            break frame;
        }
    };
    assert_eq!(refused.stream, 257, "only the 129th is reset");
    let code = u32::from_be_bytes(refused.payload[..4].try_into().unwrap());
    assert_eq!(code, REFUSED_STREAM);
}

/// `GET /api/hello` over HTTP/2 (prior knowledge) with one more header, `x-pad`, making the
/// request head `size` bytes as HTTP/2 counts it (RFC 9113 §6.5.2: each field's name and value
/// and 32); the answer's status.
async fn hello_with_a_head_of(proxy: &Proxy, size: usize) -> StatusCode {
    let uri = proxy.url("/api/hello");
    let authority = proxy.address.to_string();
    let pseudo = [
        (":method", "GET".len()),
        (":scheme", "http".len()),
        (":authority", authority.len()),
        (":path", "/api/hello".len()),
    ];
    let used: usize = pseudo
        .iter()
        .map(|(name, value)| name.len() + value + 32)
        .sum();
    let pad = size - used - "x-pad".len() - 32;
    let request = Request::get(uri)
        .header("x-pad", "p".repeat(pad))
        .body(Full::<Bytes>::default())
        .unwrap();
    let stream = TcpStream::connect(proxy.address).await.unwrap();
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(connection);
    let response = sender.send_request(request).await.unwrap();
    let status = response.status();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    if status == StatusCode::OK {
        assert_eq!(&body[..], b"hello");
    }
    status
}

#[tokio::test(flavor = "multi_thread")]
async fn an_http2_request_head_of_64_kib_is_431_and_one_byte_less_is_served() {
    let upstream = axum_upstream().await;
    let proxy = Proxy::start(&[
        "--unsigned-callbacks",
        "--upstream",
        &format!("http://{upstream}"),
    ]);
    assert_eq!(
        hello_with_a_head_of(&proxy, 64 * 1024 - 1).await,
        StatusCode::OK
    );
    assert_eq!(
        hello_with_a_head_of(&proxy, 64 * 1024).await,
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
    );
}
