//! Receivers' health: each receiver (an instance's callback origin: scheme, host, port) with its
//! bound on attempts in flight, its [circuit](super::circuit) and the notifications its open
//! circuit holds; and each instance's pace (`max_delivery_rate`).
//!
//! Bookkeeping only: `Receivers::enter` says whether an attempt may go (after waiting its turn),
//! `Ticket::finish` takes its verdict, and what must happen next (release the held
//! notifications, probe later, bury) goes back to the caller, `attempt.rs`, which acts on it.
//! Each node keeps its own circuits; only disabling is stored and shared.

use std::collections::hash_map::RandomState;
use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use http::Uri;
use sha2::{Digest, Sha256};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::admission::share::Share;
use crate::delivery::circuit::{Admit, Change, Circuit, CircuitSettings, CircuitState, Verdict};
use crate::instance::Instance;
use crate::metrics::{Counter, Counters};
use crate::store::DisabledReceiver;

/// Default bound on attempts in flight to one receiver.
pub const DEFAULT_MAX_CONNECTIONS_PER_RECEIVER: usize = 32;

/// Known receivers past which idle ones (nothing in flight or held, not disabled) are forgotten:
/// callback URLs come from requests, so their number is the clients' choice.
const PRUNE_ABOVE: usize = 4096;

/// Every receiver this node has sent to, and each instance's pace.
pub(crate) struct Receivers<W> {
    pub(crate) max_connections: usize,
    pub(crate) circuit: CircuitSettings,
    keys: RandomState,
    /// The layer's counters, where receivers count their states and what they hold.
    counters: Arc<Counters>,
    known: Mutex<HashMap<u64, Arc<Receiver<W>>, BuildHasherDefault<Prehashed>>>,
    /// Per instance with a `max_delivery_rate`: when its next attempt may start.
    paces: Mutex<HashMap<u64, Instant>>,
}

impl<W> fmt::Debug for Receivers<W> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Receivers")
            .field("max_connections", &self.max_connections)
            .field("circuit", &self.circuit)
            .field("known", &lock(&self.known).len())
            .finish_non_exhaustive()
    }
}

/// One receiver.
pub(crate) struct Receiver<W> {
    /// Stable across nodes and restarts: the first 8 bytes of SHA-256 of `"{instance} {origin}"`,
    /// in hex.
    pub(crate) id: String,
    pub(crate) instance_id: u64,
    /// `scheme://host:port`.
    pub(crate) origin: String,
    connections: Arc<Semaphore>,
    limit: AtomicUsize,
    state: Mutex<State<W>>,
    gauges: Gauges,
    /// Whether its circuit is closed with no failure since its last success, as of its last
    /// change (kept under `state`'s lock): attempts to a healthy receiver go, and their
    /// successes are taken, without the lock.
    healthy: AtomicBool,
    /// Whether the store holds its disabling (written here, or read from it): only then may
    /// the store's list, no longer naming it, enable it again.
    disabling_stored: AtomicBool,
}

/// Where a receiver counts its circuit's state and what it holds: the layer's counters and its
/// instance's.
struct Gauges {
    layer: Arc<Counters>,
    instance: Option<Arc<Share>>,
}

impl Gauges {
    fn add(&self, counter: Counter, n: usize) {
        for _ in 0..n {
            self.layer.add(counter);
            if let Some(share) = &self.instance {
                share.counters.add(counter);
            }
        }
    }

    fn sub(&self, counter: Counter, n: usize) {
        for _ in 0..n {
            self.layer.sub(counter);
            if let Some(share) = &self.instance {
                share.counters.sub(counter);
            }
        }
    }

    /// The circuit moved `from` one state `to` another.
    fn moved(&self, from: CircuitState, to: CircuitState) {
        if from != to {
            if let Some(gauge) = circuit_gauge(from) {
                self.sub(gauge, 1);
            }
            if let Some(gauge) = circuit_gauge(to) {
                self.add(gauge, 1);
            }
        }
    }
}

