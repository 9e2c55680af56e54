//! What the proxy binary's test files share: the running binary ([`Proxy`]), upstreams, a
//! client, scratch files and the waits on what a connection or the process does.
#![allow(dead_code)] // each test file uses a different part

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::routing::{get, post};
use axum::Router;
use http::{header, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use tokio::net::TcpListener;

use crate::support;

pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_async-request-proxy");
/// The test CA, and certificates it issued for 127.0.0.1 (`upstream.pem`, `renewed.pem`).
pub(crate) const TLS_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/data/tls");

/// A running proxy: killed when dropped unless it already ended.
pub(crate) struct Proxy {
    pub(crate) child: Child,
    pub(crate) address: SocketAddr,
    pub(crate) admin: Option<SocketAddr>,
    /// Standard output after the start-up lines (the shutdown report).
    pub(crate) rest: std::sync::mpsc::Receiver<String>,
    /// Its log lines (standard error), also passed on to the test's.
    pub(crate) log: std::sync::mpsc::Receiver<String>,
}

impl Proxy {
    pub(crate) fn start(args: &[&str]) -> Self {
        Self::start_with(args, &[])
    }

    /// Started with `--unsigned-callbacks --upstream upstream` and `args`.
    pub(crate) fn unsigned(upstream: &str, args: &[&str]) -> Self {
        Self::start(&[&["--unsigned-callbacks", "--upstream", upstream], args].concat())
    }

    pub(crate) fn start_with(args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut command = Command::new(BIN);
        command
            .args(["--listen", "127.0.0.1:0", "--log-format", "json"])
            .args(args)
            .envs(env.iter().copied())
            .env("RUST_LOG", "warn");
        Self::spawn(command)
    }

    /// Runs `command` (the binary), its log lines passed on, until it says where it listens.
    pub(crate) fn spawn(mut command: Command) -> Self {
        let mut child = command
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
        Self::listening(child, stdout, log)
    }

    /// The proxy `child` once it said on `stdout` where it listens; `log` has its log lines.
    pub(crate) fn listening(
        child: Child,
        stdout: std::process::ChildStdout,
        log: std::sync::mpsc::Receiver<String>,
    ) -> Self {
        let mut lines = BufReader::new(stdout).lines();
        let mut admin = None;
        let address = loop {
            let line = lines
                .next()
                .expect("the proxy says where it listens")
                .unwrap();
            if let Some(rest) = line.strip_prefix("async-request-proxy: admin on http://") {
                admin = Some(rest.trim().parse().unwrap());
            }
            let listening = line
                .strip_prefix("async-request-proxy: listening on http://")
                .or_else(|| line.strip_prefix("async-request-proxy: listening on https://"));
            if let Some(rest) = listening {
                break rest.split(',').next().unwrap().parse().unwrap();
            }
        };
        let (sender, rest) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                let _ = sender.send(line);
            }
        });
        Self {
            child,
            address,
            admin,
            rest,
            log,
        }
    }

    /// The proxy `child`, started by the test, at `address`; its output is the test's to read.
    pub(crate) fn adopt(child: Child, address: SocketAddr) -> Self {
        let (_, rest) = std::sync::mpsc::channel();
        let (_, log) = std::sync::mpsc::channel();
        Self {
            child,
            address,
            admin: None,
            rest,
            log,
        }
    }

    /// Waits (up to 20 s) for a log line that contains every one of `words`; the line.
    pub(crate) fn logged(&self, words: &[&str]) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        tokio::task::block_in_place(|| loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.log.recv_timeout(left) {
                Ok(line) if words.iter().all(|word| line.contains(word)) => return line,
                Ok(_) => {}
                Err(_) => panic!("no log line with {words:?} within 20 s"),
            }
        })
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.address)
    }

    pub(crate) fn signal(&self, signal: i32) {
        // SAFETY: a plain kill(2) on our own child's pid.
        assert_eq!(unsafe { libc::kill(self.child.id() as i32, signal) }, 0);
    }

    /// Waits (up to 20 s) for the process to end; its exit code.
    pub(crate) fn wait(&mut self) -> Option<i32> {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("the proxy did not stop within 20 s");
    }

    /// Waits for the process to end; its exit code and everything it printed after starting.
    pub(crate) fn finish(mut self) -> (Option<i32>, String) {
        let code = self.wait();
        let report: Vec<String> = self.rest.iter().collect();
        (code, report.join("\n"))
    }

    /// Peak resident memory so far, bytes.
    pub(crate) fn peak_rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
        line.split_whitespace()
            .nth(1)
            .unwrap()
            .parse::<u64>()
            .unwrap()
            * 1024
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) async fn serve(router: Router) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    address
}

