//! `async-request-proxy`: asynchronous requests in front of any HTTP API, as one binary.
//!
//! `AsyncRequestLayer` over `proxy::Upstream`: a request with `Elements-Async-Request: true` gets
//! its `202` receipt from the proxy, the upstream's answer follows as a signed callback; every
//! other request is forwarded and streamed back as it is. Every flag can also be set from the
//! environment (`ASYNC_REQUEST_PROXY_<FLAG>`); secrets come from files or the environment only
//! (`ASYNC_REQUEST_PROXY_SIGNING_KEY`, `ASYNC_REQUEST_PROXY_STANDARD_WEBHOOKS_SECRET`), never
//! from the command line, which `ps` shows. A bad flag or file: one line naming it, exit code 2,
//! nothing started. SIGTERM or SIGINT: stop accepting, drain, print the shutdown report, exit 0.
//! SIGHUP: read `--instances` and the TLS certificate and key again. Clients speak HTTP/1.1 or
//! HTTP/2 (by ALPN over TLS, with prior knowledge in cleartext); the upstream is spoken to in
//! HTTP/1.1, or in HTTP/2 with `--upstream-http2` (a gRPC server, say).

mod instances;
mod tls;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use clap::{Parser, ValueEnum};
use http::{header, Request, Response};
use http_body_util::Either;
use hyper::body::{Body, Incoming};
use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::sync::{oneshot, Semaphore};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_async_request::admin::Admin;
use tower_async_request::proxy::{ConnectionHold, PeerAddr, Tunnels, Upstream};
use tower_async_request::store::{PostgresStore, RedbStore};
use tower_async_request::{AsyncRequestLayer, AsyncRequestLayerBuilder};

const ENV_SIGNING_KEY: &str = "ASYNC_REQUEST_PROXY_SIGNING_KEY";
const ENV_WHSEC: &str = "ASYNC_REQUEST_PROXY_STANDARD_WEBHOOKS_SECRET";
/// Most connections the admin listener serves at once: operators and their scrapers.
const ADMIN_MAX_CONNECTIONS: usize = 64;

