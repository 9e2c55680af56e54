//! `PostgresStore` against a real server (`DATABASE_URL`, default the local one): nodes sharing
//! one database, the store contract, takeover, and an outage. Skipped, with one line saying so,
//! where no server answers.
#![cfg(feature = "postgres")]

mod support;
use support::pg;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use axum::{body::Body, routing::post, Router};
use bytes::Bytes;
use http::{header, Request, StatusCode};
use http_body_util::BodyExt;
use pg::Schema;
use serde_json::Value;
use support::{eventually, Answer, Receiver};
use tokio::net::{TcpListener, TcpStream};
use tower::ServiceExt;
use tower_async_request::store::{
    DeadLetterQuery, DeliveryState, DisabledReceiver, EventRecord, EventSnapshot, EventStore,
    NotificationRecord, PostgresStore, TraceContext,
};
use tower_async_request::{event::EventId, event::NotificationId, AsyncRequestLayer};

const FILE: &str = "tests/postgres.rs";
const STATUS_SECRET: &str = "a status secret every node shares";

async fn store(schema: &Schema) -> Arc<PostgresStore> {
    Arc::new(
        PostgresStore::builder(pg::url())
            .schema(schema.0.clone())
            .lease_timeout(Duration::from_secs(1))
            .connect()
            .await
            .unwrap(),
    )
}

fn app(
    store: Arc<PostgresStore>,
    receiver: &Receiver,
) -> (Router, tower_async_request::AsyncRequestHandle) {
    let layer = AsyncRequestLayer::builder()
        .instance_id(30)
        .default_callback_url(receiver.url())
        .status_endpoint("/events")
        .status_secret(STATUS_SECRET)
        .retry_schedule([Duration::from_millis(100)])
        .store(store)
        .build()
        .unwrap();
    let handle = layer.handle();
    let router = Router::new()
        .route(
            "/work",
            post(|body: String| async move { format!("done {body}") }),
        )
        .layer(layer);
    (router, handle)
}

fn async_request() -> Request<Body> {
    Request::post("/work")
        .header("Elements-Async-Request", "true")
        .body(Body::from("job"))
        .unwrap()
}

async fn send(app: &Router, request: Request<Body>) -> (StatusCode, http::HeaderMap, Value) {
    let response = app.clone().oneshot(request).await.unwrap();
    let (parts, body) = response.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    (
        parts.status,
        parts.headers,
        serde_json::from_slice(&body).unwrap_or(Value::Null),
    )
}

/// An accepted event of instance 30, delivered to `target`.
fn event(event_id: EventId, notification_id: NotificationId, target: &str) -> EventRecord {
    EventRecord {
        event_id,
        notification_id,
        instance_id: 30,
        target: target.to_owned(),
        instance_url: false,
        accepted_at_ms: 1,
        running: false,
        progress: None,
        trace: None,
    }
}

/// Its notification, pending, with `body`.
fn pending(event: &EventRecord, body: impl Into<Bytes>) -> NotificationRecord {
    NotificationRecord {
        event_id: event.event_id,
        notification_id: event.notification_id,
        instance_id: event.instance_id,
        target: event.target.clone(),
        instance_url: event.instance_url,
        body: body.into(),
        accepted_at_ms: event.accepted_at_ms,
        attempts: 0,
        history: Vec::new(),
        next_attempt_at_ms: 0,
        last_error: None,
        state: DeliveryState::Pending,
        retain_until_ms: 0,
        progress: None,
        trace: event.trace.clone(),
    }
}

