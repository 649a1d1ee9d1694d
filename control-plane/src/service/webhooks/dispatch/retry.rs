//! When a failed delivery is tried again: the operator's schedule, ±20 %
//! jitter so failing endpoints are not hit in lockstep, and the endpoint's
//! own `Retry-After` (capped).

use std::time::Duration;

use chrono::{DateTime, Utc};
use rand::Rng;

use crate::store::deliveries::NextStep;

/// Longest `Retry-After` honoured.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);
/// Retry delays vary by ±this fraction.
const JITTER: f64 = 0.2;

/// Delays before each attempt (the first normally zero).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetrySchedule(pub Vec<Duration>);

impl std::str::FromStr for RetrySchedule {
    type Err = String;

    /// Comma-separated durations, e.g. `0s,5s,5m` (the command-line form).
    fn from_str(value: &str) -> Result<Self, String> {
        let delays = value
            .split(',')
            .map(|part| humantime::parse_duration(part.trim()).map_err(|e| format!("{part:?}: {e}")))
            .collect::<Result<Vec<_>, _>>()?;
        if delays.is_empty() || delays.len() > 50 {
            return Err("give 1 to 50 delays".into());
        }
        Ok(Self(delays))
    }
}

impl RetrySchedule {
    /// What follows a failed attempt `number` (1-based): the next attempt
    /// after the scheduled delay with jitter, no sooner than `retry_after`
    /// (capped at [`MAX_RETRY_AFTER`]); `Failed` after the last.
    pub fn after_failure(&self, number: i32, retry_after: Option<Duration>, now: DateTime<Utc>) -> NextStep {
        let Some(delay) = usize::try_from(number).ok().and_then(|n| self.0.get(n)) else {
            return NextStep::Failed;
        };
        let jittered = delay.mul_f64(rand::rng().random_range(1.0 - JITTER..=1.0 + JITTER));
        let delay = retry_after.map_or(jittered, |asked| jittered.max(asked.min(MAX_RETRY_AFTER)));
        NextStep::RetryAt(now + chrono::Duration::from_std(delay).unwrap_or(chrono::Duration::MAX))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schedule(seconds: &[u64]) -> RetrySchedule {
        RetrySchedule(seconds.iter().map(|s| Duration::from_secs(*s)).collect())
    }

    #[test]
    fn retries_follow_the_schedule_with_jitter_then_fail() {
        let schedule = schedule(&[0, 100, 1000]);
        let now = Utc::now();
        for _ in 0..100 {
            let NextStep::RetryAt(at) = schedule.after_failure(1, None, now) else { panic!("retry expected") };
            let delay = (at - now).num_milliseconds();
            assert!((80_000..=120_000).contains(&delay), "{delay} ms is outside 100 s ± 20%");
        }
        assert!(matches!(schedule.after_failure(2, None, now), NextStep::RetryAt(_)));
        assert_eq!(schedule.after_failure(3, None, now), NextStep::Failed);
    }

    #[test]
    fn retry_after_delays_within_bounds() {
        let schedule = schedule(&[0, 1, 1]);
        let now = Utc::now();
        let NextStep::RetryAt(at) = schedule.after_failure(1, Some(Duration::from_secs(30)), now) else { panic!() };
        assert_eq!((at - now).num_seconds(), 30);
        let NextStep::RetryAt(at) = schedule.after_failure(1, Some(Duration::from_secs(999_999)), now) else {
            panic!()
        };
        assert_eq!((at - now).num_seconds(), MAX_RETRY_AFTER.as_secs() as i64);
    }
}
