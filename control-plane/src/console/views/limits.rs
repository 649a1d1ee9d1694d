//! A key's or an identity's limits in the console: how they are shown,
//! the fields that set them on a new key, and the fields that change them.
//! Their markup is `templates/limits.html` (`show`, `new_fields`,
//! `change_fields`), so a new limit is added here and there only.

use serde::Deserialize;

use super::when;
use crate::console::input::{duration, whole_number, words};
use crate::error::{Error, Result};
use crate::service::records::{
    CreditsChange, LimitChanges, Limits, LowCredits, NewLimits, RateLimit, Refill, RefillPeriod,
};
use crate::service::validate::Violations;

/// Limits as shown, and as the change form starts out.
pub struct LimitsView {
    /// `100/1m (per sidecar)`, or `none`.
    pub rate_limit: String,
    /// Remaining credits and the next refill, or `unlimited`.
    pub credits: String,
    /// Allowed client networks, space-separated, or `anywhere`.
    pub allowed_cidrs: String,
    /// The change form's values: `100/1m` (empty for none), the global box.
    pub rate_limit_input: String,
    pub rate_limit_global: bool,
    /// Space-separated; empty for anywhere.
    pub allowed_cidrs_input: String,
    /// The low-credits alert as typed: `100` or `10%`; empty for none.
    pub credits_low_input: String,
}

impl LimitsView {
    pub fn of(limits: &Limits) -> Self {
        let rate_limit = limits.rate_limit.map(|l| format!("{}/{}", l.requests, humantime::format_duration(l.window)));
        let global = limits.rate_limit.is_some_and(|l| l.global);
        LimitsView {
            rate_limit: match (&rate_limit, global) {
                (None, _) => "none".to_owned(),
                (Some(limit), true) => format!("{limit} (global: shared by all sidecars)"),
                (Some(limit), false) => format!("{limit} (per sidecar)"),
            },
            credits: match &limits.credits {
                None => "unlimited".to_owned(),
                Some(credits) => {
                    (match credits.next_refill_at {
                        Some(at) => format!(
                            "{} left, refilled to {} at {}",
                            credits.remaining,
                            credits.refill.map_or(0, |r| r.amount),
                            when(at)
                        ),
                        None => format!("{} left", credits.remaining),
                    }) + &credits.low_alert.map(|a| format!("; low below {}", alert_text(a))).unwrap_or_default()
                }
            },
            allowed_cidrs: match limits.allowed_cidrs.join(" ") {
                list if list.is_empty() => "anywhere".to_owned(),
                list => list,
            },
            rate_limit_input: rate_limit.unwrap_or_default(),
            rate_limit_global: global,
            allowed_cidrs_input: limits.allowed_cidrs.join(" "),
            credits_low_input: limits.credits.and_then(|c| c.low_alert).map(alert_text).unwrap_or_default(),
        }
    }
}

/// A low-credits alert as typed: `100` or `10%`.
fn alert_text(alert: LowCredits) -> String {
    match alert {
        LowCredits::Below(n) => n.to_string(),
        LowCredits::PercentOfRefill(p) => format!("{p}%"),
    }
}

/// A low-credits alert typed as `100` or `10%` (of the refill); none when empty.
fn alert(field: &str, text: &str) -> Result<Option<LowCredits>> {
    let text = text.trim();
    if text.is_empty() {
        return Ok(None);
    }
    match text.strip_suffix('%') {
        Some(percent) => match percent.trim().parse::<u8>() {
            Ok(p) if (1..=99).contains(&p) => Ok(Some(LowCredits::PercentOfRefill(p))),
            _ => Err(Error::invalid(field, "a percentage must be 1% to 99%")),
        },
        None => match whole_number(field, text)? {
            0 => Err(Error::invalid(field, "must be at least 1")),
            n => Ok(Some(LowCredits::Below(n))),
        },
    }
}

/// The limit fields of the new-key form, as typed (kept to show again).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct NewLimitsForm {
    /// `100/1m`; empty for none (spelled as in the change form).
    pub rate_limit: String,
    /// Checked: one budget shared by all sidecars.
    pub rate_limit_global: Option<String>,
    /// Networks, comma- or space-separated; empty for anywhere.
    pub allowed_cidrs: String,
    /// Uses allowed; empty for unlimited.
    pub credits: String,
    /// Credits each refill sets; empty for no refill.
    pub refill_amount: String,
    /// `daily`, `monthly:<day>` or a duration such as `1h`.
    pub refill_period: String,
    /// `100` or `10%`; empty for no low-credits alert.
    pub credits_low: String,
}

