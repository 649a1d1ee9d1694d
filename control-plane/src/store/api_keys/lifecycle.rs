//! Key lifecycle queries for the sweeps that span orgs: keys due to
//! expire, expiries to announce, and ended keys for retention.

use chrono::{DateTime, Utc};
use sea_orm::ActiveValue::Set;
use sea_orm::entity::prelude::*;
use sea_orm::{Condition, ExprTrait, IntoActiveModel, QueryOrder, QuerySelect};

use super::{Column, Entity, KeyStatus, Model};
use crate::error::Result;
use crate::store::OrgTx;

/// Marks `key`, loaded in the transaction's org, expired.
pub async fn mark_expired(tx: &OrgTx, key: Model) -> Result<Model> {
    let mut row = key.into_active_model();
    row.status = Set(KeyStatus::Expired);
    row.updated_at = Set(crate::store::now());
    Ok(row.update(tx.conn()).await?)
}

/// Up to `limit` active keys, of every org, whose expiry is at or before
/// `now`, soonest first: `(org, id)` for the expiry sweep, which spans orgs.
pub async fn due_to_expire(db: &impl ConnectionTrait, now: DateTime<Utc>, limit: u64) -> Result<Vec<(String, String)>> {
    Ok(Entity::find()
        .select_only()
        .column(Column::OrgId)
        .column(Column::Id)
        .filter(Column::Status.eq(KeyStatus::Active))
        .filter(Column::ExpiresAt.lte(now))
        .order_by_asc(Column::ExpiresAt)
        .limit(limit)
        .into_tuple()
        .all(db)
        .await?)
}

/// Up to `limit` active keys, of every org, that expire after `now` and by
/// `by`, and whose expiry was not announced yet: `(org, id)`, soonest first.
pub async fn due_expiring_notice(
    db: &impl ConnectionTrait,
    now: DateTime<Utc>,
    by: DateTime<Utc>,
    limit: u64,
) -> Result<Vec<(String, String)>> {
    let unannounced = Condition::any()
        .add(Column::ExpiringNoticeFor.is_null())
        .add(Expr::col(Column::ExpiringNoticeFor).ne(Expr::col(Column::ExpiresAt)));
    Ok(Entity::find()
        .select_only()
        .column(Column::OrgId)
        .column(Column::Id)
        .filter(Column::Status.eq(KeyStatus::Active))
        .filter(Column::ExpiresAt.gt(now))
        .filter(Column::ExpiresAt.lte(by))
        .filter(unannounced)
        .order_by_asc(Column::ExpiresAt)
        .limit(limit)
        .into_tuple()
        .all(db)
        .await?)
}

/// Records that `key`'s current expiry was announced.
pub async fn mark_expiring_noticed(tx: &OrgTx, key: Model) -> Result<Model> {
    let expires_at = key.expires_at;
    let mut row = key.into_active_model();
    row.expiring_notice_for = Set(expires_at);
    Ok(row.update(tx.conn()).await?)
}

/// Up to `limit` keys, of every org, that expired or were revoked before
/// `cutoff`: `(org, id)` for key retention, which spans orgs.
pub async fn ended_before(
    db: &impl ConnectionTrait,
    cutoff: DateTime<Utc>,
    limit: u64,
) -> Result<Vec<(String, String)>> {
    let expired = Condition::all().add(Column::Status.eq(KeyStatus::Expired)).add(Column::ExpiresAt.lt(cutoff));
    let revoked = Condition::all().add(Column::Status.eq(KeyStatus::Revoked)).add(Column::RevokedAt.lt(cutoff));
    Ok(Entity::find()
        .select_only()
        .column(Column::OrgId)
        .column(Column::Id)
        .filter(Condition::any().add(expired).add(revoked))
        .limit(limit)
        .into_tuple()
        .all(db)
        .await?)
}
