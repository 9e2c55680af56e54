//! Crash safety with `RedbStore`: a worker process is killed with SIGKILL while some jobs run and
//! some notifications wait for a retry, then started again on the same file. Every accepted event
//! must still reach the receiver with a terminal notification.
#![cfg(all(feature = "redb", unix))]

mod support;
use support::worker;

use std::collections::{HashMap, HashSet};
use std::path::Path;

use bytes::Bytes;
use support::{Answer, Receiver};
use worker::{
    accept, accept_keyed, accept_with_status, cancel, status_of, until_recorded_delivered,
    Outcomes, Worker,
};

fn start_worker(db: &Path, callback: &str) -> (Worker, String) {
    start_worker_with(db, callback, &[])
}

fn start_worker_with(db: &Path, callback: &str, more: &[&str]) -> (Worker, String) {
    let mut args = vec!["--db", db.to_str().unwrap()];
    args.extend_from_slice(more);
    Worker::start(callback, &args)
}

#[tokio::test(flavor = "multi_thread")]
async fn every_accepted_event_survives_kill_9() {
    let db = std::env::temp_dir().join(format!("tar-kill9-{}.redb", std::process::id()));
    let _ = std::fs::remove_file(&db);
    // The first four callbacks fail, so the quick jobs' notifications wait for a retry.
    let mut receiver = Receiver::start(vec![Answer::status(503); 4]).await;

    let (worker, addr) = start_worker(&db, &receiver.url());
    let mut quick = HashSet::new();
    let mut slow = HashSet::new();
    for _ in 0..4 {
        quick.insert(accept(&addr, 0).await);
        slow.insert(accept(&addr, 600_000).await);
    }
    // What each notification between attempts was, byte for byte.
    let mut refused: HashMap<u64, Bytes> = HashMap::new();
    for _ in 0..4 {
        let hit = receiver.next().await;
        assert_eq!(hit.answered, 503);
        refused.insert(hit.json()["eventId"].as_u64().unwrap(), hit.body);
    }
    // Now: four notifications are between attempts, four jobs are running.
    worker.kill(); // SIGKILL

    let (worker, addr) = start_worker(&db, &receiver.url());
    let mut terminal: HashMap<u64, serde_json::Value> = HashMap::new();
    let mut delivered: HashMap<u64, Bytes> = HashMap::new();
    while terminal.len() < 8 {
        let hit = receiver.next().await;
        if hit.answered == 200 {
            let notification = hit.json();
            let id = notification["eventId"].as_u64().unwrap();
            terminal.insert(id, notification);
            delivered.insert(id, hit.body);
        }
    }
    for id in &quick {
        assert_eq!(terminal[id]["eventStatus"], "completed", "{id}");
        assert_eq!(terminal[id]["response"], serde_json::json!({"slept": 0}));
    }
    // A notification that waited across the crash is the same one: same notificationId, same
    // bytes.
    assert!(refused.keys().all(|id| quick.contains(id)), "{refused:?}");
    for (id, before) in &refused {
        assert_eq!(
            &delivered[id], before,
            "event {id} changed across the crash"
        );
    }
    for id in &slow {
        assert_eq!(terminal[id]["eventStatus"], "failed", "{id}");
        assert_eq!(terminal[id]["error"]["code"], "interrupted");
    }
    let newest = accept(&addr, 0).await;
    assert!(
        quick.iter().chain(&slow).all(|&old| newest > old),
        "ids must not repeat across restarts"
    );

    worker.kill();
    let _ = std::fs::remove_file(&db);
}

