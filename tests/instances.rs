//! Many instances behind one layer, against real receivers on 127.0.0.1:0: each instance's
//! callbacks go to its own URL signed with its own keys, its own bound holds only it back, and
//! changes made while events are pending (key rotation, a new URL, removal) apply to the next
//! attempt.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::{body::Body, routing::post, Router};
use http::{header, Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::Value;
use support::{eventually, Answer, Receiver};
use tokio::sync::Notify;
use tower::ServiceExt;
use tower_async_request::instance::{
    Instance, InstanceMap, ResolveError, ResolveFuture, ResolveInstance,
};
use tower_async_request::verify::{ElementsVerifier, StandardWebhooksVerifier};
use tower_async_request::{AsyncRequestLayer, AsyncRequestLayerBuilder};

const ACME_KEY: &str = "acme-signing-key";
const ACME_WHSEC: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
const GLOBEX_KEY: &str = "globex-signing-key";
const GLOBEX_WHSEC: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const MS: fn(u64) -> Duration = Duration::from_millis;

/// `Authorization: User <secret>, Element <token>`, where the token is `element-<id>`.
fn element_of(parts: &http::request::Parts) -> Option<u64> {
    let value = parts.headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let token = value
        .split(',')
        .find_map(|part| part.trim().strip_prefix("Element "))?;
    token.trim().strip_prefix("element-")?.parse().ok()
}

fn acme(receiver: &Receiver) -> Instance {
    Instance::builder(30)
        .callback_url(receiver.url())
        .signing_key(ACME_KEY)
        .standard_webhooks_secret(ACME_WHSEC)
        .build()
        .unwrap()
}

fn globex(receiver: &Receiver) -> Instance {
    Instance::builder(31)
        .callback_url(receiver.url())
        .signing_key(GLOBEX_KEY)
        .standard_webhooks_secret(GLOBEX_WHSEC)
        .build()
        .unwrap()
}

fn builder(instances: impl ResolveInstance) -> AsyncRequestLayerBuilder {
    AsyncRequestLayer::builder()
        .instances(instances)
        .retry_schedule([MS(200), MS(200), MS(200)])
}

/// An app whose handler counts its calls and, while `gate` is set, waits for it.
fn app(layer: AsyncRequestLayer, calls: Arc<AtomicUsize>, gate: Option<Arc<Notify>>) -> Router {
    Router::new()
        .route(
            "/work",
            post(move |body: String| {
                calls.fetch_add(1, Ordering::SeqCst);
                let gate = gate.clone();
                async move {
                    if let Some(gate) = gate {
                        gate.notified().await;
                    }
                    axum::Json(serde_json::json!({ "done": body }))
                }
            }),
        )
        .layer(layer)
}

fn async_request(element: Option<u64>) -> Request<Body> {
    let mut request = Request::post("/work").header("Elements-Async-Request", "true");
    if let Some(id) = element {
        request = request.header(
            header::AUTHORIZATION,
            format!("User user-secret, Element element-{id}"),
        );
    }
    request.body(Body::from("job")).unwrap()
}

async fn send(app: &Router, request: Request<Body>) -> (StatusCode, http::HeaderMap, Value) {
    let response = app.clone().oneshot(request).await.unwrap();
    let (parts, body) = response.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    let json = serde_json::from_slice(&body).unwrap_or(Value::Null);
    (parts.status, parts.headers, json)
}

fn verifies(hit: &support::Hit, key: &str, whsec: &str) -> (bool, bool) {
    (
        ElementsVerifier::new(key)
            .verify(&hit.headers, &hit.body)
            .is_ok(),
        StandardWebhooksVerifier::new(whsec)
            .unwrap()
            .verify(&hit.headers, &hit.body)
            .is_ok(),
    )
}

#[tokio::test]
async fn each_instance_is_delivered_to_its_own_url_signed_with_its_own_keys() {
    let mut acme_hooks = Receiver::start(vec![]).await;
    let mut globex_hooks = Receiver::start(vec![]).await;
    let instances = InstanceMap::new(element_of);
    instances.insert(acme(&acme_hooks));
    instances.insert(globex(&globex_hooks));
    let layer = builder(instances).build().unwrap();
    let handle = layer.handle();
    let app = app(layer, Arc::default(), None);

    let (status, _, acme_receipt) = send(&app, async_request(Some(30))).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let (status, _, globex_receipt) = send(&app, async_request(Some(31))).await;
    assert_eq!(status, StatusCode::ACCEPTED);

    let hit = acme_hooks.next().await;
    assert_eq!(hit.json()["instanceId"], 30);
    assert_eq!(hit.json()["eventId"], acme_receipt["eventId"]);
    assert_eq!(hit.json()["response"], serde_json::json!({"done": "job"}));
    assert_eq!(verifies(&hit, ACME_KEY, ACME_WHSEC), (true, true));
    assert_eq!(verifies(&hit, GLOBEX_KEY, GLOBEX_WHSEC), (false, false));

    let hit = globex_hooks.next().await;
    assert_eq!(hit.json()["instanceId"], 31);
    assert_eq!(hit.json()["eventId"], globex_receipt["eventId"]);
    assert_eq!(verifies(&hit, GLOBEX_KEY, GLOBEX_WHSEC), (true, true));
    assert_eq!(verifies(&hit, ACME_KEY, ACME_WHSEC), (false, false));

    eventually("both delivered", || handle.metrics().delivered == 2).await;
    for id in [30, 31] {
        let metrics = handle.instance_metrics(id).unwrap();
        assert_eq!((metrics.accepted, metrics.delivered), (1, 1), "{id}");
        assert_eq!((metrics.pending, metrics.running), (0, 0), "{id}");
    }
    assert_eq!(handle.metrics().accepted, 2);
    assert!(handle.instance_metrics(32).is_none());
    assert!(acme_hooks.hits.try_recv().is_err(), "one callback each");
    assert!(globex_hooks.hits.try_recv().is_err(), "one callback each");
}

#[tokio::test]
async fn a_request_that_identifies_no_instance_is_401_and_reaches_nothing() {
    let mut hooks = Receiver::start(vec![]).await;
    let instances = InstanceMap::new(element_of);
    instances.insert(acme(&hooks));
    let calls = Arc::new(AtomicUsize::new(0));
    let layer = builder(instances).build().unwrap();
    let handle = layer.handle();
    let app = app(layer, calls.clone(), None);

    for element in [None, Some(32)] {
        let (status, headers, body) = send(&app, async_request(element)).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{element:?}");
        assert_eq!(headers[header::CONTENT_TYPE], "application/json");
        assert_eq!(body["code"], "unknown_instance");
        assert!(body["message"].as_str().unwrap().contains("instance"));
    }
    // A synchronous request is not asked about its instance at all.
    let sync = Request::post("/work").body(Body::from("sync")).unwrap();
    let (status, _, body) = send(&app, sync).await;
    assert_eq!(
        (status, &body["done"]),
        (StatusCode::OK, &Value::from("sync"))
    );
    assert_eq!(calls.load(Ordering::SeqCst), 1, "only the sync request ran");
    // No event was made (its write comes before any answer), so no callback can come.
    assert_eq!(handle.metrics().accepted, 0);
    assert!(hooks.hits.try_recv().is_err());
}

/// The instance is resolved before the body is read: a request naming no instance is refused
/// while its body is still arriving (here: never ends).
#[tokio::test]
async fn an_unknown_instance_is_refused_before_its_body_is_read() {
    let hooks = Receiver::start(vec![]).await;
    let instances = InstanceMap::new(element_of);
    instances.insert(acme(&hooks));
    let app = app(builder(instances).build().unwrap(), Arc::default(), None);
    let (sender, endless) = support::ChannelBody::new();
    sender
        .send(bytes::Bytes::from_static(b"first chunk"))
        .await
        .unwrap();
    let request = Request::post("/work")
        .header("Elements-Async-Request", "true")
        .body(Body::new(endless))
        .unwrap();
    let answer = tokio::time::timeout(Duration::from_secs(20), send(&app, request))
        .await
        .expect("answered while the body is still open");
    assert_eq!(
        (answer.0, &answer.2["code"]),
        (StatusCode::UNAUTHORIZED, &Value::from("unknown_instance"))
    );
    drop(sender);
}

/// The layer's own `max_in_flight` holds over every instance's: with room for one event in all,
/// a second instance with room of its own is still refused.
#[tokio::test]
async fn the_layers_bound_applies_on_top_of_each_instances() {
    let hooks = Receiver::start(vec![]).await;
    let instances = InstanceMap::new(element_of);
    for id in [30, 31] {
        instances.insert(
            Instance::builder(id)
                .callback_url(hooks.url())
                .max_in_flight(10)
                .build()
                .unwrap(),
        );
    }
    let gate = Arc::new(Notify::new());
    let layer = builder(instances).max_in_flight(1).build().unwrap();
    let app = app(layer, Arc::default(), Some(gate.clone()));
    assert_eq!(
        send(&app, async_request(Some(30))).await.0,
        StatusCode::ACCEPTED
    );
    let (status, headers, body) = send(&app, async_request(Some(31))).await;
    assert_eq!(
        (status, &body["code"]),
        (StatusCode::SERVICE_UNAVAILABLE, &Value::from("overloaded"))
    );
    assert_eq!(headers[header::RETRY_AFTER], "1");
    gate.notify_waiters();
}

/// A resolver whose backend is down.
struct Down;

impl ResolveInstance for Down {
    fn resolve<'a>(&'a self, _: &'a http::request::Parts) -> ResolveFuture<'a> {
        Box::pin(async { Err(ResolveError::new("the tenant database is unreachable")) })
    }

    fn by_id(&self, _: u64) -> ResolveFuture<'_> {
        Box::pin(async { Err(ResolveError::new("the tenant database is unreachable")) })
    }
}