/// Asynchronous requests in front of any HTTP API.
#[derive(Debug, Parser)]
#[command(name = "async-request-proxy", version)]
struct Args {
    /// Address to serve on.
    #[arg(
        long,
        env = "ASYNC_REQUEST_PROXY_LISTEN",
        default_value = "127.0.0.1:8080"
    )]
    listen: SocketAddr,
    /// The API to forward to: an http:// or https:// URL whose path prefixes every request's.
    #[arg(long, env = "ASYNC_REQUEST_PROXY_UPSTREAM")]
    upstream: String,
    /// Speak HTTP/2 to the upstream (prior knowledge for http://, ALPN for https://): for one
    /// that speaks nothing else, a gRPC server say.
    #[arg(long, env = "ASYNC_REQUEST_PROXY_UPSTREAM_HTTP2")]
    upstream_http2: bool,
    /// For an https:// upstream whose certificate a private CA issued: a PEM file with the CA
    /// certificates to trust instead of the bundled Mozilla roots.
    #[arg(long, env = "ASYNC_REQUEST_PROXY_UPSTREAM_CA_FILE")]
    upstream_ca_file: Option<PathBuf>,
    /// Serve clients over TLS with this certificate chain (PEM, the server's certificate first);
    /// with --tls-key-file. Both are read again on SIGHUP.
    #[arg(
        long,
        env = "ASYNC_REQUEST_PROXY_TLS_CERT_FILE",
        requires = "tls_key_file"
    )]
    tls_cert_file: Option<PathBuf>,
    /// The private key of --tls-cert-file (PEM).
    #[arg(
        long,
        env = "ASYNC_REQUEST_PROXY_TLS_KEY_FILE",
        requires = "tls_cert_file"
    )]
    tls_key_file: Option<PathBuf>,
    /// Where events are recorded: memory, redb:PATH or postgres:URL.
    #[arg(long, env = "ASYNC_REQUEST_PROXY_STORE", default_value = "memory", value_parser = parse_store)]
    store: StoreArg,
    /// The default callback URL (one instance; see --instances for many).
    #[arg(long, env = "ASYNC_REQUEST_PROXY_CALLBACK_URL")]
    callback_url: Option<String>,
    /// The `instanceId` of notifications (one instance).
    #[arg(long, env = "ASYNC_REQUEST_PROXY_INSTANCE_ID", default_value_t = 0)]
    instance_id: u64,
    /// A file holding the key of `Elements-Webhook-Signature` (or set ASYNC_REQUEST_PROXY_SIGNING_KEY).
    #[arg(long, env = "ASYNC_REQUEST_PROXY_SIGNING_KEY_FILE")]
    signing_key_file: Option<PathBuf>,
    /// A file holding Standard Webhooks secrets (`whsec_…`), one per line (or set
    /// ASYNC_REQUEST_PROXY_STANDARD_WEBHOOKS_SECRET).
    #[arg(long, env = "ASYNC_REQUEST_PROXY_STANDARD_WEBHOOKS_SECRET_FILE")]
    standard_webhooks_secret_file: Option<PathBuf>,
    /// Many instances, from a TOML file, re-read on SIGHUP.
    #[arg(long, env = "ASYNC_REQUEST_PROXY_INSTANCES")]
    instances: Option<PathBuf>,
    /// A second listener for operators: /metrics, /health and the admin routes, plain HTTP, at
    /// most 64 connections, --header-read-timeout as on the main one. Off by default.
    #[arg(long, env = "ASYNC_REQUEST_PROXY_ADMIN_LISTEN")]
    admin_listen: Option<SocketAddr>,
    /// Largest body of an async request, in bytes.
    #[arg(long, env = "ASYNC_REQUEST_PROXY_MAX_BODY", default_value_t = tower_async_request::DEFAULT_MAX_REQUEST_BYTES)]
    max_body: usize,
    /// How long the upstream may take to begin its answer (e.g. 500ms, 30s, 2m).
    #[arg(long, env = "ASYNC_REQUEST_PROXY_UPSTREAM_TIMEOUT", default_value = "60s", value_parser = parse_timeout)]
    upstream_timeout: Duration,
    /// How long an upgraded connection (a WebSocket) may carry no byte either way before it is
    /// closed: an idle one holds its place under --max-connections.
    #[arg(long, env = "ASYNC_REQUEST_PROXY_TUNNEL_IDLE_TIMEOUT", default_value = "5m", value_parser = parse_timeout)]
    tunnel_idle_timeout: Duration,
    /// How long a client may take to send a request's head, and how long a kept-alive
    /// connection may wait for its next request; then the connection is closed.
    #[arg(long, env = "ASYNC_REQUEST_PROXY_HEADER_READ_TIMEOUT", default_value = "30s", value_parser = parse_timeout)]
    header_read_timeout: Duration,
    /// How long an async request's body may take to arrive in full (then `408
    /// request_body_timeout`).
    #[arg(long, env = "ASYNC_REQUEST_PROXY_REQUEST_BODY_TIMEOUT", default_value = "60s", value_parser = parse_timeout)]
    request_body_timeout: Duration,
    /// Most client connections open at once, upgraded ones (WebSockets) included; at the limit,
    /// new ones wait in the listen backlog until one closes. Each takes a file descriptor, and
    /// an upgraded one a second towards the upstream: keep it under `ulimit -n`.
    #[arg(long, env = "ASYNC_REQUEST_PROXY_MAX_CONNECTIONS", default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..))]
    max_connections: u32,
    /// Threads serving connections, jobs and callbacks (default: one per CPU core).
    #[arg(long, env = "ASYNC_REQUEST_PROXY_WORKER_THREADS", value_parser = clap::value_parser!(u16).range(1..))]
    worker_threads: Option<u16>,
    /// How long a shutdown waits for jobs and callbacks.
    #[arg(long, env = "ASYNC_REQUEST_PROXY_DRAIN_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    drain_timeout: Duration,
    /// Let request-supplied callback URLs reach private and loopback addresses (development).
    #[arg(long, env = "ASYNC_REQUEST_PROXY_ALLOW_PRIVATE_CALLBACKS")]
    allow_private_callbacks: bool,
    /// Log lines as text for people, or JSON for collectors (filter with RUST_LOG).
    #[arg(long, env = "ASYNC_REQUEST_PROXY_LOG_FORMAT", value_enum, default_value_t = LogFormat::Pretty)]
    log_format: LogFormat,
}

