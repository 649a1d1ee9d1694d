//! What the cache holds for a token: its key's id, the principal it was
//! granted (shared between keys with equal grants), or why it was refused.

use std::sync::Arc;
use std::time::SystemTime;

use keyplane_proto::check::Limited;
use keyplane_proto::check::Limits;
use keyplane_proto::permissions::{Held, Holder, pattern_holds};
use keyplane_proto::token::{Environment, KEY_ID_LEN, KEY_ID_PREFIX};

/// A key id (`key_` and 22 base62 characters) held inline, so a cached
/// verdict names its key without an allocation of its own.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyId([u8; KEY_ID_PREFIX.len() + KEY_ID_LEN]);

impl KeyId {
    /// The id if `text` is one.
    pub fn parse(text: &str) -> Option<KeyId> {
        let body = text.strip_prefix(KEY_ID_PREFIX)?;
        if body.len() != KEY_ID_LEN || !body.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return None;
        }
        text.as_bytes().try_into().ok().map(KeyId)
    }

    pub fn as_str(&self) -> &str {
        // Always ASCII: `parse` is the only way in.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

impl std::ops::Deref for KeyId {
    type Target = str;

    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl std::fmt::Debug for KeyId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self.as_str(), f)
    }
}

/// What a valid token grants, apart from which key it is. Kept small and
/// shared, as the cache holds one per cached key (BENCHMARKS.md, "Sidecar
/// memory"): keys that differ only in their id share one principal, org
/// ids and scope sets are shared between principals ([`SharedPrincipals`]),
/// and the limits most keys do not have cost them 8 bytes.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Principal {
    /// Org of the key.
    pub org_id: Arc<str>,
    /// Scopes of the key, separated by single spaces (a scope has none):
    /// the `x-keyplane-scopes` header as it is sent.
    pub scopes: Arc<str>,
    /// `live` or `test`.
    pub environment: Environment,
    /// Expiry, re-checked at request time.
    pub expires_at: Option<SystemTime>,
    /// The key's own limits; `None` when it has none (see [`Principal::limits`]).
    pub limits: Option<Box<Limits>>,
    /// The identity the key belongs to, whose limits every check must pass
    /// too (boxed: most keys have none).
    pub identity: Option<Box<IdentityPrincipal>>,
    /// What the key holds beyond its scopes (roles, its identity's
    /// permissions); `None` when its scopes are all it holds.
    pub grants: Option<Box<Grants>>,
}

/// Permissions a key holds beyond its scopes, and the roles they come from.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Grants {
    /// Every permission the key holds, its scopes included.
    pub held: Held,
    /// `rol_…` of each role it holds: a change to one makes the answer stale.
    pub role_ids: Vec<String>,
}

/// The identity of a key, with the limits all its keys share.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct IdentityPrincipal {
    /// `idn_…`: also the id its budgets are leased under.
    pub id: String,
    /// The platform's own id for it (passed upstream).
    pub external_id: String,
    pub limits: Limits,
}

impl keyplane_proto::check::KeyState for Principal {
    fn expires_at(&self) -> Option<SystemTime> {
        self.expires_at
    }

    fn environment(&self) -> Environment {
        self.environment
    }

    fn limits(&self) -> impl Iterator<Item = &dyn Limited> {
        self.own_and_identity_limits().map(|limits| limits as &dyn Limited)
    }

    /// The same rule as the default, over the concrete limits (no dynamic
    /// call on the hot path).
    fn allows_client(&self, client: Option<std::net::IpAddr>) -> bool {
        self.own_and_identity_limits().all(|limits| limits.allows_client(client))
    }

    fn has_scope(&self, scope: &str) -> bool {
        Principal::has_scope(self, scope)
    }

    fn holds_permission(&self, name: &str) -> bool {
        match &self.grants {
            Some(grants) => grants.held.holds(name),
            None => self.scopes.split(' ').any(|scope| pattern_holds(scope, name)),
        }
    }
}

impl Principal {
    /// The key's own limits.
    pub fn limits(&self) -> &Limits {
        self.limits.as_deref().unwrap_or(&Limits::NONE)
    }

    /// Whether the key holds `scope`.
    pub fn has_scope(&self, scope: &str) -> bool {
        !scope.is_empty() && self.scopes.split(' ').any(|held| held == scope)
    }

    /// The limits of key `key_id` (this principal's) and of its identity,
    /// each with the id its budgets are counted under: every one must allow
    /// a check.
    pub fn all_limits<'a>(&'a self, key_id: &'a str) -> impl Iterator<Item = (&'a str, &'a Limits)> {
        std::iter::once((key_id, self.limits()))
            .chain(self.identity.as_ref().map(|identity| (identity.id.as_str(), &identity.limits)))
    }

    /// Whether a check spends a budget (a rate limit or credits) of the key
    /// or of its identity.
    pub fn spends_budgets(&self) -> bool {
        self.own_and_identity_limits().any(|limits| limits.rate_limit.is_some() || limits.has_credits)
    }

    fn own_and_identity_limits(&self) -> impl Iterator<Item = &Limits> {
        std::iter::once(self.limits()).chain(self.identity.as_ref().map(|identity| &identity.limits))
    }
}