#[tokio::test]
async fn a_failing_resolver_is_503_instance_unavailable_with_retry_after() {
    let calls = Arc::new(AtomicUsize::new(0));
    let layer = builder(Down).build().unwrap();
    let handle = layer.handle();
    let app = app(layer, calls.clone(), None);
    let (status, headers, body) = send(&app, async_request(Some(30))).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(headers[header::RETRY_AFTER], "1");
    assert_eq!(body["code"], "instance_unavailable");
    assert!(
        !body["message"]
            .as_str()
            .unwrap()
            .contains("tenant database"),
        "the resolver's error goes to the log, not to the client: {body}"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 0);
    assert_eq!(handle.metrics().accepted, 0);
}

#[tokio::test]
async fn an_instance_at_its_own_bound_is_refused_while_others_are_accepted() {
    let hooks = Receiver::start(vec![]).await;
    let instances = InstanceMap::new(element_of);
    instances.insert(
        Instance::builder(30)
            .callback_url(hooks.url())
            .max_in_flight(2)
            .build()
            .unwrap(),
    );
    instances.insert(globex(&hooks));
    let gate = Arc::new(Notify::new());
    let calls = Arc::new(AtomicUsize::new(0));
    let layer = builder(instances).build().unwrap();
    let handle = layer.handle();
    let app = app(layer, calls.clone(), Some(gate.clone()));

    for _ in 0..2 {
        assert_eq!(
            send(&app, async_request(Some(30))).await.0,
            StatusCode::ACCEPTED
        );
    }
    let (status, headers, body) = send(&app, async_request(Some(30))).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(headers[header::RETRY_AFTER], "1");
    assert_eq!(body["code"], "overloaded");
    assert!(
        body["message"].as_str().unwrap().contains("Instance 30"),
        "{body}"
    );
    // The other instance is not held back by the first one's bound.
    for _ in 0..3 {
        assert_eq!(
            send(&app, async_request(Some(31))).await.0,
            StatusCode::ACCEPTED
        );
    }
    eventually("five jobs running", || calls.load(Ordering::SeqCst) == 5).await;
    assert_eq!(handle.instance_metrics(30).unwrap().accepted, 2);

    // Once its events are delivered, the instance is accepted again.
    while handle.metrics().delivered < 5 {
        gate.notify_waiters();
        tokio::time::sleep(MS(10)).await;
    }
    let (status, _, _) = send(&app, async_request(Some(30))).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    gate.notify_waiters();
}

