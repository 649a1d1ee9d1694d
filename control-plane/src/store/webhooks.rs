//! The `webhook_subscriptions` table and its org-scoped queries.

use chrono::{DateTime, Utc};
use sea_orm::entity::prelude::*;
use sea_orm::{ActiveValue::Set, QueryOrder, QuerySelect};

use super::OrgTx;
use crate::error::Result;

/// A webhook subscription. `sealed_secrets` holds the signing secrets sealed
/// with the master key (row id as associated data); it never leaves the service layer.
#[sea_orm::model]
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "webhook_subscriptions")]
pub struct Model {
    /// Subscription id, `sub_…`.
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    /// Owning org.
    pub org_id: String,
    /// Endpoint URL.
    pub url: String,
    /// JSON array of event types and patterns.
    #[sea_orm(column_type = "JsonBinary")]
    pub event_types: Json,
    /// Free text.
    pub description: String,
    /// [`ACTIVE`], [`DISABLED`] or [`PENDING_APPROVAL`].
    pub status: String,
    /// Why it was disabled.
    pub disabled_reason: Option<String>,
    /// Deliveries per second at most; 0 means no limit.
    pub rate_limit_per_second: i32,
    /// Sealed JSON list of signing secrets with their expiry.
    pub sealed_secrets: String,
    /// Start of the current run of failures.
    pub failing_since: Option<DateTime<Utc>>,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
}

impl ActiveModelBehavior for ActiveModel {}

/// `status` of a subscription that receives deliveries.
pub const ACTIVE: &str = "active";
/// `status` of a disabled subscription.
pub const DISABLED: &str = "disabled";
/// `status` of a subscription waiting for operator approval.
pub const PENDING_APPROVAL: &str = "pending_approval";

impl Model {
    /// The subscription's event types and patterns.
    pub fn event_type_list(&self) -> Vec<String> {
        serde_json::from_value(self.event_types.clone()).unwrap_or_default()
    }
}

/// Inserts a subscription in the transaction's org.
pub async fn insert(tx: &OrgTx, mut subscription: ActiveModel) -> Result<Model> {
    subscription.org_id = Set(tx.org().to_owned());
    Ok(subscription.insert(tx.conn()).await?)
}

/// Subscription `id` of `org`.
pub async fn find(db: &impl ConnectionTrait, org: &str, id: &str) -> Result<Option<Model>> {
    Ok(Entity::find_by_id(id.to_owned()).filter(Column::OrgId.eq(org)).one(db).await?)
}

/// Up to `limit` subscriptions of `org` after `after_id`, in creation order.
pub async fn list(db: &impl ConnectionTrait, org: &str, after_id: Option<&str>, limit: u64) -> Result<Vec<Model>> {
    let mut query = Entity::find().filter(Column::OrgId.eq(org));
    if let Some(after) = after_id {
        query = query.filter(Column::Id.gt(after));
    }
    Ok(query.order_by_asc(Column::Id).limit(limit).all(db).await?)
}

/// How many subscriptions `org` has.
pub async fn count(db: &impl ConnectionTrait, org: &str) -> Result<u64> {
    Ok(Entity::find().filter(Column::OrgId.eq(org)).count(db).await?)
}

/// Active subscriptions of `org` (at most the per-org limit).
pub async fn active(db: &impl ConnectionTrait, org: &str) -> Result<Vec<Model>> {
    Ok(Entity::find().filter(Column::OrgId.eq(org)).filter(Column::Status.eq(ACTIVE)).all(db).await?)
}

/// Saves changed columns of a subscription loaded in the transaction's org.
pub async fn update(tx: &OrgTx, subscription: ActiveModel) -> Result<Model> {
    Ok(subscription.update(tx.conn()).await?)
}

/// Deletes subscription `id` of the transaction's org; false if there was none.
pub async fn delete(tx: &OrgTx, id: &str) -> Result<bool> {
    let result =
        Entity::delete_many().filter(Column::Id.eq(id)).filter(Column::OrgId.eq(tx.org())).exec(tx.conn()).await?;
    Ok(result.rows_affected > 0)
}

/// Disables an active subscription of the transaction's org; false if it was
/// not active (already disabled, deleted, or never approved).
pub async fn disable(tx: &OrgTx, id: &str, reason: &str) -> Result<bool> {
    let result = Entity::update_many()
        .col_expr(Column::Status, Expr::val(DISABLED))
        .col_expr(Column::DisabledReason, Expr::val(reason))
        .col_expr(Column::UpdatedAt, Expr::val(super::now()))
        .filter(Column::Id.eq(id))
        .filter(Column::OrgId.eq(tx.org()))
        .filter(Column::Status.eq(ACTIVE))
        .exec(tx.conn())
        .await?;
    Ok(result.rows_affected > 0)
}

/// Records the outcome of an attempt on subscription `id` of `org`: a
/// failure starts a failure run (if none is running), a success ends it.
/// Returns the start of the run still going, if any.
pub async fn record_health(
    db: &impl ConnectionTrait,
    org: &str,
    id: &str,
    succeeded: bool,
    at: DateTime<Utc>,
) -> Result<Option<DateTime<Utc>>> {
    let update = Entity::update_many().filter(Column::Id.eq(id)).filter(Column::OrgId.eq(org));
    if succeeded {
        update
            .col_expr(Column::FailingSince, Expr::val(None::<DateTime<Utc>>))
            .filter(Column::FailingSince.is_not_null())
            .exec(db)
            .await?;
        return Ok(None);
    }
    update.col_expr(Column::FailingSince, Expr::val(at)).filter(Column::FailingSince.is_null()).exec(db).await?;
    Ok(find(db, org, id).await?.and_then(|s| s.failing_since))
}

/// Subscriptions by id, across orgs: for the dispatcher, which sends every
/// org's deliveries and reads ids from deliveries it has claimed.
pub async fn find_for_dispatch(db: &impl ConnectionTrait, ids: &[String]) -> Result<Vec<Model>> {
    Ok(Entity::find().filter(Column::Id.is_in(ids.iter().map(String::as_str))).all(db).await?)
}
