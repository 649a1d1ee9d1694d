//! The check decision both binaries make about a key whose token is valid:
//! the sidecar from its cache, the control plane in `VerifyApiKey`. One
//! order, one set of reasons; budgets (rate limits, credits) come after it
//! and are each binary's own.

use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use crate::admin::v1 as pb;
use crate::permissions::{Holder, Query};
use crate::token::Environment;
use crate::usage::Outcome;

/// Why a check of a valid token is refused, in the order the rules apply.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Denied {
    /// The key expired (at request time).
    Expired,
    /// The key belongs to the other environment.
    WrongEnvironment,
    /// The client address is outside the key's or its identity's allow-list
    /// (or unknown while there is one).
    IpNotAllowed,
    /// The key lacks a required scope.
    MissingScope,
    /// The key's permissions do not satisfy the check's permission query.
    MissingPermission,
}

impl Denied {
    /// Label in metrics, logs and usage analytics.
    pub fn as_str(self) -> &'static str {
        match self {
            Denied::Expired => "expired",
            Denied::WrongEnvironment => "wrong_environment",
            Denied::IpNotAllowed => "ip_not_allowed",
            Denied::MissingScope => "missing_scope",
            Denied::MissingPermission => "missing_permission",
        }
    }

    /// How the refusal counts in usage analytics: an expired key is not a
    /// credential any more (401); the others are a credential without the
    /// right (403).
    pub fn outcome(self) -> Outcome {
        match self {
            Denied::Expired => Outcome::Unauthorized,
            Denied::WrongEnvironment | Denied::IpNotAllowed | Denied::MissingScope | Denied::MissingPermission => {
                Outcome::Forbidden
            }
        }
    }
}

impl From<Denied> for pb::VerifyFailure {
    /// How `VerifyApiKey` reports the refusal.
    fn from(denied: Denied) -> Self {
        match denied {
            Denied::Expired => pb::VerifyFailure::Expired,
            Denied::WrongEnvironment => pb::VerifyFailure::WrongEnvironment,
            Denied::IpNotAllowed => pb::VerifyFailure::IpNotAllowed,
            Denied::MissingScope => pb::VerifyFailure::MissingScope,
            Denied::MissingPermission => pb::VerifyFailure::MissingPermission,
        }
    }
}

/// What the decision reads of the limits of a key, or of its identity.
pub trait Limited {
    /// Inside its allow-list, if it has one (an unknown address is not).
    fn allows_client(&self, client: Option<IpAddr>) -> bool;
}

/// What the decision reads of a key (and its identity).
pub trait KeyState {
    fn expires_at(&self) -> Option<SystemTime>;
    fn environment(&self) -> Environment;
    /// The key's limits and its identity's: a check must pass every one.
    fn limits(&self) -> impl Iterator<Item = &dyn Limited>;
    fn has_scope(&self, scope: &str) -> bool;
    /// Holds permission `name`: by a scope, a role, or its identity
    /// (docs/api.md "Roles and permissions"), exactly or under a wildcard.
    fn holds_permission(&self, name: &str) -> bool;

    /// Inside the key's allow-list and its identity's, where they have one.
    fn allows_client(&self, client: Option<IpAddr>) -> bool {
        self.limits().all(|limits| limits.allows_client(client))
    }
}

/// The limits of a key, or of an identity for all its keys, as a check
/// reads them from the protocol (`Principal`): the sidecar caches this.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Limits {
    /// Rate limit: (requests, window).
    pub rate_limit: Option<(u32, Duration)>,
    /// The rate limit is one budget shared by all sidecars (leased per window).
    pub global_rate_limit: bool,
    /// Client networks it may be used from; `None` = anywhere.
    pub allowed_networks: Option<Vec<ipnet::IpNet>>,
    /// Checks spend its credits.
    pub has_credits: bool,
}

impl Limits {
    /// No limit at all.
    pub const NONE: Limits =
        Limits { rate_limit: None, global_rate_limit: false, allowed_networks: None, has_credits: false };

