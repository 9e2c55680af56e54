//! Retry timing: when the next attempt of a notification happens.
//!
//! Small pure functions, so the timing rules can be pinned down exactly in tests:
//!
//! - the delay before retry *n*: the configured schedule entry
//!   with ±20 % jitter, lengthened to the receiver's `Retry-After` (capped at
//!   [`MAX_RETRY_AFTER`]) when it sent one with `429` or `503`; `None` when the schedule is spent.
//! - `Retry-After` parsing: delta-seconds or an HTTP date.
//!
//! The default schedule is immediately, 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h: eight attempts
//! over about 28 hours, as outbound-webhook services do.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::HeaderValue;

/// The longest `Retry-After` honoured; a receiver asking for more is retried after this long.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(60 * 60);

/// Default delays before retries 1, 2, … (the first attempt is immediate).
pub const DEFAULT_RETRY_SCHEDULE: [Duration; 7] = [
    Duration::from_secs(5),
    Duration::from_secs(5 * 60),
    Duration::from_secs(30 * 60),
    Duration::from_secs(2 * 60 * 60),
    Duration::from_secs(5 * 60 * 60),
    Duration::from_secs(10 * 60 * 60),
    Duration::from_secs(10 * 60 * 60),
];

/// Default fraction of jitter applied to each delay (±20 %).
pub const DEFAULT_JITTER: f64 = 0.2;

/// When notifications are retried.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct DeliveryPolicy {
    pub(crate) schedule: Vec<Duration>,
    pub(crate) jitter: f64,
}

impl Default for DeliveryPolicy {
    fn default() -> Self {
        Self {
            schedule: DEFAULT_RETRY_SCHEDULE.to_vec(),
            jitter: DEFAULT_JITTER,
        }
    }
}

impl DeliveryPolicy {
    /// How many attempts a notification gets in all.
    #[cfg(test)]
    pub(crate) fn attempts(&self) -> u32 {
        self.schedule.len() as u32 + 1
    }

    /// The delay before the next attempt after `attempts_made` failed ones, or `None` when none
    /// is left. `unit` is a uniform random number in `[0, 1)` choosing the jitter.
    pub(crate) fn delay_before(
        &self,
        attempts_made: u32,
        retry_after: Option<Duration>,
        unit: f64,
    ) -> Option<Duration> {
        let base = *self.schedule.get(attempts_made.checked_sub(1)? as usize)?;
        let delay = jittered(base, self.jitter, unit);
        Some(match retry_after {
            Some(asked) => delay.max(asked.min(MAX_RETRY_AFTER)),
            None => delay,
        })
    }
}

/// `base` scaled by a factor in `[1 − jitter, 1 + jitter)` chosen by `unit` in `[0, 1)`.
pub(crate) fn jittered(base: Duration, jitter: f64, unit: f64) -> Duration {
    let factor = 1.0 - jitter + 2.0 * jitter * unit.clamp(0.0, 1.0);
    base.mul_f64(factor.max(0.0))
}

/// Reads a `Retry-After` value: delta-seconds, or an IMF-fixdate (`Sun, 06 Nov 1994 08:49:37
/// GMT`) taken relative to `now`. A date in the past means "now".
pub(crate) fn parse_retry_after(value: &HeaderValue, now: SystemTime) -> Option<Duration> {
    let text = value.to_str().ok()?.trim();
    if let Ok(seconds) = text.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = parse_imf_fixdate(text)?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

fn parse_imf_fixdate(text: &str) -> Option<SystemTime> {
    // "Sun, 06 Nov 1994 08:49:37 GMT"
    let rest = text.get(5..)?;
    let mut parts = rest.split(' ');
    let day: u64 = parts.next()?.parse().ok()?;
    let month = match parts.next()? {
        "Jan" => 1,
        "Feb" => 2,
        "Mar" => 3,
        "Apr" => 4,
        "May" => 5,
        "Jun" => 6,
        "Jul" => 7,
        "Aug" => 8,
        "Sep" => 9,
        "Oct" => 10,
        "Nov" => 11,
        "Dec" => 12,
        _ => return None,
    };
    let year: i64 = parts.next()?.parse().ok()?;
    let mut clock = parts.next()?.split(':').map(|p| p.parse::<u64>().ok());
    let (h, m, s) = (clock.next()??, clock.next()??, clock.next()??);
    if parts.next()? != "GMT" || !(1..=31).contains(&day) || h > 23 || m > 59 || s > 60 {
        return None;
    }
    let days = days_from_civil(year, month, day as i64);
    let seconds = u64::try_from(days).ok()? * 86_400 + h * 3600 + m * 60 + s;
    Some(UNIX_EPOCH + Duration::from_secs(seconds))
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: fn(u64) -> Duration = Duration::from_secs;

    #[test]
    fn default_schedule_gives_eight_attempts() {
        let policy = DeliveryPolicy::default();
        assert_eq!(policy.attempts(), 8);
        let delays: Vec<_> = (1..8)
            .map(|n| policy.delay_before(n, None, 0.5).unwrap())
            .collect();
        assert_eq!(
            delays,
            [S(5), S(300), S(1800), S(7200), S(18000), S(36000), S(36000)]
        );
        assert_eq!(policy.delay_before(8, None, 0.5), None);
        assert_eq!(
            policy.delay_before(0, None, 0.5),
            None,
            "no delay before the first attempt"
        );
    }

    #[test]
    fn jitter_stays_within_twenty_percent() {
        assert_eq!(jittered(S(100), 0.2, 0.0), S(80));
        assert_eq!(jittered(S(100), 0.2, 0.5), S(100));
        assert!(jittered(S(100), 0.2, 0.999_999) < S(120));
        assert!(jittered(S(100), 0.2, 0.999_999) > S(119));
        assert_eq!(jittered(S(100), 0.0, 0.9), S(100));
    }

    #[test]
    fn retry_after_lengthens_but_never_shortens_and_is_capped() {
        let policy = DeliveryPolicy {
            schedule: vec![S(10)],
            jitter: 0.0,
        };
        assert_eq!(policy.delay_before(1, Some(S(30)), 0.5), Some(S(30)));
        assert_eq!(policy.delay_before(1, Some(S(2)), 0.5), Some(S(10)));
        assert_eq!(
            policy.delay_before(1, Some(S(86_400)), 0.5),
            Some(MAX_RETRY_AFTER)
        );
    }

    #[test]
    fn retry_after_reads_seconds_and_http_dates() {
        let now = UNIX_EPOCH + S(784_111_700); // 1994-11-06T08:48:20Z
        let value = |s: &'static str| HeaderValue::from_static(s);
        assert_eq!(parse_retry_after(&value("120"), now), Some(S(120)));
        assert_eq!(parse_retry_after(&value(" 7 "), now), Some(S(7)));
        assert_eq!(
            parse_retry_after(&value("Sun, 06 Nov 1994 08:49:37 GMT"), now),
            Some(S(77))
        );
        assert_eq!(
            parse_retry_after(&value("Sun, 06 Nov 1994 08:00:00 GMT"), now),
            Some(S(0))
        );
        for bad in [
            "soon",
            "-5",
            "Sun, 06 Foo 1994 08:49:37 GMT",
            "Sun, 06 Nov 1994 08:49:37 PST",
            "",
        ] {
            assert_eq!(parse_retry_after(&value(bad), now), None, "{bad}");
        }
    }

    #[test]
    fn civil_dates_convert_exactly() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        assert_eq!(days_from_civil(2026, 11, 29), 20_786);
    }
}
