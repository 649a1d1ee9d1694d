//! The key-event log (DESIGN §5): one row per change a sidecar must learn
//! about, numbered gap-free in commit order.

use chrono::{DateTime, Utc};
use sea_orm::entity::prelude::*;
use sea_orm::{QueryOrder, QuerySelect, Set};

use super::OrgTx;
use crate::error::Result;

/// A `key_events` row.
#[sea_orm::model]
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "key_events")]
pub struct Model {
    /// Position in the log.
    #[sea_orm(primary_key, auto_increment = false)]
    pub seq: i64,
    /// Key concerned.
    pub key_id: String,
    /// Org of the key.
    pub org_id: String,
    /// `revoked`, `updated`, `deleted` or `expired`.
    pub kind: String,
    /// When the change committed.
    pub created_at: DateTime<Utc>,
}

impl ActiveModelBehavior for ActiveModel {}

/// What happened to a key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyEventKind {
    /// Revoked: deny from now on.
    Revoked,
    /// Attributes changed: re-verify.
    Updated,
    /// Deleted: deny from now on.
    Deleted,
}

impl KeyEventKind {
    /// Stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Revoked => "revoked",
            Self::Updated => "updated",
            Self::Deleted => "deleted",
        }
    }
}

/// Appends an event in the caller's transaction. On Postgres a global
/// transaction-scoped advisory lock serialises appends, so seq order is
/// commit order and a tailer reading `seq > last` never skips a late commit.
pub async fn append(tx: &OrgTx, key_id: &str, kind: KeyEventKind) -> Result<i64> {
    super::advisory_lock(tx.conn(), "key_events").await?;
    let head = head_seq(tx.conn()).await?;
    let seq = head + 1;
    ActiveModel {
        seq: Set(seq),
        key_id: Set(key_id.to_owned()),
        org_id: Set(tx.org().to_owned()),
        kind: Set(kind.as_str().to_owned()),
        created_at: Set(super::now()),
    }
    .insert(tx.conn())
    .await?;
    Ok(seq)
}

/// Newest seq in the log (0 when empty).
pub async fn head_seq(db: &impl ConnectionTrait) -> Result<i64> {
    let newest = Entity::find()
        .order_by_desc(Column::Seq)
        .limit(1)
        .one(db)
        .await?;
    Ok(newest.map_or(0, |event| event.seq))
}
