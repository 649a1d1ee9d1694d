//! The check decision, shared by every front end (ext_authz gRPC, HTTP
//! forward-auth): format → cache (single-flight Verify on a miss) →
//! freshness against applied revocations → expiry, environment, scopes →
//! rate limit. The rules themselves are the pure [`decide`] (`rules.rs`).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use keyplane_proto::token::{self, Environment, ParsedToken, TokenFormat};
use keyplane_proto::usage::Outcome;
use sha2::{Digest, Sha256};

use crate::cache::{Freshness, KeyCache, Principal, Verdict};
use crate::control_plane::ControlPlaneClient;
use crate::credits::CreditLeases;
use crate::log_sample::LogSample;
use crate::metrics::Metrics;
use crate::ratelimit::RateLimits;
use crate::sync::{self, Readiness, SyncState};
use crate::usage::UsageReporter;

mod rules;

pub use rules::{
    CheckInput, Decision, Denial, DenyStatus, GENERIC_REASON, InvalidQuery, Requirements, decide, parse_cost,
    required_scopes,
};
use rules::{MISSING_CREDENTIAL, refusal};

/// The key a token names, for counting a refused check.
enum Named<'a> {
    /// A Keyplane token names its key.
    Token(ParsedToken<'a>),
    /// An imported token's key, as the control plane named it.
    Imported(String),
}

/// Makes check decisions.
pub struct Checker {
    tokens: TokenFormat,
    imported_prefixes: Vec<String>,
    /// The orgs served (`--org`); empty: every org.
    orgs: HashSet<String>,
    environment: Environment,
    max_staleness: Duration,
    fail_open: bool,
    expose_denial_reasons: bool,
    control_plane_timeout: Duration,
    cache: KeyCache,
    limits: RateLimits,
    credits: Arc<CreditLeases>,
    global_limits: Arc<CreditLeases>,
    usage: UsageReporter,
    sync: Arc<SyncState>,
    client: ControlPlaneClient,
    metrics: Arc<Metrics>,
    /// Which authentication failures are logged (every one is counted).
    failures_logged: LogSample,
}

/// Parts a [`Checker`] is built from.
pub struct CheckerParts {
    /// Token prefix.
    pub tokens: TokenFormat,
    /// Starts of tokens imported from another system.
    pub imported_prefixes: Vec<String>,
    /// The orgs served; empty: every org.
    pub orgs: HashSet<String>,
    /// Environment served.
    pub environment: Environment,
    /// Staleness bound.
    pub max_staleness: Duration,
    /// Allow from cache when stale.
    pub fail_open: bool,
    /// Tell clients the precise reason of a refused token.
    pub expose_denial_reasons: bool,
    /// Longest wait for a Verify answer.
    pub control_plane_timeout: Duration,
    /// Verdict cache.
    pub cache: KeyCache,
    /// Rate limiters.
    pub limits: RateLimits,
    /// Credits leased from the control plane.
    pub credits: Arc<CreditLeases>,
    /// Requests of global rate limits leased from the control plane.
    pub global_limits: Arc<CreditLeases>,
    /// Usage counts.
    pub usage: UsageReporter,
    /// Stream position and staleness.
    pub sync: Arc<SyncState>,
    /// Control-plane client.
    pub client: ControlPlaneClient,
    pub metrics: Arc<Metrics>,
}

impl Checker {
    /// A checker over these parts.
    pub fn new(parts: CheckerParts) -> Self {
        Self {
            tokens: parts.tokens,
            imported_prefixes: parts.imported_prefixes,
            orgs: parts.orgs,
            environment: parts.environment,
            max_staleness: parts.max_staleness,
            fail_open: parts.fail_open,
            expose_denial_reasons: parts.expose_denial_reasons,
            control_plane_timeout: parts.control_plane_timeout,
            cache: parts.cache,
            limits: parts.limits,
            credits: parts.credits,
            global_limits: parts.global_limits,
            usage: parts.usage,
            sync: parts.sync,
            client: parts.client,
            metrics: parts.metrics,
            failures_logged: LogSample::default(),
        }
    }