/// The gauge counting receivers whose circuit is in `state`; closed ones are not counted.
fn circuit_gauge(state: CircuitState) -> Option<Counter> {
    match state {
        CircuitState::Closed => None,
        CircuitState::Open => Some(Counter::ReceiversOpen),
        CircuitState::HalfOpen => Some(Counter::ReceiversHalfOpen),
        CircuitState::Disabled => Some(Counter::ReceiversDisabled),
    }
}

struct State<W> {
    circuit: Circuit,
    held: VecDeque<W>,
}

/// What an operator sees of a receiver, as this node knows it: from
/// [`AsyncRequestHandle::receivers`](crate::AsyncRequestHandle::receivers).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReceiverStatus {
    /// The receiver's id: 16 hex digits, the same on every node.
    pub id: String,
    /// Whose receiver it is.
    pub instance_id: u64,
    /// `scheme://host:port`.
    pub origin: String,
    /// Its circuit.
    pub state: CircuitState,
    /// Failed attempts since its last success.
    pub consecutive_failures: u32,
    /// When it began failing (its first failure since its last success), Unix milliseconds.
    pub failing_since_ms: Option<u64>,
    /// Notifications its open circuit holds.
    pub held: usize,
    /// Attempts in flight to it now.
    pub in_flight: usize,
    /// The most attempts in flight to it at once.
    pub max_connections: usize,
}

/// Whether an attempt may go, after waiting its turn.
pub(crate) enum Entry<W> {
    Go(Ticket<W>),
    /// The circuit is open: hold the notification ([`Receiver::hold`]).
    Hold(Arc<Receiver<W>>),
    Disabled(Arc<Receiver<W>>),
}

/// An attempt's place: a connection slot of its receiver, given back when dropped.
pub(crate) struct Ticket<W> {
    receiver: Arc<Receiver<W>>,
    _slot: OwnedSemaphorePermit,
    probe: bool,
    finished: bool,
}

