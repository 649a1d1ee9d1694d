//! The limits both a key and an identity carry, stored as the same columns
//! in `api_keys` and `identities`: a rate limit, an allow-list and credits
//! (whose rules are in [`super::credits`]).

use std::time::Duration;

use sea_orm::entity::prelude::Json;

use super::credits::{CreditsChange, Refill};

/// Changes to the limits of a key or an identity; `None` leaves one alone,
/// and for the optional ones `Some(None)` clears it.
#[derive(Clone, Debug, Default)]
pub struct LimitChanges {
    pub rate_limit: Option<Option<RateLimit>>,
    /// Canonical CIDRs; empty allows any address.
    pub allowed_cidrs: Option<Vec<String>>,
    /// A change to the remaining credits.
    pub credits: Option<CreditsChange>,
    /// A new refill (`Some(None)` removes it).
    pub credit_refill: Option<Option<Refill>>,
}

/// Applies a [`LimitChanges`] to an active model of `api_keys` or
/// `identities` (their limit columns have the same names) in an [`OrgTx`](super::OrgTx).
macro_rules! apply_limit_changes {
    ($tx:expr, $row:expr, $changes:expr) => {{
        let changes: $crate::store::policy::LimitChanges = $changes;
        if let Some(limit) = changes.rate_limit {
            let (requests, window_ms, scope) = $crate::store::policy::RateLimit::columns(limit);
            $row.rate_limit_requests = Set(requests);
            $row.rate_limit_window_ms = Set(window_ms);
            $row.rate_limit_scope = Set(scope);
        }
        if let Some(cidrs) = changes.allowed_cidrs {
            $row.allowed_cidrs = Set($crate::store::policy::cidr_column(cidrs));
        }
        if let Some(change) = changes.credits {
            if let $crate::store::credits::CreditsChange::Set(_) = change {
                // A new count starts afresh: what leases hold is not given back into it.
                $crate::store::credits::forget_leases($tx, $row.id.as_ref()).await?;
            }
            $row.credits_remaining = Set(Some(change.apply($row.credits_remaining.take().flatten())));
        }
        if let Some(refill) = changes.credit_refill {
            let (amount, period, next_at) = $crate::store::credits::refill_columns(refill, $crate::store::now());
            $row.credit_refill_amount = Set(amount);
            $row.credit_refill_period = Set(period);
            $row.credit_refill_next_at = Set(next_at);
        }
    }};
}
pub(super) use apply_limit_changes;

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
pub(super) fn cidr_list(column: &Option<Json>) -> Vec<String> {
    column.clone().and_then(|list| serde_json::from_value(list).ok()).unwrap_or_default()
}

/// Whether a client at `client` passes the allow-list in `column`: any
/// client when there is none, otherwise only one inside it.
pub(super) fn allows(column: &Option<Json>, client: Option<std::net::IpAddr>) -> bool {
    let allowed = cidr_list(column);
    allowed.is_empty()
        || client.map(|ip| ip.to_canonical()).is_some_and(|ip| {
            allowed.iter().filter_map(|cidr| cidr.parse::<ipnet::IpNet>().ok()).any(|net| net.contains(&ip))
        })
}
