//! Operational webhooks sent: each becomes an event of its own instance, already completed, whose
//! notification (the [`Operational`] JSON) goes to the instance's `operations_url`, signed with
//! its keys, recorded and retried like any notification, resumed after a restart.

use std::future::Future;
use std::sync::Arc;

use crate::admission::in_flight::Permit;
use crate::delivery::attempt::{deliver, Deliverer};
use crate::delivery::operational::Operational;
use crate::delivery::receivers::origin_of;
use crate::instance::Instance;
use crate::metrics::Counter;
use crate::store::{unix_ms, DeliveryState, EventRecord, NotificationRecord, StoreError};

/// Sends `what` to instance `instance_id`'s operations URL, if it has one and `what` is not
/// about that URL itself, under the permit `permit` gives (awaited only then). `instance` is its
/// settings if the caller had them (else they are read).
pub(crate) async fn send(
    config: Arc<dyn Deliverer>,
    instance_id: u64,
    instance: Option<Instance>,
    what: Operational,
    permit: impl Future<Output = Permit>,
) {
    let found = match instance {
        Some(instance) => Ok(Some(instance)),
        None => config.instances().current(instance_id).await,
    };
    let instance = match found {
        Ok(Some(instance)) => instance,
        Ok(None) => return,
        Err(error) => {
            tracing::warn!(%error, instance_id, kind = what.kind(), "could not read an instance's operations URL");
            return;
        }
    };
    let Some(url) = instance.operations_url() else {
        return;
    };
    let about = what.about();
    if *url == *about || about == origin_of(url) {
        return;
    }
    let url = url.clone();
    if let Err(error) = record_and_deliver(config, instance_id, url, what, permit).await {
        tracing::error!(%error, instance_id, "could not record an operational webhook");
    }
}

async fn record_and_deliver(
    config: Arc<dyn Deliverer>,
    instance_id: u64,
    url: http::Uri,
    what: Operational,
    permit: impl Future<Output = Permit>,
) -> Result<(), StoreError> {
    let delivery = config.delivery();
    let (event_id, notification_id) = delivery.store.allocate_ids().await?;
    let now = unix_ms();
    let event = EventRecord {
        event_id,
        notification_id,
        instance_id,
        target: url.to_string(),
        instance_url: false,
        accepted_at_ms: now,
        running: false,
        progress: None,
        trace: None,
    };
    delivery.store.dispatched(&event).await?;
    let notification = NotificationRecord {
        event_id,
        notification_id,
        instance_id,
        target: event.target,
        instance_url: false,
        body: what.to_json(instance_id, notification_id, now),
        accepted_at_ms: now,
        attempts: 0,
        history: Vec::new(),
        next_attempt_at_ms: now,
        last_error: None,
        state: DeliveryState::Pending,
        retain_until_ms: now.saturating_add(delivery.retention.as_millis() as u64),
        progress: None,
        trace: None,
    };
    delivery.store.finished(&notification).await?;
    tracing::info!(
        instance_id,
        kind = what.kind(),
        event_id = event_id.get(),
        "operational webhook"
    );
    let permit = permit.await;
    permit.add(&delivery.counters, Counter::Pending);
    deliver(config, notification, permit, Some(url)).await;
    Ok(())
}
