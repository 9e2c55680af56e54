//! The promises docs/proxy.md makes about the binary's flags, each through the real binary on
//! 127.0.0.1: configured from the environment alone, a flag over its variable, the defaults
//! `--help` names (and those a start without the flag shows), secrets never on the command line,
//! Standard Webhooks secrets, the status secret from the environment, `--status-path`,
//! `--max-body`, `--drain-timeout`, `--allow-private-callbacks`, `Idempotency-Key`'s two flags,
//! `--store postgres:` (a URL or a `key=value` string, `--postgres-schema`, a drain handing its
//! work to another proxy), `--upstream-timeout`, `--upstream-http2` over TLS, the admin
//! listener's 64 connections, and HTTP/2's 128 streams and 64 KiB of request head. Each waits on
//! what the proxy does (an answer, a callback, a log line, a changed health, its exit), never on
//! a sleep; the clocks are hang guards, and the wait past a 300 ms `--idempotency-retention`,
//! which is the promise itself.

// The library's test helpers, shared rather than copied.
#[path = "../../tests/support/mod.rs"]
#[allow(unexpected_cfgs)] // its PostgreSQL helper is behind the library's `postgres` feature
mod support;

// ...so the PostgreSQL helper on its own: a schema per test, dropped at its end, and the rule
// for a server that does not answer.
#[path = "../../tests/support/pg.rs"]
mod pg;

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
    accepted, async_post, axum_upstream, call, closed_port, draining, event_id, fetch, get_json,
    get_ok, holding_upstream, read_until, refused, released, scrape, serve, silent_listener, temp,
    terminated, write, Proxy, BIN, TLS_DIR,
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
    let mut command = Command::new(BIN);
    command.env_clear().envs(env.iter().copied());
    Proxy::spawn(command)
}

