//! The verification cache (ARCHITECTURE.md, "A check"): moka keyed by SHA-256 of the token
//! (the plaintext is never stored), plus the key changes applied from the
//! stream, which decide whether a cached answer is still trustworthy.
//!
//! Every answer carries `as_of`, the log position the control plane had
//! read when it answered. An answer is used only if no change to its key was
//! applied after that position — so an answer that raced a revocation is
//! never used, whether it is already cached or still in flight (ARCHITECTURE.md, "A revocation", the race rule).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use keyplane_proto::check::Limited;
pub use keyplane_proto::check::Limits;
use keyplane_proto::permissions::{Held, Holder, pattern_holds};
use keyplane_proto::token::{Environment, KEY_ID_LEN, KEY_ID_PREFIX};
use moka::future::Cache;
use moka::notification::RemovalCause;

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
struct Interner<T: ?Sized> {
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
    const SWEEP_FROM: usize = 1024;

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
    fn len(&self) -> usize {
        self.set.lock().unwrap_or_else(std::sync::PoisonError::into_inner).values.len()
    }
}

/// Where the principals of one cache are shared: whole principals, and the
/// org ids and scope sets of those that still differ (by expiry, limits).
#[derive(Clone, Default)]
pub struct SharedPrincipals {
    strings: Interner<str>,
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

    fn as_of(&self) -> u64 {
        match self {
            Verdict::Valid { as_of, .. } | Verdict::Invalid { as_of, .. } => *as_of,
        }
    }
}

/// Whether a verdict can be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Freshness {
    /// Nothing changed since: use it.
    Fresh,
    /// The key changed since: verify again.
    Stale,
    /// The key ended since (revoked, deleted or expired): deny without asking.
    Ended(Refusal),
}

/// Latest change applied for a key.
#[derive(Clone, Copy, Debug)]
struct Change {
    seq: u64,
    /// Set once the key ended, and never cleared.
    ended: Option<Refusal>,
}

/// A verdict in the cache, with when it stops being used. Expiry is
/// checked on lookup rather than by moka: moka's per-entry expiry costs
/// ~50 bytes an entry in timer-wheel nodes (BENCHMARKS.md, "Sidecar memory"),
/// and capacity bounds what expired entries can hold until they are evicted.
#[derive(Clone)]
struct Cached {
    verdict: Verdict,
    /// Milliseconds after the cache's epoch.
    until_ms: u64,
}

/// Cached verdicts and applied key changes.
#[derive(Clone)]
pub struct KeyCache {
    verdicts: Cache<[u8; 32], Cached>,
    /// How long a valid answer is used, and a refusal.
    ttl: (Duration, Duration),
    /// What `Cached::until_ms` counts from.
    epoch: Instant,
    changes: Cache<String, Change>,
    /// Where the cached principals are shared.
    shared: SharedPrincipals,
    /// Verdicts older than this position are stale (raised by Reset and by
    /// evictions of change records, so forgetting a change is always safe).
    floor: Arc<AtomicU64>,
    /// The latest change of an identity or a role: a verdict at least this
    /// recent needs no lookup of its identity's or roles' changes.
    holders_changed: Arc<AtomicU64>,
    /// The latest change of anything: a verdict at least this recent needs
    /// no lookup of its key's change (the usual case between revocations).
    any_changed: Arc<AtomicU64>,
}

impl KeyCache {
    /// A cache of at most `capacity` verdicts.
    pub fn new(capacity: u64, positive_ttl: Duration, negative_ttl: Duration) -> Self {
        let verdicts = Cache::new(capacity);
        let floor = Arc::new(AtomicU64::new(0));
        let evicted_floor = floor.clone();
        // A change record outlives every verdict it can invalidate: verdicts
        // live at most `positive_ttl` and one that raced the change was
        // inserted at most one Verify later, so twice that is ample. Only an
        // eviction for size loses a record early, and then the floor rises past it.
        let changes = Cache::builder()
            .max_capacity(capacity.max(1024))
            .time_to_live(positive_ttl.max(negative_ttl) * 2 + Duration::from_secs(60))
            .eviction_listener(move |_key, change: Change, cause| {
                if cause == RemovalCause::Size {
                    evicted_floor.fetch_max(change.seq, Ordering::AcqRel);
                }
            })
            .build();
        Self {
            verdicts,
            ttl: (positive_ttl, negative_ttl),
            epoch: Instant::now(),
            changes,
            shared: SharedPrincipals::default(),
            floor,
            holders_changed: Arc::new(AtomicU64::new(0)),
            any_changed: Arc::new(AtomicU64::new(0)),
        }
    }