#[tokio::test]
async fn a_key_rotated_between_attempts_signs_the_retry_with_the_new_key() {
    let mut hooks = Receiver::start(vec![Answer::status(500)]).await;
    let instances = InstanceMap::new(element_of);
    instances.insert(acme(&hooks));
    let layer = builder(instances.clone()).build().unwrap();
    let app = app(layer, Arc::default(), None);
    assert_eq!(
        send(&app, async_request(Some(30))).await.0,
        StatusCode::ACCEPTED
    );

    let first = hooks.next().await;
    assert_eq!(first.answered, 500);
    assert_eq!(verifies(&first, ACME_KEY, ACME_WHSEC), (true, true));
    // Rotated while the notification waits for its retry.
    instances.insert(
        Instance::builder(30)
            .callback_url(hooks.url())
            .signing_key("acme-rotated-key")
            .standard_webhooks_secret(GLOBEX_WHSEC)
            .build()
            .unwrap(),
    );
    let retry = hooks.next().await;
    assert_eq!(retry.answered, 200);
    assert_eq!(retry.body, first.body, "the same notification");
    assert_eq!(retry.headers["webhook-id"], first.headers["webhook-id"]);
    assert_eq!(
        verifies(&retry, "acme-rotated-key", GLOBEX_WHSEC),
        (true, true)
    );
    assert_eq!(verifies(&retry, ACME_KEY, ACME_WHSEC), (false, false));
}

