//! Recovery: on start-up, finish what an earlier process left in the store.
//!
//! Events that were dispatched or running when that process died get a `failed` notification with
//! code `interrupted` (under the notification id they were given at dispatch); pending
//! notifications resume their schedule where it stopped. The store is read once, before this
//! process records its first event (or its first cancel), so new events are never mistaken for
//! old ones. With a store several nodes share, [`follow_ends`] drops the jobs here that other
//! nodes ended and answers waits for events that ended anywhere, and [`follow_receivers`] honours
//! the receivers other nodes disabled or enabled.

use std::sync::{Arc, Weak};
use std::time::Duration;

use crate::delivery::attempt::{deliver, follow_disabled};
use crate::event::job::conclude;
use crate::event::notification::{FailureCode, Outcome};
use crate::event::shared::Shared;
use crate::metrics::Counter;
use crate::store::{Recovery, StoreError};

/// Reads the store once (later calls return at once) and starts finishing what it holds.
pub(crate) async fn ensure_recovered(config: &Arc<Shared>) -> Result<(), StoreError> {
    config
        .recovered
        .get_or_try_init(|| async {
            // Receivers disabled earlier first: what was pending for them is buried, not sent.
            follow_disabled(&config.delivery, |id| config.share_of(id)).await?;
            let recovery = config.store.recover().await?;
            if !recovery.unfinished.is_empty() || !recovery.pending.is_empty() {
                tracing::info!(
                    interrupted = recovery.unfinished.len(),
                    pending = recovery.pending.len(),
                    "resuming work an earlier process left unfinished",
                );
                tokio::spawn(resume(config.clone(), recovery));
            }
            if config.store.take_over().is_some() {
                tokio::spawn(take_over(Arc::downgrade(config)));
                if config.store.keeps_disabled_receivers() {
                    tokio::spawn(follow_receivers(Arc::downgrade(config)));
                }
            }
            if config.jobs.is_some() && config.store.ended_elsewhere().is_some() {
                tokio::spawn(follow_ends(Arc::downgrade(config)));
            }
            Ok(())
        })
        .await
        .map(|_| ())
}

/// Starts recovery in the background if a runtime is at hand (otherwise the first async request
/// or handle call does it).
pub(crate) fn start_recovery(config: &Arc<Shared>) {
    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
        let config = config.clone();
        runtime.spawn(async move {
            if let Err(error) = ensure_recovered(&config).await {
                tracing::error!(%error, "could not read unfinished work from the event store");
            }
        });
    }
}

/// With a store several nodes share: finishes what nodes that stopped left, for as long as the
/// layer lives.
async fn take_over(config: Weak<Shared>) {
    loop {
        let Some(strong) = config.upgrade() else {
            return;
        };
        let Some(next) = strong.store.take_over() else {
            return;
        };
        match next.await {
            Ok(recovery) if recovery.unfinished.is_empty() && recovery.pending.is_empty() => {
                tracing::debug!("looked for work of stopped nodes: none");
            }
            Ok(recovery) => {
                tracing::debug!("looked for work of stopped nodes: took some");
                tokio::spawn(resume(strong.clone(), recovery));
            }
            Err(error) => {
                tracing::warn!(%error, "could not look for work of stopped nodes");
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
        }
    }
}

/// How often a node sharing its store reads which receivers are disabled.
pub(crate) const RECEIVER_SYNC: Duration = Duration::from_secs(5);

/// With a store several nodes share: every [`RECEIVER_SYNC`], disables here the receivers other
/// nodes disabled and enables those an operator enabled elsewhere, for as long as the layer
/// lives.
async fn follow_receivers(config: Weak<Shared>) {
    loop {
        tokio::time::sleep(RECEIVER_SYNC).await;
        let Some(strong) = config.upgrade() else {
            return;
        };
        if let Err(error) = follow_disabled(&strong.delivery, |id| strong.share_of(id)).await {
            tracing::warn!(%error, "could not read which receivers are disabled");
        }
    }
}

async fn resume(config: Arc<Shared>, recovery: Recovery) {
    for event in recovery.unfinished {
        let permit = config.permit_for(event.instance_id).await;
        let config = config.clone();
        tokio::spawn(async move {
            let outcome = Outcome::failed(
                FailureCode::Interrupted,
                "the process ended before the job finished",
            );
            conclude(&config, event, None, outcome, permit).await;
        });
    }
    for notification in recovery.pending {
        let permit = config.permit_for(notification.instance_id).await;
        permit.add(&config.counters, Counter::Pending);
        tokio::spawn(deliver(config.clone(), notification, permit, None));
    }
}

/// With a store several nodes share: drops jobs running here that another node ended (a
/// client's cancel there) and answers waits for events that ended anywhere, for as long as the
/// layer lives.
pub(crate) async fn follow_ends(config: Weak<Shared>) {
    loop {
        let Some(strong) = config.upgrade() else {
            return;
        };
        let Some(next) = strong.store.ended_elsewhere() else {
            return;
        };
        // Looks now and then whether the layer is still there.
        match tokio::time::timeout(Duration::from_secs(1), next).await {
            Err(_) => {}
            Ok(Ok(ended)) => {
                if let Some(jobs) = &strong.jobs {
                    for event_id in ended {
                        if jobs.drop_job(event_id) {
                            tracing::info!(
                                event_id = event_id.get(),
                                "the event was ended by another node; its job here is dropped"
                            );
                        }
                        jobs.ended(event_id);
                    }
                }
            }
            Ok(Err(error)) => {
                tracing::warn!(%error, "could not hear of events ended on other nodes");
                drop(strong);
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}
