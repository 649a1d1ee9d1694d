//! The value types of the limits a key or an identity carries (a rate
//! limit, an allow-list, credits and their refill) and their column forms;
//! `store/limits.rs` reads and writes them in rows, `store/credits.rs`
//! spends and leases credits.

use std::time::Duration;

use chrono::{DateTime, Datelike, NaiveDate, TimeZone, Utc};
use sea_orm::entity::prelude::Json;

/// When credits are refilled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RefillPeriod {
    /// This long after the previous refill.
    Every(Duration),
    /// Every day at 00:00 UTC.
    Daily,
    /// Every month on this day (1–31, the last day of shorter months) at 00:00 UTC.
    Monthly(u32),
}

impl RefillPeriod {
    /// The stored form: `every:<ms>`, `daily`, `monthly:<day>`.
    pub fn to_column(self) -> String {
        match self {
            RefillPeriod::Every(every) => format!("every:{}", every.as_millis()),
            RefillPeriod::Daily => "daily".into(),
            RefillPeriod::Monthly(day) => format!("monthly:{day}"),
        }
    }

    /// Parses the stored form.
    pub fn from_column(text: &str) -> Option<Self> {
        match text.split_once(':') {
            None if text == "daily" => Some(RefillPeriod::Daily),
            Some(("every", ms)) => ms.parse().ok().map(|ms| RefillPeriod::Every(Duration::from_millis(ms))),
            Some(("monthly", day)) => day.parse().ok().map(RefillPeriod::Monthly),
            _ => None,
        }
    }

    /// The first refill strictly after `after`.
    pub fn next_after(self, after: DateTime<Utc>) -> DateTime<Utc> {
        let midnight = |date: NaiveDate| Utc.from_utc_datetime(&date.and_hms_opt(0, 0, 0).unwrap_or_default());
        match self {
            RefillPeriod::Every(every) => after + chrono::Duration::from_std(every).unwrap_or(chrono::Duration::MAX),
            RefillPeriod::Daily => midnight(after.date_naive() + chrono::Days::new(1)),
            RefillPeriod::Monthly(day) => {
                let on_day = |year: i32, month: u32| {
                    // The day, or the month's last day when it is shorter.
                    (1..=day.clamp(1, 31)).rev().find_map(|d| NaiveDate::from_ymd_opt(year, month, d)).map(midnight)
                };
                let (year, month) = (after.year(), after.month());
                let this_month = on_day(year, month).filter(|at| *at > after);
                let (next_year, next_month) = if month == 12 { (year + 1, 1) } else { (year, month + 1) };
                this_month.or_else(|| on_day(next_year, next_month)).unwrap_or(after)
            }
        }
    }
}

/// A refill: `amount` each `period`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Refill {
    pub amount: u64,
    pub period: RefillPeriod,
}

/// A key's credits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Credits {
    pub remaining: u64,
    pub refill: Option<Refill>,
    /// When the next refill happens (output only).
    pub next_refill_at: Option<DateTime<Utc>>,
    /// Below what an `api_key.credits_low` notice is published.
    pub low_alert: Option<LowCredits>,
}

/// When credits count as low.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LowCredits {
    /// Fewer than this many left.
    Below(u64),
    /// Fewer than this percentage (1–99) of the refill amount left.
    PercentOfRefill(u8),
}

impl LowCredits {
    /// The stored form: `below:<n>` or `percent:<p>`.
    pub fn to_column(self) -> String {
        match self {
            LowCredits::Below(n) => format!("below:{n}"),
            LowCredits::PercentOfRefill(p) => format!("percent:{p}"),
        }
    }

    /// Parses the stored form.
    pub fn from_column(text: &str) -> Option<Self> {
        match text.split_once(':')? {
            ("below", n) => n.parse().ok().map(LowCredits::Below),
            ("percent", p) => p.parse().ok().map(LowCredits::PercentOfRefill),
            _ => None,
        }
    }
}

impl Credits {
    /// The number of credits below which they are low, if an alert is set
    /// (a percentage needs a refill to be a percentage of).
    pub fn low_threshold(&self) -> Option<u64> {
        match self.low_alert? {
            LowCredits::Below(n) => Some(n),
            LowCredits::PercentOfRefill(p) => Some(self.refill?.amount.saturating_mul(u64::from(p)) / 100),
        }
    }

