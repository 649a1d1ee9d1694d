//! The time window of a usage query: a granularity and a range rounded to
//! whole buckets, checked against what is kept, and the zero-filled series
//! a graph needs.

use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::error::{Error, Result};
use crate::store::usage::Granularity;

/// Most buckets in one series.
pub const MAX_POINTS: i64 = 1500;
/// How far past now a range may end (clock skew between caller and server).
const FUTURE_SLACK: i64 = 60;

/// How long each rollup is kept.
#[derive(Clone, Copy, Debug)]
pub struct Retention {
    pub minutes: Duration,
    pub hours: Duration,
    pub days: Duration,
}

impl Retention {
    pub fn of(&self, granularity: Granularity) -> Duration {
        match granularity {
            Granularity::Minute => self.minutes,
            Granularity::Hour => self.hours,
            Granularity::Day => self.days,
        }
    }
}

/// A checked query range: `[start, end)` in whole buckets (Unix seconds).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    pub granularity: Granularity,
    pub start: i64,
    pub end: i64,
}

/// A requested range, as the caller gave it.
#[derive(Clone, Copy, Debug)]
pub struct RangeRequest {
    pub start: Option<DateTime<Utc>>,
    pub end: Option<DateTime<Utc>>,
    pub granularity: Option<Granularity>,
}

impl RangeRequest {
    /// The window: `start` rounded down and `end` up to whole buckets.
    /// Refused (naming the field) when a bound is missing or in the future,
    /// the range is empty, starts before the granularity's retention, or
    /// holds more than [`MAX_POINTS`] buckets.
    pub fn resolve(&self, now: DateTime<Utc>, retention: &Retention) -> Result<Window> {
        let granularity = self.granularity.ok_or_else(|| Error::invalid("granularity", "is required"))?;
        let start = self.start.ok_or_else(|| Error::invalid("start_time", "is required"))?;
        let end = self.end.ok_or_else(|| Error::invalid("end_time", "is required"))?;
        if end <= start {
            return Err(Error::invalid("end_time", "must be after start_time"));
        }
        if start > now {
            return Err(Error::invalid("start_time", "is in the future"));
        }
        if end.timestamp() > now.timestamp() + FUTURE_SLACK {
            return Err(Error::invalid("end_time", "is in the future"));
        }
        let kept = retention.of(granularity);
        let oldest = now - chrono::Duration::from_std(kept).unwrap_or(chrono::Duration::MAX);
        if start < oldest {
            return Err(Error::invalid(
                "start_time",
                format!(
                    "{} buckets are kept for {}; start later or use a coarser granularity",
                    name(granularity),
                    humantime::format_duration(kept)
                ),
            ));
        }
        let width = granularity.seconds();
        let window = Window {
            granularity,
            start: granularity.bucket_of(start.timestamp()),
            end: granularity.bucket_of(end.timestamp() + width - 1),
        };
        let points = (window.end - window.start) / width;
        if points > MAX_POINTS {
            return Err(Error::invalid(
                "end_time",
                format!(
                    "the range holds {points} {} buckets; at most {MAX_POINTS}: shorten it or use a coarser granularity",
                    name(granularity)
                ),
            ));
        }
        Ok(window)
    }
}

fn name(granularity: Granularity) -> &'static str {
    match granularity {
        Granularity::Minute => "minute",
        Granularity::Hour => "hour",
        Granularity::Day => "day",
    }
}

impl Window {
    /// Every bucket of the window, oldest first, with the values of `sparse`
    /// (sorted by bucket) and `T::default()` where it has none.
    pub fn fill<T: Default>(&self, sparse: Vec<(i64, T)>) -> Vec<(DateTime<Utc>, T)> {
        let mut sparse = sparse.into_iter().peekable();
        let mut filled = Vec::new();
        let mut bucket = self.start;
        while bucket < self.end {
            let value = match sparse.next_if(|(at, _)| *at == bucket) {
                Some((_, value)) => value,
                None => T::default(),
            };
            filled.push((DateTime::from_timestamp(bucket, 0).unwrap_or_default(), value));
            bucket += self.granularity.seconds();
        }
        filled
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn retention() -> Retention {
        Retention {
            minutes: Duration::from_secs(48 * 3600),
            hours: Duration::from_secs(90 * 86_400),
            days: Duration::from_secs(730 * 86_400),
        }
    }

    fn at(text: &str) -> DateTime<Utc> {
        text.parse().unwrap()
    }

    fn request(start: &str, end: &str, granularity: Granularity) -> RangeRequest {
        RangeRequest { start: Some(at(start)), end: Some(at(end)), granularity: Some(granularity) }
    }

    fn field(result: Result<Window>) -> String {
        match result {
            Err(Error::InvalidArgument(violations)) => violations[0].field.clone(),
            other => panic!("expected a violation, got {other:?}"),
        }
    }

    #[test]
    fn ranges_round_to_whole_buckets_and_fill_with_zeros() {
        let now = at("2026-12-02T12:34:56Z");
        let window = request("2026-12-02T10:15:00Z", "2026-12-02T12:34:56Z", Granularity::Hour)
            .resolve(now, &retention())
            .unwrap();
        assert_eq!(window.start, at("2026-12-02T10:00:00Z").timestamp());
        assert_eq!(window.end, at("2026-12-02T13:00:00Z").timestamp());
        let filled = window.fill(vec![(at("2026-12-02T11:00:00Z").timestamp(), 7u64)]);
        let values: Vec<u64> = filled.iter().map(|(_, v)| *v).collect();
        assert_eq!(values, [0, 7, 0]);
        assert_eq!(filled[0].0, at("2026-12-02T10:00:00Z"));
    }

    #[test]
    fn bad_ranges_name_the_field() {
        let now = at("2026-12-02T12:00:00Z");
        let r = retention();
        let g = Granularity::Minute;
        assert_eq!(field(request("2026-12-02T11:00:00Z", "2026-12-02T10:00:00Z", g).resolve(now, &r)), "end_time");
        assert_eq!(field(request("2026-12-02T13:00:00Z", "2026-12-02T14:00:00Z", g).resolve(now, &r)), "start_time");
        assert_eq!(field(request("2026-12-02T11:00:00Z", "2026-12-02T14:00:00Z", g).resolve(now, &r)), "end_time");
        // Minutes are kept 48 hours; 30 days of minutes are too many points anyway.
        assert_eq!(field(request("2026-11-02T00:00:00Z", "2026-12-01T00:00:00Z", g).resolve(now, &r)), "start_time");
        assert_eq!(
            field(request("2026-12-01T00:00:00Z", "2026-12-02T12:00:00Z", g).resolve(now, &r)),
            "end_time",
            "36 hours of minutes exceed 1500 points"
        );
        let missing = RangeRequest { start: None, end: Some(now), granularity: Some(g) };
        assert_eq!(field(missing.resolve(now, &r)), "start_time");
        let no_granularity =
            RangeRequest { granularity: None, ..request("2026-12-02T11:00:00Z", "2026-12-02T12:00:00Z", g) };
        assert_eq!(field(no_granularity.resolve(now, &r)), "granularity");
        assert!(request("2026-12-01T12:00:00Z", "2026-12-02T12:00:00Z", g).resolve(now, &r).is_ok(), "1440 points");
    }
}