    /// Boxed, or `None` when there is no limit (most keys: 8 bytes).
    pub fn boxed(self) -> Option<Box<Limits>> {
        (self != Self::NONE).then(|| Box::new(self))
    }

    fn from_proto(rate_limit: Option<pb::RateLimit>, allowed_cidrs: &[String], has_credits: bool) -> Limits {
        Limits {
            global_rate_limit: rate_limit.as_ref().is_some_and(|l| l.scope == pb::RateLimitScope::Global as i32),
            rate_limit: rate_limit.and_then(|limit| Some((limit.requests, Duration::try_from(limit.window?).ok()?))),
            // A list whose entries all fail to parse still allows nobody.
            allowed_networks: (!allowed_cidrs.is_empty())
                .then(|| allowed_cidrs.iter().filter_map(|cidr| cidr.parse().ok()).collect()),
            has_credits,
        }
    }
}

impl From<&pb::Principal> for Limits {
    /// The key's own limits.
    fn from(principal: &pb::Principal) -> Self {
        Limits::from_proto(principal.rate_limit, &principal.allowed_cidrs, principal.has_credits)
    }
}

impl From<&pb::PrincipalIdentity> for Limits {
    fn from(identity: &pb::PrincipalIdentity) -> Self {
        Limits::from_proto(identity.rate_limit, &identity.allowed_cidrs, identity.has_credits)
    }
}

impl Limited for Limits {
    #[inline]
    fn allows_client(&self, client: Option<IpAddr>) -> bool {
        match &self.allowed_networks {
            None => true,
            Some(networks) => client.is_some_and(|ip| networks.iter().any(|net| net.contains(&ip))),
        }
    }
}

/// A key's state as the holder of its permissions.
struct Permissions<'a, K: ?Sized>(&'a K);

impl<K: KeyState + ?Sized> Holder for Permissions<'_, K> {
    fn holds(&self, name: &str) -> bool {
        self.0.holds_permission(name)
    }
}

/// What a check asks of the key.
#[derive(Clone, Copy, Debug)]
pub struct CheckRequest<'a> {
    /// `None`: either environment (`VerifyApiKey` without one).
    pub environment: Option<Environment>,
    pub scopes: &'a [String],
    pub client: Option<IpAddr>,
    /// What the key's permissions must satisfy, if anything.
    pub permissions: Option<&'a Query>,
    pub now: SystemTime,
}

/// The decision: expiry, environment, client address, scopes, then the
/// permission query; the first rule that fails is the reason.
pub fn decide(key: &impl KeyState, request: &CheckRequest<'_>) -> Result<(), Denied> {
    if key.expires_at().is_some_and(|at| at <= request.now) {
        return Err(Denied::Expired);
    }
    if request.environment.is_some_and(|environment| environment != key.environment()) {
        return Err(Denied::WrongEnvironment);
    }
    if !key.allows_client(request.client) {
        return Err(Denied::IpNotAllowed);
    }
    if request.scopes.iter().any(|needed| !key.has_scope(needed)) {
        return Err(Denied::MissingScope);
    }
    if request.permissions.is_some_and(|query| !query.allows(&Permissions(key))) {
        return Err(Denied::MissingPermission);
    }
    Ok(())
}

