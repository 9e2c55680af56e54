//! Load harness (not criterion): real TCP on 127.0.0.1, an app behind `AsyncRequestLayer`, a
//! callback receiver and a pooled keep-alive client, all in this process.
//!
//! ```sh
//! cargo bench --bench load                                   # defaults, well under 2 minutes
//! cargo bench --bench load -- --duration-secs 3 --pending-events 20000
//! cargo bench --features redb --bench load -- --store redb
//! cargo bench --bench load -- --shape processes               # app, client, receiver: 3 processes
//! cargo bench --bench load -- --shape processes --rate 200    # paced, 200 requests/events per s
//! ```
//!
//! `--shape processes` is the shape of a deployment: the harness (the client) starts this same
//! binary twice more, as the app (`--role app`) and the receiver (`--role receiver`), each in a
//! process of its own, and stops them at the end. Per side it reports CPU time and context
//! switches from `/proc/<pid>/task/*`, and the app's allocations and bytes allocated per request
//! and per event (a counting allocator in this binary, counting in the app's process only).
//! `LOAD_APP_WRAPPER="heaptrack -o /tmp/app"` (or `perf record -g -o … --`) runs the app under a
//! profiler. Phase (c) runs in the in-process shape only.
//!
//! Phases, each bounded by a count and a time, so the run ends by itself. (a) and (b) run
//! `--rounds` times, alternately, and the table shows the round whose callbacks/s ÷ sync req/s is
//! the median (every round's ratio is printed too): on a machine shared with other tenants, a
//! neighbour that slows one phase then moves one round, not the result.
//!
//! - (a) sync: `POST /work` without the async header for `--duration-secs`: requests/s, latency.
//! - (b) async: the same route with `Elements-Async-Request: true` and a callback URL naming the
//!   receiver, for `--duration-secs`: receipts/s, receipt latency p50/p99, callbacks delivered/s
//!   and end-to-end latency (request sent → callback received, matched by eventId) p50/p99. The
//!   run then waits (at most `--drain-secs`) for the callbacks still on their way.
//! - (c) memory per pending event: a second app whose callback URL is a closed port on 127.0.0.1,
//!   `retry_schedule([1 h])`, `max_in_flight(200_000)`. `--pending-events` async requests each fail
//!   their first delivery and wait; VmRSS (from /proc/self/status) after minus before, divided by
//!   the events, less the payload each one carries.
//!
//! Options are `--name value` arguments or environment variables (arguments win):
//! `--shape in-process|processes` / `LOAD_SHAPE` (in-process), `--rate` / `LOAD_RATE` (requests or
//! events per second over all connections, 0 for as many as the app takes; default 0),
//! `--concurrency` / `LOAD_CONCURRENCY` (client tasks, default 32), `--rounds` / `LOAD_ROUNDS` (3),
//! `--duration-secs` / `LOAD_DURATION_SECS` (of each phase (a) and (b) in a round, 4),
//! `--payload-bytes` / `LOAD_PAYLOAD_BYTES` (1024), `--pending-events` /
//! `LOAD_PENDING_EVENTS` (100000), `--store memory|redb` / `LOAD_STORE` (memory; redb needs
//! `--features redb`), `--signatures both|elements` / `LOAD_SIGNATURES` (both: the Elements and the
//! Standard Webhooks signature on every callback, the default; elements: the first only),
//! `--threads` / `LOAD_THREADS` (runtime worker threads, default the number of
//! CPUs), `--max-requests` / `LOAD_MAX_REQUESTS` (per phase, 10000000), `--drain-secs` /
//! `LOAD_DRAIN_SECS` (10), `--memory-secs` / `LOAD_MEMORY_SECS` (time cap of phase (c), 45).
//!
//! The app (`--threads` workers), the client (1 thread) and the receiver (1 thread) run on tokio
//! runtimes of their own and compete for the same cores: every rate is what the app achieves
//! while also paying for its load generator and its receiver, a lower bound for the app alone.
//! Because each runtime's threads are known, the CPU time of each side is counted apart
//! (`/proc/self/task/*/schedstat`): the table also gives CPU per request and per event for the
//! app, the client and the receiver, and the app's own ratio (CPU per sync request ÷ CPU per
//! async event, at best 0.5), which does not depend on where the client and receiver run.

mod app;
mod client;
mod figures;
mod options;
mod phases;
mod processes;
mod receiver;
mod run;
mod sides;
mod store;
mod views;

use std::process::ExitCode;
use std::time::Instant;

use crate::options::Options;
use crate::processes::child_main;
use crate::run::run;
use crate::sides::{Side, RUNTIMES};
#[cfg(feature = "postgres")]
use crate::store::drop_schemas;
use crate::store::STORE_FILES;

#[path = "../support/counting_alloc.rs"]
mod counting_alloc;

/// Counts only in the app's own process (`--shape processes`); see `counting_alloc`.
#[global_allocator]
static ALLOCATOR: counting_alloc::Counting = counting_alloc::Counting;

fn main() -> ExitCode {
    let options = match Options::parse() {
        Ok(options) => options,
        Err(message) => {
            eprintln!("{message}");
            return ExitCode::from(2);
        }
    };
    if let Some(role) = options.role {
        return child_main(options, role);
    }
    println!("reproduce: {}", options.command_line());
    println!(
        "NOTE: the app ({} worker threads), the client ({} tasks, 1 thread) and the callback \
         receiver (1 thread) run on tokio runtimes of their own, so the CPU time of each is \
         counted apart, but they share the machine's {} CPU(s): the load generator and the \
         receiver compete with the app for the same cores, so every rate is a lower bound for \
         the app alone. Loopback TCP only (127.0.0.1). Payload: {} B of JSON, echoed by the \
         endpoint; signatures: {:?}; store: {:?}.",
        options.threads,
        options.concurrency,
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        options.payload_bytes,
        options.signatures,
        options.store,
    );
    let runtime = Side::App.build_runtime(options.threads);
    let _ = RUNTIMES.set([
        Side::Client.build_runtime(1),
        Side::Receiver.build_runtime(1),
    ]);
    let started = Instant::now();
    runtime.block_on(run(options));
    // Phase (c) leaves its events waiting an hour for their retry: do not wait for them.
    runtime.shutdown_background();
    for path in STORE_FILES.lock().unwrap().drain(..) {
        let _ = std::fs::remove_file(path);
    }
    #[cfg(feature = "postgres")]
    drop_schemas();
    println!("total {:.1} s", started.elapsed().as_secs_f64());
    ExitCode::SUCCESS
}
