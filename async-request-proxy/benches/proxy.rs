//! The `async-request-proxy` binary under load, side by side with the same upstream reached
//! directly and through nginx's `proxy_pass` (not criterion: real processes, real TCP on
//! 127.0.0.1).
//!
//! ```sh
//! cargo bench -p async-request-proxy --bench proxy
//! cargo bench -p async-request-proxy --bench proxy -- --duration-secs 5 --rounds 5 --concurrency 32
//! ```
//!
//! The upstream (axum, a 1 KiB JSON answer) and the callback receiver run in this process on a
//! runtime of their own; the load client on another (one thread); the proxy (release build of
//! the binary) and nginx (`nginx`, Debian package; skipped with one line where it is not
//! installed) in processes of their own, started with generated configurations and stopped at
//! the end. Each round measures, one after the other: the upstream directly, through the proxy,
//! through nginx (sync: requests/s and p50/p99 latency), then async requests through the proxy
//! (callbacks delivered/s during the window). The table shows the median round of each, with the
//! CPU time the proxy and nginx (master and workers) spent per request in that round (Linux
//! `schedstat` of all their threads), which does not depend on how the machine's cores were
//! shared between them, the upstream and the load client, and how much of it was in user space
//! (the split of their `stat` clock ticks; the rest is the kernel's).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::routing::post;
use axum::Router;
use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

const BIN: &str = env!("CARGO_BIN_EXE_async-request-proxy");

struct Options {
    duration: Duration,
    rounds: usize,
    concurrency: usize,
}

fn options() -> Options {
    let mut options = Options {
        duration: Duration::from_secs(4),
        rounds: 3,
        concurrency: 32,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || -> u64 {
            args.next()
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("{arg} needs a number"))
        };
        match arg.as_str() {
            "--bench" => {}
            "--duration-secs" => options.duration = Duration::from_secs(value()),
            "--rounds" => options.rounds = value() as usize,
            "--concurrency" => options.concurrency = value() as usize,
            other => panic!("unknown option {other}"),
        }
    }
    options
}

/// A child process, stopped when dropped.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_for(port: u16, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "{what} did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn start_proxy(upstream: SocketAddr, receiver: SocketAddr) -> (Process, u16) {
    let port = free_port();
    // `PROXY_BENCH_BIN=path` measures another build of the binary (two builds side by side).
    let bin = std::env::var("PROXY_BENCH_BIN").unwrap_or_else(|_| BIN.to_owned());
    let child = Command::new(bin)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--upstream", &format!("http://{upstream}")])
        .args(["--callback-url", &format!("http://{receiver}/cb")])
        .env("ASYNC_REQUEST_PROXY_SIGNING_KEY", "bench-key")
        .env("RUST_LOG", "error")
        .stdout(Stdio::null())
        .spawn()
        .expect("the proxy binary");
    wait_for(port, "the proxy");
    (Process(child), port)
}

