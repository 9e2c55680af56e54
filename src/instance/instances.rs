//! [`Instances`]: where the layer's instances come from, and the refusal when a request's
//! instance cannot be told.

use std::any::Any;
use std::fmt;
use std::sync::Arc;

use http::request::Parts;

use super::{Instance, InstanceMap, ResolveError, ResolveInstance};
use crate::request::refusal::{Refusal, RefusalCode};

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
