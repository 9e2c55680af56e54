//! The command line: every flag, each also read from `ASYNC_REQUEST_PROXY_<FLAG>`, and the
//! parsers of its values. A bad one: clap prints it with the usage and exits with 2.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::builder::RangedU64ValueParser;
use clap::{Parser, ValueEnum};
use tower_async_request::delivery::circuit::DEFAULT_CIRCUIT_FAILURES;
use tower_async_request::delivery::receivers::DEFAULT_MAX_CONNECTIONS_PER_RECEIVER;

/// The library's bound on `max_connections_per_receiver`: refused here already, naming the flag.
const MAX_CONNECTIONS_PER_RECEIVER: u64 = 1 << 20;

/// Asynchronous requests in front of any HTTP API.
#[derive(Debug, Parser)]
#[command(name = "async-request-proxy", version)]
pub(crate) struct Args {
    /// Address to serve on.
    #[arg(
        long,
        env = "ASYNC_REQUEST_PROXY_LISTEN",
        default_value = "127.0.0.1:8080"
    )]
    pub(crate) listen: SocketAddr,
    /// The API to forward to: an http:// or https:// URL whose path prefixes every request's.
    #[arg(long, env = "ASYNC_REQUEST_PROXY_UPSTREAM")]
    pub(crate) upstream: String,
    /// Speak HTTP/2 to the upstream (prior knowledge for http://, ALPN for https://): for one
    /// that speaks nothing else, a gRPC server say.
    #[arg(long, env = "ASYNC_REQUEST_PROXY_UPSTREAM_HTTP2")]
    pub(crate) upstream_http2: bool,
    /// For an https:// upstream whose certificate a private CA issued: a PEM file with the CA
    /// certificates to trust instead of the bundled Mozilla roots.
    #[arg(long, env = "ASYNC_REQUEST_PROXY_UPSTREAM_CA_FILE")]
    pub(crate) upstream_ca_file: Option<PathBuf>,
    /// Serve clients over TLS with this certificate chain (PEM, the server's certificate first);
    /// with --tls-key-file. Both are read again on SIGHUP.
    #[arg(
        long,
        env = "ASYNC_REQUEST_PROXY_TLS_CERT_FILE",
        requires = "tls_key_file"
    )]
    pub(crate) tls_cert_file: Option<PathBuf>,
    /// The private key of --tls-cert-file (PEM).
    #[arg(
        long,
        env = "ASYNC_REQUEST_PROXY_TLS_KEY_FILE",
        requires = "tls_cert_file"
    )]
    pub(crate) tls_key_file: Option<PathBuf>,
    /// Where events are recorded: memory, redb:PATH or postgres:URL.
    #[arg(long, env = "ASYNC_REQUEST_PROXY_STORE", default_value = "memory", value_parser = parse_store)]
    pub(crate) store: StoreArg,
    /// With --store postgres: the schema the tables live in, created if missing (lower-case
    /// letters, digits and `_`): proxies of different apps can share one database.
    #[arg(long, env = "ASYNC_REQUEST_PROXY_POSTGRES_SCHEMA", value_name = "NAME", default_value = tower_async_request::store::DEFAULT_SCHEMA, value_parser = parse_schema)]
    pub(crate) postgres_schema: String,
    /// The default callback URL (one instance; see --instances for many).
    #[arg(long, env = "ASYNC_REQUEST_PROXY_CALLBACK_URL")]
    pub(crate) callback_url: Option<String>,
    /// The `instanceId` of notifications (one instance).
    #[arg(long, env = "ASYNC_REQUEST_PROXY_INSTANCE_ID", default_value_t = 0)]
    pub(crate) instance_id: u64,
    /// A file holding the key of `Elements-Webhook-Signature` (or set
    /// ASYNC_REQUEST_PROXY_SIGNING_KEY). This or --standard-webhooks-secret-file is required
    /// unless --unsigned-callbacks.
    #[arg(long, env = "ASYNC_REQUEST_PROXY_SIGNING_KEY_FILE")]
    pub(crate) signing_key_file: Option<PathBuf>,
    /// A file holding Standard Webhooks secrets (`whsec_…`), one per line (or set
    /// ASYNC_REQUEST_PROXY_STANDARD_WEBHOOKS_SECRET).
    #[arg(long, env = "ASYNC_REQUEST_PROXY_STANDARD_WEBHOOKS_SECRET_FILE")]
    pub(crate) standard_webhooks_secret_file: Option<PathBuf>,
    /// Start without any key to sign callbacks with (no --signing-key-file nor
    /// --standard-webhooks-secret-file, or an instance without keys in --instances): callbacks
    /// then go unsigned, and receivers cannot tell them from forged ones. Refused by default.
    #[arg(long, env = "ASYNC_REQUEST_PROXY_UNSIGNED_CALLBACKS")]
    pub(crate) unsigned_callbacks: bool,
    /// Many instances, from a TOML file, re-read on SIGHUP.
    #[arg(long, env = "ASYNC_REQUEST_PROXY_INSTANCES")]
    pub(crate) instances: Option<PathBuf>,
    /// Answer `GET PATH/{eventId}?token=…` with an event's status (the receipt's `Location`), for
    /// clients that poll; GET requests under PATH then no longer reach the upstream.
    #[arg(long, env = "ASYNC_REQUEST_PROXY_STATUS_PATH")]
    pub(crate) status_path: Option<String>,
    /// A file holding the secret status tokens are made with, at least 16 bytes (or set
    /// ASYNC_REQUEST_PROXY_STATUS_SECRET); without one, a random secret per start, so status
    /// URLs do not survive a restart.
    #[arg(
        long,
        env = "ASYNC_REQUEST_PROXY_STATUS_SECRET_FILE",
        requires = "status_path"
    )]
    pub(crate) status_secret_file: Option<PathBuf>,
    /// A second listener for operators: /metrics, and /admin/health with the other admin routes
    /// under /admin; plain HTTP, at most 64 connections, --header-read-timeout as on the main
    /// one. It stays up until the drain ends. Off by default.
    #[arg(long, env = "ASYNC_REQUEST_PROXY_ADMIN_LISTEN")]
    pub(crate) admin_listen: Option<SocketAddr>,
    /// How long an `Idempotency-Key` holds, from its first request: the same request sent again
    /// meanwhile gets the first receipt back (`Idempotent-Replayed: true`) and starts nothing.
    #[arg(long, env = "ASYNC_REQUEST_PROXY_IDEMPOTENCY_RETENTION", default_value = "24h", value_parser = parse_timeout)]
    pub(crate) idempotency_retention: Duration,
    /// Refuse async requests without an `Idempotency-Key` (`400 idempotency_key_required`).
    #[arg(long, env = "ASYNC_REQUEST_PROXY_REQUIRE_IDEMPOTENCY_KEY")]
    pub(crate) require_idempotency_key: bool,
    /// Largest body of an async request, in bytes.
    #[arg(long, env = "ASYNC_REQUEST_PROXY_MAX_BODY", default_value_t = tower_async_request::layer::DEFAULT_MAX_REQUEST_BYTES)]
    pub(crate) max_body: usize,
    /// How long the upstream may take to begin its answer (e.g. 500ms, 30s, 2m, 1h).
    #[arg(long, env = "ASYNC_REQUEST_PROXY_UPSTREAM_TIMEOUT", default_value = "60s", value_parser = parse_timeout)]
    pub(crate) upstream_timeout: Duration,
    /// How long an upgraded connection (a WebSocket) may carry no byte either way before it is
    /// closed: an idle one holds its place under --max-connections.
    #[arg(long, env = "ASYNC_REQUEST_PROXY_TUNNEL_IDLE_TIMEOUT", default_value = "5m", value_parser = parse_timeout)]
    pub(crate) tunnel_idle_timeout: Duration,
    /// How long a client may take to send a request's head, and how long a kept-alive
    /// connection may wait for its next request; then the connection is closed.
    #[arg(long, env = "ASYNC_REQUEST_PROXY_HEADER_READ_TIMEOUT", default_value = "30s", value_parser = parse_timeout)]
    pub(crate) header_read_timeout: Duration,
    /// How long an async request's body may take to arrive in full (then `408
    /// request_body_timeout`).
    #[arg(long, env = "ASYNC_REQUEST_PROXY_REQUEST_BODY_TIMEOUT", default_value = "60s", value_parser = parse_timeout)]
    pub(crate) request_body_timeout: Duration,
    /// Most client connections open at once, upgraded ones (WebSockets) included; at the limit,
    /// new ones wait in the listen backlog until one closes. Each takes a file descriptor, and
    /// an upgraded one a second towards the upstream: keep it under `ulimit -n`.
    #[arg(long, env = "ASYNC_REQUEST_PROXY_MAX_CONNECTIONS", default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) max_connections: u32,
    /// Threads serving connections, jobs and callbacks (default: one per CPU core).
    #[arg(long, env = "ASYNC_REQUEST_PROXY_WORKER_THREADS", value_parser = clap::value_parser!(u16).range(1..))]
    pub(crate) worker_threads: Option<u16>,
    /// How long a shutdown waits for jobs and callbacks; work abandoned then makes the exit
    /// code 3.
    #[arg(long, env = "ASYNC_REQUEST_PROXY_DRAIN_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub(crate) drain_timeout: Duration,
    /// Most delivery attempts in flight at once to one receiver (an instance's callback origin:
    /// scheme, host and port); the others wait their turn, without using up their retries. An
    /// instance's `max_connections` in --instances overrides it.
    #[arg(long, env = "ASYNC_REQUEST_PROXY_MAX_CONNECTIONS_PER_RECEIVER", value_name = "N", default_value_t = DEFAULT_MAX_CONNECTIONS_PER_RECEIVER, value_parser = RangedU64ValueParser::<usize>::new().range(1..=MAX_CONNECTIONS_PER_RECEIVER))]
    pub(crate) max_connections_per_receiver: usize,
    /// Consecutive failed attempts after which a receiver's circuit opens: its notifications are
    /// held, none attempted, for --circuit-breaker-cool-down; 0 turns the breaker off.
    #[arg(long, env = "ASYNC_REQUEST_PROXY_CIRCUIT_BREAKER_FAILURES", value_name = "N", default_value_t = DEFAULT_CIRCUIT_FAILURES)]
    pub(crate) circuit_breaker_failures: u32,
    /// How long an open circuit holds a receiver's notifications before one is tried again;
    /// doubled after each failed try, up to 10m (or this, if longer).
    #[arg(long, env = "ASYNC_REQUEST_PROXY_CIRCUIT_BREAKER_COOL_DOWN", value_name = "DURATION", default_value = "30s", value_parser = parse_timeout)]
    pub(crate) circuit_breaker_cool_down: Duration,
    /// Disable a receiver failing without a single success for this long (e.g. 12h, 5d), or
    /// `never`: its notifications become dead letters until an operator enables it again
    /// (`POST /admin/receivers/{id}/enable`).
    #[arg(long, env = "ASYNC_REQUEST_PROXY_DISABLE_RECEIVER_AFTER", value_name = "DURATION|never", default_value = "5d", value_parser = parse_disable_after)]
    pub(crate) disable_receiver_after: DisableAfter,
    /// Let request-supplied callback URLs reach private and loopback addresses (development).
    #[arg(long, env = "ASYNC_REQUEST_PROXY_ALLOW_PRIVATE_CALLBACKS")]
    pub(crate) allow_private_callbacks: bool,
    /// Log lines as text for people, or JSON for collectors (filter with RUST_LOG).
    #[arg(long, env = "ASYNC_REQUEST_PROXY_LOG_FORMAT", value_enum, default_value_t = LogFormat::Pretty)]
    pub(crate) log_format: LogFormat,
    /// Export traces over OTLP/HTTP (protobuf) to this collector URL (`/v1/traces` is added);
    /// without it, from OTEL_EXPORTER_OTLP_ENDPOINT. Without either nothing is exported.
    #[arg(long, env = "ASYNC_REQUEST_PROXY_OTLP_ENDPOINT", value_name = "URL", value_parser = parse_otlp_endpoint)]
    pub(crate) otlp_endpoint: Option<String>,
    /// The `service.name` of the exported traces.
    #[arg(
        long,
        env = "ASYNC_REQUEST_PROXY_OTEL_SERVICE_NAME",
        value_name = "NAME",
        default_value = "async-request-proxy"
    )]
    pub(crate) otel_service_name: String,
    /// The share of new traces sampled, 0.0 to 1.0; a request with a `traceparent` follows its
    /// caller's decision.
    #[arg(long, env = "ASYNC_REQUEST_PROXY_OTEL_SAMPLE_RATIO", value_name = "F", default_value_t = 1.0, value_parser = parse_ratio)]
    pub(crate) otel_sample_ratio: f64,
}

