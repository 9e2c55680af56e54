//! The status endpoint: `GET {prefix}/{eventId}?token=…` answered from the store, for clients
//! that poll instead of (or besides) receiving callbacks. The token is an HMAC of the event id,
//! so status URLs cannot be guessed.

pub(crate) mod endpoint;
