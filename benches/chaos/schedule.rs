//! The fault schedule, drawn from the seed: three lanes that run side by side (the nodes, the
//! database, the receiver), each a sequence of faults with gaps, so faults of different lanes
//! overlap. Each lane starts with one fault of each of its kinds, in a seeded order, then draws
//! kinds at random until the load ends.

use std::fmt;
use std::time::Duration;

/// splitmix64: small, seedable, good enough for a schedule and a load mix.
#[derive(Debug, Clone)]
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Self {
        Self(seed ^ 0x5EED_C4A0_5EED_C4A0)
    }

    pub(crate) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `low..=high` (milliseconds, counts).
    pub(crate) fn between(&mut self, low: u64, high: u64) -> u64 {
        low + self.next() % (high - low + 1)
    }

    fn millis(&mut self, low: u64, high: u64) -> Duration {
        Duration::from_millis(self.between(low, high))
    }

    fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            items.swap(i, self.next() as usize % (i + 1));
        }
    }
}

/// How PostgreSQL is stopped before it is started again (`pg_ctl stop -m …`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum StopMode {
    Fast,
    Immediate,
}

/// How a node's connections to the database are cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Cut {
    /// Open connections are closed, new ones closed at once.
    Close,
    /// Nothing passes either way (a partition); the connections are closed when it heals.
    Blackhole,
}

/// What the receiver does during a spell.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Spell {
    Unavailable,
    /// Answers only after the nodes' attempt timeout.
    Slow,
    /// Reads the request, then resets the connection.
    Reset,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Kind {
    /// SIGKILL, then a restart after `Fault::length`.
    Kill,
    /// SIGSTOP for `Fault::length` (longer than the lease), then SIGCONT.
    Stop,
    /// The node's database connections cut for `Fault::length`.
    Cut(Cut),
    /// PostgreSQL stopped, down for `Fault::length`, started again.
    Restart(StopMode),
    /// The receiver misbehaves for `Fault::length`.
    Receiver(Spell),
}

impl Kind {
    /// The name of its kind in the report (the two ways of cutting count as one kind).
    pub(crate) fn name(self) -> &'static str {
        match self {
            Kind::Kill => "SIGKILL + restart",
            Kind::Stop => "SIGSTOP > lease, SIGCONT",
            Kind::Cut(_) => "database cut",
            Kind::Restart(StopMode::Fast) => "PostgreSQL restart (fast)",
            Kind::Restart(StopMode::Immediate) => "PostgreSQL restart (immediate)",
            Kind::Receiver(Spell::Unavailable) => "receiver 503 spell",
            Kind::Receiver(Spell::Slow) => "receiver slow spell",
            Kind::Receiver(Spell::Reset) => "receiver reset spell",
        }
    }

    /// Every kind the report lists, in its order.
    pub(crate) const ALL: [Kind; 8] = [
        Kind::Kill,
        Kind::Stop,
        Kind::Cut(Cut::Close),
        Kind::Restart(StopMode::Fast),
        Kind::Restart(StopMode::Immediate),
        Kind::Receiver(Spell::Unavailable),
        Kind::Receiver(Spell::Slow),
        Kind::Receiver(Spell::Reset),
    ];
}

#[derive(Debug, Clone)]
pub(crate) struct Fault {
    /// From the start of the load.
    pub(crate) at: Duration,
    pub(crate) kind: Kind,
    /// Which node (node faults).
    pub(crate) node: usize,
    pub(crate) length: Duration,
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (at, length) = (self.at.as_secs_f64(), self.length.as_secs_f64());
        match self.kind {
            Kind::Kill => write!(
                f,
                "t={at:6.1}s  SIGKILL node {}, restarted after {length:.1}s",
                self.node
            ),
            Kind::Stop => write!(
                f,
                "t={at:6.1}s  SIGSTOP node {} for {length:.1}s, then SIGCONT",
                self.node
            ),
            Kind::Cut(how) => write!(
                f,
                "t={at:6.1}s  cut node {}'s database connections for {length:.1}s ({})",
                self.node,
                match how {
                    Cut::Close => "closed",
                    Cut::Blackhole => "black hole",
                }
            ),
            Kind::Restart(mode) => write!(
                f,
                "t={at:6.1}s  PostgreSQL stopped ({}), started again after {length:.1}s",
                match mode {
                    StopMode::Fast => "fast",
                    StopMode::Immediate => "immediate",
                }
            ),
            Kind::Receiver(spell) => write!(
                f,
                "t={at:6.1}s  receiver {} for {length:.1}s",
                match spell {
                    Spell::Unavailable => "answers 503",
                    Spell::Slow => "answers after the attempt timeout",
                    Spell::Reset => "resets connections",
                }
            ),
        }
    }
}

