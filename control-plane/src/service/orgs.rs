//! Orgs as records (docs/api.md "Orgs"): an id people and systems use, and a
//! display name people read. Platform credentials create, list and delete
//! orgs; an org's own admins may rename it. An org also comes to exist
//! when a key, identity, role or webhook endpoint is first created in it.

use std::collections::HashMap;

use sea_orm::DatabaseConnection;
use serde_json::json;

use super::auth::{Actor, RequestContext};
use super::authz::{Action, PLATFORM_ORG, Target, check_org_id};
use super::paging::{Listing, Page, PageRequest};
use super::validate::Violations;
use crate::error::{Error, Result};
use crate::store::audit::AuditAction;
use crate::store::key_events::{self, KeyEventKind};
use crate::store::orgs::{self, Holdings};
use crate::store::{ChangeTx, OrgTx, audit};
use crate::wakeups::Wakeups;

const LISTING: Listing = Listing::named("orgs");
/// Longest display name.
pub const MAX_DISPLAY_NAME_CHARS: usize = 200;
/// Longest search text.
const MAX_SEARCH_CHARS: usize = 128;

/// An org with what it holds.
#[derive(Clone, Debug)]
pub struct OrgView {
    pub org: orgs::Model,
    pub holdings: Holdings,
}

/// The org service.
pub struct OrgService {
    db: DatabaseConnection,
    wakeups: Wakeups,
}

impl OrgService {
    pub fn new(db: DatabaseConnection, wakeups: Wakeups) -> Self {
        Self { db, wakeups }
    }

    /// Creates org `id` (a platform credential's act; audited).
    pub async fn create(&self, ctx: &RequestContext, id: &str, display_name: &str) -> Result<OrgView> {
        ctx.authorize(Action::ManageOrgs, Target::Org(PLATFORM_ORG))?;
        let mut violations = Violations::default();
        if check_org_id(id).is_err() {
            violations.add("org_id", "must be 1 to 128 letters, digits, '_', '.' or '-'");
        }
        let display_name = display_name.trim();
        let display_name = if display_name.is_empty() { id } else { display_name };
        violations.optional_text("display_name", display_name, MAX_DISPLAY_NAME_CHARS);
        violations.finish()?;
        let tx = OrgTx::begin(&self.db, id).await?;
        if !orgs::insert(&tx, display_name).await? {
            return Err(Error::AlreadyExists(format!("org_id: org {id} exists")));
        }
        audit::append(&tx, ctx.audit(AuditAction::OrgCreated, id, json!({ "display_name": display_name }))).await?;
        tx.commit().await?;
        let org = orgs::find(&self.db, id).await?.ok_or(Error::NotFound("org"))?;
        self.view(org).await
    }

    /// Org `id`: its own keys may read it, platform credentials any.
    pub async fn get(&self, ctx: &RequestContext, id: &str) -> Result<OrgView> {
        let org = ctx.authorize(Action::ReadOrg, Target::Org(id))?;
        let found = orgs::find(&self.db, &org).await?.ok_or(Error::NotFound("org"))?;
        self.view(found).await
    }

    /// `org` with what it holds.
    async fn view(&self, org: orgs::Model) -> Result<OrgView> {
        let holdings = orgs::holdings(&self.db, std::slice::from_ref(&org.id)).await?;
        Ok(OrgView { holdings: holdings.get(&org.id).copied().unwrap_or_default(), org })
    }