    /// How far `verdict` can be trusted: not past a later change of its
    /// key, nor of its key's identity, nor of a role it holds.
    pub async fn freshness(&self, verdict: &Verdict) -> Freshness {
        let change = match verdict.key_id() {
            Some(key_id) if verdict.as_of() < self.any_changed.load(Ordering::Acquire) => {
                self.changes.get(key_id).await
            }
            _ => None,
        };
        if let Some(change) = change.filter(|change| change.seq > verdict.as_of()) {
            return change.ended.map_or(Freshness::Stale, Freshness::Ended);
        }
        if let Verdict::Valid { principal, as_of, .. } = verdict
            && *as_of < self.holders_changed.load(Ordering::Acquire)
        {
            let identity = principal.identity.iter().map(|identity| identity.id.as_str());
            let roles = principal.grants.iter().flat_map(|grants| grants.role_ids.iter().map(String::as_str));
            for holder in identity.chain(roles) {
                if self.changes.get(holder).await.is_some_and(|change| change.seq > *as_of) {
                    return Freshness::Stale;
                }
            }
        }
        if verdict.as_of() < self.floor.load(Ordering::Acquire) { Freshness::Stale } else { Freshness::Fresh }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// The cached verdict for a token digest, if any and not expired (an
    /// expired one is dropped, so the next lookup verifies again).
    pub async fn get(&self, digest: &[u8; 32]) -> Option<Verdict> {
        let cached = self.verdicts.get(digest).await?;
        if cached.until_ms > self.now_ms() {
            return Some(cached.verdict);
        }
        self.verdicts.invalidate(digest).await;
        None
    }

    /// The verdict for `digest`, computing it with `verify` on a miss. Concurrent
    /// misses for the same digest share one computation (single flight).
    pub async fn get_or_verify<E: Send + Sync + 'static>(
        &self,
        digest: [u8; 32],
        verify: impl Future<Output = Result<Verdict, E>>,
    ) -> Result<Verdict, Arc<E>> {
        let cached = async {
            let verdict = verify.await?;
            let ttl = if matches!(verdict, Verdict::Valid { .. }) { self.ttl.0 } else { self.ttl.1 };
            Ok(Cached { verdict, until_ms: self.now_ms().saturating_add(ttl.as_millis() as u64) })
        };
        Ok(self.verdicts.try_get_with(digest, cached).await?.verdict)
    }

    /// Where the principals put in this cache are shared.
    pub fn shared(&self) -> &SharedPrincipals {
        &self.shared
    }

    /// Drops the cached verdict of one token.
    pub async fn forget(&self, digest: &[u8; 32]) {
        self.verdicts.invalidate(digest).await;
    }

    /// Records a key change from the stream; `ended` says why the key
    /// ended, when it did (revoked, deleted, expired): that is for good.
    pub async fn apply_change(&self, key_id: &str, seq: u64, ended: Option<Refusal>) {
        let previous = self.changes.get(key_id).await;
        let ended = previous.and_then(|p| p.ended).or(ended);
        // Raised before the record is written: a check that misses the
        // record then looked before the change was applied.
        self.any_changed.fetch_max(seq, Ordering::AcqRel);
        if !key_id.starts_with(KEY_ID_PREFIX) {
            self.holders_changed.fetch_max(seq, Ordering::AcqRel);
        }
        let seq = previous.map_or(seq, |p| p.seq.max(seq));
        self.changes.insert(key_id.to_owned(), Change { seq, ended }).await;
    }

    /// Flushes everything: verdicts from before `head` are no longer trusted.
    pub fn reset(&self, head: u64) {
        self.floor.fetch_max(head, Ordering::AcqRel);
        self.verdicts.invalidate_all();
    }

    /// Applies moka's pending maintenance (counts and evictions) now.
    pub async fn run_pending_tasks(&self) {
        self.verdicts.run_pending_tasks().await;
    }

