//! The `api_keys` table and its org-scoped queries (the sweeps' queries,
//! which span orgs, are in `lifecycle.rs`).

use chrono::{DateTime, Utc};
use sea_orm::ActiveValue::Set;
use sea_orm::entity::prelude::*;
use sea_orm::sea_query::LikeExpr;
use sea_orm::{Condition, ExprTrait, IntoActiveModel, PaginatorTrait, QueryOrder, QuerySelect};
use serde::Serialize;

use super::limits;
pub use super::limits::{LimitChanges, NewLimits, RateLimit};
use super::{OrgScope, OrgTx};
use crate::crypto::Environment;
use crate::crypto::imported::HashFormat;
use crate::error::Result;

mod lifecycle;

pub use lifecycle::{due_expiring_notice, due_to_expire, ended_before, mark_expired, mark_expiring_noticed};

/// An `api_keys` row: the stored form of an API key. It holds the argon2id
/// hash of the secret (or an imported key's hash) and, for recoverable
/// keys, the sealed token; neither ever leaves the service layer.
#[sea_orm::model]
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "api_keys")]
pub struct Model {
    /// Public key id, `key_…`.
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    pub org_id: String,
    pub name: String,
    pub description: String,
    pub environment: Environment,
    /// JSON array of scope strings.
    #[sea_orm(column_type = "JsonBinary")]
    pub scopes: Json,
    pub status: KeyStatus,
    /// Argon2id PHC string of the secret.
    pub secret_hash: String,
    /// Display prefix of the token.
    pub start: String,
    pub expires_at: Option<DateTime<Utc>>,
    pub rate_limit_requests: Option<i32>,
    pub rate_limit_window_ms: Option<i64>,
    /// Caller-defined JSON object.
    #[sea_orm(column_type = "JsonBinary", nullable)]
    pub metadata: Option<Json>,
    /// The token sealed with the master key, for recoverable keys.
    pub sealed_token: Option<String>,
    /// Audit label of the actor that created the key.
    pub created_by: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
    pub revoked_by: Option<String>,
    pub revocation_reason: Option<String>,
    /// The key this one replaced, for a rotation.
    pub rotated_from: Option<String>,
    /// Latest use reported by a sidecar (or VerifyApiKey).
    pub last_used_at: Option<DateTime<Utc>>,
    /// Uses reported so far.
    pub usage_count: i64,
    /// JSON array of the CIDRs the key may be used from; NULL = anywhere.
    #[sea_orm(column_type = "JsonBinary", nullable)]
    pub allowed_cidrs: Option<Json>,
    /// Uses left; NULL = unlimited (see `store::credits`).
    pub credits_remaining: Option<i64>,
    pub credit_refill_amount: Option<i64>,
    /// `every:<ms>`, `daily` or `monthly:<day>`.
    pub credit_refill_period: Option<String>,
    pub credit_refill_next_at: Option<DateTime<Utc>>,
    /// `global`, or NULL for a per-sidecar rate limit.
    pub rate_limit_scope: Option<String>,
    /// The identity (of the same org) the key belongs to.
    pub identity_id: Option<String>,
    /// How `secret_hash` was made, for a key brought from another system
    /// (whose hash covers the whole token); NULL for Keyplane's own.
    pub hash_format: Option<HashFormat>,
    /// What finds an imported key from its token (`crypto::imported::lookups`).
    pub lookup: Option<String>,
    /// The old system's id of an imported key (unique per org).
    pub import_source_id: Option<String>,
    /// Re-hash to Keyplane's argon2id at the first successful verification.
    pub upgrade_on_use: bool,
    /// A role grant may name the key (false: none does; see `store::roles`).
    pub holds_roles: bool,
    /// The expiry an `api_key.expiring` notice was published for.
    pub expiring_notice_for: Option<DateTime<Utc>>,
    /// A low-credits alert, `below:<n>` or `percent:<p>` (`store::limits`).
    pub credits_low_alert: Option<String>,
    /// The refill period a low-credits notice was published for.
    pub credits_low_notice_for: Option<DateTime<Utc>>,
    /// Start (Unix ms) of the window a rate-limited notice was published for.
    pub rate_limited_notice_at: Option<i64>,
}

impl ActiveModelBehavior for ActiveModel {}

/// Whether a key may be used at all (expiry is checked separately).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, EnumIter, DeriveActiveEnum, Serialize, schemars::JsonSchema)]
#[sea_orm(rs_type = "String", db_type = "String(StringLen::None)")]
#[serde(rename_all = "snake_case")]
pub enum KeyStatus {
    /// Usable until it expires.
    #[sea_orm(string_value = "active")]
    Active,
    /// Revoked for good.
    #[sea_orm(string_value = "revoked")]
    Revoked,
    /// Past its expiry, marked so by the expiry sweep; for good too.
    #[sea_orm(string_value = "expired")]
    Expired,
}

