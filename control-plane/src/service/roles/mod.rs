//! Roles and permissions (docs/api.md "Roles and permissions"): roles are named
//! sets of permissions an org defines; keys and identities hold roles, an
//! identity holds permissions of its own, and a key holds its scopes too
//! ([`effective`]). A change appends a key event naming the role, key or
//! identity, so sidecars stop trusting what they cached for it at once.

use sea_orm::DatabaseConnection;
use serde_json::json;

use super::auth::RequestContext;
use super::effective::{self, Effective, RoleRef};
use super::paging::{Listing, Page, PageRequest};
use super::validate::Violations;
use crate::error::{Error, Result};
use crate::service::authz::{Action, Target};
use crate::store::audit::AuditAction;
use crate::store::holders::HolderId;
use crate::store::key_events::{self, KeyEventKind};
use crate::store::orgs;
use crate::store::roles::{self, NewRole, RoleChanges};
use crate::store::{ChangeTx, OrgTx, api_keys, audit, identities};
use crate::wakeups::Wakeups;

const LISTING: Listing = Listing::named("roles");
/// Longest role name.
pub const MAX_NAME_CHARS: usize = 64;
/// Longest role description.
pub const MAX_DESCRIPTION_CHARS: usize = 500;
/// Most permissions a role or an identity grants.
pub const MAX_GRANTS: usize = 100;
/// Holders [`RoleService::holders`] lists at most.
pub const SHOWN_HOLDERS: u64 = 100;
/// Most roles a key or an identity holds.
pub const MAX_ROLES: usize = 50;

/// A role with how many keys and identities hold it.
#[derive(Clone, Debug)]
pub struct RoleView {
    pub role: roles::Model,
    pub holders: u64,
}

