//! The rules of a check, apart from where their inputs come from: how a
//! denial is expressed, what a request asks of a key, and [`decide`] on a
//! trustworthy verdict.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use keyplane_proto::check::{self, CheckRequest};
use keyplane_proto::permissions::Query;
use keyplane_proto::token::Environment;
use keyplane_proto::usage::Outcome;

use crate::cache::{KeyId, Principal, Verdict};
use crate::credits::{Receipt, Spend};

/// How a denial is expressed: the HTTP status a proxy should answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DenyStatus {
    /// 401: missing, malformed, unknown, revoked or expired key.
    Unauthenticated,
    /// 403: wrong environment, missing scope or permission, or a client
    /// outside the allow-list.
    Forbidden,
    /// 400: the proxy sent a cost that is not a whole number from 1 to 1000,
    /// or a permission query that does not parse.
    BadRequest,
    /// 429: over the key's rate limit, or out of credits.
    RateLimited,
    /// 503: the sidecar cannot decide (not synced, stale, control plane down).
    Unavailable,
}

impl DenyStatus {
    /// The HTTP status code.
    pub fn http_code(self) -> u16 {
        match self {
            DenyStatus::Unauthenticated => 401,
            DenyStatus::BadRequest => 400,
            DenyStatus::Forbidden => 403,
            DenyStatus::RateLimited => 429,
            DenyStatus::Unavailable => 503,
        }
    }
}

/// What a client is told about any refused token (RFC 6750's error code),
/// unless the sidecar runs with `--expose-denial-reasons`.
pub const GENERIC_REASON: &str = "invalid_token";

/// Why a request is denied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Denial {
    /// The status to answer.
    pub status: DenyStatus,
    /// The precise reason, for metrics and logs (`revoked`, `bad_secret`, …).
    pub reason: &'static str,
    /// What the client is told: for a refused token [`GENERIC_REASON`], so
    /// nobody learns which key ids exist; otherwise the reason itself.
    pub shown: &'static str,
    /// For 429: when to retry.
    pub retry_after: Option<Duration>,
}

impl Denial {
    pub(super) fn new(status: DenyStatus, reason: &'static str) -> Self {
        Self { status, reason, shown: reason, retry_after: None }
    }
}

/// One request to decide about, as a front end saw it.
#[derive(Clone, Copy, Debug)]
pub struct CheckInput<'a> {
    /// The token, if the request carried one.
    pub credential: Option<&'a str>,
    /// Scopes the route requires.
    pub required_scopes: &'a [String],
    /// The permission query the route requires, if any; `Err` when the
    /// proxy named one that does not parse (the request is refused, 400).
    pub permissions: Result<Option<&'a Query>, InvalidQuery>,
    /// The client's address as received (socket peer, or Envoy's source
    /// address), for logs.
    pub peer: &'a str,
    /// The client's IP for allow-lists (behind a trusted proxy, the one it
    /// forwarded); `None` when unknown.
    pub client: Option<IpAddr>,
    /// Credits the check costs, for keys with credits; `None` when the
    /// proxy sent something that is not a cost (see [`parse_cost`]).
    pub cost: Option<u64>,
    /// `x-request-id`, when the proxy sent one.
    pub request_id: &'a str,
}

/// A route's permission query that does not parse (a proxy's configuration error).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InvalidQuery;

/// A request without a token: telling the client so reveals nothing.
pub(super) const MISSING_CREDENTIAL: &str = "missing_credential";

/// Outcome of a check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Let the request through as key `key_id`, granted `principal`.
    Allow { key_id: KeyId, principal: Arc<Principal> },
    /// Refuse it.
    Deny(Denial),
}

/// What a request asks of a key, besides a valid token.
#[derive(Clone, Copy, Debug)]
pub struct Requirements<'a> {
    /// The environment this sidecar serves.
    pub environment: Environment,
    /// Scopes the route requires.
    pub scopes: &'a [String],
    /// The client's address, for keys with an allow-list.
    pub client: Option<IpAddr>,
    /// The permission query the route requires, if any.
    pub permissions: Option<&'a Query>,
}

