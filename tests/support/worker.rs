//! The `durable_worker` example as a real process, for crash tests: started, asked for async
//! work over HTTP, and killed with SIGKILL.
#![allow(dead_code)] // each test file uses a different part

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::{client::legacy::Client, rt::TokioExecutor};

use crate::support::{Hit, Receiver};

/// The `durable_worker` example, built next to the test binaries' directory (`cargo test` builds
/// examples; a run of one test file alone builds it here).
fn worker_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let path = exe
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("examples")
        .join("durable_worker");
    if !path.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "--example", "durable_worker", "--all-features"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .unwrap();
        assert!(
            status.success(),
            "could not build the durable_worker example"
        );
    }
    assert!(path.exists(), "{} is missing", path.display());
    path
}

/// A worker process, killed with SIGKILL when dropped, so a failing test leaves none behind.
pub struct Worker {
    child: Child,
    log: Log,
}

/// A worker's log (the crate's `tracing` records, one line each, from its stderr), kept from its
/// start, so a test can wait for the line that says something happened.
#[derive(Clone)]
pub struct Log(std::sync::Arc<(std::sync::Mutex<Vec<String>>, std::sync::Condvar)>);

impl Log {
    fn read(from: impl std::io::Read + Send + 'static) -> Self {
        let log = Self(Default::default());
        let lines = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(from).lines() {
                let Ok(line) = line else { return };
                let (all, changed) = &*lines.0;
                all.lock().unwrap().push(line);
                changed.notify_all();
            }
        });
        log
    }

    /// The lines so far that contain `text`.
    pub fn lines(&self, text: &str) -> Vec<String> {
        let all = self.0 .0.lock().unwrap();
        all.iter().filter(|l| l.contains(text)).cloned().collect()
    }

    /// Waits until `count` lines contain `text` (at most 20 s, then fails); returns them.
    pub fn until(&self, text: &str, count: usize) -> Vec<String> {
        let (all, changed) = &*self.0;
        let (all, timeout) = changed
            .wait_timeout_while(all.lock().unwrap(), Duration::from_secs(20), |all| {
                all.iter().filter(|l| l.contains(text)).count() < count
            })
            .unwrap();
        assert!(
            !timeout.timed_out(),
            "no {count} log lines with {text:?} in:\n{}",
            all.join("\n")
        );
        all.iter().filter(|l| l.contains(text)).cloned().collect()
    }
}

impl Worker {
    /// Starts a worker delivering to `callback` (first retry after 3 s, then every 100 ms) with
    /// `args` for its store; returns it and the address it listens on.
    pub fn start(callback: &str, args: &[&str]) -> (Self, String) {
        let mut child = Command::new(worker_binary())
            .args([
                "--callback",
                callback,
                "--retry-ms",
                "3000,100,100,100,100,100,100,100",
            ])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let log = Log::read(child.stderr.take().unwrap());
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let addr = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_owned();
        (Self { child, log }, addr)
    }

    /// Its log so far, and what it logs from now on.
    pub fn log(&self) -> &Log {
        &self.log
    }

    /// Sends it `signal` (`"STOP"`, `"CONT"`) with kill(1).
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(status.success(), "kill -{signal}");
    }

    /// SIGKILL, and waits for the process to be gone.
    pub fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends `POST /work?ms=N` as an async request; the event id of its receipt.
pub async fn accept(addr: &str, ms: u64) -> u64 {
    accept_with_status(addr, ms).await.0
}

/// Sends `POST /work?ms=N` as an async request; the event id of its receipt and its status URL
/// (`Location`).
pub async fn accept_with_status(addr: &str, ms: u64) -> (u64, String) {
    let (id, location, _) = accept_keyed(addr, ms, None).await;
    (id, location)
}

