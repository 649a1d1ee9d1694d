//! The `api_keys` table and its org-scoped queries.

use chrono::{DateTime, Utc};
use sea_orm::entity::prelude::*;
use sea_orm::sea_query::LikeExpr;
use sea_orm::{Condition, ExprTrait, QueryOrder, QuerySelect};

use super::{OrgScope, OrgTx};
use crate::crypto::Environment;
use crate::error::Result;

/// An `api_keys` row: the stored form of an API key. It holds the argon2id
/// hash of the secret and, for recoverable keys, the sealed token; neither
/// ever leaves the service layer.
#[sea_orm::model]
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "api_keys")]
pub struct Model {
    /// Public key id, `key_…`.
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    /// Owning org.
    pub org_id: String,
    /// Human name.
    pub name: String,
    /// Free text.
    pub description: String,
    /// `live` or `test`.
    pub environment: String,
    /// JSON array of scope strings.
    #[sea_orm(column_type = "JsonBinary")]
    pub scopes: Json,
    /// `active` or `revoked`.
    pub status: String,
    /// Argon2id PHC string of the secret.
    pub secret_hash: String,
    /// Display prefix of the token.
    pub start: String,
    /// Expiry, if any.
    pub expires_at: Option<DateTime<Utc>>,
    /// Rate limit: requests per window.
    pub rate_limit_requests: Option<i32>,
    /// Rate limit: window in milliseconds.
    pub rate_limit_window_ms: Option<i64>,
    /// Caller-defined JSON object.
    #[sea_orm(column_type = "JsonBinary", nullable)]
    pub metadata: Option<Json>,
    /// Token sealed with the master key, for recoverable keys.
    pub sealed_token: Option<String>,
    /// Actor that created the key.
    pub created_by: String,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
    /// Revocation time.
    pub revoked_at: Option<DateTime<Utc>>,
    /// Actor that revoked the key.
    pub revoked_by: Option<String>,
    /// Reason given at revocation.
    pub revocation_reason: Option<String>,
    /// Key this one replaced.
    pub rotated_from: Option<String>,
    /// Last reported use.
    pub last_used_at: Option<DateTime<Utc>>,
    /// Reported uses.
    pub usage_count: i64,
}

impl ActiveModelBehavior for ActiveModel {}

/// `status` of a usable key.
pub const ACTIVE: &str = "active";
/// `status` of a revoked key.
pub const REVOKED: &str = "revoked";

impl Model {
    /// The key's scopes.
    pub fn scope_list(&self) -> Vec<String> {
        serde_json::from_value(self.scopes.clone()).unwrap_or_default()
    }

    /// The key's environment.
    pub fn environment(&self) -> Environment {
        Environment::parse(&self.environment).unwrap_or(Environment::Live)
    }

    /// Whether the key has expired at `now`.
    pub fn is_expired(&self, now: DateTime<Utc>) -> bool {
        self.expires_at.is_some_and(|at| at <= now)
    }
}

/// Filters of [`list`].
#[derive(Debug, Default)]
pub struct ListFilter {
    /// Only this status.
    pub status: Option<&'static str>,
    /// Only this environment.
    pub environment: Option<Environment>,
    /// Only names starting with this.
    pub name_prefix: Option<String>,
}

/// Inserts a new key in the transaction's org.
pub async fn insert(tx: &OrgTx, mut key: ActiveModel) -> Result<Model> {
    key.org_id = sea_orm::Set(tx.org().to_owned());
    Ok(key.insert(tx.conn()).await?)
}

/// The key `id` of `org`.
pub async fn find(db: &impl ConnectionTrait, org: &str, id: &str) -> Result<Option<Model>> {
    find_in(db, OrgScope::Org(org), id).await
}

