//! Admission: whether there is room for one more event. The layer's `max_in_flight` permits and
//! its shutting-down flag, and each instance's share of them. A permit is held by the event
//! until its notification is delivered or dead, so delivery carries it to the end.

pub(crate) mod in_flight;
pub(crate) mod share;

pub use self::in_flight::DEFAULT_MAX_IN_FLIGHT;