impl NewLimitsForm {
    /// The limits typed; each bad field is added to `violations`.
    pub fn limits(&self, violations: &mut Violations) -> Result<NewLimits> {
        let rate_limit = rate_limit_text(violations, "rate_limit", &self.rate_limit, self.rate_limit_global.is_some())?;
        let credits = violations.absorb(self.credits())?.flatten();
        let credits_low_alert = violations.absorb(alert("credits.low_alert", &self.credits_low))?.flatten();
        if matches!(credits_low_alert, Some(LowCredits::PercentOfRefill(_)))
            && credits.is_some_and(|(_, r)| r.is_none())
        {
            violations.add("credits.low_alert", "a percentage needs a refill; give a number instead");
        }
        Ok(NewLimits { rate_limit, allowed_cidrs: words(&self.allowed_cidrs), credits, credits_low_alert })
    }

    /// A count (empty: unlimited) and an optional refill.
    fn credits(&self) -> Result<Option<(u64, Option<Refill>)>> {
        if self.credits.trim().is_empty() {
            return Ok(None);
        }
        let remaining = whole_number("credits.remaining", &self.credits)?;
        if self.refill_amount.trim().is_empty() && self.refill_period.trim().is_empty() {
            return Ok(Some((remaining, None)));
        }
        let amount = whole_number("credits.refill.amount", &self.refill_amount)?;
        let period = match self.refill_period.trim() {
            "daily" => RefillPeriod::Daily,
            text => match text.strip_prefix("monthly:") {
                Some(day) => RefillPeriod::Monthly(whole_number("credits.refill.period", day)? as u32),
                None => RefillPeriod::Every(duration("credits.refill.period", text)?.ok_or_else(|| {
                    Error::invalid("credits.refill.period", "daily, monthly:<day> or a duration such as 1h")
                })?),
            },
        };
        Ok(Some((remaining, Some(Refill { amount, period }))))
    }
}

/// The limit fields of a change form.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct ChangeLimitsForm {
    /// `100/1m`; empty for none.
    pub rate_limit: String,
    /// Checked: the rate limit is global.
    pub rate_limit_global: Option<String>,
    pub allowed_cidrs: String,
    /// `set`, `add`, `subtract`, or empty to leave the credits alone.
    pub credits_change: String,
    pub credits_amount: String,
    /// `100` or `10%`; empty for none.
    pub credits_low: String,
}

impl ChangeLimitsForm {
    /// The changes typed; each bad field is added to `violations`.
    pub fn changes(&self, violations: &mut Violations) -> Result<LimitChanges> {
        let global = self.rate_limit_global.is_some();
        let rate_limit = rate_limit_text(violations, "update.rate_limit", &self.rate_limit, global)?;
        let credits = match self.credits_change.as_str() {
            "" => None,
            change => violations.absorb(credits_change(change, &self.credits_amount))?,
        };
        let credits_low_alert = violations.absorb(alert("update.credits_low_alert", &self.credits_low))?;
        Ok(LimitChanges {
            rate_limit: Some(rate_limit),
            allowed_cidrs: Some(words(&self.allowed_cidrs)),
            credits,
            credits_low_alert,
            ..LimitChanges::default()
        })
    }
}

fn credits_change(change: &str, amount: &str) -> Result<CreditsChange> {
    let amount = whole_number("update.credits", amount)?;
    match change {
        "set" => Ok(CreditsChange::Set(amount)),
        "add" => Ok(CreditsChange::Add(amount)),
        "subtract" => Ok(CreditsChange::Subtract(amount)),
        _ => Err(Error::invalid("update.credits", "set, add or subtract")),
    }
}

/// A rate limit typed `requests/window` (`100/1m`); none when empty.
fn rate_limit_text(violations: &mut Violations, field: &str, text: &str, global: bool) -> Result<Option<RateLimit>> {
    match text.trim().split_once('/') {
        None if text.trim().is_empty() => Ok(None),
        Some((requests, window)) => Ok(violations.absorb(rate_limit(requests, window, global))?.flatten()),
        None => {
            violations.add(field, "must be requests/window, e.g. 100/1m");
            Ok(None)
        }
    }
}

fn rate_limit(requests: &str, window: &str, global: bool) -> Result<Option<RateLimit>> {
    if requests.trim().is_empty() && window.trim().is_empty() {
        return Ok(None);
    }
    let requests =
        requests.trim().parse::<u32>().map_err(|_| Error::invalid("rate_limit.requests", "must be a whole number"))?;
    let window =
        duration("rate_limit.window", window)?.ok_or_else(|| Error::invalid("rate_limit.window", "is required"))?;
    Ok(Some(RateLimit { requests, window, global }))
}
