//! One receiver's circuit breaker: a pure state machine told each attempt's verdict and the time.
//!
//! *Closed*: attempts go. After `failures` consecutive failed attempts
//! (connection refused, timeout, `5xx`, `429`) it *opens*: attempts are held, none made, for a
//! cool-down (30 s by default, doubling up to 10 min). Then one attempt is let through as a probe
//! (*half-open*): a success closes the circuit, a failure opens it again. A receiver failing
//! without a single success for `disable_after` is *disabled* until an operator
//! enables it again.

use std::time::{Duration, Instant};

/// Default consecutive failures that open a receiver's circuit.
pub const DEFAULT_CIRCUIT_FAILURES: u32 = 5;
/// Default first cool-down of an open circuit; it doubles on each failed probe.
pub const DEFAULT_CIRCUIT_COOL_DOWN: Duration = Duration::from_secs(30);
/// The longest cool-down an open circuit doubles to.
pub const MAX_CIRCUIT_COOL_DOWN: Duration = Duration::from_secs(10 * 60);
/// Default time a receiver may fail without a single success before it is disabled (5 days).
pub const DEFAULT_DISABLE_RECEIVER_AFTER: Duration = Duration::from_secs(5 * 24 * 60 * 60);

/// How every receiver's circuit behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CircuitSettings {
    /// Consecutive failures that open the circuit; `0`: it never opens.
    pub(crate) failures: u32,
    pub(crate) cool_down: Duration,
    pub(crate) disable_after: Option<Duration>,
}

impl Default for CircuitSettings {
    fn default() -> Self {
        Self {
            failures: DEFAULT_CIRCUIT_FAILURES,
            cool_down: DEFAULT_CIRCUIT_COOL_DOWN,
            disable_after: Some(DEFAULT_DISABLE_RECEIVER_AFTER),
        }
    }
}

/// Where a receiver's circuit is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CircuitState {
    /// Attempts go.
    Closed,
    /// Failing: its notifications are held until the cool-down is over.
    Open,
    /// One probe is in flight; the rest are held.
    HalfOpen,
    /// Failed for too long: its notifications become dead letters until an operator enables it.
    Disabled,
}

impl CircuitState {
    /// Its name in the admin routes and metrics: `closed`, `open`, `half-open`, `disabled`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Open => "open",
            Self::HalfOpen => "half-open",
            Self::Disabled => "disabled",
        }
    }
}

/// What an attempt's answer says about its receiver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// It answered: `2xx`, or a `4xx` other than `429` (the receiver is up; the notification
    /// may be at fault).
    Answered,
    /// Connection error, timeout, `5xx` or `429`.
    Failed,
    /// The attempt says nothing about the receiver (not sent).
    Unknown,
}

/// Whether an attempt may go now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Admit {
    Go,
    /// Go, as the probe of a half-open circuit.
    Probe,
    /// The circuit is open: hold the notification, make no attempt.
    Hold,
    /// The receiver is disabled.
    Disabled,
}

/// What a verdict changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Change {
    None,
    /// The circuit opened (it was closed): try a probe at `until`.
    Opened {
        until: Instant,
    },
    /// A probe failed: try another at `until`.
    Reopened {
        until: Instant,
    },
    /// A probe told nothing: try another now.
    ProbeAgain,
    /// The circuit closed: release what it held.
    Closed,
    /// Failing for too long: disabled.
    Disabled,
}

#[derive(Debug)]
pub(crate) struct Circuit {
    state: CircuitState,
    consecutive_failures: u32,
    /// Unix milliseconds of the first failure since the last success.
    failing_since_ms: Option<u64>,
    cool_down: Duration,
    open_until: Option<Instant>,
}

impl Default for Circuit {
    fn default() -> Self {
        Self {
            state: CircuitState::Closed,
            consecutive_failures: 0,
            failing_since_ms: None,
            cool_down: Duration::ZERO,
            open_until: None,
        }
    }
}

impl Circuit {
    pub(crate) fn state(&self) -> CircuitState {
        self.state
    }

    pub(crate) fn consecutive_failures(&self) -> u32 {
        self.consecutive_failures
    }

    pub(crate) fn failing_since_ms(&self) -> Option<u64> {
        self.failing_since_ms
    }

    /// Closed, with no failure since the last success.
    pub(crate) fn is_pristine(&self) -> bool {
        self.state == CircuitState::Closed && self.consecutive_failures == 0
    }

