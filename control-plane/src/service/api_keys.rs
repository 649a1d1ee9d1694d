//! The API-key lifecycle: create, read, list, update, revoke, delete, rotate,
//! reveal and verify. Every mutation writes its audit row, and its key event
//! when sidecars must learn of it, in the same transaction.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sea_orm::{ActiveValue::Set, IntoActiveModel};
use serde_json::{Value, json};

use super::Core;
use super::auth::{RequestContext, Scope};
use super::events::{commit_with_deliveries, publish_own};
use super::paging::{ListQuery, Listing, Page};
use super::validate::Violations;
use super::verify::{self, Purpose, Verification, Verifier};
use crate::crypto::Environment;
use crate::error::{Error, Result};
use crate::store::key_events::{self, KeyEventKind};
use crate::store::{self, OrgTx, api_keys, audit};

/// Shortest TTL accepted at creation.
pub const MIN_TTL: Duration = Duration::from_secs(60);
/// Longest TTL (and furthest expiry) accepted.
pub const MAX_TTL: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Rotation grace when none is given.
pub const DEFAULT_ROTATION_GRACE: Duration = Duration::from_secs(24 * 3600);
/// Longest rotation grace.
pub const MAX_ROTATION_GRACE: Duration = Duration::from_secs(30 * 24 * 3600);
const LISTING: Listing = Listing::named("keys");

/// At most `requests` uses per `window`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimit {
    /// Requests per window.
    pub requests: u32,
    /// Window length.
    pub window: Duration,
}

/// When a new key expires.
#[derive(Clone, Copy, Debug)]
pub enum Expiry {
    /// At this time.
    At(DateTime<Utc>),
    /// This long after creation.
    Ttl(Duration),
}

/// Input of [`KeyService::create`].
#[derive(Clone, Debug)]
pub struct NewKey {
    /// Requested org (may be empty for org-scoped callers).
    pub org_id: String,
    /// Name.
    pub name: String,
    /// Description.
    pub description: String,
    /// Environment.
    pub environment: Environment,
    /// Scopes.
    pub scopes: Vec<String>,
    /// Expiry.
    pub expiry: Option<Expiry>,
    /// Rate limit.
    pub rate_limit: Option<RateLimit>,
    /// JSON object.
    pub metadata: Option<Value>,
    /// Keep the token sealed for RevealApiKey.
    pub recoverable: bool,
}

/// Fields to change in [`KeyService::update`]; `None` leaves a field alone.
#[derive(Clone, Debug, Default)]
pub struct KeyChanges {
    /// New name.
    pub name: Option<String>,
    /// New description.
    pub description: Option<String>,
    /// New scopes.
    pub scopes: Option<Vec<String>>,
    /// New expiry (`Some(None)` clears it).
    pub expires_at: Option<Option<DateTime<Utc>>>,
    /// New rate limit (`Some(None)` clears it).
    pub rate_limit: Option<Option<RateLimit>>,
    /// New metadata (`Some(None)` clears it).
    pub metadata: Option<Option<Value>>,
}

/// A key with its plaintext token, returned once.
#[derive(Debug)]
pub struct IssuedKey {
    /// The stored key.
    pub key: api_keys::Model,
    /// The plaintext token.
    pub token: String,
}

/// Result of a rotation.
#[derive(Debug)]
pub struct Rotation {
    /// The new key and token.
    pub issued: IssuedKey,
    /// The old key after the change.
    pub previous: api_keys::Model,
}

/// Attributes a key is issued with (at creation, or copied by rotation).
struct Attributes {
    name: String,
    description: String,
    environment: Environment,
    scopes: Vec<String>,
    expires_at: Option<DateTime<Utc>>,
    rate_limit: Option<RateLimit>,
    metadata: Option<Value>,
    recoverable: bool,
}

/// The API-key service.
pub struct KeyService {
    core: Arc<Core>,
    verifier: Arc<Verifier>,
}

impl KeyService {
    /// A key service over `core`.
    pub fn new(core: Arc<Core>, verifier: Arc<Verifier>) -> Self {
        Self { core, verifier }
    }

