//! Failover on PostgreSQL: worker processes (`examples/durable_worker.rs`) share one database;
//! one is killed with SIGKILL (or stopped with SIGSTOP past its lease) while jobs run and
//! notifications wait between attempts. A survivor finishes every one of them — completed, or
//! failed/interrupted — within the lease timeout and one retry delay, exactly one survivor takes
//! each dead node's work, no event gets two different outcomes, and ids stay unique. A node
//! restarted under its fixed id takes its own work back at once. The tests wait on what the
//! workers log (their stderr), never on time passing. Skipped, with one line saying so, where no
//! PostgreSQL server answers and neither `CI` nor `DATABASE_URL` is set.
#![cfg(all(feature = "postgres", feature = "redb", unix))]

mod support;
use support::pg;
use support::worker;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use support::{Answer, Receiver};
use worker::{accept, accept_with_status, cancel, until_recorded_delivered, Outcomes, Worker};

const LEASE: Duration = Duration::from_secs(2);
/// The workers' first retry delay (see `Worker::start`).
const RETRY: Duration = Duration::from_secs(3);
/// What a node logs when it has taken over the work of nodes that stopped.
const TOOK_OVER: &str = "took over the work of nodes that stopped";
/// What a node logs each time it has looked for such work.
const LOOKED: &str = "looked for work of stopped nodes";

/// The arguments that put a worker on `schema` with the lease `lease`, and `more`.
fn on_postgres(schema: &pg::Schema, lease: Duration, more: &[&str]) -> Vec<String> {
    let mut args = vec![
        "--postgres".to_owned(),
        pg::url(),
        "--schema".to_owned(),
        schema.0.clone(),
        "--lease-ms".to_owned(),
        lease.as_millis().to_string(),
    ];
    args.extend(more.iter().map(|a| a.to_string()));
    args
}