#[derive(Debug, Clone)]
pub(crate) enum StoreArg {
    Memory,
    Redb(PathBuf),
    Postgres(String),
}

/// `--disable-receiver-after`: a duration, or `None` for `never`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct DisableAfter(pub(crate) Option<Duration>);

#[derive(Debug, Clone, Copy, ValueEnum)]
pub(crate) enum LogFormat {
    Pretty,
    Json,
}

/// `memory`, `redb:PATH`, or `postgres:URL` (any connection string after the prefix); a bare
/// `postgres://` or `postgresql://` URL is taken as the URL too.
fn parse_store(text: &str) -> Result<StoreArg, String> {
    match text.split_once(':') {
        None if text == "memory" => Ok(StoreArg::Memory),
        Some(("redb", path)) if !path.is_empty() => Ok(StoreArg::Redb(path.into())),
        Some(("postgres" | "postgresql", rest)) if rest.starts_with("//") => {
            Ok(StoreArg::Postgres(text.to_owned()))
        }
        Some(("postgres", url)) if !url.is_empty() => Ok(StoreArg::Postgres(url.to_owned())),
        _ => Err("memory, redb:PATH or postgres:URL".to_owned()),
    }
}

const DURATION: &str = "a number with a unit: 500ms, 30s, 2m, 24h, 5d";