/// The rules applied to a trustworthy verdict: a refused token's reason,
/// then the check decision shared with the control plane
/// (`keyplane_proto::check`: expiry at request time, environment, client
/// address, scopes, permission query).
pub fn decide(verdict: &Verdict, required: Requirements<'_>, now: SystemTime) -> Decision {
    use DenyStatus::*;
    let (key_id, principal) = match verdict {
        Verdict::Invalid { refusal, .. } => return Decision::Deny(Denial::new(Unauthenticated, refusal.reason())),
        Verdict::Valid { key_id, principal, .. } => (*key_id, principal),
    };
    let request = CheckRequest {
        environment: Some(required.environment),
        scopes: required.scopes,
        client: required.client,
        permissions: required.permissions,
        now,
    };
    match check::decide(principal.as_ref(), &request) {
        Ok(()) => Decision::Allow { key_id, principal: principal.clone() },
        Err(denied) => {
            let status = match denied.outcome() {
                Outcome::Unauthorized => Unauthenticated,
                Outcome::Forbidden | Outcome::Allowed | Outcome::RateLimited => Forbidden,
            };
            Decision::Deny(Denial::new(status, denied.as_str()))
        }
    }
}
/// The cost a proxy sent (Envoy context extension `cost`, header
/// `X-Keyplane-Cost`): 1 when absent, `None` unless a whole number from 1
/// to [`keyplane_proto::MAX_CHECK_COST`].
pub fn parse_cost(text: Option<&str>) -> Option<u64> {
    match text {
        None => Some(1),
        Some(text) => text.trim().parse().ok().and_then(check::valid_cost),
    }
}

/// What spending from a lease came to: its receipt, or the denial (429 with
/// `reason` when the budget is spent, 503 when it could not be leased).
pub(super) fn refusal(spend: Spend, reason: &'static str) -> Result<Receipt, Denial> {
    match spend {
        Spend::Spent(receipt) => Ok(receipt),
        Spend::Exhausted(retry_after) => Err(Denial { retry_after, ..Denial::new(DenyStatus::RateLimited, reason) }),
        Spend::Unavailable => Err(Denial::new(DenyStatus::Unavailable, "control_plane_unavailable")),
    }
}