#[derive(Debug, Clone)]
enum StoreArg {
    Memory,
    Redb(PathBuf),
    Postgres(String),
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Pretty,
    Json,
}

fn parse_store(text: &str) -> Result<StoreArg, String> {
    match text.split_once(':') {
        None if text == "memory" => Ok(StoreArg::Memory),
        Some(("redb", path)) if !path.is_empty() => Ok(StoreArg::Redb(path.into())),
        Some(("postgres", _)) => Ok(StoreArg::Postgres(text.to_owned())),
        _ => Err("memory, redb:PATH or postgres:URL".to_owned()),
    }
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or("a number with a unit: 500ms, 30s, 2m")?;
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| "a number with a unit: 500ms, 30s, 2m")?;
    match unit {
        "ms" => Ok(Duration::from_millis(number)),
        "s" => Ok(Duration::from_secs(number)),
        "m" => Ok(Duration::from_secs(number * 60)),
        _ => Err("a number with a unit: 500ms, 30s, 2m".to_owned()),
    }
}

/// A duration longer than zero.
fn parse_timeout(text: &str) -> Result<Duration, String> {
    match parse_duration(text)? {
        Duration::ZERO => Err("longer than zero: 500ms, 30s, 2m".to_owned()),
        duration => Ok(duration),
    }
}

/// A secret file's contents, without the trailing newline editors add.
pub(crate) fn secret_file(path: &Path, flag: &str) -> Result<Vec<u8>, String> {
    let mut bytes =
        std::fs::read(path).map_err(|error| format!("--{flag} {}: {error}", path.display()))?;
    while bytes.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
        bytes.pop();
    }
    if bytes.is_empty() {
        return Err(format!("--{flag} {}: the file is empty", path.display()));
    }
    Ok(bytes)
}

fn main() -> ExitCode {
    // clap prints a bad flag with its usage and exits with 2.
    let args = Args::parse();
    init_logging(args.log_format);
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if let Some(threads) = args.worker_threads {
        runtime.worker_threads(threads.into());
    }
    let runtime = match runtime.enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => return fail(1, &format!("no runtime: {error}")),
    };
    runtime.block_on(run(args))
}