/// The key `id` in `scope` (one org, or every org for platform verification).
pub async fn find_in(db: &impl ConnectionTrait, scope: OrgScope<'_>, id: &str) -> Result<Option<Model>> {
    let mut query = Entity::find_by_id(id.to_owned());
    if let OrgScope::Org(org) = scope {
        query = query.filter(Column::OrgId.eq(org));
    }
    Ok(query.one(db).await?)
}

/// Up to `limit` keys of `org` after `after_id`, in id (creation) order.
pub async fn list(
    db: &impl ConnectionTrait,
    org: &str,
    filter: &ListFilter,
    after_id: Option<&str>,
    limit: u64,
) -> Result<Vec<Model>> {
    let mut condition = Condition::all().add(Column::OrgId.eq(org));
    if let Some(after) = after_id {
        condition = condition.add(Column::Id.gt(after));
    }
    if let Some(status) = filter.status {
        condition = condition.add(Column::Status.eq(status));
    }
    if let Some(environment) = filter.environment {
        condition = condition.add(Column::Environment.eq(environment.as_str()));
    }
    if let Some(prefix) = &filter.name_prefix {
        let escaped = prefix.replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_");
        condition = condition.add(Expr::col(Column::Name).like(LikeExpr::new(format!("{escaped}%")).escape('\\')));
    }
    Ok(Entity::find().filter(condition).order_by_asc(Column::Id).limit(limit).all(db).await?)
}

/// Saves changed columns of a key previously loaded with [`find`].
pub async fn update(tx: &OrgTx, key: ActiveModel) -> Result<Model> {
    Ok(key.update(tx.conn()).await?)
}

/// Deletes key `id` of the transaction's org; false if there was none.
pub async fn delete(tx: &OrgTx, id: &str) -> Result<bool> {
    let result =
        Entity::delete_many().filter(Column::Id.eq(id)).filter(Column::OrgId.eq(tx.org())).exec(tx.conn()).await?;
    Ok(result.rows_affected > 0)
}

/// Uses of one key reported by a sidecar.
#[derive(Clone, Debug)]
pub struct Usage {
    /// Key id.
    pub key_id: String,
    /// Uses since the last report.
    pub count: i64,
    /// Latest use.
    pub last_used_at: DateTime<Utc>,
}

/// Adds a batch of usage counts in one statement. Sidecars are platform
/// credentials, so this spans orgs: callers pass [`OrgScope::AllOrgs`] to say so.
pub async fn record_usage(db: &impl ConnectionTrait, scope: OrgScope<'_>, batch: &[Usage]) -> Result<u64> {
    use sea_orm::sea_query::{CaseStatement, Query};
    if batch.is_empty() {
        return Ok(0);
    }
    let mut count = CaseStatement::new();
    let mut last_used = CaseStatement::new();
    for usage in batch {
        count = count.case(Expr::col(Column::Id).eq(usage.key_id.as_str()), Expr::val(usage.count));
        last_used = last_used.case(
            Expr::col(Column::Id).eq(usage.key_id.as_str()),
            // Never move last_used_at backwards.
            Expr::Case(Box::new(
                CaseStatement::new()
                    .case(
                        Expr::col(Column::LastUsedAt)
                            .is_null()
                            .or(Expr::col(Column::LastUsedAt).lt(usage.last_used_at)),
                        Expr::val(usage.last_used_at),
                    )
                    .finally(Expr::col(Column::LastUsedAt)),
            )),
        );
    }
    let mut update = Query::update();
    update
        .table(Entity)
        .value(
            Column::UsageCount,
            Expr::col(Column::UsageCount).add(Expr::Case(Box::new(count.finally(Expr::val(0i64))))),
        )
        .value(Column::LastUsedAt, Expr::Case(Box::new(last_used.finally(Expr::col(Column::LastUsedAt)))))
        .and_where(Expr::col(Column::Id).is_in(batch.iter().map(|u| u.key_id.as_str())));
    if let OrgScope::Org(org) = scope {
        update.and_where(Expr::col(Column::OrgId).eq(org));
    }
    Ok(db.execute(&update).await?.rows_affected())
}