/// An axum upstream: `/echo` streams the request body back, `/report` answers JSON, `/slow`
/// takes two seconds.
pub(crate) async fn axum_upstream() -> SocketAddr {
    serve(
        Router::new()
            .route(
                "/api/echo",
                post(|body: Body| async move { Body::from_stream(body.into_data_stream()) }),
            )
            .route(
                "/api/report",
                post(|| async { axum::Json(serde_json::json!({"report": "ready"})) }),
            )
            .route(
                "/api/slow",
                post(|| async {
                    tokio::time::sleep(Duration::from_secs(2)).await;
                    "slow"
                }),
            )
            .route("/api/hello", get(|| async { "hello" }))
            .route(
                "/api/proto",
                get(|headers: http::HeaderMap| async move {
                    format!("{:?}", headers.get("x-forwarded-proto"))
                }),
            )
            .route(
                "/api/forwarded",
                get(|headers: http::HeaderMap| async move {
                    let value = |name| headers.get(name).map(|v| v.to_str().unwrap().to_owned());
                    format!(
                        "{:?} {:?}",
                        value("x-forwarded-proto"),
                        value("x-forwarded-host")
                    )
                }),
            )
            .route(
                "/api/cookies",
                get(|headers: http::HeaderMap| async move {
                    format!(
                        "{:?}",
                        headers.get_all(header::COOKIE).iter().collect::<Vec<_>>()
                    )
                }),
            )
            .route("/api/upgrade", get(support::upgrade::echo)),
    )
    .await
}

pub(crate) fn client() -> Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

pub(crate) async fn call(request: Request<Full<Bytes>>) -> (StatusCode, http::HeaderMap, Bytes) {
    let response = client().request(request).await.unwrap();
    let (parts, body) = response.into_parts();
    (
        parts.status,
        parts.headers,
        body.collect().await.unwrap().to_bytes(),
    )
}

/// `GET` of `url`, with no body: status, headers and body.
pub(crate) async fn fetch(url: String) -> (StatusCode, http::HeaderMap, Bytes) {
    call(Request::get(url).body(Full::default()).unwrap()).await
}

/// `GET` of `url`; checks it answers `200` with `expected`.
pub(crate) async fn get_ok(url: String, expected: &[u8]) {
    let (status, _, body) = fetch(url).await;
    assert_eq!((status, &body[..]), (StatusCode::OK, expected));
}

/// Sends the async `request`, checking it is accepted: the receipt's headers and body.
pub(crate) async fn accepted(request: Request<Full<Bytes>>) -> (http::HeaderMap, Bytes) {
    let (status, headers, receipt) = call(request).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    (headers, receipt)
}

/// The `eventId` of a receipt.
pub(crate) fn event_id(receipt: &[u8]) -> Value {
    serde_json::from_slice::<Value>(receipt).unwrap()["eventId"].clone()
}

pub(crate) fn async_post(url: String) -> Request<Full<Bytes>> {
    Request::post(url)
        .header("Elements-Async-Request", "true")
        .body(Full::from("{}"))
        .unwrap()
}