/// A trace as the W3C propagator writes it.
fn trace_context() -> TraceContext {
    TraceContext {
        fields: vec![
            (
                "traceparent".into(),
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into(),
            ),
            ("tracestate".into(), "congo=t61rcWkgMzE".into()),
        ],
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn status_dead_letters_redelivery_and_ids_work_from_any_node() {
    if !pg::available(FILE).await {
        return;
    }
    let schema = Schema::new();
    // The first callback is refused for good: a dead letter at once.
    let mut receiver = Receiver::start(vec![Answer::status(410)]).await;
    let (node_a, handle_a) = app(store(&schema).await, &receiver);
    let (node_b, handle_b) = app(store(&schema).await, &receiver);

    let (status, headers, receipt) = send(&node_a, async_request()).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let location = headers[header::LOCATION].to_str().unwrap().to_owned();
    assert_eq!(receiver.next().await.answered, 410);

    // Node B sees node A's dead letter and its status...
    let dead = loop {
        let dead = handle_b.dead_letters().await.unwrap();
        if !dead.is_empty() {
            break dead;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].event_id.get(), receipt["eventId"].as_u64().unwrap());
    let get = || Request::get(location.as_str()).body(Body::empty()).unwrap();
    let (status, _, on_b) = send(&node_b, get()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(on_b["eventId"], receipt["eventId"]);
    assert_eq!(on_b["instanceId"], 30);
    assert_eq!(on_b["delivery"]["state"], "dead");

    // ...and redelivers it: same notification, now delivered, as node A sees too.
    handle_b.redeliver(dead[0].notification_id).await.unwrap();
    let hit = receiver.next().await;
    assert_eq!(hit.answered, 200);
    assert_eq!(hit.json()["notificationId"], dead[0].notification_id.get());
    eventually("delivered", || handle_b.metrics().delivered == 1).await;
    let delivered = loop {
        let (_, _, on_a) = send(&node_a, get()).await;
        if on_a["delivery"]["state"] == "delivered" {
            break on_a;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(delivered["response"], "done job");
    assert!(handle_a.dead_letters().await.unwrap().is_empty());

    // Ids from both nodes never collide.
    let mut ids = HashSet::new();
    for _ in 0..50 {
        for node in [&node_a, &node_b] {
            let (status, _, receipt) = send(node, async_request()).await;
            assert_eq!(status, StatusCode::ACCEPTED);
            let id = receipt["eventId"].as_u64().unwrap();
            assert!(id <= tower_async_request::event::MAX_SAFE_ID);
            assert!(ids.insert(id), "id {id} handed out twice");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn only_the_accepted_event_and_its_outcome_wait_for_the_wal_flush() {
    if !pg::available(FILE).await {
        return;
    }
    let schema = Schema::new();
    // What the store tells PostgreSQL is read on the wire, not from the store's own counters.
    let wire = Proxy::start_for_test_server().await;
    let store = Arc::new(
        PostgresStore::builder(wire.url())
            .schema(schema.0.clone())
            .lease_timeout(Duration::from_secs(1))
            .connect()
            .await
            .unwrap(),
    );
    let (event_id, notification_id) = store.allocate_ids().await.unwrap();
    let event = EventRecord {
        instance_url: true,
        ..event(event_id, notification_id, "https://hooks.example.com/in")
    };
    let before = store.stats();
    let sent = wire.transactions();
    // Each write below is its own transaction (one at a time): (waited for, not waited for).
    let step = |expected: (usize, usize), what: &str| {
        let now = wire.transactions();
        assert_eq!((now.0 - sent.0, now.1 - sent.1), expected, "{what}");
    };
    store.dispatched(&event).await.unwrap();
    step((1, 0), "the accepted event waits for the WAL flush");
    store.running(event_id).await.unwrap();
    step((1, 0), "running is not written at all");
    let mut notification = NotificationRecord {
        retain_until_ms: u64::MAX,
        ..pending(&event, &b"{\"eventId\":1,\"bytes\":\"\xff\"}"[..])
    };
    store.finished(&notification).await.unwrap();
    step((2, 0), "the outcome waits for the WAL flush");
    // Written again (its first answer was lost with a broken connection, say): still fine.
    store.finished(&notification).await.unwrap();
    step((3, 0), "the outcome written again waits too");
    let durable = store.stats();
    assert_eq!(durable.durable_commits - before.durable_commits, 3);
    notification.attempts = 1;
    notification.last_error = Some("the receiver answered 503".into());
    store.attempted(&notification).await.unwrap();
    store.dead(&notification).await.unwrap();
    step((3, 2), "an attempt and a dead letter do not wait");
    let after = store.stats();
    assert_eq!(
        after.durable_commits, durable.durable_commits,
        "not waited for"
    );
    assert_eq!(after.transactions, durable.transactions + 2);
    // Read back at once, exactly as written.
    let dead = store.dead_letters(DeadLetterQuery::all()).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].body, notification.body);
    assert_eq!(dead[0].instance_id, 30);
    assert!(dead[0].instance_url);
    assert_eq!(
        dead[0].last_error.as_deref(),
        Some("the receiver answered 503")
    );
    let revived = store.revive(notification_id).await.unwrap().unwrap();
    assert_eq!(
        (revived.state, revived.attempts),
        (DeliveryState::Pending, 0)
    );
    assert_eq!(store.stats().durable_commits, after.durable_commits + 1);
    step((4, 2), "a revived dead letter waits for the WAL flush");
    assert!(store.revive(notification_id).await.unwrap().is_none());
    let unknown = EventId::new(event_id.get() + 1_000_000);
    assert!(store.status(unknown).await.unwrap().is_none());
}

/// Ids come from the sequence 1024 at a time (512 receipts, an event and a notification id
/// each): 1100 receipts ask PostgreSQL three times. Concurrent accepted events share their
/// transactions (group commit).
#[tokio::test(flavor = "multi_thread")]
async fn ids_come_in_blocks_and_concurrent_writes_share_a_commit() {
    if !pg::available(FILE).await {
        return;
    }
    let schema = Schema::new();
    let wire = Proxy::start_for_test_server().await;
    let store = wire.store(&schema).await;
    let sequence = format!("nextval('\"{}\".ids')", schema.0);
    let asked = wire.statements(&sequence);
    let mut ids = HashSet::new();
    let mut events = Vec::new();
    for _ in 0..1100 {
        let (event_id, notification_id) = store.allocate_ids().await.unwrap();
        assert!(ids.insert(event_id.get()) && ids.insert(notification_id.get()));
        events.push(event(
            event_id,
            notification_id,
            "https://hooks.example.com/in",
        ));
    }
    assert_eq!(
        wire.statements(&sequence) - asked,
        3,
        "one round trip per 512"
    );

    let (durable, _) = wire.transactions();
    let writes = events.into_iter().take(400).map(|accepted| {
        let store = store.clone();
        async move { store.dispatched(&accepted).await.unwrap() }
    });
    futures_join(writes.collect()).await;
    let shared = wire.transactions().0 - durable;
    assert!(
        shared <= 100,
        "400 accepted events in {shared} transactions"
    );
}

/// The rule of `support/pg.rs`, run on this very test binary: with `CI` or `DATABASE_URL` set, a
/// server that cannot be reached (here: a database that does not exist) fails the test with the
/// server's words; with neither, the test passes after one line saying it was skipped.
#[test]
fn without_a_server_these_tests_fail_under_ci_and_skip_on_a_laptop() {
    let run = |env: &[(&str, &str)]| {
        let mut command = std::process::Command::new(std::env::current_exe().unwrap());
        command
            .args([
                "--exact",
                "an_outcome_from_a_node_whose_event_was_taken_over_is_refused",
            ])
            .env_remove("CI")
            .env_remove("DATABASE_URL")
            .env_remove("TAR_TEST_DEFAULT_DATABASE_URL");
        for (name, value) in env {
            command.env(name, value);
        }
        let output = command.output().unwrap();
        let said = String::from_utf8_lossy(&output.stdout).into_owned()
            + &String::from_utf8_lossy(&output.stderr);
        (output.status.success(), said)
    };
    let config: tokio_postgres::Config = pg::url().parse().unwrap();
    let user = config.get_user().unwrap_or("postgres");
    let missing = format!("postgres://{user}@127.0.0.1:5432/tar_no_such_database");
    let closed = "postgres://postgres@127.0.0.1:1/test";

    let (passed, said) = run(&[("DATABASE_URL", &missing)]);
    assert!(!passed, "{said}");
    assert!(
        said.contains("needs PostgreSQL at") && said.contains("tar_no_such_database"),
        "{said}"
    );
    let (passed, said) = run(&[("CI", "true"), ("TAR_TEST_DEFAULT_DATABASE_URL", closed)]);
    assert!(!passed && said.contains("needs PostgreSQL at"), "{said}");
    let (passed, said) = run(&[("TAR_TEST_DEFAULT_DATABASE_URL", closed)]);
    assert!(passed, "{said}");
    assert_eq!(
        said.matches("skipped tests/postgres.rs: no PostgreSQL")
            .count(),
        1,
        "{said}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn nodes_starting_together_create_the_schema_once() {
    if !pg::available(FILE).await {
        return;
    }
    let schema = Schema::new();
    let stores = futures_join(
        (0..4)
            .map(|_| {
                PostgresStore::builder(pg::url())
                    .schema(schema.0.clone())
                    .connect()
            })
            .collect(),
    )
    .await;
    let ids: HashSet<u64> = stores
        .iter()
        .map(|s| s.as_ref().unwrap().node_id())
        .collect();
    assert_eq!(ids.len(), 4, "each node has its own id");
    let (client, connection) = tokio_postgres::connect(&pg::url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    let versions: i64 = client
        .query_one(
            &format!("SELECT count(*) FROM \"{}\".migrations", schema.0),
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(versions, 6, "each version applied once");
    assert!(PostgresStore::builder(pg::url())
        .schema("Not-Valid")
        .connect()
        .await
        .is_err());
}

/// `schema` as version `version` of the store left it (its migrations applied by hand), with one
/// dead letter in it (event 5, notification 6, 8 attempts); a client and the quoted name.
/// The newest version `quoted`'s migrations applied.
async fn schema_version(client: &tokio_postgres::Client, quoted: &str) -> i32 {
    client
        .query_one(
            &format!("SELECT max(version) FROM {quoted}.migrations"),
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

async fn schema_at_version(schema: &Schema, version: usize) -> (tokio_postgres::Client, String) {
    const VERSIONS: [&str; 5] = [
        include_str!("../src/store/postgres/schema_v1.sql"),
        include_str!("../src/store/postgres/schema_v2.sql"),
        include_str!("../src/store/postgres/schema_v3.sql"),
        include_str!("../src/store/postgres/schema_v4.sql"),
        include_str!("../src/store/postgres/schema_v5.sql"),
    ];
    let (client, connection) = tokio_postgres::connect(&pg::url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    let quoted = format!("\"{}\"", schema.0);
    let mut sql = format!(
        "CREATE SCHEMA {quoted};
         CREATE TABLE {quoted}.migrations (version integer PRIMARY KEY,
             applied_at timestamptz NOT NULL DEFAULT now());"
    );
    for (index, migration) in VERSIONS[..version].iter().enumerate() {
        sql += &migration.replace("{schema}", &quoted);
        sql += &format!(
            "INSERT INTO {quoted}.migrations (version) VALUES ({});",
            index + 1
        );
    }
    sql += &format!(
        "INSERT INTO {quoted}.events (event_id, notification_id, instance_id, target,
             instance_url, accepted_at_ms, owner, state, body, attempts, last_error)
         VALUES (5, 6, 30, 'https://hooks.example.com/in', true, 7, 1, 3, '{{}}', 8, 'gone');"
    );
    client.batch_execute(&sql).await.unwrap();
    (client, quoted)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_version_1_schema_is_migrated_with_its_dead_letters_readable() {
    if !pg::available(FILE).await {
        return;
    };
    let schema = Schema::new();
    // The schema as version 1 left it, with a dead letter in it.
    let (client, quoted) = schema_at_version(&schema, 1).await;
    let store = PostgresStore::builder(pg::url())
        .schema(schema.0.clone())
        .connect()
        .await
        .unwrap();
    let dead = store.dead_letters(DeadLetterQuery::all()).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(
        (
            dead[0].notification_id.get(),
            dead[0].attempts,
            dead[0].accepted_at_ms
        ),
        (6, 8, 7)
    );
    assert!(dead[0].history.is_empty(), "no history before version 2");
    let versions: i64 = client
        .query_one(
            &format!("SELECT max(version) FROM {quoted}.migrations"),
            &[],
        )
        .await
        .unwrap()
        .get::<_, i32>(0)
        .into();
    assert_eq!(versions, 6);
}

/// Runs the futures concurrently, in order of their answers' positions.
async fn futures_join<F: std::future::Future + Send + 'static>(futures: Vec<F>) -> Vec<F::Output>
where
    F::Output: Send + 'static,
{
    let tasks: Vec<_> = futures.into_iter().map(tokio::spawn).collect();
    let mut out = Vec::new();
    for task in tasks {
        out.push(task.await.unwrap());
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn the_work_of_a_silent_node_is_finished_by_another() {
    if !pg::available(FILE).await {
        return;
    }
    let schema = Schema::new();
    let mut receiver = Receiver::start(vec![]).await;
    // Node A accepts an event and finishes another, then goes silent (its store is dropped:
    // no more heartbeats) with neither delivered.
    let (running, pending) = {
        let a = store(&schema).await;
        let (e1, n1) = a.allocate_ids().await.unwrap();
        let (e2, n2) = a.allocate_ids().await.unwrap();
        let (first, second) = (
            event(e1, n1, &receiver.url()),
            event(e2, n2, &receiver.url()),
        );
        a.dispatched(&first).await.unwrap();
        a.dispatched(&second).await.unwrap();
        let body = format!(
            r#"{{"eventId":{e2},"instanceId":30,"eventStatus":"completed","statusCode":200,"response":"done","notificationId":{n2}}}"#
        );
        a.finished(&pending(&second, body)).await.unwrap();
        (e1, e2)
    };
    let (_node_b, handle_b) = app(store(&schema).await, &receiver);
    // Node B's layer looks for orphans every third of the lease (1 s).
    handle_b.dead_letters().await.unwrap(); // starts B's recovery
    let mut seen = std::collections::HashMap::new();
    while seen.len() < 2 {
        let hit = receiver.next().await;
        let json = hit.json();
        seen.insert(json["eventId"].as_u64().unwrap(), json);
    }
    assert_eq!(seen[&running.get()]["eventStatus"], "failed");
    assert_eq!(seen[&running.get()]["error"]["code"], "interrupted");
    assert_eq!(seen[&pending.get()]["eventStatus"], "completed");
    assert_eq!(seen[&pending.get()]["response"], "done");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_that_leaves_hands_its_work_over_at_once() {
    if !pg::available(FILE).await {
        return;
    }
    let schema = Schema::new();
    let mut receiver = Receiver::start(vec![]).await;
    // Peers look every third of the lease, 200 s here, and the receiver waits at most 20 s for
    // the callback: only the NOTIFY can bring it in time.
    let long_lease = |schema: &Schema| {
        PostgresStore::builder(pg::url())
            .schema(schema.0.clone())
            .lease_timeout(Duration::from_secs(600))
            .connect()
    };
    let b = Arc::new(long_lease(&schema).await.unwrap());
    let (_node_b, handle_b) = app(b, &receiver);
    // A handle call that waits for B's start-up recovery (which would take A's work too, were A
    // already gone) and leaves B's takeover loop waiting for its next look.
    let none = handle_b.redeliver_dead_letters(None, 1).await.unwrap();
    assert!(none.notification_ids.is_empty());
    let pending = {
        let a = long_lease(&schema).await.unwrap();
        let (event_id, notification_id) = a.allocate_ids().await.unwrap();
        a.dispatched(&event(event_id, notification_id, &receiver.url()))
            .await
            .unwrap();
        a.leave().await.unwrap(); // NOTIFY: B need not wait for its next look
        event_id
    };
    let hit = receiver.next().await;
    assert_eq!(hit.json()["eventId"], pending.get());
    assert_eq!(hit.json()["error"]["code"], "interrupted");
}

/// A TCP proxy in front of the server that can be cut (every connection closed, new ones
/// refused) and restored, to play an outage without stopping the shared server. It keeps what
/// each connection sent to the server, so a test can read what PostgreSQL was told.
struct Proxy {
    port: u16,
    up: Arc<tokio::sync::watch::Sender<bool>>,
    sent: Arc<std::sync::Mutex<Vec<Sent>>>,
}

/// What one connection sent to the server.
type Sent = Arc<std::sync::Mutex<Vec<u8>>>;

impl Proxy {
    async fn start(target: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (up, _) = tokio::sync::watch::channel(true);
        let up = Arc::new(up);
        let sent = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (target, watch, all_sent) = (target.to_owned(), up.clone(), sent.clone());
        tokio::spawn(async move {
            loop {
                let (inbound, _) = listener.accept().await.unwrap();
                let mut state = watch.subscribe();
                if !*state.borrow() {
                    continue; // dropped: refused
                }
                let target = target.clone();
                let this_sent = Arc::new(std::sync::Mutex::new(Vec::new()));
                all_sent.lock().unwrap().push(this_sent.clone());
                tokio::spawn(async move {
                    let Ok(outbound) = TcpStream::connect(&target).await else {
                        return;
                    };
                    // As the store's own connections are: each message at once.
                    let _ = (inbound.set_nodelay(true), outbound.set_nodelay(true));
                    let (mut from_client, mut to_client) = inbound.into_split();
                    let (mut from_server, mut to_server) = outbound.into_split();
                    let upstream = async {
                        use tokio::io::{AsyncReadExt, AsyncWriteExt};
                        let mut chunk = vec![0; 16 * 1024];
                        loop {
                            let read = from_client.read(&mut chunk).await?;
                            if read == 0 {
                                return to_server.shutdown().await;
                            }
                            this_sent.lock().unwrap().extend_from_slice(&chunk[..read]);
                            to_server.write_all(&chunk[..read]).await?;
                        }
                    };
                    tokio::select! {
                        _ = async { tokio::join!(upstream, tokio::io::copy(&mut from_server, &mut to_client)) } => {}
                        _ = state.wait_for(|up| !*up) => {}
                    }
                });
            }
        });
        Self { port, up, sent }
    }

    fn set(&self, up: bool) {
        self.up.send_replace(up);
    }

    /// How many of the store's write transactions were sent so far: those that wait for the
    /// WAL flush, and those that do not (`SET LOCAL synchronous_commit = off`), read from the
    /// bytes on the wire.
    fn transactions(&self) -> (usize, usize) {
        const BEGIN: &str = "BEGIN; SET LOCAL enable_seqscan = off";
        const NO_WAIT: &str =
            "BEGIN; SET LOCAL enable_seqscan = off; SET LOCAL synchronous_commit = off";
        let (mut all, mut no_wait) = (0, 0);
        for connection in self.sent.lock().unwrap().iter() {
            let text = String::from_utf8_lossy(&connection.lock().unwrap()).into_owned();
            all += text.matches(BEGIN).count();
            no_wait += text.matches(NO_WAIT).count();
        }
        (all - no_wait, no_wait)
    }

    /// How many times `text` was sent to the server (a statement's text is sent each time it is
    /// prepared, which `execute` with a string does on every call).
    fn statements(&self, text: &str) -> usize {
        let sent = self.sent.lock().unwrap();
        sent.iter()
            .map(|connection| {
                String::from_utf8_lossy(&connection.lock().unwrap())
                    .matches(text)
                    .count()
            })
            .sum()
    }

    /// A proxy in front of the server `pg::url()` names.
    async fn start_for_test_server() -> Self {
        let config: tokio_postgres::Config = pg::url().parse().unwrap();
        let host = match &config.get_hosts()[0] {
            tokio_postgres::config::Host::Tcp(host) => host.clone(),
            #[cfg(unix)]
            _ => "127.0.0.1".to_owned(),
        };
        Self::start(&format!(
            "{host}:{}",
            config.get_ports().first().unwrap_or(&5432)
        ))
        .await
    }

    /// A store on `schema` of the test server's database, reached through this proxy.
    async fn store(&self, schema: &Schema) -> Arc<PostgresStore> {
        let store = PostgresStore::builder(self.url())
            .schema(schema.0.clone())
            .connect()
            .await
            .unwrap();
        Arc::new(store)
    }

    /// The test server's database, reached through this proxy.
    fn url(&self) -> String {
        let config: tokio_postgres::Config = pg::url().parse().unwrap();
        let user = config.get_user().unwrap_or("postgres");
        let dbname = config.get_dbname().unwrap_or("postgres");
        format!("postgres://{user}@127.0.0.1:{}/{dbname}", self.port)
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_outage_refuses_new_requests_with_503_and_loses_nothing_accepted() {
    if !pg::available(FILE).await {
        return;
    }
    let schema = Schema::new();
    let proxy = Proxy::start_for_test_server().await;
    let store = proxy.store(&schema).await;
    let mut receiver = Receiver::start(vec![]).await;
    let (node, handle) = app(store, &receiver);

    let mut accepted = HashSet::new();
    for _ in 0..5 {
        let (status, _, receipt) = send(&node, async_request()).await;
        assert_eq!(status, StatusCode::ACCEPTED);
        accepted.insert(receipt["eventId"].as_u64().unwrap());
    }
    proxy.set(false);
    let mut refused = 0;
    for _ in 0..5 {
        let (status, _, body) = send(&node, async_request()).await;
        match status {
            StatusCode::SERVICE_UNAVAILABLE => {
                assert_eq!(body["code"], "store_unavailable");
                refused += 1;
            }
            StatusCode::ACCEPTED => {
                accepted.insert(body["eventId"].as_u64().unwrap());
            }
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert!(
        refused >= 4,
        "the server is out of reach: {refused} refused"
    );
    proxy.set(true);
    // Back by itself: the pool reconnects.
    let back = loop {
        let (status, _, body) = send(&node, async_request()).await;
        if status == StatusCode::ACCEPTED {
            break body["eventId"].as_u64().unwrap();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    accepted.insert(back);
    let mut delivered = HashSet::new();
    while !accepted.is_subset(&delivered) {
        let Ok(Some(hit)) =
            tokio::time::timeout(Duration::from_secs(20), receiver.hits.recv()).await
        else {
            panic!(
                "not delivered: {:?} of {accepted:?}; {:?}",
                accepted.difference(&delivered).collect::<Vec<_>>(),
                handle.metrics()
            );
        };
        delivered.insert(hit.json()["eventId"].as_u64().unwrap());
    }
    eventually("counted", || {
        handle.metrics().delivered >= accepted.len() as u64
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn finished_events_are_deleted_past_their_retention_in_batches() {
    if !pg::available(FILE).await {
        return;
    }
    let schema = Schema::new();
    // Through a proxy that keeps what is sent, to count the DELETE statements.
    let wire = Proxy::start_for_test_server().await;
    let store = wire.store(&schema).await;
    // Written concurrently, so the store groups them into a few transactions.
    let writes = (0..2500u64).map(|i| {
        let store = store.clone();
        async move {
            let (event_id, notification_id) = store.allocate_ids().await.unwrap();
            let accepted = event(event_id, notification_id, "https://hooks.example.com/in");
            store.dispatched(&accepted).await.unwrap();
            let kept = i % 10 == 0; // one in ten is still within its retention
            let record = NotificationRecord {
                retain_until_ms: if kept { u64::MAX } else { 1 },
                ..pending(&accepted, &b"{}"[..])
            };
            store.finished(&record).await.unwrap();
            (!kept).then_some(event_id)
        }
    });
    let expired: Vec<EventId> = futures_join(writes.collect())
        .await
        .into_iter()
        .flatten()
        .collect();
    // Status answers stop at once; the rows go in batches.
    assert!(
        store.status(expired[0]).await.unwrap().is_some(),
        "pending, not expired"
    );
    assert_eq!(
        store.delete_expired().await.unwrap(),
        0,
        "pending ones are kept"
    );
    let (client, connection) = tokio_postgres::connect(&pg::url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    client
        .batch_execute(&format!(
            "UPDATE \"{}\".events SET state = 2 WHERE state = 1",
            schema.0
        ))
        .await
        .unwrap();
    assert!(
        store.status(expired[0]).await.unwrap().is_none(),
        "past its retention"
    );
    let events = format!("DELETE FROM \"{}\".events", schema.0);
    let deletes = wire.statements(&events);
    assert_eq!(store.delete_expired().await.unwrap(), 2250);
    assert_eq!(
        wire.statements(&events) - deletes,
        3,
        "1000, 1000 and 250 rows, one statement each"
    );
    let left: i64 = client
        .query_one(
            &format!("SELECT count(*) FROM \"{}\".events", schema.0),
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 250);
}

/// Nobody calls `delete_expired`: the node's own sweep, once a minute, deletes what is past its
/// retention. (The one test here that waits for a clock: the sweep's period is the promise.)
#[tokio::test(flavor = "multi_thread")]
async fn every_node_sweeps_expired_events_once_a_minute() {
    if !pg::available(FILE).await {
        return;
    }
    let schema = Schema::new();
    let store = store(&schema).await;
    for _ in 0..3 {
        let (event_id, notification_id) = store.allocate_ids().await.unwrap();
        let accepted = event(event_id, notification_id, "https://hooks.example.com/in");
        store.dispatched(&accepted).await.unwrap();
        let record = NotificationRecord {
            retain_until_ms: 1,
            state: DeliveryState::Delivered,
            ..pending(&accepted, &b"{}"[..])
        };
        store.finished(&record).await.unwrap();
    }
    let (client, connection) = tokio_postgres::connect(&pg::url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    let count = format!("SELECT count(*) FROM \"{}\".events", schema.0);
    let rows = |row: tokio_postgres::Row| row.get::<_, i64>(0);
    assert_eq!(rows(client.query_one(&count, &[]).await.unwrap()), 3);
    let started = std::time::Instant::now();
    while rows(client.query_one(&count, &[]).await.unwrap()) > 0 {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "not swept within two minutes"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(
        started.elapsed() >= Duration::from_secs(50),
        "swept after {:?}: at start-up rather than once a minute?",
        started.elapsed()
    );
    drop(store);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_outcome_from_a_node_whose_event_was_taken_over_is_refused() {
    if !pg::available(FILE).await {
        return;
    }
    let schema = Schema::new();
    let (a, b) = (store(&schema).await, store(&schema).await);
    let (event_id, notification_id) = a.allocate_ids().await.unwrap();
    let accepted = event(event_id, notification_id, "https://hooks.example.com/in");
    a.dispatched(&accepted).await.unwrap();
    a.leave().await.unwrap(); // as if silent past its lease
    let taken = b.take_over().unwrap().await.unwrap();
    assert_eq!(taken.unfinished.len(), 1);
    assert_eq!(taken.unfinished[0].event_id, event_id);
    let error = a
        .finished(&pending(&accepted, &b"{}"[..]))
        .await
        .unwrap_err();
    assert!(error.is_superseded(), "{error}");
}

/// Fifty copies of one request with one `Idempotency-Key`, sent at once over connections of
/// their own and split over two nodes: one event, one job, one notification; every answer is
/// its receipt or `409 idempotency_key_in_use`.
#[tokio::test(flavor = "multi_thread")]
async fn fifty_copies_of_a_keyed_request_split_over_two_nodes_make_one_event() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    if !pg::available(FILE).await {
        return;
    }
    let schema = Schema::new();
    let mut receiver = Receiver::start(vec![]).await;
    let calls = Arc::new(AtomicUsize::new(0));
    let mut nodes = Vec::new();
    for _ in 0..2 {
        let layer = AsyncRequestLayer::builder()
            .instance_id(30)
            .default_callback_url(receiver.url())
            .store(store(&schema).await)
            .build()
            .unwrap();
        let handle = layer.handle();
        let counted = calls.clone();
        let router = Router::new()
            .route(
                "/work",
                post(move |body: String| {
                    counted.fetch_add(1, Ordering::SeqCst);
                    async move { format!("done {body}") }
                }),
            )
            .layer(layer);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
        nodes.push((addr, handle));
    }
    let copies: Vec<_> = (0..50)
        .map(|i| {
            let addr = nodes[i % 2].0;
            tokio::spawn(async move {
                let client = hyper_util::client::legacy::Client::builder(
                    hyper_util::rt::TokioExecutor::new(),
                )
                .build_http::<http_body_util::Full<Bytes>>();
                let request = Request::post(format!("http://{addr}/work"))
                    .header("Elements-Async-Request", "true")
                    .header("Idempotency-Key", "\"copy-folder-7\"")
                    .body(http_body_util::Full::from("folder 7"))
                    .unwrap();
                let response = client.request(request).await.unwrap();
                let status = response.status();
                let body = response.into_body().collect().await.unwrap().to_bytes();
                (status, serde_json::from_slice::<Value>(&body).unwrap())
            })
        })
        .collect();
    let (mut ids, mut in_use) = (HashSet::new(), 0);
    for copy in copies {
        match copy.await.unwrap() {
            (StatusCode::ACCEPTED, receipt) => {
                ids.insert(receipt["eventId"].as_u64().unwrap());
            }
            (StatusCode::CONFLICT, refusal) => {
                assert_eq!(refusal["code"], "idempotency_key_in_use");
                in_use += 1;
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(ids.len(), 1, "one event: {ids:?}");
    let accepted: u64 = nodes.iter().map(|(_, h)| h.metrics().accepted).sum();
    let replays: u64 = nodes
        .iter()
        .map(|(_, h)| h.metrics().idempotent_replays)
        .sum();
    assert_eq!(accepted, 1);
    assert_eq!(replays + in_use + 1, 50);
    let hit = receiver.next().await;
    assert_eq!(hit.json()["eventId"].as_u64(), ids.into_iter().next());
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

/// A version 2 schema with an event in it is migrated to the newest version (3: idempotency keys;
/// 4: progress; 5: disabled receivers; 6: traces): the event is still there, and a keyed request is claimed
/// and replayed.
#[tokio::test(flavor = "multi_thread")]
async fn a_version_2_schema_with_events_is_migrated_to_keep_idempotency_keys() {
    if !pg::available(FILE).await {
        return;
    }
    let schema = Schema::new();
    let (client, quoted) = schema_at_version(&schema, 2).await;
    let store = store(&schema).await;
    let dead = store.dead_letters(DeadLetterQuery::all()).await.unwrap();
    assert_eq!(dead.len(), 1, "the version 2 data is there");
    let version = schema_version(&client, &quoted).await;
    assert_eq!(version, 6);

    let receiver = Receiver::start(vec![]).await;
    let (app, handle) = app(store, &receiver);
    let keyed = || {
        Request::post("/work")
            .header("Elements-Async-Request", "true")
            .header("Idempotency-Key", "migrated")
            .body(Body::from("x"))
            .unwrap()
    };
    let (status, headers, first) = send(&app, keyed()).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{first}");
    assert!(!headers.contains_key("idempotent-replayed"));
    let (status, headers, again) = send(&app, keyed()).await;
    assert_eq!(
        (status, &again["eventId"]),
        (StatusCode::ACCEPTED, &first["eventId"])
    );
    assert_eq!(headers["idempotent-replayed"], "true");
    assert_eq!(handle.metrics().accepted, 1);

    // Kept for the default retention, 24 hours from the request.
    let expires: i64 = client
        .query_one(
            &format!("SELECT expires_at_ms FROM {quoted}.idempotency_keys"),
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let day = 24 * 60 * 60 * 1000;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    assert!(
        (now + day - 60_000..=now + day).contains(&expires),
        "expires {} ms from now",
        expires - now
    );
}

/// Expired keys are swept with the retention; one that expired is free for new work at once.
#[tokio::test(flavor = "multi_thread")]
async fn expired_idempotency_keys_are_swept_and_free_again() {
    use tower_async_request::store::{IdempotencyKey, KeyClaim, KeyScope};
    if !pg::available(FILE).await {
        return;
    }
    let schema = Schema::new();
    let store = store(&schema).await;
    let key = |name: &str, expires_at_ms: u64| IdempotencyKey {
        scope: KeyScope {
            instance_id: 30,
            method: "POST".into(),
            path: "/work".into(),
            key: name.into(),
        },
        fingerprint: [7; 32],
        expires_at_ms,
    };
    let claim = |name: &'static str, expires: u64| {
        let store = store.clone();
        let key = key(name, expires);
        async move {
            let (event_id, notification_id) = store.allocate_ids().await.unwrap();
            let accepted = event(event_id, notification_id, "https://hooks.example.com/in");
            let claim = store.dispatched_with_key(&accepted, &key).await.unwrap();
            (event_id, claim)
        }
    };
    let (held, claimed) = claim("held", u64::MAX).await;
    assert_eq!(claimed, KeyClaim::Claimed);
    assert_eq!(
        claim("held", u64::MAX).await.1,
        KeyClaim::Held {
            event_id: held,
            fingerprint: [7; 32]
        }
    );
    assert_eq!(claim("expired", 1).await.1, KeyClaim::Claimed);
    assert_eq!(
        claim("expired", 1).await.1,
        KeyClaim::Claimed,
        "expired: free"
    );
    let (client, connection) = tokio_postgres::connect(&pg::url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    let keys = format!("SELECT count(*) FROM \"{}\".idempotency_keys", schema.0);
    let count = |row: tokio_postgres::Row| row.get::<_, i64>(0);
    assert_eq!(count(client.query_one(&keys, &[]).await.unwrap()), 2);
    store.delete_expired().await.unwrap();
    assert_eq!(
        count(client.query_one(&keys, &[]).await.unwrap()),
        1,
        "the expired key is swept, the held one kept"
    );
}

/// A receiver disabled for test `tag`: ids `a…`/`b…` sort before `c…`.
fn disabled(id: &str, tag: u64) -> DisabledReceiver {
    DisabledReceiver {
        id: id.into(),
        instance_id: 30 + tag,
        origin: format!("https://{id}.example.com:{}", 8000 + tag),
        failing_since_ms: 100 + tag,
        disabled_at_ms: 200 + tag,
    }
}

/// A disabling is an upsert, an enabling a delete that says whether there was a row; the list is
/// by id, every field kept; and another node on the same schema sees both at once.
#[tokio::test(flavor = "multi_thread")]
async fn disabled_receivers_are_replaced_enabled_and_shared_by_every_node() {
    if !pg::available(FILE).await {
        return;
    }
    let schema = Schema::new();
    let (node_a, node_b) = (store(&schema).await, store(&schema).await);
    // Past i64::MAX: kept bit for bit all the same.
    let big = DisabledReceiver {
        failing_since_ms: u64::MAX,
        ..disabled("a1", 2)
    };
    let before = node_a.stats().durable_commits;
    node_a.disable_receiver(&disabled("c3", 1)).await.unwrap();
    node_a.disable_receiver(&big).await.unwrap();
    assert_eq!(node_a.stats().durable_commits, before + 2, "synchronous");
    assert_eq!(
        node_a.disabled_receivers().await.unwrap(),
        [big.clone(), disabled("c3", 1)],
        "by id, every field kept"
    );
    node_a.disable_receiver(&disabled("c3", 3)).await.unwrap();
    let both = [big.clone(), disabled("c3", 3)];
    assert_eq!(node_a.disabled_receivers().await.unwrap(), both, "replaced");
    assert_eq!(
        node_b.disabled_receivers().await.unwrap(),
        both,
        "node B sees it"
    );
    assert!(node_b.enable_receiver("a1").await.unwrap());
    assert!(
        !node_b.enable_receiver("a1").await.unwrap(),
        "enabled already"
    );
    assert!(
        !node_a.enable_receiver("a1").await.unwrap(),
        "on node A too"
    );
    assert_eq!(
        node_a.disabled_receivers().await.unwrap(),
        [disabled("c3", 3)]
    );
    assert_eq!(
        node_b.disabled_receivers().await.unwrap(),
        [disabled("c3", 3)]
    );
}

/// A version 4 schema is migrated: it gains the disabled receivers' table (version 5), and its
/// events are still there.
#[tokio::test(flavor = "multi_thread")]
async fn a_version_4_schema_is_migrated_to_keep_disabled_receivers() {
    if !pg::available(FILE).await {
        return;
    }
    let schema = Schema::new();
    let (client, quoted) = schema_at_version(&schema, 4).await;
    let table = format!("SELECT to_regclass('{quoted}.disabled_receivers') IS NOT NULL");
    let exists = |row: tokio_postgres::Row| row.get::<_, bool>(0);
    assert!(
        !exists(client.query_one(&table, &[]).await.unwrap()),
        "version 4 has none"
    );
    let store = store(&schema).await;
    assert!(exists(client.query_one(&table, &[]).await.unwrap()));
    let version = schema_version(&client, &quoted).await;
    assert_eq!(version, 6);
    assert_eq!(
        store
            .dead_letters(DeadLetterQuery::all())
            .await
            .unwrap()
            .len(),
        1,
        "the version 4 data is there"
    );
    assert!(store.disabled_receivers().await.unwrap().is_empty());
    store.disable_receiver(&disabled("b2", 1)).await.unwrap();
    assert_eq!(
        store.disabled_receivers().await.unwrap(),
        [disabled("b2", 1)]
    );
}

/// A version 5 schema is migrated to version 6: its dead letter reads without a trace, and a new
/// event keeps one.
#[tokio::test(flavor = "multi_thread")]
async fn a_version_5_schema_is_migrated_to_keep_traces() {
    if !pg::available(FILE).await {
        return;
    }
    let schema = Schema::new();
    let (client, quoted) = schema_at_version(&schema, 5).await;
    let store = store(&schema).await;
    let version = schema_version(&client, &quoted).await;
    assert_eq!(version, 6);
    let dead = store.dead_letters(DeadLetterQuery::all()).await.unwrap();
    assert_eq!(dead.len(), 1, "the version 5 data is there");
    assert_eq!(dead[0].trace, None);
    let (event_id, notification_id) = store.allocate_ids().await.unwrap();
    let traced = EventRecord {
        trace: Some(std::sync::Arc::new(trace_context())),
        ..event(event_id, notification_id, "https://hooks.example.com/in")
    };
    store.dispatched(&traced).await.unwrap();
    match store.status(event_id).await.unwrap() {
        Some(EventSnapshot::Unfinished(event)) => assert_eq!(event, traced),
        other => panic!("{other:?}"),
    }
}

/// An event's trace is kept in its row, whichever way it was accepted: another node finds it in
/// a status answer, takes it over with the unfinished event and with the pending notification,
/// and dead letters and a redelivery keep it. A trace too large to keep is not kept.
#[tokio::test(flavor = "multi_thread")]
async fn the_trace_stays_with_the_event_and_its_notification_on_every_node() {
    use tower_async_request::store::{IdempotencyKey, KeyClaim, KeyScope};
    if !pg::available(FILE).await {
        return;
    }
    let schema = Schema::new();
    let (a, b) = (store(&schema).await, store(&schema).await);
    let trace = Some(std::sync::Arc::new(trace_context()));
    let traced = |(event_id, notification_id), target: &str| EventRecord {
        trace: trace.clone(),
        ..event(event_id, notification_id, target)
    };
    let unfinished = traced(
        a.allocate_ids().await.unwrap(),
        "https://hooks.example.com/a",
    );
    a.dispatched(&unfinished).await.unwrap();
    // Accepted under an idempotency key (the other statement that writes events).
    let keyed = traced(
        a.allocate_ids().await.unwrap(),
        "https://hooks.example.com/k",
    );
    let key = IdempotencyKey {
        scope: KeyScope {
            instance_id: 30,
            method: "POST".into(),
            path: "/work".into(),
            key: "traced".into(),
        },
        fingerprint: [7; 32],
        expires_at_ms: u64::MAX,
    };
    let claim = a.dispatched_with_key(&keyed, &key).await.unwrap();
    assert_eq!(claim, KeyClaim::Claimed);
    let (event_id, notification_id) = a.allocate_ids().await.unwrap();
    let large = EventRecord {
        trace: Some(std::sync::Arc::new(TraceContext {
            fields: vec![("tracestate".into(), "x".repeat(2000))],
        })),
        ..event(event_id, notification_id, "https://hooks.example.com/l")
    };
    a.dispatched(&large).await.unwrap();
    let finished = traced(
        a.allocate_ids().await.unwrap(),
        "https://hooks.example.com/f",
    );
    a.dispatched(&finished).await.unwrap();
    let mut notification = pending(&finished, &b"{}"[..]);
    a.finished(&notification).await.unwrap();
    notification.attempts = 1;
    notification.last_error = Some("the receiver answered 503".into());
    a.attempted(&notification).await.unwrap();

    match b.status(unfinished.event_id).await.unwrap() {
        Some(EventSnapshot::Unfinished(event)) => assert_eq!(event, unfinished),
        other => panic!("{other:?}"),
    }
    a.leave().await.unwrap(); // as if silent past its lease
    let mut taken = b.take_over().unwrap().await.unwrap();
    taken.unfinished.sort_by_key(|event| event.event_id);
    let without_trace = EventRecord {
        trace: None,
        ..large
    };
    assert_eq!(taken.unfinished, [unfinished, keyed, without_trace]);
    assert_eq!(taken.pending, [notification.clone()]);
    assert_eq!(taken.pending[0].trace, trace);

    b.dead(&notification).await.unwrap();
    let dead = b.dead_letters(DeadLetterQuery::all()).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].trace, trace);
    let revived = b.revive(notification.notification_id).await.unwrap();
    assert_eq!(revived.unwrap().trace, trace);
    match a.status(finished.event_id).await.unwrap() {
        Some(EventSnapshot::Finished(record)) => assert_eq!(record.trace, trace),
        other => panic!("{other:?}"),
    }
}
