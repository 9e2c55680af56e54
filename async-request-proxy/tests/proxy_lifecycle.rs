//! The binary's life as docs/proxy.md tells it, through the real binary on 127.0.0.1: its exit
//! codes (1 without a runtime, 2 for an address in use, 3 or 0 for a callback left undelivered,
//! by store), signals handled from the moment it says where it listens, `SIGINT` draining as
//! `SIGTERM` does, `SIGTERM` closing a tunnel only once the requests in progress have finished,
//! and a standard output nobody reads. Each waits on what
//! the proxy does (an answer, a connection, a refused connect, its exit), never on a sleep; the
//! only clocks are hang guards of 20 s.

// The library's test helpers, shared rather than copied.
#[path = "../../tests/support/mod.rs"]
#[allow(unexpected_cfgs)] // its PostgreSQL helper is behind the library's `postgres` feature
mod support;

// The running binary and the helpers the proxy's test files share.
mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use axum::routing::get;
use common::{
    accepted, async_post, axum_upstream, call, closed_port, draining, ended, exit_and_report,
    exit_code, fetch, holding_router, refused_exactly, released, serve, silent_listener, temp,
    tunnel_closes, Proxy, BIN,
};
use http::{Request, StatusCode};
use http_body_util::Full;
use support::Receiver;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[test]
fn a_runtime_that_cannot_start_exits_1_with_one_line() {
    use std::os::unix::process::CommandExt;
    let mut command = Command::new(BIN);
    command.args([
        "--listen",
        "127.0.0.1:0",
        "--unsigned-callbacks",
        "--upstream",
        "http://127.0.0.1:9",
    ]);
    // Four file descriptors: standard input, output and error, and one for the loader to open
    // the shared libraries with, one at a time. The runtime needs two at once (its epoll and its
    // waker), and cannot be built.
    // SAFETY: between fork and exec, one async-signal-safe call, setrlimit(2).
    unsafe {
        command.pre_exec(|| {
            let limit = libc::rlimit {
                rlim_cur: 4,
                rlim_max: 4,
            };
            match libc::setrlimit(libc::RLIMIT_NOFILE, &limit) {
                0 => Ok(()),
                _ => Err(std::io::Error::last_os_error()),
            }
        });
    }
    let (code, stdout, stderr) = ended(command);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stdout.is_empty(), "{stdout}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with("async-request-proxy: no runtime: "),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_address_in_use_exits_2_naming_the_flag() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = taken.local_addr().unwrap().to_string();
    for (listen, admin, named) in [
        (taken.as_str(), None, "--listen"),
        ("127.0.0.1:0", Some(taken.as_str()), "--admin-listen"),
    ] {
        let mut args = vec![
            "--unsigned-callbacks",
            "--upstream",
            "http://127.0.0.1:9",
            "--listen",
            listen,
        ];
        args.extend(admin.iter().flat_map(|admin| ["--admin-listen", admin]));
        let stderr = refused_exactly(&args);
        assert!(
            stderr.contains(&format!("{named} {taken}: ")),
            "{args:?}: {stderr}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_undelivered_callback_exits_3_in_memory_and_0_when_redb_keeps_it() {
    let upstream = axum_upstream().await;
    // A callback receiver that takes every connection and never answers.
    let (receiver, mut attempts) = silent_listener().await;
    let callback = format!("http://{receiver}/hook");
    let file = temp("undelivered.redb");
    let _ = std::fs::remove_file(&file);
    let redb = format!("redb:{}", file.display());
    for (store, code, persisted) in [("memory", 3, false), (redb.as_str(), 0, true)] {
        let proxy = Proxy::unsigned(
            &format!("http://{upstream}/api"),
            &[
                "--callback-url",
                &callback,
                "--store",
                store,
                "--drain-timeout",
                "300ms",
            ],
        );
        accepted(async_post(proxy.url("/report"))).await;
        // The job is done and its callback on its way, never to be answered (an attempt has
        // 15 s; the drain 300 ms).
        attempts.recv().await.expect("the callback is attempted");
        proxy.signal(libc::SIGTERM);
        let (exit, report) = exit_and_report(proxy).await;
        assert_eq!(exit, Some(code), "{store}: {report}");
        assert!(
            report.contains(&format!(
                "jobs_left=0 notifications_left=1 persisted={persisted}"
            )),
            "{store}: {report}"
        );
    }
    let _ = std::fs::remove_file(file);
}

#[test]
fn signals_sent_as_soon_as_it_says_where_it_listens_are_handled() {
    let upstream = format!("http://{}", closed_port());
    // A script may signal it the moment it has said where it listens: SIGHUP then reads its
    // files again (here none), SIGTERM drains. Neither may find a signal's default action
    // (the end of the process) still in place. Several at once, as the moment is short and a
    // busy machine makes it longer.
    let runs: Vec<_> = (0..12)
        .map(|_| {
            let upstream = upstream.clone();
            std::thread::spawn(move || {
                let proxy = Proxy::unsigned(&upstream, &[]);
                proxy.signal(libc::SIGHUP);
                proxy.signal(libc::SIGTERM);
                proxy.finish()
            })
        })
        .collect();
    for run in runs {
        let (code, report) = run.join().unwrap();
        assert_eq!(code, Some(0), "{report}");
        assert!(report.contains("shutdown report: drained=true"), "{report}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn sigint_drains_as_sigterm_does() {
    let (upstream, mut begun, release) = common::holding_upstream().await;
    let mut receiver = Receiver::start(Vec::new()).await;
    let proxy = Proxy::unsigned(
        &format!("http://{upstream}"),
        &[
            "--callback-url",
            &receiver.url(),
            "--admin-listen",
            "127.0.0.1:0",
        ],
    );
    accepted(async_post(proxy.url("/hold"))).await;
    begun.recv().await.expect("the job reaches the upstream");
    proxy.signal(libc::SIGINT);
    // Draining, the job held: the admin listener says so, and new connections are refused.
    draining(proxy.admin.unwrap()).await;
    assert!(TcpStream::connect(proxy.address).await.is_err());
    let report = released(proxy, &release, &mut receiver).await;
    assert!(
        report.contains("shutdown report: drained=true jobs_finished=1 delivered=1"),
        "{report}"
    );
}

/// Until connecting to `address` is refused: the proxy has stopped accepting. Fails after 20 s.
async fn refusing(address: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(address).await.is_ok() {
        assert!(Instant::now() < deadline, "still accepting connections");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_closes_a_tunnel_only_once_the_requests_in_progress_have_finished() {
    // An upstream with both: a WebSocket-style echo, and a request it holds until told.
    let (holding, mut begun, release) = holding_router();
    let upstream = serve(holding.route("/upgrade", get(support::upgrade::echo))).await;
    let proxy = Proxy::unsigned(&format!("http://{upstream}"), &[]);
    let mut tunnel = support::upgrade::open_echo(proxy.address, "/upgrade").await;
    let held = tokio::spawn(call(
        Request::post(proxy.url("/hold"))
            .body(Full::default())
            .unwrap(),
    ));
    begun
        .recv()
        .await
        .expect("the request reaches the upstream");
    proxy.signal(libc::SIGTERM);
    refusing(proxy.address).await;
    // Stopped accepting, with a request in progress: the tunnel still carries bytes.
    let mut echoed = [0u8; 4];
    tunnel.write_all(b"ping").await.unwrap();
    tokio::time::timeout(Duration::from_secs(20), tunnel.read_exact(&mut echoed))
        .await
        .expect("echoed within 20 s")
        .expect("the tunnel is still open while a request is in progress");
    assert_eq!(&echoed, b"ping");
    // The request finishes; then the tunnel is closed, and the proxy exits.
    release.add_permits(1);
    let (status, _, body) = held.await.unwrap();
    assert_eq!((status, &body[..]), (StatusCode::OK, &b"held"[..]));
    tunnel_closes(&mut tunnel).await;
    let (code, report) = exit_and_report(proxy).await;
    assert_eq!(code, Some(0), "{report}");
}

#[tokio::test(flavor = "multi_thread")]
async fn with_no_reader_of_its_standard_output_it_serves_and_its_drain_exits_0() {
    // A pipe whose reading end is closed before the proxy starts: every line it prints (where
    // it listens, the shutdown report) fails with EPIPE. `Stdio::null()` would take them.
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let address = closed_port();
    let mut child = Command::new(BIN)
        .args([
            "--listen",
            &address.to_string(),
            "--admin-listen",
            "127.0.0.1:0",
            "--unsigned-callbacks",
            "--upstream",
            &format!("http://{}/api", axum_upstream().await),
            "--log-format",
            "json",
        ])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::from(writer))
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let errors = BufReader::new(child.stderr.take().unwrap());
    let log = std::thread::spawn(move || errors.lines().map_while(Result::ok).collect::<Vec<_>>());
    let mut proxy = Proxy::adopt(child, address);
    // It says nowhere where it listens: ask until it answers (or fail if it ended).
    let deadline = Instant::now() + Duration::from_secs(20);
    let answer = loop {
        if let Some(status) = proxy.child.try_wait().unwrap() {
            panic!("ended ({status}) before serving: {:?}", log.join().unwrap());
        }
        if let Ok(stream) = TcpStream::connect(address).await {
            drop(stream);
            break fetch(proxy.url("/hello")).await;
        }
        assert!(Instant::now() < deadline, "not serving within 20 s");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!((answer.0, &answer.2[..]), (StatusCode::OK, &b"hello"[..]));
    proxy.signal(libc::SIGTERM);
    let code = exit_code(proxy).await;
    let log = log.join().unwrap();
    assert_eq!(code, Some(0), "{log:?}");
    assert!(log.is_empty(), "{log:?}");
}
