//! Receivers' health through the real binary on 127.0.0.1, as docs/proxy.md tells it: at most
//! `--max-connections-per-receiver` attempts in flight to a receiver that never answers (counted
//! by the receiver, and by `GET /admin/receivers`); a failing receiver's circuit opening after
//! `--circuit-breaker-failures`, tried again after `--circuit-breaker-cool-down` and disabled
//! after `--disable-receiver-after`, told to an instances file's `operations_url`; and bad values
//! of the flags and of the file's keys refused with one line naming them. Each waits on what the
//! proxy does (a connection, a webhook, a counter, its exit), never on a sleep; the clocks are
//! hang guards of 20 s.

// The library's test helpers, shared rather than copied.
#[path = "../../tests/support/mod.rs"]
#[allow(unexpected_cfgs)] // its PostgreSQL helper is behind the library's `postgres` feature
mod support;

// The running binary and the helpers the proxy's test files share.
mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{accepted, async_post, axum_upstream, get_json, refused, scrape, temp, write, Proxy};
use http::{header, Request, StatusCode};
use http_body_util::Full;
use serde_json::Value;
use support::{Answer, Receiver};
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;

/// Connections a receiver has open now, and the most it had at once.
#[derive(Default)]
struct Connections {
    open: AtomicUsize,
    most: AtomicUsize,
}

/// A receiver that accepts every connection, reads what comes and never answers, counting the
/// connections open until their other end closes them.
async fn hanging_receiver() -> (SocketAddr, Arc<Connections>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let connections = Arc::new(Connections::default());
    let counted = connections.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let open = counted.open.fetch_add(1, Ordering::SeqCst) + 1;
            counted.most.fetch_max(open, Ordering::SeqCst);
            let counted = counted.clone();
            tokio::spawn(async move {
                let mut discard = [0u8; 1024];
                while matches!(stream.read(&mut discard).await, Ok(read) if read > 0) {}
                counted.open.fetch_sub(1, Ordering::SeqCst);
            });
        }
    });
    (address, connections)
}