    /// Creates a platform admin key for the operator's bootstrap command.
    pub async fn create_admin_key(&self, name: &str) -> Result<IssuedKey> {
        let ctx = RequestContext {
            actor: super::Actor::Operator,
            request_id: String::new(),
            peer_address: String::new(),
            user_agent: String::new(),
        };
        let new = NewKey {
            org_id: super::auth::PLATFORM_ORG.to_owned(),
            name: name.to_owned(),
            description: "created by `keyplane create-admin-key`".into(),
            environment: Environment::Live,
            scopes: vec![Scope::Admin.as_str().to_owned()],
            expiry: None,
            rate_limit: None,
            metadata: None,
            recoverable: false,
        };
        self.create(&ctx, new).await
    }

    /// Creates a key and returns its token once.
    pub async fn create(&self, ctx: &RequestContext, new: NewKey) -> Result<IssuedKey> {
        let org = ctx.authorize(Scope::KeysWrite, &new.org_id)?;
        let now = store::now();
        let mut violations = Violations::default();
        violations.text("name", &new.name, 200, true);
        violations.text("description", &new.description, 2000, false);
        violations.scopes("scopes", &new.scopes);
        let expires_at = match new.expiry {
            None => None,
            Some(Expiry::Ttl(ttl)) if !(MIN_TTL..=MAX_TTL).contains(&ttl) => {
                violations.add("ttl", "must be between 1 minute and 10 years");
                None
            }
            Some(Expiry::Ttl(ttl)) => Some(now + ttl),
            Some(Expiry::At(at)) => violations.absorb(check_expiry("expires_at", at, now))?,
        };
        if let Some(limit) = &new.rate_limit {
            check_rate_limit(&mut violations, "rate_limit", limit);
        }
        if let Some(metadata) = &new.metadata {
            violations.metadata("metadata", metadata);
        }
        violations.finish()?;
        ctx.check_grantable("scopes", &new.scopes)?;

        let attributes = Attributes {
            name: new.name,
            description: new.description,
            environment: new.environment,
            scopes: new.scopes,
            expires_at,
            rate_limit: new.rate_limit,
            metadata: new.metadata,
            recoverable: new.recoverable,
        };
        let (row, token) = self.issue(ctx, attributes, None).await?;
        let tx = OrgTx::begin(&self.core.db, &org).await?;
        let key = api_keys::insert(&tx, row).await?;
        audit::append(&tx, ctx.audit("api_key.created", "api_key", &key.id, describe(&key))).await?;
        publish_own(&tx, "api_key.created", event_data(&key)).await?;
        self.commit(tx).await?;
        Ok(IssuedKey { key, token })
    }

    /// Commits a transaction that appended key events or published events,
    /// and wakes the key-event feed and the webhook dispatcher.
    async fn commit(&self, tx: OrgTx) -> Result<()> {
        commit_with_deliveries(&self.core, tx).await?;
        self.core.key_events_committed.notify_one();
        Ok(())
    }

    /// Generates a token, hashes its secret and seals it if recoverable.
    async fn issue(
        &self,
        ctx: &RequestContext,
        attributes: Attributes,
        rotated_from: Option<String>,
    ) -> Result<(api_keys::ActiveModel, String)> {
        let generated = self.core.tokens.generate(attributes.environment);
        let secret_hash = self.core.hasher.hash(generated.secret().to_owned()).await?;
        let sealed_token = if attributes.recoverable {
            Some(self.core.master_keys.seal(generated.token.as_bytes(), &generated.key_id)?)
        } else {
            None
        };
        let now = store::now();
        let (rate_limit_requests, rate_limit_window_ms) = stored_rate_limit(attributes.rate_limit);
        let row = api_keys::ActiveModel {
            id: Set(generated.key_id.clone()),
            org_id: Set(String::new()),
            name: Set(attributes.name),
            description: Set(attributes.description),
            environment: Set(attributes.environment.as_str().to_owned()),
            scopes: Set(json!(attributes.scopes)),
            status: Set(api_keys::ACTIVE.to_owned()),
            secret_hash: Set(secret_hash),
            start: Set(generated.start.clone()),
            expires_at: Set(attributes.expires_at),
            rate_limit_requests: Set(rate_limit_requests),
            rate_limit_window_ms: Set(rate_limit_window_ms),
            metadata: Set(attributes.metadata),
            sealed_token: Set(sealed_token),
            created_by: Set(ctx.actor_label().1),
            created_at: Set(now),
            updated_at: Set(now),
            revoked_at: Set(None),
            revoked_by: Set(None),
            revocation_reason: Set(None),
            rotated_from: Set(rotated_from),
            last_used_at: Set(None),
            usage_count: Set(0),
        };
        Ok((row, generated.token))
    }