    /// Whether they are low now.
    pub fn are_low(&self) -> bool {
        self.low_threshold().is_some_and(|threshold| self.remaining < threshold)
    }
}

/// A change to the remaining credits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CreditsChange {
    Set(u64),
    Add(u64),
    Subtract(u64),
}

impl CreditsChange {
    /// The remaining credits after the change (a key without credits starts from 0).
    pub fn apply(self, remaining: Option<i64>) -> i64 {
        let remaining = remaining.unwrap_or(0);
        let clamp = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        match self {
            CreditsChange::Set(n) => clamp(n),
            CreditsChange::Add(n) => remaining.saturating_add(clamp(n)),
            CreditsChange::Subtract(n) => remaining.saturating_sub(clamp(n)).max(0),
        }
    }
}

/// The refill columns for `refill` from `now`: (amount, period, next refill).
pub fn refill_columns(
    refill: Option<Refill>,
    now: DateTime<Utc>,
) -> (Option<i64>, Option<String>, Option<DateTime<Utc>>) {
    match refill {
        Some(refill) => {
            (i64::try_from(refill.amount).ok(), Some(refill.period.to_column()), Some(refill.period.next_after(now)))
        }
        None => (None, None, None),
    }
}

impl Credits {
    /// The credits stored in these columns (the same on keys and
    /// identities), if the holder is limited to a number of uses.
    pub(super) fn from_columns(
        remaining: Option<i64>,
        refill_amount: Option<i64>,
        refill_period: Option<&str>,
        next_refill_at: Option<DateTime<Utc>>,
        low_alert: Option<&str>,
    ) -> Option<Self> {
        let remaining = u64::try_from(remaining?).unwrap_or(0);
        let refill = match (refill_amount, refill_period.and_then(RefillPeriod::from_column)) {
            (Some(amount), Some(period)) => Some(Refill { amount: u64::try_from(amount).unwrap_or(0), period }),
            _ => None,
        };
        Some(Credits { remaining, refill, next_refill_at, low_alert: low_alert.and_then(LowCredits::from_column) })
    }
}

/// At most `requests` uses per `window` (stored as three columns).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimit {
    pub requests: u32,
    pub window: Duration,
    /// One budget per window shared by every sidecar (leased), instead of
    /// one per sidecar.
    pub global: bool,
}

/// `rate_limit_scope` of a global rate limit (NULL is local).
const GLOBAL_SCOPE: &str = "global";

impl RateLimit {
    /// The column values (requests, window ms, scope); callers check the
    /// ranges before storing.
    pub(super) fn columns(limit: Option<Self>) -> (Option<i32>, Option<i64>, Option<String>) {
        match limit {
            Some(limit) => (
                i32::try_from(limit.requests).ok(),
                i64::try_from(limit.window.as_millis()).ok(),
                limit.global.then(|| GLOBAL_SCOPE.to_owned()),
            ),
            None => (None, None, None),
        }
    }

    /// The rate limit stored in these columns, if there is one.
    pub(super) fn from_columns(requests: Option<i32>, window_ms: Option<i64>, scope: Option<&str>) -> Option<Self> {
        Some(RateLimit {
            requests: u32::try_from(requests?).ok()?,
            window: Duration::from_millis(u64::try_from(window_ms?).ok()?),
            global: scope == Some(GLOBAL_SCOPE),
        })
    }
}

/// The stored form of an allow-list: NULL when it is empty.
pub(super) fn cidr_column(cidrs: Vec<String>) -> Option<Json> {
    (!cidrs.is_empty()).then(|| serde_json::json!(cidrs))
}

/// The canonical CIDRs of a stored allow-list; empty = anywhere.
pub(super) fn cidr_list(column: Option<Json>) -> Vec<String> {
    column.and_then(|list| serde_json::from_value(list).ok()).unwrap_or_default()
}

/// Whether a client at `client` passes the allow-list in `column`: any
/// client when there is none, otherwise only one inside it.
pub(super) fn allows(column: Option<Json>, client: Option<std::net::IpAddr>) -> bool {
    let allowed = cidr_list(column);
    allowed.is_empty()
        || client.map(|ip| ip.to_canonical()).is_some_and(|ip| {
            allowed.iter().filter_map(|cidr| cidr.parse::<ipnet::IpNet>().ok()).any(|net| net.contains(&ip))
        })
}
