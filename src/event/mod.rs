//! The event: an accepted async request's life. Dispatch reads the body, takes the ids and a
//! permit, records the event and answers with the receipt (`dispatch.rs`, `receipt.rs`); the
//! notification's target is settled (`target.rs`); the job runs the inner service to an outcome
//! and makes the [`notification`], which it hands to delivery (`job.rs`); recovery resumes what an
//! earlier process or a dead peer left unfinished (`recovery.rs`), and an event whose record's
//! write failed is checked once the store answers again (`unconfirmed.rs`). With a status
//! endpoint, the status URL is the operation's resource (`operation.rs`: read it, wait for its
//! end, cancel it) and this node's running jobs can be cancelled and report their progress
//! (`jobs.rs`: [`Progress`]). `shared.rs` holds the state every clone of the layer, its services
//! and its handle share.

pub(crate) mod dispatch;
pub(crate) mod idempotency;
pub(crate) mod job;
pub(crate) mod jobs;
pub mod notification;
pub(crate) mod operation;
pub(crate) mod operational;
pub(crate) mod receipt;
pub(crate) mod recovery;
pub(crate) mod shared;
pub(crate) mod target;
pub(crate) mod unconfirmed;

pub use self::jobs::{Progress, DEFAULT_MAX_STATUS_WAITERS, MAX_PROGRESS_MESSAGE};
pub use crate::wire::ids::{EventId, NotificationId, MAX_SAFE_ID};
