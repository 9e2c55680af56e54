//! Where an accepted event's notification goes, once its instance is known.

use http::Uri;

use crate::event::shared::Shared;
use crate::instance::Instance;
use crate::request::refusal::{Refusal, RefusalCode};

/// Where an accepted event's notification goes.
#[derive(Debug)]
pub(crate) struct Target {
    /// The URL (`None`: nowhere, the client polls the status endpoint).
    pub(crate) url: Option<Uri>,
    /// Whether it is the instance's own URL, which each attempt looks up again.
    pub(crate) from_instance: bool,
}

/// The request's own callback URL wins; else the instance's; else none if the client can poll
/// the status endpoint; else the request is refused.
pub(crate) fn target(
    requested: Option<Uri>,
    instance: &Instance,
    config: &Shared,
) -> Result<Target, Refusal> {
    match (requested, instance.callback_url()) {
        (Some(url), _) => Ok(Target {
            url: Some(url),
            from_instance: false,
        }),
        (None, Some(url)) => Ok(Target {
            url: Some(url.clone()),
            from_instance: true,
        }),
        (None, None) if config.status.is_some() => Ok(Target {
            url: None,
            from_instance: false,
        }),
        (None, None) => Err(Refusal::new(
            RefusalCode::MissingCallbackUrl,
            format!(
                "An async request needs a callback URL in the {} header, and this service has no default.",
                config.classifier.callback_header
            ),
        )),
    }
}