/// An upstream whose `POST /count` answers with the body it got, counting its calls; a request
/// for any other path is counted too, and answered `404`.
async fn counting_upstream() -> (SocketAddr, Arc<AtomicUsize>) {
    let calls = Arc::new(AtomicUsize::new(0));
    let (counted, elsewhere) = (calls.clone(), calls.clone());
    let address = serve(
        Router::new()
            .route(
                "/count",
                post(move |body: Bytes| {
                    counted.fetch_add(1, Ordering::SeqCst);
                    async move { body }
                }),
            )
            .fallback(move || {
                elsewhere.fetch_add(1, Ordering::SeqCst);
                async { StatusCode::NOT_FOUND }
            }),
    )
    .await;
    (address, calls)
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

/// An async request to `url` calling back `receiver`; checks it is accepted and called back.
async fn called_back_at(url: String, receiver: &mut Receiver) {
    let request = async_post_of(
        url,
        "{}",
        &[("Elements-Async-Callback-Url", &receiver.url())],
    );
    let (_, receipt) = accepted(request).await;
    assert_eq!(receiver.next().await.json()["eventId"], event_id(&receipt));
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

/// Reads the answer on `stream`; checks it is `413 request_too_large`.
async fn too_large(stream: &mut TcpStream) {
    let answer = String::from_utf8(read_until(stream, b"}").await).unwrap();
    assert!(answer.starts_with("HTTP/1.1 413 "), "{answer}");
    assert!(
        answer.contains("\"code\":\"request_too_large\""),
        "{answer}"
    );
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
    get_ok(proxy.url("/hello"), b"hello").await;

    // An async answer at the default callback URL, as instance 41, signed both ways.
    let (_, receipt) = accepted(async_post(proxy.url("/report"))).await;
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
    called_back_at(proxy.url("/report"), &mut named).await;
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
    get_ok(proxy.url("/hello"), b"hello").await;
    accepted(async_post(proxy.url("/report"))).await;
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
    accepted(async_post(proxy.url("/report"))).await;
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
    let proxy = Proxy::unsigned(
        &format!("http://{upstream}"),
        &["--callback-url", &receiver.url(), "--max-body", "1000"],
    );
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
    too_large(&mut stream).await;

    // Exactly the limit: accepted, and all of it reaches the upstream.
    let at = async_post_of(proxy.url("/count"), vec![b'y'; 1000], &[]);
    let (_, receipt) = accepted(at).await;
    let notification = receiver.next().await.json();
    assert_eq!(notification["eventId"], event_id(&receipt));
    assert_eq!(notification["response"], "y".repeat(1000));
    // The refused two never reached it.
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_drain_timeout_decides_whether_a_held_job_is_waited_for_or_abandoned() {
    let (short_upstream, mut short_begun, _never) = holding_upstream().await;
    let (long_upstream, mut long_begun, release) = holding_upstream().await;
    let mut receiver = Receiver::start(Vec::new()).await;
    let callback = receiver.url();
    let start = |upstream: SocketAddr, drain: &str| {
        Proxy::unsigned(
            &format!("http://{upstream}"),
            &[
                "--callback-url",
                &callback,
                "--drain-timeout",
                drain,
                "--admin-listen",
                "127.0.0.1:0",
            ],
        )
    };
    let short = start(short_upstream, "300ms");
    let mut long = start(long_upstream, "60m");
    for proxy in [&short, &long] {
        accepted(async_post(proxy.url("/hold"))).await;
    }
    short_begun.recv().await.expect("the short one's job runs");
    long_begun.recv().await.expect("the long one's job runs");

    // The long one drains first, and is still draining when the short one has given up.
    long.signal(libc::SIGTERM);
    draining(long.admin.unwrap()).await;
    let report = terminated(short, 3).await;
    assert!(report.contains("drained=false"), "{report}");
    assert!(report.contains("jobs_left=1"), "{report}");
    assert!(
        long.child.try_wait().unwrap().is_none(),
        "--drain-timeout 60m ended its drain with the job still held"
    );
    // Its job finishes within the timeout: delivered, and exit 0.
    released(long, &release, &mut receiver).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_loopback_callback_url_from_a_request_needs_allow_private_callbacks() {
    let (upstream, calls) = counting_upstream().await;
    let mut configured = Receiver::start(Vec::new()).await;
    let mut named = Receiver::start(Vec::new()).await;
    let port = named.addr.port();
    let guarded = Proxy::unsigned(
        &format!("http://{upstream}"),
        &["--callback-url", &configured.url()],
    );
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
    let (_, receipt) = accepted(async_post(guarded.url("/count"))).await;
    assert_eq!(
        configured.next().await.json()["eventId"],
        event_id(&receipt)
    );
    // The refused ones never reached the upstream.
    assert_eq!(calls.load(Ordering::SeqCst), 1);

    let open = Proxy::unsigned(
        &format!("http://{upstream}"),
        &["--allow-private-callbacks"],
    );
    called_back_at(open.url("/count"), &mut named).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn on_postgres_a_second_proxy_answers_for_the_event_the_first_delivered() {
    if !pg::available("proxy_flags").await {
        return;
    }
    // Its own schema, dropped at the end (after the proxies, declared later, have stopped).
    let schema = pg::Schema::new();
    let upstream = axum_upstream().await;
    let mut receiver = Receiver::start(Vec::new()).await;
    // Proxies sharing a store share the status secret, for any of them to answer.
    let secret = temp("postgres-status.secret");
    write(&secret, "a status secret shared by both proxies\n");
    let store = format!("postgres:{}", pg::url());
    let callback = receiver.url();
    let start = || {
        Proxy::unsigned(
            &format!("http://{upstream}/api"),
            &[
                "--callback-url",
                &callback,
                "--store",
                &store,
                "--postgres-schema",
                &schema.0,
                "--status-path",
                "/events",
                "--status-secret-file",
                secret.to_str().unwrap(),
            ],
        )
    };
    let first = start();
    let (headers, receipt) = accepted(async_post(first.url("/report"))).await;
    let id = event_id(&receipt);
    let location = headers[header::LOCATION].to_str().unwrap().to_owned();
    assert_eq!(receiver.next().await.json()["eventId"], id);

    // Another process, on the same database, knows the event and its answer.
    let second = start();
    let (status, event) = get_json(second.url(&location)).await;
    assert_eq!(status, StatusCode::OK, "{event}");
    assert_eq!(event["eventId"], id);
    assert_eq!(event["eventStatus"], "completed", "{event}");
    assert_eq!(event["response"]["report"], "ready", "{event}");

    for proxy in [first, second] {
        terminated(proxy, 0).await;
    }
    let _ = std::fs::remove_file(secret);
}

/// `url` (a `postgres://` URL) as a `key=value` connection string, each value quoted.
fn key_value_string(url: &str) -> String {
    use tokio_postgres::config::Host;
    let config: tokio_postgres::Config = url.parse().unwrap();
    let quoted = |value: &str| format!("'{}'", value.replace('\\', "\\\\").replace('\'', "\\'"));
    let mut fields = Vec::new();
    for host in config.get_hosts() {
        let host = match host {
            Host::Tcp(name) => name.clone(),
            Host::Unix(path) => path.display().to_string(),
        };
        fields.push(format!("host={}", quoted(&host)));
    }
    for port in config.get_ports() {
        fields.push(format!("port={port}"));
    }
    if let Some(user) = config.get_user() {
        fields.push(format!("user={}", quoted(user)));
    }
    if let Some(password) = config.get_password() {
        fields.push(format!(
            "password={}",
            quoted(std::str::from_utf8(password).unwrap())
        ));
    }
    if let Some(database) = config.get_dbname() {
        fields.push(format!("dbname={}", quoted(database)));
    }
    fields.join(" ")
}

#[tokio::test(flavor = "multi_thread")]
async fn store_postgres_takes_a_key_value_string_and_the_tables_go_in_the_schema_named() {
    if !pg::available("proxy_flags").await {
        return;
    }
    let schema = pg::Schema::new();
    let upstream = axum_upstream().await;
    let mut receiver = Receiver::start(Vec::new()).await;
    let connection = key_value_string(&pg::url());
    assert!(connection.starts_with("host="), "{connection}");
    let proxy = Proxy::start_with(
        &[
            "--unsigned-callbacks",
            "--upstream",
            &format!("http://{upstream}/api"),
            "--callback-url",
            &receiver.url(),
            "--store",
            &format!("postgres:{connection}"),
            // Finished events are kept for the admin routes: the event stays to be counted.
            "--admin-listen",
            "127.0.0.1:0",
        ],
        &[("ASYNC_REQUEST_PROXY_POSTGRES_SCHEMA", &schema.0)],
    );
    let (_, receipt) = accepted(async_post(proxy.url("/report"))).await;
    assert_eq!(receiver.next().await.json()["eventId"], event_id(&receipt));

    // The store's tables are in the schema the variable named, the event in them.
    let (client, connection) = tokio_postgres::connect(&pg::url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    let tables: Vec<String> = client
        .query(
            "SELECT table_name::text FROM information_schema.tables WHERE table_schema = $1",
            &[&schema.0],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    for table in ["events", "nodes", "idempotency_keys"] {
        assert!(tables.iter().any(|t| t == table), "{table}: {tables:?}");
    }
    let events: i64 = client
        .query_one(
            &format!("SELECT count(*) FROM \"{}\".events", schema.0),
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(events, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn on_postgres_a_drain_that_leaves_a_job_hands_it_to_the_other_proxy_at_once() {
    if !pg::available("proxy_flags").await {
        return;
    }
    let schema = pg::Schema::new();
    let (upstream, mut begun, _never) = holding_upstream().await;
    let mut receiver = Receiver::start(Vec::new()).await;
    let store = format!("postgres:{}", pg::url());
    let callback = receiver.url();
    let start = |drain: &str| {
        Proxy::unsigned(
            &format!("http://{upstream}"),
            &[
                "--callback-url",
                &callback,
                "--store",
                &store,
                "--postgres-schema",
                &schema.0,
                "--drain-timeout",
                drain,
            ],
        )
    };
    let leaving = start("200ms");
    let _staying = start("30s");
    let (_, receipt) = accepted(async_post(leaving.url("/hold"))).await;
    begun.recv().await.expect("the job runs on the first proxy");
    let report = terminated(leaving, 3).await;
    assert!(report.contains("jobs_left=1"), "{report}");
    // The other proxy takes the event over as the first leaves, and its outcome comes. Had the
    // first not left, the other would wait out its lease: 30 s from its last heartbeat, which
    // beats every 10 s, so no sooner than 20 s from now; the guard is shorter.
    let notification = tokio::time::timeout(Duration::from_secs(10), receiver.next())
        .await
        .expect("taken over at once, not after the lease timeout")
        .json();
    assert_eq!(notification["eventId"], event_id(&receipt));
    assert_eq!(notification["eventStatus"], "failed", "{notification}");
    assert_eq!(
        notification["error"]["code"], "interrupted",
        "{notification}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_upstream_that_never_answers_is_504_sync_and_failed_async_at_the_upstream_timeout() {
    let (upstream, mut connections) = silent_listener().await;
    let mut receiver = Receiver::start(Vec::new()).await;
    let proxy = Proxy::unsigned(
        &format!("http://{upstream}"),
        &[
            "--callback-url",
            &receiver.url(),
            "--upstream-timeout",
            "300ms",
        ],
    );
    // A hang guard only: the answer is due 300 ms after the upstream took the request.
    let answer = tokio::time::timeout(Duration::from_secs(20), fetch(proxy.url("/x")))
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

    let (_, receipt) = accepted(async_post(proxy.url("/x"))).await;
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
    let proxy = Proxy::unsigned(
        &format!("http://{}", closed_port()),
        &["--admin-listen", "127.0.0.1:0"],
    );
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
    let proxy = Proxy::unsigned(&format!("http://{upstream}"), &[]);
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
    let proxy = Proxy::unsigned(&format!("http://{upstream}"), &[]);
    assert_eq!(
        hello_with_a_head_of(&proxy, 64 * 1024 - 1).await,
        StatusCode::OK
    );
    assert_eq!(
        hello_with_a_head_of(&proxy, 64 * 1024).await,
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
    );
}

/// Unsigned proxies of `upstream` and `callback`: with `flag`, with `variable`, with neither.
fn three_ways(upstream: &str, callback: &str, flag: &[&str], variable: (&str, &str)) -> [Proxy; 3] {
    let args = ["--callback-url", callback];
    [
        Proxy::unsigned(upstream, &[&args[..], flag].concat()),
        Proxy::start_with(
            &[&["--unsigned-callbacks", "--upstream", upstream][..], &args].concat(),
            &[variable],
        ),
        Proxy::unsigned(upstream, &args),
    ]
}

/// An async `POST /count` of `body` with `Idempotency-Key: key`.
fn keyed(proxy: &Proxy, body: &'static str, key: &str) -> Request<Full<Bytes>> {
    async_post_of(proxy.url("/count"), body, &[("Idempotency-Key", key)])
}

#[tokio::test(flavor = "multi_thread")]
async fn an_async_request_sent_again_with_its_idempotency_key_gets_the_first_receipt() {
    let (upstream, calls) = counting_upstream().await;
    let mut receiver = Receiver::start(Vec::new()).await;
    let proxy = Proxy::unsigned(
        &format!("http://{upstream}"),
        &[
            "--callback-url",
            &receiver.url(),
            "--admin-listen",
            "127.0.0.1:0",
        ],
    );
    let admin = proxy.admin.expect("--admin-listen serves");
    let (headers, first) = accepted(keyed(&proxy, "first", "\"k1\"")).await;
    assert!(!headers.contains_key("idempotent-replayed"), "{headers:?}");
    let id = event_id(&first);
    assert_eq!(receiver.next().await.json()["eventId"], id);

    // Sent again, unchanged: the first receipt, said to be a replay, and nothing accepted.
    let (headers, again) = accepted(keyed(&proxy, "first", "\"k1\"")).await;
    assert_eq!(headers["idempotent-replayed"], "true");
    assert_eq!(again, first);
    let metrics = scrape(admin).await;
    assert!(
        metrics.contains("async_request_idempotent_replays_total{instance=\"0\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("async_request_accepted_total{instance=\"0\"} 1"),
        "{metrics}"
    );
    // Another key is other work: once its callback came, the upstream was called once per key.
    let (_, other) = accepted(keyed(&proxy, "second", "\"k2\"")).await;
    assert_ne!(event_id(&other), id);
    let notification = receiver.next().await.json();
    assert_eq!(notification["eventId"], event_id(&other));
    assert_eq!(notification["response"], "second");
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn require_idempotency_key_refuses_an_async_request_without_one() {
    let (upstream, calls) = counting_upstream().await;
    let mut receiver = Receiver::start(Vec::new()).await;
    let [by_flag, by_variable, free] = three_ways(
        &format!("http://{upstream}"),
        &receiver.url(),
        &["--require-idempotency-key"],
        ("ASYNC_REQUEST_PROXY_REQUIRE_IDEMPOTENCY_KEY", "true"),
    );
    for proxy in [&by_flag, &by_variable] {
        let bare = async_post_of(proxy.url("/count"), "bare", &[]);
        assert_eq!(
            refusal(call(bare).await),
            (StatusCode::BAD_REQUEST, "idempotency_key_required".into())
        );
        let (_, receipt) = accepted(keyed(proxy, "keyed", "\"k1\"")).await;
        assert_eq!(receiver.next().await.json()["eventId"], event_id(&receipt));
    }
    // Only the keyed ones reached the upstream.
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    // By default a key is not required.
    let (_, receipt) = accepted(async_post_of(free.url("/count"), "bare", &[])).await;
    assert_eq!(receiver.next().await.json()["eventId"], event_id(&receipt));
}

#[tokio::test(flavor = "multi_thread")]
async fn after_the_idempotency_retention_the_same_request_starts_new_work() {
    let (upstream, calls) = counting_upstream().await;
    let mut receiver = Receiver::start(Vec::new()).await;
    let [by_flag, by_variable, default] = three_ways(
        &format!("http://{upstream}"),
        &receiver.url(),
        &["--idempotency-retention", "300ms"],
        ("ASYNC_REQUEST_PROXY_IDEMPOTENCY_RETENTION", "300ms"),
    );
    let mut first = Vec::new();
    for proxy in [&by_flag, &by_variable, &default] {
        let (_, receipt) = accepted(keyed(proxy, "same", "\"k1\"")).await;
        assert_eq!(receiver.next().await.json()["eventId"], event_id(&receipt));
        first.push(event_id(&receipt));
    }
    // Waiting out the retention is the promise itself: 300 ms from the first requests, and more.
    tokio::time::sleep(Duration::from_millis(400)).await;
    for (proxy, first) in [&by_flag, &by_variable].into_iter().zip(&first) {
        let (headers, receipt) = accepted(keyed(proxy, "same", "\"k1\"")).await;
        assert!(!headers.contains_key("idempotent-replayed"), "{headers:?}");
        assert_ne!(&event_id(&receipt), first, "a new event");
        assert_eq!(receiver.next().await.json()["eventId"], event_id(&receipt));
    }
    // The default retention (24 h) still holds the key.
    let (headers, receipt) = accepted(keyed(&default, "same", "\"k1\"")).await;
    assert_eq!(headers["idempotent-replayed"], "true");
    assert_eq!(event_id(&receipt), first[2]);
    assert_eq!(calls.load(Ordering::SeqCst), 5);
}

/// `--help`, flag by flag: each flag's name and the text under it.
fn help_by_flag() -> Vec<(String, String)> {
    let output = Command::new(BIN).arg("--help").output().unwrap();
    assert!(output.status.success());
    let help = String::from_utf8(output.stdout).unwrap();
    let mut flags: Vec<(String, String)> = Vec::new();
    for line in help.lines().map(str::trim_start) {
        let named = line
            .strip_prefix("-h, ")
            .or_else(|| line.strip_prefix("-V, "))
            .unwrap_or(line);
        if named.starts_with("--") {
            let name = named.split_whitespace().next().unwrap();
            flags.push((name.to_owned(), String::new()));
        } else if let Some((_, text)) = flags.last_mut() {
            text.push_str(line);
            text.push(' ');
        }
    }
    flags
}

#[test]
fn help_names_the_documented_default_and_the_variable_of_every_flag() {
    let help = help_by_flag();
    let text = |flag: &str| {
        help.iter()
            .find(|(name, _)| name == flag)
            .map(|(_, text)| text.as_str())
            .unwrap_or_else(|| panic!("{flag} is not in --help"))
    };
    // docs/proxy.md's table; `--max-body` 2 MiB.
    let two_mib = (2 * 1024 * 1024).to_string();
    for (flag, default) in [
        ("--listen", "127.0.0.1:8080"),
        ("--store", "memory"),
        ("--postgres-schema", "tower_async_request"),
        ("--instance-id", "0"),
        ("--idempotency-retention", "24h"),
        ("--max-body", &two_mib),
        ("--upstream-timeout", "60s"),
        ("--header-read-timeout", "30s"),
        ("--request-body-timeout", "60s"),
        ("--max-connections", "1024"),
        ("--tunnel-idle-timeout", "5m"),
        ("--max-connections-per-receiver", "32"),
        ("--circuit-breaker-failures", "5"),
        ("--circuit-breaker-cool-down", "30s"),
        ("--disable-receiver-after", "5d"),
        ("--drain-timeout", "30s"),
        ("--log-format", "pretty"),
    ] {
        let default = format!("[default: {default}]");
        assert!(text(flag).contains(&default), "{flag}: {}", text(flag));
    }
    // Off, none or computed: no value to default to.
    for flag in [
        "--upstream-http2",
        "--upstream-ca-file",
        "--tls-cert-file",
        "--callback-url",
        "--unsigned-callbacks",
        "--status-path",
        "--status-secret-file",
        "--admin-listen",
        "--require-idempotency-key",
        "--worker-threads",
        "--allow-private-callbacks",
    ] {
        assert!(!text(flag).contains("[default:"), "{flag}: {}", text(flag));
    }
    assert!(
        text("--worker-threads").contains("one per CPU core"),
        "{}",
        text("--worker-threads")
    );
    // Each flag from ASYNC_REQUEST_PROXY_<FLAG> too.
    for (flag, text) in help
        .iter()
        .filter(|(flag, _)| flag != "--help" && flag != "--version")
    {
        let variable = flag[2..].to_uppercase().replace('-', "_");
        let variable = format!("[env: ASYNC_REQUEST_PROXY_{variable}=");
        assert!(text.contains(&variable), "{flag}: {text}");
    }
}

#[test]
fn secrets_are_never_taken_from_the_command_line() {
    // No flag takes a secret itself: such a flag is unknown (exit 2), and the line saying so
    // does not repeat the secret.
    for flag in [
        "--signing-key",
        "--standard-webhooks-secret",
        "--status-secret",
    ] {
        let stderr = refused(&[
            "--unsigned-callbacks",
            "--upstream",
            "http://127.0.0.1:9",
            flag,
            "secret-on-the-command-line",
        ]);
        assert!(stderr.contains(&format!("'{flag}'")), "{flag}: {stderr}");
        assert!(!stderr.contains("secret-on-the-command-line"), "{stderr}");
    }
    // Every flag for a secret names a file.
    let mut files = Vec::new();
    for (flag, _) in help_by_flag() {
        if ["secret", "signing-key", "tls-key"]
            .iter()
            .any(|word| flag.contains(word))
        {
            assert!(flag.ends_with("-file"), "{flag}");
            files.push(flag);
        }
    }
    assert_eq!(files.len(), 4, "{files:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn without_max_body_2_mib_is_accepted_and_one_byte_more_is_413() {
    let (upstream, calls) = counting_upstream().await;
    let mut receiver = Receiver::start(Vec::new()).await;
    let proxy = Proxy::unsigned(
        &format!("http://{upstream}"),
        &["--callback-url", &receiver.url()],
    );
    // One byte over, announced: refused before a byte of the body is sent.
    let mut stream = TcpStream::connect(proxy.address).await.unwrap();
    stream
        .write_all(
            b"POST /count HTTP/1.1\r\nhost: proxy\r\nelements-async-request: true\r\n\
              content-length: 2097153\r\n\r\n",
        )
        .await
        .unwrap();
    too_large(&mut stream).await;
    // Exactly 2 MiB: accepted.
    let at = async_post_of(proxy.url("/count"), vec![b'y'; 2 * 1024 * 1024], &[]);
    let (_, receipt) = accepted(at).await;
    assert_eq!(receiver.next().await.json()["eventId"], event_id(&receipt));
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

/// The threads of `proxy` besides its main one: the runtime's workers, as long as no blocking
/// work has started threads of its own (none has before the first request). Counted, not told
/// by name: a thread takes its name once it first runs, which on a busy machine may be later.
fn runtime_threads(proxy: &Proxy) -> usize {
    let tasks = std::fs::read_dir(format!("/proc/{}/task", proxy.child.id())).unwrap();
    tasks.count() - 1
}

#[tokio::test(flavor = "multi_thread")]
async fn worker_threads_default_to_one_per_cpu_core() {
    let upstream = format!("http://{}", closed_port());
    let default = Proxy::unsigned(&upstream, &[]);
    let three = Proxy::unsigned(&upstream, &["--worker-threads", "3"]);
    assert_eq!(runtime_threads(&three), 3);
    let cores = std::thread::available_parallelism().unwrap().get();
    assert_eq!(runtime_threads(&default), cores);
}

#[tokio::test(flavor = "multi_thread")]
async fn without_listen_it_serves_on_127_0_0_1_8080() {
    use std::io::Write;
    // Only where 8080 is free: where something else has it, the test says so and passes.
    let skip = |why: &str| {
        let _ = writeln!(
            std::io::stderr(),
            "skipped proxy_flags' --listen default: 127.0.0.1:8080 {why}"
        );
    };
    match std::net::TcpListener::bind("127.0.0.1:8080") {
        Ok(probe) => drop(probe),
        Err(error) => return skip(&format!("is in use ({error})")),
    }
    let upstream = format!("http://{}/api", axum_upstream().await);
    let mut child = Command::new(BIN)
        .env_clear()
        .envs([
            ("ASYNC_REQUEST_PROXY_UPSTREAM", upstream.as_str()),
            ("ASYNC_REQUEST_PROXY_UNSIGNED_CALLBACKS", "true"),
            ("RUST_LOG", "warn"),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let Some(Ok(line)) = lines.next() else {
        // Ended without a word: taken by something else since the probe, or a failure.
        let status = child.wait().unwrap();
        let mut stderr = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
        assert!(
            status.code() == Some(2) && stderr.contains("--listen 127.0.0.1:8080"),
            "{status}: {stderr}"
        );
        return skip("was taken meanwhile");
    };
    let proxy = Proxy::adopt(child, "127.0.0.1:8080".parse().unwrap());
    assert!(
        line.starts_with("async-request-proxy: listening on http://127.0.0.1:8080,"),
        "{line}"
    );
    get_ok(proxy.url("/hello"), b"hello").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_status_secret_from_the_environment_makes_tokens_that_read_after_a_restart() {
    let upstream = axum_upstream().await;
    let mut receiver = Receiver::start(Vec::new()).await;
    let file = temp("status-secret.redb");
    let _ = std::fs::remove_file(&file);
    let (upstream, callback, store) = (
        format!("http://{upstream}/api"),
        receiver.url(),
        format!("redb:{}", file.display()),
    );
    let args = [
        "--unsigned-callbacks",
        "--upstream",
        &upstream,
        "--callback-url",
        &callback,
        "--store",
        &store,
        "--status-path",
        "/events",
    ];
    let secret = (
        "ASYNC_REQUEST_PROXY_STATUS_SECRET",
        "a status secret from the environment",
    );
    let first = Proxy::start_with(&args, &[secret]);
    let (headers, receipt) = accepted(async_post(first.url("/report"))).await;
    let location = headers[header::LOCATION].to_str().unwrap().to_owned();
    assert_eq!(receiver.next().await.json()["eventId"], event_id(&receipt));
    terminated(first, 0).await;

    // Another proxy on the store, with the same variable: the first one's token reads.
    let second = Proxy::start_with(&args, &[secret]);
    let (status, event) = get_json(second.url(&location)).await;
    assert_eq!(status, StatusCode::OK, "{event}");
    assert_eq!(event["eventId"], event_id(&receipt));
    assert_eq!(event["eventStatus"], "completed", "{event}");
    terminated(second, 0).await;
    // Without it (a random secret), or with another value, the token names nothing.
    for env in [
        vec![],
        vec![(
            "ASYNC_REQUEST_PROXY_STATUS_SECRET",
            "another secret, 16 bytes or more",
        )],
    ] {
        let other = Proxy::start_with(&args, &env);
        let (status, body) = get_json(other.url(&location)).await;
        assert_eq!(
            (status, &body["code"]),
            (StatusCode::NOT_FOUND, &"not_found".into()),
            "{env:?}"
        );
        terminated(other, 0).await;
    }
    let _ = std::fs::remove_file(file);
}

#[tokio::test(flavor = "multi_thread")]
async fn with_status_path_get_under_it_stays_at_the_proxy_and_no_callback_url_is_needed() {
    let (upstream, calls) = counting_upstream().await;
    let upstream = format!("http://{upstream}");
    // Neither --callback-url nor a callback header: the client polls.
    let proxy = Proxy::unsigned(&upstream, &["--status-path", "/events"]);
    let (headers, receipt) = accepted(async_post_of(proxy.url("/count"), "polled", &[])).await;
    let location = headers[header::LOCATION].to_str().unwrap().to_owned();
    let deadline = Instant::now() + Duration::from_secs(20);
    let done = loop {
        let (status, event) = get_json(proxy.url(&location)).await;
        assert_eq!(status, StatusCode::OK, "{event}");
        if event["eventStatus"] == "completed" {
            break event;
        }
        assert!(Instant::now() < deadline, "{event}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(done["eventId"], event_id(&receipt));
    assert_eq!(done["response"], "polled", "{done}");
    assert_eq!(calls.load(Ordering::SeqCst), 1, "the job's call");

    // GET under the path is the proxy's, whatever follows it; other methods and paths pass.
    for path in [
        "/events/1?token=AAAAAAAAAAAAAAAAAAAAAA",
        "/events/x",
        "/events/1/more",
    ] {
        let (status, body) = get_json(proxy.url(path)).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}: {body}");
        assert_eq!(body["code"], "not_found", "{path}: {body}");
    }
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "a GET under /events reached the upstream"
    );
    for request in [
        Request::post(proxy.url("/events/1")),
        Request::get(proxy.url("/eventsx")),
    ] {
        let (status, _, _) = call(request.body(Full::default()).unwrap()).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
    }
    assert_eq!(calls.load(Ordering::SeqCst), 3);

    // Without --status-path, an async request needs somewhere to send its callback.
    let plain = Proxy::unsigned(&upstream, &[]);
    let request = async_post_of(plain.url("/count"), "nowhere", &[]);
    assert_eq!(
        refusal(call(request).await),
        (StatusCode::BAD_REQUEST, "missing_callback_url".into())
    );
}

/// An https:// upstream with the test CA's certificate for 127.0.0.1, offering HTTP/2 and
/// HTTP/1.1 by ALPN; it answers every request with the protocol ALPN chose and the version the
/// request came in.
async fn alpn_upstream() -> SocketAddr {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let chain = CertificateDer::pem_file_iter(format!("{TLS_DIR}/upstream.pem"))
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(format!("{TLS_DIR}/upstream.key")).unwrap();
    // ring's provider, as the proxy's.
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(stream) = acceptor.accept(stream).await else {
                    return;
                };
                let alpn = stream
                    .get_ref()
                    .1
                    .alpn_protocol()
                    .map(|protocol| String::from_utf8_lossy(protocol).into_owned());
                let h2 = alpn.as_deref() == Some("h2");
                let service = hyper::service::service_fn(move |request: Request<_>| {
                    let _: &hyper::body::Incoming = request.body();
                    let answer = format!("{alpn:?} {:?}", request.version());
                    async move {
                        Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(
                            Bytes::from(answer),
                        )))
                    }
                });
                let io = TokioIo::new(stream);
                let _ = match h2 {
                    true => {
                        hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                            .serve_connection(io, service)
                            .await
                    }
                    false => {
                        hyper::server::conn::http1::Builder::new()
                            .serve_connection(io, service)
                            .await
                    }
                };
            });
        }
    });
    address
}

#[tokio::test(flavor = "multi_thread")]
async fn upstream_http2_speaks_http2_to_an_https_upstream_as_alpn_agrees() {
    let upstream = alpn_upstream().await;
    let (url, ca) = (
        format!("https://127.0.0.1:{}", upstream.port()),
        format!("{TLS_DIR}/ca.pem"),
    );
    let args = [
        "--unsigned-callbacks",
        "--upstream",
        &url,
        "--upstream-ca-file",
        &ca,
    ];
    for (extra, heard) in [
        (&["--upstream-http2"][..], "Some(\"h2\") HTTP/2.0"),
        // Without it, HTTP/1.1 and no ALPN offered.
        (&[][..], "None HTTP/1.1"),
    ] {
        let proxy = Proxy::start(&[&args[..], extra].concat());
        let (status, _, body) = fetch(proxy.url("/protocol")).await;
        assert_eq!(status, StatusCode::OK, "{extra:?}");
        assert_eq!(String::from_utf8_lossy(&body), heard, "{extra:?}");
    }
}

/// A proxy serving the status endpoint at `/events` in front of `upstream`, with one async
/// request to `/hold` accepted: the proxy, the receipt's status URL, and the receipt.
async fn polling_proxy_holding_a_job(
    upstream: SocketAddr,
    receiver: &Receiver,
) -> (Proxy, String, Bytes) {
    let proxy = Proxy::unsigned(
        &format!("http://{upstream}"),
        &[
            "--callback-url",
            &receiver.url(),
            "--status-path",
            "/events",
        ],
    );
    let (headers, receipt) = accepted(async_post(proxy.url("/hold"))).await;
    let location = headers[header::LOCATION].to_str().unwrap().to_owned();
    (proxy, location, receipt)
}

/// `DELETE` on a status URL through `proxy`.
async fn cancel(proxy: &Proxy, location: &str) -> http::Response<hyper::body::Incoming> {
    let request = Request::delete(proxy.url(location))
        .body(Full::new(Bytes::new()))
        .unwrap();
    common::client().request(request).await.unwrap()
}

/// The status URL through the proxy: `Prefer: wait=1` on a held job answers `running` with the
/// preference applied, and `DELETE` cancels it: `202`, a `cancelled` notification, then `409`.
#[tokio::test(flavor = "multi_thread")]
async fn through_the_proxy_a_status_url_waits_and_cancels() {
    let (upstream, mut begun, _release) = holding_upstream().await;
    let mut receiver = Receiver::start(Vec::new()).await;
    let (proxy, location, receipt) = polling_proxy_holding_a_job(upstream, &receiver).await;
    begun.recv().await.expect("the job runs");

    let waited = common::client()
        .request(
            Request::get(proxy.url(&location))
                .header("prefer", "wait=1")
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(waited.status(), StatusCode::OK);
    assert_eq!(waited.headers()["preference-applied"], "wait=1");

    let cancelled = cancel(&proxy, &location).await;
    assert_eq!(cancelled.status(), StatusCode::ACCEPTED);
    let notification = receiver.next().await.json();
    assert_eq!(notification["eventStatus"], "cancelled");
    assert_eq!(notification["eventId"], event_id(&receipt));
    assert_eq!(
        cancel(&proxy, &location).await.status(),
        StatusCode::CONFLICT
    );
    terminated(proxy, 0).await;
}

/// A cancel drops the proxy's forwarded request: the API behind it sees its connection closed.
#[tokio::test(flavor = "multi_thread")]
async fn a_cancel_through_the_proxy_closes_the_forwarded_request() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = listener.local_addr().unwrap();
    let (began, begun) = tokio::sync::oneshot::channel();
    let (was_closed, closed) = tokio::sync::oneshot::channel();
    // An API that reads the request and never answers, and says when its connection closes.
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut seen = Vec::new();
        let mut buffer = [0u8; 4096];
        let mut began = Some(began);
        loop {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(n) => seen.extend_from_slice(&buffer[..n]),
            }
            if seen.windows(4).any(|w| w == b"\r\n\r\n") {
                if let Some(began) = began.take() {
                    let _ = began.send(());
                }
            }
        }
        let _ = was_closed.send(());
    });
    let receiver = Receiver::start(Vec::new()).await;
    let (proxy, location, _) = polling_proxy_holding_a_job(upstream, &receiver).await;
    begun.await.expect("the API got the request");
    let cancelled = cancel(&proxy, &location).await;
    assert_eq!(cancelled.status(), StatusCode::ACCEPTED);
    tokio::time::timeout(Duration::from_secs(20), closed)
        .await
        .expect("the forwarded request's connection was closed")
        .unwrap();
    terminated(proxy, 0).await;
}
