//! Which instance a request belongs to, and what an instance's settings are now:
//! [`ResolveInstance`], and how the layer asks it.

use std::any::Any;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use http::request::Parts;

use super::{Instance, InstanceMap};
use crate::request::refusal::{Refusal, RefusalCode};

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

/// Where the layer's instances come from: the builder's single-instance shorthand, or a resolver.
pub(crate) enum Instances {
    /// One instance for every request (`instance_id`, `default_callback_url`, keys on the layer
    /// builder). Its settings never change, and every event, also one recorded under another id
    /// by an earlier configuration, is delivered with them.
    Static(Instance),
    /// The built-in map, asked directly: no boxed future per request or attempt.
    Map(InstanceMap),
    /// Many instances, asked for per request and per attempt.
    Resolved(Arc<dyn ResolveInstance>, &'static str),
}

impl fmt::Debug for Instances {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Static(instance) => f.debug_tuple("Static").field(instance).finish(),
            Self::Map(map) => f.debug_tuple("Map").field(map).finish(),
            Self::Resolved(_, name) => f.debug_tuple("Resolved").field(name).finish(),
        }
    }
}

impl Instances {
    /// Many instances from `resolver`.
    pub(crate) fn resolved<R: ResolveInstance>(resolver: R) -> Self {
        let any: Box<dyn Any> = Box::new(resolver);
        match any.downcast::<InstanceMap>() {
            Ok(map) => Self::Map(*map),
            Err(any) => {
                let resolver = *any.downcast::<R>().expect("the value boxed above");
                Self::Resolved(Arc::new(resolver), std::any::type_name::<R>())
            }
        }
    }

    /// The instance an async request belongs to, or the refusal to send instead.
    pub(crate) async fn for_request(&self, request: &Parts) -> Result<Instance, Refusal> {
        let resolved = match self {
            Self::Static(instance) => return Ok(instance.clone()),
            Self::Map(map) => Ok(map.identify(request)),
            Self::Resolved(resolver, _) => resolver.resolve(request).await,
        };
        match resolved {
            Ok(Some(instance)) => Ok(instance),
            Ok(None) => Err(Refusal::new(
                RefusalCode::UnknownInstance,
                "The request does not identify an instance of this service.",
            )),
            Err(error) => {
                tracing::error!(%error, "could not resolve the instance of an async request");
                Err(Refusal::new(
                    RefusalCode::InstanceUnavailable,
                    "The service could not look up the instance this request belongs to; nothing was started. Retry later.",
                ))
            }
        }
    }

    /// The current settings of instance `id`.
    pub(crate) async fn current(&self, id: u64) -> Result<Option<Instance>, ResolveError> {
        match self {
            Self::Static(instance) => Ok(Some(instance.clone())),
            Self::Map(map) => Ok(map.get(id)),
            Self::Resolved(resolver, _) => resolver.by_id(id).await,
        }
    }

    /// The single instance, when there is only one.
    pub(crate) fn single(&self) -> Option<&Instance> {
        match self {
            Self::Static(instance) => Some(instance),
            Self::Map(_) | Self::Resolved(..) => None,
        }
    }
}
