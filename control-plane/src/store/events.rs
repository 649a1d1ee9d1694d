//! The `webhook_events` table: published events, the body of every delivery.

use chrono::{DateTime, Utc};
use sea_orm::entity::prelude::*;
use sea_orm::{ActiveValue::Set, Condition, ExprTrait};

use super::OrgTx;
use crate::error::Result;

/// A published event. `payload` is the caller's JSON object, byte for byte.
#[sea_orm::model]
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "webhook_events")]
pub struct Model {
    /// Event id, `msg_…`; the `webhook-id` of its deliveries.
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    pub org_id: String,
    pub event_type: String,
    /// JSON object as text.
    pub payload: String,
    pub idempotency_key: Option<String>,
    /// Publication time.
    pub created_at: DateTime<Utc>,
}

impl ActiveModelBehavior for ActiveModel {}

/// Stores a new event of the transaction's org, published now.
pub async fn insert(tx: &OrgTx, event_type: &str, payload: String, idempotency_key: Option<String>) -> Result<Model> {
    let row = ActiveModel {
        id: Set(crate::crypto::new_id("msg_")),
        org_id: Set(tx.org().to_owned()),
        event_type: Set(event_type.to_owned()),
        payload: Set(payload),
        idempotency_key: Set(idempotency_key),
        created_at: Set(super::now()),
    };
    Ok(row.insert(tx.conn()).await?)
}

/// The event of `org` published with `key`.
pub async fn find_by_idempotency_key(db: &impl ConnectionTrait, org: &str, key: &str) -> Result<Option<Model>> {
    Ok(Entity::find().filter(Column::OrgId.eq(org)).filter(Column::IdempotencyKey.eq(key)).one(db).await?)
}

/// Events by id, across orgs: for the dispatcher, which sends every org's
/// deliveries and reads ids from deliveries it has claimed.
pub async fn find_for_dispatch(db: &impl ConnectionTrait, ids: &[String]) -> Result<Vec<Model>> {
    Ok(Entity::find().filter(Column::Id.is_in(ids.iter().map(String::as_str))).all(db).await?)
}

/// Deletes up to `limit` events older than `cutoff` that no delivery
/// refers to any more; returns how many.
pub async fn purge_unreferenced(db: &impl ConnectionTrait, cutoff: DateTime<Utc>, limit: u64) -> Result<u64> {
    use sea_orm::sea_query::Query;
    let referenced = Query::select()
        .column(super::deliveries::Column::EventId)
        .from(super::deliveries::Entity)
        .and_where(
            Expr::col((super::deliveries::Entity, super::deliveries::Column::EventId)).equals((Entity, Column::Id)),
        )
        .to_owned();
    let unreferenced = Condition::all().add(Column::CreatedAt.lt(cutoff)).add(Expr::exists(referenced).not());
    super::delete_batch::<Entity>(db, Column::Id, unreferenced, limit).await
}
