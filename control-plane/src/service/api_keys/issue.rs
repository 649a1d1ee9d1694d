//! Issuing keys: creation (including the operator's bootstrap key) and
//! rotation, the two places a token is generated and shown once.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use super::rules::{self, DEFAULT_ROTATION_GRACE, MAX_ROTATION_GRACE, MAX_TTL, MIN_TTL};
use super::{Expiry, IssuedKey, KeyService, NewKey, Rotation};
use crate::crypto::Environment;
use crate::error::{Error, Result};
use crate::service::auth::RequestContext;
use crate::service::authz::{Action, PLATFORM_ORG, Scope, Target};
use crate::service::validate::Violations;
use crate::service::webhooks::outbox;
use crate::service::webhooks::system_events::{KeyRotated, SystemEvent};
use crate::store::api_keys::{self, KeyChanges, KeyStatus, LimitChanges, NewKeyRow, NewLimits};
use crate::store::audit::AuditAction;
use crate::store::credits::CreditsChange;
use crate::store::key_events::{self, KeyEventKind};
use crate::store::limits::HasLimits;
use crate::store::orgs;
use crate::store::{self, ChangeTx, audit, roles};

/// What a key is issued with, at creation or copied by a rotation.
struct Attributes {
    name: String,
    description: String,
    environment: Environment,
    scopes: Vec<String>,
    expires_at: Option<DateTime<Utc>>,
    limits: NewLimits,
    metadata: Option<Value>,
    recoverable: bool,
    identity_id: Option<String>,
}

impl KeyService {
    /// Creates a platform admin key for the operator's bootstrap command.
    pub async fn create_admin_key(&self, name: &str) -> Result<IssuedKey> {
        let new = NewKey {
            org_id: PLATFORM_ORG.to_owned(),
            name: name.to_owned(),
            description: "created by `keyplane create-admin-key`".into(),
            environment: Environment::Live,
            scopes: vec![Scope::Admin.as_str().to_owned()],
            expiry: None,
            limits: NewLimits::default(),
            metadata: None,
            recoverable: false,
            identity_id: None,
        };
        self.create(&RequestContext::operator(), new).await
    }