fn init_logging(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Pretty => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn fail(code: u8, message: &str) -> ExitCode {
    eprintln!("async-request-proxy: {message}");
    ExitCode::from(code)
}

/// Everything the flags and files say, checked before anything starts.
struct Setup {
    builder: AsyncRequestLayerBuilder,
    instances: Option<instances::Instances>,
    upstream: Upstream,
    certificate: Option<Arc<tls::Certificate>>,
}

async fn configure(args: &Args) -> Result<Setup, String> {
    let certificate = match (&args.tls_cert_file, &args.tls_key_file) {
        (Some(cert), Some(key)) => Some(tls::Certificate::load(cert, key)?),
        _ => None,
    };
    let mut upstream = Upstream::new(&args.upstream)
        .map_err(|error| format!("--upstream: {error}"))?
        .timeout(args.upstream_timeout)
        .tunnel_idle_timeout(args.tunnel_idle_timeout)
        .client_tls(certificate.is_some());
    if args.upstream_http2 {
        upstream = upstream
            .http2()
            .map_err(|error| format!("--upstream-http2: {error}"))?;
    }
    if let Some(path) = &args.upstream_ca_file {
        let flag = |error: &dyn std::fmt::Display| {
            format!("--upstream-ca-file {}: {error}", path.display())
        };
        let pem = std::fs::read(path).map_err(|error| flag(&error))?;
        upstream = upstream
            .ca_certificates_pem(&pem)
            .map_err(|error| flag(&error))?;
    }
    let mut builder = AsyncRequestLayer::builder()
        .max_request_bytes(args.max_body)
        .request_body_timeout(args.request_body_timeout)
        .allow_private_callbacks(args.allow_private_callbacks);
    if args.admin_listen.is_some() {
        // Operators look delivered events up too, with their attempts.
        builder = builder.status_retention(tower_async_request::DEFAULT_STATUS_RETENTION);
    }
    let instances = match &args.instances {
        Some(path) => {
            if args.callback_url.is_some()
                || args.signing_key_file.is_some()
                || args.standard_webhooks_secret_file.is_some()
            {
                return Err("--instances: callback URLs and keys then come from the file, not from --callback-url, --signing-key-file or --standard-webhooks-secret-file".into());
            }
            let instances = instances::Instances::start(path)?;
            builder = builder.instances(instances.map());
            Some(instances)
        }
        None => {
            builder = builder.instance_id(args.instance_id);
            if let Some(url) = &args.callback_url {
                builder = builder.default_callback_url(url.clone());
            }
            let key = match &args.signing_key_file {
                Some(path) => Some(secret_file(path, "signing-key-file")?),
                None => std::env::var(ENV_SIGNING_KEY).ok().map(String::into_bytes),
            };
            if let Some(key) = key {
                builder = builder.signing_key(key);
            }
            let secrets = match &args.standard_webhooks_secret_file {
                Some(path) => {
                    String::from_utf8(secret_file(path, "standard-webhooks-secret-file")?)
                        .map_err(|_| "--standard-webhooks-secret-file: not UTF-8 text".to_owned())?
                }
                None => std::env::var(ENV_WHSEC).unwrap_or_default(),
            };
            for secret in secrets.lines().map(str::trim).filter(|s| !s.is_empty()) {
                builder = builder.standard_webhooks_secret(secret);
            }
            None
        }
    };
    builder = match &args.store {
        StoreArg::Memory => builder,
        StoreArg::Redb(path) => builder.store(
            RedbStore::open(path)
                .map_err(|error| format!("--store redb:{}: {error}", path.display()))?,
        ),
        StoreArg::Postgres(url) => builder.store(
            PostgresStore::connect(url.clone())
                .await
                .map_err(|error| format!("--store postgres: {error}"))?,
        ),
    };
    Ok(Setup {
        builder,
        instances,
        upstream,
        certificate,
    })
}

async fn run(args: Args) -> ExitCode {
    // The recorder before the layer: the layer registers its metrics when it is built.
    let prometheus = match args.admin_listen {
        Some(_) => match metrics_exporter_prometheus::PrometheusBuilder::new().install_recorder() {
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
        async move {
            Ok::<_, Infallible>(match proxy.oneshot(request).await {
                Ok(response) => response.map(Either::Left),
                Err(error) => error.into_response().map(Either::Right),
            })
        }
    });

    // SIGTERM or SIGINT stops both listeners.
    let stopping = CancellationToken::new();
    tokio::spawn({
        let stopping = stopping.clone();
        async move {
            stop_signal().await;
            stopping.cancel();
        }
    });
    let admin = match (admin_listener, prometheus) {
        (Some(listener), Some(prometheus)) => {
            let admin = Router::new()
                .route(
                    "/metrics",
                    axum::routing::get(move || std::future::ready(prometheus.render())),
                )
                .fallback_service(Admin::new(handle.clone()));
            if let Ok(address) = listener.local_addr() {
                println!("async-request-proxy: admin on http://{address}");
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
                stopping.clone(),
            )))
        }
        _ => None,
    };
    let acceptor = match setup.certificate.as_ref().map(tls::Certificate::acceptor) {
        Some(Ok(acceptor)) => Some(acceptor),
        Some(Err(message)) => return fail(2, &message),
        None => None,
    };
    if setup.instances.is_some() || setup.certificate.is_some() {
        tokio::spawn(reload_on_sighup(
            setup
                .instances
                .map(|instances| Arc::new(Mutex::new(instances))),
            setup.certificate,
        ));
    }

    let address = listener
        .local_addr()
        .map_or(args.listen.to_string(), |a| a.to_string());
    // On standard output, for people and for scripts that start it on port 0.
    let scheme = if acceptor.is_some() { "https" } else { "http" };
    println!(
        "async-request-proxy: listening on {scheme}://{address}, forwarding to {}",
        args.upstream
    );
    let limits = Limits {
        header_read_timeout: args.header_read_timeout,
        max_connections: args.max_connections as usize,
        tls: acceptor,
    };
    serve(listener, service, limits, Some(tunnels), stopping).await;
    if let Some(admin) = admin {
        let _ = admin.await;
    }
    let report = handle.shutdown(args.drain_timeout).await;
    println!(
        "async-request-proxy: shutdown report: drained={} jobs_finished={} delivered={} dead={} jobs_left={} notifications_left={} persisted={}",
        report.drained,
        report.jobs_finished,
        report.delivered,
        report.dead,
        report.jobs_left,
        report.notifications_left,
        report.persisted
    );
    ExitCode::SUCCESS
}

