//! Receivers as stores keep them: the ones disabled for failing too long ([`DisabledReceiver`]),
//! so every node, and every restart, honours a disabling until an operator enables it again.

/// A receiver (an instance's callback origin) disabled after failing without a single success
/// for the layer's `disable_receiver_after`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DisabledReceiver {
    /// The receiver's id: 16 hex digits, the same on every node.
    pub id: String,
    /// Whose receiver it is.
    pub instance_id: u64,
    /// `scheme://host:port`.
    pub origin: String,
    /// When it began failing (its first failure since its last success), Unix milliseconds.
    pub failing_since_ms: u64,
    /// When it was disabled, Unix milliseconds.
    pub disabled_at_ms: u64,
}