    /// One key of the caller's org.
    pub async fn get(&self, ctx: &RequestContext, org_id: &str, id: &str) -> Result<api_keys::Model> {
        let org = ctx.authorize(Scope::KeysRead, org_id)?;
        api_keys::find(&self.core.db, &org, id).await?.ok_or(Error::NotFound("api key"))
    }

    /// A page of keys in id order.
    pub async fn list(
        &self,
        ctx: &RequestContext,
        query: ListQuery<api_keys::ListFilter>,
    ) -> Result<Page<api_keys::Model>> {
        let org = ctx.authorize(Scope::KeysRead, &query.org_id)?;
        let cursor = LISTING.start(&query.page)?;
        let rows =
            api_keys::list(&self.core.db, &org, &query.filter, cursor.position.as_deref(), cursor.fetch()).await?;
        Ok(cursor.page(rows, |k| k.id.clone()))
    }

    /// Changes the named fields of a key.
    pub async fn update(
        &self,
        ctx: &RequestContext,
        org_id: &str,
        id: &str,
        changes: KeyChanges,
    ) -> Result<api_keys::Model> {
        let org = ctx.authorize(Scope::KeysWrite, org_id)?;
        let now = store::now();
        let mut violations = Violations::default();
        let mut changed = Vec::new();
        if let Some(name) = &changes.name {
            violations.text("update.name", name, 200, true);
            changed.push("name");
        }
        if let Some(description) = &changes.description {
            violations.text("update.description", description, 2000, false);
            changed.push("description");
        }
        if let Some(scopes) = &changes.scopes {
            violations.scopes("update.scopes", scopes);
            changed.push("scopes");
        }
        if let Some(Some(at)) = changes.expires_at {
            violations.absorb(check_expiry("update.expires_at", at, now))?;
        }
        if changes.expires_at.is_some() {
            changed.push("expires_at");
        }
        if let Some(Some(limit)) = &changes.rate_limit {
            check_rate_limit(&mut violations, "update.rate_limit", limit);
        }
        if changes.rate_limit.is_some() {
            changed.push("rate_limit");
        }
        if let Some(Some(metadata)) = &changes.metadata {
            violations.metadata("update.metadata", metadata);
        }
        if changes.metadata.is_some() {
            changed.push("metadata");
        }
        if changed.is_empty() {
            violations.add(
                "update_mask",
                "name at least one field: name, description, scopes, expires_at, rate_limit, metadata",
            );
        }
        violations.finish()?;
        if let Some(scopes) = &changes.scopes {
            ctx.check_grantable("update.scopes", scopes)?;
        }

        let tx = OrgTx::begin(&self.core.db, &org).await?;
        let key = api_keys::find(tx.conn(), tx.org(), id).await?.ok_or(Error::NotFound("api key"))?;
        let mut row = key.into_active_model();
        if let Some(name) = changes.name {
            row.name = Set(name);
        }
        if let Some(description) = changes.description {
            row.description = Set(description);
        }
        if let Some(scopes) = changes.scopes {
            row.scopes = Set(json!(scopes));
        }
        if let Some(expires_at) = changes.expires_at {
            row.expires_at = Set(expires_at);
        }
        if let Some(limit) = changes.rate_limit {
            let (requests, window_ms) = stored_rate_limit(limit);
            row.rate_limit_requests = Set(requests);
            row.rate_limit_window_ms = Set(window_ms);
        }
        if let Some(metadata) = changes.metadata {
            row.metadata = Set(metadata);
        }
        row.updated_at = Set(now);
        let key = api_keys::update(&tx, row).await?;
        key_events::append(&tx, &key.id, KeyEventKind::Updated).await?;
        audit::append(&tx, ctx.audit("api_key.updated", "api_key", &key.id, json!({ "fields": changed }))).await?;
        self.commit(tx).await?;
        Ok(key)
    }

