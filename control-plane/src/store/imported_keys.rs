//! Keys brought from another system, in the `api_keys` table: finding them
//! by lookup, what an import already brought, storing them (revoked ones
//! too), and re-hashing one on use.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use sea_orm::ActiveValue::Set;
use sea_orm::entity::prelude::*;
use sea_orm::{ExprTrait, PaginatorTrait, QueryOrder, QuerySelect};

use super::api_keys::{ActiveModel, Column, Entity, KeyStatus, Model, NewKeyRow};
use super::{OrgScope, OrgTx};
use crate::crypto::imported::HashFormat;
use crate::error::Result;

/// Imported keys stored under one of `lookups` in `scope`, at most `limit`.
pub async fn find_by_lookups(
    db: &impl ConnectionTrait,
    scope: OrgScope<'_>,
    lookups: &[String],
    limit: u64,
) -> Result<Vec<Model>> {
    let mut query = Entity::find()
        .filter(Column::Lookup.is_in(lookups.iter().map(String::as_str)))
        .filter(Column::HashFormat.is_not_null());
    if let OrgScope::Org(org) = scope {
        query = query.filter(Column::OrgId.eq(org));
    }
    // The longest (most specific) lookups first, should nested ones give more than `limit`.
    Ok(query.order_by_desc(Expr::cust("LENGTH(lookup)")).limit(limit).all(db).await?)
}

/// How many keys, of any org, are stored under each of `lookups` (those
/// with none are absent), in one query.
pub async fn count_by_lookup(db: &impl ConnectionTrait, lookups: &[&str]) -> Result<HashMap<String, u64>> {
    if lookups.is_empty() {
        return Ok(HashMap::new());
    }
    let counts: Vec<(Option<String>, i64)> = Entity::find()
        .select_only()
        .column(Column::Lookup)
        .column_as(Column::Id.count(), "keys")
        .filter(Column::Lookup.is_in(lookups.iter().copied()))
        .group_by(Column::Lookup)
        .into_tuple()
        .all(db)
        .await?;
    Ok(counts.into_iter().filter_map(|(lookup, n)| Some((lookup?, u64::try_from(n).unwrap_or(0)))).collect())
}

/// Which of `source_ids` `org` has already imported, and as which keys.
pub async fn imported_sources(
    db: &impl ConnectionTrait,
    org: &str,
    source_ids: &[&str],
) -> Result<HashMap<String, String>> {
    let found: Vec<(Option<String>, String)> = Entity::find()
        .select_only()
        .column(Column::ImportSourceId)
        .column(Column::Id)
        .filter(Column::OrgId.eq(org))
        .filter(Column::ImportSourceId.is_in(source_ids.iter().copied()))
        .into_tuple()
        .all(db)
        .await?;
    Ok(found.into_iter().filter_map(|(source, id)| Some((source?, id))).collect())
}

/// An imported key about to be stored.
#[derive(Clone, Debug)]
pub struct ImportedKeyRow {
    /// Its attributes, as for a key Keyplane issues (`secret_hash` is the old system's).
    pub key: NewKeyRow,
    pub hash_format: HashFormat,
    pub lookup: String,
    pub source_id: String,
    pub upgrade_on_use: bool,
    /// When the old system created it (default: now).
    pub created_at: Option<DateTime<Utc>>,
    /// Revoked there: when, and why.
    pub revoked: Option<(DateTime<Utc>, String)>,
}

/// Stores an imported key in the transaction's org.
pub async fn insert(tx: &OrgTx, imported: ImportedKeyRow) -> Result<Model> {
    let mut row: ActiveModel = imported.key.into_row(tx.org())?;
    row.hash_format = Set(Some(imported.hash_format));
    row.lookup = Set(Some(imported.lookup));
    row.import_source_id = Set(Some(imported.source_id));
    row.upgrade_on_use = Set(imported.upgrade_on_use);
    if let Some(created_at) = imported.created_at {
        row.created_at = Set(created_at);
    }
    if let Some((at, reason)) = imported.revoked {
        row.status = Set(KeyStatus::Revoked);
        row.revoked_at = Set(Some(at));
        row.revoked_by = Set(Some("import".into()));
        row.revocation_reason = Set(Some(reason));
    }
    Ok(row.insert(tx.conn()).await?)
}

/// Replaces imported key `id`'s hash `from` by Keyplane's argon2id `phc`;
/// false when the key changed in between (another replica upgraded it).
pub async fn upgrade(tx: &OrgTx, id: &str, from: &str, phc: String) -> Result<bool> {
    let result = Entity::update_many()
        .col_expr(Column::SecretHash, Expr::val(phc))
        .col_expr(Column::HashFormat, Expr::val(HashFormat::KeyplaneArgon2id))
        .col_expr(Column::UpgradeOnUse, Expr::val(false))
        .filter(Column::Id.eq(id))
        .filter(Column::OrgId.eq(tx.org()))
        .filter(Column::SecretHash.eq(from))
        .exec(tx.conn())
        .await?;
    Ok(result.rows_affected > 0)
}

/// Keys, of every org, still on another system's hash.
pub async fn count_on_legacy_hashes(db: &impl ConnectionTrait) -> Result<u64> {
    Ok(on_legacy_hashes().count(db).await?)
}

/// The keys [`count_on_legacy_hashes`] counts: read through the partial
/// index on imported keys' `hash_format`, never every key.
pub fn on_legacy_hashes() -> Select<Entity> {
    Entity::find().filter(Column::HashFormat.is_not_null().and(Column::HashFormat.ne(HashFormat::KeyplaneArgon2id)))
}