#[tokio::test(flavor = "multi_thread")]
async fn after_a_restart_pending_notifications_are_signed_with_the_instances_current_key() {
    use tower_async_request::verify::ElementsVerifier;

    let db = std::env::temp_dir().join(format!("tar-kill9-keys-{}.redb", std::process::id()));
    let _ = std::fs::remove_file(&db);
    let mut receiver = Receiver::start(vec![Answer::status(503); 2]).await;
    const KEYS: [&str; 2] = ["signing-key-one-7f3a9c", "signing-key-two-c41d08"];
    let (old_key, new_key) = (
        ElementsVerifier::new(KEYS[0]),
        ElementsVerifier::new(KEYS[1]),
    );

    let (worker, addr) = start_worker_with(&db, &receiver.url(), &["--signing-key", KEYS[0]]);
    let accepted: HashSet<u64> = [accept(&addr, 0).await, accept(&addr, 0).await].into();
    for _ in 0..2 {
        let hit = receiver.next().await;
        assert_eq!(hit.answered, 503);
        old_key.verify(&hit.headers, &hit.body).unwrap();
    }
    worker.kill(); // SIGKILL, both notifications between attempts

    // The operator rotated the instance's key while the process was down.
    let (worker, _) = start_worker_with(&db, &receiver.url(), &["--signing-key", KEYS[1]]);
    let mut delivered = HashSet::new();
    while delivered.len() < 2 {
        let hit = receiver.next().await;
        assert_eq!(hit.answered, 200);
        new_key.verify(&hit.headers, &hit.body).unwrap();
        assert!(old_key.verify(&hit.headers, &hit.body).is_err());
        let notification = hit.json();
        assert_eq!(notification["instanceId"], 30);
        assert_eq!(notification["eventStatus"], "completed");
        delivered.insert(notification["eventId"].as_u64().unwrap());
    }
    assert_eq!(delivered, accepted);

    worker.kill();
    // Keys never reach the store: the file holds the notifications, not what signed them.
    let file = std::fs::read(&db).unwrap();
    let response = br#""slept":0"#;
    assert!(
        file.windows(response.len()).any(|w| w == response),
        "the notifications are there"
    );
    for key in KEYS {
        assert!(
            !file.windows(key.len()).any(|w| w == key.as_bytes()),
            "{key} is in the store's file"
        );
    }
    let _ = std::fs::remove_file(&db);
}

/// A status URL stays valid across a restart when the status secret stays, and only then: the
/// token is made from the secret, not kept in the store.
#[tokio::test(flavor = "multi_thread")]
async fn a_status_url_survives_a_restart_with_the_same_status_secret_only() {
    let db = std::env::temp_dir().join(format!("tar-kill9-secret-{}.redb", std::process::id()));
    let _ = std::fs::remove_file(&db);
    let mut receiver = Receiver::start(Vec::new()).await;
    let (worker, addr) = start_worker(&db, &receiver.url());
    let (id, location) = accept_with_status(&addr, 0).await;
    receiver.next().await;
    until_recorded_delivered(&addr, &location).await;
    worker.kill();

    let secret = ["--status-secret", "another status secret"];
    let (worker, addr) = start_worker_with(&db, &receiver.url(), &secret);
    let (code, body) = status_of(&addr, &location).await;
    assert_eq!((code.as_u16(), &body["code"]), (404, &"not_found".into()));
    worker.kill();

    let (worker, addr) = start_worker(&db, &receiver.url());
    let (code, body) = status_of(&addr, &location).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["eventId"], id);
    // (Its delivery was recorded without waiting for the disk, so it may be sent once more.)
    until_recorded_delivered(&addr, &location).await;
    worker.kill();
    let _ = std::fs::remove_file(&db);
}

