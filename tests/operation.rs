//! The status URL as an operation (docs/operations.md): cancel it (`DELETE`), watch its
//! progress, wait for its end (`Prefer: wait`); over real HTTP on 127.0.0.1, on the memory and
//! redb stores and, on PostgreSQL, across two nodes.

mod support;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::{extract::Query, routing::post, Extension, Router};
use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use support::Receiver;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tower_async_request::store::{EventStore, MemoryStore};
use tower_async_request::{AsyncRequestHandle, AsyncRequestLayer, Progress};

/// What the test's handler does, and what it saw.
#[derive(Default)]
struct Work {
    /// Released by the test: the handler answers then.
    gate: Notify,
    /// Told when the handler starts.
    started: Notify,
    starts: AtomicUsize,
    /// Set by a guard the handler holds, if its future is dropped before it answers.
    dropped: AtomicBool,
    dropped_now: Notify,
    /// Whether the token in the request's extensions was cancelled when the future was dropped.
    token_cancelled: AtomicBool,
}

/// Flips `dropped` if the handler's future is dropped before the handler answered.
struct DropGuard {
    work: Arc<Work>,
    token: Option<CancellationToken>,
    done: bool,
}

impl Drop for DropGuard {
    fn drop(&mut self) {
        if !self.done {
            let cancelled = self.token.as_ref().is_some_and(|t| t.is_cancelled());
            self.work.token_cancelled.store(cancelled, SeqCst);
            self.work.dropped.store(true, SeqCst);
            self.work.dropped_now.notify_waiters();
        }
    }
}

#[derive(serde::Deserialize)]
struct Params {
    /// Progress to report before waiting for the gate.
    percent: Option<u8>,
    message: Option<String>,
}

/// `POST /work`: reports progress if asked, then waits for the gate and answers `done`.
fn app(layer: AsyncRequestLayer, work: Arc<Work>) -> Router {
    Router::new()
        .route(
            "/work",
            post(
                move |Query(params): Query<Params>,
                      progress: Option<Extension<Progress>>,
                      token: Option<Extension<CancellationToken>>| {
                    let work = work.clone();
                    async move {
                        let mut guard = DropGuard {
                            work: work.clone(),
                            token: token.map(|Extension(t)| t),
                            done: false,
                        };
                        // Waiting for the gate from here on: a release after `started` is seen.
                        let gate = work.gate.notified();
                        let mut gate = std::pin::pin!(gate);
                        gate.as_mut().enable();
                        work.starts.fetch_add(1, SeqCst);
                        work.started.notify_waiters();
                        if let (Some(Extension(progress)), Some(percent)) =
                            (progress, params.percent)
                        {
                            progress.set(percent, params.message.unwrap_or_default());
                        }
                        gate.await;
                        guard.done = true;
                        "done"
                    }
                },
            ),
        )
        .layer(layer)
}

/// Serves `router` on 127.0.0.1:0; its address.
async fn serve(router: Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    format!("http://{addr}")
}

struct Answered {
    status: StatusCode,
    headers: HeaderMap,
    json: Value,
}

async fn send(method: Method, url: &str, headers: &[(&str, &str)]) -> Answered {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let mut request = http::Request::builder().method(method).uri(url);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = client
        .request(request.body(Full::new(Bytes::new())).unwrap())
        .await
        .unwrap();
    let (parts, body) = response.into_parts();
    let bytes = body.collect().await.unwrap().to_bytes();
    Answered {
        status: parts.status,
        headers: parts.headers,
        json: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    }
}

/// Sends an async request to `{base}/work{query}`: its status URL.
async fn accept(base: &str, query: &str) -> String {
    let answered = send(
        Method::POST,
        &format!("{base}/work{query}"),
        &[("Elements-Async-Request", "true")],
    )
    .await;
    assert_eq!(answered.status, StatusCode::ACCEPTED, "{}", answered.json);
    let location = answered.headers["location"].to_str().unwrap();
    format!("{base}{location}")
}

