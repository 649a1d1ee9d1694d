//! The API-key lifecycle: issue ([`issue`]: create, rotate), change
//! ([`changes`]: update, revoke, delete), read, reveal and verify. Every
//! mutation writes its audit row, and its key event when sidecars must learn
//! of it, in the same transaction. Input rules live in [`rules`].

mod changes;
mod ending;
pub mod import;
mod issue;
pub(super) mod rules;

pub(crate) use changes::revoke_in;

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sea_orm::DatabaseConnection;
use serde_json::Value;

use super::Crypto;
use super::auth::RequestContext;
use super::credits::CreditService;
use super::paging::{ListQuery, Listing, Page};
use super::usage::ingest::LocalUsage;
use super::validate::Violations;
use super::verify::{self, Failure, Purpose, Requirements, Verification, Verifier};
use crate::crypto::Environment;
use crate::error::{Error, Result};
use crate::service::authz::{Action, Target};
pub use crate::store::api_keys::KeyChanges;
use crate::store::api_keys::{self, KeyFilter, NewLimits};
use crate::store::audit::AuditAction;
use crate::store::{OrgTx, audit};
use crate::wakeups::Wakeups;
use keyplane_proto::MAX_CHECK_COST;
use keyplane_proto::permissions::Query;
use keyplane_proto::usage::Outcome;

pub use rules::{DEFAULT_ROTATION_GRACE, MAX_ROTATION_GRACE, MAX_TTL, MIN_TTL};

const LISTING: Listing = Listing::named("keys");

/// When a new key expires.
#[derive(Clone, Copy, Debug)]
pub enum Expiry {
    At(DateTime<Utc>),
    /// This long after creation.
    Ttl(Duration),
}

/// Input of [`KeyService::create`].
#[derive(Clone, Debug)]
pub struct NewKey {
    /// May be empty for callers that act in their own org.
    pub org_id: String,
    pub name: String,
    pub description: String,
    pub environment: Environment,
    pub scopes: Vec<String>,
    pub expiry: Option<Expiry>,
    pub limits: NewLimits,
    /// A JSON object.
    pub metadata: Option<Value>,
    /// Keep the token sealed so RevealApiKey can show it again.
    pub recoverable: bool,
    /// The identity (of the same org) the key belongs to; `None` or empty = none.
    pub identity_id: Option<String>,
}

/// A key with its plaintext token, returned once.
#[derive(Debug)]
pub struct IssuedKey {
    pub key: api_keys::Model,
    pub token: String,
}

/// Result of a rotation.
#[derive(Debug)]
pub struct Rotation {
    /// The replacement and its token.
    pub issued: IssuedKey,
    /// The old key after the change (expiring at the end of the grace, or revoked).
    pub previous: api_keys::Model,
}

/// The API-key service.
pub struct KeyService {
    db: DatabaseConnection,
    crypto: Arc<Crypto>,
    wakeups: Wakeups,
    verifier: Arc<Verifier>,
    /// Where VerifyApiKey outcomes are counted.
    usage: Arc<LocalUsage>,
    /// Where VerifyApiKey spends credits.
    credits: Arc<CreditService>,
}

impl KeyService {
    pub fn new(
        db: DatabaseConnection,
        crypto: Arc<Crypto>,
        wakeups: Wakeups,
        verifier: Arc<Verifier>,
        usage: Arc<LocalUsage>,
        credits: Arc<CreditService>,
    ) -> Self {
        Self { db, crypto, wakeups, verifier, usage, credits }
    }

    /// One key of the caller's org.
    pub async fn get(&self, ctx: &RequestContext, org_id: &str, id: &str) -> Result<api_keys::Model> {
        let org = ctx.authorize(Action::ReadKeys, Target::Org(org_id))?;
        api_keys::find(&self.db, &org, id).await?.ok_or(Error::NotFound("api key"))
    }