/// What a client connection may take, and how it is spoken to.
struct Limits {
    /// Also the time a client has to complete a TLS handshake and send its first bytes, and
    /// the longest an HTTP/2 connection is kept without a new request (up to twice it).
    header_read_timeout: Duration,
    max_connections: usize,
    tls: Option<TlsAcceptor>,
}

/// Serves `service` on every connection `listener` accepts until `stopping`, then stops
/// accepting, waits for the connections to finish what they started (idle ones close now) and
/// closes the `tunnels` of upgraded ones.
///
/// hyper's own HTTP/1.1 and HTTP/2 connections, each told its peer's address: every request
/// through the proxy pays for what sits between the socket and the layer, so nothing else does
/// (a router, a body boxed on the way in and again on the way out).
async fn serve<S, B>(
    listener: tokio::net::TcpListener,
    service: S,
    limits: Limits,
    tunnels: Option<Tunnels>,
    stopping: CancellationToken,
) where
    S: Service<Request<Incoming>, Response = Response<B>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    // hyper's own connections, HTTP/1.1 or HTTP/2: which one is known before either starts
    // (TLS's ALPN, or the first bytes of a cleartext connection read under a timeout).
    let mut h1 = http1::Builder::new();
    h1.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    let mut h2 = http2::Builder::new(TokioExecutor::new());
    h2.timer(TokioTimer::new())
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        .max_header_list_size(MAX_HEADER_LIST_SIZE)
        // A peer that stops answering pings is gone.
        .keep_alive_interval(limits.header_read_timeout);
    let (h1, h2) = (Arc::new(h1), Arc::new(h2));
    let idle_timeout = limits.header_read_timeout;
    // Each connection holds a place until it ends; an upgraded one, until its tunnel closes.
    let open = Arc::new(Semaphore::new(limits.max_connections));
    // One sender per connection, to tell it to finish: a channel of its own, which costs a
    // connection nothing to watch (a token shared by all would be a lock on every poll).
    let mut stops: Vec<oneshot::Sender<()>> = Vec::new();
    let mut kept = 64;
    let mut full = false;
    loop {
        // At the limit, accept nothing until a connection ends: new ones wait in the backlog.
        if open.available_permits() == 0 && !full {
            tracing::warn!(
                max_connections = limits.max_connections,
                "at the connection limit; new connections wait until one closes"
            );
        }
        full = open.available_permits() == 0;
        let place = tokio::select! {
            place = open.clone().acquire_owned() => place.expect("the semaphore is never closed"),
            () = stopping.cancelled() => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors, say: wait a little rather than spin.
                    tracing::warn!(%error, "could not accept a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = stopping.cancelled() => break,
        };
        let _ = stream.set_nodelay(true);
        let place = Arc::new(place);
        let service = service.clone();
        let (h1, h2, tls) = (h1.clone(), h2.clone(), limits.tls.clone());
        let (stop, mut stopping) = oneshot::channel();
        stops.push(stop);
        if stops.len() >= 2 * kept {
            // Forget the connections that ended (their receivers are gone).
            stops.retain(|stop| !stop.is_closed());
            kept = stops.len().max(64);
        }
        tokio::spawn(async move {
            // The TLS handshake and the first bytes have the time a request head has.
            let opened = tokio::time::timeout(idle_timeout, open_connection(stream, tls)).await;
            let (io, protocol) = match opened {
                Ok(Ok(opened)) => opened,
                Ok(Err(error)) => {
                    tracing::debug!(%error, %peer, "connection not opened");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "no TLS handshake or first bytes within --header-read-timeout");
                    return;
                }
            };
            let io = TokioIo::new(io);
            let ended = match protocol {
                Protocol::Http1 => {
                    let answer = answer(service, peer, Some(place.clone()), None);
                    let connection = h1.serve_connection(io, answer).with_upgrades();
                    let mut connection = std::pin::pin!(connection);
                    tokio::select! {
                        biased;
                        ended = connection.as_mut() => ended,
                        _ = stopping => {
                            // Finish the request in progress, if any, then close.
                            connection.as_mut().graceful_shutdown();
                            connection.await
                        }
                    }
                }
                Protocol::Http2 => {
                    // Without a new request for the idle timeout, it is closed (HTTP/1.1's
                    // header read timer does this for HTTP/1.1).
                    let begun = Arc::new(AtomicU64::new(0));
                    let answer = answer(service, peer, None, Some(begun.clone()));
                    let connection = h2.serve_connection(io, answer);
                    let mut connection = std::pin::pin!(connection);
                    tokio::select! {
                        biased;
                        ended = connection.as_mut() => ended,
                        _ = &mut stopping => {
                            connection.as_mut().graceful_shutdown();
                            connection.await
                        }
                        () = no_new_request(&begun, idle_timeout) => {
                            // Streams in progress finish; then it closes.
                            connection.as_mut().graceful_shutdown();
                            connection.await
                        }
                    }
                }
            };
            if let Err(error) = ended {
                tracing::debug!(%error, %peer, "connection ended with an error");
            }
            drop(place);
        });
    }
    drop(listener);
    for stop in stops {
        let _ = stop.send(());
    }
    if let Some(tunnels) = tunnels {
        // Upgraded connections have nothing to finish that the proxy can see.
        tunnels.close().await;
    }
    // Every place back: every connection has ended.
    let _all = open.acquire_many(limits.max_connections as u32).await;
}