impl Model {
    /// The key's scopes.
    pub fn scope_list(&self) -> Vec<String> {
        serde_json::from_value(self.scopes.clone()).unwrap_or_default()
    }

    /// Whether the key has expired at `now`.
    pub fn is_expired(&self, now: DateTime<Utc>) -> bool {
        self.expires_at.is_some_and(|at| at <= now)
    }
}

limits::limit_table!();

/// What [`list`] keeps; `None` keeps every key.
#[derive(Debug, Default)]
pub struct KeyFilter {
    pub status: Option<KeyStatus>,
    pub environment: Option<Environment>,
    pub name_prefix: Option<String>,
    pub identity_id: Option<String>,
}

/// A key about to be stored: what its issuer decides. The row's org,
/// status, timestamps and usage counters are the store's to fill in.
#[derive(Clone, Debug)]
pub struct NewKeyRow {
    pub id: String,
    pub name: String,
    pub description: String,
    pub environment: Environment,
    pub scopes: Vec<String>,
    pub secret_hash: String,
    /// Display prefix of the token.
    pub start: String,
    pub expires_at: Option<DateTime<Utc>>,
    pub metadata: Option<Json>,
    /// The token sealed with the master key, for recoverable keys.
    pub sealed_token: Option<String>,
    pub limits: NewLimits,
    /// Audit label of the actor creating the key.
    pub created_by: String,
    /// The key this one replaces, for a rotation.
    pub rotated_from: Option<String>,
    /// The identity the key belongs to (checked to exist in the org).
    pub identity_id: Option<String>,
}

impl NewKeyRow {
    /// The complete row of an active, unused key of `org` created now (also
    /// what load generators seed straight into the table).
    pub fn into_row(self, org: &str) -> Result<ActiveModel> {
        let now = super::now();
        let mut row = ActiveModel {
            id: Set(self.id),
            org_id: Set(org.to_owned()),
            name: Set(self.name),
            description: Set(self.description),
            environment: Set(self.environment),
            scopes: Set(serde_json::json!(self.scopes)),
            status: Set(KeyStatus::Active),
            secret_hash: Set(self.secret_hash),
            start: Set(self.start),
            expires_at: Set(self.expires_at),
            metadata: Set(self.metadata),
            sealed_token: Set(self.sealed_token),
            created_by: Set(self.created_by),
            created_at: Set(now),
            updated_at: Set(now),
            revoked_at: Set(None),
            revoked_by: Set(None),
            revocation_reason: Set(None),
            rotated_from: Set(self.rotated_from),
            last_used_at: Set(None),
            usage_count: Set(0),
            identity_id: Set(self.identity_id),
            hash_format: Set(None),
            lookup: Set(None),
            import_source_id: Set(None),
            upgrade_on_use: Set(false),
            holds_roles: Set(false),
            expiring_notice_for: Set(None),
            ..Default::default()
        };
        limits::set_new::<Entity>(&mut row, self.limits)?;
        Ok(row)
    }
}

/// Changes to a key's attributes; `None` leaves a field alone, and for the
/// optional ones `Some(None)` clears it.
#[derive(Clone, Debug, Default)]
pub struct KeyChanges {
    pub name: Option<String>,
    pub description: Option<String>,
    pub scopes: Option<Vec<String>>,
    pub expires_at: Option<Option<DateTime<Utc>>>,
    pub metadata: Option<Option<Json>>,
    /// Rate limit, allow-list and credits.
    pub limits: LimitChanges,
    /// A new identity (`Some(None)` detaches the key).
    pub identity_id: Option<Option<String>>,
}

/// Stores a new key in the transaction's org.
pub async fn insert(tx: &OrgTx, key: NewKeyRow) -> Result<Model> {
    Ok(key.into_row(tx.org())?.insert(tx.conn()).await?)
}

/// The key `id` of `org`.
pub async fn find(db: &impl ConnectionTrait, org: &str, id: &str) -> Result<Option<Model>> {
    find_in(db, OrgScope::Org(org), id).await
}

/// The key `id` in `scope` (one org, or every org for platform verification).
pub async fn find_in(db: &impl ConnectionTrait, scope: OrgScope<'_>, id: &str) -> Result<Option<Model>> {
    super::find_in::<Entity>(db, [Column::Id, Column::OrgId], scope, id).await
}

/// Up to `limit` keys of `org` after `after_id`, in id (creation) order.
pub async fn list(
    db: &impl ConnectionTrait,
    org: &str,
    filter: &KeyFilter,
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
        condition = condition.add(Column::Environment.eq(environment));
    }
    if let Some(identity) = &filter.identity_id {
        condition = condition.add(Column::IdentityId.eq(identity.as_str()));
    }
    if let Some(prefix) = &filter.name_prefix {
        let escaped = prefix.replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_");
        condition = condition.add(Expr::col(Column::Name).like(LikeExpr::new(format!("{escaped}%")).escape('\\')));
    }
    Ok(Entity::find().filter(condition).order_by_asc(Column::Id).limit(limit).all(db).await?)
}