/// A check's cost when it is one the sidecar and the control plane accept
/// (1 to [`MAX_CHECK_COST`](crate::MAX_CHECK_COST)).
pub fn valid_cost(cost: u64) -> Option<u64> {
    (1..=crate::MAX_CHECK_COST).contains(&cost).then_some(cost)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    struct Key {
        expires_at: Option<SystemTime>,
        environment: Environment,
        limits: Limits,
        scopes: Vec<&'static str>,
    }

    impl KeyState for Key {
        fn expires_at(&self) -> Option<SystemTime> {
            self.expires_at
        }
        fn environment(&self) -> Environment {
            self.environment
        }
        fn limits(&self) -> impl Iterator<Item = &dyn Limited> {
            std::iter::once(&self.limits as &dyn Limited)
        }
        fn has_scope(&self, scope: &str) -> bool {
            self.scopes.contains(&scope)
        }
        fn holds_permission(&self, name: &str) -> bool {
            self.scopes.iter().any(|pattern| crate::permissions::pattern_holds(pattern, name))
        }
    }

    #[test]
    fn every_reason_in_its_order() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let office: IpAddr = "192.0.2.7".parse().unwrap();
        let elsewhere: IpAddr = "198.51.100.1".parse().unwrap();
        let good = Key {
            expires_at: Some(now + Duration::from_secs(60)),
            environment: Environment::Live,
            limits: Limits { allowed_networks: Some(vec![office.into()]), ..Limits::default() },
            scopes: vec!["orders:read", "billing.*"],
        };
        let orders = ["orders:read".to_owned()];
        let refunds = ["refunds:write".to_owned()];
        let billing = Query::parse("billing.read AND (orders:read OR orders.admin)").unwrap();
        let admin = Query::parse("orders.admin").unwrap();
        let (billing, admin): (&'static Query, &'static Query) =
            (Box::leak(Box::new(billing)), Box::leak(Box::new(admin)));
        let request = |environment, scopes: &'static [String], client| CheckRequest {
            environment,
            scopes,
            client,
            permissions: Some(billing),
            now,
        };
        let asking =
            |query| CheckRequest { permissions: Some(query), ..request(Some(Environment::Live), &[], Some(office)) };
        let expired = Key { expires_at: Some(now), ..good_clone(&good) };
        let orders: &'static [String] = Box::leak(Box::new(orders));
        let refunds: &'static [String] = Box::leak(Box::new(refunds));
        // (key, request, outcome): each rule alone, then every pair, where the earlier rule wins.
        let table: Vec<(&Key, CheckRequest<'_>, Result<(), Denied>)> = vec![
            (&good, request(Some(Environment::Live), orders, Some(office)), Ok(())),
            (&good, request(None, orders, Some(office)), Ok(())),
            (&good, request(Some(Environment::Live), &[], Some(office)), Ok(())),
            (&expired, request(Some(Environment::Live), orders, Some(office)), Err(Denied::Expired)),
            (&good, request(Some(Environment::Test), orders, Some(office)), Err(Denied::WrongEnvironment)),
            (&good, request(Some(Environment::Live), orders, Some(elsewhere)), Err(Denied::IpNotAllowed)),
            (&good, request(Some(Environment::Live), orders, None), Err(Denied::IpNotAllowed)),
            (&good, request(Some(Environment::Live), refunds, Some(office)), Err(Denied::MissingScope)),
            (&expired, request(Some(Environment::Test), refunds, None), Err(Denied::Expired)),
            (&good, request(Some(Environment::Test), refunds, None), Err(Denied::WrongEnvironment)),
            (&good, request(Some(Environment::Live), refunds, None), Err(Denied::IpNotAllowed)),
            (&good, asking(admin), Err(Denied::MissingPermission)),
            (
                &good,
                CheckRequest { permissions: Some(admin), ..request(Some(Environment::Live), refunds, Some(office)) },
                Err(Denied::MissingScope),
            ),
            (&good, CheckRequest { permissions: None, ..asking(admin) }, Ok(())),
        ];
        for (key, request, expected) in table {
            assert_eq!(decide(key, &request), expected, "{request:?}");
        }
        assert_eq!(Denied::Expired.outcome(), Outcome::Unauthorized);
        assert_eq!(Denied::MissingScope.outcome(), Outcome::Forbidden);
        assert_eq!(Denied::MissingPermission.outcome(), Outcome::Forbidden);
        assert_eq!(
            (valid_cost(0), valid_cost(1), valid_cost(1000), valid_cost(1001)),
            (None, Some(1), Some(1000), None)
        );
    }

    fn good_clone(key: &Key) -> Key {
        Key {
            expires_at: key.expires_at,
            environment: key.environment,
            limits: key.limits.clone(),
            scopes: key.scopes.clone(),
        }
    }
}