    /// Decides about one request and counts it in the key's usage (a
    /// token naming no key, or a check the sidecar could not answer, is
    /// not a key's). Refused tokens are logged at WARN with the precise
    /// reason, the client's address and the request id, a sample of them
    /// under a flood ([`LogSample`]); every one is counted in metrics.
    pub async fn check(&self, request: &CheckInput<'_>) -> Decision {
        let (mut decision, named) = self.decide(request).await;
        match &mut decision {
            Decision::Allow { key_id, .. } => {
                self.usage.record(key_id, Outcome::Allowed);
                self.metrics.hot.allowed.inc();
            }
            Decision::Deny(denial) => {
                let outcome = match denial.status {
                    DenyStatus::Unauthenticated => Some(Outcome::Unauthorized),
                    DenyStatus::Forbidden => Some(Outcome::Forbidden),
                    DenyStatus::RateLimited => Some(Outcome::RateLimited),
                    DenyStatus::BadRequest | DenyStatus::Unavailable => None,
                };
                if let (Some(outcome), Some(named)) = (outcome, &named) {
                    match named {
                        Named::Token(parsed) => self.usage.record(&parsed.key_id(), outcome),
                        Named::Imported(key_id) => self.usage.record(key_id, outcome),
                    }
                }
                if denial.status == DenyStatus::Unauthenticated {
                    if let Some(left_out) = self.failures_logged.admit() {
                        tracing::warn!(
                            reason = denial.reason,
                            peer = %request.peer,
                            request_id = %request.request_id,
                            left_out,
                            "authentication failed"
                        );
                    }
                    if !self.expose_denial_reasons && denial.reason != MISSING_CREDENTIAL {
                        denial.shown = GENERIC_REASON;
                    }
                }
                self.metrics.checks.get_or_create(&[("decision", "deny"), ("reason", denial.reason)]).inc();
            }
        }
        decision
    }

