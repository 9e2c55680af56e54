//! Idempotency keys as stores keep them: written in the same durable write as the accepted event
//! they name, found again by their scope, forgotten after their retention.

use crate::wire::ids::EventId;

/// What a client's `Idempotency-Key` belongs to: its instance, the request's method and path, and
/// the key itself. The same key in another scope is another key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct KeyScope {
    /// The instance the request belongs to.
    pub instance_id: u64,
    /// The request's method (`POST`).
    pub method: String,
    /// The request's path, without its query.
    pub path: String,
    /// The key, as the client sent it (without the quotes of a structured-field string).
    pub key: String,
}

/// A key claimed for an accepted event: its scope, the fingerprint of the request that claimed
/// it (SHA-256 over its method, path and query, `Content-Type`, callback URL and body), and when
/// it may be used again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyKey {
    /// What the key belongs to.
    pub scope: KeyScope,
    /// The claiming request's fingerprint.
    pub fingerprint: [u8; 32],
    /// From this time on (Unix milliseconds) the key is free for new work.
    pub expires_at_ms: u64,
}

/// What [`EventStore::dispatched_with_key`](super::EventStore::dispatched_with_key) did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyClaim {
    /// The key was free (never used, or expired): the event and the key were recorded together.
    Claimed,
    /// An earlier event holds the key: nothing was written.
    Held {
        /// The event that holds the key.
        event_id: EventId,
        /// The fingerprint of the request that claimed it.
        fingerprint: [u8; 32],
    },
}

impl KeyScope {
    /// The scope's SHA-256, each part's length before it (so no two scopes share their input),
    /// for stores that keep keys under a fixed-size column: 32 bytes, whatever the key's length.
    /// The memory and redb stores keep keys by it.
    pub(crate) fn digest(&self) -> [u8; 32] {
        use sha2::{Digest, Sha256};
        let mut hash = Sha256::new();
        hash.update(self.instance_id.to_be_bytes());
        for part in [&self.method, &self.path, &self.key] {
            hash.update((part.len() as u64).to_be_bytes());
            hash.update(part.as_bytes());
        }
        hash.finalize().into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scope(method: &str, path: &str, key: &str) -> KeyScope {
        KeyScope {
            instance_id: 7,
            method: method.into(),
            path: path.into(),
            key: key.into(),
        }
    }

    #[test]
    fn scopes_that_differ_anywhere_have_different_digests() {
        let scopes = [
            scope("POST", "/a", "k"),
            scope("POST", "/ak", ""),
            scope("POST", "/", "ak"),
            scope("PUT", "/a", "k"),
            KeyScope {
                instance_id: 8,
                ..scope("POST", "/a", "k")
            },
        ];
        let digests: std::collections::HashSet<[u8; 32]> =
            scopes.iter().map(KeyScope::digest).collect();
        assert_eq!(digests.len(), scopes.len());
    }
}