fn start(receiver: &Receiver, args: &[String]) -> (Worker, String) {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Worker::start(&receiver.url(), &args)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_nodes_jobs_and_pending_notifications_are_finished_by_the_survivor() {
    if !pg::available("tests/postgres_failover.rs").await {
        return;
    }
    let schema = pg::Schema::new();
    let args = on_postgres(&schema, LEASE, &[]);
    // The first four callbacks fail, so the quick jobs' notifications wait for a retry.
    let mut receiver = Receiver::start(vec![Answer::status(503); 4]).await;
    let (doomed, doomed_addr) = start(&receiver, &args);
    let (survivor, survivor_addr) = start(&receiver, &args);

    let (mut quick, mut slow, mut statuses) = (HashSet::new(), HashSet::new(), Vec::new());
    for _ in 0..4 {
        let (id, status) = accept_with_status(&doomed_addr, 0).await;
        quick.insert(id);
        statuses.push(status);
        let (id, status) = accept_with_status(&doomed_addr, 600_000).await;
        slow.insert(id);
        statuses.push(status);
    }
    let mut outcomes = Outcomes::default();
    for _ in 0..4 {
        let hit = receiver.next().await;
        assert_eq!(hit.answered, 503);
        outcomes.record(&hit);
    }
    // Now four notifications wait for their retry and four jobs run, all on the doomed node.
    doomed.kill();
    let killed = Instant::now();

    let all: HashSet<u64> = quick.union(&slow).copied().collect();
    outcomes.until_terminal(&mut receiver, &all).await;
    let took = killed.elapsed();
    // The lease runs out, a survivor's look (every third of the lease) finds it, and the
    // notifications keep their retry time; a few seconds more for a loaded machine.
    let bound = LEASE + LEASE / 3 + RETRY + Duration::from_secs(5);
    assert!(took < bound, "finished after {took:?}, over {bound:?}");

    // Anything repeated (the at-least-once rule) is the same notification. Once the survivor
    // has each recorded as delivered, every attempt was answered and is here.
    for status in &statuses {
        until_recorded_delivered(&survivor_addr, status).await;
    }
    let notifications = outcomes.one_each(&mut receiver, &all);
    for (id, notification) in &notifications {
        if quick.contains(id) {
            assert_eq!(notification["eventStatus"], "completed", "{id}");
            assert_eq!(notification["response"], serde_json::json!({"slept": 0}));
        } else {
            assert_eq!(notification["eventStatus"], "failed", "{id}");
            assert_eq!(notification["error"]["code"], "interrupted");
        }
    }

    let newest = accept(&survivor_addr, 0).await;
    assert!(!all.contains(&newest), "ids stay unique across nodes");
    survivor.kill();
}

/// Three nodes; one is killed with three jobs running and two notifications waiting for a retry.
/// Both survivors look for its work every third of the lease, and exactly one takes all of it:
/// one takeover logged in all, naming 3 interrupted and 2 pending, and one notification each.
#[tokio::test(flavor = "multi_thread")]
async fn of_two_survivors_exactly_one_takes_each_dead_nodes_work() {
    if !pg::available("tests/postgres_failover.rs").await {
        return;
    }
    let schema = pg::Schema::new();
    let args = on_postgres(&schema, LEASE, &[]);
    let mut receiver = Receiver::start(vec![Answer::status(503); 2]).await;
    let (doomed, doomed_addr) = start(&receiver, &args);
    let survivors = [start(&receiver, &args), start(&receiver, &args)];

    let (mut all, mut statuses) = (HashSet::new(), Vec::new());
    for ms in [0, 0, 600_000, 600_000, 600_000] {
        let (id, status) = accept_with_status(&doomed_addr, ms).await;
        all.insert(id);
        statuses.push(status);
    }
    let mut outcomes = Outcomes::default();
    for _ in 0..2 {
        let hit = receiver.next().await;
        assert_eq!(hit.answered, 503);
        outcomes.record(&hit);
    }
    doomed.kill();
    outcomes.until_terminal(&mut receiver, &all).await;

    // Every look that overlapped the takeover has ended once each survivor logs one more.
    for (survivor, _) in &survivors {
        let looks = survivor.log().lines(LOOKED).len();
        survivor.log().until(LOOKED, looks + 1);
    }
    let takeovers: Vec<String> = survivors
        .iter()
        .flat_map(|(survivor, _)| survivor.log().lines(TOOK_OVER))
        .collect();
    assert_eq!(takeovers.len(), 1, "one survivor takes it: {takeovers:#?}");
    assert!(
        takeovers[0].contains("interrupted=3") && takeovers[0].contains("pending=2"),
        "all of it: {}",
        takeovers[0]
    );
    for status in &statuses {
        until_recorded_delivered(&survivors[0].1, status).await;
    }
    let notifications = outcomes.one_each(&mut receiver, &all);
    let interrupted = notifications
        .values()
        .filter(|n| n["error"]["code"] == "interrupted")
        .count();
    assert_eq!(interrupted, 3);
}

/// A node stopped (SIGSTOP) past its lease while its job runs: a peer takes the event over and
/// ends it `interrupted`. When the node runs again (SIGCONT), it hears of that end (`NOTIFY`) and
/// drops its job, or its job ends first and the store refuses that second outcome; either way
/// the node does not deliver it, and serves on.
#[tokio::test(flavor = "multi_thread")]
async fn a_stalled_node_that_comes_back_does_not_deliver_the_outcomes_a_peer_took_over() {
    if !pg::available("tests/postgres_failover.rs").await {
        return;
    }
    let schema = pg::Schema::new();
    let args = on_postgres(&schema, LEASE, &[]);
    let mut receiver = Receiver::start(Vec::new()).await;
    let (stalled, stalled_addr) = start(&receiver, &args);
    let (peer, peer_addr) = start(&receiver, &args);

    // A five-second job: stopped long before it ends, it ends soon after the node wakes.
    let (taken, taken_status) = accept_with_status(&stalled_addr, 5000).await;
    stalled.signal("STOP");
    let mut outcomes = Outcomes::default();
    let hit = receiver.next().await;
    assert_eq!(outcomes.record(&hit), taken);
    assert_eq!(hit.json()["error"]["code"], "interrupted");
    peer.log().until(TOOK_OVER, 1);

    stalled.signal("CONT");
    // "…; its job was dropped" or "…; not delivering".
    stalled.log().until("has another outcome already", 1);
    // It is a node again: its heartbeat registers it, and new work on it is delivered.
    let (fresh, fresh_status) = accept_with_status(&stalled_addr, 0).await;
    let hit = receiver.next().await;
    assert_eq!(outcomes.record(&hit), fresh);
    until_recorded_delivered(&peer_addr, &taken_status).await;
    until_recorded_delivered(&stalled_addr, &fresh_status).await;
    let notifications = outcomes.one_each(&mut receiver, &HashSet::from([taken, fresh]));
    assert_eq!(notifications[&taken]["eventStatus"], "failed");
    assert_eq!(notifications[&fresh]["eventStatus"], "completed");
}

/// A node with a fixed `node_id` killed with a job running and a notification waiting for its
/// retry, then started again under that id, takes both back as it starts — under a lease of a
/// minute, which nothing here waits for: the job ends `interrupted`, the notification is sent.
#[tokio::test(flavor = "multi_thread")]
async fn a_node_restarted_under_its_fixed_id_takes_its_own_work_back_at_once() {
    if !pg::available("tests/postgres_failover.rs").await {
        return;
    }
    let schema = pg::Schema::new();
    let args = on_postgres(&schema, Duration::from_secs(60), &["--node-id", "7"]);
    let mut receiver = Receiver::start(vec![Answer::status(503)]).await;
    let (first_life, addr) = start(&receiver, &args);
    let (quick, quick_status) = accept_with_status(&addr, 0).await;
    let (slow, slow_status) = accept_with_status(&addr, 600_000).await;
    let mut outcomes = Outcomes::default();
    let hit = receiver.next().await;
    assert_eq!((outcomes.record(&hit), hit.answered.as_u16()), (quick, 503));
    first_life.kill();

    let (second_life, addr) = start(&receiver, &args);
    let resumed = second_life
        .log()
        .until("resuming work an earlier process left unfinished", 1);
    assert!(
        resumed[0].contains("interrupted=1") && resumed[0].contains("pending=1"),
        "{}",
        resumed[0]
    );
    let both = HashSet::from([quick, slow]);
    outcomes.until_terminal(&mut receiver, &both).await;
    for status in [&quick_status, &slow_status] {
        until_recorded_delivered(&addr, status).await;
    }
    let notifications = outcomes.one_each(&mut receiver, &both);
    assert_eq!(notifications[&quick]["eventStatus"], "completed");
    assert_eq!(notifications[&slow]["error"]["code"], "interrupted");
}

/// A cancel sent to a survivor for a job of a node that was killed: the survivor records it, so
/// when the dead node's work is taken over the event is already `cancelled`, and its one
/// notification says so (never `interrupted`).
#[tokio::test(flavor = "multi_thread")]
async fn a_cancel_of_a_dead_nodes_job_ends_it_cancelled_not_interrupted() {
    if !pg::available("tests/postgres_failover.rs").await {
        return;
    }
    let schema = pg::Schema::new();
    let args = on_postgres(&schema, LEASE, &[]);
    let mut receiver = Receiver::start(Vec::new()).await;
    let (doomed, doomed_addr) = start(&receiver, &args);
    let (survivor, survivor_addr) = start(&receiver, &args);
    let (cancelled, cancelled_status) = accept_with_status(&doomed_addr, 600_000).await;
    let (interrupted, interrupted_status) = accept_with_status(&doomed_addr, 600_000).await;
    doomed.kill();

    let (code, answer) = cancel(&survivor_addr, &cancelled_status).await;
    assert_eq!(code, 202, "{answer}");
    // The other job is taken over and ends interrupted: the takeover has run.
    let mut outcomes = Outcomes::default();
    let all = HashSet::from([cancelled, interrupted]);
    outcomes.until_terminal(&mut receiver, &all).await;
    for status in [&cancelled_status, &interrupted_status] {
        until_recorded_delivered(&survivor_addr, status).await;
    }
    let notifications = outcomes.one_each(&mut receiver, &all);
    assert_eq!(notifications[&cancelled]["eventStatus"], "cancelled");
    assert_eq!(notifications[&interrupted]["error"]["code"], "interrupted");
    drop(survivor);
}

#[cfg(feature = "opentelemetry")]
#[tokio::test(flavor = "multi_thread")]
async fn a_retry_a_peer_took_over_is_in_the_callers_trace() {
    if !pg::available("tests/postgres_failover.rs").await {
        return;
    }
    let schema = pg::Schema::new();
    let args = on_postgres(&schema, LEASE, &["--trace"]);
    let mut receiver = Receiver::start(vec![Answer::status(503)]).await;
    let (doomed, doomed_addr) = start(&receiver, &args);
    let (survivor, _) = start(&receiver, &args);
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Full<bytes::Bytes>>();
    let request = http::Request::post(format!("http://{doomed_addr}/work"))
        .header("Elements-Async-Request", "true")
        .header("traceparent", format!("00-{trace}-00f067aa0ba902b7-01"))
        .body(http_body_util::Full::default())
        .unwrap();
    assert_eq!(client.request(request).await.unwrap().status(), 202);
    let trace_of = |hit: &support::Hit| {
        let value = hit.headers["traceparent"].to_str().unwrap().to_owned();
        value.split('-').nth(1).unwrap().to_owned()
    };
    let first = receiver.next().await;
    assert_eq!(
        (first.answered.as_u16(), trace_of(&first)),
        (503, trace.to_owned())
    );
    // Killed between the failed attempt and its retry: the survivor takes the notification.
    doomed.kill();
    survivor.log().until(TOOK_OVER, 1);
    let retry = receiver.next().await;
    assert_eq!(retry.answered, 200);
    assert_eq!(
        trace_of(&retry),
        trace,
        "the peer's retry is in the caller's trace"
    );
    survivor.kill();
}