    /// Revokes a key for good.
    pub async fn revoke(&self, ctx: &RequestContext, org_id: &str, id: &str, reason: &str) -> Result<api_keys::Model> {
        let org = ctx.authorize(Scope::KeysWrite, org_id)?;
        let mut violations = Violations::default();
        violations.text("reason", reason, 500, false);
        violations.finish()?;
        let tx = OrgTx::begin(&self.core.db, &org).await?;
        let key = api_keys::find(tx.conn(), tx.org(), id).await?.ok_or(Error::NotFound("api key"))?;
        if key.status == api_keys::REVOKED {
            return Err(Error::FailedPrecondition("the key is already revoked".into()));
        }
        let key = revoke_in(&tx, ctx, key, reason).await?;
        audit::append(&tx, ctx.audit("api_key.revoked", "api_key", &key.id, json!({ "reason": reason }))).await?;
        publish_own(&tx, "api_key.revoked", event_data(&key)).await?;
        self.commit(tx).await?;
        Ok(key)
    }

    /// Deletes a key.
    pub async fn delete(&self, ctx: &RequestContext, org_id: &str, id: &str) -> Result<()> {
        let org = ctx.authorize(Scope::KeysWrite, org_id)?;
        let tx = OrgTx::begin(&self.core.db, &org).await?;
        if !api_keys::delete(&tx, id).await? {
            return Err(Error::NotFound("api key"));
        }
        key_events::append(&tx, id, KeyEventKind::Deleted).await?;
        audit::append(&tx, ctx.audit("api_key.deleted", "api_key", id, json!({}))).await?;
        publish_own(&tx, "api_key.deleted", json!({ "key_id": id })).await?;
        self.commit(tx).await
    }

    /// Issues a replacement key; the old one works for `grace` more (24h by
    /// default; zero revokes it now).
    pub async fn rotate(
        &self,
        ctx: &RequestContext,
        org_id: &str,
        id: &str,
        grace: Option<Duration>,
    ) -> Result<Rotation> {
        let org = ctx.authorize(Scope::KeysWrite, org_id)?;
        let grace = grace.unwrap_or(DEFAULT_ROTATION_GRACE);
        if grace > MAX_ROTATION_GRACE {
            return Err(Error::invalid("grace_period", "must be at most 30 days"));
        }
        let old = api_keys::find(&self.core.db, &org, id).await?.ok_or(Error::NotFound("api key"))?;
        let attributes = Attributes {
            name: old.name.clone(),
            description: old.description.clone(),
            environment: old.environment(),
            scopes: old.scope_list(),
            expires_at: old.expires_at,
            rate_limit: rate_limit_of(&old),
            metadata: old.metadata.clone(),
            recoverable: old.sealed_token.is_some(),
        };
        let (row, token) = self.issue(ctx, attributes, Some(old.id.clone())).await?;

        let tx = OrgTx::begin(&self.core.db, &org).await?;
        // Re-read inside the transaction: the key may have changed meanwhile.
        let old = api_keys::find(tx.conn(), tx.org(), id).await?.ok_or(Error::NotFound("api key"))?;
        let now = store::now();
        if old.status != api_keys::ACTIVE || old.is_expired(now) {
            return Err(Error::FailedPrecondition("only an active, unexpired key can be rotated".into()));
        }
        let new_key = api_keys::insert(&tx, row).await?;
        let previous = if grace.is_zero() {
            revoke_in(&tx, ctx, old, "rotated").await?
        } else {
            let grace_end = now + grace;
            let mut row = old.clone().into_active_model();
            row.expires_at = Set(Some(old.expires_at.map_or(grace_end, |at| at.min(grace_end))));
            row.updated_at = Set(now);
            let previous = api_keys::update(&tx, row).await?;
            key_events::append(&tx, &previous.id, KeyEventKind::Updated).await?;
            previous
        };
        audit::append(
            &tx,
            ctx.audit(
                "api_key.rotated",
                "api_key",
                &previous.id,
                json!({ "new_key_id": new_key.id, "grace_seconds": grace.as_secs() }),
            ),
        )
        .await?;
        let mut data = event_data(&previous);
        data["new_key_id"] = json!(new_key.id);
        data["grace_seconds"] = json!(grace.as_secs());
        publish_own(&tx, "api_key.rotated", data).await?;
        self.commit(tx).await?;
        Ok(Rotation { issued: IssuedKey { key: new_key, token }, previous })
    }

