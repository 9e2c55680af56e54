//! `Idempotency-Key` over real HTTP: an app on 127.0.0.1:0 behind the layer (memory store), a
//! real client and a real receiver. A request sent again gets the first receipt and starts
//! nothing; a different request under the same key, a malformed key, or a missing one where it
//! is required, is refused; copies sent at once make one event. The stores' own claims (redb,
//! PostgreSQL across nodes) are in `tests/kill9.rs` and `tests/postgres.rs`.

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::{extract::Path, routing::post, Router};
use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use support::{check_receipt, check_refusal, Answer, Receiver};
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tower_async_request::{AsyncRequestHandle, AsyncRequestLayer, AsyncRequestLayerBuilder};

const KEY: &str = "\"8e03978e-40d5-43e8-bc93-6894a57f9324\"";

/// The app: `POST /work/{name}` counts its calls, waits for `gate` when there is one, and answers
/// `done {body}`; `POST /echo` answers the `Idempotency-Key` it was given.
struct App {
    addr: SocketAddr,
    handle: AsyncRequestHandle,
    calls: Arc<AtomicUsize>,
    client: Client<HttpConnector, Full<Bytes>>,
}

impl App {
    async fn start(layer: AsyncRequestLayerBuilder, gate: Option<Arc<Notify>>) -> Self {
        let layer = layer.build().unwrap();
        let handle = layer.handle();
        let calls = Arc::new(AtomicUsize::new(0));
        let counted = calls.clone();
        let router = Router::new()
            .route(
                "/work/{name}",
                post(move |Path(name): Path<String>, body: String| {
                    counted.fetch_add(1, Ordering::SeqCst);
                    let gate = gate.clone();
                    async move {
                        if let Some(gate) = gate {
                            gate.notified().await;
                        }
                        format!("done {name} {body}")
                    }
                }),
            )
            .route(
                "/echo",
                post(|headers: HeaderMap| async move {
                    format!("{:?}", headers.get("idempotency-key"))
                }),
            )
            .layer(layer);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
        Self {
            addr,
            handle,
            calls,
            client: Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    /// `POST path` as an async request with these `Idempotency-Key` values and this body.
    async fn send(&self, path: &str, keys: &[&str], body: &str) -> Answered {
        let mut request = Request::post(format!("http://{}{path}", self.addr))
            .header("Elements-Async-Request", "true")
            .header("content-type", "text/plain");
        for key in keys {
            request = request.header("Idempotency-Key", *key);
        }
        let response = self
            .client
            .request(request.body(Full::from(body.to_owned())).unwrap())
            .await
            .unwrap();
        let (parts, body) = response.into_parts();
        Answered {
            status: parts.status,
            headers: parts.headers,
            body: body.collect().await.unwrap().to_bytes(),
        }
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

#[derive(Debug)]
struct Answered {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Answered {
    fn event_id(&self) -> u64 {
        check_receipt(self.status, &self.headers, &self.body)
    }

    fn replayed(&self) -> bool {
        self.headers
            .get("idempotent-replayed")
            .is_some_and(|v| v == "true")
    }

    fn refused(&self, status: StatusCode, code: &str) {
        check_refusal(self.status, &self.headers, &self.body, status, code);
    }
}

fn layer(receiver: &Receiver) -> AsyncRequestLayerBuilder {
    AsyncRequestLayer::builder()
        .default_callback_url(receiver.url())
        .allow_private_callbacks(true)
        .status_endpoint("/events")
        .retry_schedule([Duration::from_millis(20)])
}

/// Sent again after its work finished and its notification was delivered: the same receipt,
/// marked replayed; no second call, no second event, no second notification.
#[tokio::test]
async fn a_request_sent_again_after_it_finished_gets_the_first_receipt() {
    let mut receiver = Receiver::start(Vec::new()).await;
    let app = App::start(layer(&receiver), None).await;
    let first = app.send("/work/copy", &[KEY], "folder 7").await;
    let id = first.event_id();
    assert!(!first.replayed());
    assert_eq!(
        receiver.next().await.json()["response"],
        "done copy folder 7"
    );
    support::eventually("delivered", || app.handle.metrics().delivered == 1).await;

    let again = app.send("/work/copy", &[KEY], "folder 7").await;
    assert_eq!(again.event_id(), id);
    assert!(again.replayed());
    assert_eq!(again.body, first.body);
    assert_eq!(again.headers["location"], first.headers["location"]);
    // The same key as a bare token is the same key.
    let bare = app
        .send("/work/copy", &[KEY.trim_matches('"')], "folder 7")
        .await;
    assert_eq!((bare.event_id(), bare.replayed()), (id, true));

    assert_eq!(app.calls(), 1, "the inner service ran once");
    let metrics = app.handle.metrics();
    assert_eq!((metrics.accepted, metrics.idempotent_replays), (1, 2));
    // One event in all, so one notification in all; none is queued now.
    assert!(receiver.hits.try_recv().is_err());
}

/// Sent again while the first is running, and after its notification died: the same receipt.
#[tokio::test]
async fn a_request_sent_again_while_running_or_after_its_notification_died_is_replayed() {
    let mut receiver = Receiver::start(vec![Answer::status(410)]).await;
    let gate = Arc::new(Notify::new());
    let app = App::start(layer(&receiver), Some(gate.clone())).await;
    let id = app.send("/work/copy", &[KEY], "x").await.event_id();
    support::eventually("running", || app.calls() == 1).await;
    let again = app.send("/work/copy", &[KEY], "x").await;
    assert_eq!((again.event_id(), again.replayed()), (id, true));

    gate.notify_one();
    assert_eq!(receiver.next().await.answered, StatusCode::GONE);
    support::eventually("dead", || app.handle.metrics().dead == 1).await;
    let again = app.send("/work/copy", &[KEY], "x").await;
    assert_eq!((again.event_id(), again.replayed()), (id, true));
    assert_eq!(app.calls(), 1);
    assert_eq!(app.handle.metrics().accepted, 1);
}

/// The key belongs to its path (and method and instance): under another path it is another key.
/// Under the same path with another body it is refused, and nothing starts.
#[tokio::test]
async fn the_same_key_for_other_work_is_another_key_or_a_mismatch() {
    let receiver = Receiver::start(Vec::new()).await;
    let app = App::start(layer(&receiver), None).await;
    let copy = app.send("/work/copy", &[KEY], "x").await.event_id();
    let other_path = app.send("/work/move", &[KEY], "x").await.event_id();
    assert_ne!(copy, other_path);

    for (path, body) in [("/work/copy", "y"), ("/work/copy?then=z", "x")] {
        let mismatch = app.send(path, &[KEY], body).await;
        mismatch.refused(StatusCode::UNPROCESSABLE_ENTITY, "idempotency_key_mismatch");
    }
    let metrics = app.handle.metrics();
    assert_eq!((metrics.accepted, metrics.idempotent_replays), (2, 0));
}

#[tokio::test]
async fn every_malformed_key_is_400_and_a_required_key_must_be_there() {
    let receiver = Receiver::start(Vec::new()).await;
    let app = App::start(layer(&receiver).require_idempotency_key(true), None).await;
    let too_long = "k".repeat(256);
    for keys in [
        vec![""],
        vec!["\"\""],
        vec![too_long.as_str()],
        vec!["two words"],
        vec!["\"unclosed"],
        vec!["\"bad\\escape\""],
        vec!["one", "two"],
    ] {
        let answer = app.send("/work/copy", &keys, "x").await;
        answer.refused(StatusCode::BAD_REQUEST, "invalid_idempotency_key");
    }
    app.send("/work/copy", &[], "x")
        .await
        .refused(StatusCode::BAD_REQUEST, "idempotency_key_required");
    assert_eq!((app.calls(), app.handle.metrics().accepted), (0, 0));
    app.send("/work/copy", &[KEY], "x").await.event_id();

    // A synchronous request's key is the inner service's business.
    let sync = Request::post(format!("http://{}/echo", app.addr))
        .header("Idempotency-Key", "\"sync key\"")
        .body(Full::default())
        .unwrap();
    let response = app.client.request(sync).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, r#"Some("\"sync key\"")"#);
}

/// Fifty copies at once, each on its own connection: one event, one call, one notification;
/// every answer is the one receipt (or, for a copy that waited too long, `409`).
#[tokio::test(flavor = "multi_thread")]
async fn fifty_copies_at_once_make_one_event() {
    let mut receiver = Receiver::start(Vec::new()).await;
    let app = Arc::new(App::start(layer(&receiver), None).await);
    let copies: Vec<_> = (0..50)
        .map(|_| {
            let app = app.clone();
            tokio::spawn(async move {
                // A client of its own: a connection of its own.
                let app = App {
                    client: Client::builder(TokioExecutor::new()).build_http(),
                    addr: app.addr,
                    handle: app.handle.clone(),
                    calls: app.calls.clone(),
                };
                app.send("/work/copy", &[KEY], "x").await
            })
        })
        .collect();
    let mut ids = std::collections::HashSet::new();
    let mut in_use = 0;
    for copy in copies {
        let answer = copy.await.unwrap();
        if answer.status == StatusCode::CONFLICT {
            answer.refused(StatusCode::CONFLICT, "idempotency_key_in_use");
            assert_eq!(answer.headers["retry-after"], "1");
            in_use += 1;
        } else {
            ids.insert(answer.event_id());
        }
    }
    assert_eq!(ids.len(), 1, "one event: {ids:?}");
    let metrics = app.handle.metrics();
    assert_eq!(metrics.accepted, 1);
    assert_eq!(metrics.idempotent_replays + in_use + 1, 50);
    let hit = receiver.next().await;
    assert_eq!(hit.json()["eventId"].as_u64(), ids.into_iter().next());
    assert_eq!(app.calls(), 1);
}

/// Past its retention the key is free: the same request starts new work.
#[tokio::test]
async fn after_the_retention_the_key_starts_new_work() {
    let receiver = Receiver::start(Vec::new()).await;
    let retention = Duration::from_millis(300);
    let app = App::start(layer(&receiver).idempotency_retention(retention), None).await;
    let first = app.send("/work/copy", &[KEY], "x").await.event_id();
    let again = app.send("/work/copy", &[KEY], "x").await;
    assert_eq!((again.event_id(), again.replayed()), (first, true));
    // The promise is about time passing: wait it out.
    tokio::time::sleep(retention + Duration::from_millis(50)).await;
    let later = app.send("/work/copy", &[KEY], "x").await;
    assert!(!later.replayed());
    assert_ne!(later.event_id(), first);
    assert_eq!(app.calls(), 2);
}

/// The layer's counters and the status endpoint: a replay's receipt names the first event,
/// whose status answers.
#[tokio::test]
async fn a_replayed_receipts_location_reads_the_first_event() {
    let receiver = Receiver::start(Vec::new()).await;
    let app = App::start(layer(&receiver), None).await;
    let first = app.send("/work/copy", &[KEY], "x").await;
    let again = app.send("/work/copy", &[KEY], "x").await;
    let location = again.headers["location"].to_str().unwrap().to_owned();
    let status = app
        .client
        .get(format!("http://{}{location}", app.addr).parse().unwrap())
        .await
        .unwrap();
    assert_eq!(status.status(), StatusCode::OK);
    let body = status.into_body().collect().await.unwrap().to_bytes();
    let status: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(status["eventId"].as_u64(), Some(first.event_id()));
}

/// A store that keeps no keys (the trait's default) refuses keyed requests as
/// `503 store_unavailable` rather than accept them unprotected; unkeyed ones go on as before.
#[tokio::test]
async fn a_store_that_keeps_no_keys_refuses_keyed_requests() {
    let receiver = Receiver::start(Vec::new()).await;
    let store = support::store::FaultyStore::default();
    let app = App::start(layer(&receiver).store(store), None).await;
    app.send("/work/copy", &[KEY], "x")
        .await
        .refused(StatusCode::SERVICE_UNAVAILABLE, "store_unavailable");
    assert_eq!(app.calls(), 0);
    app.send("/work/copy", &[], "x").await.event_id();
}

/// Where the key's rows fall among the others (docs/wire-contract.md): after the layer's own
/// bound, before the instance is resolved.
#[tokio::test]
async fn a_malformed_key_is_refused_after_overloaded_and_before_unknown_instance() {
    use tower_async_request::instance::{Instance, InstanceMap};
    let receiver = Receiver::start(Vec::new()).await;
    // Instances told by `x-tenant`: a request without it names none.
    let instances =
        InstanceMap::new(|parts| parts.headers.get("x-tenant")?.to_str().ok()?.parse().ok());
    instances.insert(
        Instance::builder(30)
            .callback_url(receiver.url())
            .build()
            .unwrap(),
    );
    let gate = Arc::new(Notify::new());
    let builder = AsyncRequestLayer::builder()
        .instances(instances)
        .allow_private_callbacks(true)
        .max_in_flight(1);
    let app = App::start(builder, Some(gate.clone())).await;
    app.send("/work/copy", &["\"unclosed"], "x")
        .await
        .refused(StatusCode::BAD_REQUEST, "invalid_idempotency_key");
    // Once the layer is full, its bound answers first.
    let request = Request::post(format!("http://{}/work/copy", app.addr))
        .header("Elements-Async-Request", "true")
        .header("x-tenant", "30")
        .header("Idempotency-Key", "\"first\"")
        .body(Full::from("x"))
        .unwrap();
    let accepted = app.client.request(request).await.unwrap();
    assert_eq!(accepted.status(), StatusCode::ACCEPTED);
    support::eventually("running", || app.calls() == 1).await;
    app.send("/work/copy", &["\"unclosed"], "x")
        .await
        .refused(StatusCode::SERVICE_UNAVAILABLE, "overloaded");
    gate.notify_one();
}

/// With `Prefer: respond-async, wait=N`, a first request whose work ends in time gets the real
/// response; sent again, it gets the receipt of its event, replayed (docs/idempotency.md).
#[tokio::test]
async fn with_prefer_wait_a_repeat_gets_the_receipt_not_the_response() {
    let receiver = Receiver::start(Vec::new()).await;
    let app = App::start(layer(&receiver).prefer_respond_async(true), None).await;
    let send = || {
        let request = Request::post(format!("http://{}/work/copy", app.addr))
            .header("Prefer", "respond-async, wait=10")
            .header("Idempotency-Key", KEY)
            .body(Full::from("x"))
            .unwrap();
        app.client.request(request)
    };
    let first = send().await.unwrap();
    assert_eq!(first.status(), StatusCode::OK);
    let body = first.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, "done copy x");
    let again = send().await.unwrap();
    let (parts, body) = again.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    check_receipt(parts.status, &parts.headers, &body);
    assert_eq!(parts.headers["idempotent-replayed"], "true");
    assert_eq!(app.calls(), 1);
}