#[tokio::test]
async fn a_changed_instance_url_applies_to_the_retry_but_a_requested_url_stays() {
    let mut old_hooks = Receiver::start(vec![Answer::status(500), Answer::status(500)]).await;
    let mut new_hooks = Receiver::start(vec![]).await;
    let instances = InstanceMap::new(element_of);
    instances.insert(acme(&old_hooks));
    let layer = builder(instances.clone())
        .allow_private_callbacks(true)
        .build()
        .unwrap();
    let app = app(layer, Arc::default(), None);
    // One event takes the instance's URL, the other names its own (the same, as it happens).
    assert_eq!(
        send(&app, async_request(Some(30))).await.0,
        StatusCode::ACCEPTED
    );
    let mut named = async_request(Some(30));
    named.headers_mut().insert(
        "elements-async-callback-url",
        old_hooks.url().parse().unwrap(),
    );
    assert_eq!(send(&app, named).await.0, StatusCode::ACCEPTED);
    for _ in 0..2 {
        assert_eq!(old_hooks.next().await.answered, 500);
    }

    instances.insert(acme(&new_hooks));
    let moved = new_hooks.next().await;
    assert_eq!(moved.answered, 200);
    assert_eq!(verifies(&moved, ACME_KEY, ACME_WHSEC), (true, true));
    let stayed = old_hooks.next().await;
    assert_eq!(stayed.answered, 200, "a URL the request named is kept");
    assert_ne!(moved.json()["eventId"], stayed.json()["eventId"]);
}

#[tokio::test]
async fn the_request_callback_url_wins_and_is_still_checked_as_untrusted() {
    let mut instance_hooks = Receiver::start(vec![]).await;
    let instances = InstanceMap::new(element_of);
    instances.insert(acme(&instance_hooks));
    let layer = builder(instances).build().unwrap();
    let app = app(layer, Arc::default(), None);

    // Loopback is trusted as the instance's own URL, not when a request names it.
    let mut request = async_request(Some(30));
    request.headers_mut().insert(
        "elements-async-callback-url",
        instance_hooks.url().parse().unwrap(),
    );
    let (status, _, body) = send(&app, request).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["code"], "forbidden_callback_url");

    assert_eq!(
        send(&app, async_request(Some(30))).await.0,
        StatusCode::ACCEPTED
    );
    let hit = instance_hooks.next().await;
    assert_eq!(hit.answered, 200);
}

