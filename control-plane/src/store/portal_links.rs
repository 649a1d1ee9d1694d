//! The `portal_links` table: one-time links that open a webhook-portal
//! session for one org. Only the SHA-256 of the link's token is stored.

use chrono::{DateTime, Utc};
use sea_orm::ExprTrait;
use sea_orm::entity::prelude::*;

use crate::error::Result;

#[sea_orm::model]
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "portal_links")]
pub struct Model {
    /// Lowercase hex SHA-256 of the link's token.
    #[sea_orm(primary_key, auto_increment = false)]
    pub token_hash: String,
    /// Public id, `ptl_…`, for the audit log.
    pub id: String,
    pub org_id: String,
    /// Origins allowed to frame the portal, space-separated (empty: none).
    pub frame_ancestors: String,
    /// Audit label of the actor that created the link.
    pub created_by: String,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub used_at: Option<DateTime<Utc>>,
}

impl ActiveModelBehavior for ActiveModel {}

/// The link `id` of `org`.
pub async fn find(db: &impl ConnectionTrait, org: &str, id: &str) -> Result<Option<Model>> {
    Ok(Entity::find().filter(Column::OrgId.eq(org)).filter(Column::Id.eq(id)).one(db).await?)
}

/// Stores a new link.
pub async fn insert(db: &impl ConnectionTrait, link: Model) -> Result<()> {
    ActiveModel::from(link).insert(db).await?;
    Ok(())
}

/// Marks the unused, unexpired link whose token hashes to `token_hash` as
/// used at `now` and returns it; `None` if there is no such link (unknown,
/// expired, or used already: a link opens one session).
pub async fn redeem(db: &impl ConnectionTrait, token_hash: &str, now: DateTime<Utc>) -> Result<Option<Model>> {
    let updated = Entity::update_many()
        .col_expr(Column::UsedAt, Expr::val(Some(now)))
        .filter(Column::TokenHash.eq(token_hash))
        .filter(Column::UsedAt.is_null())
        .filter(Expr::col(Column::ExpiresAt).gt(now))
        .exec_with_returning(db)
        .await?;
    Ok(updated.into_iter().next())
}