/// What a check requires: every scope of `defaults` (the sidecar's
/// `--default-scopes`) and every scope the route names in `route` (comma-
/// or space-separated). A route adds to the defaults and never lifts them,
/// so an empty or missing value means the defaults, never "nothing".
pub fn required_scopes(defaults: &[String], route: Option<&str>) -> Vec<String> {
    let mut required = defaults.to_vec();
    for scope in route.unwrap_or_default().split([',', ' ']).filter(|s| !s.is_empty()) {
        if !required.iter().any(|s| s == scope) {
            required.push(scope.to_owned());
        }
    }
    required
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::{IdentityPrincipal, Limits, Refusal};

    fn principal(environment: Environment, scopes: &[&str], expires_at: Option<SystemTime>) -> Verdict {
        principal_from(environment, scopes, expires_at, None)
    }

    fn principal_from(
        environment: Environment,
        scopes: &[&str],
        expires_at: Option<SystemTime>,
        allowed: Option<&[&str]>,
    ) -> Verdict {
        Verdict::Valid {
            key_id: KeyId::parse("key_0000000000000000000001").unwrap(),
            principal: Arc::new(Principal {
                org_id: "acme".into(),
                environment,
                scopes: scopes.join(" ").into(),
                expires_at,
                limits: Limits {
                    allowed_networks: allowed.map(|list| list.iter().map(|n| n.parse().unwrap()).collect()),
                    ..Limits::default()
                }
                .boxed(),
                identity: None,
                grants: None,
            }),
            as_of: 1,
        }
    }

    fn status(decision: Decision) -> Option<(u16, &'static str)> {
        match decision {
            Decision::Allow { .. } => None,
            Decision::Deny(denial) => Some((denial.status.http_code(), denial.reason)),
        }
    }

    #[test]
    fn rules() {
        let now = SystemTime::now();
        let scopes = |s: &[&str]| s.iter().map(|x| (*x).to_owned()).collect::<Vec<_>>();
        let live = |scopes| Requirements { environment: Environment::Live, scopes, client: None, permissions: None };
        let (a, b) = (scopes(&["a"]), scopes(&["b"]));
        assert_eq!(status(decide(&principal(Environment::Live, &["a"], None), live(&a), now)), None);
        assert_eq!(
            status(decide(&principal(Environment::Live, &["a"], None), live(&b), now)),
            Some((403, "missing_scope"))
        );
        assert_eq!(
            status(decide(&principal(Environment::Test, &[], None), live(&[]), now)),
            Some((403, "wrong_environment"))
        );
        let past = now - Duration::from_secs(1);
        assert_eq!(
            status(decide(&principal(Environment::Live, &[], Some(past)), live(&[]), now)),
            Some((401, "expired"))
        );
        let revoked = Verdict::Invalid { refusal: Refusal::Revoked, key_id: None, as_of: 1 };
        assert_eq!(status(decide(&revoked, live(&[]), now)), Some((401, "revoked")));

        let listed = principal_from(Environment::Live, &[], None, Some(&["10.0.0.0/8", "2001:db8::/32"]));
        let from = |ip: &str| Requirements { client: ip.parse().ok(), ..live(&[]) };
        assert_eq!(status(decide(&listed, from("10.2.3.4"), now)), None);
        assert_eq!(status(decide(&listed, from("2001:db8::7"), now)), None);
        assert_eq!(status(decide(&listed, from("192.0.2.1"), now)), Some((403, "ip_not_allowed")));
        assert_eq!(status(decide(&listed, from("unknown"), now)), Some((403, "ip_not_allowed")));
        let nothing_parsed = principal_from(Environment::Live, &[], None, Some(&[]));
        assert_eq!(status(decide(&nothing_parsed, from("10.2.3.4"), now)), Some((403, "ip_not_allowed")));
        // The identity's allow-list applies on top of the key's.
        let Verdict::Valid { key_id, principal, as_of } = listed else { unreachable!() };
        let identity = IdentityPrincipal {
            id: "idn_1".into(),
            external_id: "acme".into(),
            limits: Limits { allowed_networks: Some(vec!["10.2.0.0/16".parse().unwrap()]), ..Limits::default() },
        };
        let both = Verdict::Valid {
            key_id,
            principal: Arc::new(Principal { identity: Some(Box::new(identity)), ..(*principal).clone() }),
            as_of,
        };
        assert_eq!(status(decide(&both, from("10.2.3.4"), now)), None);
        assert_eq!(status(decide(&both, from("10.3.0.1"), now)), Some((403, "ip_not_allowed")));
        assert_eq!(status(decide(&both, from("2001:db8::7"), now)), Some((403, "ip_not_allowed")));

        // Permission queries: scopes are permissions; roles add theirs.
        let query =
            keyplane_proto::permissions::Query::parse("orders.read AND (billing.read OR billing.admin)").unwrap();
        let asking = Requirements { permissions: Some(&query), ..live(&[]) };
        let scoped = principal_from(Environment::Live, &["orders.read", "billing.*"], None, None);
        assert_eq!(status(decide(&scoped, asking, now)), None);
        let Verdict::Valid { key_id, principal: without, as_of } =
            principal_from(Environment::Live, &["orders.read"], None, None)
        else {
            unreachable!()
        };
        assert_eq!(
            status(decide(&Verdict::Valid { key_id, principal: without.clone(), as_of }, asking, now)),
            Some((403, "missing_permission"))
        );
        let grants = crate::cache::Grants {
            held: keyplane_proto::permissions::Held::new(["orders.read", "billing.admin"]),
            role_ids: vec!["rol_1".into()],
        };
        let with_role = Principal { grants: Some(Box::new(grants)), ..(*without).clone() };
        let with_role = Verdict::Valid { key_id, principal: Arc::new(with_role), as_of };
        assert_eq!(status(decide(&with_role, asking, now)), None);
    }

    #[test]
    fn a_route_adds_to_the_default_scopes_and_never_lifts_them() {
        let defaults = vec!["orders:read".to_owned()];
        assert_eq!(required_scopes(&[], Some("a, b c")), vec!["a", "b", "c"]);
        for lifted in [None, Some(""), Some(","), Some(" , ")] {
            assert_eq!(required_scopes(&defaults, lifted), defaults, "{lifted:?}");
        }
        assert_eq!(required_scopes(&defaults, Some("billing:read,orders:read")), vec!["orders:read", "billing:read"]);
    }
}
