//! `async-request-proxy`: asynchronous requests in front of any HTTP API, as one binary.
//!
//! `AsyncRequestLayer` over `proxy::Upstream`: a request with `Elements-Async-Request: true` gets
//! its `202` receipt from the proxy, the upstream's answer follows as a signed callback; every
//! other request is forwarded and streamed back as it is. Every flag can also be set from the
//! environment (`ASYNC_REQUEST_PROXY_<FLAG>`); secrets come from files or the environment only
//! (`ASYNC_REQUEST_PROXY_SIGNING_KEY`, `ASYNC_REQUEST_PROXY_STANDARD_WEBHOOKS_SECRET`,
//! `ASYNC_REQUEST_PROXY_STATUS_SECRET`), never from the command line, which `ps` shows. A bad
//! flag or file, or no key to sign callbacks with (unless `--unsigned-callbacks`): one line
//! naming it, exit code 2, nothing started. SIGTERM or SIGINT: stop accepting, drain (the admin
//! listener answering `503` from `/admin/health` meanwhile), print the shutdown report, exit 0,
//! or 3 if the drain abandoned work. SIGHUP: read `--instances` and the TLS certificate and key
//! again. Clients speak HTTP/1.1 or HTTP/2 (by ALPN over TLS, with prior knowledge in
//! cleartext); the upstream is spoken to in HTTP/1.1, or in HTTP/2 with `--upstream-http2` (a
//! gRPC server, say).

mod admin;
mod flags;
mod instances;
mod serve;
mod setup;
mod signals;
mod telemetry;
mod tls;

use std::convert::Infallible;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};

use clap::Parser;
use http::Request;
use http_body_util::Either;
use hyper::body::Incoming;
use tokio_util::sync::CancellationToken;
use tower::{ServiceBuilder, ServiceExt};
use tower_async_request::layer::ShutdownReport;
use tracing::Instrument;

use crate::flags::{Args, LogFormat};
use crate::serve::{serve, Limits};
use crate::setup::configure;
use crate::signals::{reload_on_sighup, stop_signal};

/// The target of the binary's own log lines, whichever module writes them: the one they had when
/// the binary was one file, which `RUST_LOG` directives and log collectors may name.
const LOG_TARGET: &str = "async_request_proxy";
/// Most connections the admin listener serves at once: operators and their scrapers.
const ADMIN_MAX_CONNECTIONS: usize = 64;

fn main() -> ExitCode {
    let args = match Args::try_parse() {
        Ok(args) => args,
        // --help and --version: on standard output, exit 0.
        Err(error) if !error.use_stderr() => error.exit(),
        Err(error) => return fail(2, &one_line(&error)),
    };
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if let Some(threads) = args.worker_threads {
        runtime.worker_threads(threads.into());
    }
    let runtime = match runtime.enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => return fail(1, &format!("no runtime: {error}")),
    };
    let traces = match telemetry::Traces::start(&args) {
        Ok(traces) => traces,
        Err(message) => return fail(2, &message),
    };
    init_logging(args.log_format, traces.as_ref());
    let code = runtime.block_on(run(args));
    if let Some(traces) = traces {
        // Every task dropped, and so every span closed, before the last spans are exported.
        drop(runtime);
        traces.shutdown();
    }
    code
}

fn init_logging(format: LogFormat, traces: Option<&telemetry::Traces>) {
    use std::io::IsTerminal;
    use tracing_subscriber::filter::LevelFilter;
    use tracing_subscriber::prelude::*;
    use tracing_subscriber::EnvFilter;
    // RUST_LOG chooses the log lines; the exported spans are the info ones whatever it says.
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let lines = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    // Colours for a person at a terminal (unless NO_COLOR says otherwise); none in a file, a
    // pipe or a log collector, where the escape codes would be noise.
    let lines = match std::io::stderr().is_terminal() {
        true => lines,
        false => lines.with_ansi(false),
    };
    let lines = match format {
        LogFormat::Pretty => lines.boxed(),
        LogFormat::Json => lines.json().boxed(),
    };
    tracing_subscriber::registry()
        .with(lines.with_filter(filter))
        .with(traces.map(|traces| traces.layer().with_filter(LevelFilter::INFO)))
        .init();
}

fn fail(code: u8, message: &str) -> ExitCode {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "async-request-proxy: {message}");
    ExitCode::from(code)
}

/// clap's message for a bad flag as one line, like every other refusal to start: what is wrong
/// and the flag, without the usage and the tips clap adds on lines of their own.
fn one_line(error: &clap::Error) -> String {
    let text = error.to_string();
    let said: Vec<&str> = text
        .lines()
        .map(str::trim)
        .take_while(|line| !line.starts_with("Usage:") && !line.starts_with("For more information"))
        .filter(|line| !line.is_empty() && !line.starts_with("tip:"))
        .collect();
    said.join(" ")
        .strip_prefix("error: ")
        .map_or_else(|| said.join(" "), str::to_owned)
}

/// A line on standard output, for people and for scripts. A standard output nobody reads any
/// more (its reader gone) is no reason to stop serving, nor to fail a drain: the line is lost.
fn say(line: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let _ = writeln!(std::io::stdout(), "{line}");
}