/// What a verdict means for the caller.
pub(crate) struct Finished<W> {
    pub(crate) change: Change,
    /// Notifications the circuit held that may go now (it closed, or another probe may go), or
    /// must be buried (disabled).
    pub(crate) released: Vec<W>,
    pub(crate) receiver: Arc<Receiver<W>>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// `scheme://host:port` of a target, the host in lower case, the port explicit.
pub(crate) fn origin_of(target: &Uri) -> String {
    let scheme = target.scheme_str().unwrap_or("http");
    let host = target.host().unwrap_or_default().to_ascii_lowercase();
    format!("{scheme}://{host}:{}", port_of(target))
}

fn port_of(target: &Uri) -> u16 {
    target.port_u16().unwrap_or(match target.scheme_str() {
        Some("https") => 443,
        _ => 80,
    })
}

/// A receiver's id: stable across nodes and restarts.
pub(crate) fn receiver_id(instance_id: u64, origin: &str) -> String {
    let digest = Sha256::digest(format!("{instance_id} {origin}").as_bytes());
    digest[..8]
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

impl<W: Send + 'static> Receivers<W> {
    pub(crate) fn new(
        max_connections: usize,
        circuit: CircuitSettings,
        counters: Arc<Counters>,
    ) -> Self {
        Self {
            max_connections,
            circuit,
            counters,
            keys: RandomState::new(),
            known: Mutex::default(),
            paces: Mutex::default(),
        }
    }

    /// The key of `target`'s receiver for `instance_id`: the process's randomly keyed SipHash
    /// of the authority in lower case (callback URLs carry no user information; the scheme's
    /// default port is left out), mixed with the instance and the scheme, so clients choosing
    /// callback URLs cannot choose collisions. Nothing is parsed or allocated: it runs for every
    /// attempt.
    fn key(&self, instance_id: u64, target: &Uri) -> u64 {
        let https = target.scheme_str() == Some("https");
        let authority = target
            .authority()
            .map_or("", |authority| authority.as_str());
        let default = if https { ":443" } else { ":80" };
        let authority = authority.strip_suffix(default).unwrap_or(authority);
        let mut hasher = self.keys.build_hasher();
        if authority.bytes().any(|byte| byte.is_ascii_uppercase()) {
            for byte in authority.bytes() {
                hasher.write_u8(byte.to_ascii_lowercase());
            }
        } else {
            hasher.write(authority.as_bytes());
        }
        // A bijection of the instance id (an odd multiplier), so that one authority's keys for
        // two instances differ.
        hasher.finish() ^ instance_id.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ u64::from(https)
    }

    /// `target`'s receiver for `instance`, made on first use with the instance's bound; it
    /// counts in `share`, the instance's counters, as well as the layer's. The receiver of the
    /// instance's own callback URL (`own`: `target` is it) is kept with the instance: found
    /// without a lookup.
    pub(crate) fn receiver(
        &self,
        instance: &Instance,
        target: &Uri,
        own: bool,
        share: Option<&Arc<Share>>,
    ) -> Arc<Receiver<W>> {
        if own {
            debug_assert_eq!(instance.callback_url(), Some(target));
            let owner = self as *const Self as usize;
            let kept = instance.delivery_slot(owner, || self.looked_up(instance, target, share));
            if let Some(receiver) = kept {
                return receiver.clone();
            }
        }
        self.looked_up(instance, target, share)
    }

    fn looked_up(
        &self,
        instance: &Instance,
        target: &Uri,
        share: Option<&Arc<Share>>,
    ) -> Arc<Receiver<W>> {
        let limit = instance.max_connections().unwrap_or(self.max_connections);
        let receiver = self.known_or_new(instance.id(), target, limit, share);
        receiver.set_limit(limit);
        receiver
    }

    /// The receiver of `instance_id` at `origin` (as stored), made if this node has not sent
    /// to it yet; `None` if the origin is not a URL.
    fn at_origin(
        &self,
        instance_id: u64,
        origin: &str,
        share: Option<&Arc<Share>>,
    ) -> Option<Arc<Receiver<W>>> {
        let target = origin.parse::<Uri>().ok()?;
        target.host()?;
        Some(self.known_or_new(instance_id, &target, self.max_connections, share))
    }

    fn known_or_new(
        &self,
        instance_id: u64,
        target: &Uri,
        limit: usize,
        share: Option<&Arc<Share>>,
    ) -> Arc<Receiver<W>> {
        let key = self.key(instance_id, target);
        let mut known = lock(&self.known);
        if let Some(receiver) = known.get(&key) {
            return receiver.clone();
        }
        if known.len() >= PRUNE_ABOVE {
            // Forgotten: nothing in flight or held, no timer, not disabled. A failing one starts
            // afresh with its next notification.
            known.retain(|_, receiver| {
                Arc::strong_count(receiver) > 1 || !lock(&receiver.state).is_forgettable()
            });
        }
        let origin = origin_of(target);
        let receiver = Arc::new(Receiver {
            id: receiver_id(instance_id, &origin),
            instance_id,
            origin,
            connections: Arc::new(Semaphore::new(limit)),
            limit: AtomicUsize::new(limit),
            state: Mutex::new(State {
                circuit: Circuit::default(),
                held: VecDeque::new(),
            }),
            gauges: Gauges {
                layer: self.counters.clone(),
                instance: share.cloned(),
            },
            disabling_stored: AtomicBool::new(false),
            healthy: AtomicBool::new(true),
        });
        known.insert(key, receiver.clone());
        receiver
    }

    /// The receiver with this id, if this node knows it.
    pub(crate) fn by_id(&self, id: &str) -> Option<Arc<Receiver<W>>> {
        lock(&self.known)
            .values()
            .find(|receiver| receiver.id == id)
            .cloned()
    }

    /// Makes this node's receivers agree with the store's list of disabled ones: disables
    /// those listed, giving back what they held (to bury), and enables those no longer listed.
    /// `share_of` gives an instance's counters.
    pub(crate) fn follow(
        &self,
        disabled: &[DisabledReceiver],
        share_of: impl Fn(u64) -> Option<Arc<Share>>,
    ) -> Vec<(Arc<Receiver<W>>, Vec<W>)> {
        let mut held = Vec::new();
        for record in disabled {
            let share = share_of(record.instance_id);
            let Some(receiver) = self.at_origin(record.instance_id, &record.origin, share.as_ref())
            else {
                continue;
            };
            if receiver.state() != CircuitState::Disabled {
                let buried = receiver.disable();
                held.push((receiver.clone(), buried));
            }
            receiver.disabling_stored();
        }
        let known: Vec<_> = lock(&self.known).values().cloned().collect();
        for receiver in known {
            // One disabled here a moment ago, its record not written yet, stays disabled.
            if receiver.state() == CircuitState::Disabled
                && receiver.disabling_stored.load(Ordering::Acquire)
                && !disabled.iter().any(|record| record.id == receiver.id)
            {
                receiver.enable();
            }
        }
        held
    }

    /// What this node knows of every receiver (of `instance`, if given), by id.
    pub(crate) fn views(&self, instance: Option<u64>) -> Vec<ReceiverStatus> {
        let known: Vec<_> = lock(&self.known)
            .values()
            .filter(|receiver| instance.is_none_or(|id| receiver.instance_id == id))
            .cloned()
            .collect();
        let mut views: Vec<_> = known.iter().map(|receiver| receiver.view()).collect();
        views.sort_by(|a, b| a.id.cmp(&b.id));
        views
    }

    /// Waits for the attempt's turn: the instance's pace, then a connection slot of its receiver;
    /// then asks the circuit. A notification the circuit would hold does not wait.
    pub(crate) async fn enter(
        &self,
        instance: &Instance,
        target: &Uri,
        own: bool,
        share: Option<&Arc<Share>>,
    ) -> Entry<W> {
        let receiver = self.receiver(instance, target, own, share);
        if !receiver.healthy.load(Ordering::Acquire) {
            let peek = lock(&receiver.state).circuit.peek(Instant::now());
            match peek {
                Some(Admit::Hold) => return Entry::Hold(receiver),
                Some(Admit::Disabled) => return Entry::Disabled(receiver),
                _ => {}
            }
        }
        let mut waited = false;
        if let Some(rate) = instance.max_delivery_rate() {
            let wait = self.pace(instance.id(), rate, Instant::now());
            if !wait.is_zero() {
                waited = true;
                receiver.gauges.add(Counter::Throttled, 1);
                // Boxed, as the wait below: the timer stays out of every attempt's future.
                Box::pin(tokio::time::sleep(wait)).await;
            }
        }
        let slot = match receiver.connections.clone().try_acquire_owned() {
            Ok(slot) => slot,
            Err(_) => {
                if !waited {
                    receiver.gauges.add(Counter::Throttled, 1);
                }
                Box::pin(receiver.connections.clone().acquire_owned())
                    .await
                    .expect("a receiver's semaphore is never closed")
            }
        };
        // A closed circuit admits without a change: no lock for a healthy receiver.
        let admit = if receiver.healthy.load(Ordering::Acquire) {
            Admit::Go
        } else {
            let mut state = lock(&receiver.state);
            let admit = state.circuit.admit(Instant::now());
            if admit == Admit::Probe {
                receiver
                    .gauges
                    .moved(CircuitState::Open, CircuitState::HalfOpen);
            }
            receiver.settle(&state);
            admit
        };
        match admit {
            Admit::Go | Admit::Probe => Entry::Go(Ticket {
                receiver,
                _slot: slot,
                probe: admit == Admit::Probe,
                finished: false,
            }),
            Admit::Hold => Entry::Hold(receiver),
            Admit::Disabled => Entry::Disabled(receiver),
        }
    }

    /// Reserves the instance's next start at `rate` per second: how long to wait for it.
    fn pace(&self, instance_id: u64, rate: f64, now: Instant) -> Duration {
        let interval = Duration::from_secs_f64(1.0 / rate);
        let mut paces = lock(&self.paces);
        let next = paces.entry(instance_id).or_insert(now);
        let start = (*next).max(now);
        *next = start + interval;
        start - now
    }
}

impl<W> State<W> {
    fn is_forgettable(&self) -> bool {
        self.held.is_empty()
            && matches!(
                self.circuit.state(),
                CircuitState::Closed | CircuitState::Open
            )
    }
}

impl<W> Receiver<W> {
    /// Mirrors the circuit's health after a change, under the state's lock.
    fn settle(&self, state: &State<W>) {
        self.healthy
            .store(state.circuit.is_pristine(), Ordering::Release);
    }

