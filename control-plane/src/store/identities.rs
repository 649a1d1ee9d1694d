//! The `identities` table: the platform's own customers or users inside an
//! org, with the limits all their keys share.

use chrono::{DateTime, Utc};
use sea_orm::ActiveValue::Set;
use sea_orm::entity::prelude::*;
use sea_orm::sea_query::LikeExpr;
use sea_orm::{Condition, ExprTrait, IntoActiveModel, QueryOrder, QuerySelect};

use super::limits::{self, LimitChanges, NewLimits};
use super::{OrgScope, OrgTx};
use crate::error::Result;

/// An `identities` row.
#[sea_orm::model]
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "identities")]
pub struct Model {
    /// `idn_…`.
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    pub org_id: String,
    /// The platform's own id for it; unique in the org.
    pub external_id: String,
    /// Caller-defined JSON object.
    #[sea_orm(column_type = "JsonBinary", nullable)]
    pub metadata: Option<Json>,
    pub rate_limit_requests: Option<i32>,
    pub rate_limit_window_ms: Option<i64>,
    /// `global`, or NULL for a per-sidecar rate limit.
    pub rate_limit_scope: Option<String>,
    /// JSON array of CIDRs; NULL = anywhere.
    #[sea_orm(column_type = "JsonBinary", nullable)]
    pub allowed_cidrs: Option<Json>,
    /// Uses left for all its keys together; NULL = unlimited.
    pub credits_remaining: Option<i64>,
    pub credit_refill_amount: Option<i64>,
    pub credit_refill_period: Option<String>,
    pub credit_refill_next_at: Option<DateTime<Utc>>,
    /// A low-credits alert, `below:<n>` or `percent:<p>` (`store::limits`).
    pub credits_low_alert: Option<String>,
    /// The refill period a low-credits notice was published for.
    pub credits_low_notice_for: Option<DateTime<Utc>>,
    /// Start (Unix ms) of the window a rate-limited notice was published for.
    pub rate_limited_notice_at: Option<i64>,
    /// JSON array of the identity's own permissions; NULL = none.
    #[sea_orm(column_type = "JsonBinary", nullable)]
    pub permissions: Option<Json>,
    /// A role grant may name the identity (false: none does; see `store::roles`).
    pub holds_roles: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl ActiveModelBehavior for ActiveModel {}

impl Model {
    /// The identity's own permissions (its keys hold them).
    pub fn permission_list(&self) -> Vec<String> {
        self.permissions.clone().and_then(|list| serde_json::from_value(list).ok()).unwrap_or_default()
    }
}

/// Prefix of identity ids; it tells them apart from key ids where either
/// may be named (`store::holders`).
pub const ID_PREFIX: &str = "idn_";

limits::limit_table!();

/// A new identity, as its creator decides it.
#[derive(Clone, Debug)]
pub struct NewIdentity {
    pub external_id: String,
    pub metadata: Option<Json>,
    /// The limits all its keys share.
    pub limits: NewLimits,
}

impl NewIdentity {
    /// The complete row of a new identity of `org`.
    pub fn into_row(self, org: &str) -> Result<ActiveModel> {
        let now = super::now();
        let mut row = ActiveModel {
            id: Set(crate::crypto::new_id(ID_PREFIX)),
            org_id: Set(org.to_owned()),
            external_id: Set(self.external_id),
            metadata: Set(self.metadata),
            permissions: Set(None),
            holds_roles: Set(false),
            created_at: Set(now),
            updated_at: Set(now),
            ..Default::default()
        };
        limits::set_new::<Entity>(&mut row, self.limits)?;
        Ok(row)
    }
}

/// Changes to an identity; `None` leaves a field alone, and for the
/// optional ones `Some(None)` clears it.
#[derive(Clone, Debug, Default)]
pub struct IdentityChanges {
    pub external_id: Option<String>,
    pub metadata: Option<Option<Json>>,
    /// Rate limit, allow-list and credits.
    pub limits: LimitChanges,
}

/// What [`list`] keeps.
#[derive(Debug, Default)]
pub struct IdentityFilter {
    pub external_id_prefix: Option<String>,
}

/// Stores a new identity in the transaction's org.
pub async fn insert(tx: &OrgTx, identity: NewIdentity) -> Result<Model> {
    Ok(identity.into_row(tx.org())?.insert(tx.conn()).await?)
}

/// The identity `id` of `org`.
pub async fn find(db: &impl ConnectionTrait, org: &str, id: &str) -> Result<Option<Model>> {
    find_in(db, OrgScope::Org(org), id).await
}

/// The identity `id` in `scope` (every org only for sidecars' leases).
pub async fn find_in(db: &impl ConnectionTrait, scope: OrgScope<'_>, id: &str) -> Result<Option<Model>> {
    super::find_in::<Entity>(db, [Column::Id, Column::OrgId], scope, id).await
}

/// The identity of `org` with this external id.
pub async fn find_by_external_id(db: &impl ConnectionTrait, org: &str, external_id: &str) -> Result<Option<Model>> {
    Ok(Entity::find().filter(Column::OrgId.eq(org)).filter(Column::ExternalId.eq(external_id)).one(db).await?)
}

/// Up to `limit` identities of `org` after `after_id`, in id (creation) order.
pub async fn list(
    db: &impl ConnectionTrait,
    org: &str,
    filter: &IdentityFilter,
    after_id: Option<&str>,
    limit: u64,
) -> Result<Vec<Model>> {
    let mut condition = Condition::all().add(Column::OrgId.eq(org));
    if let Some(after) = after_id {
        condition = condition.add(Column::Id.gt(after));
    }
    if let Some(prefix) = &filter.external_id_prefix {
        let escaped = prefix.replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_");
        let like = LikeExpr::new(format!("{escaped}%")).escape('\\');
        condition = condition.add(Expr::col(Column::ExternalId).like(like));
    }
    Ok(Entity::find().filter(condition).order_by_asc(Column::Id).limit(limit).all(db).await?)
}

/// Applies `changes` to `identity`, loaded in the transaction's org.
pub async fn update(tx: &OrgTx, identity: Model, changes: IdentityChanges) -> Result<Model> {
    let mut row = identity.into_active_model();
    if let Some(external_id) = changes.external_id {
        row.external_id = Set(external_id);
    }
    if let Some(metadata) = changes.metadata {
        row.metadata = Set(metadata);
    }
    limits::change::<Entity>(tx, &mut row, changes.limits).await?;
    row.updated_at = Set(super::now());
    Ok(row.update(tx.conn()).await?)
}

impl super::roles::RoleHolder for Entity {
    const COLUMNS: [Column; 3] = [Column::Id, Column::OrgId, Column::HoldsRoles];
}

/// Replaces the identity's own permissions (empty: none).
pub async fn set_permissions(tx: &OrgTx, identity: Model, permissions: &[String]) -> Result<Model> {
    let mut row = identity.into_active_model();
    row.permissions = Set((!permissions.is_empty()).then(|| serde_json::json!(permissions)));
    row.updated_at = Set(super::now());
    Ok(row.update(tx.conn()).await?)
}

/// Deletes identity `id` of the transaction's org, with the roles it held;
/// false if there was none.
pub async fn delete(tx: &OrgTx, id: &str) -> Result<bool> {
    super::roles::forget_holder(tx, id).await?;
    let result =
        Entity::delete_many().filter(Column::Id.eq(id)).filter(Column::OrgId.eq(tx.org())).exec(tx.conn()).await?;
    Ok(result.rows_affected > 0)
}
