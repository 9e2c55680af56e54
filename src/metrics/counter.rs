//! What is counted: each [`Counter`] of an instance, and how a delivery attempt ended.

/// One of the [`Counters`](super::Counters).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Counter {
    Accepted,
    Running,
    Completed,
    Failed,
    /// A client cancelled an event (recorded by this node).
    Cancelled,
    Pending,
    Delivered,
    Dead,
    Retries,
    /// An async request whose idempotency key an earlier one claimed was answered with the
    /// earlier receipt.
    Replayed,
    /// Status requests holding a `Prefer: wait` now.
    Waiting,
    /// Notifications held now by their receiver's open circuit.
    Held,
    /// Attempts that waited for their turn (the instance's pace or a connection slot).
    Throttled,
    /// Receivers whose circuit is open now.
    ReceiversOpen,
    /// Receivers whose circuit is half-open now (a probe in flight).
    ReceiversHalfOpen,
    /// Receivers disabled now.
    ReceiversDisabled,
}

/// How a delivery attempt ended, as the facade labels it (`result`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AttemptResult {
    /// The receiver answered `2xx`.
    Delivered,
    /// Another answer (retried).
    Rejected,
    /// `410 Gone` (not retried).
    Gone,
    /// No answer: connection error or timeout (retried).
    Unreachable,
    /// Not sent: the instance's settings could not be read (retried).
    Unsent,
    /// The sink refused the target or is closed (not retried).
    Refused,
}

impl AttemptResult {
    #[cfg_attr(not(feature = "metrics"), allow(dead_code))]
    pub(crate) const ALL: [Self; 6] = [
        Self::Delivered,
        Self::Rejected,
        Self::Gone,
        Self::Unreachable,
        Self::Unsent,
        Self::Refused,
    ];

    #[cfg_attr(not(feature = "metrics"), allow(dead_code))]
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Delivered => "delivered",
            Self::Rejected => "rejected",
            Self::Gone => "gone",
            Self::Unreachable => "unreachable",
            Self::Unsent => "unsent",
            Self::Refused => "refused",
        }
    }
}