/// The three lanes' faults, each lane in time order.
#[derive(Debug, Clone)]
pub(crate) struct Schedule {
    pub(crate) nodes: Vec<Fault>,
    pub(crate) database: Vec<Fault>,
    pub(crate) receiver: Vec<Fault>,
}

/// The lease the nodes are started with.
pub(crate) const LEASE: Duration = Duration::from_secs(2);
/// Faults start after this much load and end this long before it stops.
const WARM_UP: Duration = Duration::from_secs(4);
const COOL_DOWN: Duration = Duration::from_secs(4);

impl Schedule {
    /// `nodes`: how many app nodes; `postgres`: whether there is a database to break.
    pub(crate) fn draw(
        seed: u64,
        load: Duration,
        nodes: usize,
        postgres: bool,
        short: bool,
    ) -> Self {
        let mut rng = Rng::new(seed);
        let end = load.saturating_sub(COOL_DOWN);
        let lease = LEASE.as_millis() as u64;
        let node_kinds: Vec<Kind> = if postgres {
            vec![Kind::Kill, Kind::Stop, Kind::Cut(Cut::Close)]
        } else {
            vec![Kind::Kill]
        };
        let node_gap = match (postgres, short) {
            (false, _) => (1_000, 4_000), // redb: a kill every few seconds
            (true, true) => (2_000, 5_000),
            (true, false) => (4_000, 15_000),
        };
        let nodes_lane = lane(&mut rng, &node_kinds, end, node_gap, |rng, kind| {
            let node = rng.between(0, nodes as u64 - 1) as usize;
            let length = match kind {
                Kind::Kill if postgres => rng.millis(300, 2_000),
                Kind::Kill => rng.millis(100, 1_000),
                Kind::Stop => rng.millis(lease + 500, lease + 2_500),
                _ => rng.millis(1_000, 4_000),
            };
            let kind = match kind {
                Kind::Cut(_) if rng.next() % 2 == 0 => Kind::Cut(Cut::Blackhole),
                kind => kind,
            };
            (kind, node, length)
        });
        let database = if postgres {
            let kinds = [
                Kind::Restart(StopMode::Fast),
                Kind::Restart(StopMode::Immediate),
            ];
            let gap = if short {
                (8_000, 12_000)
            } else {
                (30_000, 70_000)
            };
            lane(&mut rng, &kinds, end, gap, |rng, kind| {
                (kind, 0, rng.millis(500, 3_000))
            })
        } else {
            Vec::new()
        };
        let spells = [
            Kind::Receiver(Spell::Unavailable),
            Kind::Receiver(Spell::Slow),
            Kind::Receiver(Spell::Reset),
        ];
        let gap = if short {
            (2_000, 5_000)
        } else {
            (8_000, 25_000)
        };
        let receiver = lane(&mut rng, &spells, end, gap, |rng, kind| {
            (kind, 0, rng.millis(2_000, 6_000))
        });
        Schedule {
            nodes: nodes_lane,
            database,
            receiver,
        }
    }

    pub(crate) fn all(&self) -> Vec<&Fault> {
        let mut all: Vec<&Fault> = self
            .nodes
            .iter()
            .chain(&self.database)
            .chain(&self.receiver)
            .collect();
        all.sort_by_key(|fault| fault.at);
        all
    }
}

/// One lane: one of each kind first (shuffled), then random kinds, while they end before `end`.
/// A lane's first fault comes after the warm-up plus a first gap, so lanes start apart.
fn lane(
    rng: &mut Rng,
    kinds: &[Kind],
    end: Duration,
    (gap_low, gap_high): (u64, u64),
    mut draw: impl FnMut(&mut Rng, Kind) -> (Kind, usize, Duration),
) -> Vec<Fault> {
    let mut first: Vec<Kind> = kinds.to_vec();
    rng.shuffle(&mut first);
    let mut faults = Vec::new();
    let mut at = WARM_UP + Duration::from_millis(rng.between(0, gap_low));
    loop {
        let kind = if faults.len() < first.len() {
            first[faults.len()]
        } else {
            kinds[rng.next() as usize % kinds.len()]
        };
        let (kind, node, length) = draw(rng, kind);
        if at + length > end {
            return faults;
        }
        faults.push(Fault {
            at,
            kind,
            node,
            length,
        });
        at += length + Duration::from_millis(rng.between(gap_low, gap_high));
    }
}
