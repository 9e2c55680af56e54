//! The status endpoint: `GET {prefix}/{eventId}?token=…` answered from the store, for clients
//! that poll instead of (or besides) receiving callbacks. The token is an HMAC of the event id,
//! so status URLs cannot be guessed. This stage reads status URLs and writes the answers (with
//! the job's progress); it hands the event stage what a `DELETE` (cancel) or a
//! `Prefer: wait` asks for.

pub(crate) mod endpoint;
