//! Token verification: the one code path behind VerifyApiKey, admin
//! authentication and the sidecar's KeySync.Verify.
//!
//! Tokens in Keyplane's format name their key; others may be keys
//! imported from another system, found by lookup ([`imported`]); tokens
//! that are neither are refused before any lookup. A correct secret is
//! remembered (by SHA-256 of the token) so repeated checks skip argon2; the
//! key row is still read every time, so revocation takes effect at once.
//!
//! Argon2 work is bounded for abusers: after [`AbuseLimits::failures_per_key`]
//! wrong secrets for one key id within the window, further unverified
//! secrets for it are refused without hashing (remembered correct secrets
//! keep working, so the owner is not locked out), and all key ids with a
//! recent failure share a global budget of hashes per second, so guessing
//! cannot starve verification of other keys. A refusal that did no hashing
//! (unknown key id, throttled) waits as long as a typical hash, so timing
//! does not tell a real key id from an unknown one.

mod failure;
mod imported;

pub use failure::Failure;
pub use imported::MAX_CANDIDATES;

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use keyplane_proto::check::{self, CheckRequest, Denied, KeyState, Limited};
use keyplane_proto::permissions::{Held, Holder, Query};
use moka::future::Cache;
use sea_orm::DatabaseConnection;

use super::Crypto;
use super::effective::{self, Effective};
use crate::crypto::Environment;
use crate::error::Result;
use crate::metrics::Metrics;
use crate::store::api_keys::{self, KeyStatus};
use crate::store::identities;
use crate::store::limits::HasLimits;
use crate::store::{self, OrgScope};

/// Why a token is being verified.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Purpose {
    /// A token check asked for by a caller (VerifyApiKey, KeySync.Verify).
    Check,
    /// Authenticating the caller of an admin or sync RPC.
    Authentication,
}

/// A key whose secret matched, with the identity it belongs to.
#[derive(Debug)]
pub struct VerifiedKey {
    pub key: api_keys::Model,
    pub identity: Option<identities::Model>,
    /// What it holds: its scopes, and for a token check (not a caller's
    /// authentication) its roles' and its identity's permissions too.
    pub grants: Effective,
    held: Held,
}

impl VerifiedKey {
    /// A key and its identity, holding its scopes (until [`Self::with_grants`]).
    pub fn new(key: api_keys::Model, identity: Option<identities::Model>) -> Self {
        let held = Held::new(key.scope_list());
        Self { key, identity, grants: Effective::default(), held }
    }

    /// The key with everything it holds (roles, identity) read.
    async fn with_grants(mut self: Box<Self>, db: &DatabaseConnection) -> Result<Box<Self>> {
        self.grants = effective::of_key(db, &self.key, self.identity.as_ref()).await?;
        self.held = self.grants.held();
        Ok(self)
    }

    /// Whether a use spends credits (of the key, its identity, or both).
    pub fn has_credits(&self) -> bool {
        self.key.has_credits() || self.identity.as_ref().is_some_and(HasLimits::has_credits)
    }
}

impl KeyState for VerifiedKey {
    fn expires_at(&self) -> Option<SystemTime> {
        self.key.expires_at.map(SystemTime::from)
    }

    fn environment(&self) -> Environment {
        self.key.environment
    }

    fn limits(&self) -> impl Iterator<Item = &dyn Limited> {
        std::iter::once(&self.key as &dyn Limited)
            .chain(self.identity.as_ref().map(|identity| identity as &dyn Limited))
    }

    fn has_scope(&self, scope: &str) -> bool {
        self.key.scopes.as_array().is_some_and(|scopes| scopes.iter().any(|s| s.as_str() == Some(scope)))
    }

    fn holds_permission(&self, name: &str) -> bool {
        self.held.holds(name)
    }
}

/// Outcome of a verification.
#[derive(Debug)]
pub enum Verification {
    /// The token is good; here is its key.
    Valid(Box<VerifiedKey>),
    /// The token is refused; the key is known when the secret was right.
    Invalid(Failure, Option<Box<VerifiedKey>>),
}

/// Bounds on argon2 work spent on wrong secrets.
#[derive(Clone, Copy, Debug)]
pub struct AbuseLimits {
    /// Wrong secrets for one key id within `failure_window` after which
    /// unverified secrets for it are refused without hashing.
    pub failures_per_key: u32,
    /// How long failures count against a key id (from its first failure).
    pub failure_window: Duration,
    /// Hashes per second, over all key ids with a failure in their window.
    pub suspect_hashes_per_second: u32,
}

/// Key ids tracked for failures at most (the oldest are forgotten first).
const TRACKED_KEY_IDS: u64 = 100_000;
/// Starting estimate of one argon2 verification, until one is measured.
const INITIAL_HASH_ESTIMATE: Duration = Duration::from_millis(20);