/// How to find one role.
#[derive(Clone, Copy, Debug)]
pub enum RoleLookup<'a> {
    Id(&'a str),
    Name(&'a str),
}

/// The role service.
pub struct RoleService {
    db: DatabaseConnection,
    wakeups: Wakeups,
}

impl RoleService {
    pub fn new(db: DatabaseConnection, wakeups: Wakeups) -> Self {
        Self { db, wakeups }
    }

    /// Creates a role (audited).
    pub async fn create(&self, ctx: &RequestContext, org_id: &str, mut new: NewRole) -> Result<RoleView> {
        let org = ctx.authorize(Action::WriteRoles, Target::Org(org_id))?;
        let mut violations = Violations::default();
        check_name(&mut violations, "name", &new.name);
        violations.optional_text("description", &new.description, MAX_DESCRIPTION_CHARS);
        check_role_grants(&mut violations, "permissions", &mut new.permissions);
        violations.finish()?;
        let tx = OrgTx::begin(&self.db, &org).await?;
        refuse_taken_name(&tx, "name", &new.name).await?;
        let role = roles::insert(&tx, new).await?;
        orgs::register(&tx).await?;
        let details = json!({ "name": role.name, "permissions": role.permission_list() });
        audit::append(&tx, ctx.audit(AuditAction::RoleCreated, &role.id, details)).await?;
        tx.commit().await?;
        Ok(RoleView { role, holders: 0 })
    }

    /// One role of the org.
    pub async fn get(&self, ctx: &RequestContext, org_id: &str, which: RoleLookup<'_>) -> Result<RoleView> {
        let org = ctx.authorize(Action::ReadRoles, Target::Org(org_id))?;
        let found = match which {
            RoleLookup::Id("") | RoleLookup::Name("") => return Err(Error::invalid("id", "give an id or a name")),
            RoleLookup::Id(id) => roles::find(&self.db, &org, id).await?,
            RoleLookup::Name(name) => roles::find_by_name(&self.db, &org, name).await?,
        };
        let role = found.ok_or(Error::NotFound("role"))?;
        Ok(RoleView { holders: roles::holder_count(&self.db, &org, &role.id).await?, role })
    }

    /// A page of roles in name order.
    pub async fn list(&self, ctx: &RequestContext, org_id: &str, page: &PageRequest) -> Result<Page<RoleView>> {
        let org = ctx.authorize(Action::ReadRoles, Target::Org(org_id))?;
        let cursor = LISTING.start(page)?;
        let rows = roles::list(&self.db, &org, cursor.position.as_deref(), cursor.fetch()).await?;
        let ids: Vec<String> = rows.iter().map(|role| role.id.clone()).collect();
        let counts = roles::holder_counts(&self.db, &org, &ids).await?;
        let views = rows
            .into_iter()
            .map(|role| RoleView { holders: counts.get(&role.id).copied().unwrap_or(0), role })
            .collect();
        Ok(cursor.page(views, |view: &RoleView| view.role.name.clone()))
    }

    /// The first [`SHOWN_HOLDERS`] keys and identities holding role `id`, in id order.
    pub async fn holders(&self, ctx: &RequestContext, org_id: &str, id: &str) -> Result<Vec<String>> {
        let org = ctx.authorize(Action::ReadRoles, Target::Org(org_id))?;
        roles::holders(&self.db, &org, id, SHOWN_HOLDERS).await
    }

    /// Changes the named fields (audited); sidecars re-verify every key holding it.
    pub async fn update(
        &self,
        ctx: &RequestContext,
        org_id: &str,
        id: &str,
        mut changes: RoleChanges,
    ) -> Result<RoleView> {
        let org = ctx.authorize(Action::WriteRoles, Target::Org(org_id))?;
        let mut violations = Violations::default();
        let mut changed = Vec::new();
        if let Some(name) = &changes.name {
            check_name(&mut violations, "update.name", name);
            changed.push("name");
        }
        if let Some(description) = &changes.description {
            violations.optional_text("update.description", description, MAX_DESCRIPTION_CHARS);
            changed.push("description");
        }
        if let Some(permissions) = &mut changes.permissions {
            check_role_grants(&mut violations, "update.permissions", permissions);
            changed.push("permissions");
        }
        if changed.is_empty() {
            violations.add("update_mask", "name at least one field: name, description, permissions");
        }
        violations.finish()?;
        let tx = ChangeTx::begin(&self.db, &org).await?;
        let role = roles::find(tx.conn(), tx.org(), id).await?.ok_or(Error::NotFound("role"))?;
        if let Some(name) = changes.name.as_deref().filter(|name| *name != role.name) {
            refuse_taken_name(&tx, "update.name", name).await?;
        }
        let role = roles::update(&tx, role, changes).await?;
        key_events::append(&tx, &role.id, KeyEventKind::Updated).await?;
        let details = json!({ "fields": changed, "name": role.name, "permissions": role.permission_list() });
        audit::append(&tx, ctx.audit(AuditAction::RoleUpdated, &role.id, details)).await?;
        let holders = roles::holder_count(tx.conn(), tx.org(), &role.id).await?;
        tx.commit(&self.wakeups).await?;
        Ok(RoleView { holders, role })
    }

    /// Deletes a role: refused while held unless `detach`, which takes it
    /// from every holder in the same transaction. Returns how many held it.
    pub async fn delete(&self, ctx: &RequestContext, org_id: &str, id: &str, detach: bool) -> Result<u64> {
        let org = ctx.authorize(Action::WriteRoles, Target::Org(org_id))?;
        let tx = ChangeTx::begin(&self.db, &org).await?;
        let role = roles::find(tx.conn(), tx.org(), id).await?.ok_or(Error::NotFound("role"))?;
        let holders = roles::holder_count(tx.conn(), tx.org(), &role.id).await?;
        if holders > 0 && !detach {
            return Err(Error::FailedPrecondition(format!(
                "{holders} keys or identities hold the role: take it from them first, or delete with detach"
            )));
        }
        let detached = roles::delete(&tx, &role.id).await?;
        key_events::append(&tx, &role.id, KeyEventKind::Updated).await?;
        let details = json!({ "name": role.name, "detached": detached });
        audit::append(&tx, ctx.audit(AuditAction::RoleDeleted, &role.id, details)).await?;
        tx.commit(&self.wakeups).await?;
        Ok(detached)
    }

    /// Makes a key or an identity hold exactly the roles named (by name or
    /// id); audited, and sidecars re-verify it (or its keys) at once.
    pub async fn set_roles(
        &self,
        ctx: &RequestContext,
        org_id: &str,
        holder: &HolderId,
        names: &[String],
    ) -> Result<Vec<RoleRef>> {
        let org = ctx.authorize(Action::WriteRoles, Target::Org(org_id))?;
        let tx = ChangeTx::begin(&self.db, &org).await?;
        require_holder(&tx, holder).await?;
        let found = roles::find_named(tx.conn(), tx.org(), names).await?;
        let mut violations = Violations::default();
        let mut held = resolve(&mut violations, "roles", names, &found);
        violations.finish()?;
        held.sort_by(|a, b| a.name.cmp(&b.name));
        let ids: Vec<String> = held.iter().map(|role| role.id.clone()).collect();
        let action = match holder {
            HolderId::Key(id) => {
                roles::set_grants::<api_keys::Entity>(&tx, id, &ids).await?;
                AuditAction::ApiKeyRolesSet
            }
            HolderId::Identity(id) => {
                roles::set_grants::<identities::Entity>(&tx, id, &ids).await?;
                AuditAction::IdentityRolesSet
            }
        };
        key_events::append(&tx, holder.as_str(), KeyEventKind::Updated).await?;
        let names: Vec<&str> = held.iter().map(|role| role.name.as_str()).collect();
        audit::append(&tx, ctx.audit(action, holder.as_str(), json!({ "roles": names }))).await?;
        tx.commit(&self.wakeups).await?;
        Ok(held)
    }

    /// Replaces an identity's own permissions (audited); sidecars
    /// re-verify its keys at once. Returns them, sorted.
    pub async fn set_identity_permissions(
        &self,
        ctx: &RequestContext,
        org_id: &str,
        identity_id: &str,
        mut permissions: Vec<String>,
    ) -> Result<Vec<String>> {
        let org = ctx.authorize(Action::WriteRoles, Target::Org(org_id))?;
        let mut violations = Violations::default();
        violations.grants("permissions", &mut permissions, MAX_GRANTS);
        violations.finish()?;
        let tx = ChangeTx::begin(&self.db, &org).await?;
        let identity = identities::find(tx.conn(), tx.org(), identity_id).await?.ok_or(Error::NotFound("identity"))?;
        let identity = identities::set_permissions(&tx, identity, &permissions).await?;
        key_events::append(&tx, &identity.id, KeyEventKind::Updated).await?;
        let details = json!({ "permissions": permissions });
        audit::append(&tx, ctx.audit(AuditAction::IdentityPermissionsSet, &identity.id, details)).await?;
        tx.commit(&self.wakeups).await?;
        Ok(permissions)
    }

    /// What a key or an identity holds, and why.
    pub async fn effective(&self, ctx: &RequestContext, org_id: &str, holder: &HolderId) -> Result<Effective> {
        let org = ctx.authorize(Action::ReadRoles, Target::Org(org_id))?;
        let key_id = match holder {
            HolderId::Identity(id) => {
                let identity = identities::find(&self.db, &org, id).await?.ok_or(Error::NotFound("identity"))?;
                return effective::of_identity(&self.db, &identity).await;
            }
            HolderId::Key(id) => id,
        };
        let key = api_keys::find(&self.db, &org, key_id).await?.ok_or(Error::NotFound("key"))?;
        let identity = match &key.identity_id {
            Some(id) => identities::find(&self.db, &org, id).await?,
            None => None,
        };
        effective::of_key(&self.db, &key, identity.as_ref()).await
    }
}

/// The roles `names` (names or ids) picks from `known` (the org's roles
/// they name), each once, in the order named; an unknown one, or more than
/// [`MAX_ROLES`], is a violation under `field`.
pub(crate) fn resolve(
    violations: &mut Violations,
    field: &str,
    names: &[String],
    known: &[roles::Model],
) -> Vec<RoleRef> {
    if names.len() > MAX_ROLES {
        violations.add(field, format!("at most {MAX_ROLES}"));
        return Vec::new();
    }
    let mut held: Vec<RoleRef> = Vec::with_capacity(names.len());
    for (i, name) in names.iter().enumerate() {
        match known.iter().find(|role| role.name == *name || role.id == *name) {
            Some(role) if held.iter().all(|picked| picked.id != role.id) => {
                held.push(RoleRef { id: role.id.clone(), name: role.name.clone() });
            }
            Some(_) => {}
            None => violations.add(format!("{field}[{i}]"), "no role with this name or id in the org"),
        }
    }
    held
}

/// NOT_FOUND unless `holder` is in the transaction's org.
async fn require_holder(tx: &OrgTx, holder: &HolderId) -> Result<()> {
    let found = match holder {
        HolderId::Identity(id) => identities::find(tx.conn(), tx.org(), id).await?.is_some(),
        HolderId::Key(id) => api_keys::find(tx.conn(), tx.org(), id).await?.is_some(),
    };
    if found { Ok(()) } else { Err(Error::NotFound(holder.kind_name())) }
}

/// A role name: 1 to 64 of letters, digits, `_ - . :`, not looking like an id.
fn check_name(violations: &mut Violations, field: &str, name: &str) {
    let allowed = |b: u8| b.is_ascii_alphanumeric() || b"_-.:".contains(&b);
    if name.is_empty() || name.len() > MAX_NAME_CHARS || !name.bytes().all(allowed) {
        violations.add(field, format!("1 to {MAX_NAME_CHARS} of letters, digits, _ - . :"));
    } else if roles::is_role_id(name) {
        violations.add(field, format!("must not start with {:?} (role ids do)", roles::ID_PREFIX));
    }
}

/// A role grants 1 to [`MAX_GRANTS`] permissions.
fn check_role_grants(violations: &mut Violations, field: &str, permissions: &mut Vec<String>) {
    if permissions.is_empty() {
        violations.add(field, "a role grants at least one permission");
    }
    violations.grants(field, permissions, MAX_GRANTS);
}

/// ALREADY_EXISTS when another role of the org has this name.
async fn refuse_taken_name(tx: &OrgTx, field: &str, name: &str) -> Result<()> {
    match roles::find_by_name(tx.conn(), tx.org(), name).await? {
        Some(_) => Err(Error::AlreadyExists(format!("{field}: a role with this name exists"))),
        None => Ok(()),
    }
}