    /// A page of orgs in id order; `search` keeps those whose id or display
    /// name contains it (ignoring case). A person who holds rights in named
    /// orgs only sees those.
    pub async fn list(&self, ctx: &RequestContext, search: &str, page: &PageRequest) -> Result<Page<OrgView>> {
        let only: Option<Vec<String>> = match &ctx.actor {
            Actor::User { rights, .. } if !rights.every_org() => Some(rights.orgs().map(str::to_owned).collect()),
            _ => {
                ctx.authorize(Action::ManageOrgs, Target::Org(PLATFORM_ORG))?;
                None
            }
        };
        let search = search.trim();
        if search.chars().count() > MAX_SEARCH_CHARS {
            return Err(Error::invalid("search", format!("at most {MAX_SEARCH_CHARS} characters")));
        }
        let cursor = LISTING.start(page)?;
        let search = Some(search).filter(|s| !s.is_empty());
        let rows = orgs::list(&self.db, search, only.as_deref(), cursor.position.as_deref(), cursor.fetch()).await?;
        let ids: Vec<String> = rows.iter().map(|org| org.id.clone()).collect();
        let mut holdings: HashMap<String, Holdings> = orgs::holdings(&self.db, &ids).await?;
        let views = rows
            .into_iter()
            .map(|org| OrgView { holdings: holdings.remove(&org.id).unwrap_or_default(), org })
            .collect();
        Ok(cursor.page(views, |view: &OrgView| view.org.id.clone()))
    }

    /// Renames org `id` (audited).
    pub async fn rename(&self, ctx: &RequestContext, id: &str, display_name: &str) -> Result<OrgView> {
        let org = ctx.authorize(Action::ChangeOrg, Target::Org(id))?;
        let display_name = display_name.trim();
        let mut violations = Violations::default();
        if display_name.is_empty() {
            violations.add("display_name", "is required");
        }
        violations.optional_text("display_name", display_name, MAX_DISPLAY_NAME_CHARS);
        violations.finish()?;
        let tx = OrgTx::begin(&self.db, &org).await?;
        let found = orgs::find(tx.conn(), &org).await?.ok_or(Error::NotFound("org"))?;
        let before = found.display_name.clone();
        let renamed = orgs::rename(&tx, found, display_name).await?;
        let details = json!({ "display_name": display_name, "before": before });
        audit::append(&tx, ctx.audit(AuditAction::OrgRenamed, &org, details)).await?;
        tx.commit().await?;
        self.view(renamed).await
    }

    /// Deletes org `id`: refused (FAILED_PRECONDITION) while it holds keys,
    /// identities, roles, webhook endpoints or OAuth connections, unless
    /// `delete_holdings`, which deletes them (and its portal links) with it —
    /// its keys stop working at every sidecar.
    /// Audited; its audit log stays.
    pub async fn delete(&self, ctx: &RequestContext, id: &str, delete_holdings: bool) -> Result<Holdings> {
        ctx.authorize(Action::ManageOrgs, Target::Org(PLATFORM_ORG))?;
        check_org_id(id)?;
        if id == PLATFORM_ORG {
            return Err(Error::FailedPrecondition(format!("the platform org {PLATFORM_ORG} cannot be deleted")));
        }
        let tx = ChangeTx::begin(&self.db, id).await?;
        if orgs::find(tx.conn(), id).await?.is_none() {
            return Err(Error::NotFound("org"));
        }
        let holdings = orgs::holdings(tx.conn(), &[id.to_owned()]).await?.remove(id).unwrap_or_default();
        if !holdings.is_empty() && !delete_holdings {
            return Err(Error::FailedPrecondition(format!(
                "org {id} holds {} keys, {} identities, {} roles, {} webhook endpoints and {} OAuth connections: \
                 delete them first, or ask to delete them with it (delete_holdings)",
                holdings.keys, holdings.identities, holdings.roles, holdings.subscriptions, holdings.connections
            )));
        }
        for key_id in orgs::delete_holdings(&tx).await? {
            key_events::append(&tx, &key_id, KeyEventKind::Deleted).await?;
        }
        orgs::delete(&tx).await?;
        let details = json!({
            "keys": holdings.keys,
            "identities": holdings.identities,
            "roles": holdings.roles,
            "webhook_endpoints": holdings.subscriptions,
            "oauth_connections": holdings.connections,
        });
        audit::append(&tx, ctx.audit(AuditAction::OrgDeleted, id, details)).await?;
        tx.commit(&self.wakeups).await?;
        Ok(holdings)
    }
}
