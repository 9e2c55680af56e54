//! Which instance a request belongs to, and what an instance's settings are now:
//! [`ResolveInstance`], its future and its error.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use http::request::Parts;

use super::Instance;

/// The future a resolver returns: the instance, `None` when there is none, or an error when the
/// resolver could not tell (its backing service is down, say).
pub type ResolveFuture<'a> =
    Pin<Box<dyn Future<Output = Result<Option<Instance>, ResolveError>> + Send + 'a>>;

/// Tells the layer which instance a request belongs to and what an instance's settings are now.
/// [`InstanceMap`](super::InstanceMap) is the built-in one; implement this to look instances up
/// elsewhere (a database, a configuration service).
///
/// Object safe: the layer keeps it as `Arc<dyn ResolveInstance>`.
pub trait ResolveInstance: Send + Sync + 'static {
    /// The instance an async request belongs to, from its method, URI and headers (its
    /// credentials, typically). Called on the async path only, before the body is read.
    /// `Ok(None)` refuses the request with `401 unknown_instance`; an error with
    /// `503 instance_unavailable`.
    fn resolve<'a>(&'a self, request: &'a Parts) -> ResolveFuture<'a>;

    /// The instance's *current* settings, called before every delivery attempt (also for
    /// events recovered after a restart and dead letters redelivered), so a rotated key or a
    /// changed URL applies from the next attempt on. `Ok(None)`: the instance is gone, and the
    /// notification becomes a dead letter; an error counts as a failed attempt and is retried.
    fn by_id(&self, id: u64) -> ResolveFuture<'_>;
}

impl<T: ResolveInstance + ?Sized> ResolveInstance for Arc<T> {
    fn resolve<'a>(&'a self, request: &'a Parts) -> ResolveFuture<'a> {
        (**self).resolve(request)
    }

    fn by_id(&self, id: u64) -> ResolveFuture<'_> {
        (**self).by_id(id)
    }
}

/// A resolver could not tell which instance a request belongs to, or what an instance's settings
/// are.
#[derive(Debug)]
pub struct ResolveError {
    source: Box<dyn std::error::Error + Send + Sync>,
}

impl ResolveError {
    /// Wraps the underlying error.
    pub fn new(source: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        Self {
            source: source.into(),
        }
    }
}

impl fmt::Display for ResolveError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "instance resolver error: {}", self.source)
    }
}

impl std::error::Error for ResolveError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.source)
    }
}
