//! Event and notification ids.
//!
//! Ids are JSON integers that JavaScript receivers read exactly (at most 2^53 − 1) and that never
//! repeat for an instance, also across restarts. Each is `milliseconds since 2024-01-01 × 4096 +
//! sequence`: a process starts its sequence at the current clock, so a restarted process begins
//! above every id its predecessor issued unless that predecessor sustained more than 4096 ids per
//! millisecond for its whole life (four million receipts per second) or the wall clock moved back.
//! Producing an id is one atomic increment. All layers in a process share one generator, so two
//! layers never hand out the same id either. The format lasts until the year 2093.

use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Largest integer a JavaScript number holds exactly; no id exceeds it.
pub const MAX_SAFE_ID: u64 = (1 << 53) - 1;

/// 2024-01-01T00:00:00Z in Unix milliseconds.
const EPOCH_MS: u64 = 1_704_067_200_000;
const SEQUENCE_BITS: u32 = 12;

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
        #[serde(transparent)]
        pub struct $name(u64);

        impl $name {
            /// Wraps a raw id (for example one read back from a notification).
            pub const fn new(id: u64) -> Self {
                Self(id)
            }

            /// The id as an integer.
            pub const fn get(self) -> u64 {
                self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0, f)
            }
        }
    };
}

id_type!(
    /// Identifies one accepted async request (`eventId`).
    EventId
);
id_type!(
    /// Identifies the notification of one event (`notificationId`); retries keep it, so receivers
    /// de-duplicate on it.
    NotificationId
);

/// A map keyed by one of our ids (or an instance id).
pub(crate) type IdMap<K, V> = HashMap<K, V, BuildHasherDefault<IdHasher>>;

/// Hashes an id with one multiplication (Fibonacci hashing) instead of SipHash. Safe here: the
/// layer allocates event and notification ids itself, one after another, and instance ids are
/// the operator's, so no client can choose keys that collide.
#[derive(Debug, Default)]
pub(crate) struct IdHasher(u64);

impl Hasher for IdHasher {
    fn write_u64(&mut self, id: u64) {
        self.0 = (self.0 ^ id).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }

    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.write_u64(u64::from(byte));
        }
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// Hands out ids; see the module docs for the format.
#[derive(Debug)]
pub(crate) struct IdGenerator {
    next: AtomicU64,
}

impl IdGenerator {
    fn starting_at(now: SystemTime) -> Self {
        let ms = now
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO)
            .as_millis() as u64;
        Self {
            next: AtomicU64::new(ms.saturating_sub(EPOCH_MS) << SEQUENCE_BITS),
        }
    }

    /// A generator that starts at the clock, or above `floor` if that is higher (a durable store
    /// passes the next id it persisted, so ids never repeat even if the clock moved back).
    #[cfg_attr(not(feature = "redb"), allow(dead_code))]
    pub(crate) fn starting_above(floor: u64) -> Self {
        let generator = Self::starting_at(SystemTime::now());
        generator.next.fetch_max(floor, Ordering::Relaxed);
        generator
    }

    /// The next id this generator would hand out (every id it handed out is below it).
    #[cfg_attr(not(feature = "redb"), allow(dead_code))]
    pub(crate) fn peek(&self) -> u64 {
        self.next.load(Ordering::Relaxed)
    }

    /// The generator every layer of this process shares.
    pub(crate) fn global() -> &'static Self {
        static GLOBAL: OnceLock<IdGenerator> = OnceLock::new();
        GLOBAL.get_or_init(|| Self::starting_at(SystemTime::now()))
    }

    fn next(&self) -> u64 {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        debug_assert!(id <= MAX_SAFE_ID, "id space exhausted");
        id
    }

    pub(crate) fn event_id(&self) -> EventId {
        EventId(self.next())
    }

    pub(crate) fn notification_id(&self) -> NotificationId {
        NotificationId(self.next())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequential_ids_spread_over_the_buckets() {
        use std::hash::BuildHasher;
        // hashbrown picks a bucket from the low bits and a tag from the top 7: consecutive ids
        // must differ in both.
        let hasher = BuildHasherDefault::<IdHasher>::default();
        let start = 1_764_400_000_000u64 << 10;
        let hashes: Vec<u64> = (start..start + 1024)
            .map(|id| hasher.hash_one(NotificationId::new(id)))
            .collect();
        let buckets: std::collections::HashSet<u64> = hashes.iter().map(|h| h % 1024).collect();
        let tags: std::collections::HashSet<u64> = hashes.iter().map(|h| h >> 57).collect();
        assert!(
            buckets.len() > 600,
            "{} of 1024 buckets used",
            buckets.len()
        );
        assert_eq!(tags.len(), 128, "every tag value used");
    }

    #[test]
    fn ids_are_unique_increasing_and_js_safe() {
        // Eight threads take event and notification ids, in turn, from the one shared generator
        // at once: each sees its own ids increase, and no id is handed out twice.
        const THREADS: usize = 8;
        const EACH: usize = 20_000;
        let ids = IdGenerator::global();
        let before = ids.peek();
        let start = std::sync::Barrier::new(THREADS);
        let taken: Vec<Vec<u64>> = std::thread::scope(|scope| {
            let threads: Vec<_> = (0..THREADS)
                .map(|_| {
                    let start = &start;
                    scope.spawn(move || {
                        start.wait();
                        (0..EACH)
                            .map(|i| match i % 2 {
                                0 => ids.event_id().get(),
                                _ => ids.notification_id().get(),
                            })
                            .collect::<Vec<u64>>()
                    })
                })
                .collect();
            threads.into_iter().map(|t| t.join().unwrap()).collect()
        });
        for mine in &taken {
            assert!(mine.windows(2).all(|w| w[0] < w[1]), "not increasing");
        }
        let all: std::collections::HashSet<u64> = taken.iter().flatten().copied().collect();
        assert_eq!(all.len(), THREADS * EACH, "an id was handed out twice");
        assert!(
            all.iter().all(|&id| id >= before),
            "below the generator's start"
        );
        let highest = all.iter().copied().max().unwrap();
        assert!(highest <= MAX_SAFE_ID, "{highest} above 2^53 - 1");
    }

    #[test]
    fn a_restart_starts_above_everything_issued_before() {
        let t0 = UNIX_EPOCH + Duration::from_millis(EPOCH_MS + 1_000_000);
        let before = IdGenerator::starting_at(t0);
        // A busy first life: 1000 ids within its first millisecond of wall time.
        let last = (0..1000).map(|_| before.next()).max().unwrap();
        let after = IdGenerator::starting_at(t0 + Duration::from_millis(1));
        assert!(after.next() > last);
    }

    #[test]
    fn the_format_stays_js_safe_until_2093() {
        let late = UNIX_EPOCH + Duration::from_secs(3_900_000_000); // 2093-08
        assert!(IdGenerator::starting_at(late).next() <= MAX_SAFE_ID);
    }
}
