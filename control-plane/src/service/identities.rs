//! Identities (docs/api.md "Identities"): the platform's own customers or users
//! inside an org. A key may belong to one; the identity's credits, rate
//! limit and allow-list then apply to every check of each of its keys, on
//! top of the key's own. A change appends a key event naming the identity,
//! so sidecars stop trusting what they cached for its keys at once.

use sea_orm::DatabaseConnection;
use serde_json::json;

use super::api_keys::{revoke_in, rules};
use super::auth::RequestContext;
use super::paging::{ListQuery, Listing, Page};
use super::validate::Violations;
use crate::error::{Error, Result};
use crate::service::authz::{Action, Target};
use crate::store::audit::AuditAction;
use crate::store::identities::{self, IdentityChanges, IdentityFilter, NewIdentity};
use crate::store::key_events::{self, KeyEventKind};
use crate::store::orgs;
use crate::store::{ChangeTx, OrgTx, api_keys, audit};
use crate::wakeups::Wakeups;

const LISTING: Listing = Listing::named("identities");
/// Longest external id.
pub const MAX_EXTERNAL_ID_CHARS: usize = 200;
/// The revocation reason of keys revoked with their identity.
const REVOKED_WITH_IDENTITY: &str = "identity deleted";

/// How to find one identity.
#[derive(Clone, Copy, Debug)]
pub enum IdentityRef<'a> {
    Id(&'a str),
    ExternalId(&'a str),
}

/// The identity service.
pub struct IdentityService {
    db: DatabaseConnection,
    wakeups: Wakeups,
}

impl IdentityService {
    pub fn new(db: DatabaseConnection, wakeups: Wakeups) -> Self {
        Self { db, wakeups }
    }

    /// Creates an identity (audited).
    pub async fn create(&self, ctx: &RequestContext, org_id: &str, mut new: NewIdentity) -> Result<identities::Model> {
        let org = ctx.authorize(Action::WriteIdentities, Target::Org(org_id))?;
        let mut violations = Violations::default();
        violations.required_text("external_id", &new.external_id, MAX_EXTERNAL_ID_CHARS);
        if let Some(metadata) = &new.metadata {
            violations.metadata("metadata", metadata);
        }
        rules::check_new_limits(&mut violations, &mut new.limits);
        violations.finish()?;
        let tx = OrgTx::begin(&self.db, &org).await?;
        refuse_taken_external_id(&tx, "external_id", &new.external_id).await?;
        let identity = identities::insert(&tx, new).await?;
        orgs::register(&tx).await?;
        audit::append(&tx, ctx.audit(AuditAction::IdentityCreated, &identity.id, audit_details(&identity))).await?;
        tx.commit().await?;
        Ok(identity)
    }

    /// One identity of the caller's org.
    pub async fn get(&self, ctx: &RequestContext, org_id: &str, which: IdentityRef<'_>) -> Result<identities::Model> {
        let org = ctx.authorize(Action::ReadIdentities, Target::Org(org_id))?;
        let found = match which {
            IdentityRef::Id("") | IdentityRef::ExternalId("") => {
                return Err(Error::invalid("id", "give an id or an external_id"));
            }
            IdentityRef::Id(id) => identities::find(&self.db, &org, id).await?,
            IdentityRef::ExternalId(external_id) => {
                identities::find_by_external_id(&self.db, &org, external_id).await?
            }
        };
        found.ok_or(Error::NotFound("identity"))
    }

    /// A page of identities in id order.
    pub async fn list(
        &self,
        ctx: &RequestContext,
        query: ListQuery<IdentityFilter>,
    ) -> Result<Page<identities::Model>> {
        let org = ctx.authorize(Action::ReadIdentities, Target::Org(&query.org_id))?;
        let cursor = LISTING.start(&query.page)?;
        let rows = identities::list(&self.db, &org, &query.filter, cursor.position.as_deref(), cursor.fetch()).await?;
        Ok(cursor.page(rows, |identity| identity.id.clone()))
    }

    /// Changes the named fields (audited); sidecars re-verify its keys.
    pub async fn update(
        &self,
        ctx: &RequestContext,
        org_id: &str,
        id: &str,
        mut changes: IdentityChanges,
    ) -> Result<identities::Model> {
        let org = ctx.authorize(Action::WriteIdentities, Target::Org(org_id))?;
        let mut violations = Violations::default();
        let mut changed = Vec::new();
        if let Some(external_id) = &changes.external_id {
            violations.required_text("update.external_id", external_id, MAX_EXTERNAL_ID_CHARS);
            changed.push("external_id");
        }
        if let Some(metadata) = &changes.metadata {
            if let Some(metadata) = metadata {
                violations.metadata("update.metadata", metadata);
            }
            changed.push("metadata");
        }
        rules::check_limit_changes(&mut violations, &mut changes.limits, &mut changed);
        if changed.is_empty() {
            violations
                .add("update_mask", format!("name at least one field: external_id, metadata, {}", rules::LIMIT_PATHS));
        }
        violations.finish()?;

        let tx = ChangeTx::begin(&self.db, &org).await?;
        let identity = identities::find(tx.conn(), tx.org(), id).await?.ok_or(Error::NotFound("identity"))?;
        // Loosening the shared limits widens every key of the identity: the
        // caller must hold whatever those keys hold.
        let scopes: Vec<String> =
            api_keys::active_of_identity(&tx, &identity.id).await?.iter().flat_map(|key| key.scope_list()).collect();
        ctx.authorize(Action::WriteIdentities, Target::Key { org: &org, scopes: &scopes })?;
        if let Some(external_id) = changes.external_id.as_deref().filter(|new| *new != identity.external_id) {
            refuse_taken_external_id(&tx, "update.external_id", external_id).await?;
        }
        let credits_change = changes.limits.credits.map(|change| format!("{change:?}").to_lowercase());
        let identity = identities::update(&tx, identity, changes).await?;
        key_events::append(&tx, &identity.id, KeyEventKind::Updated).await?;
        let details = json!({
            "fields": changed,
            "credits_change": credits_change,
            "credits": identity.credits_remaining,
        });
        audit::append(&tx, ctx.audit(AuditAction::IdentityUpdated, &identity.id, details)).await?;
        tx.commit(&self.wakeups).await?;
        Ok(identity)
    }

    /// Deletes an identity: refused while it has active keys unless
    /// `revoke_keys`, which revokes them in the same transaction. Its ended
    /// keys are detached. Returns the ids of the keys revoked.
    pub async fn delete(&self, ctx: &RequestContext, org_id: &str, id: &str, revoke_keys: bool) -> Result<Vec<String>> {
        let org = ctx.authorize(Action::WriteIdentities, Target::Org(org_id))?;
        let tx = ChangeTx::begin(&self.db, &org).await?;
        let identity = identities::find(tx.conn(), tx.org(), id).await?.ok_or(Error::NotFound("identity"))?;
        let active = api_keys::active_of_identity(&tx, &identity.id).await?;
        if !active.is_empty() && !revoke_keys {
            return Err(Error::FailedPrecondition(format!(
                "the identity has {} active keys: revoke them first, or delete with revoke_keys",
                active.len()
            )));
        }
        let mut revoked = Vec::with_capacity(active.len());
        for key in active {
            revoked.push(revoke_in(&tx, ctx, key, REVOKED_WITH_IDENTITY).await?.id);
        }
        api_keys::detach_identity(&tx, &identity.id).await?;
        identities::delete(&tx, &identity.id).await?;
        key_events::append(&tx, &identity.id, KeyEventKind::Updated).await?;
        let details = json!({ "external_id": identity.external_id, "revoked_key_ids": revoked });
        audit::append(&tx, ctx.audit(AuditAction::IdentityDeleted, &identity.id, details)).await?;
        tx.commit(&self.wakeups).await?;
        Ok(revoked)
    }
}

/// ALREADY_EXISTS when another identity of the org has this external id.
async fn refuse_taken_external_id(tx: &OrgTx, field: &str, external_id: &str) -> Result<()> {
    match identities::find_by_external_id(tx.conn(), tx.org(), external_id).await? {
        Some(_) => Err(Error::AlreadyExists(format!("{field}: an identity with this external id exists"))),
        None => Ok(()),
    }
}

/// Audit metadata of a new identity.
fn audit_details(identity: &identities::Model) -> serde_json::Value {
    rules::with_limits(identity, json!({ "external_id": identity.external_id }))
}
