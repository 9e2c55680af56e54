//! What the layer costs a synchronous request, counted in instructions: unlike time, the count
//! depends neither on the machine's other tenants nor on where a process lands in memory (timed
//! ratios of one binary moved 1.05–1.13 × from process to process here).
//!
//! `cargo bench --bench passthrough_instructions` (needs valgrind; without it, says so and stops)
//!
//! The bench runs itself under callgrind for each service at 1 000 and at 11 000 calls and reports
//! (I₁₁₀₀₀ − I₁₀₀₀) ÷ 10 000 per call, so start-up and set-up cancel out. The services and the
//! request are those of `passthrough`.

use std::process::Command;

use axum::body::Body;
use tower::{Layer, Service};
use tower_async_request::layer::RequestBody;

#[path = "support/sync_path.rs"]
mod sync_path;
use sync_path::{handler, layer, now, request, routers};

const SERVICES: [&str; 5] = [
    "service_fn_bare",
    "service_fn_layered",
    "axum_bare",
    "axum_noop_layer",
    "axum_layered",
];

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.as_slice() {
        [service, calls] if SERVICES.contains(&service.as_str()) => {
            run(service, calls.parse().expect("a number of calls"))
        }
        // `cargo bench` passes `--bench`, and filters may follow.
        _ => measure(),
    }
}

/// Calls one service `calls` times, for callgrind to count.
fn run(service: &str, calls: u32) {
    fn calls_of<S>(mut service: S, calls: u32)
    where
        S: Service<http::Request<Body>>,
        S::Error: std::fmt::Debug,
    {
        for _ in 0..calls {
            std::hint::black_box(now(service.call(request())).unwrap());
        }
    }
    match service {
        "service_fn_bare" => calls_of(tower::service_fn(handler::<Body>), calls),
        "service_fn_layered" => calls_of(
            layer().layer(tower::service_fn(handler::<RequestBody<Body>>)),
            calls,
        ),
        "axum_bare" => calls_of(routers().bare, calls),
        "axum_noop_layer" => calls_of(routers().noop, calls),
        "axum_layered" => calls_of(routers().layered, calls),
        other => unreachable!("{other} is not in SERVICES"),
    }
}

/// Instructions per call of `service`, or `None` without a working valgrind.
fn per_call(service: &str) -> Option<u64> {
    let exe = std::env::current_exe().expect("the bench's own path");
    let count = |calls: u32| -> Option<u64> {
        let output = Command::new("valgrind")
            .args(["--tool=callgrind", "--callgrind-out-file=/dev/null"])
            .arg(&exe)
            .args([service, &calls.to_string()])
            .output()
            .ok()?;
        if !output.status.success() {
            return None;
        }
        // "==123== Collected : 11058103", the total of instructions executed.
        String::from_utf8_lossy(&output.stderr)
            .lines()
            .find_map(|line| line.split_once("Collected :"))
            .and_then(|(_, count)| count.trim().parse().ok())
    };
    Some((count(11_000)? - count(1_000)?) / 10_000)
}

fn measure() {
    let mut counts = Vec::new();
    for service in SERVICES {
        let Some(count) = per_call(service) else {
            println!(
                "passthrough_instructions: valgrind (callgrind) is not available; nothing measured"
            );
            return;
        };
        println!("passthrough_instructions/{service}: {count} instructions per call");
        counts.push(count as f64);
    }
    let ratio = |layered: usize, bare: usize| counts[layered] / counts[bare];
    println!(
        "passthrough_instructions: service_fn layered \u{f7} bare = {:.3}; axum layered \u{f7} bare = {:.3}; \
         axum layered \u{f7} no-op layer = {:.3}",
        ratio(1, 0),
        ratio(4, 2),
        ratio(4, 3)
    );
}