pub(crate) fn temp(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("tar-proxy-{}-{name}", std::process::id()))
}

pub(crate) fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
}

/// Runs the binary with `args` (and `--listen 127.0.0.1:0`), expecting it to refuse to start:
/// exit code 2, nothing on standard output, and one line on standard error, as docs/proxy.md
/// says of every refusal to start; that line.
pub(crate) fn refused(args: &[&str]) -> String {
    refused_exactly(&[&["--listen", "127.0.0.1:0"], args].concat())
}

/// [`refused`] with `args` alone: for a test that chooses `--listen` itself.
pub(crate) fn refused_exactly(args: &[&str]) -> String {
    let mut command = Command::new(BIN);
    command.args(args);
    let (code, stdout, stderr) = ended(command);
    assert_eq!(code, Some(2), "{args:?}: {stderr}");
    assert!(stdout.is_empty(), "nothing started: {args:?}: {stdout}");
    assert_eq!(stderr.lines().count(), 1, "one line: {args:?}: {stderr}");
    stderr
}

/// Runs `command` to its end, expecting one soon: its exit code, standard output and standard
/// error. Fails, and kills it, if it is still running after 20 s.
pub(crate) fn ended(mut command: Command) -> (Option<i32>, String, String) {
    use std::io::Read;
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Read as it comes, so that a child writing much never waits on a full pipe.
    let (mut stdout, mut stderr) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
    let stdout = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stdout.read_to_string(&mut text);
        text
    });
    let stderr = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("still running after 20 s: {command:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    (
        status.code(),
        stdout.join().unwrap(),
        stderr.join().unwrap(),
    )
}

pub(crate) fn closed_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// `GET` of `url`: status and JSON body.
pub(crate) async fn get_json(url: String) -> (StatusCode, Value) {
    let (status, _, body) = fetch(url).await;
    let json = serde_json::from_slice(&body)
        .unwrap_or_else(|_| panic!("not JSON: {}", String::from_utf8_lossy(&body)));
    (status, json)
}

/// A router whose `POST /hold` says it began, on the channel, then waits for a permit of the
/// semaphore before answering `held`.
pub(crate) fn holding_router() -> (
    Router,
    tokio::sync::mpsc::UnboundedReceiver<()>,
    std::sync::Arc<tokio::sync::Semaphore>,
) {
    let (began, begun) = tokio::sync::mpsc::unbounded_channel();
    let release = std::sync::Arc::new(tokio::sync::Semaphore::new(0));
    let permits = release.clone();
    let router = Router::new().route(
        "/hold",
        post(move || {
            let (began, permits) = (began.clone(), permits.clone());
            async move {
                let _ = began.send(());
                let _permit = permits.acquire().await.unwrap();
                "held"
            }
        }),
    );
    (router, begun, release)
}

/// [`holding_router`] served: its address, the channel and the semaphore.
pub(crate) async fn holding_upstream() -> (
    SocketAddr,
    tokio::sync::mpsc::UnboundedReceiver<()>,
    std::sync::Arc<tokio::sync::Semaphore>,
) {
    let (router, begun, release) = holding_router();
    (serve(router).await, begun, release)
}

/// A listener that takes every connection, never answers, and says each on the channel.
pub(crate) async fn silent_listener() -> (SocketAddr, tokio::sync::mpsc::UnboundedReceiver<()>) {
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

/// Reads the rest of `tunnel`; checks the proxy closes it within 20 s.
pub(crate) async fn tunnel_closes(tunnel: &mut tokio::net::TcpStream) {
    use tokio::io::AsyncReadExt;
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(20), tunnel.read_to_end(&mut rest)).await;
    assert!(
        matches!(closed, Ok(Ok(0))),
        "{closed:?} {:?}",
        String::from_utf8_lossy(&rest)
    );
}

