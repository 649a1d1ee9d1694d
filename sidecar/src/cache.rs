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

use keyplane_proto::token::Environment;
use moka::Expiry;
use moka::future::Cache;
use moka::notification::RemovalCause;

/// Who a valid token speaks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    pub key_id: String,
    /// Org of the key.
    pub org_id: String,
    /// `live` or `test`.
    pub environment: Environment,
    /// Scopes of the key.
    pub scopes: Vec<String>,
    /// Expiry, re-checked at request time.
    pub expires_at: Option<SystemTime>,
    /// The key's own limits.
    pub limits: Limits,
    /// The identity the key belongs to, whose limits every check must pass
    /// too (boxed: most keys have none, and every cached key pays for the field).
    pub identity: Option<Box<IdentityPrincipal>>,
}

/// The identity of a key, with the limits all its keys share.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdentityPrincipal {
    /// `idn_…`: also the id its budgets are leased under.
    pub id: String,
    /// The platform's own id for it (passed upstream).
    pub external_id: String,
    pub limits: Limits,
}

/// What a key, or an identity for all its keys, is limited to.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Limits {
    /// Rate limit: (requests, window).
    pub rate_limit: Option<(u32, Duration)>,
    /// The rate limit is one budget shared by all sidecars (leased per window).
    pub global_rate_limit: bool,
    /// Client networks it may be used from; `None` = anywhere.
    pub allowed_networks: Option<Vec<ipnet::IpNet>>,
    /// Checks spend its credits (leased, see `credits.rs`).
    pub has_credits: bool,
}

impl Limits {
    /// Whether a client at `client` may use it (an unknown address may
    /// not, when there is an allow-list).
    pub fn allows_client(&self, client: Option<std::net::IpAddr>) -> bool {
        match &self.allowed_networks {
            None => true,
            Some(networks) => client.is_some_and(|ip| networks.iter().any(|net| net.contains(&ip))),
        }
    }
}

impl Principal {
    /// The key's limits and its identity's, each with the id its budgets
    /// are counted under: every one must allow a check.
    pub fn all_limits(&self) -> impl Iterator<Item = (&str, &Limits)> {
        std::iter::once((self.key_id.as_str(), &self.limits))
            .chain(self.identity.as_ref().map(|identity| (identity.id.as_str(), &identity.limits)))
    }