/// One shared copy of each distinct value handed to it. Values no one else
/// holds any more are dropped whenever the set has doubled since the last
/// sweep, so it stays proportional to what the cache holds.
pub(super) struct Interner<T: ?Sized> {
    set: Arc<std::sync::Mutex<InternedSet<T>>>,
}

struct InternedSet<T: ?Sized> {
    values: std::collections::HashSet<Arc<T>>,
    /// Size after the last sweep.
    swept: usize,
}

impl<T: ?Sized> Clone for Interner<T> {
    fn clone(&self) -> Self {
        Self { set: self.set.clone() }
    }
}

impl<T: ?Sized> Default for Interner<T> {
    fn default() -> Self {
        Self { set: Arc::new(std::sync::Mutex::new(InternedSet { values: Default::default(), swept: 0 })) }
    }
}

impl<T: ?Sized + std::hash::Hash + Eq> Interner<T> {
    /// Fewest values before a sweep is worth it.
    pub(super) const SWEEP_FROM: usize = 1024;

    /// The shared copy of `value`, made with `share` when there is none yet.
    fn intern(&self, value: &T, share: impl FnOnce(&T) -> Arc<T>) -> Arc<T> {
        let mut set = self.set.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(shared) = set.values.get(value) {
            return shared.clone();
        }
        if set.values.len() >= set.swept.max(Self::SWEEP_FROM) * 2 {
            set.values.retain(|shared| Arc::strong_count(shared) > 1);
            set.swept = set.values.len();
        }
        let shared = share(value);
        set.values.insert(shared.clone());
        shared
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.set.lock().unwrap_or_else(std::sync::PoisonError::into_inner).values.len()
    }
}

/// Where the principals of one cache are shared: whole principals, and the
/// org ids and scope sets of those that still differ (by expiry, limits).
#[derive(Clone, Default)]
pub struct SharedPrincipals {
    pub(super) strings: Interner<str>,
    principals: Interner<Principal>,
}

impl SharedPrincipals {
    /// The shared copy of an org id (or any string).
    pub fn string(&self, text: &str) -> Arc<str> {
        self.strings.intern(text, |text| Arc::from(text))
    }

    /// The shared copy of a scope set in [`Principal::scopes`] form (a
    /// malformed scope, empty or with a space, could never be matched and
    /// is left out).
    pub fn scopes(&self, scopes: &[String]) -> Arc<str> {
        let usable = scopes.iter().filter(|scope| !scope.is_empty() && !scope.contains(char::is_whitespace));
        self.string(&usable.map(String::as_str).collect::<Vec<_>>().join(" "))
    }

    /// The shared copy of `principal`.
    pub fn principal(&self, principal: Principal) -> Arc<Principal> {
        self.principals.intern(&principal, |p| Arc::new(p.clone()))
    }
}

/// Why the control plane refused a token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// No such key.
    Unknown,
    /// Wrong secret.
    BadSecret,
    /// Revoked (or deleted).
    Revoked,
    /// Expired.
    Expired,
    /// Refused unchecked: too many wrong secrets for the key recently.
    Throttled,
}

impl Refusal {
    /// The denial reason for metrics and logs.
    pub fn reason(self) -> &'static str {
        match self {
            Refusal::Unknown => "unknown",
            Refusal::BadSecret => "bad_secret",
            Refusal::Revoked => "revoked",
            Refusal::Expired => "expired",
            Refusal::Throttled => "throttled",
        }
    }
}

/// A control-plane answer about one token (cheap to clone: the cache hands
/// out a clone on every hit).
#[derive(Clone, Debug)]
pub enum Verdict {
    /// The token is good.
    Valid {
        key_id: KeyId,
        /// Its principal (shared: an allowed check hands it out without copying).
        principal: Arc<Principal>,
        /// Log position the answer reflects.
        as_of: u64,
    },
    /// The token is refused.
    Invalid {
        /// Why.
        refusal: Refusal,
        /// The key, when the control plane named it.
        key_id: Option<KeyId>,
        /// Log position the answer reflects.
        as_of: u64,
    },
}

impl Verdict {
    /// The key the answer is about, when the control plane named one.
    pub fn key_id(&self) -> Option<&str> {
        match self {
            Verdict::Valid { key_id, .. } => Some(key_id),
            Verdict::Invalid { key_id, .. } => key_id.as_deref(),
        }
    }

    pub(super) fn as_of(&self) -> u64 {
        match self {
            Verdict::Valid { as_of, .. } | Verdict::Invalid { as_of, .. } => *as_of,
        }
    }
}
