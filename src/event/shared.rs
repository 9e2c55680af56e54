//! The state every clone of the layer, service and handle shares through one `Arc`: settings,
//! admission, the delivery engine and the store.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;
use tokio::sync::OnceCell;

use crate::admission::in_flight::{Permit, Runner};
use crate::admission::share::{Share, Shares};
use crate::delivery::attempt::{Deliverer, Delivery};
use crate::delivery::operational::Operational;
use crate::event::idempotency::Keys;
use crate::event::jobs::Jobs;
use crate::event::operational;
use crate::event::unconfirmed::Unconfirmed;
use crate::instance::{Instance, Instances};
use crate::metrics::Counters;
use crate::request::classify::Classifier;
use crate::request::refusal::Refusal;
use crate::status::endpoint::StatusEndpoint;
use crate::store::EventStore;

pub(crate) struct Shared {
    /// How a request is read: header names, `Prefer`, the callback URL policy.
    pub(crate) classifier: Classifier,
    pub(crate) receipt_status: StatusCode,
    /// Which instance an event belongs to, and its keys and URL.
    pub(crate) instances: Instances,
    /// Each instance's in-flight count and counters (many instances only).
    pub(crate) shares: Shares,
    pub(crate) max_request_bytes: usize,
    pub(crate) request_body_timeout: Duration,
    pub(crate) max_response_bytes: usize,
    pub(crate) job_timeout: Option<Duration>,
    pub(crate) status: Option<StatusEndpoint>,
    pub(crate) runner: Runner,
    pub(crate) delivery: Delivery,
    pub(crate) store: Arc<dyn EventStore>,
    pub(crate) store_type: &'static str,
    pub(crate) counters: Arc<Counters>,
    /// Set once what an earlier process left unfinished has been read from the store.
    pub(crate) recovered: OnceCell<()>,
    /// Idempotency keys: the settings, and those this node is recording now.
    pub(crate) keys: Keys,
    /// With a status endpoint: this node's jobs as clients see them (cancel, progress) and the
    /// clients waiting for events to end.
    pub(crate) jobs: Option<Arc<Jobs>>,
    /// Events whose record's write failed, to check once the store answers again.
    pub(crate) unconfirmed: Unconfirmed,
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shared")
            .field("async_header", &self.classifier.async_header)
            .field("callback_header", &self.classifier.callback_header)
            .field("receipt_status", &self.receipt_status)
            .field("instances", &self.instances)
            .field("url_policy", &self.classifier.url_policy)
            .field("max_request_bytes", &self.max_request_bytes)
            .field("request_body_timeout", &self.request_body_timeout)
            .field("max_response_bytes", &self.max_response_bytes)
            .field("job_timeout", &self.job_timeout)
            .field("status", &self.status)
            .field(
                "prefer_respond_async",
                &self.classifier.prefer_respond_async,
            )
            .field("runner", &self.runner)
            .field("delivery", &self.delivery)
            .field("store", &self.store_type)
            .field("keys", &self.keys)
            .field("jobs", &self.jobs)
            .finish_non_exhaustive()
    }
}

impl Shared {
    /// A place for work accepted earlier (recovered or redelivered): it waits for room under the
    /// layer's `max_in_flight` and counts in its instance's share, whatever that share's bound.
    pub(crate) async fn permit_for(&self, instance_id: u64) -> Permit {
        let mut permit = self.runner.wait_for_permit().await;
        self.count_in_share(&mut permit, instance_id);
        permit
    }

    /// Takes a place for a new event under its instance's own bound (many instances only).
    pub(crate) fn admit_to_share(
        &self,
        permit: &mut Permit,
        instance: &Instance,
    ) -> Result<(), Refusal> {
        if self.instances.single().is_some() {
            return Ok(());
        }
        permit.join(self.shares.of(instance.id()), instance)
    }

    /// Counts an event accepted earlier in its instance's share (many instances only).
    /// The counters of instance `instance_id` beside the layer's (many instances only).
    pub(crate) fn share_of(&self, instance_id: u64) -> Option<Arc<Share>> {
        self.instances
            .single()
            .is_none()
            .then(|| self.shares.of(instance_id))
    }

    pub(crate) fn count_in_share(&self, permit: &mut Permit, instance_id: u64) {
        if self.instances.single().is_none() {
            permit.join_anyway(self.shares.of(instance_id));
        }
    }
}

impl Deliverer for Shared {
    fn delivery(&self) -> &Delivery {
        &self.delivery
    }

    fn instances(&self) -> &Instances {
        &self.instances
    }

    fn tell_operators(
        self: Arc<Self>,
        instance_id: u64,
        instance: Option<&Instance>,
        what: Operational,
    ) {
        // Most instances have no operations URL: nothing to spawn for them.
        if instance.is_some_and(|instance| instance.operations_url().is_none()) {
            return;
        }
        let config = self.clone();
        let permit = async move { config.permit_for(instance_id).await };
        let instance = instance.cloned();
        tokio::spawn(operational::send(self, instance_id, instance, what, permit));
    }
}
