//! Every column holding a value sealed with the master key, for `keyplane
//! reseal`: read them page by page, and replace one only while it still
//! holds what was read (a compare-and-swap, so a concurrent rotation or
//! refresh is never overwritten).

use sea_orm::entity::prelude::*;
use sea_orm::{QueryOrder, QuerySelect};

use super::{api_keys, connections, webhooks};
use crate::error::Result;

/// A sealed column.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SealedColumn {
    /// `api_keys.sealed_token`: tokens of recoverable keys.
    ApiKeyToken,
    /// `webhook_subscriptions.sealed_secrets`: signing-secret sets.
    WebhookSecrets,
    /// `webhook_subscriptions.sealed_options`: custom headers, client keys, CA bundles.
    WebhookOptions,
    /// `oauth_connections.sealed_access_token`.
    ConnectionAccessToken,
    /// `oauth_connections.sealed_refresh_token`.
    ConnectionRefreshToken,
}

impl SealedColumn {
    /// Every sealed column.
    pub const ALL: [Self; 5] = [
        Self::ApiKeyToken,
        Self::WebhookSecrets,
        Self::WebhookOptions,
        Self::ConnectionAccessToken,
        Self::ConnectionRefreshToken,
    ];

    /// Up to `limit` (row id, sealed value) pairs with ids after `after_id`,
    /// in id order; rows without a value are skipped.
    pub async fn page(self, db: &impl ConnectionTrait, after_id: &str, limit: u64) -> Result<Vec<(String, String)>> {
        match self {
            Self::ApiKeyToken => {
                page::<api_keys::Entity>(db, api_keys::Column::Id, api_keys::Column::SealedToken, after_id, limit).await
            }
            Self::WebhookSecrets => {
                page::<webhooks::Entity>(db, webhooks::Column::Id, webhooks::Column::SealedSecrets, after_id, limit)
                    .await
            }
            Self::WebhookOptions => {
                page::<webhooks::Entity>(db, webhooks::Column::Id, webhooks::Column::SealedOptions, after_id, limit)
                    .await
            }
            Self::ConnectionAccessToken => {
                let column = connections::Column::SealedAccessToken;
                page::<connections::Entity>(db, connections::Column::Id, column, after_id, limit).await
            }
            Self::ConnectionRefreshToken => {
                let column = connections::Column::SealedRefreshToken;
                page::<connections::Entity>(db, connections::Column::Id, column, after_id, limit).await
            }
        }
    }

    /// Replaces row `id`'s value with `fresh` if it still is `read`; false
    /// when someone changed it meanwhile.
    pub async fn replace(self, db: &impl ConnectionTrait, id: &str, read: &str, fresh: String) -> Result<bool> {
        match self {
            Self::ApiKeyToken => {
                replace::<api_keys::Entity>(db, api_keys::Column::Id, api_keys::Column::SealedToken, id, read, fresh)
                    .await
            }
            Self::WebhookSecrets => {
                let column = webhooks::Column::SealedSecrets;
                replace::<webhooks::Entity>(db, webhooks::Column::Id, column, id, read, fresh).await
            }
            Self::WebhookOptions => {
                let column = webhooks::Column::SealedOptions;
                replace::<webhooks::Entity>(db, webhooks::Column::Id, column, id, read, fresh).await
            }
            Self::ConnectionAccessToken => {
                let column = connections::Column::SealedAccessToken;
                replace::<connections::Entity>(db, connections::Column::Id, column, id, read, fresh).await
            }
            Self::ConnectionRefreshToken => {
                let column = connections::Column::SealedRefreshToken;
                replace::<connections::Entity>(db, connections::Column::Id, column, id, read, fresh).await
            }
        }
    }

    /// The column's table, for reports.
    pub fn table(self) -> &'static str {
        match self {
            Self::ApiKeyToken => "api_keys",
            Self::WebhookSecrets | Self::WebhookOptions => "webhook_subscriptions",
            Self::ConnectionAccessToken | Self::ConnectionRefreshToken => "oauth_connections",
        }
    }
}

async fn page<E: EntityTrait>(
    db: &impl ConnectionTrait,
    id: E::Column,
    sealed: E::Column,
    after_id: &str,
    limit: u64,
) -> Result<Vec<(String, String)>> {
    let rows: Vec<(String, Option<String>)> = E::find()
        .select_only()
        .column(id)
        .column(sealed)
        .filter(id.gt(after_id))
        .filter(sealed.is_not_null())
        .order_by_asc(id)
        .limit(limit)
        .into_tuple()
        .all(db)
        .await?;
    Ok(rows.into_iter().filter_map(|(id, value)| Some((id, value?))).collect())
}

async fn replace<E: EntityTrait>(
    db: &impl ConnectionTrait,
    id_column: E::Column,
    sealed: E::Column,
    id: &str,
    read: &str,
    fresh: String,
) -> Result<bool> {
    let swapped = E::update_many()
        .col_expr(sealed, Expr::val(fresh))
        .filter(id_column.eq(id))
        .filter(sealed.eq(read))
        .exec(db)
        .await?;
    Ok(swapped.rows_affected > 0)
}
