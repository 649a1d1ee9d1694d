//! The `credit_leases` table: blocks of credits taken from a key or an
//! identity for a sidecar to spend (taking and giving back are
//! `store/credits.rs`'s, which moves the credits).

use chrono::{DateTime, Utc};
use sea_orm::Condition;
use sea_orm::entity::prelude::*;

use super::OrgTx;
use crate::error::Result;

/// A `credit_leases` row: credits taken from a key for a sidecar to spend.
#[sea_orm::model]
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "credit_leases")]
pub struct Model {
    /// `lse_…`.
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    pub org_id: String,
    /// The key, or the identity (`idn_…`), the credits were taken from.
    pub key_id: String,
    pub granted: i64,
    /// The key's next refill when granted: a refill since voids the return.
    pub period: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

impl ActiveModelBehavior for ActiveModel {}

/// The lease `id` of any org, if it still exists: returns come from
/// sidecars, which are platform credentials.
pub async fn find(db: &impl ConnectionTrait, id: &str) -> Result<Option<Model>> {
    Ok(Entity::find_by_id(id.to_owned()).one(db).await?)
}

/// Deletes lease `id`; false when it was gone already (so a return counts
/// once, whoever returns it).
pub async fn delete(tx: &OrgTx, id: &str) -> Result<bool> {
    Ok(Entity::delete_by_id(id.to_owned()).exec(tx.conn()).await?.rows_affected > 0)
}

/// Ends every lease of key or identity `holder_id` of the transaction's org
/// without giving anything back (their credits count as spent).
pub async fn forget(tx: &OrgTx, holder_id: &str) -> Result<()> {
    let leases = Entity::delete_many().filter(Column::KeyId.eq(holder_id)).filter(Column::OrgId.eq(tx.org()));
    leases.exec(tx.conn()).await?;
    Ok(())
}

/// Deletes up to `limit` leases that ended before `before` (their unspent
/// credits count as spent).
pub async fn purge(db: &impl ConnectionTrait, before: DateTime<Utc>, limit: u64) -> Result<u64> {
    super::delete_batch::<Entity>(db, Column::Id, Condition::all().add(Column::ExpiresAt.lt(before)), limit).await
}