    /// Number of cached verdicts, expired ones not yet evicted included (approximate).
    pub fn len(&self) -> u64 {
        self.verdicts.entry_count()
    }

    /// Whether nothing is cached (approximate).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A key id made from a short name.
    fn key(name: &str) -> KeyId {
        KeyId::parse(&format!("key_{name:0>22}")).expect("key id")
    }

    fn valid(name: &str, as_of: u64) -> Verdict {
        Verdict::Valid {
            key_id: key(name),
            principal: Arc::new(Principal {
                org_id: "o".into(),
                environment: Environment::Live,
                scopes: "".into(),
                expires_at: None,
                limits: None,
                identity: None,
                grants: None,
            }),
            as_of,
        }
    }

    #[tokio::test]
    async fn answers_older_than_a_change_are_not_trusted() {
        let cache = KeyCache::new(100, Duration::from_secs(60), Duration::from_secs(5));
        assert_eq!(cache.freshness(&valid("k", 5)).await, Freshness::Fresh);
        cache.apply_change(&key("k"), 7, None).await;
        assert_eq!(cache.freshness(&valid("k", 5)).await, Freshness::Stale);
        assert_eq!(cache.freshness(&valid("k", 7)).await, Freshness::Fresh);
        cache.apply_change(&key("k"), 9, Some(Refusal::Expired)).await;
        assert_eq!(cache.freshness(&valid("k", 8)).await, Freshness::Ended(Refusal::Expired));
        // A later change never revives the key, nor changes why it ended.
        cache.apply_change(&key("k"), 10, None).await;
        cache.apply_change(&key("k"), 11, Some(Refusal::Revoked)).await;
        assert_eq!(cache.freshness(&valid("k", 8)).await, Freshness::Ended(Refusal::Expired));
        assert_eq!(cache.freshness(&valid("other", 1)).await, Freshness::Fresh);
        cache.reset(20);
        assert_eq!(cache.freshness(&valid("other", 19)).await, Freshness::Stale);
    }

    #[tokio::test]
    async fn a_change_of_the_identity_makes_its_keys_answers_stale() {
        let cache = KeyCache::new(100, Duration::from_secs(60), Duration::from_secs(5));
        let of_identity = |as_of| {
            let Verdict::Valid { key_id, principal, .. } = valid("k", as_of) else { unreachable!() };
            let identity =
                IdentityPrincipal { id: "idn_1".into(), external_id: "acme".into(), limits: Limits::default() };
            Verdict::Valid {
                key_id,
                principal: Arc::new(Principal { identity: Some(Box::new(identity)), ..(*principal).clone() }),
                as_of,
            }
        };
        cache.apply_change("idn_1", 7, None).await;
        assert_eq!(cache.freshness(&of_identity(5)).await, Freshness::Stale);
        assert_eq!(cache.freshness(&of_identity(7)).await, Freshness::Fresh);
        assert_eq!(cache.freshness(&valid("k", 5)).await, Freshness::Fresh);
    }

    #[tokio::test]
    async fn a_change_of_a_role_makes_its_holders_answers_stale() {
        use keyplane_proto::check::KeyState;
        let cache = KeyCache::new(100, Duration::from_secs(60), Duration::from_secs(5));
        let holding = |as_of| {
            let Verdict::Valid { key_id, principal, .. } = valid("k", as_of) else { unreachable!() };
            let grants = Grants { held: Held::new(["orders.*"]), role_ids: vec!["rol_a".into(), "rol_b".into()] };
            let principal = Principal { grants: Some(Box::new(grants)), ..(*principal).clone() };
            assert!(principal.holds_permission("orders.read") && !principal.holds_permission("billing.read"));
            Verdict::Valid { key_id, principal: Arc::new(principal), as_of }
        };
        cache.apply_change("rol_b", 7, None).await;
        assert_eq!(cache.freshness(&holding(5)).await, Freshness::Stale);
        assert_eq!(cache.freshness(&holding(7)).await, Freshness::Fresh);
        assert_eq!(cache.freshness(&valid("k", 5)).await, Freshness::Fresh, "a key without the role");
    }

