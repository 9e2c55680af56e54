//! A map from instance id to `V`, split into shards each behind its own read-write lock, so a
//! writer holds up only the readers of its own shard, for the length of one insert.

use std::hash::{BuildHasher, BuildHasherDefault};
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use crate::wire::ids::{IdHasher, IdMap};

/// Shards of the map (a power of two).
const SHARDS: usize = 64;

pub(crate) struct Sharded<V> {
    shards: Box<[RwLock<IdMap<u64, V>>]>,
}

impl<V> Default for Sharded<V> {
    fn default() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| RwLock::default()).collect(),
        }
    }
}

impl<V> Sharded<V> {
    fn shard(&self, id: u64) -> &RwLock<IdMap<u64, V>> {
        // The hash's top bits: the map inside the shard uses the low ones.
        let hash = BuildHasherDefault::<IdHasher>::default().hash_one(id);
        &self.shards[(hash >> (64 - SHARDS.trailing_zeros())) as usize]
    }

    // A panic under a lock cannot leave a map half-changed (an insert or remove is whole), so a
    // poisoned lock is used as it is.

    pub(crate) fn read(&self, id: u64) -> RwLockReadGuard<'_, IdMap<u64, V>> {
        self.shard(id).read().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn write(&self, id: u64) -> RwLockWriteGuard<'_, IdMap<u64, V>> {
        self.shard(id).write().unwrap_or_else(|p| p.into_inner())
    }

    /// How many entries each shard holds.
    pub(crate) fn lens(&self) -> impl Iterator<Item = usize> + '_ {
        self.shards
            .iter()
            .map(|shard| shard.read().unwrap_or_else(|p| p.into_inner()).len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands_of_ids_spread_over_the_shards() {
        let map = Sharded::<u64>::default();
        for id in 0..10_000 {
            map.write(id).insert(id, id);
        }
        assert_eq!(map.lens().sum::<usize>(), 10_000);
        assert!(
            map.lens().all(|len| len > 100),
            "every shard holds a fair part"
        );
        assert!((0..10_000).all(|id| map.read(id).get(&id) == Some(&id)));
    }
}
