//! Signals: SIGTERM or SIGINT stop the binary; SIGHUP reads the instances file and the TLS
//! certificate and key again. Each is listened for from the start, before the binary says where
//! it listens: a signal's default action would end the process at once, without a drain.

use std::future::Future;
use std::sync::{Arc, Mutex};

use tokio::signal::unix::{signal, SignalKind};

use crate::{instances, tls, LOG_TARGET};

/// SIGTERM or SIGINT, listened for from this call on: one that comes before the future is first
/// polled still counts.
pub(crate) fn stop_signal() -> std::io::Result<impl Future<Output = ()>> {
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = terminate.recv() => {}
            _ = interrupt.recv() => {}
        }
        tracing::info!(target: LOG_TARGET, "stopping: no new connections; draining");
    })
}

/// On each SIGHUP (listened for from this call on), reads the instances file and the TLS files
/// again, whichever there are; with neither, a SIGHUP changes nothing.
pub(crate) fn reload_on_sighup(
    instances: Option<Arc<Mutex<instances::Instances>>>,
    certificate: Option<Arc<tls::Certificate>>,
) -> std::io::Result<impl Future<Output = ()>> {
    let mut hangups = signal(SignalKind::hangup())?;
    Ok(async move {
        while hangups.recv().await.is_some() {
            if instances.is_none() && certificate.is_none() {
                tracing::info!(target: LOG_TARGET, "SIGHUP: no --instances nor TLS files to read again");
            }
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
                    Ok(()) => {
                        tracing::info!(target: LOG_TARGET, "TLS certificate and key read again")
                    }
                    Err(message) => {
                        tracing::error!(target: LOG_TARGET, error = %message, "TLS files not applied; the certificate stays as it was")
                    }
                }
            }
        }
    })
}