/// What answers each request of a connection from `peer`: `service`, the request told its
/// peer's address and, should it ask to upgrade (HTTP/1.1), given `hold` for its tunnel to keep;
/// counted in `begun` (HTTP/2's idle rule).
fn answer<S, B>(
    service: S,
    peer: SocketAddr,
    hold: Option<Arc<tokio::sync::OwnedSemaphorePermit>>,
    begun: Option<Arc<AtomicU64>>,
) -> impl hyper::service::Service<
    Request<Incoming>,
    Response = Response<B>,
    Error = Infallible,
    Future = tower::util::Oneshot<S, Request<Incoming>>,
>
where
    S: Service<Request<Incoming>, Response = Response<B>, Error = Infallible> + Clone,
    B: Body,
{
    hyper::service::service_fn(move |mut request: Request<Incoming>| {
        if let Some(begun) = &begun {
            begun.fetch_add(1, Ordering::Relaxed);
        }
        request.extensions_mut().insert(PeerAddr(peer));
        if let Some(hold) = &hold {
            if request.headers().contains_key(header::UPGRADE) {
                // Should it become a tunnel, the tunnel keeps the connection's place.
                request
                    .extensions_mut()
                    .insert(ConnectionHold::new(hold.clone()));
            }
        }
        service.clone().oneshot(request)
    })
}