/// The points the first test does not reach: killed right after a receipt (`running` is never
/// written, so on disk that is the same as a job running), with an outcome recorded and its first
/// attempt on the wire, and right after a delivery (recorded without waiting for the disk, so it
/// is likely lost and the notification sent again). Every event still ends with a terminal
/// notification, and where one arrives twice it is the same notification, byte for byte.
#[tokio::test(flavor = "multi_thread")]
async fn kill_9_after_a_receipt_an_outcome_or_a_delivery_never_gives_two_outcomes() {
    use std::time::Duration;

    let db = std::env::temp_dir().join(format!("tar-kill9-points-{}.redb", std::process::id()));
    let _ = std::fs::remove_file(&db);
    // The first callback hangs until the process is gone; the next are taken at once.
    let mut receiver =
        Receiver::start(vec![Answer::status(200).after(Duration::from_secs(60))]).await;
    let mut outcomes = Outcomes::default();

    let (worker, addr) = start_worker(&db, &receiver.url());
    let (on_the_wire, wire_status) = accept_with_status(&addr, 0).await;
    // Its first attempt is on the wire: the receiver has it and holds its answer.
    let attempt = receiver.arrival().await;
    assert_eq!(outcomes.seen(&attempt), on_the_wire);
    let (just_accepted, accepted_status) = accept_with_status(&addr, 600_000).await;
    let (delivered, status) = accept_with_status(&addr, 0).await;
    let hit = receiver.next().await;
    assert_eq!(outcomes.record(&hit), delivered);
    until_recorded_delivered(&addr, &status).await;
    worker.kill(); // SIGKILL, right after the delivery was recorded

    let (worker, addr) = start_worker(&db, &receiver.url());
    let all = HashSet::from([delivered, on_the_wire, just_accepted]);
    outcomes.until_terminal(&mut receiver, &all).await;
    // Once the new worker has each recorded as delivered, no attempt is left: a repeat of the
    // delivered one, if any, has arrived, and must be the same notification.
    for location in [&wire_status, &accepted_status, &status] {
        until_recorded_delivered(&addr, location).await;
    }
    let notifications = outcomes.one_each(&mut receiver, &all);
    let outcome = |id: u64| {
        let json = &notifications[&id];
        (json["eventStatus"].clone(), json["error"]["code"].clone())
    };
    assert_eq!(outcome(delivered).0, "completed");
    assert_eq!(outcome(on_the_wire).0, "completed");
    assert_eq!(
        outcome(just_accepted),
        ("failed".into(), "interrupted".into())
    );
    worker.kill();
    let _ = std::fs::remove_file(&db);
}

/// Killed right after the receipt of a request with an `Idempotency-Key` (the key was written
/// with the event): after the restart the same request gets the same receipt, replayed, and the
/// event ends `interrupted` once — the request started nothing the second time.
#[tokio::test(flavor = "multi_thread")]
async fn after_kill_9_a_keyed_request_sent_again_gets_its_first_receipt() {
    let db = std::env::temp_dir().join(format!("tar-kill9-key-{}.redb", std::process::id()));
    let _ = std::fs::remove_file(&db);
    let mut receiver = Receiver::start(Vec::new()).await;
    let key = Some("\"copy-folder-7\"");
    let (worker, addr) = start_worker(&db, &receiver.url());
    let (id, location, replayed) = accept_keyed(&addr, 600_000, key).await;
    assert!(!replayed);
    worker.kill(); // SIGKILL, the job running

    let (worker, addr) = start_worker(&db, &receiver.url());
    let (again, again_location, replayed) = accept_keyed(&addr, 600_000, key).await;
    assert_eq!((again, &again_location, replayed), (id, &location, true));
    let mut outcomes = Outcomes::default();
    let all = HashSet::from([id]);
    outcomes.until_terminal(&mut receiver, &all).await;
    until_recorded_delivered(&addr, &location).await;
    let notifications = outcomes.one_each(&mut receiver, &all);
    assert_eq!(notifications[&id]["error"]["code"], "interrupted");
    // And still the same receipt once it has ended.
    let (after, _, replayed) = accept_keyed(&addr, 600_000, key).await;
    assert_eq!((after, replayed), (id, true));
    worker.kill();
    let _ = std::fs::remove_file(&db);
}

