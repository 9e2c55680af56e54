//! Signals: SIGTERM or SIGINT stop the binary; SIGHUP reads the instances file and the TLS
//! certificate and key again.

use std::sync::{Arc, Mutex};

use crate::{instances, tls, LOG_TARGET};

/// SIGTERM or SIGINT.
pub(crate) async fn stop_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    tracing::info!(target: LOG_TARGET, "stopping: no new connections; draining");
}

pub(crate) async fn reload_on_sighup(
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
                Ok(count) => {
                    tracing::info!(target: LOG_TARGET, instances = count, "instances file read again")
                }
                Err(message) => {
                    tracing::error!(target: LOG_TARGET, error = %message, "instances file not applied; the instances stay as they were")
                }
            }
        }
        if let Some(certificate) = &certificate {
            match certificate.reload() {
                Ok(()) => tracing::info!(target: LOG_TARGET, "TLS certificate and key read again"),
                Err(message) => {
                    tracing::error!(target: LOG_TARGET, error = %message, "TLS files not applied; the certificate stays as it was")
                }
            }
        }
    }
}
