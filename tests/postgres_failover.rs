//! Failover on PostgreSQL: two worker processes (`examples/durable_worker.rs`) share one
//! database; one is killed with SIGKILL while jobs run and notifications wait between attempts.
//! The survivor finishes every one of them — completed, or failed/interrupted — within the lease
//! timeout and one retry delay, no event gets two different outcomes, and ids stay unique.
//! Skipped, with one line saying so, where no PostgreSQL server answers.
#![cfg(all(feature = "postgres", feature = "redb", unix))]

mod support;
use support::pg;
use support::worker;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use support::{Answer, Receiver};
use worker::{accept, accept_with_status, until_recorded_delivered, Outcomes, Worker};

const LEASE: Duration = Duration::from_secs(2);
/// The workers' first retry delay (see `Worker::start`).
const RETRY: Duration = Duration::from_secs(3);

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_nodes_jobs_and_pending_notifications_are_finished_by_the_survivor() {
    if !pg::available("tests/postgres_failover.rs").await {
        return;
    }
    let schema = pg::Schema::new();
    let url = pg::url();
    let lease_ms = LEASE.as_millis().to_string();
    let args = [
        "--postgres",
        &url,
        "--schema",
        &schema.0,
        "--lease-ms",
        &lease_ms,
    ];
    // The first four callbacks fail, so the quick jobs' notifications wait for a retry.
    let mut receiver = Receiver::start(vec![Answer::status(503); 4]).await;
    let (doomed, doomed_addr) = Worker::start(&receiver.url(), &args);
    let (survivor, survivor_addr) = Worker::start(&receiver.url(), &args);

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
