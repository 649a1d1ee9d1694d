//! `rate_limit_windows`: the requests of a key's global rate limit granted
//! to sidecars per window. Grants run in the key's [`OrgTx`], so a
//! read-then-write is an atomic increment (see `store::credits`).

use sea_orm::ActiveValue::Set;
use sea_orm::IntoActiveModel;
use sea_orm::entity::prelude::*;

use super::OrgTx;
use crate::error::Result;

/// A `rate_limit_windows` row.
#[sea_orm::model]
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "rate_limit_windows")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub key_id: String,
    /// Milliseconds since the Unix epoch, a multiple of the window length.
    #[sea_orm(primary_key, auto_increment = false)]
    pub window_start: i64,
    pub org_id: String,
    pub granted: i64,
}

impl ActiveModelBehavior for ActiveModel {}

/// Grants up to `wanted` of the `limit` requests of key `key_id` (of the
/// transaction's org) in the window starting at `window_start`, but at
/// most a quarter of what is left in it (at least one): how many.
pub async fn grant(tx: &OrgTx, key_id: &str, window_start: i64, limit: i64, wanted: i64) -> Result<i64> {
    let found = Entity::find_by_id((key_id.to_owned(), window_start)).one(tx.conn()).await?;
    let granted_before = found.as_ref().map_or(0, |row| row.granted);
    let left = (limit - granted_before).max(0);
    let granted = wanted.min((left + 3) / 4).min(left);
    if granted == 0 {
        return Ok(0);
    }
    match found {
        Some(row) => {
            let mut row = row.into_active_model();
            row.granted = Set(granted_before + granted);
            row.update(tx.conn()).await?;
        }
        None => {
            let row = ActiveModel {
                key_id: Set(key_id.to_owned()),
                window_start: Set(window_start),
                org_id: Set(tx.org().to_owned()),
                granted: Set(granted),
            };
            row.insert(tx.conn()).await?;
        }
    }
    Ok(granted)
}

/// Deletes windows that started before `before` (milliseconds since the epoch).
pub async fn purge_before(db: &impl ConnectionTrait, before: i64) -> Result<u64> {
    Ok(Entity::delete_many().filter(Column::WindowStart.lt(before)).exec(db).await?.rows_affected)
}
