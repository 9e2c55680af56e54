//! The bottom of the house: what crosses the wire and every stage shares. Event and notification
//! ids, header names, the bodies the layer reads and answers with, and the two signature schemes.
//! Nothing here imports from another stage.

pub(crate) mod body;
pub mod header;
pub(crate) mod ids;
pub(crate) mod signature;