    #[test]
    fn key_ids_are_held_inline_when_well_formed() {
        let id = KeyId::parse("key_0351p852NEghidiXb8k001").expect("well formed");
        assert_eq!(&*id, "key_0351p852NEghidiXb8k001");
        for bad in
            ["key_short", "kex_0351p852NEghidiXb8k001", "key_0351p852NEghidiXb8k00-", "key_0351p852NEghidiXb8k0011"]
        {
            assert_eq!(KeyId::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn equal_values_are_shared_until_no_one_else_holds_them() {
        let shared = SharedPrincipals::default();
        let org = shared.string("org_1");
        assert!(Arc::ptr_eq(&org, &shared.string("org_1")));
        let scopes = shared.scopes(&["a:read".into(), "".into(), "b c".into(), "b:write".into()]);
        assert_eq!(&*scopes, "a:read b:write");
        assert!(Arc::ptr_eq(&scopes, &shared.string("a:read b:write")));
        let Verdict::Valid { principal, .. } = valid("k", 1) else { unreachable!() };
        let one = shared.principal((*principal).clone());
        assert!(Arc::ptr_eq(&one, &shared.principal((*principal).clone())));
        let later = Principal { expires_at: Some(SystemTime::UNIX_EPOCH), ..(*principal).clone() };
        assert!(!Arc::ptr_eq(&one, &shared.principal(later)));
        // Past the sweep size, values nobody holds are dropped; held ones stay shared.
        for i in 0..Interner::<str>::SWEEP_FROM * 2 {
            shared.string(&format!("org_x{i}"));
        }
        assert!(shared.strings.len() <= Interner::<str>::SWEEP_FROM * 2, "swept: {}", shared.strings.len());
        assert!(Arc::ptr_eq(&org, &shared.string("org_1")));
    }

    #[test]
    fn scopes_match_whole_names_only() {
        let Verdict::Valid { principal, .. } = valid("k", 1) else { unreachable!() };
        let principal = Principal { scopes: "orders:read orders:write".into(), ..(*principal).clone() };
        assert!(principal.has_scope("orders:read") && principal.has_scope("orders:write"));
        assert!(!principal.has_scope("orders") && !principal.has_scope("") && !principal.has_scope("read orders"));
    }

    #[tokio::test]
    async fn answers_expire_valid_ones_later_than_refusals() {
        let cache = KeyCache::new(100, Duration::from_millis(300), Duration::from_millis(50));
        let refused = Verdict::Invalid { refusal: Refusal::Unknown, key_id: None, as_of: 1 };
        assert!(cache.get_or_verify([1; 32], async { Ok::<_, ()>(valid("k", 1)) }).await.is_ok());
        assert!(cache.get_or_verify([2; 32], async { Ok::<_, ()>(refused) }).await.is_ok());
        assert!(cache.get(&[1; 32]).await.is_some() && cache.get(&[2; 32]).await.is_some());
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(cache.get(&[1; 32]).await.is_some());
        assert!(cache.get(&[2; 32]).await.is_none(), "the refusal expired");
        tokio::time::sleep(Duration::from_millis(250)).await;
        assert!(cache.get(&[1; 32]).await.is_none(), "the answer expired");
        // Verified again, not served from the expired entry.
        let again = cache.get_or_verify([1; 32], async { Ok::<_, ()>(valid("k", 9)) }).await.unwrap();
        assert!(matches!(again, Verdict::Valid { as_of: 9, .. }));
    }

    #[tokio::test]
    async fn concurrent_misses_verify_once() {
        let cache = KeyCache::new(100, Duration::from_secs(60), Duration::from_secs(5));
        let calls = Arc::new(AtomicU64::new(0));
        let tasks: Vec<_> = (0..100)
            .map(|_| {
                let cache = cache.clone();
                let calls = calls.clone();
                tokio::spawn(async move {
                    cache
                        .get_or_verify([1; 32], async move {
                            calls.fetch_add(1, Ordering::SeqCst);
                            tokio::time::sleep(Duration::from_millis(20)).await;
                            Ok::<_, ()>(valid("k", 1))
                        })
                        .await
                })
            })
            .collect();
        for task in tasks {
            assert!(task.await.unwrap().is_ok());
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }
}