/// Sends `POST /work?ms=N` as an async request, with `Idempotency-Key: key` if given; the event
/// id of its receipt, its status URL (`Location`), and whether it was a replay.
pub async fn accept_keyed(addr: &str, ms: u64, key: Option<&str>) -> (u64, String, bool) {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let mut request = http::Request::post(format!("http://{addr}/work?ms={ms}"))
        .header("Elements-Async-Request", "true");
    if let Some(key) = key {
        request = request.header("Idempotency-Key", key);
    }
    let response = client
        .request(request.body(Full::new(Bytes::new())).unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    let replayed = response.headers().contains_key("idempotent-replayed");
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let receipt: serde_json::Value = serde_json::from_slice(&body).unwrap();
    (receipt["eventId"].as_u64().unwrap(), location, replayed)
}

/// The worker's answer to `GET location` (a receipt's status URL): its code and JSON body.
pub async fn status_of(addr: &str, location: &str) -> (http::StatusCode, serde_json::Value) {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let uri = format!("http://{addr}{location}").parse().unwrap();
    let response = client.get(uri).await.unwrap();
    let code = response.status();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (code, serde_json::from_slice(&body).unwrap())
}

/// The worker's answer to `DELETE location` (a cancel): its code and JSON body.
pub async fn cancel(addr: &str, location: &str) -> (http::StatusCode, serde_json::Value) {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let request = http::Request::delete(format!("http://{addr}{location}"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = client.request(request).await.unwrap();
    let code = response.status();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (code, serde_json::from_slice(&body).unwrap())
}

/// Waits until the worker's status for `location` says the notification was delivered, that is
/// until the worker has seen its receiver's `2xx` and recorded it.
pub async fn until_recorded_delivered(addr: &str, location: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (code, status) = status_of(addr, location).await;
        assert_eq!(code, 200, "the status of {location}: {status}");
        if status["delivery"]["state"] == "delivered" {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not recorded as delivered: {status}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// What a receiver got per event across a crash: every distinct notification body, so a test can
/// tell a repeat (the same bytes, at-least-once) from a second outcome.
#[derive(Debug, Default)]
pub struct Outcomes {
    bodies: HashMap<u64, HashSet<Bytes>>,
    terminal: HashSet<u64>,
}

impl Outcomes {
    /// Records a notification seen on the wire, before any answer (an attempt a crash cut off):
    /// what is sent again after the restart must be these very bytes. Its event id.
    pub fn seen(&mut self, hit: &Hit) -> u64 {
        let id = hit.json()["eventId"].as_u64().unwrap();
        self.bodies.entry(id).or_default().insert(hit.body.clone());
        id
    }

    /// Records one hit; a `2xx` answer makes its event terminal. Its event id.
    pub fn record(&mut self, hit: &Hit) -> u64 {
        let id = hit.json()["eventId"].as_u64().unwrap();
        self.bodies.entry(id).or_default().insert(hit.body.clone());
        if hit.answered.is_success() {
            self.terminal.insert(id);
        }
        id
    }

    /// Takes hits until every one of `events` has had a `2xx` answer.
    pub async fn until_terminal(&mut self, receiver: &mut Receiver, events: &HashSet<u64>) {
        while !events.is_subset(&self.terminal) {
            let hit = receiver.next().await;
            let id = self.record(&hit);
            assert!(events.contains(&id), "unknown event {id}");
        }
    }

    /// Checks that each of `events` got one notification, however often; returns each one's,
    /// parsed. Call it once every event is recorded delivered (`until_recorded_delivered`):
    /// then every attempt was answered, and the receiver reports a hit before it answers, so
    /// every repeat is already here.
    pub fn one_each(
        &mut self,
        receiver: &mut Receiver,
        events: &HashSet<u64>,
    ) -> HashMap<u64, serde_json::Value> {
        while let Ok(hit) = receiver.hits.try_recv() {
            self.record(&hit);
        }
        events
            .iter()
            .map(|id| {
                let bodies = &self.bodies[id];
                assert_eq!(
                    bodies.len(),
                    1,
                    "event {id} got two different notifications"
                );
                let body = bodies.iter().next().unwrap();
                (*id, serde_json::from_slice(body).unwrap())
            })
            .collect()
    }
}