    /// Whether an attempt may go at `now`; a due open circuit turns half-open for it.
    pub(crate) fn admit(&mut self, now: Instant) -> Admit {
        match self.state {
            CircuitState::Closed => Admit::Go,
            CircuitState::Open if self.open_until.is_none_or(|until| now >= until) => {
                self.state = CircuitState::HalfOpen;
                Admit::Probe
            }
            CircuitState::Open | CircuitState::HalfOpen => Admit::Hold,
            CircuitState::Disabled => Admit::Disabled,
        }
    }

    /// What [`admit`](Self::admit) would say at `now`, when it is to hold or refuse; changes
    /// nothing.
    pub(crate) fn peek(&self, now: Instant) -> Option<Admit> {
        match self.state {
            CircuitState::Open if !self.probe_due(now) => Some(Admit::Hold),
            CircuitState::HalfOpen => Some(Admit::Hold),
            CircuitState::Disabled => Some(Admit::Disabled),
            CircuitState::Closed | CircuitState::Open => None,
        }
    }

    /// Takes an attempt's verdict at `now` (`now_ms` on the wall clock); `probe` says whether it
    /// was the half-open circuit's probe.
    pub(crate) fn record(
        &mut self,
        verdict: Verdict,
        probe: bool,
        now: Instant,
        now_ms: u64,
        settings: &CircuitSettings,
    ) -> Change {
        if self.state == CircuitState::Disabled {
            return Change::None;
        }
        match verdict {
            Verdict::Answered => {
                self.consecutive_failures = 0;
                self.failing_since_ms = None;
                self.cool_down = Duration::ZERO;
                self.open_until = None;
                match std::mem::replace(&mut self.state, CircuitState::Closed) {
                    CircuitState::Closed => Change::None,
                    _ => Change::Closed,
                }
            }
            Verdict::Unknown if probe && self.state == CircuitState::HalfOpen => {
                self.state = CircuitState::Open;
                self.open_until = Some(now);
                Change::ProbeAgain
            }
            Verdict::Unknown => Change::None,
            Verdict::Failed => {
                self.consecutive_failures = self.consecutive_failures.saturating_add(1);
                let since = *self.failing_since_ms.get_or_insert(now_ms);
                if settings
                    .disable_after
                    .is_some_and(|after| now_ms.saturating_sub(since) >= after.as_millis() as u64)
                {
                    self.state = CircuitState::Disabled;
                    return Change::Disabled;
                }
                match self.state {
                    CircuitState::Closed
                        if settings.failures > 0
                            && self.consecutive_failures >= settings.failures =>
                    {
                        self.cool_down = settings.cool_down;
                        let until = now + self.cool_down;
                        self.open_until = Some(until);
                        self.state = CircuitState::Open;
                        Change::Opened { until }
                    }
                    CircuitState::HalfOpen if probe => {
                        self.cool_down =
                            (self.cool_down * 2).min(MAX_CIRCUIT_COOL_DOWN.max(settings.cool_down));
                        let until = now + self.cool_down;
                        self.open_until = Some(until);
                        self.state = CircuitState::Open;
                        Change::Reopened { until }
                    }
                    _ => Change::None,
                }
            }
        }
    }

    /// A probe that ended without a verdict (its attempt was dropped): another may go now.
    pub(crate) fn probe_abandoned(&mut self, now: Instant) {
        if self.state == CircuitState::HalfOpen {
            self.state = CircuitState::Open;
            self.open_until = Some(now);
        }
    }

    /// Whether an open circuit's cool-down is over at `now`.
    pub(crate) fn probe_due(&self, now: Instant) -> bool {
        self.state == CircuitState::Open && self.open_until.is_none_or(|until| now >= until)
    }

    /// Disabled, as the store says (another node, an earlier run).
    pub(crate) fn disable(&mut self) {
        self.state = CircuitState::Disabled;
    }