    /// Returns the token of a recoverable key (audited).
    pub async fn reveal(&self, ctx: &RequestContext, org_id: &str, id: &str) -> Result<String> {
        let org = ctx.authorize(Scope::KeysReveal, org_id)?;
        let tx = OrgTx::begin(&self.core.db, &org).await?;
        let key = api_keys::find(tx.conn(), tx.org(), id).await?.ok_or(Error::NotFound("api key"))?;
        let sealed = key
            .sealed_token
            .as_deref()
            .ok_or_else(|| Error::FailedPrecondition("the key was not created recoverable".into()))?;
        let token = String::from_utf8(self.core.master_keys.open(sealed, &key.id)?)
            .map_err(|_| Error::Sealing("sealed token is not text".into()))?;
        audit::append(&tx, ctx.audit("api_key.revealed", "api_key", &key.id, json!({}))).await?;
        tx.commit().await?;
        Ok(token)
    }

    /// Verifies a token for a caller, with optional environment and scopes.
    pub async fn verify(
        &self,
        ctx: &RequestContext,
        token: &str,
        environment: Option<Environment>,
        required_scopes: &[String],
    ) -> Result<Verification> {
        let scope = ctx.verification_scope()?;
        let mut violations = Violations::default();
        violations.scopes("required_scopes", required_scopes);
        violations.finish()?;
        let verification = self.verifier.verify(scope, token, Purpose::Check).await?;
        Ok(verify::check_requirements(verification, environment, required_scopes))
    }
}

/// Marks `key` revoked and logs the key event, inside `tx`.
async fn revoke_in(tx: &OrgTx, ctx: &RequestContext, key: api_keys::Model, reason: &str) -> Result<api_keys::Model> {
    let now = store::now();
    let mut row = key.into_active_model();
    row.status = Set(api_keys::REVOKED.to_owned());
    row.revoked_at = Set(Some(now));
    row.revoked_by = Set(Some(ctx.actor_label().1));
    row.revocation_reason = Set(Some(reason.to_owned()));
    row.updated_at = Set(now);
    let key = api_keys::update(tx, row).await?;
    key_events::append(tx, &key.id, KeyEventKind::Revoked).await?;
    Ok(key)
}

fn check_expiry(field: &str, at: DateTime<Utc>, now: DateTime<Utc>) -> Result<DateTime<Utc>> {
    if at <= now {
        Err(Error::invalid(field, "must be in the future"))
    } else if at > now + MAX_TTL {
        Err(Error::invalid(field, "must be within 10 years"))
    } else {
        Ok(at)
    }
}

fn check_rate_limit(violations: &mut Violations, field: &str, limit: &RateLimit) {
    if limit.requests == 0 {
        violations.add(format!("{field}.requests"), "must be at least 1");
    } else if i32::try_from(limit.requests).is_err() {
        violations.add(format!("{field}.requests"), format!("must be at most {}", i32::MAX));
    }
    if !(Duration::from_secs(1)..=Duration::from_secs(86_400)).contains(&limit.window) {
        violations.add(format!("{field}.window"), "must be between 1 second and 1 day");
    }
}

fn stored_rate_limit(limit: Option<RateLimit>) -> (Option<i32>, Option<i64>) {
    match limit {
        Some(limit) => (i32::try_from(limit.requests).ok(), i64::try_from(limit.window.as_millis()).ok()),
        None => (None, None),
    }
}

/// The key's rate limit, if it has one.
pub fn rate_limit_of(key: &api_keys::Model) -> Option<RateLimit> {
    match (key.rate_limit_requests, key.rate_limit_window_ms) {
        (Some(requests), Some(window_ms)) => Some(RateLimit {
            requests: u32::try_from(requests).ok()?,
            window: Duration::from_millis(u64::try_from(window_ms).ok()?),
        }),
        _ => None,
    }
}

/// Data of Keyplane's own `api_key.*` events: the key's public attributes.
fn event_data(key: &api_keys::Model) -> Value {
    json!({
        "key_id": key.id,
        "name": key.name,
        "environment": key.environment,
        "status": key.status,
        "start": key.start,
        "expires_at": key.expires_at,
    })
}

/// Audit metadata of a new key: its attributes, never its secret.
fn describe(key: &api_keys::Model) -> Value {
    json!({
        "name": key.name,
        "environment": key.environment,
        "scopes": key.scopes,
        "expires_at": key.expires_at,
        "recoverable": key.sealed_token.is_some(),
        "rotated_from": key.rotated_from,
    })
}