    /// The decision, and the key the token names: a Keyplane token names
    /// it itself; an imported one once the control plane has answered.
    async fn decide<'a>(&self, request: &CheckInput<'a>) -> (Decision, Option<Named<'a>>) {
        use DenyStatus::*;
        let readiness = self.sync.readiness(self.max_staleness);
        if readiness == Readiness::NotSynced || (readiness == Readiness::Stale && !self.fail_open) {
            let reason = if readiness == Readiness::NotSynced { "not_synced" } else { "stale" };
            return (Decision::Deny(Denial::new(Unavailable, reason)), None);
        }
        let Some(cost) = request.cost else {
            return (Decision::Deny(Denial::new(BadRequest, "invalid_cost")), None);
        };
        let Ok(permissions) = request.permissions else {
            return (Decision::Deny(Denial::new(BadRequest, "invalid_permission_query")), None);
        };
        let Some(token) = request.credential.filter(|t| !t.is_empty()) else {
            return (Decision::Deny(Denial::new(Unauthenticated, MISSING_CREDENTIAL)), None);
        };
        let parsed = self.tokens.parse(token).map(Named::Token);
        if parsed.is_none() && !self.may_be_imported(token) {
            return (Decision::Deny(Denial::new(Unauthenticated, "malformed")), None);
        }
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let verdict = match self.trusted_verdict(digest, token).await {
            Ok(verdict) => verdict,
            Err(denial) => return (Decision::Deny(denial), parsed),
        };
        let named = parsed.or_else(|| verdict.key_id().map(|id| Named::Imported(id.to_owned())));
        // Another org's key: this sidecar does not follow its events, so
        // nothing it knows about it can be trusted.
        if let Verdict::Valid { principal, .. } = &verdict
            && !self.orgs.is_empty()
            && !self.orgs.contains(&*principal.org_id)
        {
            return (Decision::Deny(Denial::new(Unauthenticated, "org_not_served")), named);
        }
        let required = Requirements {
            environment: self.environment,
            scopes: request.required_scopes,
            client: request.client,
            permissions,
        };
        let decision = decide(&verdict, required, SystemTime::now());
        // Boxed, and only for keys with limits: leasing budgets awaits calls
        // to the control plane, a large future most checks need not carry.
        if let Decision::Allow { key_id, principal } = &decision
            && principal.spends_budgets()
            && let Some(denial) = Box::pin(self.enforce_limits(key_id, principal, cost)).await
        {
            return (Decision::Deny(denial), named);
        }
        (decision, named)
    }

    /// Whether a token not in Keyplane's format may be an imported key's:
    /// it starts as one, and could be any system's.
    fn may_be_imported(&self, token: &str) -> bool {
        token::could_be_foreign(token) && self.imported_prefixes.iter().any(|prefix| token.starts_with(prefix.as_str()))
    }

    /// The rate limits, then the credits, of the key and of its identity:
    /// each must allow the check. Credits spent from the key before its
    /// identity's refused are put back (when the lease they came from still
    /// lasts; otherwise they count as spent). A check refused by the
    /// identity's rate limit still counts against the key's.
    async fn enforce_limits(&self, key_id: &str, principal: &Principal, cost: u64) -> Option<Denial> {
        for (id, limits) in principal.all_limits(key_id) {
            let Some(limit) = limits.rate_limit else { continue };
            let refused = if limits.global_rate_limit {
                refusal(self.global_limits.spend(id, 1).await, "rate_limited").err()
            } else {
                let wait = self.limits.check(id, limit).err();
                wait.map(|wait| Denial {
                    retry_after: Some(wait),
                    ..Denial::new(DenyStatus::RateLimited, "rate_limited")
                })
            };
            if refused.is_some() {
                return refused;
            }
        }
        let mut spent = Vec::new();
        for (id, _) in principal.all_limits(key_id).filter(|(_, limits)| limits.has_credits) {
            match refusal(self.credits.spend(id, cost).await, "credits_exhausted") {
                Ok(receipt) => spent.push((id, receipt)),
                Err(denial) => {
                    for (id, receipt) in spent {
                        self.credits.refund(id, receipt);
                    }
                    return Some(denial);
                }
            }
        }
        None
    }

    /// A verdict that reflects every change applied for its key: from the
    /// cache, or from Verify (once more if the answer raced an update).
    async fn trusted_verdict(&self, digest: [u8; 32], token: &str) -> Result<Verdict, Denial> {
        let cached = self.cache.get(&digest).await;
        let hot = &self.metrics.hot;
        if cached.is_some() { &hot.hits } else { &hot.misses }.inc();
        if let Some(verdict) = cached {
            match self.cache.freshness(&verdict).await {
                Freshness::Fresh => return Ok(verdict),
                Freshness::Ended(refusal) => return Err(Denial::new(DenyStatus::Unauthenticated, refusal.reason())),
                Freshness::Stale => self.cache.forget(&digest).await,
            }
        }
        // Boxed: the Verify call's future is kilobytes, and every check
        // would otherwise carry (and copy) it, hit or miss.
        Box::pin(self.verified(digest, token)).await
    }

    /// The verdict from Verify, through the cache's single flight.
    async fn verified(&self, digest: [u8; 32], token: &str) -> Result<Verdict, Denial> {
        for _ in 0..2 {
            let mut client = self.client.clone();
            let (metrics, shared) = (&self.metrics, self.cache.shared());
            let timeout = self.control_plane_timeout;
            let verdict = self
                .cache
                .get_or_verify(digest, async move { sync::verify(&mut client, token, shared, metrics, timeout).await })
                .await
                .map_err(|error| {
                    tracing::warn!(%error, "verify failed");
                    Denial::new(DenyStatus::Unavailable, "control_plane_unavailable")
                })?;
            match self.cache.freshness(&verdict).await {
                Freshness::Fresh => return Ok(verdict),
                // The answer was computed before the key ended, which this sidecar already applied.
                Freshness::Ended(refusal) => {
                    self.cache.forget(&digest).await;
                    return Err(Denial::new(DenyStatus::Unauthenticated, refusal.reason()));
                }
                Freshness::Stale => self.cache.forget(&digest).await,
            }
        }
        Err(Denial::new(DenyStatus::Unavailable, "changing"))
    }

    /// Whether checks can be answered (for health and readiness).
    pub fn readiness(&self) -> Readiness {
        self.sync.readiness(self.max_staleness)
    }
}
