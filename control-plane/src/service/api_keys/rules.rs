//! What a key's attributes may be, and what the audit log and Keyplane's own
//! events say about a key (its public attributes, never its secret).

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use crate::error::{Error, Result};
use crate::service::validate::Violations;
use crate::store::api_keys::{self, LimitChanges, NewLimits, RateLimit};
use crate::store::credits::{Refill, RefillPeriod};
use crate::store::limits::HasLimits;
use crate::store::{OrgTx, identities};

/// Shortest TTL accepted at creation.
pub const MIN_TTL: Duration = Duration::from_secs(60);
/// Longest TTL (and furthest expiry) accepted.
pub const MAX_TTL: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Rotation grace when none is given.
pub const DEFAULT_ROTATION_GRACE: Duration = Duration::from_secs(24 * 3600);
/// Longest rotation grace.
pub const MAX_ROTATION_GRACE: Duration = Duration::from_secs(30 * 24 * 3600);
pub const MAX_NAME_CHARS: usize = 200;
pub const MAX_DESCRIPTION_CHARS: usize = 2000;
/// Most networks in a key's allow-list.
pub const MAX_ALLOWED_CIDRS: usize = 100;

/// An allow-list in canonical form (`10.0.0.0/8`; a bare address becomes a
/// /32 or /128; host bits dropped; duplicates removed), each bad entry a
/// violation naming `field[i]`.
pub fn canonical_cidrs(violations: &mut Violations, field: &str, cidrs: &[String]) -> Vec<String> {
    if cidrs.len() > MAX_ALLOWED_CIDRS {
        violations.add(field, format!("at most {MAX_ALLOWED_CIDRS} networks"));
        return Vec::new();
    }
    let mut canonical = Vec::with_capacity(cidrs.len());
    for (i, text) in cidrs.iter().enumerate() {
        let text = text.trim();
        let parsed = text.parse::<ipnet::IpNet>().or_else(|_| text.parse::<std::net::IpAddr>().map(ipnet::IpNet::from));
        match parsed {
            Ok(net) if !canonical.contains(&net.trunc().to_string()) => canonical.push(net.trunc().to_string()),
            Ok(_) => {}
            Err(_) => violations.add(
                format!("{field}[{i}]"),
                "must be a network such as 10.0.0.0/8 or 2001:db8::/32, or a single address",
            ),
        }
    }
    canonical
}

pub fn check_expiry(field: &str, at: DateTime<Utc>, now: DateTime<Utc>) -> Result<DateTime<Utc>> {
    if at <= now {
        Err(Error::invalid(field, "must be in the future"))
    } else if at > now + MAX_TTL {
        Err(Error::invalid(field, "must be within 10 years"))
    } else {
        Ok(at)
    }
}

pub fn check_rate_limit(violations: &mut Violations, field: &str, limit: &RateLimit) {
    if limit.requests == 0 {
        violations.add(format!("{field}.requests"), "must be at least 1");
    } else if i32::try_from(limit.requests).is_err() {
        violations.add(format!("{field}.requests"), format!("must be at most {}", i32::MAX));
    }
    if !(Duration::from_secs(1)..=Duration::from_secs(86_400)).contains(&limit.window) {
        violations.add(format!("{field}.window"), "must be between 1 second and 1 day");
    }
}

/// Checks a refill: at least one credit, a period of at least a second or
/// a day of the month from 1 to 31.
pub fn check_refill(violations: &mut Violations, field: &str, refill: &Refill) {
    if refill.amount == 0 {
        violations.add(format!("{field}.amount"), "must be at least 1");
    }
    match refill.period {
        RefillPeriod::Every(every) if every < Duration::from_secs(1) => {
            violations.add(format!("{field}.every"), "must be at least 1 second");
        }
        RefillPeriod::Monthly(day) if !(1..=31).contains(&day) => {
            violations.add(format!("{field}.monthly_on_day"), "must be between 1 and 31");
        }
        _ => {}
    }
}

/// Checks the limit changes of an update (of a key or an identity),
/// canonicalising the allow-list, and names each changed field in `changed`.
pub fn check_limit_changes(violations: &mut Violations, limits: &mut LimitChanges, changed: &mut Vec<&'static str>) {
    if let Some(limit) = &limits.rate_limit {
        if let Some(limit) = limit {
            check_rate_limit(violations, "update.rate_limit", limit);
        }
        changed.push("rate_limit");
    }
    if let Some(cidrs) = &limits.allowed_cidrs {
        limits.allowed_cidrs = Some(canonical_cidrs(violations, "update.allowed_cidrs", cidrs));
        changed.push("allowed_cidrs");
    }
    if limits.credits.is_some() {
        changed.push("credits");
    }
    if let Some(refill) = &limits.credit_refill {
        if let Some(refill) = refill {
            check_refill(violations, "update.credit_refill", refill);
        }
        changed.push("credit_refill");
    }
    if limits.credits_low_alert.is_some() {
        changed.push("credits_low_alert");
    }
}

/// Checks the limits of a new key or identity, canonicalising the allow-list.
pub fn check_new_limits(violations: &mut Violations, limits: &mut NewLimits) {
    if let Some(limit) = &limits.rate_limit {
        check_rate_limit(violations, "rate_limit", limit);
    }
    limits.allowed_cidrs = canonical_cidrs(violations, "allowed_cidrs", &limits.allowed_cidrs);
    if let Some((remaining, refill)) = &limits.credits {
        if i64::try_from(*remaining).is_err() {
            violations.add("credits.remaining", format!("must be at most {}", i64::MAX));
        }
        if let Some(refill) = refill {
            check_refill(violations, "credits.refill", refill);
        }
    }
}

/// The update-mask paths naming limits (the same on keys and identities).
pub const LIMIT_PATHS: &str = "rate_limit, allowed_cidrs, credits, credit_refill, credits_low_alert";

/// Audit metadata of a new key.
pub fn audit_details(key: &api_keys::Model) -> Value {
    with_limits(
        key,
        json!({
            "name": key.name,
            "environment": key.environment.as_str(),
            "scopes": key.scopes,
            "expires_at": key.expires_at,
            "recoverable": key.sealed_token.is_some(),
            "rotated_from": key.rotated_from,
            "identity_id": key.identity_id,
        }),
    )
}

/// Audit metadata `details` of a new key or identity, with its limits added.
pub fn with_limits(holder: &impl HasLimits, mut details: Value) -> Value {
    let limits = holder.limits();
    let limits = json!({
        "rate_limit": limits.rate_limit.map(|limit| json!({
            "requests": limit.requests,
            "window_ms": limit.window.as_millis() as u64,
            "global": limit.global,
        })),
        "allowed_cidrs": limits.allowed_cidrs,
        "credits": limits.credits.map(|credits| credits.remaining),
    });
    if let (Some(details), Value::Object(limits)) = (details.as_object_mut(), limits) {
        details.extend(limits);
    }
    if let Some(alert) = holder.credits().and_then(|credits| credits.low_alert) {
        details["credits_low_alert"] = json!(alert.to_column());
    }
    details
}

/// Fails with INVALID_ARGUMENT naming `field` unless identity `id`, which a
/// key is to belong to, exists in the transaction's org (a foreign
/// identity does not).
pub(crate) async fn require_identity(tx: &OrgTx, field: &str, id: &str) -> Result<()> {
    match identities::find(tx.conn(), tx.org(), id).await? {
        Some(_) => Ok(()),
        None => Err(Error::invalid(field, "no identity with this id in the org")),
    }
}