    fn set_limit(&self, limit: usize) {
        if self.limit.load(Ordering::Acquire) == limit {
            return;
        }
        let before = self.limit.swap(limit, Ordering::AcqRel);
        if limit > before {
            self.connections.add_permits(limit - before);
        } else if limit < before {
            // Slots in use now are taken back as they are given back.
            let mut left = before - limit;
            left -= self.connections.forget_permits(left);
            if left > 0 {
                let connections = self.connections.clone();
                tokio::spawn(async move {
                    if let Ok(slots) = connections.acquire_many_owned(left as u32).await {
                        slots.forget();
                    }
                });
            }
        }
    }

    pub(crate) fn view(&self) -> ReceiverStatus {
        let state = lock(&self.state);
        let limit = self.limit.load(Ordering::Acquire);
        ReceiverStatus {
            id: self.id.clone(),
            instance_id: self.instance_id,
            origin: self.origin.clone(),
            state: state.circuit.state(),
            consecutive_failures: state.circuit.consecutive_failures(),
            failing_since_ms: state.circuit.failing_since_ms(),
            held: state.held.len(),
            in_flight: limit.saturating_sub(self.connections.available_permits()),
            max_connections: limit,
        }
    }

    /// Holds `waiting` while the circuit is open; gives it back when it no longer is (it closed
    /// since the attempt was refused), for the caller to try again.
    pub(crate) fn hold(&self, waiting: W) -> Option<W> {
        let mut state = lock(&self.state);
        match state.circuit.state() {
            CircuitState::Open | CircuitState::HalfOpen => {
                state.held.push_back(waiting);
                self.gauges.add(Counter::Held, 1);
                None
            }
            CircuitState::Closed | CircuitState::Disabled => Some(waiting),
        }
    }