/// Most requests in progress at once on one HTTP/2 connection (nginx's default).
const MAX_CONCURRENT_STREAMS: u32 = 128;
/// Largest request head on an HTTP/2 connection, decoded (hyper's HTTP/1.1 limit is close).
const MAX_HEADER_LIST_SIZE: u32 = 64 * 1024;
/// How an HTTP/2 client with prior knowledge opens its connection (RFC 9113 §3.4).
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The protocol of a client connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protocol {
    Http1,
    Http2,
}

/// TLS, when the listener has it, then which protocol the client speaks: by ALPN over TLS; in
/// cleartext, HTTP/2 when its first bytes are HTTP/2's preface (read without taking them).
async fn open_connection(
    stream: tokio::net::TcpStream,
    tls: Option<TlsAcceptor>,
) -> std::io::Result<(tls::MaybeTls, Protocol)> {
    if let Some(tls) = tls {
        let stream = tls.accept(stream).await?;
        let protocol = match stream.get_ref().1.alpn_protocol() {
            Some(b"h2") => Protocol::Http2,
            _ => Protocol::Http1,
        };
        return Ok((tls::MaybeTls::Right(stream), protocol));
    }
    let mut first = [0u8; H2_PREFACE.len()];
    let protocol = loop {
        let read = stream.peek(&mut first).await?;
        if read == 0 || first[..read] != H2_PREFACE[..read] {
            break Protocol::Http1;
        }
        if read == H2_PREFACE.len() {
            break Protocol::Http2;
        }
        // Part of the preface so far: peeking again at once would find the same bytes.
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    Ok((tls::MaybeTls::Left(stream), protocol))
}

/// Ends once `timeout` has passed without a new request counted in `begun`; checked once per
/// `timeout`, so within two of them.
async fn no_new_request(begun: &AtomicU64, timeout: Duration) {
    let mut seen = begun.load(Ordering::Relaxed);
    loop {
        tokio::time::sleep(timeout).await;
        let now = begun.load(Ordering::Relaxed);
        if now == seen {
            return;
        }
        seen = now;
    }
}

/// SIGTERM or SIGINT.
async fn stop_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    tracing::info!("stopping: no new connections; draining");
}

async fn reload_on_sighup(
    instances: Option<Arc<Mutex<instances::Instances>>>,
    certificate: Option<Arc<tls::Certificate>>,
) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut hangups) = signal(SignalKind::hangup()) else {
        return;
    };
    while hangups.recv().await.is_some() {
        if let Some(instances) = &instances {
            let result = instances
                .lock()
                .unwrap_or_else(|poison| poison.into_inner())
                .reload();
            match result {
                Ok(count) => tracing::info!(instances = count, "instances file read again"),
                Err(message) => {
                    tracing::error!(%message, "instances file not applied; the instances stay as they were")
                }
            }
        }
        if let Some(certificate) = &certificate {
            match certificate.reload() {
                Ok(()) => tracing::info!("TLS certificate and key read again"),
                Err(message) => {
                    tracing::error!(%message, "TLS files not applied; the certificate stays as it was")
                }
            }
        }
    }
}
