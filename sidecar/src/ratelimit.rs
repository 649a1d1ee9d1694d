//! Per-key rate limits with GCRA (`governor`), enforced per sidecar instance:
//! N sidecars in front of one app let through up to N times a key's limit.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use moka::sync::Cache;

type Limit = (u32, Duration);

/// One GCRA limiter per key, rebuilt when the key's limit changes.
#[derive(Clone)]
pub struct RateLimits {
    limiters: Cache<String, Arc<(Limit, DefaultDirectRateLimiter)>>,
    clock: DefaultClock,
}

impl RateLimits {
    /// Limiters for up to `capacity` keys; idle ones are dropped after `idle`.
    pub fn new(capacity: u64, idle: Duration) -> Self {
        Self {
            limiters: Cache::builder().max_capacity(capacity).time_to_idle(idle).build(),
            clock: DefaultClock::default(),
        }
    }

    /// Takes one request from `key_id`'s budget; `Err(wait)` when over the limit.
    pub fn check(&self, key_id: &str, limit: Limit) -> Result<(), Duration> {
        let (requests, window) = limit;
        let Some(burst) = NonZeroU32::new(requests) else {
            return Ok(());
        };
        let entry = match self.limiters.get(key_id) {
            Some(entry) if entry.0 == limit => entry,
            _ => {
                let period = (window / requests).max(Duration::from_nanos(1));
                let Some(quota) = Quota::with_period(period) else {
                    return Ok(());
                };
                let entry = Arc::new((limit, RateLimiter::direct(quota.allow_burst(burst))));
                self.limiters.insert(key_id.to_owned(), entry.clone());
                entry
            }
        };
        entry.1.check().map_err(|not_until| not_until.wait_time_from(self.clock.now()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_refusal_with_wait() {
        let limits = RateLimits::new(10, Duration::from_secs(60));
        let limit = (3, Duration::from_secs(60));
        for _ in 0..3 {
            assert!(limits.check("k", limit).is_ok());
        }
        let wait = limits.check("k", limit).unwrap_err();
        assert!(wait > Duration::from_secs(10) && wait <= Duration::from_secs(20), "{wait:?}");
        assert!(limits.check("other", limit).is_ok(), "per key");
        assert!(limits.check("k", (10, Duration::from_secs(1))).is_ok(), "a changed limit starts afresh");
    }
}