fn layer(store: Arc<dyn EventStore>, receiver: &Receiver) -> AsyncRequestLayer {
    AsyncRequestLayer::builder()
        .status_endpoint("/events")
        .status_secret("operation tests' status secret")
        .default_callback_url(receiver.url())
        .allow_private_callbacks(true)
        .store(store)
        .build()
        .unwrap()
}

async fn started(work: &Work, count: usize) {
    tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let notified = work.started.notified();
            if work.starts.load(SeqCst) >= count {
                return;
            }
            notified.await;
        }
    })
    .await
    .expect("the handler started");
}

async fn until_dropped(work: &Work) {
    tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let notified = work.dropped_now.notified();
            if work.dropped.load(SeqCst) {
                return;
            }
            notified.await;
        }
    })
    .await
    .expect("the handler's future was dropped");
}

fn redb_store(name: &str) -> Arc<dyn EventStore> {
    let path = std::env::temp_dir().join(format!(
        "tar-operation-{name}-{}-{}.redb",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    Arc::new(tower_async_request::store::RedbStore::open(&path).unwrap())
}

/// A running job is cancelled: its future is dropped (with the extension token cancelled), the
/// notification and the status say `cancelled`, and a second cancel is `409`.
async fn cancel_a_running_job(store: Arc<dyn EventStore>) {
    let mut receiver = Receiver::start(vec![]).await;
    let layer = layer(store, &receiver);
    let handle = layer.handle();
    let work = Arc::new(Work::default());
    let base = serve(app(layer, work.clone())).await;
    let status = accept(&base, "").await;
    started(&work, 1).await;

    let cancelled = send(Method::DELETE, &status, &[]).await;
    assert_eq!(cancelled.status, StatusCode::ACCEPTED, "{}", cancelled.json);
    assert_eq!(cancelled.json["eventStatus"], "cancelled");
    until_dropped(&work).await;
    assert!(
        work.token_cancelled.load(SeqCst),
        "the extension's token was cancelled by the time the future was dropped"
    );
    let notification = receiver.next().await.json();
    assert_eq!(notification["eventStatus"], "cancelled");
    assert_eq!(notification["eventId"], cancelled.json["eventId"]);
    let read = send(Method::GET, &status, &[]).await;
    assert_eq!(read.json["eventStatus"], "cancelled");
    assert!(!read.headers.contains_key("retry-after"));

    let again = send(Method::DELETE, &status, &[]).await;
    assert_eq!(again.status, StatusCode::CONFLICT);
    assert_eq!(again.json["code"], "already_finished");
    assert_eq!(again.json["eventStatus"], "cancelled");
    assert_eq!(handle.metrics().cancelled, 1);
    assert_eq!(
        (handle.metrics().completed, handle.metrics().failed),
        (0, 0)
    );
}

#[tokio::test]
async fn a_running_job_is_cancelled_on_the_memory_store() {
    cancel_a_running_job(Arc::new(MemoryStore::new())).await;
}

#[tokio::test]
async fn a_running_job_is_cancelled_on_the_redb_store() {
    cancel_a_running_job(redb_store("cancel")).await;
}

#[tokio::test]
async fn a_finished_job_is_not_cancelled_and_nothing_changes() {
    let mut receiver = Receiver::start(vec![]).await;
    let work = Arc::new(Work::default());
    let layer = layer(Arc::new(MemoryStore::new()), &receiver);
    let base = serve(app(layer, work.clone())).await;
    let status = accept(&base, "").await;
    started(&work, 1).await;
    work.gate.notify_one();
    assert_eq!(receiver.next().await.json()["eventStatus"], "completed");
    let refused = send(Method::DELETE, &status, &[]).await;
    assert_eq!(refused.status, StatusCode::CONFLICT);
    assert_eq!(refused.json["code"], "already_finished");
    assert!(refused.json["message"].is_string());
    assert_eq!(refused.json["eventStatus"], "completed");
    assert_eq!(refused.json["response"], "done");
    let read = send(Method::GET, &status, &[]).await;
    assert_eq!(read.json["eventStatus"], "completed");
}

/// `rounds` cancels sent (to `cancel_at`) as jobs accepted at `accept_at` complete: each event
/// has exactly one outcome, delivered once, and the cancel's answer agrees with it.
async fn race(
    rounds: usize,
    spread: Duration,
    work: &Work,
    accept_at: &str,
    cancel_at: &str,
    receiver: &mut Receiver,
    handles: &[AsyncRequestHandle],
) {
    let mut answers = std::collections::HashMap::new();
    for round in 0..rounds {
        let status = accept(accept_at, "")
            .await
            .replacen(accept_at, cancel_at, 1);
        started(work, round + 1).await;
        // The cancel is sent up to `spread` before or after the job is released: early cancels
        // win, late ones find the outcome, and in between the two meet in the store.
        // Every tenth round the cancel is answered before the release (it wins), and every tenth
        // the end is awaited before the cancel (it finds the outcome). A release wakes only the
        // handler waiting now: none is left over for the next round's.
        let apart = Duration::from_micros((round as u64 * 7919) % spread.as_micros() as u64);
        let release = || work.gate.notify_waiters();
        let cancel = match round % 10 {
            0 => {
                let cancel = send(Method::DELETE, &status, &[]).await;
                release();
                cancel
            }
            5 => {
                release();
                send(Method::GET, &status, &[("Prefer", "wait=20")]).await;
                send(Method::DELETE, &status, &[]).await
            }
            odd if odd % 2 == 1 => {
                release();
                tokio::time::sleep(apart).await;
                send(Method::DELETE, &status, &[]).await
            }
            _ => {
                let late = async {
                    tokio::time::sleep(apart).await;
                    release();
                };
                tokio::join!(send(Method::DELETE, &status, &[]), late).0
            }
        };
        let id = cancel.json["eventId"].as_u64().unwrap();
        answers.insert(id, cancel.status);
    }
    let mut outcomes = std::collections::HashMap::new();
    for _ in 0..rounds {
        let notification = receiver.next().await.json();
        let id = notification["eventId"].as_u64().unwrap();
        let outcome = notification["eventStatus"].as_str().unwrap().to_owned();
        if let Some(first) = outcomes.insert(id, outcome.clone()) {
            panic!("two notifications for {id}: {first}, then {outcome}");
        }
    }
    let sum = |f: fn(&tower_async_request::metrics::Metrics) -> u64| {
        handles.iter().map(|h| f(&h.metrics())).sum::<u64>()
    };
    support::eventually("every delivery recorded", || {
        sum(|m| m.pending) == 0 && sum(|m| m.running) == 0
    })
    .await;
    assert_eq!(
        sum(|m| m.delivered),
        rounds as u64,
        "exactly one notification each"
    );
    assert_eq!(
        sum(|m| m.completed) + sum(|m| m.cancelled),
        rounds as u64,
        "one outcome each"
    );
    let mut cancelled = 0;
    for (id, answer) in answers {
        let outcome = &outcomes[&id];
        match answer {
            StatusCode::ACCEPTED => {
                assert_eq!(outcome, "cancelled", "{id}");
                cancelled += 1;
            }
            StatusCode::CONFLICT => assert_eq!(outcome, "completed", "{id}"),
            other => panic!("{id}: {other}"),
        }
    }
    eprintln!("{cancelled} of {rounds} cancels won");
    assert!(
        0 < cancelled && cancelled < rounds,
        "a race has both outcomes: {cancelled} of {rounds} cancels won"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_racing_completion_always_ends_with_one_outcome_that_the_answer_names() {
    let mut receiver = Receiver::start(vec![]).await;
    let layer = layer(Arc::new(MemoryStore::new()), &receiver);
    let handle = layer.handle();
    let work = Arc::new(Work::default());
    let base = serve(app(layer, work.clone())).await;
    let spread = Duration::from_millis(2);
    race(200, spread, &work, &base, &base, &mut receiver, &[handle]).await;
}

#[tokio::test]
async fn progress_shows_while_the_job_runs_and_stays_after_it_ends() {
    let mut receiver = Receiver::start(vec![]).await;
    let work = Arc::new(Work::default());
    let layer = layer(Arc::new(MemoryStore::new()), &receiver);
    let base = serve(app(layer, work.clone())).await;
    let status = accept(
        &base,
        "?percent=40&message=copied%20400%20of%201000%20files",
    )
    .await;
    started(&work, 1).await;
    let read = send(Method::GET, &status, &[]).await;
    assert_eq!(read.json["eventStatus"], "running");
    assert_eq!(read.json["progress"]["percent"], 40);
    assert_eq!(read.json["progress"]["message"], "copied 400 of 1000 files");
    let at = read.json["progress"]["updatedAt"].as_str().unwrap();
    assert!(at.ends_with('Z') && at.len() == 24, "{at}");
    work.gate.notify_one();
    receiver.next().await;
    let read = send(Method::GET, &status, &[]).await;
    assert_eq!(read.json["eventStatus"], "completed");
    assert_eq!(read.json["progress"]["percent"], 40, "{}", read.json);
}

#[tokio::test]
async fn percent_is_clamped_the_message_cut_and_a_silent_job_shows_none() {
    let receiver = Receiver::start(vec![]).await;
    let work = Arc::new(Work::default());
    let layer = layer(Arc::new(MemoryStore::new()), &receiver);
    let base = serve(app(layer, work.clone())).await;
    let long = "é".repeat(200); // 400 bytes
    let status = accept(&base, &format!("?percent=250&message={long}")).await;
    started(&work, 1).await;
    let read = send(Method::GET, &status, &[]).await;
    assert_eq!(read.json["progress"]["percent"], 100);
    let message = read.json["progress"]["message"].as_str().unwrap();
    assert_eq!(message, "é".repeat(128), "cut at 256 bytes, on a character");
    let silent = accept(&base, "").await;
    started(&work, 2).await;
    let read = send(Method::GET, &silent, &[]).await;
    assert!(read.json.get("progress").is_none(), "{}", read.json);
}

/// A store that records when progress is written, around a memory store.
struct CountingStore {
    inner: MemoryStore,
    writes: Mutex<Vec<Instant>>,
}

impl EventStore for CountingStore {
    fn is_durable(&self) -> bool {
        false
    }
    fn allocate_ids(
        &self,
    ) -> tower_async_request::store::StoreFuture<
        '_,
        (
            tower_async_request::event::EventId,
            tower_async_request::event::NotificationId,
        ),
    > {
        self.inner.allocate_ids()
    }
    fn dispatched<'a>(
        &'a self,
        event: &'a tower_async_request::store::EventRecord,
    ) -> tower_async_request::store::StoreFuture<'a, ()> {
        self.inner.dispatched(event)
    }
    fn running(
        &self,
        event_id: tower_async_request::event::EventId,
    ) -> tower_async_request::store::StoreFuture<'_, ()> {
        self.inner.running(event_id)
    }
    fn finished<'a>(
        &'a self,
        n: &'a tower_async_request::store::NotificationRecord,
    ) -> tower_async_request::store::StoreFuture<'a, ()> {
        self.inner.finished(n)
    }
    fn attempted<'a>(
        &'a self,
        n: &'a tower_async_request::store::NotificationRecord,
    ) -> tower_async_request::store::StoreFuture<'a, ()> {
        self.inner.attempted(n)
    }
    fn delivered<'a>(
        &'a self,
        n: &'a tower_async_request::store::NotificationRecord,
    ) -> tower_async_request::store::StoreFuture<'a, ()> {
        self.inner.delivered(n)
    }
    fn dead<'a>(
        &'a self,
        n: &'a tower_async_request::store::NotificationRecord,
    ) -> tower_async_request::store::StoreFuture<'a, ()> {
        self.inner.dead(n)
    }
    fn status(
        &self,
        id: tower_async_request::event::EventId,
    ) -> tower_async_request::store::StoreFuture<
        '_,
        Option<tower_async_request::store::EventSnapshot>,
    > {
        self.inner.status(id)
    }
    fn recover(
        &self,
    ) -> tower_async_request::store::StoreFuture<'_, tower_async_request::store::Recovery> {
        self.inner.recover()
    }
    fn dead_letters(
        &self,
        q: tower_async_request::store::DeadLetterQuery,
    ) -> tower_async_request::store::StoreFuture<
        '_,
        Vec<tower_async_request::store::NotificationRecord>,
    > {
        self.inner.dead_letters(q)
    }
    fn revive(
        &self,
        id: tower_async_request::event::NotificationId,
    ) -> tower_async_request::store::StoreFuture<
        '_,
        Option<tower_async_request::store::NotificationRecord>,
    > {
        self.inner.revive(id)
    }
    fn cancel<'a>(
        &'a self,
        n: &'a tower_async_request::store::NotificationRecord,
    ) -> tower_async_request::store::StoreFuture<'a, tower_async_request::store::CancelClaim> {
        self.inner.cancel(n)
    }
    fn progress<'a>(
        &'a self,
        id: tower_async_request::event::EventId,
        p: &'a tower_async_request::store::ProgressRecord,
    ) -> tower_async_request::store::StoreFuture<'a, ()> {
        self.writes.lock().unwrap().push(Instant::now());
        self.inner.progress(id, p)
    }
}

