//! The errors every stage shares, at the bottom of the house: [`ConfigError`] for a setting
//! that cannot work, [`BoxError`] for inner service and body errors.

use std::fmt;

/// Boxed error type used for inner service and body errors.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Whether `error`, or any error it wraps, is an `E` (wrappers such as `axum::Error` and
/// hyper-util's client error hide the one that matters).
pub(crate) fn wraps<E: std::error::Error + 'static>(
    error: &(dyn std::error::Error + 'static),
) -> bool {
    std::iter::successors(Some(error), |e| e.source()).any(|e| e.is::<E>())
}

/// A configuration problem found by [`AsyncRequestLayerBuilder::build`](crate::AsyncRequestLayerBuilder::build) (or when making a
/// verifier from a malformed secret). The message says which setting and why; it never contains a
/// secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    message: String,
}

impl ConfigError {
    pub(crate) fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid async request configuration: {}", self.message)
    }
}

impl std::error::Error for ConfigError {}
