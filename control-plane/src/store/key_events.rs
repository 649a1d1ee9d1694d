//! The key-event log (ARCHITECTURE.md, "A revocation"): one row per change a sidecar must learn
//! about, numbered gap-free in commit order.

use chrono::{DateTime, Utc};
use sea_orm::entity::prelude::*;
use sea_orm::{DbBackend, QueryOrder, QuerySelect, Set, Statement};

use super::ChangeTx;
use crate::error::Result;

/// A `key_events` row.
#[sea_orm::model]
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "key_events")]
pub struct Model {
    /// Position in the log.
    #[sea_orm(primary_key, auto_increment = false)]
    pub seq: i64,
    pub key_id: String,
    pub org_id: String,
    pub kind: KeyEventKind,
    /// When the change committed.
    pub created_at: DateTime<Utc>,
}

impl ActiveModelBehavior for ActiveModel {}

/// What happened to a key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, EnumIter, DeriveActiveEnum)]
#[sea_orm(rs_type = "String", db_type = "String(StringLen::None)")]
pub enum KeyEventKind {
    /// Revoked: deny from now on.
    #[sea_orm(string_value = "revoked")]
    Revoked,
    /// Attributes changed: re-verify.
    #[sea_orm(string_value = "updated")]
    Updated,
    /// Deleted: deny from now on.
    #[sea_orm(string_value = "deleted")]
    Deleted,
    /// Marked expired by the expiry sweep: deny from now on.
    #[sea_orm(string_value = "expired")]
    Expired,
}

/// The Postgres channel notified (at commit) by every transaction that
/// appends key events, so every replica's tailer wakes at once.
pub const CHANNEL: &str = "keyplane_key_events";

/// Appends an event in the caller's transaction. On Postgres a global
/// transaction-scoped advisory lock serialises appends, so seq order is
/// commit order and a tailer reading `seq > last` never skips a late commit;
/// the commit notifies [`CHANNEL`] (Postgres sends one notification per
/// transaction however many events it appended).
pub async fn append(tx: &ChangeTx, key_id: &str, kind: KeyEventKind) -> Result<i64> {
    tx.wrote_key_events();
    super::advisory_lock(tx.conn(), "key_events").await?;
    if tx.conn().get_database_backend() == DbBackend::Postgres {
        let notify = Statement::from_sql_and_values(DbBackend::Postgres, "SELECT pg_notify($1, '')", [CHANNEL.into()]);
        tx.conn().execute_raw(notify).await?;
    }
    let head = head_seq(tx.conn()).await?;
    let seq = head + 1;
    ActiveModel {
        seq: Set(seq),
        key_id: Set(key_id.to_owned()),
        org_id: Set(tx.org().to_owned()),
        kind: Set(kind),
        created_at: Set(super::now()),
    }
    .insert(tx.conn())
    .await?;
    Ok(seq)
}

/// Newest seq in the log (0 when empty).
pub async fn head_seq(db: &impl ConnectionTrait) -> Result<i64> {
    let newest = Entity::find().order_by_desc(Column::Seq).limit(1).one(db).await?;
    Ok(newest.map_or(0, |event| event.seq))
}

/// Up to `limit` events after `after_seq`, oldest first.
pub async fn after(db: &impl ConnectionTrait, after_seq: i64, limit: u64) -> Result<Vec<Model>> {
    Ok(Entity::find().filter(Column::Seq.gt(after_seq)).order_by_asc(Column::Seq).limit(limit).all(db).await?)
}

/// Oldest retained seq (None when the log is empty).
pub async fn oldest_seq(db: &impl ConnectionTrait) -> Result<Option<i64>> {
    let oldest = Entity::find().order_by_asc(Column::Seq).limit(1).one(db).await?;
    Ok(oldest.map(|event| event.seq))
}

/// Deletes events created before `cutoff`, always keeping the newest one
/// (it carries the head position). Returns how many were deleted.
pub async fn delete_before(db: &impl ConnectionTrait, cutoff: DateTime<Utc>) -> Result<u64> {
    let head = head_seq(db).await?;
    let result =
        Entity::delete_many().filter(Column::CreatedAt.lt(cutoff)).filter(Column::Seq.lt(head)).exec(db).await?;
    Ok(result.rows_affected)
}
