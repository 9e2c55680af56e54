use std::fmt;
use std::sync::Arc;

use tower_layer::Layer;

use crate::event::shared::Shared;
use crate::layer::handle::AsyncRequestHandle;
use crate::layer::service::AsyncRequest;

/// Applies [`AsyncRequest`] to a service; see the [crate docs](crate) for an example.
///
/// Cheap to clone: every clone, and every service it makes, shares one configuration.
#[derive(Clone)]
pub struct AsyncRequestLayer {
    config: Arc<Shared>,
}

impl AsyncRequestLayer {
    /// A handle for graceful shutdown, dead letters, redelivery and counters.
    pub fn handle(&self) -> AsyncRequestHandle {
        AsyncRequestHandle::new(self.config.clone())
    }

    #[cfg(feature = "fuzzing")]
    pub(crate) fn config_for_fuzzing(&self) -> Arc<Shared> {
        self.config.clone()
    }

    pub(crate) fn from_config(config: Arc<Shared>) -> Self {
        Self { config }
    }
}

impl fmt::Debug for AsyncRequestLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AsyncRequestLayer")
            .field("config", &self.config)
            .finish()
    }
}

impl<S> Layer<S> for AsyncRequestLayer {
    type Service = AsyncRequest<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AsyncRequest::new(inner, self.config.clone())
    }
}