/// Verifies tokens.
pub struct Verifier {
    db: DatabaseConnection,
    crypto: Arc<Crypto>,
    metrics: Arc<Metrics>,
    /// SHA-256 of a token → the secret hash it was found to match.
    verified_secrets: Cache<[u8; 32], Arc<str>>,
    /// SHA-256 of an imported key's token → the key it matched.
    imported_tokens: Cache<[u8; 32], Arc<imported::Remembered>>,
    limits: AbuseLimits,
    /// Key id → wrong secrets within its window.
    failures: Cache<String, Arc<AtomicU32>>,
    /// Hashes allowed for key ids under suspicion.
    suspect_hashes: DefaultDirectRateLimiter,
    /// Moving average of one argon2 verification, in nanoseconds.
    typical_hash_nanos: AtomicU64,
}

impl Verifier {
    /// A verifier remembering up to `capacity` verified secrets.
    pub fn new(
        db: DatabaseConnection,
        crypto: Arc<Crypto>,
        metrics: Arc<Metrics>,
        capacity: u64,
        limits: AbuseLimits,
    ) -> Self {
        let verified_secrets = Cache::builder().max_capacity(capacity).time_to_idle(Duration::from_secs(600)).build();
        let imported_tokens = Cache::builder().max_capacity(capacity).time_to_idle(Duration::from_secs(600)).build();
        let failures = Cache::builder().max_capacity(TRACKED_KEY_IDS).time_to_live(limits.failure_window).build();
        let rate = NonZeroU32::new(limits.suspect_hashes_per_second).unwrap_or(NonZeroU32::MIN);
        Self {
            db,
            crypto,
            metrics,
            verified_secrets,
            imported_tokens,
            limits,
            failures,
            suspect_hashes: RateLimiter::direct(Quota::per_second(rate)),
            typical_hash_nanos: AtomicU64::new(INITIAL_HASH_ESTIMATE.as_nanos() as u64),
        }
    }

    /// Checks `token` against keys in `scope`: format, key, secret, status,
    /// expiry. `purpose` labels the metric (token checks vs. caller authentication).
    pub async fn verify(&self, scope: OrgScope<'_>, token: &str, purpose: Purpose) -> Result<Verification> {
        let outcome = match (self.check(scope, token).await?, purpose) {
            (Verification::Valid(verified), Purpose::Check) => {
                Verification::Valid(verified.with_grants(&self.db).await?)
            }
            (Verification::Invalid(failure, Some(verified)), Purpose::Check) => {
                Verification::Invalid(failure, Some(verified.with_grants(&self.db).await?))
            }
            (outcome, _) => outcome,
        };
        let label = match &outcome {
            Verification::Valid(_) => "valid",
            Verification::Invalid(failure, _) => failure.as_str(),
        };
        let purpose = match purpose {
            Purpose::Check => "check",
            Purpose::Authentication => "authentication",
        };
        self.metrics.verifications.get_or_create(&vec![("purpose", purpose), ("outcome", label)]).inc();
        Ok(outcome)
    }

    async fn check(&self, scope: OrgScope<'_>, token: &str) -> Result<Verification> {
        let started = Instant::now();
        let Some(parsed) = self.crypto.tokens.parse(token) else {
            return self.check_imported(scope, token, started).await;
        };
        let found = api_keys::find_in(&self.db, scope, &parsed.key_id()).await?;
        // A token whose prefix disagrees with its key is not one we issued.
        let Some(key) = found.filter(|key| key.environment == parsed.environment) else {
            self.pad_to_typical_hash(started).await;
            return Ok(Verification::Invalid(Failure::Unknown, None));
        };
        match self.secret_matches(token, parsed.secret, &key).await? {
            SecretCheck::Matches => {}
            SecretCheck::Wrong => return Ok(Verification::Invalid(Failure::BadSecret, None)),
            SecretCheck::Throttled => {
                self.pad_to_typical_hash(started).await;
                return Ok(Verification::Invalid(Failure::Throttled, None));
            }
        }
        self.conclude(key).await
    }

    /// The verification of a key whose secret matched: its status, expiry and identity.
    async fn conclude(&self, key: api_keys::Model) -> Result<Verification> {
        let failure = match key.status {
            KeyStatus::Revoked => Some(Failure::Revoked),
            KeyStatus::Expired => Some(Failure::Denied(Denied::Expired)),
            KeyStatus::Active if key.is_expired(store::now()) => Some(Failure::Denied(Denied::Expired)),
            KeyStatus::Active => None,
        };
        let identity = match &key.identity_id {
            Some(id) => identities::find(&self.db, &key.org_id, id).await?,
            None => None,
        };
        let verified = Box::new(VerifiedKey::new(key, identity));
        Ok(match failure {
            Some(failure) => Verification::Invalid(failure, Some(verified)),
            None => Verification::Valid(verified),
        })
    }

