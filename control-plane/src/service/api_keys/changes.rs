//! Changing an issued key: its attributes, revocation and deletion. Each
//! appends a key event so sidecars drop what they cached.

use serde_json::json;

use super::rules;
use super::{KeyChanges, KeyService};
use crate::error::{Error, Result};
use crate::service::auth::RequestContext;
use crate::service::authz::{Action, Target};
use crate::service::validate::Violations;
use crate::service::webhooks::outbox;
use crate::service::webhooks::system_events::{KeyDeleted, SystemEvent};
use crate::store::api_keys::{self, KeyStatus};
use crate::store::audit::AuditAction;
use crate::store::key_events::{self, KeyEventKind};
use crate::store::{self, ChangeTx, audit};

/// Longest revocation reason.
const MAX_REASON_CHARS: usize = 500;

impl KeyService {
    /// Changes the named fields of a key.
    pub async fn update(
        &self,
        ctx: &RequestContext,
        org_id: &str,
        id: &str,
        mut changes: KeyChanges,
    ) -> Result<api_keys::Model> {
        let org = ctx.authorize(Action::UpdateKey, Target::Org(org_id))?;
        let now = store::now();
        let mut violations = Violations::default();
        let mut changed = Vec::new();
        if let Some(name) = &changes.name {
            violations.required_text("update.name", name, rules::MAX_NAME_CHARS);
            changed.push("name");
        }
        if let Some(description) = &changes.description {
            violations.optional_text("update.description", description, rules::MAX_DESCRIPTION_CHARS);
            changed.push("description");
        }
        if let Some(scopes) = &changes.scopes {
            violations.scopes("update.scopes", scopes);
            changed.push("scopes");
        }
        if let Some(Some(at)) = changes.expires_at {
            violations.absorb(rules::check_expiry("update.expires_at", at, now))?;
        }
        if changes.expires_at.is_some() {
            changed.push("expires_at");
        }
        if let Some(Some(metadata)) = &changes.metadata {
            violations.metadata("update.metadata", metadata);
        }
        if changes.metadata.is_some() {
            changed.push("metadata");
        }
        rules::check_limit_changes(&mut violations, &mut changes.limits, &mut changed);
        if let Some(identity) = &mut changes.identity_id {
            identity.take_if(|id| id.is_empty());
            changed.push("identity_id");
        }
        if changed.is_empty() {
            violations.add(
                "update_mask",
                format!(
                    "name at least one field: name, description, scopes, expires_at, metadata, identity_id, {}",
                    rules::LIMIT_PATHS
                ),
            );
        }
        violations.finish()?;

        let tx = ChangeTx::begin(&self.db, &org).await?;
        let key = api_keys::find(tx.conn(), tx.org(), id).await?.ok_or(Error::NotFound("api key"))?;
        // Any change can widen a key (scopes, expiry, limits, allow-list,
        // identity): the caller must hold every power the key ends with.
        let scopes = changes.scopes.clone().unwrap_or_else(|| key.scope_list());
        ctx.authorize(Action::UpdateKey, Target::Key { org: &org, scopes: &scopes })?;
        let moves_expiry = changes.expires_at.is_some_and(|at| at != key.expires_at);
        if moves_expiry && (key.status == KeyStatus::Expired || key.is_expired(now)) {
            return Err(Error::FailedPrecondition("the key has expired for good; create a new one".into()));
        }
        if let Some(Some(identity)) = &changes.identity_id {
            rules::require_identity(&tx, "update.identity_id", identity).await?;
        }
        let changes_summary = changes.limits.credits.map(|change| format!("{change:?}").to_lowercase());
        let key = api_keys::update(&tx, key, changes).await?;
        key_events::append(&tx, &key.id, KeyEventKind::Updated).await?;
        let details = json!({
            "fields": changed,
            "credits_change": changes_summary,
            "credits": key.credits_remaining,
            "identity_id": key.identity_id,
        });
        audit::append(&tx, ctx.audit(AuditAction::ApiKeyUpdated, &key.id, details)).await?;
        tx.commit(&self.wakeups).await?;
        Ok(key)
    }

    /// Revokes a key for good.
    pub async fn revoke(&self, ctx: &RequestContext, org_id: &str, id: &str, reason: &str) -> Result<api_keys::Model> {
        let org = ctx.authorize(Action::RevokeKey, Target::Org(org_id))?;
        let mut violations = Violations::default();
        violations.optional_text("reason", reason, MAX_REASON_CHARS);
        violations.finish()?;
        let tx = ChangeTx::begin(&self.db, &org).await?;
        let key = api_keys::find(tx.conn(), tx.org(), id).await?.ok_or(Error::NotFound("api key"))?;
        if key.status == KeyStatus::Revoked {
            return Err(Error::FailedPrecondition("the key is already revoked".into()));
        }
        let key = revoke_in(&tx, ctx, key, reason).await?;
        tx.commit(&self.wakeups).await?;
        Ok(key)
    }

    /// Deletes a key.
    pub async fn delete(&self, ctx: &RequestContext, org_id: &str, id: &str) -> Result<()> {
        let org = ctx.authorize(Action::DeleteKey, Target::Org(org_id))?;
        let tx = ChangeTx::begin(&self.db, &org).await?;
        if !api_keys::delete(&tx, id).await? {
            return Err(Error::NotFound("api key"));
        }
        key_events::append(&tx, id, KeyEventKind::Deleted).await?;
        audit::append(&tx, ctx.audit(AuditAction::ApiKeyDeleted, id, json!({}))).await?;
        let deleted = KeyDeleted { key_id: id.to_owned(), reason: None };
        outbox::publish_system_event(&tx, SystemEvent::ApiKeyDeleted(deleted)).await?;
        tx.commit(&self.wakeups).await
    }
}

/// Revokes `key`, loaded in the transaction's org: with its key event,
/// audit row and `api_key.revoked` event.
pub(crate) async fn revoke_in(
    tx: &ChangeTx,
    ctx: &RequestContext,
    key: api_keys::Model,
    reason: &str,
) -> Result<api_keys::Model> {
    let key = api_keys::revoke(tx, key, ctx.actor_label().1, reason).await?;
    key_events::append(tx, &key.id, KeyEventKind::Revoked).await?;
    audit::append(tx, ctx.audit(AuditAction::ApiKeyRevoked, &key.id, json!({ "reason": reason }))).await?;
    outbox::publish_system_event(tx, SystemEvent::ApiKeyRevoked((&key).into())).await?;
    Ok(key)
}