/// How many keys of `org` have `status`, counting no further than `up_to`
/// (an exact count reads an index entry per key).
pub async fn count_up_to(db: &impl ConnectionTrait, org: &str, status: KeyStatus, up_to: u64) -> Result<u64> {
    let keys = Entity::find().filter(Column::OrgId.eq(org)).filter(Column::Status.eq(status)).limit(up_to);
    Ok(keys.count(db).await?)
}

/// Applies `changes` to `key`, loaded in the transaction's org.
pub async fn update(tx: &OrgTx, key: Model, changes: KeyChanges) -> Result<Model> {
    let mut row = key.into_active_model();
    if let Some(name) = changes.name {
        row.name = Set(name);
    }
    if let Some(description) = changes.description {
        row.description = Set(description);
    }
    if let Some(scopes) = changes.scopes {
        row.scopes = Set(serde_json::json!(scopes));
    }
    if let Some(expires_at) = changes.expires_at {
        row.expires_at = Set(expires_at);
    }
    if let Some(metadata) = changes.metadata {
        row.metadata = Set(metadata);
    }
    limits::change::<Entity>(tx, &mut row, changes.limits).await?;
    if let Some(identity) = changes.identity_id {
        row.identity_id = Set(identity);
    }
    row.updated_at = Set(super::now());
    Ok(row.update(tx.conn()).await?)
}

/// Marks `key`, loaded in the transaction's org, revoked now.
pub async fn revoke(tx: &OrgTx, key: Model, revoked_by: String, reason: &str) -> Result<Model> {
    let now = super::now();
    let mut row = key.into_active_model();
    row.status = Set(KeyStatus::Revoked);
    row.revoked_at = Set(Some(now));
    row.revoked_by = Set(Some(revoked_by));
    row.revocation_reason = Set(Some(reason.to_owned()));
    row.updated_at = Set(now);
    Ok(row.update(tx.conn()).await?)
}

impl super::roles::RoleHolder for Entity {
    const COLUMNS: [Column; 3] = [Column::Id, Column::OrgId, Column::HoldsRoles];
}

/// Deletes key `id` of the transaction's org, with the roles it held;
/// false if there was none.
pub async fn delete(tx: &OrgTx, id: &str) -> Result<bool> {
    super::roles::forget_holder(tx, id).await?;
    let result =
        Entity::delete_many().filter(Column::Id.eq(id)).filter(Column::OrgId.eq(tx.org())).exec(tx.conn()).await?;
    Ok(result.rows_affected > 0)
}

/// The names of the keys of `org` among `ids`, by id.
pub async fn names(
    db: &impl ConnectionTrait,
    org: &str,
    ids: &[String],
) -> Result<std::collections::HashMap<String, String>> {
    if ids.is_empty() {
        return Ok(Default::default());
    }
    let rows: Vec<(String, String)> = Entity::find()
        .select_only()
        .column(Column::Id)
        .column(Column::Name)
        .filter(Column::OrgId.eq(org))
        .filter(Column::Id.is_in(ids.iter().cloned()))
        .into_tuple()
        .all(db)
        .await?;
    Ok(rows.into_iter().collect())
}

/// The active keys of identity `identity_id` of the transaction's org.
pub async fn active_of_identity(tx: &OrgTx, identity_id: &str) -> Result<Vec<Model>> {
    Ok(Entity::find()
        .filter(Column::OrgId.eq(tx.org()))
        .filter(Column::IdentityId.eq(identity_id))
        .filter(Column::Status.eq(KeyStatus::Active))
        .all(tx.conn())
        .await?)
}

/// Detaches every key of identity `identity_id` of the transaction's org from it.
pub async fn detach_identity(tx: &OrgTx, identity_id: &str) -> Result<u64> {
    let update = Entity::update_many()
        .col_expr(Column::IdentityId, Expr::value(None::<String>))
        .filter(Column::OrgId.eq(tx.org()))
        .filter(Column::IdentityId.eq(identity_id));
    Ok(update.exec(tx.conn()).await?.rows_affected)
}

/// The org and environment of each key in `ids` that exists, across orgs:
/// for usage reports, which name keys of every org.
pub async fn owners(db: &impl ConnectionTrait, ids: &[&str]) -> Result<Vec<(String, String, Environment)>> {
    Ok(Entity::find()
        .select_only()
        .column(Column::Id)
        .column(Column::OrgId)
        .column(Column::Environment)
        .filter(Column::Id.is_in(ids.iter().copied()))
        .into_tuple()
        .all(db)
        .await?)
}

/// The keys `ids` of `org` that exist.
pub async fn find_many(db: &impl ConnectionTrait, org: &str, ids: &[&str]) -> Result<Vec<Model>> {
    Ok(Entity::find().filter(Column::OrgId.eq(org)).filter(Column::Id.is_in(ids.iter().copied())).all(db).await?)
}
