//! The limits both a key and an identity carry, stored as the same columns
//! in `api_keys` and `identities`: a rate limit and an allow-list (credits
//! are in [`super::credits`]).

use std::time::Duration;

use sea_orm::entity::prelude::Json;

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