    /// Enabled by an operator: closed, its failures forgotten.
    pub(crate) fn enable(&mut self) {
        *self = Self::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SETTINGS: CircuitSettings = CircuitSettings {
        failures: 3,
        cool_down: Duration::from_secs(30),
        disable_after: Some(Duration::from_secs(3600)),
    };

    fn fail(circuit: &mut Circuit, probe: bool, now: Instant, ms: u64) -> Change {
        circuit.record(Verdict::Failed, probe, now, ms, &SETTINGS)
    }

    #[test]
    fn consecutive_failures_open_it_and_an_answer_resets_the_count() {
        let now = Instant::now();
        let mut circuit = Circuit::default();
        assert_eq!(fail(&mut circuit, false, now, 0), Change::None);
        assert_eq!(fail(&mut circuit, false, now, 1), Change::None);
        let answered = circuit.record(Verdict::Answered, false, now, 2, &SETTINGS);
        assert_eq!(answered, Change::None);
        assert!(circuit.is_pristine());
        assert_eq!(
            circuit.record(Verdict::Unknown, false, now, 3, &SETTINGS),
            Change::None
        );
        fail(&mut circuit, false, now, 4);
        fail(&mut circuit, false, now, 5);
        assert_eq!(circuit.failing_since_ms(), Some(4));
        assert_eq!(
            fail(&mut circuit, false, now, 6),
            Change::Opened {
                until: now + Duration::from_secs(30)
            }
        );
        assert_eq!(circuit.state(), CircuitState::Open);
        assert_eq!(circuit.admit(now), Admit::Hold);
        // Attempts already in flight when it opened do not reopen it.
        assert_eq!(fail(&mut circuit, false, now, 7), Change::None);
    }

    #[test]
    fn one_probe_after_the_cool_down_which_doubles_on_failure() {
        let start = Instant::now();
        let mut circuit = Circuit::default();
        for ms in 0..3 {
            fail(&mut circuit, false, start, ms);
        }
        let due = start + Duration::from_secs(30);
        assert!(!circuit.probe_due(due - Duration::from_millis(1)));
        assert!(circuit.probe_due(due));
        assert_eq!(circuit.admit(due), Admit::Probe);
        assert_eq!(circuit.state(), CircuitState::HalfOpen);
        assert_eq!(circuit.admit(due), Admit::Hold, "one probe at a time");
        assert_eq!(
            fail(&mut circuit, true, due, 10),
            Change::Reopened {
                until: due + Duration::from_secs(60)
            }
        );
        // It doubles up to 10 minutes.
        let mut now = due;
        for _ in 0..10 {
            now += Duration::from_secs(3600);
            assert_eq!(circuit.admit(now), Admit::Probe);
            fail(&mut circuit, true, now, 20);
        }
        assert_eq!(circuit.cool_down, MAX_CIRCUIT_COOL_DOWN);
        now += MAX_CIRCUIT_COOL_DOWN;
        assert_eq!(circuit.admit(now), Admit::Probe);
        assert_eq!(
            circuit.record(Verdict::Answered, true, now, 30, &SETTINGS),
            Change::Closed
        );
        assert!(circuit.is_pristine());
        assert_eq!(circuit.admit(now), Admit::Go);
    }

    #[test]
    fn a_probe_that_tells_nothing_lets_another_go() {
        let now = Instant::now();
        let mut circuit = Circuit::default();
        for ms in 0..3 {
            fail(&mut circuit, false, now, ms);
        }
        let later = now + Duration::from_secs(30);
        assert_eq!(circuit.admit(later), Admit::Probe);
        assert_eq!(
            circuit.record(Verdict::Unknown, true, later, 4, &SETTINGS),
            Change::ProbeAgain
        );
        assert_eq!(circuit.admit(later), Admit::Probe);
        circuit.probe_abandoned(later);
        assert_eq!(circuit.admit(later), Admit::Probe);
    }

    #[test]
    fn failing_without_a_success_for_long_enough_disables_it_until_enabled() {
        let now = Instant::now();
        let mut circuit = Circuit::default();
        fail(&mut circuit, false, now, 1_000);
        assert_eq!(fail(&mut circuit, false, now, 3_600_999), Change::None);
        assert_eq!(fail(&mut circuit, false, now, 3_601_000), Change::Disabled);
        assert_eq!(circuit.admit(now), Admit::Disabled);
        let answered = circuit.record(Verdict::Answered, false, now, 3_601_001, &SETTINGS);
        assert_eq!(answered, Change::None, "only an operator enables it");
        circuit.enable();
        assert_eq!(circuit.admit(now), Admit::Go);
        let never = CircuitSettings {
            disable_after: None,
            failures: 0,
            ..SETTINGS
        };
        let mut circuit = Circuit::default();
        for ms in 0..100 {
            let change = circuit.record(Verdict::Failed, false, now, ms * 3_600_000, &never);
            assert_eq!(change, Change::None, "never opens, never disabled");
        }
    }
}