    /// A page of keys in id order.
    pub async fn list(&self, ctx: &RequestContext, query: ListQuery<KeyFilter>) -> Result<Page<api_keys::Model>> {
        let org = ctx.authorize(Action::ReadKeys, Target::Org(&query.org_id))?;
        let cursor = LISTING.start(&query.page)?;
        let rows = api_keys::list(&self.db, &org, &query.filter, cursor.position.as_deref(), cursor.fetch()).await?;
        Ok(cursor.page(rows, |k| k.id.clone()))
    }

    /// How many keys of the org are active, counting no further than `up_to`.
    pub async fn count_active(&self, ctx: &RequestContext, org_id: &str, up_to: u64) -> Result<u64> {
        let org = ctx.authorize(Action::ReadKeys, Target::Org(org_id))?;
        api_keys::count_up_to(&self.db, &org, api_keys::KeyStatus::Active, up_to).await
    }

    /// Refreshes the count of keys still on another system's hash (a metric).
    pub async fn count_legacy_hashes(&self) -> Result<()> {
        self.verifier.count_legacy_hashes().await
    }

    /// Returns the token of a recoverable key (audited).
    pub async fn reveal(&self, ctx: &RequestContext, org_id: &str, id: &str) -> Result<String> {
        let org = ctx.authorize(Action::RevealKey, Target::Org(org_id))?;
        let tx = OrgTx::begin(&self.db, &org).await?;
        let key = api_keys::find(tx.conn(), tx.org(), id).await?.ok_or(Error::NotFound("api key"))?;
        ctx.authorize(Action::RevealKey, Target::Key { org: &org, scopes: &key.scope_list() })?;
        let sealed = key
            .sealed_token
            .as_deref()
            .ok_or_else(|| Error::FailedPrecondition("the key was not created recoverable".into()))?;
        let token = String::from_utf8(self.crypto.master_keys.open(sealed, &key.id)?)
            .map_err(|_| Error::Sealing("sealed token is not text".into()))?;
        audit::append(&tx, ctx.audit(AuditAction::ApiKeyRevealed, &key.id, serde_json::json!({}))).await?;
        tx.commit().await?;
        Ok(token)
    }

    /// Verifies a token for a caller, with optional environment and scopes;
    /// the outcome counts in the key's usage.
    pub async fn verify(&self, ctx: &RequestContext, token: &str, required: Requirements<'_>) -> Result<Verification> {
        let scope = ctx.verification_scope()?;
        let mut violations = Violations::default();
        violations.scopes("required_scopes", required.scopes);
        if required.cost > MAX_CHECK_COST {
            violations.add("cost", format!("must be at most {MAX_CHECK_COST}"));
        }
        let query = match required.permission_query.trim() {
            "" => None,
            text => {
                violations.absorb(Query::parse(text).map_err(|e| Error::invalid("permission_query", e.to_string())))?
            }
        };
        violations.finish()?;
        let verification = self.verifier.verify(scope, token, Purpose::Check).await?;
        let verification = match verify::check_requirements(verification, required, query.as_ref()) {
            Verification::Valid(verified) if verified.has_credits() => {
                if self.credits.spend(&verified, required.cost.max(1)).await? {
                    Verification::Valid(verified)
                } else {
                    Verification::Invalid(Failure::CreditsExhausted, Some(verified))
                }
            }
            other => other,
        };
        // A token in Keyplane's format names its key; an imported one is known once verified.
        let key_id = match (self.crypto.tokens.parse(token), &verification) {
            (Some(parsed), _) => Some(parsed.key_id()),
            (None, Verification::Valid(verified) | Verification::Invalid(_, Some(verified))) => {
                Some(verified.key.id.clone())
            }
            (None, Verification::Invalid(_, None)) => None,
        };
        if let Some(key_id) = key_id {
            self.usage.record(&key_id, usage_outcome(&verification));
        }
        Ok(verification)
    }
}

/// How a verification counts in usage analytics.
fn usage_outcome(verification: &Verification) -> Outcome {
    match verification {
        Verification::Valid(_) => Outcome::Allowed,
        Verification::Invalid(failure, _) => failure.outcome(),
    }
}
