//! The resolved configuration every clone of the layer, service and handle shares through one
//! `Arc`: settings, the job runner, the delivery engine and the store.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, StatusCode, Uri};
use tokio::sync::OnceCell;

use crate::callback_url::UrlPolicy;
use crate::delivery::Delivery;
use crate::metrics::Counters;
use crate::runner::Runner;
use crate::status::StatusEndpoint;
use crate::store::EventStore;

pub(crate) struct Config {
    pub(crate) async_header: HeaderName,
    pub(crate) callback_header: HeaderName,
    pub(crate) receipt_status: StatusCode,
    pub(crate) instance_id: u64,
    pub(crate) default_callback: Option<Uri>,
    pub(crate) url_policy: UrlPolicy,
    pub(crate) max_request_bytes: usize,
    pub(crate) max_response_bytes: usize,
    pub(crate) job_timeout: Option<Duration>,
    pub(crate) status: Option<StatusEndpoint>,
    pub(crate) prefer_respond_async: bool,
    pub(crate) runner: Runner,
    pub(crate) delivery: Delivery,
    pub(crate) store: Arc<dyn EventStore>,
    pub(crate) store_type: &'static str,
    pub(crate) counters: Arc<Counters>,
    /// Set once what an earlier process left unfinished has been read from the store.
    pub(crate) recovered: OnceCell<()>,
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("async_header", &self.async_header)
            .field("callback_header", &self.callback_header)
            .field("receipt_status", &self.receipt_status)
            .field("instance_id", &self.instance_id)
            .field("default_callback", &self.default_callback)
            .field("url_policy", &self.url_policy)
            .field("max_request_bytes", &self.max_request_bytes)
            .field("max_response_bytes", &self.max_response_bytes)
            .field("job_timeout", &self.job_timeout)
            .field("status", &self.status)
            .field("prefer_respond_async", &self.prefer_respond_async)
            .field("runner", &self.runner)
            .field("delivery", &self.delivery)
            .field("store", &self.store_type)
            .finish_non_exhaustive()
    }
}