/// What an instance with a notification waiting for its retry becomes after `change`: the
/// instances, the receiver, the handle, the receipt, and the dead letters once there are some.
async fn a_waiting_notification_after(
    change: impl FnOnce(&InstanceMap),
) -> (
    InstanceMap,
    Receiver,
    tower_async_request::AsyncRequestHandle,
    Value,
    Vec<tower_async_request::store::NotificationRecord>,
) {
    let mut hooks = Receiver::start(vec![Answer::status(500)]).await;
    let instances = InstanceMap::new(element_of);
    instances.insert(acme(&hooks));
    let layer = builder(instances.clone()).build().unwrap();
    let handle = layer.handle();
    let app = app(layer, Arc::default(), None);
    let (_, _, receipt) = send(&app, async_request(Some(30))).await;
    assert_eq!(hooks.next().await.answered, 500);

    change(&instances);
    let dead = loop {
        let dead = handle.dead_letters().await.unwrap();
        if !dead.is_empty() {
            break dead;
        }
        tokio::time::sleep(MS(20)).await;
    };
    (instances, hooks, handle, receipt, dead)
}

#[tokio::test]
async fn a_removed_instance_leaves_its_pending_notification_as_a_dead_letter() {
    let (instances, mut hooks, handle, receipt, dead) = a_waiting_notification_after(|instances| {
        instances.remove(30);
    })
    .await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].event_id.get(), receipt["eventId"].as_u64().unwrap());
    assert_eq!(dead[0].instance_id, 30);
    let why = dead[0].last_error.as_deref().unwrap();
    assert!(why.contains("instance 30 was removed"), "{why}");
    let metrics = handle.instance_metrics(30).unwrap();
    assert_eq!((metrics.dead, metrics.pending), (1, 0));
    // A dead letter has no attempt scheduled: nothing more can be sent, nor was.
    assert!(hooks.hits.try_recv().is_err(), "nothing more was sent");

    // Put back, its dead letter can be redelivered.
    instances.insert(acme(&hooks));
    handle.redeliver(dead[0].notification_id).await.unwrap();
    let hit = hooks.next().await;
    assert_eq!(
        (hit.answered.as_u16(), hit.json()["instanceId"].as_u64()),
        (200, Some(30))
    );
    assert_eq!(verifies(&hit, ACME_KEY, ACME_WHSEC), (true, true));
}

/// An instance replaced by settings without a callback URL while its notification waits: the
/// notification (which named no URL of its own) becomes a dead letter saying why.
#[tokio::test]
async fn an_instance_that_loses_its_callback_url_leaves_a_dead_letter() {
    let (_, mut hooks, _, receipt, dead) = a_waiting_notification_after(|instances| {
        instances.insert(Instance::builder(30).signing_key(ACME_KEY).build().unwrap());
    })
    .await;
    assert_eq!(dead[0].event_id.get(), receipt["eventId"].as_u64().unwrap());
    let why = dead[0].last_error.as_deref().unwrap();
    assert_eq!(why, "instance 30 no longer has a callback URL");
    assert!(hooks.hits.try_recv().is_err(), "nothing more was sent");
}

#[tokio::test]
async fn status_answers_name_the_instance_and_a_token_reads_only_its_own_event() {
    let hooks = Receiver::start(vec![]).await;
    let instances = InstanceMap::new(element_of);
    instances.insert(acme(&hooks));
    instances.insert(globex(&hooks));
    let layer = builder(instances)
        .status_endpoint("/events")
        .build()
        .unwrap();
    let app = app(layer, Arc::default(), None);
    let (_, acme_headers, acme_receipt) = send(&app, async_request(Some(30))).await;
    let (_, globex_headers, globex_receipt) = send(&app, async_request(Some(31))).await;
    let location =
        |headers: &http::HeaderMap| headers[header::LOCATION].to_str().unwrap().to_owned();
    let (acme_url, globex_url) = (location(&acme_headers), location(&globex_headers));

    for (url, id) in [(&acme_url, 30), (&globex_url, 31)] {
        let status = loop {
            let get = Request::get(url.as_str()).body(Body::empty()).unwrap();
            let (_, _, status) = send(&app, get).await;
            if status["delivery"]["state"] == "delivered" {
                break status;
            }
            tokio::time::sleep(MS(10)).await;
        };
        assert_eq!(status["instanceId"], id, "{status}");
    }
    // Globex's token on Acme's event id.
    let token = globex_url.split_once("?token=").unwrap().1;
    let crossed = format!("/events/{}?token={token}", acme_receipt["eventId"]);
    let get = Request::get(crossed).body(Body::empty()).unwrap();
    let (status, _, body) = send(&app, get).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["code"], "not_found");
    assert_ne!(acme_receipt["eventId"], globex_receipt["eventId"]);
}

