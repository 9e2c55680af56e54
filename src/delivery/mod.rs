//! Delivery: a finished event's notification to its receiver. Each attempt is signed and sent
//! through a [`sink`], its answer judged, and the notification either delivered, scheduled again
//! on the [`retry`] policy (waiting in one outbox), or kept as a dead letter. Every step is
//! recorded in the store.

pub(crate) mod attempt;
pub mod retry;
pub mod sink;
