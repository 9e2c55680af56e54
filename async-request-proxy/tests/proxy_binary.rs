//! The real `async-request-proxy` binary on 127.0.0.1, in front of real upstreams (an axum one
//! and Python's `http.server`), with a real callback receiver.

// The library's test helpers and the gRPC example's service, shared rather than copied.
#[path = "../../tests/support/mod.rs"]
#[allow(unexpected_cfgs)] // its PostgreSQL helper is behind the library's `postgres` feature
mod support;

#[path = "../../examples/support/folders.rs"]
#[allow(dead_code)] // the example and the tests use different parts
mod proto;

// The running binary and the helpers the proxy's test files share.
mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use common::{
    accepted, async_post, axum_upstream, call, client, closed_port, event_id, exit_and_report,
    exit_code, fetch, get_json, get_ok, hello, holding_upstream, read_until, read_until_closed,
    refused, released, temp, terminated, tunnel_closes, write, Proxy, BIN, TLS_DIR,
};
use http::{header, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use support::{Answer, Receiver};
use tokio::net::TcpListener;
use tower_async_request::verify::ElementsVerifier;

/// Ends the `python` upstream.
fn stop(mut python: Child) {
    let _ = python.kill();
    let _ = python.wait();
}

/// `python3 <args> PORT --bind 127.0.0.1` in `dir`, once it listens; the process and its port.
fn python_upstream(dir: &Path, args: &[&str]) -> (Child, u16) {
    let port = closed_port().port();
    let python = Command::new("python3")
        .args(args)
        .args([&port.to_string(), "--bind", "127.0.0.1"])
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("python3 is on every machine");
    // Until it listens.
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "python's upstream did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    (python, port)
}

/// Instance 30 before `upstream`'s `/api`: callbacks to `callback` signed with `key`, admin on.
fn instance_30(upstream: SocketAddr, callback: &str, key: &Path) -> Proxy {
    Proxy::start(&[
        "--upstream",
        &format!("http://{upstream}/api"),
        "--callback-url",
        callback,
        "--instance-id",
        "30",
        "--signing-key-file",
        key.to_str().unwrap(),
        "--admin-listen",
        "127.0.0.1:0",
    ])
}

#[tokio::test(flavor = "multi_thread")]
async fn sync_answers_pass_through_and_async_answers_arrive_signed() {
    let upstream = axum_upstream().await;
    let mut receiver = Receiver::start(Vec::new()).await;
    let key = temp("sync-async.key");
    write(&key, "proxy-signing-key\n");
    let proxy = instance_30(upstream, &receiver.url(), &key);

    let (status, headers, body) = fetch(proxy.url("/hello")).await;
    assert_eq!((status, &body[..]), (StatusCode::OK, &b"hello"[..]));
    assert_eq!(headers[header::CONTENT_TYPE], "text/plain; charset=utf-8");

    let (_, receipt) = accepted(async_post(proxy.url("/report"))).await;
    let event_id = event_id(&receipt);
    let hit = receiver.next().await;
    ElementsVerifier::new("proxy-signing-key")
        .verify(&hit.headers, &hit.body)
        .expect("the callback is signed with the key from the file");
    let notification = hit.json();
    assert_eq!(notification["eventId"], event_id);
    assert_eq!(notification["instanceId"], 30);
    assert_eq!(notification["statusCode"], 200);
    assert_eq!(notification["response"]["report"], "ready");

    // The operator's listener: health, the admin routes, and the metrics of what just happened.
    let admin = proxy.admin.expect("--admin-listen serves");
    let (status, health) = get_json(format!("http://{admin}/admin/health")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(health["status"], "ok");
    let (status, event) = get_json(format!("http://{admin}/admin/events/{event_id}")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(event["eventId"], event_id);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, _, scrape) = fetch(format!("http://{admin}/metrics")).await;
        let scrape = String::from_utf8_lossy(&scrape).into_owned();
        if scrape.contains("async_request_delivered_total{instance=\"30\"} 1") {
            assert!(scrape.contains("async_request_accepted_total{instance=\"30\"} 1"));
            break;
        }
        assert!(Instant::now() < deadline, "{scrape}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = std::fs::remove_file(key);
}

#[tokio::test(flavor = "multi_thread")]
async fn with_status_path_the_receipts_location_answers_through_the_proxy() {
    let upstream = axum_upstream().await;
    let mut receiver = Receiver::start(Vec::new()).await;
    let key = temp("status.key");
    write(&key, "status-signing-key");
    let secret = temp("status.secret");
    write(&secret, "a status secret, 16 bytes or more\n");
    let proxy = Proxy::start(&[
        "--upstream",
        &format!("http://{upstream}/api"),
        "--callback-url",
        &receiver.url(),
        "--signing-key-file",
        key.to_str().unwrap(),
        "--status-path",
        "/events",
        "--status-secret-file",
        secret.to_str().unwrap(),
    ]);
    let (headers, receipt) = accepted(async_post(proxy.url("/report"))).await;
    let event_id = event_id(&receipt);
    let location = headers[header::LOCATION].to_str().unwrap().to_owned();
    assert!(
        location.starts_with(&format!("/events/{event_id}?token=")),
        "{location}"
    );
    // Right away: the event, whatever it has got to.
    let (status, now) = get_json(proxy.url(&location)).await;
    assert_eq!(status, StatusCode::OK, "{now}");
    assert_eq!(now["eventId"], event_id);
    assert!(
        ["dispatched", "running", "completed"].contains(&now["eventStatus"].as_str().unwrap()),
        "{now}"
    );
    // Once its callback came: completed, with the upstream's answer.
    assert_eq!(receiver.next().await.json()["eventId"], event_id);
    let (status, done) = get_json(proxy.url(&location)).await;
    assert_eq!(status, StatusCode::OK, "{done}");
    assert_eq!(done["eventStatus"], "completed", "{done}");
    assert_eq!(done["response"]["report"], "ready", "{done}");
    // Another token: as if there were no such event.
    let (path, _) = location.split_once("?token=").unwrap();
    let wrong = format!("{path}?token=AAAAAAAAAAAAAAAAAAAAAA");
    let (status, body) = get_json(proxy.url(&wrong)).await;
    assert_eq!(
        (status, &body["code"]),
        (StatusCode::NOT_FOUND, &"not_found".into())
    );
    let _ = std::fs::remove_file(key);
    let _ = std::fs::remove_file(secret);
}

/// Upper bounds of `async_request_receipt_seconds`' buckets, as docs/proxy.md lists them.
const RECEIPT_BOUNDS: &[&str] = &[
    "0.0001", "0.00025", "0.0005", "0.001", "0.0025", "0.005", "0.01", "0.025", "0.05", "0.1",
    "0.25", "0.5", "1", "2.5", "5", "10",
];
/// Upper bounds of `async_request_delivery_seconds`' buckets, as docs/proxy.md lists them.
const DELIVERY_BOUNDS: &[&str] = &[
    "0.01", "0.05", "0.1", "0.25", "0.5", "1", "2.5", "5", "10", "30", "60", "300", "900", "1800",
    "3600", "7200", "18000", "36000", "86400", "172800",
];

/// The `le` bounds `scrape` has for histogram `metric` of instance 30, in order.
fn bounds<'a>(scrape: &'a str, metric: &str) -> Vec<&'a str> {
    let prefix = format!("{metric}_bucket{{instance=\"30\",le=\"");
    scrape
        .lines()
        .filter_map(|line| line.strip_prefix(&prefix))
        .map(|rest| rest.split('"').next().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_admin_listener_serves_the_documented_paths_and_latency_histograms() {
    let upstream = axum_upstream().await;
    let mut receiver = Receiver::start(Vec::new()).await;
    let key = temp("admin.key");
    write(&key, "admin-signing-key");
    let proxy = instance_30(upstream, &receiver.url(), &key);
    let admin = proxy.admin.expect("--admin-listen serves");
    let post = |path: String| {
        call(
            Request::post(format!("http://{admin}{path}"))
                .body(Full::default())
                .unwrap(),
        )
    };
    let (_, receipt) = accepted(async_post(proxy.url("/report"))).await;
    let event_id = event_id(&receipt);
    receiver.next().await;

    // docs/operating.md's five routes, under /admin.
    let (status, health) = get_json(format!("http://{admin}/admin/health")).await;
    assert_eq!((status, &health["status"]), (StatusCode::OK, &"ok".into()));
    let (status, event) = get_json(format!("http://{admin}/admin/events/{event_id}")).await;
    assert_eq!((status, &event["eventId"]), (StatusCode::OK, &event_id));
    // A second event, whose receiver says `410 Gone`: a dead letter at once.
    receiver.then([Answer::status(410)]);
    let (_, receipt) = accepted(async_post(proxy.url("/report"))).await;
    let dead_event = common::event_id(&receipt);
    assert_eq!(receiver.next().await.answered, StatusCode::GONE);
    let dead_letters = format!("http://{admin}/admin/dead-letters?instance=30");
    let deadline = Instant::now() + Duration::from_secs(20);
    let dead = loop {
        let (status, page) = get_json(dead_letters.clone()).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        if page["deadLetters"].as_array().unwrap().len() == 1 {
            break page["deadLetters"][0].clone();
        }
        assert!(Instant::now() < deadline, "no dead letter: {page}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(dead["eventId"], dead_event, "{dead}");
    let notification_id = dead["notificationId"].clone();
    let (status, _, redelivered) =
        post(format!("/admin/dead-letters/{notification_id}/redeliver")).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let redelivered: Value = serde_json::from_slice(&redelivered).unwrap();
    assert_eq!(
        redelivered,
        serde_json::json!({"notificationId": notification_id, "state": "pending"})
    );
    let hit = receiver.next().await;
    assert_eq!(hit.answered, StatusCode::OK);
    assert_eq!(hit.json()["eventId"], dead_event);
    let (status, _, bulk) = post("/admin/dead-letters/redeliver?instance=30".into()).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let bulk: Value = serde_json::from_slice(&bulk).unwrap();
    assert_eq!(
        bulk,
        serde_json::json!({"redelivered": [], "more": false}),
        "none left"
    );
    // The root paths of earlier versions still answer.
    let (status, health) = get_json(format!("http://{admin}/health")).await;
    assert_eq!((status, &health["status"]), (StatusCode::OK, &"ok".into()));

    // The latencies are histograms with the documented buckets, no quantiles.
    let deadline = Instant::now() + Duration::from_secs(10);
    let scrape = loop {
        let scrape = common::scrape(admin).await;
        if scrape.contains("async_request_delivered_total{instance=\"30\"} 2") {
            break scrape;
        }
        assert!(Instant::now() < deadline, "{scrape}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    for (metric, documented) in [
        ("async_request_receipt_seconds", RECEIPT_BOUNDS),
        ("async_request_delivery_seconds", DELIVERY_BOUNDS),
    ] {
        let expected: Vec<&str> = documented.iter().copied().chain(["+Inf"]).collect();
        assert_eq!(bounds(&scrape, metric), expected, "{metric}: {scrape}");
    }
    assert!(
        scrape.contains("async_request_receipt_seconds_bucket{instance=\"30\",le=\"+Inf\"} 2"),
        "{scrape}"
    );
    assert!(!scrape.contains("quantile="), "{scrape}");
    let _ = std::fs::remove_file(key);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_python_upstream_is_served_byte_for_byte_and_asynchronously() {
    let dir = temp("python-root");
    std::fs::create_dir_all(&dir).unwrap();
    let content: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(dir.join("data.bin"), &content).unwrap();
    let (python, port) = python_upstream(&dir, &["-m", "http.server"]);
    let mut receiver = Receiver::start(Vec::new()).await;
    let proxy = Proxy::unsigned(
        &format!("http://127.0.0.1:{port}"),
        &["--callback-url", &receiver.url()],
    );
    let (status, _, body) = fetch(proxy.url("/data.bin")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body == content, "byte for byte");

    let request = Request::get(proxy.url("/data.bin"))
        .header("Elements-Async-Request", "true")
        .body(Full::default())
        .unwrap();
    accepted(request).await;
    let notification = receiver.next().await.json();
    assert_eq!(notification["statusCode"], 200);
    // Not JSON or text: the answer travels as base64.
    assert_eq!(notification["responseEncoding"], "base64", "{notification}");
    stop(python);
    let _ = std::fs::remove_dir_all(dir);
}

/// An HTTP/1.0 upstream, as Python's `BaseHTTPRequestHandler` is by default: it answers in
/// HTTP/1.0 and closes every connection. `/sized` has a `Content-Length`; any other path has none
/// and says `Connection: close`, its body ending with the connection. Arguments
/// `PORT --bind ADDRESS`, as `http.server`'s.
const HTTP10_SERVER: &str = r#"
import http.server, sys
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        sized = self.path == "/sized"
        body = b"sized" if sized else b"until the upstream closes"
        self.send_response(200)
        if sized:
            self.send_header("Content-Length", str(len(body)))
        else:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
port, bind = int(sys.argv[1]), sys.argv[3]
http.server.HTTPServer((bind, port), Handler).serve_forever()
"#;

#[tokio::test(flavor = "multi_thread")]
async fn an_http10_upstream_is_answered_in_the_proxys_version_on_a_kept_connection() {
    use tokio::io::AsyncWriteExt;
    let (python, port) = python_upstream(&std::env::temp_dir(), &["-c", HTTP10_SERVER]);
    let key = temp("http10.key");
    write(&key, "http10-signing-key");
    let proxy = Proxy::start(&[
        "--upstream",
        &format!("http://127.0.0.1:{port}"),
        "--signing-key-file",
        key.to_str().unwrap(),
    ]);

    // An HTTP/1.1 client: HTTP/1.1 answers, every request on its one connection.
    let mut stream = tokio::net::TcpStream::connect(proxy.address).await.unwrap();
    for round in 0..2 {
        stream
            .write_all(b"GET /sized HTTP/1.1\r\nhost: proxy\r\n\r\n")
            .await
            .unwrap();
        let (head, body) = split_answer(&read_until(&mut stream, b"sized").await);
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{round}: {head}");
        assert!(head.contains("\r\ncontent-length: 5\r\n"), "{head}");
        assert!(!head.contains("connection:"), "{head}");
        assert_eq!(body, b"sized");
        // No length from the upstream, which ends the body by closing: chunked to the client.
        stream
            .write_all(b"GET /unsized HTTP/1.1\r\nhost: proxy\r\n\r\n")
            .await
            .unwrap();
        let (head, body) = split_answer(&read_until(&mut stream, b"\r\n0\r\n\r\n").await);
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{round}: {head}");
        assert!(
            head.contains("\r\ntransfer-encoding: chunked\r\n"),
            "{head}"
        );
        assert!(
            !head.contains("connection:"),
            "the upstream's close is its own: {head}"
        );
        assert_eq!(dechunk(&body), b"until the upstream closes");
    }

    // An HTTP/1.0 client that asks to keep its connection keeps it while answers have a length;
    // one without is its connection's end, as HTTP/1.0 has no other way to say where it ends.
    let mut old = tokio::net::TcpStream::connect(proxy.address).await.unwrap();
    for round in 0..2 {
        old.write_all(b"GET /sized HTTP/1.0\r\nconnection: keep-alive\r\n\r\n")
            .await
            .unwrap();
        let (head, body) = split_answer(&read_until(&mut old, b"sized").await);
        assert!(head.starts_with("HTTP/1.0 200 OK\r\n"), "{round}: {head}");
        assert!(head.contains("\r\nconnection: keep-alive\r\n"), "{head}");
        assert_eq!(body, b"sized");
    }
    old.write_all(b"GET /unsized HTTP/1.0\r\nconnection: keep-alive\r\n\r\n")
        .await
        .unwrap();
    let received = read_until_closed(&mut old, Duration::from_secs(20)).await;
    let (head, body) = split_answer(&received);
    assert!(head.starts_with("HTTP/1.0 200 OK\r\n"), "{head}");
    assert_eq!(body, b"until the upstream closes");
    stop(python);
    let _ = std::fs::remove_file(key);
}

/// An HTTP/1.x answer as it arrived: its head (status line and headers) as text, and its body.
fn split_answer(received: &[u8]) -> (String, Vec<u8>) {
    let end = received
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no head: {}", String::from_utf8_lossy(received)));
    let head = String::from_utf8_lossy(&received[..end + 2]).into_owned();
    (head, received[end + 4..].to_vec())
}

/// The data of a whole chunked body.
fn dechunk(mut body: &[u8]) -> Vec<u8> {
    let mut data = Vec::new();
    loop {
        let line = body.windows(2).position(|w| w == b"\r\n").expect("a size");
        let size = std::str::from_utf8(&body[..line]).unwrap();
        let size = usize::from_str_radix(size.split(';').next().unwrap().trim(), 16).unwrap();
        body = &body[line + 2..];
        if size == 0 {
            return data;
        }
        data.extend_from_slice(&body[..size]);
        body = &body[size + 2..];
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_upgrade_passes_through_the_binary() {
    let upstream = axum_upstream().await;
    let proxy = Proxy::unsigned(&format!("http://{upstream}/api"), &[]);
    support::upgrade::check_echo(proxy.address, "/upgrade").await;
}

/// Sends `request` on `stream`; checks nothing is answered within 500 ms (`context` says when).
async fn unanswered(stream: &mut tokio::net::TcpStream, request: &[u8], context: &str) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    stream.write_all(request).await.unwrap();
    let mut chunk = [0u8; 64];
    let early = tokio::time::timeout(Duration::from_millis(500), stream.read(&mut chunk)).await;
    assert!(early.is_err(), "answered {context}: {early:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_upgraded_connection_keeps_its_place_under_max_connections() {
    let upstream = axum_upstream().await;
    let proxy = Proxy::unsigned(
        &format!("http://{upstream}/api"),
        &["--max-connections", "1"],
    );
    let tunnel = support::upgrade::open_echo(proxy.address, "/upgrade").await;
    // The tunnel is the one connection allowed: another one is not read.
    let mut next = tokio::net::TcpStream::connect(proxy.address).await.unwrap();
    unanswered(
        &mut next,
        b"GET /hello HTTP/1.1\r\nhost: proxy\r\n\r\n",
        "beside an open tunnel",
    )
    .await;
    // The tunnel closes: its place goes to the next connection.
    drop(tunnel);
    let received = read_until(&mut next, b"hello").await;
    assert!(received.starts_with(b"HTTP/1.1 200"), "{received:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tunnel_idle_for_the_tunnel_idle_timeout_is_closed() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let upstream = axum_upstream().await;
    let proxy = Proxy::unsigned(
        &format!("http://{upstream}/api"),
        &["--tunnel-idle-timeout", "3s"],
    );
    let mut tunnel = support::upgrade::open_echo(proxy.address, "/upgrade").await;
    // Bytes every 500 ms keep it open past the timeout.
    let mut echoed = [0u8; 4];
    for _ in 0..8 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        tunnel.write_all(b"ping").await.unwrap();
        tunnel.read_exact(&mut echoed).await.unwrap();
        assert_eq!(&echoed, b"ping");
    }
    // Then nothing: closed.
    tunnel_closes(&mut tunnel).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_closes_open_tunnels_and_exits_0() {
    let upstream = axum_upstream().await;
    let proxy = Proxy::unsigned(&format!("http://{upstream}/api"), &[]);
    let mut tunnel = support::upgrade::open_echo(proxy.address, "/upgrade").await;
    proxy.signal(libc::SIGTERM);
    tunnel_closes(&mut tunnel).await;
    let code = exit_code(proxy).await;
    assert_eq!(code, Some(0));
}

/// Answers `GET /forwarded` through the proxy at `url` with `client`: the HTTP version it
/// answered in, and what the upstream heard in `X-Forwarded-Proto` and `-Host`.
async fn forwarded<C>(client: &Client<C, Full<Bytes>>, url: String) -> (http::Version, String)
where
    C: hyper_util::client::legacy::connect::Connect + Clone + Send + Sync + 'static,
{
    let response = client
        .request(Request::get(url).body(Full::default()).unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let version = response.version();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (version, String::from_utf8(body.to_vec()).unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn http2_clients_are_served_by_alpn_over_tls_and_by_prior_knowledge_in_cleartext() {
    let upstream = axum_upstream().await;
    // Cleartext: HTTP/2 with prior knowledge and HTTP/1.1 on the same port.
    let proxy = Proxy::unsigned(&format!("http://{upstream}/api"), &[]);
    let h2c: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http();
    let authority = proxy.address.to_string();
    assert_eq!(
        forwarded(&h2c, proxy.url("/forwarded")).await,
        (
            http::Version::HTTP_2,
            format!("Some(\"http\") Some(\"{authority}\")")
        )
    );
    // Cookies an HTTP/2 client sent in two fields reach the HTTP/1.1 upstream in one.
    let response = h2c
        .request(
            Request::get(proxy.url("/cookies"))
                .header(header::COOKIE, "a=1")
                .header(header::COOKIE, "b=2")
                .body(Full::default())
                .unwrap(),
        )
        .await
        .unwrap();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], br#"["a=1; b=2"]"#);
    assert_eq!(
        forwarded(&client(), proxy.url("/forwarded")).await,
        (
            http::Version::HTTP_11,
            format!("Some(\"http\") Some(\"{authority}\")")
        )
    );

    // TLS: HTTP/2 when the client offers it by ALPN, HTTP/1.1 when it does not.
    let (cert, key) = (
        format!("{TLS_DIR}/upstream.pem"),
        format!("{TLS_DIR}/upstream.key"),
    );
    let tls_proxy = serving_tls(upstream, &cert, &key, &[]);
    let url = format!("https://{}/forwarded", tls_proxy.address);
    let connector = |http2: bool| {
        let builder = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(test_ca_client_config())
            .https_only();
        if http2 {
            builder.enable_http2().build()
        } else {
            builder.enable_http1().build()
        }
    };
    let h2: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build(connector(true));
    let expected = format!("Some(\"https\") Some(\"{}\")", tls_proxy.address);
    assert_eq!(
        forwarded(&h2, url.clone()).await,
        (http::Version::HTTP_2, expected.clone())
    );
    let h1: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build(connector(false));
    assert_eq!(
        forwarded(&h1, url).await,
        (http::Version::HTTP_11, expected)
    );
}

/// A gRPC server: folder `missing` is `NOT_FOUND`, every other is copied.
struct GrpcFolders;

impl proto::Folders for GrpcFolders {
    async fn copy(
        &self,
        request: tonic::Request<proto::CopyRequest>,
    ) -> Result<tonic::Response<proto::CopyReply>, tonic::Status> {
        let request = request.into_inner();
        if request.folder_id == "missing" {
            return Err(tonic::Status::not_found("no such folder"));
        }
        Ok(tonic::Response::new(proto::CopyReply {
            path: request.destination,
            files_copied: 2,
        }))
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn grpc_calls_reach_an_http2_upstream_and_async_ones_arrive_signed() {
    use base64::Engine as _;
    use prost::Message as _;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(proto::FoldersServer::new(GrpcFolders))
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );
    let mut receiver = Receiver::start(Vec::new()).await;
    let key = temp("grpc.key");
    write(&key, "grpc-signing-key");
    let proxy = Proxy::start(&[
        "--upstream",
        &format!("http://{upstream}"),
        "--upstream-http2",
        "--callback-url",
        &receiver.url(),
        "--signing-key-file",
        key.to_str().unwrap(),
    ]);
    let channel = tonic::transport::Channel::from_shared(proxy.url(""))
        .unwrap()
        .connect()
        .await
        .expect("the proxy speaks HTTP/2");
    let mut client = proto::FoldersClient::new(channel);
    let copy = |folder: &str| proto::CopyRequest {
        folder_id: folder.into(),
        destination: format!("/{folder}Copy"),
    };

    // Plain calls: the answer, and an error status from the upstream's trailers.
    let reply = client.copy(copy("reports")).await.expect("OK").into_inner();
    assert_eq!(
        (reply.path.as_str(), reply.files_copied),
        ("/reportsCopy", 2)
    );
    let status = client.copy(copy("missing")).await.expect_err("NOT_FOUND");
    assert_eq!(
        (status.code(), status.message()),
        (tonic::Code::NotFound, "no such folder")
    );

    // An HTTP/1.1 request reaches the HTTP/2 upstream too (gRPC's answer to an unknown
    // method: trailers only, as headers).
    let (status, headers, _) = call(
        Request::post(proxy.url("/documents.Folders/Unknown"))
            .header(header::CONTENT_TYPE, "application/grpc")
            .body(Full::default())
            .unwrap(),
    )
    .await;
    assert_eq!(
        (status, headers["grpc-status"].as_bytes()),
        (StatusCode::OK, &b"12"[..])
    );

    // An async call: a receipt now, the answer signed at the callback URL.
    let mut request = tonic::Request::new(copy("archive"));
    request
        .metadata_mut()
        .insert("elements-async-request", "true".parse().unwrap());
    let receipt = client.copy(request).await.expect("a receipt");
    let event_id: u64 = receipt
        .metadata()
        .get("elements-event-id")
        .expect("the receipt's event id")
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(receipt.into_inner(), proto::CopyReply::default());
    let hit = receiver.next().await;
    ElementsVerifier::new("grpc-signing-key")
        .verify(&hit.headers, &hit.body)
        .expect("signed with the key from the file");
    let notification = hit.json();
    assert_eq!(notification["eventId"], event_id);
    assert_eq!(notification["grpcStatus"], 0);
    let message = base64::engine::general_purpose::STANDARD
        .decode(notification["response"].as_str().unwrap())
        .unwrap();
    let reply = proto::CopyReply::decode(&message[..]).unwrap();
    assert_eq!(
        (reply.path.as_str(), reply.files_copied),
        ("/archiveCopy", 2)
    );
    let _ = std::fs::remove_file(key);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_upstream_that_is_down_is_502_sync_and_failed_async() {
    let mut receiver = Receiver::start(Vec::new()).await;
    let proxy = Proxy::unsigned(
        &format!("http://{}", closed_port()),
        &["--callback-url", &receiver.url()],
    );
    let (status, _, body) = fetch(proxy.url("/x")).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert_eq!(
        serde_json::from_slice::<Value>(&body).unwrap()["code"],
        "upstream_unavailable"
    );
    accepted(async_post(proxy.url("/x"))).await;
    assert_eq!(receiver.next().await.json()["eventStatus"], "failed");
}

/// A proxy before `upstream`'s `/api` with the instances file `file`.
fn with_instances(upstream: SocketAddr, file: &Path) -> Proxy {
    Proxy::start(&[
        "--upstream",
        &format!("http://{upstream}/api"),
        "--instances",
        file.to_str().unwrap(),
    ])
}

/// An async `POST /report` to `proxy` with `Authorization: authorization`.
fn authorized(proxy: &Proxy, authorization: &str) -> Request<Full<Bytes>> {
    Request::post(proxy.url("/report"))
        .header("Elements-Async-Request", "true")
        .header(header::AUTHORIZATION, authorization)
        .body(Full::from("{}"))
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn sighup_with_a_changed_instances_file_rekeys_the_next_delivery() {
    let upstream = axum_upstream().await;
    let mut receiver = Receiver::start(Vec::new()).await;
    let file = temp("instances.toml");
    let receiver_url = receiver.url();
    let instances = |key: &str| {
        format!(
            "match = \"element\"\n\n[[instance]]\nid = 31\ncredentials = [\"globex-token\"]\n\
             callback_url = \"{receiver_url}\"\nsigning_key = \"{key}\"\n"
        )
    };
    write(&file, &instances("first-key"));
    let proxy = with_instances(upstream, &file);
    let request = || authorized(&proxy, "User abc, Element globex-token");
    let (status, _, _) = call(
        Request::post(proxy.url("/report"))
            .header("Elements-Async-Request", "true")
            .body(Full::default())
            .unwrap(),
    )
    .await;
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "no element token: unknown_instance"
    );
    accepted(request()).await;
    let hit = receiver.next().await;
    assert_eq!(hit.json()["instanceId"], 31);
    ElementsVerifier::new("first-key")
        .verify(&hit.headers, &hit.body)
        .unwrap();

    // A broken file keeps the instances as they were.
    write(&file, "this is = not [ toml");
    proxy.signal(libc::SIGHUP);
    // The reload ran and refused the file (not merely: has not run yet).
    proxy.logged(&["instances file not applied"]);
    accepted(request()).await;
    let hit = receiver.next().await;
    ElementsVerifier::new("first-key")
        .verify(&hit.headers, &hit.body)
        .expect("still the old key");

    write(&file, &instances("second-key"));
    proxy.signal(libc::SIGHUP);
    // The reload lands between two requests; the first callback signed with the new key ends it.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        accepted(request()).await;
        let hit = receiver.next().await;
        if ElementsVerifier::new("second-key")
            .verify(&hit.headers, &hit.body)
            .is_ok()
        {
            assert!(ElementsVerifier::new("first-key")
                .verify(&hit.headers, &hit.body)
                .is_err());
            break;
        }
        assert!(Instant::now() < deadline, "never re-keyed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = std::fs::remove_file(file);
}

#[test]
fn an_instances_file_that_does_not_parse_is_named_with_its_line_and_column() {
    for (name, text, at) in [
        (
            "syntax",
            "[[instance]]\nid = 1\ncredentials = [\"a\"] signing_key = \"k\"\n",
            "line 3, column 21",
        ),
        (
            "type",
            "[[instance]]\nid = \"thirty\"\ncredentials = [\"a\"]\n",
            "line 2, column 6",
        ),
    ] {
        let file = temp(&format!("unparsed-{name}.toml"));
        write(&file, text);
        let output = Command::new(BIN)
            .args(["--listen", "127.0.0.1:0"])
            .args(["--upstream", "http://127.0.0.1:9"])
            .args(["--instances", file.to_str().unwrap()])
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(2), "{name}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        let expected = format!("--instances {}: {at}: ", file.display());
        assert!(stderr.contains(&expected), "{name}: {stderr}");
        let _ = std::fs::remove_file(file);
    }
}

/// The proxy in front of nothing, with an instances file and `--log-format format`: its log
/// lines (standard error, through a pipe) of a request the upstream cannot take, and of a
/// `SIGHUP` after the file broke, up to the one saying the file was not applied.
fn log_of_a_failed_reload(format: &str) -> Vec<String> {
    use std::io::{Read, Write};
    let file = temp(&format!("logged-{format}.toml"));
    write(
        &file,
        "[[instance]]\nid = 1\ncredentials = [\"t\"]\nsigning_key = \"k\"\n",
    );
    let mut child = Command::new(BIN)
        .args(["--listen", "127.0.0.1:0", "--log-format", format])
        .args(["--upstream", &format!("http://{}", closed_port())])
        .args(["--instances", file.to_str().unwrap()])
        .env("RUST_LOG", "info")
        .env_remove("NO_COLOR")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the proxy binary starts");
    let stderr = BufReader::new(child.stderr.take().unwrap());
    let (sender, logged) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in stderr.lines().map_while(Result::ok) {
            let _ = sender.send(line);
        }
    });
    let stdout = child.stdout.take().unwrap();
    // Its log lines are read here, not by the helper.
    let proxy = Proxy::listening(child, stdout, std::sync::mpsc::channel().1);
    let mut lines = Vec::new();
    let mut until = |said: &str| loop {
        let line = logged
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|_| panic!("not logged: {said:?}; logged: {lines:?}"));
        let found = line.contains(said);
        lines.push(line);
        if found {
            return;
        }
    };
    let mut client = std::net::TcpStream::connect(proxy.address).unwrap();
    client
        .write_all(b"GET / HTTP/1.1\r\nhost: proxy\r\nconnection: close\r\n\r\n")
        .unwrap();
    client.read_to_end(&mut Vec::new()).unwrap();
    until("could not be reached");
    // Serving, so its signal handlers are in place (SIGHUP would otherwise end it).
    write(&file, "this is = not [ toml");
    proxy.signal(libc::SIGHUP);
    until("instances file not applied");
    let _ = std::fs::remove_file(file);
    lines
}

#[test]
fn json_log_lines_are_objects_with_each_key_once() {
    let lines = log_of_a_failed_reload("json");
    for line in &lines {
        serde_json::from_str::<UniqueKeys>(line).unwrap_or_else(|error| panic!("{error}: {line}"));
    }
    let reload: Value = serde_json::from_str(lines.last().unwrap()).unwrap();
    let fields = &reload["fields"];
    assert!(
        fields["message"]
            .as_str()
            .unwrap()
            .starts_with("instances file not applied"),
        "{reload}"
    );
    assert!(
        fields["error"].as_str().unwrap().contains("--instances"),
        "{reload}"
    );
}

#[test]
fn pretty_log_lines_into_a_pipe_have_no_colours() {
    let lines = log_of_a_failed_reload("pretty");
    assert!(lines.last().unwrap().contains("ERROR"), "{lines:?}");
    for line in &lines {
        assert!(!line.contains("\x1b["), "{line:?}");
    }
}

/// A JSON value whose objects name each key once (`serde_json::Value` keeps the last of a
/// key given twice, and so do most parsers of logs).
struct UniqueKeys;

impl<'de> serde::Deserialize<'de> for UniqueKeys {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(UniqueKeys)
    }
}

impl<'de> serde::de::Visitor<'de> for UniqueKeys {
    type Value = UniqueKeys;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<Self, E> {
        Ok(self)
    }

    fn visit_i64<E>(self, _: i64) -> Result<Self, E> {
        Ok(self)
    }

    fn visit_u64<E>(self, _: u64) -> Result<Self, E> {
        Ok(self)
    }

    fn visit_f64<E>(self, _: f64) -> Result<Self, E> {
        Ok(self)
    }

    fn visit_str<E>(self, _: &str) -> Result<Self, E> {
        Ok(self)
    }

    fn visit_unit<E>(self) -> Result<Self, E> {
        Ok(self)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut items: A) -> Result<Self, A::Error> {
        while items.next_element::<UniqueKeys>()?.is_some() {}
        Ok(self)
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self, A::Error> {
        let mut keys = std::collections::HashSet::new();
        while let Some(key) = map.next_key::<String>()? {
            if !keys.insert(key.clone()) {
                return Err(serde::de::Error::custom(format!("{key:?} twice")));
            }
            map.next_value::<UniqueKeys>()?;
        }
        Ok(self)
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn without_keys_it_refuses_to_start_unless_unsigned_callbacks_are_allowed() {
    let upstream = axum_upstream().await;
    let stderr = refused(&["--upstream", &format!("http://{upstream}/api")]);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    for flag in [
        "--signing-key-file",
        "--standard-webhooks-secret-file",
        "--unsigned-callbacks",
    ] {
        assert!(stderr.contains(flag), "{stderr}");
    }

    // Allowed: it starts, and its callbacks carry no signature.
    let mut receiver = Receiver::start(Vec::new()).await;
    let unsigned = Proxy::start(&[
        "--upstream",
        &format!("http://{upstream}/api"),
        "--callback-url",
        &receiver.url(),
        "--unsigned-callbacks",
    ]);
    accepted(async_post(unsigned.url("/report"))).await;
    let hit = receiver.next().await;
    assert_eq!(hit.json()["statusCode"], 200);
    for name in [
        tower_async_request::header::ELEMENTS_WEBHOOK_SIGNATURE,
        tower_async_request::header::WEBHOOK_SIGNATURE,
    ] {
        assert!(!hit.headers.contains_key(&name), "{:?}", hit.headers);
    }
    // Like every flag, from the environment too; and a key from the environment is a key.
    Proxy::start_with(
        &["--upstream", &format!("http://{upstream}/api")],
        &[("ASYNC_REQUEST_PROXY_UNSIGNED_CALLBACKS", "true")],
    );
    let keyed = Proxy::start_with(
        &[
            "--upstream",
            &format!("http://{upstream}/api"),
            "--callback-url",
            &receiver.url(),
        ],
        &[(
            "ASYNC_REQUEST_PROXY_SIGNING_KEY",
            "key-from-the-environment",
        )],
    );
    accepted(async_post(keyed.url("/report"))).await;
    let hit = receiver.next().await;
    ElementsVerifier::new("key-from-the-environment")
        .verify(&hit.headers, &hit.body)
        .expect("signed with the key from the environment");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_instance_without_keys_is_refused_at_start_and_on_sighup() {
    let upstream = axum_upstream().await;
    let mut receiver = Receiver::start(Vec::new()).await;
    let file = temp("unsigned-instances.toml");
    let instance = |key: &str| {
        format!(
            "[[instance]]\nid = 31\ncredentials = [\"globex-token\"]\ncallback_url = \"{}\"\n{key}",
            receiver.url()
        )
    };
    let keyless = instance("");
    let signed = instance("signing_key = \"globex-key\"\n");

    // At start: exit 2, the instance named.
    write(&file, &keyless);
    let stderr = refused(&[
        "--upstream",
        &format!("http://{upstream}/api"),
        "--instances",
        file.to_str().unwrap(),
    ]);
    assert!(stderr.contains("instance 31"), "{stderr}");
    assert!(stderr.contains("--unsigned-callbacks"), "{stderr}");

    // On SIGHUP: the file is refused, the instance stays as it was, its callbacks signed.
    write(&file, &signed);
    let proxy = with_instances(upstream, &file);
    let request = || authorized(&proxy, "Element globex-token");
    write(&file, &keyless);
    proxy.signal(libc::SIGHUP);
    proxy.logged(&[
        "instances file not applied",
        "instance 31",
        "--unsigned-callbacks",
    ]);
    accepted(request()).await;
    let hit = receiver.next().await;
    assert_eq!(hit.json()["instanceId"], 31);
    ElementsVerifier::new("globex-key")
        .verify(&hit.headers, &hit.body)
        .expect("still signed with the key of the file as it was");
    let _ = std::fs::remove_file(file);
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_drains_a_pending_delivery_and_exits_0() {
    let upstream = axum_upstream().await;
    // The receiver takes its time: the delivery is on its way when SIGTERM comes.
    let mut receiver =
        Receiver::start(vec![Answer::status(200).after(Duration::from_millis(700))]).await;
    let proxy = Proxy::unsigned(
        &format!("http://{upstream}/api"),
        &["--callback-url", &receiver.url()],
    );
    accepted(async_post(proxy.url("/report"))).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    proxy.signal(libc::SIGTERM);
    // Everything it printed, to the end of its output (the reader ends with the process).
    let (code, report) = exit_and_report(proxy).await;
    assert_eq!(code, Some(0), "{report}");
    assert!(report.contains("drained=true"), "{report}");
    assert!(report.contains("delivered=1"), "{report}");
    assert_eq!(receiver.next().await.answered, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_lets_a_synchronous_request_in_progress_finish() {
    let upstream = axum_upstream().await;
    let proxy = Proxy::unsigned(
        &format!("http://{upstream}/api"),
        &["--worker-threads", "1"],
    );
    // The upstream takes two seconds; SIGTERM comes while it works.
    let slow = tokio::spawn(call(
        Request::post(proxy.url("/slow"))
            .body(Full::default())
            .unwrap(),
    ));
    tokio::time::sleep(Duration::from_millis(300)).await;
    proxy.signal(libc::SIGTERM);
    let (status, _, body) = slow.await.unwrap();
    assert_eq!((status, &body[..]), (StatusCode::OK, &b"slow"[..]));
    let code = exit_code(proxy).await;
    assert_eq!(code, Some(0));
}

#[tokio::test(flavor = "multi_thread")]
async fn during_the_drain_admin_health_is_503_and_a_finished_drain_exits_0() {
    let (upstream, mut begun, release) = holding_upstream().await;
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
    let health = format!("http://{}/admin/health", proxy.admin.unwrap());
    assert_eq!(get_json(health.clone()).await.0, StatusCode::OK);
    accepted(async_post(proxy.url("/hold"))).await;
    begun.recv().await.expect("the job reaches the upstream");
    proxy.signal(libc::SIGTERM);
    // The job is held: the drain cannot end, and the admin listener says so.
    let deadline = Instant::now() + Duration::from_secs(20);
    let answer = loop {
        let (status, answer) = get_json(health.clone()).await;
        if status == StatusCode::SERVICE_UNAVAILABLE {
            break answer;
        }
        assert!(Instant::now() < deadline, "still {status}: {answer}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(answer["shuttingDown"], true, "{answer}");
    // And it keeps answering, each time on a new connection, while the job is held.
    for _ in 0..3 {
        let (status, answer) = get_json(health.clone()).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{answer}");
    }
    released(proxy, &release, &mut receiver).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_drain_that_abandons_a_job_exits_3() {
    let (upstream, mut begun, _release) = holding_upstream().await;
    let receiver = Receiver::start(Vec::new()).await;
    let proxy = Proxy::unsigned(
        &format!("http://{upstream}"),
        &[
            "--callback-url",
            &receiver.url(),
            "--drain-timeout",
            "200ms",
        ],
    );
    accepted(async_post(proxy.url("/hold"))).await;
    begun.recv().await.expect("the job reaches the upstream");
    // Never released: the deadline passes with the job running.
    let report = terminated(proxy, 3).await;
    assert!(report.contains("drained=false"), "{report}");
    assert!(report.contains("jobs_left=1"), "{report}");
}

#[test]
fn bad_flags_and_files_exit_2_with_one_line_naming_them() {
    let missing = temp("does-not-exist.toml");
    let short = temp("short.secret");
    write(&short, "fifteen bytes!!");
    for (args, names) in [
        (
            vec!["--upstream", "http://127.0.0.1:9", "--store", "sqlite:x"],
            "--store",
        ),
        (vec!["--upstream", "ftp://127.0.0.1:9"], "--upstream"),
        (
            vec![
                "--upstream",
                "http://127.0.0.1:9",
                "--instances",
                missing.to_str().unwrap(),
            ],
            "--instances",
        ),
        (
            vec![
                "--upstream",
                "http://127.0.0.1:9",
                "--upstream-timeout",
                "soon",
            ],
            "--upstream-timeout",
        ),
        (
            vec![
                "--upstream",
                "http://127.0.0.1:9",
                "--callback-url",
                "not a url",
            ],
            "default_callback_url",
        ),
        (
            vec![
                "--upstream",
                "http://127.0.0.1:9",
                "--header-read-timeout",
                "0s",
            ],
            "--header-read-timeout",
        ),
        (
            vec!["--upstream", "http://127.0.0.1:9", "--max-connections", "0"],
            "--max-connections",
        ),
        (
            vec![
                "--upstream",
                "http://127.0.0.1:9",
                "--tunnel-idle-timeout",
                "0ms",
            ],
            "--tunnel-idle-timeout",
        ),
        (
            vec![
                "--upstream",
                "https://127.0.0.1:9",
                "--upstream-ca-file",
                missing.to_str().unwrap(),
            ],
            "--upstream-ca-file",
        ),
        (
            vec!["--upstream", "http://127.0.0.1:9", "--worker-threads", "0"],
            "--worker-threads",
        ),
        (
            vec![
                "--upstream",
                "http://127.0.0.1:9",
                "--tls-cert-file",
                missing.to_str().unwrap(),
            ],
            "--tls-key-file",
        ),
        (
            vec![
                "--upstream",
                "http://127.0.0.1:9",
                "--tls-cert-file",
                missing.to_str().unwrap(),
                "--tls-key-file",
                missing.to_str().unwrap(),
            ],
            "--tls-cert-file",
        ),
        (
            vec![
                "--upstream",
                "http://127.0.0.1:9",
                "--tls-cert-file",
                concat!(
                    env!("CARGO_MANIFEST_DIR"),
                    "/../tests/data/tls/upstream.pem"
                ),
                "--tls-key-file",
                concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/data/tls/renewed.key"),
            ],
            "--tls-key-file",
        ),
        (
            vec![
                "--upstream",
                "http://127.0.0.1:9",
                "--status-path",
                "/events",
                "--status-secret-file",
                short.to_str().unwrap(),
            ],
            "status_secret must be at least 16 bytes",
        ),
        (
            vec![
                "--upstream",
                "http://127.0.0.1:9",
                "--status-secret-file",
                short.to_str().unwrap(),
            ],
            "--status-path",
        ),
        (
            vec![
                "--upstream",
                "http://127.0.0.1:9",
                "--idempotency-retention",
                "0s",
            ],
            "--idempotency-retention",
        ),
        (
            vec![
                "--upstream",
                "http://127.0.0.1:9",
                "--postgres-schema",
                "Not-A-Schema",
            ],
            "--postgres-schema",
        ),
        (vec!["--no-such-flag"], "--no-such-flag"),
        // clap's own messages span lines (usage, tips): said in one too.
        (vec![], "--upstream"),
    ] {
        // Keys or not, the flag or file is named: not the missing key.
        let stderr = refused(&[&["--unsigned-callbacks"], &args[..]].concat());
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
        assert!(stderr.starts_with("async-request-proxy: "), "{stderr}");
        assert!(stderr.contains(names), "{args:?}: {stderr}");
    }
    let _ = std::fs::remove_file(short);
}

#[tokio::test(flavor = "multi_thread")]
async fn with_redb_a_killed_proxy_delivers_every_accepted_event_after_a_restart() {
    let upstream = axum_upstream().await;
    let mut receiver = Receiver::start(Vec::new()).await;
    let store = temp("kill.redb");
    let _ = std::fs::remove_file(&store);
    let args = [
        "--upstream".to_owned(),
        format!("http://{upstream}/api"),
        "--callback-url".to_owned(),
        receiver.url(),
        "--store".to_owned(),
        format!("redb:{}", store.display()),
        "--unsigned-callbacks".to_owned(),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut events = Vec::new();
    {
        let mut proxy = Proxy::start(&args);
        for _ in 0..3 {
            let (_, receipt) = accepted(async_post(proxy.url("/slow"))).await;
            events.push(event_id(&receipt));
        }
        proxy.signal(libc::SIGKILL);
        proxy.wait();
    }
    let _proxy = Proxy::start(&args);
    let mut seen = Vec::new();
    for _ in 0..3 {
        let notification = receiver.next().await.json();
        assert_eq!(notification["eventStatus"], "failed", "{notification}");
        assert_eq!(
            notification["error"]["code"], "interrupted",
            "{notification}"
        );
        seen.push(notification["eventId"].clone());
    }
    seen.sort_by_key(|id| id.as_u64());
    events.sort_by_key(|id| id.as_u64());
    assert_eq!(seen, events);
    let _ = std::fs::remove_file(store);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_64_mib_body_streams_both_ways_in_under_32_mib() {
    let upstream = axum_upstream().await;
    let proxy = Proxy::unsigned(&format!("http://{upstream}/api"), &[]);
    const SIZE: usize = 64 << 20;
    const CHUNK: usize = 64 << 10;
    let chunks = Chunks {
        next: 0,
        count: SIZE / CHUNK,
        size: CHUNK,
    };
    let request = Request::post(proxy.url("/echo")).body(chunks).unwrap();
    let client = Client::builder(TokioExecutor::new()).build_http();
    let response = client.request(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body();
    let (mut total, mut sum) = (0usize, 0u64);
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.unwrap().into_data() {
            total += data.len();
            sum = data
                .iter()
                .fold(sum, |s, b| s.wrapping_mul(31).wrapping_add(*b as u64));
        }
    }
    assert_eq!(total, SIZE);
    let expected = (0..SIZE).fold(0u64, |s, i| {
        s.wrapping_mul(31).wrapping_add(pattern(i) as u64)
    });
    assert_eq!(sum, expected, "byte for byte");
    let peak = proxy.peak_rss();
    assert!(
        peak < 32 << 20,
        "the proxy's peak resident memory was {peak} B"
    );
}

fn pattern(i: usize) -> u8 {
    (i.wrapping_mul(7) ^ (i >> 11)) as u8
}

/// `count` chunks of `size` bytes of [`pattern`], made as they are sent: a body of unknown
/// length that is never whole in memory.
struct Chunks {
    next: usize,
    count: usize,
    size: usize,
}

impl http_body::Body for Chunks {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        if self.next == self.count {
            return std::task::Poll::Ready(None);
        }
        let start = self.next * self.size;
        let chunk: Vec<u8> = (start..start + self.size).map(pattern).collect();
        self.next += 1;
        std::task::Poll::Ready(Some(Ok(http_body::Frame::data(Bytes::from(chunk)))))
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn slow_or_silent_clients_are_disconnected_after_the_header_read_timeout() {
    use tokio::io::AsyncWriteExt;
    let upstream = axum_upstream().await;
    let proxy = Proxy::unsigned(
        &format!("http://{upstream}"),
        &[
            "--header-read-timeout",
            "300ms",
            "--admin-listen",
            "127.0.0.1:0",
        ],
    );
    let connect = || tokio::net::TcpStream::connect(proxy.address);
    // Connects and sends nothing, here and on the admin listener.
    let mut silent = connect().await.unwrap();
    let admin = proxy.admin.expect("--admin-listen serves");
    let mut silent_admin = tokio::net::TcpStream::connect(admin).await.unwrap();
    // Opens an HTTP/2 connection (prior knowledge) and asks for nothing.
    let mut silent_h2 = connect().await.unwrap();
    silent_h2
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .await
        .unwrap();
    // Sends half a request head and no more.
    let mut slow = connect().await.unwrap();
    slow.write_all(b"GET /api/hello HTTP/1.1\r\nhost: pro")
        .await
        .unwrap();
    // Is served, then keeps its connection without a next request.
    let mut idle = connect().await.unwrap();
    hello(&mut idle).await;
    for stream in [&mut silent, &mut silent_admin, &mut slow, &mut idle] {
        let received = read_until_closed(stream, Duration::from_secs(20)).await;
        assert!(
            received.is_empty(),
            "{}",
            String::from_utf8_lossy(&received)
        );
    }
    // HTTP/2 says goodbye first (its SETTINGS, then GOAWAY)...
    let mut received = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), async {
        use tokio::io::AsyncReadExt;
        while !received.windows(4).any(|frame| frame == [0, 0, 8, 7]) {
            let mut chunk = [0; 1024];
            let read = silent_h2
                .read(&mut chunk)
                .await
                .expect("reading from the proxy");
            assert!(read > 0, "closed before its GOAWAY: {received:?}");
            received.extend_from_slice(&chunk[..read]);
        }
    })
    .await
    .expect("a GOAWAY to the silent HTTP/2 connection");
    // ...then closes: about 20 s later, as hyper's graceful shutdown waits that long for an
    // answer to the ping it sent with the GOAWAY, which a silent client never gives.
    read_until_closed(&mut silent_h2, Duration::from_secs(60)).await;
    // The proxy still serves everyone else.
    get_ok(proxy.url("/api/hello"), b"hello").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn at_max_connections_a_new_connection_waits_until_one_closes() {
    let upstream = axum_upstream().await;
    let proxy = Proxy::unsigned(&format!("http://{upstream}"), &["--max-connections", "2"]);
    let connect = || tokio::net::TcpStream::connect(proxy.address);
    // Two connections served and kept open: the limit.
    let mut first = connect().await.unwrap();
    hello(&mut first).await;
    let mut second = connect().await.unwrap();
    hello(&mut second).await;
    // A third one gets through the kernel's backlog, but the proxy reads nothing from it.
    let mut third = connect().await.unwrap();
    unanswered(
        &mut third,
        b"GET /api/hello HTTP/1.1\r\nhost: proxy\r\n\r\n",
        "over the limit",
    )
    .await;
    // One of the two closes: the third is taken in and answered.
    drop(first);
    let answer = read_until(&mut third, b"hello").await;
    assert!(answer.starts_with(b"HTTP/1.1 200"), "{answer:?}");
    hello(&mut second).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_async_request_whose_body_stops_arriving_is_408_request_body_timeout() {
    use tokio::io::AsyncWriteExt;
    let upstream = axum_upstream().await;
    let mut receiver = Receiver::start(Vec::new()).await;
    let proxy = Proxy::unsigned(
        &format!("http://{upstream}"),
        &[
            "--callback-url",
            &receiver.url(),
            "--request-body-timeout",
            "300ms",
            "--admin-listen",
            "127.0.0.1:0",
        ],
    );
    let mut stream = tokio::net::TcpStream::connect(proxy.address).await.unwrap();
    // 100 bytes announced, 10 sent.
    stream
        .write_all(
            b"POST /api/report HTTP/1.1\r\nhost: proxy\r\nelements-async-request: true\r\n\
              content-length: 100\r\n\r\n{\"part\":1",
        )
        .await
        .unwrap();
    let answer = read_until(&mut stream, b"}").await;
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    let body: Value = serde_json::from_str(&text[text.find("\r\n\r\n").unwrap() + 4..]).unwrap();
    assert_eq!(body["code"], "request_body_timeout", "{body}");
    // Nothing was accepted: the layer counted a refusal and no event, before it answered.
    let scrape = common::scrape(proxy.admin.expect("--admin-listen serves")).await;
    assert!(
        scrape.contains("async_request_refused_total{code=\"request_body_timeout\"} 1"),
        "{scrape}"
    );
    let accepted = scrape
        .lines()
        .filter(|line| line.starts_with("async_request_accepted_total{"));
    for line in accepted {
        assert!(line.ends_with(" 0"), "accepted: {line}");
    }
    // And no callback for it: the next one is for the next request, and the upstream saw that
    // one alone (`/api/echo` answers with the body it got).
    let request = Request::post(proxy.url("/api/echo"))
        .header("Elements-Async-Request", "true")
        .body(Full::from("the next one"))
        .unwrap();
    let (_, receipt) = common::accepted(request).await;
    let notification = receiver.next().await.json();
    assert_eq!(notification["eventId"], event_id(&receipt));
    assert_eq!(notification["response"], "the next one");
}

/// Python's file server behind TLS, with the test CA's certificate for 127.0.0.1 (from the
/// folder `TLS_DIR` stands for); arguments `PORT --bind ADDRESS`, as `http.server`'s.
const HTTPS_SERVER: &str = r#"
import http.server, ssl, sys
port, bind, tls = int(sys.argv[1]), sys.argv[3], "TLS_DIR"
server = http.server.ThreadingHTTPServer((bind, port), http.server.SimpleHTTPRequestHandler)
context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain(tls + "/upstream.pem", tls + "/upstream.key")
server.socket = context.wrap_socket(server.socket, server_side=True)
server.serve_forever()
"#;

/// A scratch folder `name` for Python's file server, holding `hello.txt`: `over TLS`.
fn over_tls_root(name: &str) -> PathBuf {
    let dir = temp(name);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("hello.txt"), "over TLS").unwrap();
    dir
}

#[tokio::test(flavor = "multi_thread")]
async fn an_https_upstream_is_reached_over_tls_and_its_certificate_checked() {
    let dir = over_tls_root("https-root");
    let script = HTTPS_SERVER.replace("TLS_DIR", TLS_DIR);
    let (python, port) = python_upstream(&dir, &["-c", &script]);
    let mut receiver = Receiver::start(Vec::new()).await;
    let ca = format!("{TLS_DIR}/ca.pem");
    let trusting = Proxy::unsigned(
        &format!("https://127.0.0.1:{port}"),
        &["--upstream-ca-file", &ca, "--callback-url", &receiver.url()],
    );
    get_ok(trusting.url("/hello.txt"), b"over TLS").await;
    // The async path's job goes the same way.
    let request = Request::get(trusting.url("/hello.txt"))
        .header("Elements-Async-Request", "true")
        .body(Full::default())
        .unwrap();
    accepted(request).await;
    let notification = receiver.next().await.json();
    assert_eq!(notification["statusCode"], 200, "{notification}");
    assert_eq!(notification["response"], "over TLS", "{notification}");

    // The bundled roots do not know the test CA: the certificate is refused, nothing is sent.
    let strict = Proxy::unsigned(&format!("https://127.0.0.1:{port}"), &[]);
    let (status, _, body) = fetch(strict.url("/hello.txt")).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    let body: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(body["code"], "upstream_unavailable", "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("certificate"),
        "{body}"
    );
    stop(python);
    let _ = std::fs::remove_dir_all(dir);
}

/// A TLS client configuration that trusts only the test CA.
fn test_ca_client_config() -> rustls::ClientConfig {
    test_ca_client_speaking(rustls::DEFAULT_VERSIONS)
}

/// A TLS client configuration that trusts only the test CA and speaks `versions`.
fn test_ca_client_speaking(
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> rustls::ClientConfig {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for certificate in
        rustls::pki_types::CertificateDer::pem_file_iter(format!("{TLS_DIR}/ca.pem")).unwrap()
    {
        roots.add(certificate.unwrap()).unwrap();
    }
    // ring's provider, as the proxy's (deprecated in rustls 0.23.48 for want of post-quantum
    // key exchange).
    #[allow(deprecated)]
    let provider = rustls::crypto::ring::default_provider();
    rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(provider))
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth()
}

/// An unsigned proxy before `upstream`'s `/api`, serving TLS with `cert` and `key`, and `args`.
fn serving_tls(upstream: SocketAddr, cert: &str, key: &str, args: &[&str]) -> Proxy {
    let tls = ["--tls-cert-file", cert, "--tls-key-file", key];
    Proxy::unsigned(
        &format!("http://{upstream}/api"),
        &[&tls[..], args].concat(),
    )
}

/// Scratch folder `name` holding copies of `upstream.pem` and `.key`: folder, cert and key.
fn tls_files(name: &str) -> (PathBuf, PathBuf, PathBuf) {
    let dir = temp(name);
    std::fs::create_dir_all(&dir).unwrap();
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::copy(format!("{TLS_DIR}/upstream.pem"), &cert).unwrap();
    std::fs::copy(format!("{TLS_DIR}/upstream.key"), &key).unwrap();
    (dir, cert, key)
}

/// The certificate `address` presents in a TLS handshake (DER).
async fn presented_certificate(address: SocketAddr) -> Vec<u8> {
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(test_ca_client_config()));
    let stream = tokio::net::TcpStream::connect(address).await.unwrap();
    let name = rustls::pki_types::ServerName::IpAddress(address.ip().into());
    let tls = connector.connect(name, stream).await.unwrap();
    tls.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

fn certificate_der(file: &str) -> Vec<u8> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::from_pem_file(format!("{TLS_DIR}/{file}"))
        .unwrap()
        .to_vec()
}

#[tokio::test(flavor = "multi_thread")]
async fn clients_are_served_over_tls_and_a_sighup_reads_the_certificate_again() {
    use tokio::io::AsyncReadExt;
    let upstream = axum_upstream().await;
    let (dir, cert, key) = tls_files("listener-tls");
    let (cert_file, key_file) = (cert.to_str().unwrap(), key.to_str().unwrap());
    let proxy = serving_tls(
        upstream,
        cert_file,
        key_file,
        &["--header-read-timeout", "500ms"],
    );
    // A client that trusts the test CA: served, and the upstream hears it came over https.
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(test_ca_client_config())
        .https_only()
        .enable_http1()
        .build();
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build(https);
    let url = format!("https://{}/proto", proxy.address);
    let response = client
        .request(Request::get(&url).body(Full::default()).unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"Some(\"https\")");
    assert_eq!(
        presented_certificate(proxy.address).await,
        certificate_der("upstream.pem")
    );

    // Plain HTTP on the TLS port gets no answer; a client that starts no handshake is closed.
    let mut plain = tokio::net::TcpStream::connect(proxy.address).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut plain, b"GET /hello HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut received = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(20), plain.read_to_end(&mut received))
        .await
        .expect("closed");
    assert!(!received.starts_with(b"HTTP/1.1 200"), "{received:?}");
    let mut silent = tokio::net::TcpStream::connect(proxy.address).await.unwrap();
    assert!(read_until_closed(&mut silent, Duration::from_secs(20))
        .await
        .is_empty());

    // Renewed files and a SIGHUP: the next handshakes present the new certificate.
    std::fs::copy(format!("{TLS_DIR}/renewed.pem"), &cert).unwrap();
    std::fs::copy(format!("{TLS_DIR}/renewed.key"), &key).unwrap();
    proxy.signal(libc::SIGHUP);
    let renewed = certificate_der("renewed.pem");
    let deadline = Instant::now() + Duration::from_secs(20);
    while presented_certificate(proxy.address).await != renewed {
        assert!(Instant::now() < deadline, "still the old certificate");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A broken file and a SIGHUP: the certificate stays as it was.
    std::fs::write(&cert, "not a certificate").unwrap();
    proxy.signal(libc::SIGHUP);
    // The reload ran and refused the files (not merely: has not run yet).
    proxy.logged(&["TLS files not applied"]);
    assert_eq!(presented_certificate(proxy.address).await, renewed);
    let response = client
        .request(Request::get(&url).body(Full::default()).unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_key_that_does_not_match_on_sighup_is_refused_and_the_certificate_stays() {
    let upstream = axum_upstream().await;
    let (dir, cert, key) = tls_files("mismatched-tls");
    let proxy = serving_tls(upstream, cert.to_str().unwrap(), key.to_str().unwrap(), &[]);
    let served = certificate_der("upstream.pem");
    assert_eq!(presented_certificate(proxy.address).await, served);
    // Each file renewed without the other: readable, but the key is not the certificate's.
    for (renewed, from, stays) in [
        (&key, "renewed.key", "upstream.key"),
        (&cert, "renewed.pem", "upstream.pem"),
    ] {
        std::fs::copy(format!("{TLS_DIR}/{from}"), renewed).unwrap();
        proxy.signal(libc::SIGHUP);
        proxy.logged(&["TLS files not applied", "--tls-key-file"]);
        assert_eq!(presented_certificate(proxy.address).await, served, "{from}");
        std::fs::copy(format!("{TLS_DIR}/{stays}"), renewed).unwrap();
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// A TLS client of the test CA that speaks `version` alone.
fn pinned_client(version: &'static rustls::SupportedProtocolVersion) -> tokio_rustls::TlsConnector {
    let config = test_ca_client_speaking(&[version]);
    tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_1_2_and_1_3_each_serve_clients_and_reach_an_https_upstream() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let upstream = axum_upstream().await;
    let (cert, key) = (
        format!("{TLS_DIR}/upstream.pem"),
        format!("{TLS_DIR}/upstream.key"),
    );
    let proxy = serving_tls(upstream, &cert, &key, &[]);
    // Towards clients: a client that speaks one version only is served.
    for version in [&rustls::version::TLS12, &rustls::version::TLS13] {
        let stream = tokio::net::TcpStream::connect(proxy.address).await.unwrap();
        let name = rustls::pki_types::ServerName::IpAddress(proxy.address.ip().into());
        let mut tls = pinned_client(version)
            .connect(name, stream)
            .await
            .unwrap_or_else(|error| panic!("{:?}: {error}", version.version));
        assert_eq!(tls.get_ref().1.protocol_version(), Some(version.version));
        tls.write_all(b"GET /hello HTTP/1.1\r\nhost: proxy\r\nconnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut answer = Vec::new();
        // The proxy closes without TLS's close_notify after `connection: close`: what came
        // before it is the answer.
        let _ = tls.read_to_end(&mut answer).await;
        let answer = String::from_utf8_lossy(&answer);
        assert!(
            answer.starts_with("HTTP/1.1 200"),
            "{:?}: {answer}",
            version.version
        );
        assert!(answer.ends_with("hello"), "{:?}: {answer}", version.version);
    }

    // Towards the upstream: Python's server speaking one version only is reached.
    let dir = over_tls_root("pinned-https-root");
    let ca = format!("{TLS_DIR}/ca.pem");
    for version in ["TLSv1_2", "TLSv1_3"] {
        let script = HTTPS_SERVER.replace("TLS_DIR", TLS_DIR).replace(
            "server.socket =",
            &format!(
                "context.minimum_version = context.maximum_version = ssl.TLSVersion.{version}\nserver.socket ="
            ),
        );
        let (python, port) = python_upstream(&dir, &["-c", &script]);
        let proxy = Proxy::unsigned(
            &format!("https://127.0.0.1:{port}"),
            &["--upstream-ca-file", &ca],
        );
        let (status, _, body) = fetch(proxy.url("/hello.txt")).await;
        assert_eq!(
            (status, &body[..]),
            (StatusCode::OK, &b"over TLS"[..]),
            "{version}"
        );
        stop(python);
    }
    let _ = std::fs::remove_dir_all(dir);
}
