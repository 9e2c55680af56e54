//! Each notification's last delivery attempts, kept with it in every store so an operator can
//! see why it is late or dead.

use serde::{Deserialize, Serialize};

/// How many attempts a notification's history keeps (the oldest go first).
pub const MAX_ATTEMPT_HISTORY: usize = 20;

/// One delivery attempt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttemptRecord {
    /// When it was made, Unix milliseconds.
    #[serde(rename = "t")]
    pub at_ms: u64,
    /// How long it took until the answer (or the error), microseconds.
    #[serde(rename = "d")]
    pub duration_us: u64,
    /// The receiver's HTTP status, when it answered.
    #[serde(rename = "s", default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// Why the attempt did not deliver the notification; `None` when it did.
    #[serde(rename = "e", default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Adds `attempt` to `history`, dropping the oldest beyond [`MAX_ATTEMPT_HISTORY`].
pub(crate) fn push(history: &mut Vec<AttemptRecord>, attempt: AttemptRecord) {
    if history.len() >= MAX_ATTEMPT_HISTORY {
        history.drain(..=history.len() - MAX_ATTEMPT_HISTORY);
    }
    history.push(attempt);
}

/// A history as a store keeps it: compact JSON (`[{"t":…,"d":…,"s":…,"e":…}]`).
#[cfg(feature = "postgres")]
pub(crate) fn encode(history: &[AttemptRecord]) -> String {
    serde_json::to_string(history).expect("attempt records serialize")
}

/// A stored history read back.
#[cfg(feature = "postgres")]
pub(crate) fn decode(text: &str) -> Result<Vec<AttemptRecord>, serde_json::Error> {
    serde_json::from_str(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attempt(at_ms: u64) -> AttemptRecord {
        AttemptRecord {
            at_ms,
            duration_us: 1500,
            status: Some(503),
            error: Some("the receiver answered 503".into()),
        }
    }

    #[test]
    fn history_keeps_the_last_attempts_in_order() {
        let mut history = Vec::new();
        for at in 0..(MAX_ATTEMPT_HISTORY as u64 + 5) {
            push(&mut history, attempt(at));
        }
        assert_eq!(history.len(), MAX_ATTEMPT_HISTORY);
        assert_eq!(history.first().unwrap().at_ms, 5);
        assert_eq!(
            history.last().unwrap().at_ms,
            MAX_ATTEMPT_HISTORY as u64 + 4
        );
    }

    #[cfg(feature = "postgres")]
    #[test]
    fn stored_history_reads_back() {
        let history = vec![
            attempt(1),
            AttemptRecord {
                status: None,
                error: None,
                ..attempt(2)
            },
        ];
        let text = encode(&history);
        assert_eq!(
            text,
            r#"[{"t":1,"d":1500,"s":503,"e":"the receiver answered 503"},{"t":2,"d":1500}]"#
        );
        assert_eq!(decode(&text).unwrap(), history);
    }
}
