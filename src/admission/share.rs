//! Each instance's share of the layer: how many of its events are unfinished (its own
//! `max_in_flight`) and its counters. Kept by the layer, keyed by instance id, so a share outlives
//! the replacement of an instance's settings (key rotation keeps its count).

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use crate::instance::sharded::Sharded;
use crate::metrics::Counters;

/// One instance's unfinished events and counters.
#[derive(Debug, Default)]
pub(crate) struct Share {
    in_flight: AtomicU32,
    pub(crate) counters: Counters,
}

impl Share {
    /// The share of instance `id`, with its own counters.
    pub(crate) fn new(id: u64) -> Self {
        Self {
            in_flight: AtomicU32::new(0),
            counters: Counters::for_instance(id),
        }
    }

    /// Takes a place for a new event, unless the instance already holds `limit`.
    pub(crate) fn try_enter(&self, limit: Option<u32>) -> bool {
        match limit {
            None => {
                self.enter();
                true
            }
            Some(limit) => self
                .in_flight
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |now| {
                    (now < limit).then_some(now + 1)
                })
                .is_ok(),
        }
    }

    /// Takes a place for work that is never refused (recovered or redelivered events).
    pub(crate) fn enter(&self) {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
    }

    /// Gives a place back.
    pub(crate) fn leave(&self) {
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
    }

    /// Events of the instance unfinished now.
    #[cfg(test)]
    fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Acquire)
    }
}

/// Every instance's share, made on first use.
#[derive(Default)]
pub(crate) struct Shares {
    shares: Sharded<Arc<Share>>,
}

impl std::fmt::Debug for Shares {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shares")
            .field("instances", &self.shares.lens().sum::<usize>())
            .finish()
    }
}

impl Shares {
    /// The share of instance `id`.
    pub(crate) fn of(&self, id: u64) -> Arc<Share> {
        if let Some(share) = self.shares.read(id).get(&id) {
            return share.clone();
        }
        self.shares
            .write(id)
            .entry(id)
            .or_insert_with(|| Arc::new(Share::new(id)))
            .clone()
    }

    /// The share of instance `id`, if the layer has seen it.
    pub(crate) fn get(&self, id: u64) -> Option<Arc<Share>> {
        self.shares.read(id).get(&id).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_share_admits_up_to_its_limit_and_counts_the_rest() {
        let shares = Shares::default();
        let share = shares.of(30);
        assert!(share.try_enter(Some(2)));
        assert!(share.try_enter(Some(2)));
        assert!(!share.try_enter(Some(2)), "at its own bound");
        assert!(
            shares.of(31).try_enter(Some(2)),
            "another instance is not held up"
        );
        share.enter(); // recovered work is counted, never refused
        assert_eq!(share.in_flight(), 3);
        share.leave();
        share.leave();
        assert!(share.try_enter(Some(2)));
        assert!(share.try_enter(None));
        assert!(Arc::ptr_eq(&share, &shares.get(30).unwrap()));
        assert!(shares.get(32).is_none());
    }
}