/// A resolver of its own (say, over a tenant database) whose `by_id` fails while `down` is set.
struct Flaky {
    map: InstanceMap,
    down: Arc<std::sync::atomic::AtomicBool>,
    by_id_calls: Arc<AtomicUsize>,
}

impl ResolveInstance for Flaky {
    fn resolve<'a>(&'a self, request: &'a http::request::Parts) -> ResolveFuture<'a> {
        Box::pin(async move { Ok(self.map.identify(request)) })
    }

    fn by_id(&self, id: u64) -> ResolveFuture<'_> {
        self.by_id_calls.fetch_add(1, Ordering::SeqCst);
        let down = self.down.load(Ordering::SeqCst);
        Box::pin(async move {
            if down {
                return Err(ResolveError::new("the tenant database is unreachable"));
            }
            Ok(self.map.get(id))
        })
    }
}

#[tokio::test]
async fn a_resolver_failing_at_delivery_time_counts_as_a_failed_attempt_and_is_retried() {
    let mut hooks = Receiver::start(vec![]).await;
    let map = InstanceMap::new(element_of);
    map.insert(acme(&hooks));
    let down = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let by_id_calls = Arc::new(AtomicUsize::new(0));
    let resolver = Flaky {
        map,
        down: down.clone(),
        by_id_calls: by_id_calls.clone(),
    };
    let layer = builder(resolver)
        .status_endpoint("/events")
        .build()
        .unwrap();
    let handle = layer.handle();
    let app = app(layer, Arc::default(), None);
    let (status, headers, _) = send(&app, async_request(Some(30))).await;
    assert_eq!(status, StatusCode::ACCEPTED);

    eventually("the first attempt", || {
        by_id_calls.load(Ordering::SeqCst) == 1
    })
    .await;
    let location = headers[header::LOCATION].to_str().unwrap().to_owned();
    let pending = loop {
        let get = Request::get(location.as_str()).body(Body::empty()).unwrap();
        let (_, _, status) = send(&app, get).await;
        if status["delivery"]["attempts"] == 1 {
            break status;
        }
        tokio::time::sleep(MS(10)).await;
    };
    assert_eq!(pending["delivery"]["state"], "pending");
    let why = pending["delivery"]["lastError"].as_str().unwrap();
    assert!(
        why.contains("the settings of instance 30 could not be read"),
        "{why}"
    );
    assert!(
        hooks.hits.try_recv().is_err(),
        "nothing sent without the instance's keys"
    );

    down.store(false, Ordering::SeqCst);
    let hit = hooks.next().await;
    assert_eq!(verifies(&hit, ACME_KEY, ACME_WHSEC), (true, true));
    eventually("delivered", || handle.metrics().delivered == 1).await;
    assert_eq!(handle.metrics().retries, 1);
}

#[tokio::test]
async fn with_credentials_an_instance_added_at_run_time_is_reachable_at_once() {
    let mut hooks = Receiver::start(vec![]).await;
    // An API key header names the instance: no table of tokens outside the map.
    let instances = InstanceMap::by_credential(|parts: &http::request::Parts| {
        parts.headers.get("x-api-key")?.to_str().ok()
    });
    let layer = builder(instances.clone()).build().unwrap();
    let app = app(layer, Arc::default(), None);
    let request = |key: &str| {
        let mut request = async_request(None);
        request
            .headers_mut()
            .insert("x-api-key", key.parse().unwrap());
        request
    };
    assert_eq!(
        send(&app, request("key-40")).await.0,
        StatusCode::UNAUTHORIZED
    );

    instances.insert(
        Instance::builder(40)
            .callback_url(hooks.url())
            .signing_key(ACME_KEY)
            .credential("key-40")
            .build()
            .unwrap(),
    );
    let (status, _, receipt) = send(&app, request("key-40")).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let hit = hooks.next().await;
    assert_eq!(hit.json()["instanceId"], 40);
    assert_eq!(hit.json()["eventId"], receipt["eventId"]);

    instances.remove(40);
    let (status, _, body) = send(&app, request("key-40")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["code"], "unknown_instance");
}
