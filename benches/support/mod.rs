//! Shared by the benches: side-by-side ratios that hold on a shared, noisy machine.

use std::time::{Duration, Instant};

#[allow(dead_code)] // not every bench uses it
pub mod sync_path;

/// The ratio of two timings measured in turns.
#[derive(Debug, Clone, Copy)]
pub struct Ratio {
    /// The median round.
    pub median: f64,
    /// The first quartile of the rounds (the middle half starts here).
    pub low: f64,
    /// The third quartile of the rounds (the middle half ends here).
    pub high: f64,
}

impl std::fmt::Display for Ratio {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:.3} (median of {ROUNDS} ABBA rounds; middle half {:.3}\u{2013}{:.3})",
            self.median, self.low, self.high
        )
    }
}

const ROUNDS: usize = 41;

/// `b` ÷ `a`: each closure runs one batch of the work being compared. The two take turns in
/// rounds (a, b, b, a: a drift in machine speed within a round cancels out); criterion's medians,
/// taken one function after the other, can move far more than the difference on a shared machine.
#[allow(dead_code)] // not every bench uses it
pub fn interleaved(mut a: impl FnMut(), mut b: impl FnMut()) -> Ratio {
    fn timed(batch: &mut impl FnMut()) -> Duration {
        let start = Instant::now();
        batch();
        start.elapsed()
    }
    interleaved_timed(|| timed(&mut a), || timed(&mut b))
}

/// [`interleaved`] for batches that time themselves: each closure returns the time of the part
/// being compared (a receipt, say, without the untimed work it sets off).
#[allow(dead_code)] // not every bench uses it
pub fn interleaved_timed(
    mut a: impl FnMut() -> Duration,
    mut b: impl FnMut() -> Duration,
) -> Ratio {
    a(); // warm-up
    b();
    let mut ratios: Vec<f64> = (0..ROUNDS)
        .map(|_| {
            let first = a();
            let second = b() + b();
            let first = first + a();
            second.as_secs_f64() / first.as_secs_f64()
        })
        .collect();
    ratios.sort_by(f64::total_cmp);
    Ratio {
        median: ratios[ROUNDS / 2],
        low: ratios[ROUNDS / 4],
        high: ratios[ROUNDS * 3 / 4],
    }
}