    /// Checks the secret: a remembered match costs nothing; otherwise
    /// argon2 runs unless the key id is over its failure limits.
    async fn secret_matches(&self, token: &str, secret: &str, key: &api_keys::Model) -> Result<SecretCheck> {
        let digest = crate::crypto::sha256(token.as_bytes());
        if self.verified_secrets.get(&digest).await.as_deref() == Some(key.secret_hash.as_str()) {
            return Ok(SecretCheck::Matches);
        }
        if self.throttled(&key.id).await {
            return Ok(SecretCheck::Throttled);
        }
        let started = Instant::now();
        let matches = self.crypto.hasher.verify(secret.to_owned(), key.secret_hash.clone()).await?;
        self.record_hash_time(started.elapsed());
        if matches {
            self.verified_secrets.insert(digest, Arc::from(key.secret_hash.as_str())).await;
            Ok(SecretCheck::Matches)
        } else {
            self.record_failure(&key.id).await;
            Ok(SecretCheck::Wrong)
        }
    }

    /// Whether secrets for `suspect` (a key id, or an imported key's
    /// lookup) are refused without hashing: too many wrong ones for it, or
    /// for all suspects together.
    async fn throttled(&self, suspect: &str) -> bool {
        let failures = self.failures.get(suspect).await.map_or(0, |count| count.load(Ordering::Relaxed));
        let throttled_by = if failures >= self.limits.failures_per_key {
            Some("key")
        } else if failures > 0 && self.suspect_hashes.check().is_err() {
            Some("global")
        } else {
            None
        };
        if let Some(limit) = throttled_by {
            self.metrics.verify_throttled.get_or_create(&vec![("limit", limit)]).inc();
            tracing::warn!(suspect, failures, limit, "secret refused without hashing: too many wrong secrets");
        }
        throttled_by.is_some()
    }

    async fn record_failure(&self, suspect: &str) {
        let count = self.failures.get_with(suspect.to_owned(), async { Arc::new(AtomicU32::new(0)) }).await;
        count.fetch_add(1, Ordering::Relaxed);
    }

    fn record_hash_time(&self, took: Duration) {
        self.metrics.argon2_seconds.observe(took.as_secs_f64());
        let took = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        // Exponential moving average with weight 1/8; races only blur it.
        let average = self.typical_hash_nanos.load(Ordering::Relaxed);
        let updated = average - average / 8 + took / 8;
        self.typical_hash_nanos.store(updated, Ordering::Relaxed);
    }

    /// Waits until a refusal that did no hashing has taken as long as a
    /// typical hash (no CPU is spent: it is a timer).
    async fn pad_to_typical_hash(&self, started: Instant) {
        let typical = Duration::from_nanos(self.typical_hash_nanos.load(Ordering::Relaxed));
        if let Some(remaining) = typical.checked_sub(started.elapsed()) {
            tokio::time::sleep(remaining).await;
        }
    }
}

/// What checking a secret found.
enum SecretCheck {
    /// Correct.
    Matches,
    /// Wrong (argon2 ran).
    Wrong,
    /// Not checked: the key id is over its failure limits.
    Throttled,
}

/// What a caller of VerifyApiKey requires of a key.
#[derive(Clone, Copy, Debug, Default)]
pub struct Requirements<'a> {
    /// The environment the key must belong to, if any.
    pub environment: Option<Environment>,
    /// Scopes the key must hold.
    pub scopes: &'a [String],
    /// The client that presented the token, for keys with an allow-list.
    pub client: Option<IpAddr>,
    /// Credits the use costs, for keys with credits (0 counts as 1).
    pub cost: u64,
    /// A permission query the key must satisfy (empty: none), parsed by
    /// [`KeyService::verify`](super::KeyService::verify).
    pub permission_query: &'a str,
}

/// Applies a caller's requirements to a valid key: the check decision
/// shared with the sidecar (`keyplane_proto::check`).
pub fn check_requirements(
    verification: Verification,
    required: Requirements<'_>,
    permissions: Option<&Query>,
) -> Verification {
    let Verification::Valid(verified) = verification else {
        return verification;
    };
    let request = CheckRequest {
        environment: required.environment,
        scopes: required.scopes,
        client: required.client,
        permissions,
        now: SystemTime::now(),
    };
    match check::decide(verified.as_ref(), &request) {
        Ok(()) => Verification::Valid(verified),
        Err(denied) => Verification::Invalid(Failure::Denied(denied), Some(verified)),
    }
}
