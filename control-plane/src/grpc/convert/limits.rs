//! The limits of keys and identities (rate limit, allow-list, credits),
//! read the same way from either's create and update requests.

use keyplane_proto::admin::v1 as pb;

use super::{duration_from_proto, time_to_proto};
use crate::error::{Error, Result};
use crate::service::records::{
    Credits, CreditsChange, HasLimits, LimitChanges, LowCredits, NewLimits, RateLimit, Refill, RefillPeriod,
};

/// A create request (of a key or an identity): its limit fields, taken out.
pub trait CreateLimits {
    fn take_limits(&mut self) -> (Option<pb::RateLimit>, Vec<String>, Option<pb::Credits>);
}

/// A message showing a key's or an identity's limits.
pub trait WithLimits {
    /// The message with `holder`'s limits in it.
    fn with_limits(self, holder: &impl HasLimits) -> Self;
}

/// The limit fields have the same names in every message that carries
/// them: one list of them for each kind of message.
macro_rules! limit_fields {
    (create: $($request:ty),+) => {$(
        impl CreateLimits for $request {
            fn take_limits(&mut self) -> (Option<pb::RateLimit>, Vec<String>, Option<pb::Credits>) {
                (self.rate_limit.take(), std::mem::take(&mut self.allowed_cidrs), self.credits.take())
            }
        }
    )+};
    (update: $($update:ty),+) => {$(
        impl<'a> From<&'a $update> for LimitUpdate<'a> {
            fn from(update: &'a $update) -> Self {
                let (rate_limit, credits, credit_refill) = (update.rate_limit, update.credits, update.credit_refill);
                let allowed_cidrs = &update.allowed_cidrs;
                let credits_low_alert = update.credits_low_alert;
                LimitUpdate { rate_limit, allowed_cidrs, credits, credit_refill, credits_low_alert }
            }
        }
    )+};
    (resource: $($resource:ty),+) => {$(
        impl WithLimits for $resource {
            fn with_limits(mut self, holder: &impl HasLimits) -> Self {
                self.rate_limit = holder.rate_limit().map(rate_limit_to_proto);
                self.allowed_cidrs = holder.allowed_cidr_list();
                self.credits = holder.credits().map(credits_to_proto);
                self
            }
        }
    )+};
    (principal: $($principal:ty),+) => {$(
        impl WithLimits for $principal {
            fn with_limits(mut self, holder: &impl HasLimits) -> Self {
                self.rate_limit = holder.rate_limit().map(rate_limit_to_proto);
                self.allowed_cidrs = holder.allowed_cidr_list();
                self.has_credits = holder.has_credits();
                self
            }
        }
    )+};
}

limit_fields!(create: pb::CreateApiKeyRequest, pb::CreateIdentityRequest);
limit_fields!(update: pb::ApiKeyUpdate, pb::IdentityUpdate);
limit_fields!(resource: pb::ApiKey, pb::Identity);
limit_fields!(principal: pb::Principal, pb::PrincipalIdentity);

/// The limits of a create request → domain.
pub fn new_limits(request: &mut impl CreateLimits) -> Result<NewLimits> {
    let (rate_limit, allowed_cidrs, credits) = request.take_limits();
    let alert = credits.as_ref().and_then(|c| c.low_alert);
    let credits = credits.map(|c| credits_from_proto("credits", c)).transpose()?;
    let credits_low_alert = alert.map(|a| low_alert_from_proto("credits.low_alert", a)).transpose()?;
    if matches!(credits_low_alert, Some(LowCredits::PercentOfRefill(_))) && credits.is_some_and(|(_, r)| r.is_none()) {
        return Err(Error::invalid("credits.low_alert.percent_of_refill", "needs a refill; give `below` instead"));
    }
    Ok(NewLimits {
        rate_limit: rate_limit.map(|l| rate_limit_from_proto("rate_limit", l)).transpose()?,
        allowed_cidrs,
        credits,
        credits_low_alert,
    })
}

/// Protobuf low-credits alert → domain.
pub fn low_alert_from_proto(field: &str, alert: pb::LowCreditsAlert) -> Result<LowCredits> {
    match alert.threshold {
        Some(pb::low_credits_alert::Threshold::Below(n)) if n >= 1 => Ok(LowCredits::Below(n)),
        Some(pb::low_credits_alert::Threshold::PercentOfRefill(p)) if (1..=99).contains(&p) => {
            Ok(LowCredits::PercentOfRefill(u8::try_from(p).unwrap_or(99)))
        }
        Some(pb::low_credits_alert::Threshold::Below(_)) => {
            Err(Error::invalid(format!("{field}.below"), "must be at least 1"))
        }
        Some(pb::low_credits_alert::Threshold::PercentOfRefill(_)) => {
            Err(Error::invalid(format!("{field}.percent_of_refill"), "must be between 1 and 99"))
        }
        None => Err(Error::invalid(field, "set one of below or percent_of_refill")),
    }
}

fn low_alert_to_proto(alert: LowCredits) -> pb::LowCreditsAlert {
    let threshold = match alert {
        LowCredits::Below(n) => pb::low_credits_alert::Threshold::Below(n),
        LowCredits::PercentOfRefill(p) => pb::low_credits_alert::Threshold::PercentOfRefill(u32::from(p)),
    };
    pb::LowCreditsAlert { threshold: Some(threshold) }
}

