//! Receivers' health against real receivers on 127.0.0.1:0: the bound on connections to one
//! receiver, its circuit breaker, the pace of an instance (docs/receivers.md).

mod support;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::{body::Body, routing::post, Router};
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::Value;
use support::{eventually, Answer, Receiver};
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;
use tower::ServiceExt;
use tower_async_request::admin::Admin;
use tower_async_request::instance::{Instance, InstanceMap};
use tower_async_request::verify::StandardWebhooksVerifier;
use tower_async_request::{AsyncRequestHandle, AsyncRequestLayer};

const WHSEC: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";

const MS: fn(u64) -> Duration = Duration::from_millis;

fn app(layer: AsyncRequestLayer) -> Router {
    Router::new()
        .route("/work", post(|body: String| async move { body }))
        .layer(layer)
}

/// An admin request through the admin service; its status and JSON.
async fn admin(handle: &AsyncRequestHandle, method: &str, path: &str) -> (StatusCode, Value) {
    let request = Request::builder()
        .method(method)
        .uri(path)
        .body(Body::empty())
        .unwrap();
    let response = Admin::new(handle.clone()).oneshot(request).await.unwrap();
    let status = response.status();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&body).unwrap())
}

async fn send(app: &Router, callback: Option<&str>, body: String) {
    let mut request = Request::post("/work").header("Elements-Async-Request", "true");
    if let Some(url) = callback {
        request = request.header("Elements-Async-Callback-Url", url);
    }
    let response = app
        .clone()
        .oneshot(request.body(Body::from(body)).unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
}

/// A receiver that accepts connections and never answers, counting those open now and the most
/// ever open at once.
struct Hanging {
    url: String,
    open: Arc<AtomicUsize>,
    most: Arc<AtomicUsize>,
    accepted: Arc<AtomicUsize>,
}

impl Hanging {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let open = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let accepted = Arc::new(AtomicUsize::new(0));
        let (open2, most2, accepted2) = (open.clone(), most.clone(), accepted.clone());
        tokio::spawn(async move {
            loop {
                let (mut socket, _) = listener.accept().await.unwrap();
                accepted2.fetch_add(1, Ordering::SeqCst);
                let now = open2.fetch_add(1, Ordering::SeqCst) + 1;
                most2.fetch_max(now, Ordering::SeqCst);
                let open = open2.clone();
                tokio::spawn(async move {
                    let mut buffer = [0; 4096];
                    while matches!(socket.read(&mut buffer).await, Ok(n) if n > 0) {}
                    open.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        Self {
            url,
            open,
            most,
            accepted,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_receiver_gets_at_most_its_bound_of_connections_and_others_get_theirs() {
    const BOUND: usize = 8;
    let hanging = Hanging::start().await;
    let mut healthy = Receiver::start(Vec::new()).await;
    let layer = AsyncRequestLayer::builder()
        .instance_id(30)
        .allow_private_callbacks(true)
        .max_connections_per_receiver(BOUND)
        // The breaker off: the bound alone keeps the connections down.
        .circuit_breaker(0, Duration::from_secs(30))
        .attempt_timeout(MS(300))
        .retry_schedule([MS(50); 3])
        .build()
        .unwrap();
    let handle = layer.handle();
    let app = app(layer);
    for i in 0..2_000 {
        send(&app, Some(&hanging.url), format!("hanging {i}")).await;
    }
    eventually(
        "the hanging receiver holds its bound of connections",
        || hanging.open.load(Ordering::SeqCst) == BOUND,
    )
    .await;
    for i in 0..200 {
        send(&app, Some(&healthy.url()), format!("healthy {i}")).await;
    }
    let mut bodies = Vec::new();
    for _ in 0..200 {
        bodies.push(healthy.next().await.json()["response"].clone());
    }
    bodies.sort_by_key(|body| body.as_str().unwrap().to_owned());
    bodies.dedup();
    assert_eq!(bodies.len(), 200, "each healthy notification once");
    assert!(
        hanging.most.load(Ordering::SeqCst) <= BOUND,
        "at most {BOUND} connections to the hanging receiver, saw {}",
        hanging.most.load(Ordering::SeqCst)
    );
    // The rest waited their turn without using their budget: none is dead yet.
    eventually("all 200 recorded", || handle.metrics().delivered == 200).await;
    let metrics = handle.metrics();
    assert_eq!(metrics.dead, 0);
    assert!(metrics.throttled >= 1_900, "{metrics:?}");
    assert!(hanging.accepted.load(Ordering::SeqCst) < 2_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_sets_its_own_bound() {
    let hanging = Hanging::start().await;
    let map = InstanceMap::new(|_| Some(7));
    map.insert(
        Instance::builder(7)
            .callback_url(&hanging.url)
            .max_connections(3)
            .build()
            .unwrap(),
    );
    let layer = AsyncRequestLayer::builder()
        .instances(map)
        .max_connections_per_receiver(50)
        .circuit_breaker(0, Duration::from_secs(30))
        .attempt_timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let app = app(layer);
    for i in 0..20 {
        send(&app, None, format!("{i}")).await;
    }
    eventually("three connections are open", || {
        hanging.open.load(Ordering::SeqCst) == 3
    })
    .await;
    // Whatever else becomes due, no fourth connection opens.
    for i in 0..20 {
        send(&app, None, format!("more {i}")).await;
    }
    let before = hanging.accepted.load(Ordering::SeqCst);
    send(&app, None, "last".into()).await;
    assert_eq!(hanging.most.load(Ordering::SeqCst), 3);
    assert_eq!(hanging.accepted.load(Ordering::SeqCst), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_open_the_circuit_a_probe_closes_it_and_the_held_go_once_each() {
    let mut receiver = Receiver::start(vec![Answer::status(500); 4]).await;
    let layer = AsyncRequestLayer::builder()
        .instance_id(30)
        .default_callback_url(receiver.url())
        .circuit_breaker(3, MS(300))
        .retry_schedule([MS(50); 20])
        .build()
        .unwrap();
    let handle = layer.handle();
    let app = app(layer);
    send(&app, None, "first".into()).await;
    // Three failed attempts of the first event open the circuit.
    for _ in 0..3 {
        assert_eq!(receiver.next().await.answered, 500);
    }
    eventually("the circuit is open", || {
        handle.metrics().receivers_open == 1
    })
    .await;
    let opened = Instant::now();
    for i in 0..5 {
        send(&app, None, format!("held {i}")).await;
    }
    eventually("all six are held", || handle.metrics().held == 6).await;
    // The probe comes after the cool-down, gets a 500 and opens the circuit again (600 ms).
    let probe = receiver.next().await;
    assert_eq!(probe.answered, 500);
    assert!(opened.elapsed() >= MS(250), "{:?}", opened.elapsed());
    assert!(receiver.hits.try_recv().is_err(), "one probe, nothing else");
    eventually("open again", || handle.metrics().receivers_open == 1).await;
    // The next probe gets a 2xx: closed, and everything held is delivered, each once.
    let mut delivered = HashMap::new();
    for _ in 0..6 {
        let hit = receiver.next().await;
        assert_eq!(hit.answered, 200);
        *delivered
            .entry(hit.json()["response"].as_str().unwrap().to_owned())
            .or_insert(0) += 1;
    }
    assert_eq!(delivered.len(), 6, "{delivered:?}");
    assert!(delivered.values().all(|&n| n == 1));
    eventually("nothing held, the circuit closed", || {
        let metrics = handle.metrics();
        metrics.held == 0 && metrics.receivers_open == 0 && metrics.delivered == 6
    })
    .await;
    // Held notifications used no attempts: only the first event's four failures were retries.
    assert_eq!(handle.metrics().retries, 4, "{:?}", handle.metrics());
    assert!(receiver.hits.try_recv().is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_with_a_pace_is_paced_and_loses_nothing() {
    let mut receiver = Receiver::start(Vec::new()).await;
    let map = InstanceMap::new(|_| Some(7));
    map.insert(
        Instance::builder(7)
            .callback_url(receiver.url())
            .max_delivery_rate(100.0)
            .build()
            .unwrap(),
    );
    let layer = AsyncRequestLayer::builder().instances(map).build().unwrap();
    let app = app(layer);
    let started = Instant::now();
    for i in 0..500 {
        send(&app, None, format!("{i}")).await;
    }
    let mut seen = Vec::new();
    for _ in 0..500 {
        seen.push(
            receiver.next().await.json()["response"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    let took = started.elapsed();
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), 500);
    assert!(took >= MS(4_500), "500 at 100/s took {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_failing_too_long_is_disabled_and_enabling_replays_its_dead_letters() {
    let mut receiver = Receiver::start(vec![Answer::status(503); 1_000]).await;
    let layer = AsyncRequestLayer::builder()
        .instance_id(30)
        .default_callback_url(receiver.url())
        .circuit_breaker(2, MS(50))
        .disable_receiver_after(Some(MS(400)))
        .retry_schedule([MS(20); 50])
        .build()
        .unwrap();
    let handle = layer.handle();
    let app = app(layer);
    for i in 0..3 {
        send(&app, None, format!("early {i}")).await;
    }
    eventually("the receiver is disabled", || {
        handle.metrics().receivers_disabled == 1
    })
    .await;
    eventually("all three are dead letters", || handle.metrics().dead == 3).await;
    let dead = handle.dead_letters().await.unwrap();
    assert!(dead.iter().all(|letter| letter
        .last_error
        .as_deref()
        .unwrap()
        .starts_with("receiver_disabled")));
    // New notifications to it die at once, unsent.
    let (status, page) = admin(&handle, "GET", "/receivers?instance=30").await;
    assert_eq!(status, StatusCode::OK, "{page}");
    let listed = &page["receivers"][0];
    assert_eq!(listed["state"], "disabled");
    assert_eq!(listed["origin"], format!("http://{}", receiver.addr));
    let id = listed["id"].as_str().unwrap().to_owned();
    let hits_before = {
        let mut n = 0;
        while receiver.hits.try_recv().is_ok() {
            n += 1;
        }
        n
    };
    assert!(hits_before >= 3, "{hits_before}");
    send(&app, None, "late".into()).await;
    eventually("the late one is dead too", || handle.metrics().dead == 4).await;
    assert!(
        receiver.hits.try_recv().is_err(),
        "nothing sent to a disabled receiver"
    );

    // Enabled, with its dead letters sent again: all four arrive, each once.
    receiver.answers_clear();
    let (status, enabled) = admin(
        &handle,
        "POST",
        &format!("/receivers/{id}/enable?redeliver=since"),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{enabled}");
    assert_eq!(enabled["redelivered"].as_array().unwrap().len(), 4);
    let mut bodies = Vec::new();
    for _ in 0..4 {
        let hit = receiver.next().await;
        assert_eq!(hit.answered, 200);
        bodies.push(hit.json()["response"].as_str().unwrap().to_owned());
    }
    bodies.sort();
    assert_eq!(bodies, ["early 0", "early 1", "early 2", "late"]);
    eventually("delivered", || handle.metrics().delivered == 4).await;
    assert_eq!(handle.metrics().receivers_disabled, 0);
    let (_, page) = admin(&handle, "GET", "/receivers").await;
    assert_eq!(page["receivers"][0]["state"], "closed");
}

#[tokio::test]
async fn the_receiver_routes_check_their_input() {
    let layer = AsyncRequestLayer::builder()
        .default_callback_url("https://hooks.example.com/in")
        .build()
        .unwrap();
    let handle = layer.handle();
    for (method, path, status, code) in [
        ("GET", "/receivers?after=xyz", 400, "invalid_id"),
        ("GET", "/receivers?limit=0", 400, "invalid_query"),
        ("GET", "/receivers?instance=-1", 400, "invalid_query"),
        ("GET", "/receivers?colour=red", 400, "invalid_query"),
        ("POST", "/receivers", 405, "method_not_allowed"),
        (
            "GET",
            "/receivers/0123456789abcdef/enable",
            405,
            "method_not_allowed",
        ),
        (
            "POST",
            "/receivers/0123456789ABCDEF/enable",
            400,
            "invalid_id",
        ),
        (
            "POST",
            "/receivers/0123456789abcdef/enable?redeliver=all",
            400,
            "invalid_query",
        ),
        (
            "POST",
            "/receivers/0123456789abcdef/enable",
            404,
            "receiver_not_found",
        ),
    ] {
        let (got, body) = admin(&handle, method, path).await;
        assert_eq!(got.as_u16(), status, "{method} {path}: {body}");
        assert_eq!(body["code"], code, "{method} {path}: {body}");
        assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    let (status, page) = admin(&handle, "GET", "/receivers").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(page, serde_json::json!({"receivers": [], "next": null}));
}

/// The next operational webhook: its signature verified, its JSON.
async fn operational(operations: &mut Receiver) -> Value {
    let hit = operations.next().await;
    StandardWebhooksVerifier::new(WHSEC)
        .unwrap()
        .verify(&hit.headers, &hit.body)
        .expect("operational webhooks are signed with the instance's keys");
    hit.json()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_are_told_by_signed_webhooks() {
    let receiver = Receiver::start(vec![Answer::status(503); 2]).await;
    let mut operations = Receiver::start(Vec::new()).await;
    let map = InstanceMap::new(|_| Some(7));
    map.insert(
        Instance::builder(7)
            .callback_url(receiver.url())
            .operations_url(operations.url())
            .standard_webhooks_secret(WHSEC)
            .build()
            .unwrap(),
    );
    let layer = AsyncRequestLayer::builder()
        .instances(map)
        .circuit_breaker(2, MS(100))
        .disable_receiver_after(Some(MS(500)))
        .retry_schedule([MS(20); 50])
        .build()
        .unwrap();
    let handle = layer.handle();
    let app = app(layer);
    let origin = format!("http://{}", receiver.addr);

    // Two failures open the circuit; the probe after 100 ms closes it.
    send(&app, None, "first".into()).await;
    let failing = operational(&mut operations).await;
    assert_eq!(failing["type"], "receiver.failing", "{failing}");
    assert_eq!(failing["instanceId"], 7);
    assert_eq!(failing["data"]["origin"], origin);
    assert_eq!(failing["data"]["consecutiveFailures"], 2);
    let recovered = operational(&mut operations).await;
    assert_eq!(recovered["type"], "receiver.recovered", "{recovered}");
    assert_eq!(
        recovered["data"]["receiverId"],
        failing["data"]["receiverId"]
    );

    // A notification the receiver refuses for good is a dead letter.
    receiver.then([Answer::status(410)]);
    send(&app, None, "gone".into()).await;
    let dead = operational(&mut operations).await;
    assert_eq!(dead["type"], "notification.dead", "{dead}");
    let letters = handle.dead_letters().await.unwrap();
    assert_eq!(letters.len(), 1);
    assert_eq!(dead["data"]["eventId"], letters[0].event_id.get());
    assert_eq!(
        dead["data"]["notificationId"],
        letters[0].notification_id.get()
    );

    // Failing for 500 ms without a success: disabled, and what it held dies.
    receiver.then(vec![Answer::status(503); 1_000]);
    send(&app, None, "last".into()).await;
    let mut kinds = Vec::new();
    for _ in 0..3 {
        let told = operational(&mut operations).await;
        kinds.push(told["type"].as_str().unwrap().to_owned());
    }
    kinds.sort();
    assert_eq!(
        kinds,
        ["notification.dead", "receiver.disabled", "receiver.failing"]
    );
    // Nothing is said about the operations URL itself, nor anything more here.
    assert!(operations.hits.try_recv().is_err());
}

/// A layer on `store` sending to `receiver`, disabling it after 300 ms of failures.
fn disabling<S: tower_async_request::store::EventStore>(
    receiver: &Receiver,
    store: S,
) -> AsyncRequestLayer {
    AsyncRequestLayer::builder()
        .instance_id(30)
        .default_callback_url(receiver.url())
        .store(store)
        .circuit_breaker(1, MS(50))
        .disable_receiver_after(Some(MS(300)))
        .retry_schedule([MS(20); 50])
        .build()
        .unwrap()
}

/// Sends one event through `app` and waits for it to be a dead letter of `handle`'s, buried by
/// the disabling, with no attempt made.
async fn buried_unsent(app: &Router, handle: &AsyncRequestHandle, dead_before: u64) {
    send(app, None, "after".into()).await;
    eventually("the new event is a dead letter", || {
        handle.metrics().dead == dead_before + 1
    })
    .await;
    let letters = handle.dead_letters().await.unwrap();
    let last = letters.iter().max_by_key(|l| l.notification_id).unwrap();
    assert_eq!(last.attempts, 0, "{last:?}");
    assert!(last
        .last_error
        .as_deref()
        .unwrap()
        .starts_with("receiver_disabled"));
}

#[cfg(feature = "redb")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disabled_receiver_stays_disabled_after_a_restart() {
    use tower_async_request::store::RedbStore;
    let file = std::env::temp_dir().join(format!("tar-receivers-{}.redb", std::process::id()));
    let _ = std::fs::remove_file(&file);
    let mut receiver = Receiver::start(vec![Answer::status(503); 1_000]).await;
    {
        let layer = disabling(&receiver, RedbStore::open(&file).unwrap());
        let handle = layer.handle();
        let app = app(layer);
        send(&app, None, "before".into()).await;
        eventually("disabled", || handle.metrics().receivers_disabled == 1).await;
        eventually("buried", || handle.metrics().dead == 1).await;
        handle.shutdown(Duration::from_secs(5)).await;
    }
    while receiver.hits.try_recv().is_ok() {}
    // Another process on the same file: the receiver is disabled from the start.
    let layer = disabling(&receiver, RedbStore::open(&file).unwrap());
    let handle = layer.handle();
    let app = app(layer);
    let listed = handle.receivers(None).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].state.as_str(), "disabled");
    buried_unsent(&app, &handle, 0).await;
    assert!(receiver.hits.try_recv().is_err(), "nothing sent");
    let _ = std::fs::remove_file(&file);
}

#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_one_node_disables_is_disabled_on_every_node_and_enabled_on_all() {
    use tower_async_request::store::PostgresStore;
    if !support::pg::available("receivers.rs").await {
        return;
    }
    let schema = support::pg::Schema::new();
    let node = || async {
        PostgresStore::builder(support::pg::url())
            .schema(schema.0.clone())
            .connect()
            .await
            .unwrap()
    };
    let mut receiver = Receiver::start(vec![Answer::status(503); 1_000]).await;
    let first = disabling(&receiver, node().await);
    let second = disabling(&receiver, node().await);
    let (first_handle, second_handle) = (first.handle(), second.handle());
    let (first_app, second_app) = (app(first), app(second));
    send(&first_app, None, "before".into()).await;
    eventually("disabled on the first node", || {
        first_handle.metrics().receivers_disabled == 1
    })
    .await;
    // The second node never sent to it, and honours the disabling.
    let mut seen = Vec::new();
    for _ in 0..100 {
        seen = second_handle.receivers(None).await.unwrap();
        if !seen.is_empty() {
            break;
        }
        tokio::time::sleep(MS(50)).await;
    }
    assert_eq!(seen.len(), 1, "the stored disabling is seen");
    assert_eq!(seen[0].state.as_str(), "disabled");
    while receiver.hits.try_recv().is_ok() {}
    buried_unsent(&second_app, &second_handle, 0).await;
    assert!(receiver.hits.try_recv().is_err(), "nothing sent");
    // Enabled on the second node: the first follows within its sync period.
    receiver.answers_clear();
    assert!(second_handle.enable_receiver(&seen[0].id).await.unwrap());
    eventually("enabled on the first node too", || {
        first_handle.metrics().receivers_disabled == 0
    })
    .await;
    send(&first_app, None, "again".into()).await;
    assert_eq!(receiver.next().await.answered, 200);
}
