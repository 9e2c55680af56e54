//! The admin service over real HTTP: an app and its admin routes on 127.0.0.1:0, a real client, a
//! real receiver that goes down and comes back; with the memory store and with PostgreSQL.

mod support;
#[cfg(feature = "postgres")]
use support::pg;

use std::net::SocketAddr;
use std::time::Duration;

use axum::{routing::post, Router};
use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use support::{eventually, Answer, Receiver};
use tokio::net::TcpListener;
use tower_async_request::admin::Admin;
use tower_async_request::instance::{Instance, InstanceMap};
#[cfg(feature = "postgres")]
use tower_async_request::store::PostgresStore;
use tower_async_request::{AsyncRequestHandle, AsyncRequestLayer, AsyncRequestLayerBuilder};

#[cfg(feature = "postgres")]
const FILE: &str = "tests/admin.rs";
const MS: fn(u64) -> Duration = Duration::from_millis;

/// The app (one route behind the layer) and its admin routes under `/admin`, each on its own
/// listener, and a client for both.
struct Served {
    app: SocketAddr,
    admin: SocketAddr,
    handle: AsyncRequestHandle,
    client: Client<HttpConnector, Full<Bytes>>,
}

impl Served {
    async fn start(layer: AsyncRequestLayer) -> Self {
        let handle = layer.handle();
        let app = Router::new()
            .route(
                "/work",
                post(|body: String| async move { format!("done {body}") }),
            )
            .layer(layer);
        let admin = Router::new().nest_service("/admin", Admin::new(handle.clone()));
        Self {
            app: serve(app).await,
            admin: serve(admin).await,
            handle,
            client: Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    /// An async request to the app, `tenant` naming its instance; its event id.
    async fn accept(&self, tenant: Option<u64>) -> u64 {
        let mut request = Request::post(format!("http://{}/work", self.app))
            .header("Elements-Async-Request", "true");
        if let Some(tenant) = tenant {
            request = request.header("x-tenant", tenant.to_string());
        }
        let (status, body) = self.send(request.body(Full::from("job")).unwrap()).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
        body["eventId"].as_u64().unwrap()
    }

    async fn admin(&self, method: Method, path: &str) -> (StatusCode, Value) {
        let request = Request::builder()
            .method(method)
            .uri(format!("http://{}/admin{path}", self.admin))
            .body(Full::default())
            .unwrap();
        self.send(request).await
    }

    async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.admin(Method::GET, path).await
    }

    async fn post(&self, path: &str) -> (StatusCode, Value) {
        self.admin(Method::POST, path).await
    }

    async fn send(&self, request: Request<Full<Bytes>>) -> (StatusCode, Value) {
        let response = self.client.request(request).await.unwrap();
        let status = response.status();
        let json = response
            .headers()
            .get(http::header::CONTENT_TYPE)
            .is_some_and(|v| v == "application/json");
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert!(json || body.is_empty(), "admin answers are JSON");
        (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
    }

    /// Every dead letter, page by page (`limit` each, `query` added), checking each page's
    /// cursor; `between` runs after each page.
    async fn all_dead_letters(
        &self,
        query: &str,
        limit: usize,
        mut between: impl AsyncFnMut(),
    ) -> Vec<Value> {
        let mut all = Vec::new();
        let mut after = String::new();
        loop {
            let (status, page) = self
                .get(&format!("/dead-letters?limit={limit}&after={after}{query}"))
                .await;
            assert_eq!(status, StatusCode::OK, "{page}");
            let letters = page["deadLetters"].as_array().unwrap().clone();
            assert!(letters.len() <= limit);
            all.extend(letters.iter().cloned());
            between().await;
            match page["next"].as_u64() {
                Some(next) => {
                    assert_eq!(letters.len(), limit, "a cursor only after a full page");
                    assert_eq!(
                        Some(next),
                        letters.last().unwrap()["notificationId"].as_u64()
                    );
                    after = next.to_string();
                }
                None => return all,
            }
        }
    }
}

async fn serve(router: Router) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    addr
}

fn builder(receiver: &Receiver) -> AsyncRequestLayerBuilder {
    AsyncRequestLayer::builder()
        .instance_id(30)
        .default_callback_url(receiver.url())
        .signing_key("event-signature-key")
        .retry_schedule([MS(20), MS(20)])
        // The breaker off: an outage's notifications die on their schedule, not held.
        .circuit_breaker(0, MS(1))
        // Delivered events stay readable, with their attempts.
        .status_retention(Duration::from_secs(3600))
}

fn ids(letters: &[Value], field: &str) -> Vec<u64> {
    letters.iter().map(|l| l[field].as_u64().unwrap()).collect()
}

/// The receiver is down for a while: every event's three attempts fail, all are dead letters
/// with their attempts recorded; one bulk redelivery after it is back delivers them all.
async fn an_outage_is_replayed(served: &Served, receiver: &mut Receiver, events: usize) {
    let mut accepted = Vec::new();
    for _ in 0..events {
        accepted.push(served.accept(None).await);
    }
    for _ in 0..events * 3 {
        assert_eq!(
            receiver.next().await.answered,
            StatusCode::SERVICE_UNAVAILABLE
        );
    }
    eventually("all are dead letters", || {
        served.handle.metrics().dead == events as u64
    })
    .await;

    let dead = served.all_dead_letters("", 2, async || {}).await;
    let mut listed = ids(&dead, "eventId");
    listed.sort_unstable();
    accepted.sort_unstable();
    assert_eq!(listed, accepted, "every event is listed once");
    for letter in &dead {
        assert_eq!(letter["delivery"]["state"], "dead");
        assert_eq!(letter["delivery"]["attempts"], 3);
        assert_eq!(
            letter["delivery"]["lastError"],
            "the receiver answered 503 Service Unavailable"
        );
        let history = letter["delivery"]["history"].as_array().unwrap();
        assert_eq!(history.len(), 3);
        for attempt in history {
            assert_eq!(attempt["status"], 503);
            assert!(attempt["durationMs"].as_f64().unwrap() > 0.0);
            assert!(attempt["at"].as_u64().unwrap() >= letter["acceptedAt"].as_u64().unwrap());
        }
        assert_eq!(letter["notification"]["eventStatus"], "completed");
        assert_eq!(letter["notification"]["response"], "done job");
        assert_eq!(letter["eventStatus"], "completed");
    }

    let (status, event) = served.get(&format!("/events/{}", accepted[0])).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(event["delivery"]["state"], "dead");
    assert_eq!(event["instanceId"], 30);

    // The receiver is back: redeliver everything at once.
    let (status, started) = served.post("/dead-letters/redeliver").await;
    assert_eq!(status, StatusCode::ACCEPTED, "{started}");
    assert_eq!(started["more"], false);
    assert_eq!(started["redelivered"].as_array().unwrap().len(), events);
    for _ in 0..events {
        assert_eq!(receiver.next().await.answered, StatusCode::OK);
    }
    eventually("all delivered", || {
        served.handle.metrics().delivered == events as u64
    })
    .await;
    let (_, page) = served.get("/dead-letters").await;
    assert_eq!(page["deadLetters"], Value::Array(Vec::new()));
    assert_eq!(page["next"], Value::Null);

    let (status, event) = served.get(&format!("/events/{}", accepted[0])).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(event["delivery"]["state"], "delivered");
    assert_eq!(
        event["delivery"]["attempts"], 1,
        "counted again from the redelivery"
    );
    let history = event["delivery"]["history"].as_array().unwrap();
    assert_eq!(
        history
            .iter()
            .map(|a| a["status"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        [503, 503, 503, 200],
        "the history spans the redelivery"
    );
    assert_eq!(history[3]["error"], Value::Null);
}

fn outage(events: usize) -> Vec<Answer> {
    vec![Answer::status(503); events * 3]
}

#[tokio::test]
async fn an_outage_ends_in_dead_letters_that_one_bulk_redelivery_delivers() {
    let mut receiver = Receiver::start(outage(5)).await;
    let served = Served::start(builder(&receiver).build().unwrap()).await;
    an_outage_is_replayed(&served, &mut receiver, 5).await;
}

/// A store on the test server, in `schema`.
#[cfg(feature = "postgres")]
async fn on_postgres(schema: &pg::Schema) -> PostgresStore {
    PostgresStore::builder(pg::url())
        .schema(schema.0.clone())
        .connect()
        .await
        .unwrap()
}

#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread")]
async fn an_outage_is_replayed_the_same_way_on_postgres() {
    if !pg::available(FILE).await {
        return;
    }
    let schema = pg::Schema::new();
    let store = on_postgres(&schema).await;
    let mut receiver = Receiver::start(outage(4)).await;
    let served = Served::start(builder(&receiver).store(store).build().unwrap()).await;
    an_outage_is_replayed(&served, &mut receiver, 4).await;
    let (status, health) = served.get("/health").await;
    assert_eq!(
        (status, &health["store"]),
        (StatusCode::OK, &Value::from("ok"))
    );
}

#[tokio::test]
async fn pages_neither_repeat_nor_skip_while_new_dead_letters_arrive() {
    // `410 Gone` makes a dead letter at the first attempt.
    let mut receiver = Receiver::start(vec![Answer::status(410); 64]).await;
    let served = Served::start(builder(&receiver).build().unwrap()).await;
    for _ in 0..7 {
        served.accept(None).await;
    }
    eventually("seven dead letters", || served.handle.metrics().dead == 7).await;
    let before: Vec<u64> = ids(
        &served.get("/dead-letters").await.1["deadLetters"]
            .as_array()
            .unwrap()
            .clone(),
        "notificationId",
    );

    // While paging three at a time, two more events die after each page.
    let mut added = 0;
    let listed = served
        .all_dead_letters("", 3, async || {
            if added < 6 {
                for _ in 0..2 {
                    served.accept(None).await;
                    receiver.next().await;
                }
                added += 2;
                let dead = 7 + added;
                eventually("the new ones are dead", || {
                    served.handle.metrics().dead == dead
                })
                .await;
            }
        })
        .await;
    let listed = ids(&listed, "notificationId");
    assert!(
        listed.windows(2).all(|w| w[0] < w[1]),
        "no repeats, in order: {listed:?}"
    );
    assert!(before.iter().all(|id| listed.contains(id)), "none skipped");
    assert_eq!(
        listed.len(),
        13,
        "those that died meanwhile come on later pages"
    );
}

/// Twelve dead letters, paged three at a time; after each page one already listed and one still
/// to come are redelivered, one answered `200` (delivered) and the other `410` (dead again), in
/// turns. The pages list each dead letter exactly once, in order: those dead again where they
/// were, none of those already listed again; only those delivered before their page are missing.
async fn pages_are_stable_while_dead_letters_are_redelivered(
    served: &Served,
    receiver: &mut Receiver,
) {
    for _ in 0..12 {
        served.accept(None).await;
    }
    for _ in 0..12 {
        assert_eq!(receiver.next().await.answered, StatusCode::GONE);
    }
    eventually("twelve dead letters", || served.handle.metrics().dead == 12).await;
    let before = ids(
        served.get("/dead-letters").await.1["deadLetters"]
            .as_array()
            .unwrap(),
        "notificationId",
    );
    assert_eq!(before.len(), 12);

    let (mut listed, mut after, mut redelivered) = (Vec::new(), String::new(), Vec::new());
    let mut delivered_ahead = Vec::new();
    for turn in 0.. {
        let (status, page) = served
            .get(&format!("/dead-letters?limit=3&after={after}"))
            .await;
        assert_eq!(status, StatusCode::OK, "{page}");
        let page_ids = ids(page["deadLetters"].as_array().unwrap(), "notificationId");
        listed.extend(&page_ids);
        let behind = page_ids
            .iter()
            .copied()
            .find(|id| !redelivered.contains(id));
        let ahead = before
            .iter()
            .copied()
            .find(|id| !listed.contains(id) && !redelivered.contains(id));
        let (first, second) = if turn % 2 == 0 {
            (200, 410)
        } else {
            (410, 200)
        };
        for (id, answer) in [(behind, first), (ahead, second)] {
            let Some(id) = id else { continue };
            redelivered.push(id);
            receiver.then([Answer::status(answer)]);
            // Counted before the redelivery starts: its end may be counted before the hit is here.
            let ended = {
                let metrics = served.handle.metrics();
                metrics.delivered + metrics.dead
            };
            let (status, body) = served.post(&format!("/dead-letters/{id}/redeliver")).await;
            assert_eq!(status, StatusCode::ACCEPTED, "{body}");
            assert_eq!(
                body,
                serde_json::json!({"notificationId": id, "state": "pending"})
            );
            let hit = receiver.next().await;
            assert_eq!(hit.answered.as_u16(), answer);
            eventually("the redelivery recorded", || {
                let metrics = served.handle.metrics();
                metrics.delivered + metrics.dead > ended
            })
            .await;
            if answer == 200 && Some(id) == ahead {
                delivered_ahead.push(id);
            }
        }
        match page["next"].as_u64() {
            Some(next) => after = next.to_string(),
            None => break,
        }
    }
    assert!(redelivered.len() >= 7, "redelivered: {redelivered:?}");
    let expected: Vec<u64> = before
        .into_iter()
        .filter(|id| !delivered_ahead.contains(id))
        .collect();
    assert_eq!(listed, expected, "each once, in order, none skipped");
}

#[tokio::test]
async fn pages_neither_repeat_nor_skip_while_dead_letters_are_redelivered() {
    let mut receiver = Receiver::start(vec![Answer::status(410); 12]).await;
    let served = Served::start(builder(&receiver).build().unwrap()).await;
    pages_are_stable_while_dead_letters_are_redelivered(&served, &mut receiver).await;
}

#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread")]
async fn pages_are_stable_during_redelivery_on_postgres() {
    if !pg::available(FILE).await {
        return;
    }
    let schema = pg::Schema::new();
    let store = on_postgres(&schema).await;
    let mut receiver = Receiver::start(vec![Answer::status(410); 12]).await;
    let served = Served::start(builder(&receiver).store(store).build().unwrap()).await;
    pages_are_stable_while_dead_letters_are_redelivered(&served, &mut receiver).await;
}

#[tokio::test]
async fn without_a_limit_pages_and_bulk_redeliveries_take_100() {
    let mut receiver = Receiver::start(vec![Answer::status(410); 101]).await;
    let served = Served::start(builder(&receiver).build().unwrap()).await;
    for _ in 0..101 {
        served.accept(None).await;
    }
    for _ in 0..101 {
        receiver.next().await;
    }
    eventually("101 dead letters", || served.handle.metrics().dead == 101).await;
    let (status, page) = served.get("/dead-letters").await;
    assert_eq!(status, StatusCode::OK);
    let letters = page["deadLetters"].as_array().unwrap();
    assert_eq!(letters.len(), 100);
    assert_eq!(page["next"], letters[99]["notificationId"]);
    let (status, started) = served.post("/dead-letters/redeliver").await;
    assert_eq!(status, StatusCode::ACCEPTED, "{started}");
    assert_eq!(started["redelivered"].as_array().unwrap().len(), 100);
    assert_eq!(started["more"], true);
    for _ in 0..100 {
        assert_eq!(receiver.next().await.answered, StatusCode::OK);
    }
}

/// An event waiting for its next attempt: the admin answer names where it goes and when.
#[tokio::test]
async fn an_event_between_attempts_shows_its_callback_url_and_next_attempt() {
    let mut receiver = Receiver::start(vec![Answer::status(503)]).await;
    let layer = builder(&receiver)
        .retry_schedule([Duration::from_secs(60)])
        .build()
        .unwrap();
    let served = Served::start(layer).await;
    let id = served.accept(None).await;
    assert_eq!(
        receiver.next().await.answered,
        StatusCode::SERVICE_UNAVAILABLE
    );
    let mut event = Value::Null;
    for _ in 0..2000 {
        event = served.get(&format!("/events/{id}")).await.1;
        if event["delivery"]["attempts"] == 1 {
            break;
        }
        tokio::task::yield_now().await;
    }
    assert_eq!(event["delivery"]["attempts"], 1, "{event}");
    assert_eq!(event["delivery"]["state"], "pending");
    assert_eq!(event["callbackUrl"], receiver.url());
    let tried = event["delivery"]["history"][0]["at"].as_u64().unwrap();
    let next = event["delivery"]["nextAttemptAt"].as_u64().unwrap();
    // The schedule's 60 s, with its ±20 % jitter, after the attempt.
    assert!(
        (tried + 48_000..tried + 73_000).contains(&next),
        "next {next}, tried {tried}"
    );
}

#[tokio::test]
async fn each_instance_has_its_own_listing_and_bulk_redelivery() {
    let mut receiver = Receiver::start(vec![Answer::status(410); 5]).await;
    let instances =
        InstanceMap::new(|parts| parts.headers.get("x-tenant")?.to_str().ok()?.parse().ok());
    for id in [30, 31] {
        instances.insert(
            Instance::builder(id)
                .callback_url(receiver.url())
                .signing_key("key")
                .build()
                .unwrap(),
        );
    }
    let layer = AsyncRequestLayer::builder()
        .instances(instances)
        .allow_private_callbacks(true)
        .retry_schedule([MS(20)])
        .build()
        .unwrap();
    let served = Served::start(layer).await;
    for tenant in [30, 31, 31, 30, 31] {
        served.accept(Some(tenant)).await;
    }
    eventually("five dead letters", || served.handle.metrics().dead == 5).await;
    assert_eq!(instances_of(&served, 31).await, [31, 31, 31]);
    assert_eq!(instances_of(&served, 30).await, [30, 30]);
    assert!(instances_of(&served, 32).await.is_empty());

    let (status, started) = served
        .post("/dead-letters/redeliver?instance=31&limit=2")
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(started["redelivered"].as_array().unwrap().len(), 2);
    assert_eq!(started["more"], true, "one of 31's is left");
    for _ in 0..5 + 2 {
        receiver.next().await;
    }
    eventually("two delivered", || served.handle.metrics().delivered == 2).await;
    assert_eq!(instances_of(&served, 31).await, [31]);
    assert_eq!(
        instances_of(&served, 30).await,
        [30, 30],
        "the other instance's are untouched"
    );
    assert_eq!(served.handle.instance_metrics(31).unwrap().delivered, 2);
}

/// The instance ids of the dead letters listed for `instance`.
async fn instances_of(served: &Served, instance: u64) -> Vec<u64> {
    let letters = served
        .all_dead_letters(&format!("&instance={instance}"), 100, async || {})
        .await;
    ids(&letters, "instanceId")
}

#[tokio::test]
async fn bad_ids_bad_queries_and_unknown_things_get_json_errors() {
    let receiver = Receiver::start(Vec::new()).await;
    let served = Served::start(builder(&receiver).build().unwrap()).await;
    let cases: &[(Method, &str, u16, &str)] = &[
        (Method::GET, "/events/abc", 400, "invalid_id"),
        (Method::GET, "/events/-1", 400, "invalid_id"),
        (
            Method::GET,
            "/events/18446744073709551616",
            400,
            "invalid_id",
        ),
        (
            Method::POST,
            "/dead-letters/1e3/redeliver",
            400,
            "invalid_id",
        ),
        (Method::GET, "/dead-letters?limit=0", 400, "invalid_query"),
        (
            Method::GET,
            "/dead-letters?limit=100000",
            400,
            "invalid_query",
        ),
        (
            Method::GET,
            "/dead-letters?after=last",
            400,
            "invalid_query",
        ),
        (
            Method::GET,
            "/dead-letters?instance=1&instance=2",
            400,
            "invalid_query",
        ),
        (Method::GET, "/dead-letters?sort=desc", 400, "invalid_query"),
        (
            Method::POST,
            "/dead-letters/redeliver?limit=-5",
            400,
            "invalid_query",
        ),
        (Method::GET, "/events/12345", 404, "event_not_found"),
        (
            Method::POST,
            "/dead-letters/12345/redeliver",
            404,
            "dead_letter_not_found",
        ),
        (Method::GET, "/nothing/here", 404, "not_found"),
        (Method::DELETE, "/dead-letters", 405, "method_not_allowed"),
        (
            Method::GET,
            "/dead-letters/redeliver",
            405,
            "method_not_allowed",
        ),
    ];
    for (method, path, status, code) in cases {
        let (got, body) = served.admin(method.clone(), path).await;
        assert_eq!(got.as_u16(), *status, "{method} {path}: {body}");
        assert_eq!(body["code"], *code, "{method} {path}");
        assert!(!body["message"].as_str().unwrap().is_empty());
    }
}

/// `Idempotency-Key`: the admin's health report counts the requests answered with an earlier
/// receipt.
#[tokio::test]
async fn health_counts_idempotent_replays() {
    let receiver = Receiver::start(Vec::new()).await;
    let served = Served::start(builder(&receiver).build().unwrap()).await;
    for _ in 0..3 {
        let request = Request::post(format!("http://{}/work", served.app))
            .header("Elements-Async-Request", "true")
            .header("Idempotency-Key", "\"health\"")
            .body(Full::from("job"))
            .unwrap();
        let (status, receipt) = served.send(request).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{receipt}");
    }
    let (_, health) = served.get("/health").await;
    assert_eq!(health["idempotentReplays"], 2, "{health}");
}

#[tokio::test]
async fn health_reports_the_store_in_flight_work_and_shutting_down() {
    let receiver = Receiver::start(vec![Answer::status(200).after(MS(300))]).await;
    let served = Served::start(builder(&receiver).build().unwrap()).await;
    let (status, health) = served.get("/health").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(health["status"], "ok");
    assert_eq!(health["store"], "ok");
    assert_eq!(health["shuttingDown"], false);
    assert_eq!(health["inFlight"], 0);

    served.accept(None).await;
    eventually("a callback on its way", || {
        served.handle.metrics().pending == 1
    })
    .await;
    let (_, health) = served.get("/health").await;
    assert_eq!(
        (
            health["inFlight"].as_u64(),
            health["notificationsPending"].as_u64()
        ),
        (Some(1), Some(1))
    );

    served.handle.shutdown(Duration::from_secs(5)).await;
    let (status, health) = served.get("/health").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        (&health["status"], &health["shuttingDown"]),
        (&Value::from("unavailable"), &Value::from(true))
    );
    let (status, refused) = served.post("/dead-letters/redeliver").await;
    assert_eq!(
        (status, &refused["code"]),
        (
            StatusCode::SERVICE_UNAVAILABLE,
            &Value::from("shutting_down")
        )
    );
}

#[tokio::test]
async fn a_store_that_cannot_be_read_is_503_store_unavailable_and_one_that_hangs_unhealthy() {
    use std::sync::atomic::Ordering;
    let mut receiver = Receiver::start(vec![]).await;
    let store = std::sync::Arc::new(support::store::FaultyStore::default());
    let served = Served::start(builder(&receiver).store(store.clone()).build().unwrap()).await;
    let event_id = served.accept(None).await;
    receiver.next().await;
    eventually("delivered", || served.handle.metrics().delivered == 1).await;
    let (status, _) = served.get(&format!("/events/{event_id}")).await;
    assert_eq!(status, StatusCode::OK);

    // Reads fail: every route that reads answers 503 store_unavailable.
    store.failing_reads.store(true, Ordering::SeqCst);
    for path in [format!("/events/{event_id}"), "/dead-letters".to_owned()] {
        let (status, body) = served.get(&path).await;
        assert_eq!(
            (status, &body["code"]),
            (
                StatusCode::SERVICE_UNAVAILABLE,
                &Value::from("store_unavailable")
            ),
            "{path}: {body}"
        );
    }
    store.failing_reads.store(false, Ordering::SeqCst);

    // The store stops answering: health says so, within its own timeout.
    store.hanging_check.store(true, Ordering::SeqCst);
    let (status, health) = served.get("/health").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(health["status"], "unavailable");
    assert!(
        health["store"].as_str().unwrap().contains("did not answer"),
        "{health}"
    );
}
