//! The layer: what a user puts in front of a service. [`AsyncRequestLayer`] and its builder, the
//! [`AsyncRequest`] service with its response future, and the [`AsyncRequestHandle`] that
//! reaches the running layer from outside (shutdown, dead letters, counters). The service hands
//! each request to the request stage, then to the event stage or straight to the inner service.

pub(crate) mod builder;
pub(crate) mod future;
pub(crate) mod handle;
#[allow(clippy::module_inception)]
pub(crate) mod layer;
pub(crate) mod service;

pub use self::builder::{
    AsyncRequestLayerBuilder, DEFAULT_IDEMPOTENCY_RETENTION, DEFAULT_JOB_TIMEOUT,
    DEFAULT_MAX_REQUEST_BYTES, DEFAULT_MAX_RESPONSE_BYTES, DEFAULT_REQUEST_BODY_TIMEOUT,
    DEFAULT_STATUS_RETENTION,
};
pub use self::future::ResponseFuture;
pub use self::handle::{AsyncRequestHandle, Health, RedeliverError, Redelivered, ShutdownReport};
pub use self::layer::AsyncRequestLayer;
pub use self::service::AsyncRequest;
pub use crate::admission::DEFAULT_MAX_IN_FLIGHT;
pub use crate::wire::body::{RequestBody, ResponseBody};
