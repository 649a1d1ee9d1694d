//! Token verification: the one code path behind VerifyApiKey, admin
//! authentication and the sidecar's KeySync.Verify.
//!
//! Malformed tokens are refused before any lookup. A correct secret is
//! remembered (by SHA-256 of the token) so repeated checks skip argon2; the
//! key row is still read every time, so revocation takes effect at once.

use std::sync::Arc;
use std::time::{Duration, Instant};

use moka::future::Cache;

use super::Core;
use crate::crypto::Environment;
use crate::error::Result;
use crate::store::{self, OrgScope, api_keys};

/// Why a token is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// Not a token of this format, or a wrong checksum.
    Malformed,
    /// No such key in the caller's reach.
    Unknown,
    /// The secret does not match.
    BadSecret,
    /// The key was revoked.
    Revoked,
    /// The key expired.
    Expired,
    /// The key belongs to the other environment.
    WrongEnvironment,
    /// The key lacks a required scope.
    MissingScope,
}

impl Failure {
    /// Label used in metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Failure::Malformed => "malformed",
            Failure::Unknown => "unknown",
            Failure::BadSecret => "bad_secret",
            Failure::Revoked => "revoked",
            Failure::Expired => "expired",
            Failure::WrongEnvironment => "wrong_environment",
            Failure::MissingScope => "missing_scope",
        }
    }
}

/// Why a token is being verified.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Purpose {
    /// A token check asked for by a caller (VerifyApiKey, KeySync.Verify).
    Check,
    /// Authenticating the caller of an admin or sync RPC.
    Authentication,
}

/// Outcome of a verification.
#[derive(Debug)]
pub enum Verification {
    /// The token is good; here is its key.
    Valid(Box<api_keys::Model>),
    /// The token is refused; the key is known when the secret was right.
    Invalid(Failure, Option<Box<api_keys::Model>>),
}

/// Verifies tokens.
pub struct Verifier {
    core: Arc<Core>,
    /// SHA-256 of a token → the secret hash it was found to match.
    verified_secrets: Cache<[u8; 32], Arc<str>>,
}

impl Verifier {
    /// A verifier remembering up to `capacity` verified secrets.
    pub fn new(core: Arc<Core>, capacity: u64) -> Self {
        let verified_secrets = Cache::builder().max_capacity(capacity).time_to_idle(Duration::from_secs(600)).build();
        Self { core, verified_secrets }
    }

    /// Checks `token` against keys in `scope`: format, key, secret, status,
    /// expiry. `purpose` labels the metric (token checks vs. caller authentication).
    pub async fn verify(&self, scope: OrgScope<'_>, token: &str, purpose: Purpose) -> Result<Verification> {
        let outcome = self.check(scope, token).await?;
        let label = match &outcome {
            Verification::Valid(_) => "valid",
            Verification::Invalid(failure, _) => failure.as_str(),
        };
        let purpose = match purpose {
            Purpose::Check => "check",
            Purpose::Authentication => "authentication",
        };
        self.core.metrics.verifications.get_or_create(&vec![("purpose", purpose), ("outcome", label)]).inc();
        Ok(outcome)
    }

    async fn check(&self, scope: OrgScope<'_>, token: &str) -> Result<Verification> {
        let Some(parsed) = self.core.tokens.parse(token) else {
            return Ok(Verification::Invalid(Failure::Malformed, None));
        };
        let Some(key) = api_keys::find_in(&self.core.db, scope, &parsed.key_id()).await? else {
            return Ok(Verification::Invalid(Failure::Unknown, None));
        };
        if key.environment() != parsed.environment {
            // A token whose prefix disagrees with its key is not one we issued.
            return Ok(Verification::Invalid(Failure::Unknown, None));
        }
        if !self.secret_matches(token, parsed.secret, &key.secret_hash).await? {
            return Ok(Verification::Invalid(Failure::BadSecret, None));
        }
        let failure = if key.status != api_keys::ACTIVE {
            Some(Failure::Revoked)
        } else if key.is_expired(store::now()) {
            Some(Failure::Expired)
        } else {
            None
        };
        Ok(match failure {
            Some(failure) => Verification::Invalid(failure, Some(Box::new(key))),
            None => Verification::Valid(Box::new(key)),
        })
    }

    async fn secret_matches(&self, token: &str, secret: &str, secret_hash: &str) -> Result<bool> {
        let digest = crate::crypto::sha256(token.as_bytes());
        if self.verified_secrets.get(&digest).await.as_deref() == Some(secret_hash) {
            return Ok(true);
        }
        let started = Instant::now();
        let matches = self.core.hasher.verify(secret.to_owned(), secret_hash.to_owned()).await?;
        self.core.metrics.argon2_seconds.observe(started.elapsed().as_secs_f64());
        if matches {
            self.verified_secrets.insert(digest, Arc::from(secret_hash)).await;
        }
        Ok(matches)
    }
}

/// Applies a caller's requirements to a valid key: environment, then scopes.
pub fn check_requirements(
    verification: Verification,
    environment: Option<Environment>,
    required_scopes: &[String],
) -> Verification {
    let Verification::Valid(key) = verification else {
        return verification;
    };
    if environment.is_some_and(|env| env != key.environment()) {
        return Verification::Invalid(Failure::WrongEnvironment, Some(key));
    }
    let granted = key.scope_list();
    if required_scopes.iter().any(|needed| !granted.contains(needed)) {
        return Verification::Invalid(Failure::MissingScope, Some(key));
    }
    Verification::Valid(key)
}
