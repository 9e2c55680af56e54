//! Stage 2, the event: an accepted async request's life. [`dispatch`] reads the body, takes the
//! ids and a permit, records the event and answers with the receipt; the job runs the inner
//! service to an outcome and makes the [`notification`], which it hands to delivery; recovery
//! resumes what an earlier process left unfinished. `shared` holds the state every clone of the
//! layer, its services and its handle share.
//!
//! [`dispatch`]: self::dispatch

pub(crate) mod dispatch;
pub(crate) mod job;
pub mod notification;
pub(crate) mod receipt;
pub(crate) mod recovery;
pub(crate) mod shared;
pub(crate) mod target;