/// Protobuf rate limit → domain.
pub fn rate_limit_from_proto(field: &str, limit: pb::RateLimit) -> Result<RateLimit> {
    let window = limit.window.ok_or_else(|| Error::invalid(format!("{field}.window"), "is required"))?;
    let global = match pb::RateLimitScope::try_from(limit.scope) {
        Ok(pb::RateLimitScope::Unspecified | pb::RateLimitScope::Local) => false,
        Ok(pb::RateLimitScope::Global) => true,
        Err(_) => return Err(Error::invalid(format!("{field}.scope"), format!("unknown scope {}", limit.scope))),
    };
    Ok(RateLimit { requests: limit.requests, window: duration_from_proto(&format!("{field}.window"), window)?, global })
}

fn rate_limit_to_proto(limit: RateLimit) -> pb::RateLimit {
    let scope = if limit.global { pb::RateLimitScope::Global } else { pb::RateLimitScope::Local };
    pb::RateLimit {
        requests: limit.requests,
        window: prost_types::Duration::try_from(limit.window).ok(),
        scope: scope.into(),
    }
}

fn credits_to_proto(credits: Credits) -> pb::Credits {
    pb::Credits {
        remaining: credits.remaining,
        refill: credits.refill.map(|refill| pb::CreditRefill {
            amount: refill.amount,
            period: Some(match refill.period {
                RefillPeriod::Every(every) => {
                    pb::credit_refill::Period::Every(prost_types::Duration::try_from(every).unwrap_or_default())
                }
                RefillPeriod::Daily => pb::credit_refill::Period::Daily(true),
                RefillPeriod::Monthly(day) => pb::credit_refill::Period::MonthlyOnDay(day),
            }),
            next_refill_at: credits.next_refill_at.map(time_to_proto),
        }),
        low_alert: credits.low_alert.map(low_alert_to_proto),
    }
}

/// Protobuf credits → (remaining, refill).
pub fn credits_from_proto(field: &str, credits: pb::Credits) -> Result<(u64, Option<Refill>)> {
    let refill = credits.refill.map(|r| refill_from_proto(&format!("{field}.refill"), r)).transpose()?;
    Ok((credits.remaining, refill))
}

/// Protobuf refill → domain.
pub fn refill_from_proto(field: &str, refill: pb::CreditRefill) -> Result<Refill> {
    let period = match refill.period {
        Some(pb::credit_refill::Period::Every(every)) => {
            RefillPeriod::Every(duration_from_proto(&format!("{field}.every"), every)?)
        }
        Some(pb::credit_refill::Period::Daily(true)) => RefillPeriod::Daily,
        Some(pb::credit_refill::Period::MonthlyOnDay(day)) => RefillPeriod::Monthly(day),
        Some(pb::credit_refill::Period::Daily(false)) | None => {
            return Err(Error::invalid(format!("{field}.period"), "set one of every, daily or monthly_on_day"));
        }
    };
    Ok(Refill { amount: refill.amount, period })
}

/// Protobuf credits change → domain.
pub fn credits_change_from_proto(field: &str, change: Option<pb::CreditsChange>) -> Result<CreditsChange> {
    match change.and_then(|c| c.change) {
        Some(pb::credits_change::Change::Set(n)) => Ok(CreditsChange::Set(n)),
        Some(pb::credits_change::Change::Add(n)) => Ok(CreditsChange::Add(n)),
        Some(pb::credits_change::Change::Subtract(n)) => Ok(CreditsChange::Subtract(n)),
        None => Err(Error::invalid(field, "set one of set, add or subtract")),
    }
}

/// The limit fields of an update (of a key or an identity), as sent.
#[derive(Clone, Copy)]
pub struct LimitUpdate<'a> {
    pub rate_limit: Option<pb::RateLimit>,
    pub allowed_cidrs: &'a [String],
    pub credits: Option<pb::CreditsChange>,
    pub credit_refill: Option<pb::CreditRefill>,
    pub credits_low_alert: Option<pb::LowCreditsAlert>,
}

/// Reads each path of a required update mask of a key or an identity: the
/// limit paths (the same on both) from `update`, the others with `read`
/// (false: not a path it knows). Returns the limit changes.
pub fn read_mask_with_limits(
    mask: Option<&prost_types::FieldMask>,
    update: LimitUpdate<'_>,
    mut read: impl FnMut(&str) -> Result<bool>,
) -> Result<LimitChanges> {
    let mut limits = LimitChanges::default();
    super::read_mask(mask, |path| Ok(limit_path(&mut limits, path, update)? || read(path)?))?;
    Ok(limits)
}

/// Reads mask path `path` into `limits` when it names a limit: whether it did.
fn limit_path(limits: &mut LimitChanges, path: &str, update: LimitUpdate<'_>) -> Result<bool> {
    match path {
        "rate_limit" => {
            limits.rate_limit =
                Some(update.rate_limit.map(|l| rate_limit_from_proto("update.rate_limit", l)).transpose()?);
        }
        "allowed_cidrs" => limits.allowed_cidrs = Some(update.allowed_cidrs.to_vec()),
        "credits" => limits.credits = Some(credits_change_from_proto("update.credits", update.credits)?),
        "credit_refill" => {
            limits.credit_refill =
                Some(update.credit_refill.map(|r| refill_from_proto("update.credit_refill", r)).transpose()?);
        }
        "credits_low_alert" => {
            let alert = update.credits_low_alert.map(|a| low_alert_from_proto("update.credits_low_alert", a));
            limits.credits_low_alert = Some(alert.transpose()?);
        }
        _ => return Ok(false),
    }
    Ok(true)
}