    /// Whether a client at `client` may use the key: inside the key's
    /// allow-list and its identity's.
    pub fn allows_client(&self, client: Option<std::net::IpAddr>) -> bool {
        self.all_limits().all(|(_, limits)| limits.allows_client(client))
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

/// A control-plane answer about one token.
#[derive(Clone, Debug)]
pub enum Verdict {
    /// The token is good.
    Valid {
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
        key_id: Option<String>,
        /// Log position the answer reflects.
        as_of: u64,
    },
}

impl Verdict {
    fn key_id(&self) -> Option<&str> {
        match self {
            Verdict::Valid { principal, .. } => Some(&principal.key_id),
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

struct VerdictExpiry {
    positive: Duration,
    negative: Duration,
}

impl Expiry<[u8; 32], Arc<Verdict>> for VerdictExpiry {
    fn expire_after_create(&self, _key: &[u8; 32], value: &Arc<Verdict>, _now: Instant) -> Option<Duration> {
        Some(match **value {
            Verdict::Valid { .. } => self.positive,
            Verdict::Invalid { .. } => self.negative,
        })
    }
}

/// Cached verdicts and applied key changes.
#[derive(Clone)]
pub struct KeyCache {
    verdicts: Cache<[u8; 32], Arc<Verdict>>,
    changes: Cache<String, Change>,
    /// Verdicts older than this position are stale (raised by Reset and by
    /// evictions of change records, so forgetting a change is always safe).
    floor: Arc<AtomicU64>,
}

impl KeyCache {
    /// A cache of at most `capacity` verdicts.
    pub fn new(capacity: u64, positive_ttl: Duration, negative_ttl: Duration) -> Self {
        let verdicts = Cache::builder()
            .max_capacity(capacity)
            .expire_after(VerdictExpiry { positive: positive_ttl, negative: negative_ttl })
            .build();
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
        Self { verdicts, changes, floor }
    }

    /// How far `verdict` can be trusted: not past a later change of its
    /// key, nor of its key's identity.
    pub async fn freshness(&self, verdict: &Verdict) -> Freshness {
        let change = match verdict.key_id() {
            Some(key_id) => self.changes.get(key_id).await,
            None => None,
        };
        if let Some(change) = change.filter(|change| change.seq > verdict.as_of()) {
            return change.ended.map_or(Freshness::Stale, Freshness::Ended);
        }
        if let Verdict::Valid { principal, as_of } = verdict
            && let Some(identity) = &principal.identity
            && self.changes.get(&identity.id).await.is_some_and(|change| change.seq > *as_of)
        {
            return Freshness::Stale;
        }
        if verdict.as_of() < self.floor.load(Ordering::Acquire) { Freshness::Stale } else { Freshness::Fresh }
    }

    /// The cached verdict for a token digest, if any.
    pub async fn get(&self, digest: &[u8; 32]) -> Option<Arc<Verdict>> {
        self.verdicts.get(digest).await
    }

    /// The verdict for `digest`, computing it with `verify` on a miss. Concurrent
    /// misses for the same digest share one computation (single flight).
    pub async fn get_or_verify<E: Send + Sync + 'static>(
        &self,
        digest: [u8; 32],
        verify: impl Future<Output = Result<Verdict, E>>,
    ) -> Result<Arc<Verdict>, Arc<E>> {
        self.verdicts.try_get_with(digest, async { verify.await.map(Arc::new) }).await
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
        let seq = previous.map_or(seq, |p| p.seq.max(seq));
        self.changes.insert(key_id.to_owned(), Change { seq, ended }).await;
    }

    /// Flushes everything: verdicts from before `head` are no longer trusted.
    pub fn reset(&self, head: u64) {
        self.floor.fetch_max(head, Ordering::AcqRel);
        self.verdicts.invalidate_all();
    }

    /// Number of cached verdicts (approximate).
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

    fn valid(key: &str, as_of: u64) -> Verdict {
        Verdict::Valid {
            principal: Arc::new(Principal {
                key_id: key.into(),
                org_id: "o".into(),
                environment: Environment::Live,
                scopes: vec![],
                expires_at: None,
                limits: Limits::default(),
                identity: None,
            }),
            as_of,
        }
    }

    #[tokio::test]
    async fn answers_older_than_a_change_are_not_trusted() {
        let cache = KeyCache::new(100, Duration::from_secs(60), Duration::from_secs(5));
        assert_eq!(cache.freshness(&valid("k", 5)).await, Freshness::Fresh);
        cache.apply_change("k", 7, None).await;
        assert_eq!(cache.freshness(&valid("k", 5)).await, Freshness::Stale);
        assert_eq!(cache.freshness(&valid("k", 7)).await, Freshness::Fresh);
        cache.apply_change("k", 9, Some(Refusal::Expired)).await;
        assert_eq!(cache.freshness(&valid("k", 8)).await, Freshness::Ended(Refusal::Expired));
        // A later change never revives the key, nor changes why it ended.
        cache.apply_change("k", 10, None).await;
        cache.apply_change("k", 11, Some(Refusal::Revoked)).await;
        assert_eq!(cache.freshness(&valid("k", 8)).await, Freshness::Ended(Refusal::Expired));
        assert_eq!(cache.freshness(&valid("other", 1)).await, Freshness::Fresh);
        cache.reset(20);
        assert_eq!(cache.freshness(&valid("other", 19)).await, Freshness::Stale);
    }

    #[tokio::test]
    async fn a_change_of_the_identity_makes_its_keys_answers_stale() {
        let cache = KeyCache::new(100, Duration::from_secs(60), Duration::from_secs(5));
        let of_identity = |as_of| {
            let Verdict::Valid { principal, .. } = valid("k", as_of) else { unreachable!() };
            let identity =
                IdentityPrincipal { id: "idn_1".into(), external_id: "acme".into(), limits: Limits::default() };
            Verdict::Valid {
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
