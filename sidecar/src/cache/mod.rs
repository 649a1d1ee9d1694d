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
use std::time::{Duration, Instant};

pub use keyplane_proto::check::Limits;
use keyplane_proto::token::KEY_ID_PREFIX;
use moka::future::Cache;
use moka::notification::RemovalCause;

mod verdict;

pub use verdict::{Grants, IdentityPrincipal, KeyId, Principal, Refusal, SharedPrincipals, Verdict};

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
    use std::time::SystemTime;

    use keyplane_proto::permissions::Held;
    use keyplane_proto::token::Environment;

    use super::verdict::Interner;
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
