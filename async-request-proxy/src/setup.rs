//! From the flags and the files they name to what the binary runs: the layer's builder (its
//! instances, keys and store), the upstream and the listener's certificate, every mistake
//! found before anything starts.

use std::path::Path;
use std::sync::Arc;

use tower_async_request::proxy::Upstream;
use tower_async_request::store::{PostgresStore, RedbStore};
use tower_async_request::{AsyncRequestLayer, AsyncRequestLayerBuilder};

use crate::flags::{Args, StoreArg};
use crate::{instances, tls};

const ENV_SIGNING_KEY: &str = "ASYNC_REQUEST_PROXY_SIGNING_KEY";
const ENV_WHSEC: &str = "ASYNC_REQUEST_PROXY_STANDARD_WEBHOOKS_SECRET";
const ENV_STATUS_SECRET: &str = "ASYNC_REQUEST_PROXY_STATUS_SECRET";

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

/// Everything the flags and files say, checked before anything starts.
pub(crate) struct Setup {
    pub(crate) builder: AsyncRequestLayerBuilder,
    pub(crate) instances: Option<instances::Instances>,
    pub(crate) upstream: Upstream,
    pub(crate) certificate: Option<Arc<tls::Certificate>>,
    /// The PostgreSQL store, also the layer's: after a drain that left work, leaving hands it
    /// to the other proxies at once instead of after the lease timeout.
    pub(crate) postgres: Option<Arc<PostgresStore>>,
}

pub(crate) async fn configure(args: &Args) -> Result<Setup, String> {
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
        .idempotency_retention(args.idempotency_retention)
        .require_idempotency_key(args.require_idempotency_key)
        .allow_private_callbacks(args.allow_private_callbacks)
        .max_connections_per_receiver(args.max_connections_per_receiver)
        .circuit_breaker(
            args.circuit_breaker_failures,
            args.circuit_breaker_cool_down,
        )
        .disable_receiver_after(args.disable_receiver_after.0);
    if args.admin_listen.is_some() {
        // Operators look delivered events up too, with their attempts.
        builder = builder.status_retention(tower_async_request::layer::DEFAULT_STATUS_RETENTION);
    }
    let instances = match &args.instances {
        Some(path) => {
            if args.callback_url.is_some()
                || args.signing_key_file.is_some()
                || args.standard_webhooks_secret_file.is_some()
            {
                return Err("--instances: callback URLs and keys then come from the file, not from --callback-url, --signing-key-file or --standard-webhooks-secret-file".into());
            }
            let instances = instances::Instances::start(path, args.unsigned_callbacks)?;
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
                None => std::env::var(ENV_SIGNING_KEY)
                    .ok()
                    .filter(|key| !key.is_empty())
                    .map(String::into_bytes),
            };
            let secrets = match &args.standard_webhooks_secret_file {
                Some(path) => {
                    String::from_utf8(secret_file(path, "standard-webhooks-secret-file")?)
                        .map_err(|_| "--standard-webhooks-secret-file: not UTF-8 text".to_owned())?
                }
                None => std::env::var(ENV_WHSEC).unwrap_or_default(),
            };
            let secrets: Vec<&str> = secrets
                .lines()
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .collect();
            // Unsigned callbacks are indistinguishable from forged ones at the receiver: only
            // on purpose.
            if key.is_none() && secrets.is_empty() && !args.unsigned_callbacks {
                return Err(format!(
                    "no key to sign callbacks with: give --signing-key-file or \
                     --standard-webhooks-secret-file (or set {ENV_SIGNING_KEY} or {ENV_WHSEC}), \
                     or pass --unsigned-callbacks to send them unsigned"
                ));
            }
            if let Some(key) = key {
                builder = builder.signing_key(key);
            }
            for secret in secrets {
                builder = builder.standard_webhooks_secret(secret);
            }
            None
        }
    };
    if let Some(path) = &args.status_path {
        builder = builder.status_endpoint(path.clone());
        let secret = match &args.status_secret_file {
            Some(file) => Some(secret_file(file, "status-secret-file")?),
            None => std::env::var(ENV_STATUS_SECRET)
                .ok()
                .filter(|secret| !secret.is_empty())
                .map(String::into_bytes),
        };
        // Too short a secret: build() says so.
        if let Some(secret) = secret {
            builder = builder.status_secret(secret);
        }
    }
    let mut postgres = None;
    builder = match &args.store {
        StoreArg::Memory => builder,
        StoreArg::Redb(path) => builder.store(
            RedbStore::open(path)
                .map_err(|error| format!("--store redb:{}: {error}", path.display()))?,
        ),
        StoreArg::Postgres(url) => {
            let store = PostgresStore::builder(url.clone())
                .schema(args.postgres_schema.clone())
                .connect()
                .await
                .map_err(|error| format!("--store postgres: {error}"))?;
            let store = Arc::new(store);
            postgres = Some(store.clone());
            builder.store(store)
        }
    };
    Ok(Setup {
        builder,
        instances,
        upstream,
        certificate,
        postgres,
    })
}
