//! The bottom of the house: what crosses the wire and every stage shares. Event and notification
//! ids, header names, the bodies the layer reads and answers with, the two signature schemes and
//! the crypto provider behind TLS. Nothing here uses another stage but [`error`](crate::error).

pub(crate) mod body;
pub(crate) mod crypto;
pub mod header;
pub(crate) mod ids;
pub(crate) mod signature;
