//! Delivery: a finished event's notification to its receiver. Each attempt waits its turn at its
//! [`receivers`] entry (the instance's pace, a connection slot, the [`circuit`]), is signed and
//! sent through a [`sink`], its answer judged, and the notification either delivered, scheduled
//! again on the [`retry`] policy (waiting in one outbox), held while its receiver's circuit is
//! open, or kept as a dead letter. Every step is recorded in the store.

pub(crate) mod attempt;
pub mod circuit;
pub(crate) mod operational;
pub mod receivers;
pub mod retry;
pub mod sink;
#[cfg(feature = "opentelemetry")]
pub(crate) mod trace;