    /// Creates a key and returns its token once.
    pub async fn create(&self, ctx: &RequestContext, mut new: NewKey) -> Result<IssuedKey> {
        let org = ctx.authorize(Action::CreateKey, Target::Org(&new.org_id))?;
        let now = store::now();
        let mut violations = Violations::default();
        violations.required_text("name", &new.name, rules::MAX_NAME_CHARS);
        violations.optional_text("description", &new.description, rules::MAX_DESCRIPTION_CHARS);
        violations.scopes("scopes", &new.scopes);
        let expires_at = match new.expiry {
            None => None,
            Some(Expiry::Ttl(ttl)) if !(MIN_TTL..=MAX_TTL).contains(&ttl) => {
                violations.add("ttl", "must be between 1 minute and 10 years");
                None
            }
            Some(Expiry::Ttl(ttl)) => Some(now + ttl),
            Some(Expiry::At(at)) => violations.absorb(rules::check_expiry("expires_at", at, now))?,
        };
        rules::check_new_limits(&mut violations, &mut new.limits);
        if let Some(metadata) = &new.metadata {
            violations.metadata("metadata", metadata);
        }
        violations.finish()?;
        ctx.authorize(Action::CreateKey, Target::Key { org: &org, scopes: &new.scopes })?;

        let attributes = Attributes {
            name: new.name,
            description: new.description,
            environment: new.environment,
            scopes: new.scopes,
            expires_at,
            limits: new.limits,
            metadata: new.metadata,
            recoverable: new.recoverable,
            identity_id: new.identity_id.filter(|id| !id.is_empty()),
        };
        let (row, token) = self.generate(ctx, attributes, None).await?;
        let tx = ChangeTx::begin(&self.db, &org).await?;
        if let Some(identity) = &row.identity_id {
            rules::require_identity(&tx, "identity_id", identity).await?;
        }
        let key = api_keys::insert(&tx, row).await?;
        orgs::register(&tx).await?;
        audit::append(&tx, ctx.audit(AuditAction::ApiKeyCreated, &key.id, rules::audit_details(&key))).await?;
        outbox::publish_system_event(&tx, SystemEvent::ApiKeyCreated((&key).into())).await?;
        tx.commit(&self.wakeups).await?;
        Ok(IssuedKey { key, token })
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
        let org = ctx.authorize(Action::RotateKey, Target::Org(org_id))?;
        let grace = grace.unwrap_or(DEFAULT_ROTATION_GRACE);
        if grace > MAX_ROTATION_GRACE {
            return Err(Error::invalid("grace_period", "must be at most 30 days"));
        }
        let old = api_keys::find(&self.db, &org, id).await?.ok_or(Error::NotFound("api key"))?;
        ctx.authorize(Action::RotateKey, Target::Key { org: &org, scopes: &old.scope_list() })?;
        let attributes = Attributes {
            name: old.name.clone(),
            description: old.description.clone(),
            environment: old.environment,
            scopes: old.scope_list(),
            expires_at: old.expires_at,
            // Credits are set inside the transaction below, from the key as it is then.
            limits: NewLimits { credits: None, ..old.limits().into() },
            metadata: old.metadata.clone(),
            recoverable: old.sealed_token.is_some(),
            identity_id: old.identity_id.clone(),
        };
        let (row, token) = self.generate(ctx, attributes, Some(old.id.clone())).await?;

        let tx = ChangeTx::begin(&self.db, &org).await?;
        // Re-read inside the transaction: the key may have changed meanwhile.
        let old = api_keys::find(tx.conn(), tx.org(), id).await?.ok_or(Error::NotFound("api key"))?;
        // The scopes may have widened since the read above: the copy must not.
        if old.scope_list() != row.scopes {
            return Err(Error::FailedPrecondition("the key's scopes changed during the rotation; rotate again".into()));
        }
        let now = store::now();
        if old.status != KeyStatus::Active || old.is_expired(now) {
            return Err(Error::FailedPrecondition("only an active, unexpired key can be rotated".into()));
        }
        // Credits move to the new key: two keys must not spend one budget twice.
        let mut row = row;
        let credits = old.credits();
        row.limits.credits = credits.map(|credits| (credits.remaining, credits.refill));
        let old = match credits {
            Some(_) => {
                let limits = LimitChanges { credits: Some(CreditsChange::Set(0)), ..Default::default() };
                let drained = KeyChanges { limits, ..Default::default() };
                api_keys::update(&tx, old, drained).await?
            }
            None => old,
        };
        let new_key = api_keys::insert(&tx, row).await?;
        // The new key holds the roles the old one does.
        if old.holds_roles {
            roles::copy_grants::<api_keys::Entity>(&tx, &old.id, &new_key.id).await?;
        }
        let previous = if grace.is_zero() {
            let revoked = api_keys::revoke(&tx, old, ctx.actor_label().1, "rotated").await?;
            key_events::append(&tx, &revoked.id, KeyEventKind::Revoked).await?;
            revoked
        } else {
            let grace_end = now + grace;
            let expires_at = Some(old.expires_at.map_or(grace_end, |at| at.min(grace_end)));
            let shortened =
                api_keys::update(&tx, old, KeyChanges { expires_at: Some(expires_at), ..Default::default() });
            let shortened = shortened.await?;
            key_events::append(&tx, &shortened.id, KeyEventKind::Updated).await?;
            shortened
        };
        audit::append(
            &tx,
            ctx.audit(
                AuditAction::ApiKeyRotated,
                &previous.id,
                json!({ "new_key_id": new_key.id, "grace_seconds": grace.as_secs() }),
            ),
        )
        .await?;
        let rotated =
            KeyRotated { key: (&previous).into(), new_key_id: new_key.id.clone(), grace_seconds: grace.as_secs() };
        outbox::publish_system_event(&tx, SystemEvent::ApiKeyRotated(rotated)).await?;
        tx.commit(&self.wakeups).await?;
        Ok(Rotation { issued: IssuedKey { key: new_key, token }, previous })
    }

    /// Generates a token, hashes its secret and seals it if recoverable:
    /// the row to store and the token to show once.
    async fn generate(
        &self,
        ctx: &RequestContext,
        attributes: Attributes,
        rotated_from: Option<String>,
    ) -> Result<(NewKeyRow, String)> {
        let generated = self.crypto.tokens.generate(attributes.environment);
        let secret_hash = self.crypto.hasher.hash(generated.secret().to_owned()).await?;
        let sealed_token = if attributes.recoverable {
            Some(self.crypto.master_keys.seal(generated.token.as_bytes(), &generated.key_id)?)
        } else {
            None
        };
        let row = NewKeyRow {
            id: generated.key_id.clone(),
            name: attributes.name,
            description: attributes.description,
            environment: attributes.environment,
            scopes: attributes.scopes,
            secret_hash,
            start: generated.start.clone(),
            expires_at: attributes.expires_at,
            metadata: attributes.metadata,
            sealed_token,
            limits: attributes.limits,
            created_by: ctx.actor_label().1,
            rotated_from,
            identity_id: attributes.identity_id,
        };
        Ok((row, generated.token))
    }
}
