use std::fmt;

/// What kind of transport failure a [`SinkError`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SinkErrorKind {
    /// No connection could be made (refused, unreachable, DNS failure, TLS handshake).
    Connect,
    /// The attempt did not finish within its timeout.
    Timeout,
    /// The connection broke or the receiver spoke something other than HTTP.
    Protocol,
    /// The target may not be reached (for example a private address); retrying cannot help.
    Forbidden,
    /// The sink is closed (a dropped [`CallbackReceiver`](super::CallbackReceiver)).
    Closed,
}

/// A transport failure: the receiver gave no answer.
#[derive(Debug)]
pub struct SinkError {
    kind: SinkErrorKind,
    source: Box<dyn std::error::Error + Send + Sync>,
}

impl SinkError {
    /// A failure of `kind` caused by `source`.
    pub fn new(
        kind: SinkErrorKind,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        Self {
            kind,
            source: source.into(),
        }
    }

    /// What kind of failure this is.
    pub fn kind(&self) -> SinkErrorKind {
        self.kind
    }
}

impl fmt::Display for SinkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self.kind {
            SinkErrorKind::Connect => "could not connect to the callback receiver",
            SinkErrorKind::Timeout => "the callback attempt timed out",
            SinkErrorKind::Protocol => "the callback exchange failed",
            SinkErrorKind::Forbidden => "the callback target may not be reached",
            SinkErrorKind::Closed => "the callback sink is closed",
        };
        write!(f, "{what}: {}", self.source)
    }
}

impl std::error::Error for SinkError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.source)
    }
}
