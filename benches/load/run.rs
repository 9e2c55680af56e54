//! A run: the app and the receiver started in the chosen shape, rounds of (a) and (b), then (c),
//! and the table of the median round.

use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::routing::post;
use axum::Router;

use crate::app::{layer_builder, serve, work};
use crate::client::client;
use crate::figures::{mib, p50_p99, rate, resident_bytes};
use crate::options::{Options, Role, Shape};
use crate::phases::{phase_async, phase_memory, phase_sync, AsyncFigures, SyncFigures};
use crate::processes::ChildProcess;
use crate::receiver::{receiver_router, Received};
use crate::sides::{Side, ACCEPTED};
use crate::store::with_store;
use crate::views::{AppView, ReceiverView};

/// One round's (a) and (b).
struct Round {
    sync: SyncFigures,
    asynchronous: AsyncFigures,
    rss_after_sync: u64,
    rss_after_async: u64,
    callbacks_ratio: f64,
}

pub(crate) async fn run(options: Options) {
    let client = client(options.concurrency);

    // The receiver and the app of phases (a) and (b) (default HttpSink, default max_in_flight):
    // here, or each in a process of its own (kept until the end of the run).
    let (receiver, receiver_view, app, app_view, _children) = match options.shape {
        Shape::InProcess => {
            let received = Arc::new(Received::default());
            let receiver = serve(receiver_router(received.clone()), Side::Receiver).await;
            let layer = with_store(layer_builder(options.signatures), options.store, "load")
                .await
                .build()
                .expect("layer");
            let handle = layer.handle();
            let app = serve(
                Router::new().route("/work", post(work)).layer(layer),
                Side::App,
            )
            .await;
            let views = (ReceiverView::Local(received), AppView::Local(handle));
            (receiver, views.0, app, views.1, Vec::new())
        }
        Shape::Processes => {
            let receiver = ChildProcess::start(&options, Role::Receiver);
            let app = ChildProcess::start(&options, Role::App);
            (
                receiver.address,
                ReceiverView::Remote(receiver.address),
                app.address,
                AppView::Remote(app.address),
                vec![receiver, app],
            )
        }
    };
    println!("app on http://{app}/work, receiver on http://{receiver}/cb");

    // Rounds of (a) then (b), each ratio from two phases seconds apart: a neighbour on a shared
    // machine that slows one phase of a round does not decide the result, the median round does.
    let mut rounds = Vec::new();
    for round in 1..=options.rounds {
        println!("round {round} of {}", options.rounds);
        let rss_start = resident_bytes().unwrap_or(0);
        println!("(a) sync for {} s …", options.duration_secs);
        let sync = phase_sync(&options, &client, app, &app_view).await;
        let rss_after_sync = resident_bytes().unwrap_or(0);
        println!(
            "    {} × 200, {} other answers, {} errors in {:.2} s; VmRSS {} → {}{}",
            sync.tally.ok,
            sync.tally.other_status + sync.tally.overloaded,
            sync.tally.errors,
            sync.elapsed.as_secs_f64(),
            mib(rss_start),
            mib(rss_after_sync),
            sync.tally
                .first_error
                .as_deref()
                .map(|e| format!(" (first: {e})"))
                .unwrap_or_default()
        );

        println!(
            "(b) async for {} s, then up to {} s for the last callbacks …",
            options.duration_secs, options.drain_secs
        );
        let asynchronous =
            phase_async(&options, &client, app, &app_view, &receiver_view, receiver).await;
        let rss_after_async = resident_bytes().unwrap_or(0);
        println!(
            "    {} × 202, {} × 503 overloaded, {} other answers, {} errors in {:.2} s; \
             {} callbacks matched, {} bad signatures, receiver accepted {} connections (in-process \
             shape); VmRSS {} → {}; \
             layer metrics {}{}",
            asynchronous.tally.ok,
            asynchronous.tally.overloaded,
            asynchronous.tally.other_status,
            asynchronous.tally.errors,
            asynchronous.elapsed.as_secs_f64(),
            asynchronous.matched,
            asynchronous.bad_signatures,
            ACCEPTED[Side::Receiver as usize].load(Ordering::Relaxed),
            mib(rss_after_sync),
            mib(rss_after_async),
            asynchronous.metrics,
            asynchronous
                .tally
                .first_error
                .as_deref()
                .map(|e| format!(" (first: {e})"))
                .unwrap_or_default()
        );
        let callbacks_ratio = rate(asynchronous.delivered_in_window, asynchronous.elapsed)
            / rate(sync.tally.ok, sync.elapsed).max(1e-9);
        let app = Side::App as usize;
        let app_cpu_ratio = sync.usage.cpu[app] / asynchronous.usage.cpu[app].max(1e-9);
        println!(
            "    round {round}: callbacks/s ÷ sync req/s = {callbacks_ratio:.3}; \
             app CPU per sync request ÷ per async event = {app_cpu_ratio:.3} \
             ({:.1} / {:.1} µs); app context switches per request / event = {:.3} / {:.3}",
            sync.usage.cpu[app],
            asynchronous.usage.cpu[app],
            sync.usage.switches[app],
            asynchronous.usage.switches[app],
        );
        rounds.push(Round {
            sync,
            asynchronous,
            rss_after_sync,
            rss_after_async,
            callbacks_ratio,
        });
    }
    let all_ratios: Vec<String> = rounds
        .iter()
        .map(|round| format!("{:.3}", round.callbacks_ratio))
        .collect();
    rounds.sort_by(|a, b| a.callbacks_ratio.total_cmp(&b.callbacks_ratio));
    let Round {
        mut sync,
        mut asynchronous,
        rss_after_sync,
        rss_after_async,
        ..
    } = rounds.swap_remove(rounds.len() / 2);

    // Phase (c) reads this process's memory: the in-process shape only.
    let memory = if options.shape == Shape::InProcess && options.pending_events > 0 {
        println!(
            "(c) {} pending events (callback URL: a closed port; retry in 1 h), at most {} s …",
            options.pending_events, options.memory_secs
        );
        let memory = phase_memory(&options, &client).await;
        println!(
            "    {} accepted in {:.2} s, {} not accepted, {} waiting for their retry; \
             VmRSS {} → {}",
            memory.accepted,
            memory.send_elapsed.as_secs_f64(),
            memory.refused,
            memory.waiting,
            mib(memory.before),
            mib(memory.after),
        );
        Some(memory)
    } else {
        println!("(c) skipped (it runs in the in-process shape, with --pending-events above 0)");
        None
    };

    // The table.
    let sync_rate = rate(sync.tally.ok, sync.elapsed);
    let receipts_rate = rate(asynchronous.tally.ok, asynchronous.elapsed);
    let window_rate = rate(asynchronous.delivered_in_window, asynchronous.elapsed);
    let drained_rate = rate(asynchronous.matched, asynchronous.drained_after);
    let ratio = |value: f64| format!("{:.3}", value / sync_rate.max(1e-9));
    let per_event = memory
        .filter(|memory| memory.accepted > 0)
        .map(|memory| (memory.after as f64 - memory.before as f64) / memory.accepted as f64);
    // What the app alone pays, wherever its client and receiver run: an async event is one
    // inbound exchange and one outbound callback, so at best twice a synchronous request.
    let (app, client_side, receiver_side) = (
        Side::App as usize,
        Side::Client as usize,
        Side::Receiver as usize,
    );
    let app_cpu_ratio = sync.usage.cpu[app] / asynchronous.usage.cpu[app].max(1e-9);
    let allocations = |per: Option<(f64, f64)>| {
        per.map_or(
            "- (counted with --shape processes)".to_owned(),
            |(count, bytes)| format!("{count:.1} / {bytes:.0} B"),
        )
    };
    let rows: Vec<(String, String, String)> = vec![
        (
            "(a) sync requests/s".into(),
            format!("{sync_rate:.0}"),
            ratio(sync_rate),
        ),
        (
            "(b) receipts/s".into(),
            format!("{receipts_rate:.0}"),
            ratio(receipts_rate),
        ),
        (
            "(b) callbacks delivered/s, during the send window".into(),
            format!("{window_rate:.0}"),
            ratio(window_rate),
        ),
        (
            "(b) callbacks delivered/s, first request → last callback".into(),
            format!("{drained_rate:.0}"),
            ratio(drained_rate),
        ),
        (
            "(a) sync latency p50 / p99".into(),
            p50_p99(&mut sync.tally.latencies),
            String::new(),
        ),
        (
            "(b) receipt latency p50 / p99".into(),
            p50_p99(&mut asynchronous.tally.latencies),
            String::new(),
        ),
        (
            "(b) end-to-end latency p50 / p99 (sent → callback)".into(),
            p50_p99(&mut asynchronous.end_to_end),
            String::new(),
        ),
        (
            "(b) 503 overloaded / callbacks missing".into(),
            format!(
                "{} / {}",
                asynchronous.tally.overloaded,
                asynchronous.tally.ok - asynchronous.matched
            ),
            String::new(),
        ),
        (
            "(b) VmRSS growth over the phase, all delivered".into(),
            mib(rss_after_async.saturating_sub(rss_after_sync)),
            String::new(),
        ),
        (
            "(a) CPU per sync request: app / client".into(),
            format!(
                "{:.1} / {:.1} µs",
                sync.usage.cpu[app], sync.usage.cpu[client_side]
            ),
            String::new(),
        ),
        (
            "(b) CPU per async event: app / client / receiver".into(),
            format!(
                "{:.1} / {:.1} / {:.1} µs",
                asynchronous.usage.cpu[app],
                asynchronous.usage.cpu[client_side],
                asynchronous.usage.cpu[receiver_side]
            ),
            String::new(),
        ),
        (
            "app CPU per sync request ÷ per async event (limit 0.5)".into(),
            format!("{app_cpu_ratio:.3}"),
            String::new(),
        ),
        (
            "app CPU per async event ÷ per sync request".into(),
            format!("{:.2} ×", 1.0 / app_cpu_ratio.max(1e-9)),
            String::new(),
        ),
        (
            "(a) context switches per sync request: app / client".into(),
            format!(
                "{:.3} / {:.3}",
                sync.usage.switches[app], sync.usage.switches[client_side]
            ),
            String::new(),
        ),
        (
            "(b) context switches per async event: app / client / receiver".into(),
            format!(
                "{:.3} / {:.3} / {:.3}",
                asynchronous.usage.switches[app],
                asynchronous.usage.switches[client_side],
                asynchronous.usage.switches[receiver_side]
            ),
            String::new(),
        ),
        (
            "(a) app allocations / bytes per sync request".into(),
            allocations(sync.allocations),
            String::new(),
        ),
        (
            "(b) app allocations / bytes per async event".into(),
            allocations(asynchronous.allocations),
            String::new(),
        ),
        (
            "(c) memory per pending event".into(),
            per_event.map_or("-".into(), |b| format!("{b:.0} B")),
            String::new(),
        ),
        (
            format!("(c)   less the {} B payload", options.payload_bytes),
            per_event.map_or("-".into(), |b| {
                format!("{:.0} B", b - options.payload_bytes as f64)
            }),
            String::new(),
        ),
    ];
    let width = rows
        .iter()
        .map(|row| row.0.chars().count())
        .max()
        .unwrap_or(0);
    let value_width = rows
        .iter()
        .map(|row| row.1.chars().count())
        .max()
        .unwrap_or(0);
    let mut table = String::new();
    let _ = writeln!(
        table,
        "| {:width$} | {:>value_width$} | ÷ sync req/s |",
        "metric", "value"
    );
    let _ = writeln!(
        table,
        "|{}|{}|--------------|",
        "-".repeat(width + 2),
        "-".repeat(value_width + 2)
    );
    for (metric, value, ratio) in rows {
        let _ = writeln!(
            table,
            "| {metric:width$} | {value:>value_width$} | {ratio:>12} |"
        );
    }
    println!();
    println!(
        "The median of {} rounds (callbacks/s ÷ sync req/s by round: {}):",
        options.rounds,
        all_ratios.join(", ")
    );
    print!("{table}");
    println!(
        "callbacks/s ÷ sync req/s = {}; receipts/s ÷ sync req/s = {}; \
         app CPU per sync request ÷ per async event = {app_cpu_ratio:.3} (async ÷ sync {:.2} ×); \
         app context switches per async event = {:.3}",
        ratio(window_rate),
        ratio(receipts_rate),
        1.0 / app_cpu_ratio.max(1e-9),
        asynchronous.usage.switches[app],
    );
}