fn parse_duration(text: &str) -> Result<Duration, String> {
    let split = text.find(|c: char| !c.is_ascii_digit()).ok_or(DURATION)?;
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().map_err(|_| DURATION)?;
    let seconds = |per: u64| number.checked_mul(per).map(Duration::from_secs);
    match unit {
        "ms" => Some(Duration::from_millis(number)),
        "s" => Some(Duration::from_secs(number)),
        "m" => seconds(60),
        "h" => seconds(60 * 60),
        "d" => seconds(24 * 60 * 60),
        _ => return Err(DURATION.to_owned()),
    }
    .ok_or_else(|| format!("{text} is too long"))
}

/// A duration longer than zero.
/// An http:// or https:// URL: the collector's base, `/v1/traces` added.
pub(crate) fn parse_otlp_endpoint(text: &str) -> Result<String, String> {
    match text.parse::<http::Uri>() {
        Ok(uri)
            if matches!(uri.scheme_str(), Some("http" | "https")) && uri.authority().is_some() =>
        {
            Ok(format!("{}/v1/traces", text.trim_end_matches('/')))
        }
        _ => Err("an http:// or https:// URL, such as http://127.0.0.1:4318".to_owned()),
    }
}

/// A ratio from 0.0 to 1.0.
fn parse_ratio(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(ratio) if (0.0..=1.0).contains(&ratio) => Ok(ratio),
        _ => Err("a number from 0.0 to 1.0".to_owned()),
    }
}