/// Polls `/admin/health` until it answers `503`: the drain has begun.
pub(crate) async fn draining(admin: SocketAddr) {
    let health = format!("http://{admin}/admin/health");
    let deadline = Instant::now() + Duration::from_secs(20);
    while get_json(health.clone()).await.0 != StatusCode::SERVICE_UNAVAILABLE {
        assert!(Instant::now() < deadline, "no drain began");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `GET /metrics` of the admin listener at `admin`: the scrape.
pub(crate) async fn scrape(admin: SocketAddr) -> String {
    let (status, _, body) = fetch(format!("http://{admin}/metrics")).await;
    assert_eq!(status, StatusCode::OK);
    String::from_utf8(body.to_vec()).unwrap()
}

/// [`Proxy::finish`] off the runtime: its exit code and everything it printed after starting.
pub(crate) async fn exit_and_report(proxy: Proxy) -> (Option<i32>, String) {
    tokio::task::spawn_blocking(move || proxy.finish())
        .await
        .unwrap()
}

/// Waits, off the runtime, for the proxy to end; its exit code.
pub(crate) async fn exit_code(mut proxy: Proxy) -> Option<i32> {
    tokio::task::spawn_blocking(move || proxy.wait())
        .await
        .unwrap()
}

/// Sends `SIGTERM` and checks the proxy exits with `code`; what it printed after starting.
pub(crate) async fn terminated(proxy: Proxy, code: i32) -> String {
    proxy.signal(libc::SIGTERM);
    let (exit, report) = exit_and_report(proxy).await;
    assert_eq!(exit, Some(code), "{report}");
    report
}

/// Releases the held job; checks it is delivered and the drain exits 0; what the proxy printed.
pub(crate) async fn released(
    proxy: Proxy,
    release: &tokio::sync::Semaphore,
    receiver: &mut support::Receiver,
) -> String {
    release.add_permits(1);
    assert_eq!(receiver.next().await.json()["response"], "held");
    let (code, report) = exit_and_report(proxy).await;
    assert_eq!(code, Some(0), "{report}");
    assert!(
        report.contains("drained=true jobs_finished=1 delivered=1"),
        "{report}"
    );
    report
}

/// Reads from `stream` until the peer closes it; what arrived. Fails after `limit`, which is
/// far longer than anything expected here takes.
pub(crate) async fn read_until_closed(
    stream: &mut tokio::net::TcpStream,
    limit: Duration,
) -> Vec<u8> {
    use tokio::io::AsyncReadExt;
    let mut received = Vec::new();
    tokio::time::timeout(limit, stream.read_to_end(&mut received))
        .await
        .expect("the proxy closes the connection")
        .expect("reading from the proxy");
    received
}

/// Reads from `stream` until what arrived ends with `end`; fails if it closes first, or after
/// 20 s, far longer than anything expected here takes.
pub(crate) async fn read_until(stream: &mut tokio::net::TcpStream, end: &[u8]) -> Vec<u8> {
    use tokio::io::AsyncReadExt;
    let mut received = Vec::new();
    let mut chunk = [0u8; 1024];
    tokio::time::timeout(Duration::from_secs(20), async {
        while !received.ends_with(end) {
            let read = stream.read(&mut chunk).await.unwrap();
            assert_ne!(read, 0, "closed: {}", String::from_utf8_lossy(&received));
            received.extend_from_slice(&chunk[..read]);
        }
    })
    .await
    .expect("answered in time");
    received
}

/// One `GET /api/hello` on a kept-alive connection; checks the answer.
pub(crate) async fn hello(stream: &mut tokio::net::TcpStream) {
    use tokio::io::AsyncWriteExt;
    stream
        .write_all(b"GET /api/hello HTTP/1.1\r\nhost: proxy\r\n\r\n")
        .await
        .unwrap();
    let answer = read_until(stream, b"hello").await;
    assert!(answer.starts_with(b"HTTP/1.1 200"), "{answer:?}");
}