async fn run(args: Args) -> ExitCode {
    // The recorder before the layer: the layer registers its metrics when it is built.
    let prometheus = match args.admin_listen {
        Some(_) => match admin::install_recorder() {
            Ok(handle) => Some(handle),
            Err(error) => return fail(1, &format!("metrics: {error}")),
        },
        None => None,
    };
    let setup = match configure(&args).await {
        Ok(setup) => setup,
        Err(message) => return fail(2, &message),
    };
    let layer = match setup.builder.build() {
        Ok(layer) => layer,
        Err(error) => return fail(2, &error.to_string()),
    };
    let handle = layer.handle();
    let listener = match tokio::net::TcpListener::bind(args.listen).await {
        Ok(listener) => listener,
        Err(error) => return fail(2, &format!("--listen {}: {error}", args.listen)),
    };
    let admin_listener = match args.admin_listen {
        Some(address) => match tokio::net::TcpListener::bind(address).await {
            Ok(listener) => Some(listener),
            Err(error) => return fail(2, &format!("--admin-listen {address}: {error}")),
        },
        None => None,
    };

    let tunnels = setup.upstream.tunnels();
    let proxy = ServiceBuilder::new().layer(layer).service(setup.upstream);
    // The upstream's failures become the proxy's JSON answers (`502`, `504`).
    let service = tower::service_fn(move |request: Request<Incoming>| {
        let proxy = proxy.clone();
        // Each request's span, in its caller's trace (with --otlp-endpoint).
        let span = telemetry::request_span(&request);
        async move {
            Ok::<_, Infallible>(match proxy.oneshot(request).await {
                Ok(response) => response.map(Either::Left),
                Err(error) => error.into_response().map(Either::Right),
            })
        }
        .instrument(span)
    });

    // SIGTERM or SIGINT stops the main listener; the admin listener stays until the drain ends,
    // so its health check says `503` meanwhile.
    let stopping = CancellationToken::new();
    let drained = CancellationToken::new();
    let stop = match stop_signal() {
        Ok(stop) => stop,
        Err(error) => return fail(1, &format!("no signal handlers: {error}")),
    };
    tokio::spawn({
        let stopping = stopping.clone();
        async move {
            stop.await;
            stopping.cancel();
        }
    });
    let admin = match (admin_listener, prometheus) {
        (Some(listener), Some(prometheus)) => {
            let admin = admin::router(handle.clone(), prometheus);
            if let Ok(address) = listener.local_addr() {
                say(format_args!(
                    "async-request-proxy: admin on http://{address}"
                ));
            }
            let limits = Limits {
                header_read_timeout: args.header_read_timeout,
                max_connections: ADMIN_MAX_CONNECTIONS,
                tls: None,
            };
            Some(tokio::spawn(serve(
                listener,
                admin,
                limits,
                None,
                drained.clone(),
            )))
        }
        _ => None,
    };
    let acceptor = match setup.certificate.as_ref().map(tls::Certificate::acceptor) {
        Some(Ok(acceptor)) => Some(acceptor),
        Some(Err(message)) => return fail(2, &message),
        None => None,
    };
    let instances = setup
        .instances
        .map(|instances| Arc::new(Mutex::new(instances)));
    match reload_on_sighup(instances, setup.certificate) {
        Ok(reload) => drop(tokio::spawn(reload)),
        Err(error) => return fail(1, &format!("no signal handlers: {error}")),
    }

    let address = listener
        .local_addr()
        .map_or(args.listen.to_string(), |a| a.to_string());
    // On standard output, for people and for scripts that start it on port 0.
    let scheme = if acceptor.is_some() { "https" } else { "http" };
    say(format_args!(
        "async-request-proxy: listening on {scheme}://{address}, forwarding to {}",
        args.upstream
    ));
    let limits = Limits {
        header_read_timeout: args.header_read_timeout,
        max_connections: args.max_connections as usize,
        tls: acceptor,
    };
    serve(listener, service, limits, Some(tunnels), stopping).await;
    let report = handle.shutdown(args.drain_timeout).await;
    if let Some(store) = setup.postgres {
        if report.jobs_left > 0 || report.notifications_left > 0 {
            // The other proxies on the database take what is left over now, not after the
            // lease timeout.
            if let Err(error) = store.leave().await {
                tracing::warn!(target: LOG_TARGET, %error, "could not hand the work left to the other proxies; they take it over after the lease timeout");
            }
        }
    }
    drained.cancel();
    if let Some(admin) = admin {
        let _ = admin.await;
    }
    say(format_args!(
        "async-request-proxy: shutdown report: drained={} jobs_finished={} delivered={} dead={} jobs_left={} notifications_left={} persisted={}",
        report.drained,
        report.jobs_finished,
        report.delivered,
        report.dead,
        report.jobs_left,
        report.notifications_left,
        report.persisted
    ));
    if abandoned_work(&report) {
        ExitCode::from(EXIT_ABANDONED)
    } else {
        ExitCode::SUCCESS
    }
}

/// The exit code of a drain that abandoned work, for an orchestrator to tell.
const EXIT_ABANDONED: u8 = 3;

/// Whether the drain's deadline cut work off: a job still running (with a durable store its
/// event ends `failed` with `interrupted` after the next start; in memory it is lost), or a
/// notification still undelivered that no store keeps. Notifications a durable store keeps are
/// delivered after the next start: not abandoned.
fn abandoned_work(report: &ShutdownReport) -> bool {
    report.jobs_left > 0 || (report.notifications_left > 0 && !report.persisted)
}
