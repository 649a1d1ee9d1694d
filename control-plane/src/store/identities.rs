//! The `identities` table: the platform's own customers or users inside an
//! org, with the limits all their keys share.

use chrono::{DateTime, Utc};
use sea_orm::ActiveValue::Set;
use sea_orm::entity::prelude::*;
use sea_orm::sea_query::LikeExpr;
use sea_orm::{Condition, ExprTrait, IntoActiveModel, QueryOrder, QuerySelect};

use super::credits::{self, Refill};
use super::policy::{self, LimitChanges, RateLimit};
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
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl ActiveModelBehavior for ActiveModel {}

/// Prefix of identity ids; it tells them apart from key ids where either
/// may be named (credit leases, key events).
pub const ID_PREFIX: &str = "idn_";

/// Whether `id` names an identity rather than a key.
pub fn is_identity_id(id: &str) -> bool {
    id.starts_with(ID_PREFIX)
}

impl Model {
    /// The networks its keys may be used from (canonical CIDRs); empty = anywhere.
    pub fn allowed_cidr_list(&self) -> Vec<String> {
        policy::cidr_list(&self.allowed_cidrs)
    }

    /// Whether a client at `client` may use its keys.
    pub fn allows_client(&self, client: Option<std::net::IpAddr>) -> bool {
        policy::allows(&self.allowed_cidrs, client)
    }

    /// The rate limit its keys share, if any.
    pub fn rate_limit(&self) -> Option<RateLimit> {
        RateLimit::from_columns(self.rate_limit_requests, self.rate_limit_window_ms, self.rate_limit_scope.as_deref())
    }

    /// The credits its keys share, if limited.
    pub fn credits(&self) -> Option<credits::Credits> {
        credits::Credits::from_columns(
            self.credits_remaining,
            self.credit_refill_amount,
            self.credit_refill_period.as_deref(),
            self.credit_refill_next_at,
        )
    }
}

/// A new identity, as its creator decides it.
#[derive(Clone, Debug)]
pub struct NewIdentity {
    pub external_id: String,
    pub metadata: Option<Json>,
    pub rate_limit: Option<RateLimit>,
    /// Canonical CIDRs; empty = anywhere.
    pub allowed_cidrs: Vec<String>,
    /// Uses allowed, with an optional refill; `None` = unlimited.
    pub credits: Option<(u64, Option<Refill>)>,
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
    let now = super::now();
    let (rate_limit_requests, rate_limit_window_ms, rate_limit_scope) = RateLimit::columns(identity.rate_limit);
    let remaining = identity.credits.map(|(remaining, _)| i64::try_from(remaining).unwrap_or(i64::MAX));
    let (refill_amount, refill_period, refill_next_at) =
        credits::refill_columns(identity.credits.and_then(|(_, refill)| refill), now);
    let row = ActiveModel {
        id: Set(crate::crypto::new_id(ID_PREFIX)),
        org_id: Set(tx.org().to_owned()),
        external_id: Set(identity.external_id),
        metadata: Set(identity.metadata),
        rate_limit_requests: Set(rate_limit_requests),
        rate_limit_window_ms: Set(rate_limit_window_ms),
        rate_limit_scope: Set(rate_limit_scope),
        allowed_cidrs: Set(policy::cidr_column(identity.allowed_cidrs)),
        credits_remaining: Set(remaining),
        credit_refill_amount: Set(refill_amount),
        credit_refill_period: Set(refill_period),
        credit_refill_next_at: Set(refill_next_at),
        created_at: Set(now),
        updated_at: Set(now),
    };
    Ok(row.insert(tx.conn()).await?)
}

/// The identity `id` of `org`.
pub async fn find(db: &impl ConnectionTrait, org: &str, id: &str) -> Result<Option<Model>> {
    find_in(db, OrgScope::Org(org), id).await
}

/// The identity `id` in `scope` (every org only for sidecars' leases).
pub async fn find_in(db: &impl ConnectionTrait, scope: OrgScope<'_>, id: &str) -> Result<Option<Model>> {
    let mut query = Entity::find_by_id(id.to_owned());
    if let OrgScope::Org(org) = scope {
        query = query.filter(Column::OrgId.eq(org));
    }
    Ok(query.one(db).await?)
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
    let identity_id = identity.id.clone();
    let mut row = identity.into_active_model();
    if let Some(external_id) = changes.external_id {
        row.external_id = Set(external_id);
    }
    if let Some(metadata) = changes.metadata {
        row.metadata = Set(metadata);
    }
    if policy::apply_limit_changes!(row, changes.limits) {
        credits::forget_leases(tx, &identity_id).await?;
    }
    row.updated_at = Set(super::now());
    Ok(row.update(tx.conn()).await?)
}

/// Deletes identity `id` of the transaction's org; false if there was none.
pub async fn delete(tx: &OrgTx, id: &str) -> Result<bool> {
    let result =
        Entity::delete_many().filter(Column::Id.eq(id)).filter(Column::OrgId.eq(tx.org())).exec(tx.conn()).await?;
    Ok(result.rows_affected > 0)
}
