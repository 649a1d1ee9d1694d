//! The `webhook_events` table: published events, the body of every delivery.

use chrono::{DateTime, Utc};
use sea_orm::entity::prelude::*;

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
    /// JSON array of the channels it was published to; NULL for none.
    #[sea_orm(column_type = "JsonBinary", nullable)]
    pub channels: Option<Json>,
}

impl Model {
    /// The channels it was published to.
    pub fn channel_list(&self) -> Vec<String> {
        super::list_from_column(self.channels.as_ref())
    }
}

impl ActiveModelBehavior for ActiveModel {}

/// What a new event says; see [`new`].
#[derive(Clone, Debug, Default)]
pub struct NewEvent {
    pub event_type: String,
    pub payload: String,
    pub idempotency_key: Option<String>,
    pub channels: Vec<String>,
}

/// A new event of the transaction's org, published at `published_at`; not
/// stored until [`insert_all`].
pub fn new(tx: &OrgTx, event: NewEvent, published_at: DateTime<Utc>) -> Model {
    Model {
        id: crate::crypto::new_id("msg_"),
        org_id: tx.org().to_owned(),
        event_type: event.event_type,
        payload: event.payload,
        idempotency_key: event.idempotency_key,
        created_at: published_at,
        channels: super::list_column(&event.channels),
    }
}

/// Stores `events`, made by [`new`] for the transaction's org.
pub async fn insert_all(tx: &OrgTx, events: Vec<Model>) -> Result<()> {
    // Seven columns a row: well inside the smallest bind limit (SQLite's 32,766).
    super::insert_chunked::<Entity>(tx, events, 1_000).await
}

/// The events of `org` published with one of `keys`.
pub async fn find_by_idempotency_keys(db: &impl ConnectionTrait, org: &str, keys: &[&str]) -> Result<Vec<Model>> {
    if keys.is_empty() {
        return Ok(Vec::new());
    }
    Ok(Entity::find()
        .filter(Column::OrgId.eq(org))
        .filter(Column::IdempotencyKey.is_in(keys.iter().copied()))
        .all(db)
        .await?)
}

/// Event `id` of `org`.
pub async fn find(db: &impl ConnectionTrait, org: &str, id: &str) -> Result<Option<Model>> {
    Ok(Entity::find_by_id(id.to_owned()).filter(Column::OrgId.eq(org)).one(db).await?)
}

/// Events by id, across orgs: for the dispatcher, which sends every org's
/// deliveries and reads ids from deliveries it has claimed.
pub async fn find_for_dispatch(db: &impl ConnectionTrait, ids: &[String]) -> Result<Vec<Model>> {
    Ok(Entity::find().filter(Column::Id.is_in(ids.iter().map(String::as_str))).all(db).await?)
}
