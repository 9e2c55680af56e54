//! The receiving side: what a webhook receiver uses to check that a callback came from this
//! layer and to read it. [`verify`] checks either signature scheme; `receiver` (feature `axum`) is
//! an extractor that verifies and parses in one step.

#[cfg(feature = "axum")]
pub mod receiver;
pub mod verify;