/// The sum of `metric`'s samples in `scrape`.
fn sample(scrape: &str, metric: &str) -> f64 {
    scrape
        .lines()
        .filter(|line| {
            line.strip_prefix(metric)
                .is_some_and(|rest| rest.starts_with([' ', '{']))
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// `GET /admin/receivers` of the admin listener at `admin`: the receiver at `origin`.
async fn receiver_at(admin: SocketAddr, origin: &str) -> Option<Value> {
    let (status, page) = get_json(format!("http://{admin}/admin/receivers")).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    page["receivers"]
        .as_array()
        .unwrap_or_else(|| panic!("no receivers list: {page}"))
        .iter()
        .find(|receiver| receiver["origin"] == origin)
        .cloned()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_receiver_that_never_answers_has_at_most_max_connections_per_receiver_open() {
    let upstream = axum_upstream().await;
    let (receiver, connections) = hanging_receiver().await;
    let proxy = Proxy::unsigned(
        &format!("http://{upstream}/api"),
        &[
            "--callback-url",
            &format!("http://{receiver}/hook"),
            "--admin-listen",
            "127.0.0.1:0",
            "--max-connections-per-receiver",
            "2",
            "--circuit-breaker-failures",
            "0",
            "--disable-receiver-after",
            "never",
        ],
    );
    let admin = proxy.admin.expect("the admin listener");
    for _ in 0..10 {
        accepted(async_post(proxy.url("/report"))).await;
    }
    // Two attempts hang at the receiver and the eight others wait their turn (each counted as
    // throttled once it found no connection slot free): nothing more is coming.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let most = connections.most.load(Ordering::SeqCst);
        assert!(most <= 2, "{most} connections open at once");
        let throttled = sample(
            &scrape(admin).await,
            "async_request_delivery_throttled_total",
        );
        if throttled >= 8.0 && connections.open.load(Ordering::SeqCst) == 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not 2 open and 8 waiting: {} open, {throttled} throttled",
            connections.open.load(Ordering::SeqCst)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let listed = receiver_at(admin, &format!("http://{receiver}"))
        .await
        .expect("the receiver is listed");
    assert_eq!(listed["inFlight"], 2, "{listed}");
    assert_eq!(listed["maxConnections"], 2, "{listed}");
    assert_eq!(listed["state"], "closed", "{listed}");
    assert_eq!(connections.most.load(Ordering::SeqCst), 2);
}

/// The next operational webhook at `operations` of type `kind`, skipping others.
async fn told(operations: &mut Receiver, kind: &str) -> Value {
    loop {
        let webhook = operations.next().await.json();
        if webhook["type"] == kind {
            return webhook;
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_receiver_opens_its_circuit_then_is_disabled_telling_the_operations_url() {
    let upstream = axum_upstream().await;
    let failing = Receiver::start(vec![Answer::status(500); 20]).await;
    let mut operations = Receiver::start(Vec::new()).await;
    let file = temp("receivers-instances.toml");
    write(
        &file,
        &format!(
            "[[instance]]\nid = 30\ncredentials = [\"acme\"]\ncallback_url = \"{}\"\n\
             operations_url = \"{}\"\nmax_connections = 3\nmax_delivery_rate = 100.0\n",
            failing.url(),
            operations.url()
        ),
    );
    let proxy = Proxy::unsigned(
        &format!("http://{upstream}/api"),
        &[
            "--instances",
            file.to_str().unwrap(),
            "--admin-listen",
            "127.0.0.1:0",
            "--circuit-breaker-failures",
            "1",
            "--circuit-breaker-cool-down",
            "1s",
            "--disable-receiver-after",
            "2s",
        ],
    );
    let admin = proxy.admin.expect("the admin listener");
    let request = Request::post(proxy.url("/report"))
        .header("Elements-Async-Request", "true")
        .header(header::AUTHORIZATION, "Element acme")
        .body(Full::from("{}"))
        .unwrap();
    accepted(request).await;

    // One failure opens the circuit (the default, 5, would take minutes of retries)...
    let origin = format!("http://{}", failing.addr);
    let failing_webhook = told(&mut operations, "receiver.failing").await;
    assert_eq!(failing_webhook["instanceId"], 30, "{failing_webhook}");
    assert_eq!(
        failing_webhook["data"]["origin"], origin,
        "{failing_webhook}"
    );
    assert_eq!(
        failing_webhook["data"]["consecutiveFailures"], 1,
        "{failing_webhook}"
    );
    // ...probes after 1 s and 2 s more fail, and failing for 2 s disables it (with the defaults,
    // 30 s and 5 days, neither within the test's 20 s).
    let disabled = told(&mut operations, "receiver.disabled").await;
    assert_eq!(disabled["data"]["origin"], origin, "{disabled}");
    let listed = receiver_at(admin, &origin)
        .await
        .expect("the failing receiver is listed");
    assert_eq!(listed["state"], "disabled", "{listed}");
    assert_eq!(listed["instanceId"], 30, "{listed}");
    // The instance's max_connections, not the layer's 32.
    assert_eq!(listed["maxConnections"], 3, "{listed}");
    let _ = std::fs::remove_file(file);
}

#[test]
fn bad_receivers_health_flags_exit_2_with_one_line_naming_them() {
    for (flag, value, says) in [
        ("--max-connections-per-receiver", "0", "1..=1048576"),
        ("--circuit-breaker-failures", "some", "invalid digit"),
        ("--circuit-breaker-cool-down", "0s", "longer than zero"),
        ("--disable-receiver-after", "forever", "or never"),
    ] {
        let stderr = refused(&[
            "--unsigned-callbacks",
            "--upstream",
            "http://127.0.0.1:9",
            flag,
            value,
        ]);
        assert!(stderr.starts_with("async-request-proxy: "), "{stderr}");
        assert!(stderr.contains(flag), "{flag}: {stderr}");
        assert!(stderr.contains(says), "{flag}: {stderr}");
    }
}

#[test]
fn an_instance_with_a_max_delivery_rate_of_0_is_refused_naming_it() {
    let file = temp("rate-0-instances.toml");
    write(
        &file,
        "[[instance]]\nid = 30\ncredentials = [\"acme\"]\nmax_connections = 4\n\
         operations_url = \"https://acme.example/ops\"\nmax_delivery_rate = 0\n",
    );
    let stderr = refused(&[
        "--unsigned-callbacks",
        "--upstream",
        "http://127.0.0.1:9",
        "--instances",
        file.to_str().unwrap(),
    ]);
    let _ = std::fs::remove_file(&file);
    assert!(
        stderr.contains(&format!("--instances {}: ", file.display())),
        "{stderr}"
    );
    assert!(
        stderr.contains("instance 30: max_delivery_rate"),
        "{stderr}"
    );
}