    /// The first held notification, once the cool-down is over: the probe.
    pub(crate) fn take_probe(&self, now: Instant) -> Option<W> {
        let mut state = lock(&self.state);
        let probe = state
            .circuit
            .probe_due(now)
            .then(|| state.held.pop_front())
            .flatten();
        self.gauges.sub(Counter::Held, probe.iter().len());
        probe
    }

    /// Disabled (the store says so): every held notification, to bury.
    pub(crate) fn disable(&self) -> Vec<W> {
        let mut state = lock(&self.state);
        let from = state.circuit.state();
        state.circuit.disable();
        self.settle(&state);
        self.gauges.moved(from, CircuitState::Disabled);
        let held: Vec<W> = state.held.drain(..).collect();
        self.gauges.sub(Counter::Held, held.len());
        held
    }

    /// Its disabling is in the store.
    pub(crate) fn disabling_stored(&self) {
        self.disabling_stored.store(true, Ordering::Release);
    }

    /// Enabled again: closed, failures forgotten. Says whether it was disabled.
    pub(crate) fn enable(&self) -> bool {
        let mut state = lock(&self.state);
        self.disabling_stored.store(false, Ordering::Release);
        let from = state.circuit.state();
        state.circuit.enable();
        self.settle(&state);
        self.gauges.moved(from, CircuitState::Closed);
        from == CircuitState::Disabled
    }