fn parse_timeout(text: &str) -> Result<Duration, String> {
    match parse_duration(text)? {
        Duration::ZERO => Err("longer than zero: 500ms, 30s, 2m, 24h, 5d".to_owned()),
        duration => Ok(duration),
    }
}

/// A duration longer than zero, or `never`.
fn parse_disable_after(text: &str) -> Result<DisableAfter, String> {
    match text {
        "never" => Ok(DisableAfter(None)),
        _ => parse_timeout(text)
            .map(|after| DisableAfter(Some(after)))
            .map_err(|error| format!("{error}; or never")),
    }
}

/// A PostgreSQL schema name as the store takes it: 1 to 63 lower-case letters, digits and `_`,
/// not starting with a digit (it is quoted into statements, so nothing else).
fn parse_schema(text: &str) -> Result<String, String> {
    let valid = (1..=63).contains(&text.len())
        && !text.starts_with(|c: char| c.is_ascii_digit())
        && text
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    match valid {
        true => Ok(text.to_owned()),
        false => Err("1 to 63 lower-case letters, digits and _, not starting with a digit".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_take_ms_s_m_h_and_d() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("24h"), Ok(Duration::from_secs(24 * 60 * 60)));
        assert_eq!(
            parse_duration("5d"),
            Ok(Duration::from_secs(5 * 24 * 60 * 60))
        );
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        for bad in ["", "h", "d", "24", "1w", "1.5h", "-1s", "24 h", "1D"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
        for unit in ["m", "h", "d"] {
            let error = parse_duration(&format!("{}{unit}", u64::MAX)).unwrap_err();
            assert!(error.contains("too long"), "{error}");
        }
        assert!(parse_timeout("0ms").is_err());
        assert_eq!(parse_timeout("1h"), Ok(Duration::from_secs(3600)));
    }

    #[test]
    fn schema_names_are_what_the_store_takes() {
        for good in ["tower_async_request", "a", "app_2", &"a".repeat(63)] {
            assert_eq!(parse_schema(good).as_deref(), Ok(good), "{good}");
        }
        for bad in [
            "",
            "Tower",
            "2app",
            "app-2",
            "app.x",
            "\"x\"",
            &"a".repeat(64),
        ] {
            assert!(parse_schema(bad).is_err(), "{bad}");
        }
    }

    fn parsed(args: &[&str]) -> Result<Args, clap::Error> {
        let upstream = ["async-request-proxy", "--upstream", "http://127.0.0.1:9"];
        Args::try_parse_from(upstream.iter().chain(args))
    }

    #[test]
    fn receivers_health_flags_default_to_the_layers_defaults() {
        let args = parsed(&[]).unwrap();
        assert_eq!(args.max_connections_per_receiver, 32);
        assert_eq!(args.circuit_breaker_failures, 5);
        assert_eq!(args.circuit_breaker_cool_down, Duration::from_secs(30));
        assert_eq!(
            args.disable_receiver_after,
            DisableAfter(Some(Duration::from_secs(5 * 24 * 60 * 60)))
        );
    }

    #[test]
    fn receivers_health_flags_take_never_off_and_refuse_bad_values() {
        let args = parsed(&[
            "--max-connections-per-receiver",
            "2",
            "--circuit-breaker-failures",
            "0",
            "--circuit-breaker-cool-down",
            "500ms",
            "--disable-receiver-after",
            "never",
        ])
        .unwrap();
        assert_eq!(args.max_connections_per_receiver, 2);
        assert_eq!(args.circuit_breaker_failures, 0);
        assert_eq!(args.circuit_breaker_cool_down, Duration::from_millis(500));
        assert_eq!(args.disable_receiver_after, DisableAfter(None));
        let args = parsed(&["--disable-receiver-after", "12h"]).unwrap();
        assert_eq!(
            args.disable_receiver_after,
            DisableAfter(Some(Duration::from_secs(12 * 60 * 60)))
        );
        for (flag, bad, says) in [
            ("--max-connections-per-receiver", "0", "1..=1048576"),
            ("--max-connections-per-receiver", "1048577", "1..=1048576"),
            ("--max-connections-per-receiver", "many", "invalid digit"),
            ("--circuit-breaker-failures", "five", "invalid digit"),
            ("--circuit-breaker-failures", "4294967296", "0..=4294967295"),
            ("--circuit-breaker-cool-down", "0s", "longer than zero"),
            ("--circuit-breaker-cool-down", "30", "a number with a unit"),
            ("--disable-receiver-after", "0d", "or never"),
            ("--disable-receiver-after", "Never", "or never"),
            ("--disable-receiver-after", "", "or never"),
        ] {
            let error = parsed(&[flag, bad]).unwrap_err().to_string();
            assert!(error.contains(flag), "{flag} {bad}: {error}");
            assert!(error.contains(says), "{flag} {bad}: {error}");
        }
    }
}