/// Killed right after the `202` of a cancel (its first delivery attempt held by the receiver):
/// after the restart the event is `cancelled`, never `interrupted`, and its one notification
/// says so.
#[tokio::test(flavor = "multi_thread")]
async fn kill_9_right_after_a_cancel_is_answered_leaves_the_event_cancelled() {
    use std::time::Duration;

    let db = std::env::temp_dir().join(format!("tar-kill9-cancel-{}.redb", std::process::id()));
    let _ = std::fs::remove_file(&db);
    // The first attempt hangs until the process is gone: the notification is still pending.
    let mut receiver =
        Receiver::start(vec![Answer::status(200).after(Duration::from_secs(60))]).await;
    let (worker, addr) = start_worker(&db, &receiver.url());
    let (id, location) = accept_with_status(&addr, 600_000).await;
    let (code, answer) = cancel(&addr, &location).await;
    assert_eq!(code, 202, "{answer}");
    assert_eq!(answer["eventStatus"], "cancelled");
    worker.kill(); // SIGKILL, right after the answer

    let (worker, addr) = start_worker(&db, &receiver.url());
    let (code, status) = status_of(&addr, &location).await;
    assert_eq!(code, 200);
    assert_eq!(status["eventStatus"], "cancelled", "{status}");
    let mut outcomes = Outcomes::default();
    let all = HashSet::from([id]);
    outcomes.until_terminal(&mut receiver, &all).await;
    until_recorded_delivered(&addr, &location).await;
    let notifications = outcomes.one_each(&mut receiver, &all);
    assert_eq!(notifications[&id]["eventStatus"], "cancelled");
    assert_eq!(cancel(&addr, &location).await.0, 409);
    worker.kill();
    let _ = std::fs::remove_file(&db);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_disabled_receiver_stays_disabled_across_kill_9() {
    let db = std::env::temp_dir().join(format!("tar-kill9-disabled-{}.redb", std::process::id()));
    let _ = std::fs::remove_file(&db);
    let mut receiver = Receiver::start(vec![Answer::status(503); 1_000]).await;
    let settings = [
        "--circuit-breaker",
        "1,50",
        "--disable-receiver-after-ms",
        "300",
    ];
    // Open after one failure, probed at 50, 150 and 350 ms: disabled at the third probe.
    let (worker, addr) = start_worker_with(&db, &receiver.url(), &settings);
    accept(&addr, 0).await;
    // Its notification buried by the disabling: written after the disabling itself.
    worker.log().until("it is disabled", 1);
    worker.log().until("kept as a dead letter", 1);
    worker.kill(); // SIGKILL
    while receiver.hits.try_recv().is_ok() {}

    let (worker, addr) = start_worker_with(&db, &receiver.url(), &settings);
    accept(&addr, 0).await;
    let buried = worker.log().until("kept as a dead letter", 1);
    assert!(buried[0].contains("receiver_disabled"), "{buried:?}");
    assert!(
        receiver.hits.try_recv().is_err(),
        "nothing is sent to a receiver disabled before the crash"
    );
    worker.kill();
    let _ = std::fs::remove_file(&db);
}

#[cfg(feature = "opentelemetry")]
#[tokio::test(flavor = "multi_thread")]
async fn a_retry_after_kill_9_is_in_the_callers_trace() {
    let db = std::env::temp_dir().join(format!("tar-kill9-trace-{}.redb", std::process::id()));
    let _ = std::fs::remove_file(&db);
    let mut receiver = Receiver::start(vec![Answer::status(503)]).await;
    let (worker, addr) = start_worker_with(&db, &receiver.url(), &["--trace"]);
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Full<Bytes>>();
    let request = http::Request::post(format!("http://{addr}/work"))
        .header("Elements-Async-Request", "true")
        .header("traceparent", format!("00-{trace}-00f067aa0ba902b7-01"))
        .body(http_body_util::Full::default())
        .unwrap();
    assert_eq!(client.request(request).await.unwrap().status(), 202);
    let first = receiver.next().await;
    assert_eq!(first.answered, 503);
    let traced = |hit: &support::Hit| {
        let value = hit.headers["traceparent"].to_str().unwrap().to_owned();
        value.split('-').nth(1).unwrap().to_owned()
    };
    assert_eq!(traced(&first), trace);
    // Killed between the failed attempt and its retry (3 s later).
    worker.kill();
    let (worker, _) = start_worker_with(&db, &receiver.url(), &["--trace"]);
    let retry = receiver.next().await;
    assert_eq!(retry.answered, 200);
    assert_eq!(
        traced(&retry),
        trace,
        "the retry after the crash is in the caller's trace"
    );
    worker.kill();
    let _ = std::fs::remove_file(&db);
}