    pub(crate) fn state(&self) -> CircuitState {
        lock(&self.state).circuit.state()
    }
}

impl<W> Ticket<W> {
    /// Gives the attempt's verdict to the circuit; the connection slot is given back.
    pub(crate) fn finish(
        mut self,
        verdict: Verdict,
        now_ms: u64,
        settings: &CircuitSettings,
    ) -> Finished<W> {
        self.finished = true;
        let receiver = self.receiver.clone();
        // An answer from a healthy receiver changes nothing: no lock.
        if verdict == Verdict::Answered && !self.probe && receiver.healthy.load(Ordering::Acquire) {
            return Finished {
                change: Change::None,
                released: Vec::new(),
                receiver,
            };
        }
        let mut state = lock(&receiver.state);
        let from = state.circuit.state();
        let change = state
            .circuit
            .record(verdict, self.probe, Instant::now(), now_ms, settings);
        receiver.settle(&state);
        let released: Vec<W> = match change {
            Change::Closed | Change::Disabled => state.held.drain(..).collect(),
            Change::ProbeAgain => state.held.pop_front().into_iter().collect(),
            Change::None | Change::Opened { .. } | Change::Reopened { .. } => Vec::new(),
        };
        receiver.gauges.moved(from, state.circuit.state());
        receiver.gauges.sub(Counter::Held, released.len());
        drop(state);
        Finished {
            change,
            released,
            receiver,
        }
    }
}

impl<W> Drop for Ticket<W> {
    fn drop(&mut self) {
        if self.probe && !self.finished {
            let mut state = lock(&self.receiver.state);
            let from = state.circuit.state();
            state.circuit.probe_abandoned(Instant::now());
            self.receiver.settle(&state);
            self.receiver.gauges.moved(from, state.circuit.state());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn instance(id: u64) -> Instance {
        Instance::builder(id).build().unwrap()
    }

    #[test]
    fn a_receiver_is_an_instance_and_an_origin() {
        let receivers = Receivers::<()>::new(4, CircuitSettings::default(), Arc::default());
        let a = "https://Hooks.example.com/in".parse().unwrap();
        let b = "https://hooks.example.com:443/other?x=1".parse().unwrap();
        let c = "http://hooks.example.com/in".parse().unwrap();
        let first = receivers.receiver(&instance(1), &a, false, None);
        assert!(Arc::ptr_eq(
            &first,
            &receivers.receiver(&instance(1), &b, false, None)
        ));
        assert!(!Arc::ptr_eq(
            &first,
            &receivers.receiver(&instance(1), &c, false, None)
        ));
        assert!(!Arc::ptr_eq(
            &first,
            &receivers.receiver(&instance(2), &a, false, None)
        ));
        assert_eq!(first.origin, "https://hooks.example.com:443");
        assert_eq!(first.id, receiver_id(1, "https://hooks.example.com:443"));
        assert_eq!(first.id.len(), 16);
        assert_eq!(receivers.views(Some(1)).len(), 2);
        assert_eq!(receivers.views(None).len(), 3);
        assert!(receivers.by_id(&first.id).is_some());
        // The instance's own URL: kept with the instance, the same receiver as looked up.
        let own = Instance::builder(3)
            .callback_url("https://hooks.example.com/in")
            .build()
            .unwrap();
        let url = own.callback_url().unwrap().clone();
        let kept = receivers.receiver(&own, &url, true, None);
        assert!(Arc::ptr_eq(
            &kept,
            &receivers.receiver(&own, &url, true, None)
        ));
        assert!(Arc::ptr_eq(
            &kept,
            &receivers.receiver(&own, &url, false, None)
        ));
        // Another layer's receivers do not take it from the instance.
        let other = Receivers::<()>::new(4, CircuitSettings::default(), Arc::default());
        let theirs = other.receiver(&own, &url, true, None);
        assert!(!Arc::ptr_eq(&kept, &theirs));
        assert!(Arc::ptr_eq(
            &theirs,
            &other.receiver(&own, &url, false, None)
        ));
    }

    #[test]
    fn the_store_enables_only_what_it_held_disabled() {
        let receivers = Receivers::<()>::new(4, CircuitSettings::default(), Arc::default());
        let target: Uri = "https://hooks.example.com/in".parse().unwrap();
        let fresh = receivers.receiver(&instance(1), &target, false, None);
        // Disabled here, its record not written yet: the store's list does not enable it.
        let _ = fresh.disable();
        assert!(receivers.follow(&[], |_| None).is_empty());
        assert_eq!(fresh.state(), CircuitState::Disabled);
        fresh.disabling_stored();
        receivers.follow(&[], |_| None);
        assert_eq!(
            fresh.state(),
            CircuitState::Closed,
            "stored, then enabled elsewhere"
        );
        // Disabled elsewhere: listed, then no longer.
        let record = DisabledReceiver {
            id: fresh.id.clone(),
            instance_id: 1,
            origin: fresh.origin.clone(),
            failing_since_ms: 1,
            disabled_at_ms: 2,
        };
        receivers.follow(std::slice::from_ref(&record), |_| None);
        assert_eq!(fresh.state(), CircuitState::Disabled);
        let other = DisabledReceiver {
            id: receiver_id(2, "http://10.0.0.9:8080"),
            instance_id: 2,
            origin: "http://10.0.0.9:8080".into(),
            ..record
        };
        receivers.follow(std::slice::from_ref(&other), |_| None);
        assert_eq!(fresh.state(), CircuitState::Closed);
        let listed = receivers.views(Some(2));
        assert_eq!(listed.len(), 1, "a receiver known only from the store");
        assert_eq!(
            (listed[0].state, listed[0].id.as_str()),
            (CircuitState::Disabled, other.id.as_str())
        );
    }

    #[test]
    fn the_pace_spaces_starts_evenly() {
        let receivers = Receivers::<()>::new(4, CircuitSettings::default(), Arc::default());
        let now = Instant::now();
        let waits: Vec<_> = (0..4).map(|_| receivers.pace(7, 10.0, now)).collect();
        assert_eq!(waits[0], Duration::ZERO);
        assert_eq!(waits[1], Duration::from_millis(100));
        assert_eq!(waits[3], Duration::from_millis(300));
        // Idle for a while: the next one goes at once, not in a burst of saved-up starts.
        let later = now + Duration::from_secs(10);
        assert_eq!(receivers.pace(7, 10.0, later), Duration::ZERO);
        assert_eq!(receivers.pace(7, 10.0, later), Duration::from_millis(100));
        assert_eq!(receivers.pace(8, 10.0, later), Duration::ZERO);
    }

    #[tokio::test]
    async fn attempts_past_the_bound_wait_for_a_slot() {
        let receivers = Receivers::<()>::new(2, CircuitSettings::default(), Arc::default());
        let target: Uri = "http://127.0.0.1:9/".parse().unwrap();
        let instance = instance(1);
        let Entry::Go(first) = receivers.enter(&instance, &target, false, None).await else {
            panic!()
        };
        let Entry::Go(second) = receivers.enter(&instance, &target, false, None).await else {
            panic!()
        };
        assert_eq!(receivers.counters.snapshot().throttled, 0);
        let receiver = receivers.receiver(&instance, &target, false, None);
        assert_eq!(receiver.view().in_flight, 2);
        let third = receivers.enter(&instance, &target, false, None);
        tokio::pin!(third);
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        assert!(std::future::Future::poll(third.as_mut(), &mut cx).is_pending());
        drop(first);
        let Entry::Go(third) = third.await else {
            panic!()
        };
        assert_eq!(receivers.counters.snapshot().throttled, 1);
        // An instance's own bound, lowered, applies as slots come back.
        let narrow = Instance::builder(1).max_connections(1).build().unwrap();
        receivers.receiver(&narrow, &target, false, None);
        drop((second, third));
        tokio::task::yield_now().await;
        assert_eq!(receiver.view().max_connections, 1);
        assert_eq!(receiver.connections.available_permits(), 1);
    }

    #[tokio::test]
    async fn an_open_circuit_holds_until_a_probe_closes_it() {
        let settings = CircuitSettings {
            failures: 1,
            cool_down: Duration::from_millis(1),
            disable_after: None,
        };
        let receivers = Receivers::<u32>::new(8, settings, Arc::default());
        let target: Uri = "http://127.0.0.1:9/".parse().unwrap();
        let instance = instance(1);
        let Entry::Go(ticket) = receivers.enter(&instance, &target, false, None).await else {
            panic!()
        };
        let finished = ticket.finish(Verdict::Failed, 0, &settings);
        assert!(matches!(finished.change, Change::Opened { .. }));
        let receiver = finished.receiver;
        assert_eq!(receiver.state(), CircuitState::Open);
        assert_eq!(receivers.counters.snapshot().receivers_open, 1);
        assert!(
            receiver.take_probe(Instant::now()).is_none(),
            "nothing held"
        );
        assert_eq!(receiver.hold(1), None);
        assert_eq!(receiver.hold(2), None);
        assert_eq!(receiver.view().held, 2);
        assert_eq!(receivers.counters.snapshot().held, 2);
        std::thread::sleep(Duration::from_millis(2));
        assert_eq!(receiver.take_probe(Instant::now()), Some(1));
        let Entry::Go(probe) = receivers.enter(&instance, &target, false, None).await else {
            panic!()
        };
        assert!(probe.probe);
        let counted = receivers.counters.snapshot();
        assert_eq!(
            (counted.receivers_open, counted.receivers_half_open),
            (0, 1)
        );
        assert_eq!(counted.held, 1);
        assert!(matches!(
            receivers.enter(&instance, &target, false, None).await,
            Entry::Hold(_)
        ));
        let finished = probe.finish(Verdict::Answered, 1, &settings);
        assert_eq!(finished.change, Change::Closed);
        assert_eq!(finished.released, vec![2]);
        let counted = receivers.counters.snapshot();
        assert_eq!((counted.receivers_half_open, counted.held), (0, 0));
        assert_eq!(receiver.hold(3), Some(3), "closed: nothing is held");
    }

    #[test]
    fn idle_receivers_are_forgotten_past_the_bound_and_busy_ones_kept() {
        let settings = CircuitSettings {
            failures: 1,
            ..CircuitSettings::default()
        };
        let receivers = Receivers::<u32>::new(4, settings, Arc::default());
        let instance = Instance::builder(1).build().unwrap();
        let target = |n: usize| {
            format!("http://10.0.{}.{}/", n / 250, n % 250)
                .parse::<Uri>()
                .unwrap()
        };
        let busy = receivers.receiver(&instance, &target(0), false, None);
        let held = receivers.receiver(&instance, &target(1), false, None);
        // Open, holding one notification.
        lock(&held.state)
            .circuit
            .record(Verdict::Failed, false, Instant::now(), 0, &settings);
        assert_eq!(held.hold(7), None);
        drop(held);
        for n in 2..PRUNE_ABOVE {
            receivers.receiver(&instance, &target(n), false, None);
        }
        assert_eq!(lock(&receivers.known).len(), PRUNE_ABOVE);
        receivers.receiver(&instance, &target(PRUNE_ABOVE), false, None);
        let left = lock(&receivers.known).len();
        assert_eq!(left, 3, "the busy one, the holding one and the new one");
        assert_eq!(
            receivers
                .views(None)
                .iter()
                .filter(|view| view.held == 1)
                .count(),
            1
        );
        assert!(Arc::ptr_eq(
            &busy,
            &receivers.receiver(&instance, &target(0), false, None)
        ));
    }
}

/// The hasher of a map whose keys are hashes already (of a randomly keyed SipHash).
#[derive(Default)]
struct Prehashed(u64);

impl Hasher for Prehashed {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Keys are `u64`s; anything else is folded in, never trusted as uniform.
        for byte in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*byte);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}
