//! The `oauth_connections` table and its org-scoped queries.

use chrono::{DateTime, Utc};
use sea_orm::entity::prelude::*;
use sea_orm::{ActiveValue::Set, QueryOrder, QuerySelect};

use super::OrgTx;
use crate::error::Result;

/// An OAuth connection. The tokens are sealed with the master key (row id
/// plus `:access` / `:refresh` as associated data) and never leave the service layer.
#[sea_orm::model]
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "oauth_connections")]
pub struct Model {
    /// Connection id, `con_…`.
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    pub org_id: String,
    /// Name of a configured provider.
    pub provider: String,
    /// Label of the connected account, chosen by the caller.
    pub account_label: String,
    /// JSON array of granted scopes.
    #[sea_orm(column_type = "JsonBinary")]
    pub scopes: Json,
    pub sealed_access_token: String,
    /// Present when the provider issued a refresh token.
    pub sealed_refresh_token: Option<String>,
    /// Expiry of the access token, if the provider said.
    pub expires_at: Option<DateTime<Utc>>,
    /// Bumped by every token change; refreshes compare and swap on it.
    pub token_version: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub refreshed_at: Option<DateTime<Utc>>,
}

impl ActiveModelBehavior for ActiveModel {}

impl Model {
    /// The granted scopes.
    pub fn scope_list(&self) -> Vec<String> {
        serde_json::from_value(self.scopes.clone()).unwrap_or_default()
    }
}

/// A connection about to be stored; org, version and timestamps are the store's.
#[derive(Debug)]
pub struct NewConnectionRow {
    pub id: String,
    pub provider: String,
    pub account_label: String,
    pub scopes: Vec<String>,
    pub tokens: SealedTokens,
}

/// Stores a new connection in the transaction's org.
pub async fn insert(tx: &OrgTx, new: NewConnectionRow) -> Result<Model> {
    let now = super::now();
    let row = ActiveModel {
        id: Set(new.id),
        org_id: Set(tx.org().to_owned()),
        provider: Set(new.provider),
        account_label: Set(new.account_label),
        scopes: Set(serde_json::json!(new.scopes)),
        sealed_access_token: Set(new.tokens.sealed_access_token),
        sealed_refresh_token: Set(new.tokens.sealed_refresh_token),
        expires_at: Set(new.tokens.expires_at),
        token_version: Set(1),
        created_at: Set(now),
        updated_at: Set(now),
        refreshed_at: Set(None),
    };
    Ok(row.insert(tx.conn()).await?)
}

/// Connection `id` of `org`.
pub async fn find(db: &impl ConnectionTrait, org: &str, id: &str) -> Result<Option<Model>> {
    Ok(Entity::find_by_id(id.to_owned()).filter(Column::OrgId.eq(org)).one(db).await?)
}

/// Up to `limit` connections of `org` after `after_id`, in creation order.
pub async fn list(
    db: &impl ConnectionTrait,
    org: &str,
    provider: Option<&str>,
    after_id: Option<&str>,
    limit: u64,
) -> Result<Vec<Model>> {
    let mut query = Entity::find().filter(Column::OrgId.eq(org));
    if let Some(provider) = provider {
        query = query.filter(Column::Provider.eq(provider));
    }
    if let Some(after) = after_id {
        query = query.filter(Column::Id.gt(after));
    }
    Ok(query.order_by_asc(Column::Id).limit(limit).all(db).await?)
}

/// A connection's tokens as stored.
#[derive(Debug)]
pub struct SealedTokens {
    pub sealed_access_token: String,
    /// After a refresh, the old one when the provider did not rotate it.
    pub sealed_refresh_token: Option<String>,
    pub expires_at: Option<DateTime<Utc>>,
}

/// Stores refreshed tokens if the connection still has `version`; returns
/// the updated row, or `None` when someone else changed it first.
pub async fn swap_tokens(tx: &OrgTx, id: &str, version: i64, tokens: SealedTokens) -> Result<Option<Model>> {
    let now = super::now();
    let updated = Entity::update_many()
        .col_expr(Column::SealedAccessToken, Expr::val(tokens.sealed_access_token))
        .col_expr(Column::SealedRefreshToken, Expr::val(tokens.sealed_refresh_token))
        .col_expr(Column::ExpiresAt, Expr::val(tokens.expires_at))
        .col_expr(Column::TokenVersion, Expr::val(version + 1))
        .col_expr(Column::UpdatedAt, Expr::val(now))
        .col_expr(Column::RefreshedAt, Expr::val(Some(now)))
        .filter(Column::Id.eq(id))
        .filter(Column::OrgId.eq(tx.org()))
        .filter(Column::TokenVersion.eq(version))
        .exec_with_returning(tx.conn())
        .await?;
    Ok(updated.into_iter().next())
}

/// Deletes connection `id` of the transaction's org; returns it, if it existed.
pub async fn delete(tx: &OrgTx, id: &str) -> Result<Option<Model>> {
    let deleted = Entity::delete_many()
        .filter(Column::Id.eq(id))
        .filter(Column::OrgId.eq(tx.org()))
        .exec_with_returning(tx.conn())
        .await?;
    Ok(deleted.into_iter().next())
}