/// A handler reporting 100 times in a burst and then for 2.5 s: the store gets at most one write
/// a second of it, and none at all from a handler that never reports.
#[tokio::test]
async fn progress_writes_are_coalesced_to_one_a_second_and_a_silent_job_writes_none() {
    let store = Arc::new(CountingStore {
        inner: MemoryStore::new(),
        writes: Mutex::default(),
    });
    let layer = AsyncRequestLayer::builder()
        .status_endpoint("/events")
        .store(store.clone())
        .build()
        .unwrap();
    let reported = Arc::new(Notify::new());
    let done = reported.clone();
    let took = Arc::new(Mutex::new(Duration::ZERO));
    let reporting = took.clone();
    let router = Router::new()
        .route(
            "/report",
            post(move |Extension(progress): Extension<Progress>| {
                let (done, reporting) = (done.clone(), reporting.clone());
                async move {
                    let start = Instant::now();
                    let mut percent = 0u8;
                    while start.elapsed() < Duration::from_millis(2500) {
                        for _ in 0..100 {
                            percent = (percent + 1) % 100;
                            progress.set(percent, "working");
                        }
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    *reporting.lock().unwrap() = start.elapsed();
                    done.notify_one();
                    "done"
                }
            }),
        )
        .route("/silent", post(|| async { "done" }))
        .layer(layer);
    let base = serve(router).await;
    let notified = reported.notified();
    let answered = send(
        Method::POST,
        &format!("{base}/report"),
        &[("Elements-Async-Request", "true")],
    )
    .await;
    assert_eq!(answered.status, StatusCode::ACCEPTED);
    notified.await;
    let silent = send(
        Method::POST,
        &format!("{base}/silent"),
        &[("Elements-Async-Request", "true")],
    )
    .await;
    let silent_status = format!("{base}{}", silent.headers["location"].to_str().unwrap());
    let read = send(Method::GET, &silent_status, &[("Prefer", "wait=20")]).await;
    assert_eq!(read.json["eventStatus"], "completed");
    assert!(read.json.get("progress").is_none());
    let writes = store.writes.lock().unwrap().clone();
    // ~5 000 reports over 2.5 s (longer on a loaded machine): one write at the first report, one
    // a second at most after it, and the last report at the end.
    let seconds = took.lock().unwrap().as_secs() as usize;
    assert!(
        (2..=seconds + 2).contains(&writes.len()),
        "{} writes for 5 000 reports over {seconds} s",
        writes.len()
    );
    for pair in writes.windows(2).take(writes.len().saturating_sub(2)) {
        assert!(
            pair[1] - pair[0] >= Duration::from_millis(990),
            "two writes {:?} apart",
            pair[1] - pair[0]
        );
    }
}

#[tokio::test]
async fn a_wait_answers_when_the_event_ends_and_says_the_preference_was_applied() {
    let mut receiver = Receiver::start(vec![]).await;
    let work = Arc::new(Work::default());
    let layer = layer(Arc::new(MemoryStore::new()), &receiver);
    let handle = layer.handle();
    let base = serve(app(layer, work.clone())).await;
    let status = accept(&base, "").await;
    started(&work, 1).await;
    let sent = Instant::now();
    let waiting = tokio::spawn({
        let status = status.clone();
        async move { send(Method::GET, &status, &[("Prefer", "wait=30")]).await }
    });
    // The wait is held (the gauge says so) before the job ends.
    support::eventually("the wait is held", || handle.metrics().status_waits == 1).await;
    assert!(
        !waiting.is_finished(),
        "the wait is held while the job runs"
    );
    let finished_at = Instant::now();
    work.gate.notify_one();
    let answered = waiting.await.unwrap();
    let late = finished_at.elapsed();
    eprintln!("the wait answered {late:?} after the finish");
    assert_eq!(answered.json["eventStatus"], "completed");
    assert_eq!(answered.headers["preference-applied"], "wait=30");
    assert!(
        sent.elapsed() < Duration::from_secs(20),
        "answered at the end, not at the 30 s deadline"
    );
    receiver.next().await;
}

#[tokio::test]
async fn a_short_wait_on_a_long_job_answers_running_after_its_seconds() {
    let receiver = Receiver::start(vec![]).await;
    let work = Arc::new(Work::default());
    let layer = layer(Arc::new(MemoryStore::new()), &receiver);
    let base = serve(app(layer, work.clone())).await;
    let status = accept(&base, "").await;
    started(&work, 1).await;
    let sent = Instant::now();
    let answered = send(Method::GET, &status, &[("Prefer", "wait=1")]).await;
    assert!(
        sent.elapsed() >= Duration::from_millis(990),
        "{:?}",
        sent.elapsed()
    );
    assert_eq!(answered.json["eventStatus"], "running");
    assert_eq!(answered.headers["preference-applied"], "wait=1");
    assert_eq!(answered.headers["retry-after"], "1");
}

#[tokio::test]
async fn waits_beyond_the_bound_are_answered_at_once_and_shutdown_answers_the_held_ones() {
    let receiver = Receiver::start(vec![]).await;
    let work = Arc::new(Work::default());
    let layer = AsyncRequestLayer::builder()
        .status_endpoint("/events")
        .default_callback_url(receiver.url())
        .allow_private_callbacks(true)
        .max_status_waiters(1)
        .build()
        .unwrap();
    let handle: AsyncRequestHandle = layer.handle();
    let base = serve(app(layer, work.clone())).await;
    let status = accept(&base, "").await;
    started(&work, 1).await;
    let held = tokio::spawn({
        let status = status.clone();
        async move { send(Method::GET, &status, &[("Prefer", "wait=60")]).await }
    });
    support::eventually("one wait held", || handle.metrics().status_waits == 1).await;
    let extra = send(Method::GET, &status, &[("Prefer", "wait=60")]).await;
    assert!(
        !held.is_finished(),
        "the extra one was answered while the first is held"
    );
    assert_eq!(extra.status, StatusCode::OK);
    assert_eq!(extra.json["eventStatus"], "running");
    assert!(!extra.headers.contains_key("preference-applied"));
    assert_eq!(extra.headers["retry-after"], "1");

    let report = handle.shutdown(Duration::from_millis(50)).await;
    assert!(!report.drained);
    let answered = tokio::time::timeout(Duration::from_secs(20), held)
        .await
        .expect("shutdown answers held waits at once")
        .unwrap();
    assert_eq!(answered.json["eventStatus"], "running");
    assert_eq!(handle.metrics().status_waits, 0);
}

#[tokio::test]
async fn without_cancellation_a_delete_is_405_and_a_wrong_token_is_404() {
    let receiver = Receiver::start(vec![]).await;
    let work = Arc::new(Work::default());
    let off = AsyncRequestLayer::builder()
        .status_endpoint("/events")
        .default_callback_url(receiver.url())
        .allow_private_callbacks(true)
        .cancellation(false)
        .build()
        .unwrap();
    let base = serve(app(off, work.clone())).await;
    let status = accept(&base, "").await;
    started(&work, 1).await;
    let refused = send(Method::DELETE, &status, &[]).await;
    assert_eq!(refused.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(refused.headers["allow"], "GET");
    assert_eq!(refused.json["code"], "method_not_allowed");
    assert_eq!(
        send(Method::GET, &status, &[]).await.json["eventStatus"],
        "running"
    );

    let receiver = Receiver::start(vec![]).await;
    let work = Arc::new(Work::default());
    let second = layer(Arc::new(MemoryStore::new()), &receiver);
    let base = serve(app(second, work.clone())).await;
    let status = accept(&base, "").await;
    let forged = status.replace("token=", "token=A");
    let refused = send(Method::DELETE, &forged, &[]).await;
    assert_eq!(refused.status, StatusCode::NOT_FOUND);
    assert_eq!(refused.json["code"], "not_found");
    started(&work, 1).await;
    assert!(!work.dropped.load(SeqCst));
}

/// A store that cannot record a cancel (one written before cancels: the trait's default):
/// `503 store_unavailable`, and the event goes on to its own outcome.
#[tokio::test]
async fn a_cancel_the_store_cannot_record_is_503_and_the_event_goes_on() {
    let mut receiver = Receiver::start(vec![]).await;
    let work = Arc::new(Work::default());
    let store = Arc::new(support::store::FaultyStore::default());
    let base = serve(app(layer(store, &receiver), work.clone())).await;
    let status = accept(&base, "").await;
    started(&work, 1).await;
    let refused = send(Method::DELETE, &status, &[]).await;
    assert_eq!(refused.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(refused.json["code"], "store_unavailable");
    assert!(!work.dropped.load(SeqCst), "the job goes on");
    work.gate.notify_one();
    assert_eq!(receiver.next().await.json()["eventStatus"], "completed");
}

#[cfg(feature = "postgres")]
mod postgres {
    use super::*;
    use support::pg;
    use tower_async_request::store::PostgresStore;

    async fn node(
        schema: &str,
        receiver: &Receiver,
        work: Arc<Work>,
    ) -> (String, AsyncRequestHandle) {
        node_with_lease(schema, receiver, work, Duration::from_secs(60)).await
    }

    async fn node_with_lease(
        schema: &str,
        receiver: &Receiver,
        work: Arc<Work>,
        lease: Duration,
    ) -> (String, AsyncRequestHandle) {
        let store = PostgresStore::builder(pg::url())
            .schema(schema)
            .lease_timeout(lease)
            .connect()
            .await
            .unwrap();
        let built = layer(Arc::new(store), receiver);
        let handle = built.handle();
        (serve(app(built, work)).await, handle)
    }

    /// A cancel on node B of a job running on node A: A drops it (heard through NOTIFY: the
    /// heartbeat fallback comes only every 20 s here), the notification says `cancelled`; A's
    /// progress shows on B, and a wait on B answers when A finishes.
    #[tokio::test]
    async fn a_cancel_a_report_and_an_end_on_one_node_reach_the_other() {
        if !pg::available("tests/operation.rs").await {
            return;
        }
        let schema = pg::Schema::new();
        let mut receiver = Receiver::start(vec![]).await;
        let (on_a, on_b) = (Arc::new(Work::default()), Arc::new(Work::default()));
        let (a, _) = node(&schema.0, &receiver, on_a.clone()).await;
        let (b, b_handle) = node(&schema.0, &receiver, on_b.clone()).await;

        let status = accept(&a, "?percent=40&message=half").await;
        started(&on_a, 1).await;
        let on_b_status = status.replacen(&a, &b, 1);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let read = send(Method::GET, &on_b_status, &[]).await;
            if read.json["progress"]["percent"] == 40 {
                assert_eq!(read.json["progress"]["message"], "half");
                break;
            }
            assert!(Instant::now() < deadline, "B never showed A's progress");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }

        let sent = Instant::now();
        let cancelled = send(Method::DELETE, &on_b_status, &[]).await;
        assert_eq!(cancelled.status, StatusCode::ACCEPTED, "{}", cancelled.json);
        until_dropped(&on_a).await;
        let took = sent.elapsed();
        eprintln!("node A dropped the job {took:?} after B's cancel");
        assert!(
            took < Duration::from_secs(15),
            "heard through NOTIFY, not the heartbeat"
        );
        assert_eq!(receiver.next().await.json()["eventStatus"], "cancelled");
        assert_eq!(
            send(Method::GET, &status, &[]).await.json["eventStatus"],
            "cancelled"
        );

        let status = accept(&a, "").await;
        started(&on_a, 2).await;
        let on_b_status = status.replacen(&a, &b, 1);
        let waiting =
            tokio::spawn(
                async move { send(Method::GET, &on_b_status, &[("Prefer", "wait=30")]).await },
            );
        support::eventually("B holds the wait", || b_handle.metrics().status_waits == 1).await;
        let finished_at = Instant::now();
        on_a.gate.notify_one();
        let answered = waiting.await.unwrap();
        eprintln!(
            "a wait on B answered {:?} after A finished",
            finished_at.elapsed()
        );
        assert_eq!(answered.json["eventStatus"], "completed");
        assert!(finished_at.elapsed() < Duration::from_secs(15));
        receiver.next().await;
    }

    /// The race across nodes: the job runs on A, the cancel is recorded by B, and A hears of it
    /// only through PostgreSQL, so A's own outcome often arrives after B's cancel.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_cancel_on_one_node_racing_completion_on_another_has_one_outcome() {
        if !pg::available("tests/operation.rs").await {
            return;
        }
        let schema = pg::Schema::new();
        let mut receiver = Receiver::start(vec![]).await;
        let (on_a, on_b) = (Arc::new(Work::default()), Arc::new(Work::default()));
        let (a, a_handle) = node(&schema.0, &receiver, on_a.clone()).await;
        let (b, b_handle) = node(&schema.0, &receiver, on_b).await;
        let spread = Duration::from_millis(30);
        race(
            60,
            spread,
            &on_a,
            &a,
            &b,
            &mut receiver,
            &[a_handle, b_handle],
        )
        .await;
    }

    /// A node that did not hear of a cancel (the `NOTIFY` lost: here, another node's cancel is
    /// played by writing its row directly, with no `NOTIFY` at all) finds it with its heartbeat,
    /// once, and drops the job.
    #[tokio::test]
    async fn a_cancel_a_node_did_not_hear_is_found_by_its_heartbeat() {
        if !pg::available("tests/operation.rs").await {
            return;
        }
        let (seen, _guard) = support::capture::capture();
        let schema = pg::Schema::new();
        let receiver = Receiver::start(vec![]).await;
        let on_a = Arc::new(Work::default());
        // A's heartbeat every second.
        let (a, _) =
            node_with_lease(&schema.0, &receiver, on_a.clone(), Duration::from_secs(3)).await;
        let status = accept(&a, "").await;
        started(&on_a, 1).await;
        let event_id: i64 = send(Method::GET, &status, &[]).await.json["eventId"]
            .as_i64()
            .unwrap();

        // Another node's cancel, as its transaction leaves the row (not requested: nothing to
        // deliver), without the NOTIFY.
        let (client, connection) = tokio_postgres::connect(&pg::url(), tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(connection);
        let ended = client
            .execute(
                &format!(
                    "UPDATE \"{}\".events SET state = 4, owner = 999999, \
                     retain_until_ms = 9007199254740991, \
                     body = '{{\"eventStatus\":\"cancelled\"}}' \
                     WHERE event_id = $1 AND state = 0",
                    schema.0
                ),
                &[&event_id],
            )
            .await
            .unwrap();
        assert_eq!(ended, 1);
        until_dropped(&on_a).await;
        let seen = support::capture::take(&seen);
        assert_eq!(
            seen.events("the heartbeat found jobs here that other nodes ended")
                .len(),
            1,
            "found by the heartbeat, once"
        );
        assert_eq!(
            send(Method::GET, &status, &[]).await.json["eventStatus"],
            "cancelled"
        );
    }
}