/// nginx with `proxy_pass` to `upstream` and keep-alive connections to it, like the proxy's.
fn start_nginx(upstream: SocketAddr) -> Option<(Process, u16, PathBuf)> {
    let nginx = ["/usr/sbin/nginx", "/usr/bin/nginx"]
        .into_iter()
        .find(|path| std::path::Path::new(path).exists())?;
    let port = free_port();
    let dir = std::env::temp_dir().join(format!("tar-bench-nginx-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = format!(
        "worker_processes 2;\n\
         error_log {dir}/error.log error;\n\
         pid {dir}/nginx.pid;\n\
         events {{ worker_connections 1024; }}\n\
         http {{\n\
           access_log off;\n\
           client_body_temp_path {dir}/body;\n\
           proxy_temp_path {dir}/proxy;\n\
           fastcgi_temp_path {dir}/fastcgi; uwsgi_temp_path {dir}/uwsgi; scgi_temp_path {dir}/scgi;\n\
           upstream api {{ server {upstream}; keepalive 64; }}\n\
           server {{\n\
             listen 127.0.0.1:{port};\n\
             location / {{\n\
               proxy_pass http://api;\n\
               proxy_http_version 1.1;\n\
               proxy_set_header Connection \"\";\n\
               proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;\n\
             }}\n\
           }}\n\
         }}\n",
        dir = dir.display()
    );
    std::fs::write(dir.join("nginx.conf"), config).unwrap();
    let child = Command::new(nginx)
        .args([
            "-p",
            dir.to_str().unwrap(),
            "-c",
            "nginx.conf",
            "-g",
            "daemon off;",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    wait_for(port, "nginx");
    Some((Process(child), port, dir))
}

type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// Figures of one load phase.
#[derive(Debug, Clone, Copy)]
struct Figures {
    per_second: f64,
    p50: Duration,
    p99: Duration,
    /// CPU time of the process in front of the upstream per answer.
    cpu_per_request: Option<PerAnswer>,
}

/// CPU time per answer, in microseconds: in all, and the part of it in user space.
#[derive(Debug, Clone, Copy)]
struct PerAnswer {
    all: f64,
    user: f64,
}

/// CPU time so far of every thread of `pid` and of its child processes (nginx's workers).
#[derive(Debug, Clone, Copy)]
struct Cpu {
    /// Nanoseconds, from `/proc/<pid>/task/<tid>/schedstat`.
    ns: u64,
    /// Clock ticks in user space and in the kernel, from `/proc/<pid>/task/<tid>/stat`: coarse,
    /// used only to split `ns`.
    user_ticks: u64,
    system_ticks: u64,
}

impl Cpu {
    fn of(pid: u32) -> Self {
        let mut pids = vec![pid];
        if let Ok(children) = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")) {
            pids.extend(
                children
                    .split_whitespace()
                    .filter_map(|p| p.parse::<u32>().ok()),
            );
        }
        let mut cpu = Cpu {
            ns: 0,
            user_ticks: 0,
            system_ticks: 0,
        };
        let tasks = pids
            .iter()
            .filter_map(|pid| std::fs::read_dir(format!("/proc/{pid}/task")).ok())
            .flatten()
            .filter_map(|task| task.ok());
        for task in tasks {
            let read = |name| std::fs::read_to_string(task.path().join(name)).unwrap_or_default();
            let schedstat = read("schedstat");
            cpu.ns += schedstat
                .split_whitespace()
                .next()
                .and_then(|ns| ns.parse::<u64>().ok())
                .unwrap_or(0);
            // Fields 14 and 15 (utime, stime), counted after the `(comm)` that may hold spaces.
            let stat = read("stat");
            let mut fields = stat
                .rsplit_once(')')
                .map_or("", |(_, rest)| rest)
                .split_whitespace()
                .skip(11)
                .map(|field| field.parse::<u64>().unwrap_or(0));
            cpu.user_ticks += fields.next().unwrap_or(0);
            cpu.system_ticks += fields.next().unwrap_or(0);
        }
        cpu
    }

    /// CPU time per answer since `before`, for `answers` answers.
    fn per(self, before: Cpu, answers: u64) -> PerAnswer {
        let all = (self.ns - before.ns) as f64 / 1e3 / answers.max(1) as f64;
        let user = (self.user_ticks - before.user_ticks) as f64;
        let ticks = user + (self.system_ticks - before.system_ticks) as f64;
        PerAnswer {
            all,
            user: if ticks > 0.0 { all * user / ticks } else { 0.0 },
        }
    }
}

/// `concurrency` connections sending for `duration`: requests/s and latencies (answers other
/// than `expected` are counted as failures and reported).
async fn load(
    client: &HttpClient,
    url: &str,
    asynchronous: bool,
    options: &Options,
    process: Option<u32>,
) -> (Figures, u64) {
    let cpu_before = process.map(Cpu::of);
    let expected = if asynchronous {
        StatusCode::ACCEPTED
    } else {
        StatusCode::OK
    };
    let deadline = Instant::now() + options.duration;
    let start = Instant::now();
    let tasks: Vec<_> = (0..options.concurrency)
        .map(|_| {
            let (client, url) = (client.clone(), url.to_owned());
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut failures = 0u64;
                while Instant::now() < deadline {
                    let mut request =
                        Request::post(&url).header("content-type", "application/json");
                    if asynchronous {
                        request = request.header("Elements-Async-Request", "true");
                    }
                    let sent = Instant::now();
                    match client
                        .request(request.body(Full::from("{}")).unwrap())
                        .await
                    {
                        Ok(response) => {
                            let ok = response.status() == expected;
                            let _ = response.into_body().collect().await;
                            if ok {
                                latencies.push(sent.elapsed());
                            } else {
                                failures += 1;
                            }
                        }
                        Err(_) => failures += 1,
                    }
                }
                (latencies, failures)
            })
        })
        .collect();
    let mut latencies = Vec::new();
    let mut failures = 0;
    for task in tasks {
        let (mine, failed) = task.await.unwrap();
        latencies.extend(mine);
        failures += failed;
    }
    let elapsed = start.elapsed();
    let cpu_per_request = process
        .zip(cpu_before)
        .map(|(pid, before)| Cpu::of(pid).per(before, latencies.len() as u64));
    latencies.sort_unstable();
    let at = |q: f64| {
        latencies
            .get(((latencies.len() as f64 * q) as usize).min(latencies.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    (
        Figures {
            per_second: latencies.len() as f64 / elapsed.as_secs_f64(),
            p50: at(0.5),
            p99: at(0.99),
            cpu_per_request,
        },
        failures,
    )
}

fn median(mut values: Vec<Figures>) -> Figures {
    values.sort_by(|a, b| a.per_second.total_cmp(&b.per_second));
    values[values.len() / 2]
}

/// `"12.3 µs CPU per request (5.1 in user space), "`, or nothing when not measured.
fn cpu(per: Option<PerAnswer>, what: &str) -> String {
    per.map_or_else(String::new, |per| {
        format!(
            "{:.1} µs CPU per {what} ({:.1} in user space), ",
            per.all, per.user
        )
    })
}

fn ms(duration: Duration) -> String {
    format!("{:.2} ms", duration.as_secs_f64() * 1e3)
}

fn main() {
    let options = options();
    let servers = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let callbacks = Arc::new(AtomicU64::new(0));
    let (upstream, receiver) = servers.block_on(async {
        let answer = Bytes::from(format!("{{\"data\":\"{}\"}}", "x".repeat(1014)));
        let upstream = Router::new().fallback(move || {
            let answer = answer.clone();
            async move { ([("content-type", "application/json")], answer) }
        });
        let counted = callbacks.clone();
        let receiver = Router::new().route(
            "/cb",
            post(move || {
                counted.fetch_add(1, Ordering::Relaxed);
                async { StatusCode::NO_CONTENT }
            }),
        );
        let bind = |router: Router| async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let address = listener.local_addr().unwrap();
            tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
            address
        };
        (bind(upstream).await, bind(receiver).await)
    });
    let (proxy, proxy_port) = start_proxy(upstream, receiver);
    let nginx = start_nginx(upstream);
    if nginx.is_none() {
        println!("nginx: not installed (Debian package `nginx`), so the nginx column is skipped");
    }
    let client_runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let client: HttpClient = client_runtime.block_on(async {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(options.concurrency)
            .build(connector)
    });
    // Each target's URL and the process in front of the upstream (the upstream itself runs in
    // this one).
    let targets: Vec<(&str, String, Option<u32>)> = [
        Some(("direct", format!("http://{upstream}/work"), None)),
        Some((
            "proxy",
            format!("http://127.0.0.1:{proxy_port}/work"),
            Some(proxy.0.id()),
        )),
        nginx.as_ref().map(|(process, port, _)| {
            (
                "nginx",
                format!("http://127.0.0.1:{port}/work"),
                Some(process.0.id()),
            )
        }),
    ]
    .into_iter()
    .flatten()
    .collect();
    println!(
        "{} connections, {} s per phase, {} rounds; upstream {upstream}, proxy :{proxy_port}",
        options.concurrency,
        options.duration.as_secs(),
        options.rounds
    );
    let mut sync: Vec<Vec<Figures>> = vec![Vec::new(); targets.len()];
    let mut asynchronous = Vec::new();
    client_runtime.block_on(async {
        for (_, url, _) in &targets {
            // Warm-up: connections open, caches warm.
            let warm = Options {
                duration: Duration::from_millis(500),
                ..options
            };
            load(&client, url, false, &warm, None).await;
        }
        for round in 1..=options.rounds {
            for (index, (name, url, process)) in targets.iter().enumerate() {
                let (figures, failures) = load(&client, url, false, &options, *process).await;
                println!(
                    "round {round}: {name:6} sync {:>8.0} req/s, p50 {}, p99 {}, {}{failures} failures",
                    figures.per_second,
                    ms(figures.p50),
                    ms(figures.p99),
                    cpu(figures.cpu_per_request, "request"),
                );
                sync[index].push(figures);
            }
            let before = callbacks.load(Ordering::Relaxed);
            let window = Instant::now();
            let proxy_cpu = Cpu::of(proxy.0.id());
            let (receipts, failures) = load(&client, &targets[1].1, true, &options, None).await;
            let delivered = callbacks.load(Ordering::Relaxed) - before;
            let callbacks_per_second = delivered as f64 / window.elapsed().as_secs_f64();
            // The callbacks still on their way when the window closes are counted with their
            // CPU: the window is measured up to here, both on the same clock.
            let per_event = Cpu::of(proxy.0.id()).per(proxy_cpu, delivered);
            println!(
                "round {round}: proxy  async {:>8.0} receipts/s, {callbacks_per_second:.0} callbacks/s, {}{failures} failures",
                receipts.per_second,
                cpu(Some(per_event), "event"),
            );
            asynchronous.push((callbacks_per_second, per_event));
            // Let the last callbacks land before the next round.
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
    let medians: Vec<Figures> = sync.into_iter().map(median).collect();
    asynchronous.sort_by(|a, b| a.0.total_cmp(&b.0));
    let (callbacks_per_second, per_event) = asynchronous[asynchronous.len() / 2];
    println!();
    println!(
        "| target | sync requests/s | p50 | p99 | ÷ proxy | CPU per request (in user space) |"
    );
    println!("|---|---|---|---|---|---|");
    let proxy_rate = medians[1].per_second;
    for ((name, _, _), figures) in targets.iter().zip(&medians) {
        println!(
            "| {name} | {:.0} | {} | {} | {:.2} | {} |",
            figures.per_second,
            ms(figures.p50),
            ms(figures.p99),
            figures.per_second / proxy_rate,
            figures.cpu_per_request.map_or_else(
                || "-".to_owned(),
                |per| format!("{:.1} µs ({:.1})", per.all, per.user)
            ),
        );
    }
    println!(
        "| proxy, async | {callbacks_per_second:.0} callbacks delivered/s | | | {:.2} | {:.1} µs per event ({:.1}) |",
        callbacks_per_second / proxy_rate,
        per_event.all,
        per_event.user
    );
    if let Some((process, _, dir)) = nginx {
        drop(process);
        let _ = std::fs::remove_dir_all(dir);
    }
}
