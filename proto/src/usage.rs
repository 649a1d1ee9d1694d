//! Counting checks for usage reports, in memory: per key, UTC minute and
//! outcome. The sidecar counts its checks with it and the control plane its
//! own VerifyApiKey calls, so both report the same shape and nothing is
//! written per check.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

/// How a check ended, as usage analytics count it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Outcome {
    Allowed,
    /// 401: unknown, revoked or expired key, or a wrong secret.
    Unauthorized,
    /// 403: missing scope or wrong environment.
    Forbidden,
    /// 429.
    RateLimited,
}

/// One key's checks in one minute.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MinuteCounts {
    /// Unix seconds of the minute's start.
    pub minute: i64,
    /// Indexed by [`Outcome`] in declaration order.
    pub counts: [u64; 4],
    /// The latest allowed check, when there was one.
    pub last_allowed: Option<SystemTime>,
}

/// Checks counted since the last drain.
#[derive(Debug, Default)]
pub struct UsageTally {
    /// Key id → its minutes (usually one or two between drains).
    keys: Mutex<HashMap<String, Vec<MinuteCounts>>>,
}

impl UsageTally {
    /// Counts one check of `key_id` now.
    pub fn record(&self, key_id: &str, outcome: Outcome) {
        self.record_at(key_id, outcome, SystemTime::now());
    }

    /// Counts one check of `key_id` at `at`.
    pub fn record_at(&self, key_id: &str, outcome: Outcome, at: SystemTime) {
        let seconds = at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64);
        let minute = seconds - seconds.rem_euclid(60);
        let mut keys = self.keys.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let minutes = match keys.get_mut(key_id) {
            Some(minutes) => minutes,
            None => keys.entry(key_id.to_owned()).or_default(),
        };
        let index = match minutes.iter().rposition(|m| m.minute == minute) {
            Some(index) => index,
            None => {
                minutes.push(MinuteCounts { minute, counts: [0; 4], last_allowed: None });
                minutes.len() - 1
            }
        };
        let entry = &mut minutes[index];
        entry.counts[outcome as usize] += 1;
        if outcome == Outcome::Allowed {
            entry.last_allowed = Some(entry.last_allowed.map_or(at, |last| last.max(at)));
        }
    }

    /// Everything counted so far, per key and minute, leaving the tally empty.
    pub fn drain(&self) -> Vec<(String, MinuteCounts)> {
        let keys = std::mem::take(&mut *self.keys.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
        keys.into_iter().flat_map(|(key_id, minutes)| minutes.into_iter().map(move |m| (key_id.clone(), m))).collect()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn counts_split_by_key_minute_and_outcome() {
        let tally = UsageTally::default();
        // 1_800_000_000 is a whole minute.
        let minute = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        for (key, outcome, offset) in [
            ("key_a", Outcome::Allowed, 1),
            ("key_a", Outcome::Allowed, 59),
            ("key_a", Outcome::RateLimited, 30),
            ("key_a", Outcome::Allowed, 61),
            ("key_b", Outcome::Forbidden, 0),
            ("key_b", Outcome::Unauthorized, 0),
        ] {
            tally.record_at(key, outcome, minute + Duration::from_secs(offset));
        }
        let mut counts = tally.drain();
        counts.sort_by_key(|(key, m)| (key.clone(), m.minute));
        let start = 1_800_000_000;
        let summary: Vec<_> = counts.iter().map(|(key, m)| (key.as_str(), m.minute - start, m.counts)).collect();
        assert_eq!(summary, [("key_a", 0, [2, 0, 0, 1]), ("key_a", 60, [1, 0, 0, 0]), ("key_b", 0, [0, 1, 1, 0])]);
        assert_eq!(counts[0].1.last_allowed, Some(minute + Duration::from_secs(59)));
        assert!(counts[2].1.last_allowed.is_none(), "no allowed check, no last use");
        assert!(tally.drain().is_empty());
    }
}
