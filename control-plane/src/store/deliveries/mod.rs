//! The `webhook_deliveries` table (one event on its way to one subscription)
//! and, in `attempts.rs`, `webhook_attempts` (every HTTP attempt of a delivery).
//!
//! API reads and changes take the org. The dispatcher's claim spans orgs by
//! nature; what it then writes names the org of the delivery it claimed.

use chrono::{DateTime, Utc};
use sea_orm::entity::prelude::*;
use sea_orm::sea_query::{LockBehavior, LockType, Query};
use sea_orm::{ActiveValue::Set, Condition, DbBackend, ExprTrait, QueryOrder, QuerySelect};
use serde::Serialize;

use super::{ChangeTx, events};
use crate::error::Result;

mod attempts;

pub use attempts::{AttemptRecord, NextStep, attempt, attempts, record_attempts};

/// A delivery row.
#[sea_orm::model]
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "webhook_deliveries")]
pub struct Model {
    /// Delivery id, `dlv_…`.
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    pub org_id: String,
    pub subscription_id: String,
    pub event_id: String,
    /// Copied from the event, for filtering.
    pub event_type: String,
    pub status: DeliveryStatus,
    pub attempt_count: i32,
    /// When the next attempt is due; while an attempt runs, the end of its lease.
    pub next_attempt_at: DateTime<Utc>,
    pub last_status_code: Option<i32>,
    pub last_error: Option<String>,
    pub created_at: DateTime<Utc>,
    /// When it succeeded or failed for good.
    pub finished_at: Option<DateTime<Utc>>,
}

impl ActiveModelBehavior for ActiveModel {}

/// Where a delivery stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, EnumIter, DeriveActiveEnum, Serialize)]
#[sea_orm(rs_type = "String", db_type = "String(StringLen::None)")]
#[serde(rename_all = "snake_case")]
pub enum DeliveryStatus {
    /// Waiting for its next attempt (or in one, under a lease).
    #[sea_orm(string_value = "pending")]
    Pending,
    /// Delivered.
    #[sea_orm(string_value = "succeeded")]
    Succeeded,
    /// Dead-lettered: the last attempt failed, or the endpoint is gone.
    #[sea_orm(string_value = "failed")]
    Failed,
}

impl DeliveryStatus {
    /// The stored name, for messages and audit metadata.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
        }
    }
}

/// What [`list`] keeps; `None` keeps every delivery.
#[derive(Debug, Default)]
pub struct DeliveryFilter {
    pub subscription_id: Option<String>,
    pub status: Option<DeliveryStatus>,
    pub event_type: Option<String>,
    /// Created at or after.
    pub created_after: Option<DateTime<Utc>>,
    pub created_before: Option<DateTime<Utc>>,
}

/// A pending delivery of `event` to each of `subscription_ids`, due at once
/// or, already claimed by the caller's dispatcher, leased until
/// `leased_until`; not stored until [`insert_all`].
pub fn new_for_event(
    event: &events::Model,
    subscription_ids: &[String],
    leased_until: Option<DateTime<Utc>>,
) -> impl Iterator<Item = Model> {
    subscription_ids.iter().map(move |subscription_id| Model {
        id: crate::crypto::new_id("dlv_"),
        org_id: event.org_id.clone(),
        subscription_id: subscription_id.clone(),
        event_id: event.id.clone(),
        event_type: event.event_type.clone(),
        status: DeliveryStatus::Pending,
        attempt_count: 0,
        next_attempt_at: leased_until.unwrap_or(event.created_at),
        last_status_code: None,
        last_error: None,
        created_at: event.created_at,
        finished_at: None,
    })
}

/// Stores `deliveries` of the transaction's org's events (those not leased
/// to this process's dispatcher wake it at commit).
pub async fn insert_all(tx: &ChangeTx, deliveries: &[Model]) -> Result<()> {
    let now = super::now();
    if deliveries.iter().any(|delivery| delivery.next_attempt_at <= now) {
        tx.wrote_due_deliveries();
    }
    // Twelve columns a row: well inside the smallest bind limit (SQLite's 32,766).
    super::insert_chunked::<Entity>(tx, deliveries.iter().cloned(), 2_000).await
}

/// Delivery `id` of `org`.
pub async fn find(db: &impl ConnectionTrait, org: &str, id: &str) -> Result<Option<Model>> {
    Ok(Entity::find_by_id(id.to_owned()).filter(Column::OrgId.eq(org)).one(db).await?)
}

/// Up to `limit` deliveries of `org` before `before_id`, newest first.
pub async fn list(
    db: &impl ConnectionTrait,
    org: &str,
    filter: &DeliveryFilter,
    before_id: Option<&str>,
    limit: u64,
) -> Result<Vec<Model>> {
    Ok(list_query(db.get_database_backend(), org, filter, before_id, limit).all(db).await?)
}

/// The query [`list`] runs.
///
/// On Postgres the org is matched with `= ANY(<an array of it>)` and ordered on
/// first, so the only way to the order is an index that starts with the
/// org. With `org_id = $1` the planner may walk the primary key backwards
/// instead, reading every newer row of other orgs: an org whose latest
/// rows are old (or an org the statistics call large) then pages slowly
/// (BENCHMARKS.md, "Soak": 100,000 rows read for a page of 50).
pub fn list_query(
    backend: DbBackend,
    org: &str,
    filter: &DeliveryFilter,
    before_id: Option<&str>,
    limit: u64,
) -> Select<Entity> {
    let postgres = backend == DbBackend::Postgres;
    let in_org = if postgres {
        // Not `ARRAY[$1]`: sea-query reads `[…]` as a quoted name.
        Expr::cust_with_values(
            r#""webhook_deliveries"."org_id" = ANY(ARRAY_APPEND(CAST(NULL AS TEXT ARRAY), $1))"#,
            [org],
        )
    } else {
        Column::OrgId.eq(org)
    };
    let mut condition = Condition::all().add(in_org);
    if let Some(before) = before_id {
        condition = condition.add(Column::Id.lt(before));
    }
    if let Some(subscription) = &filter.subscription_id {
        condition = condition.add(Column::SubscriptionId.eq(subscription.as_str()));
    }
    if let Some(status) = filter.status {
        condition = condition.add(Column::Status.eq(status));
    }
    if let Some(event_type) = &filter.event_type {
        condition = condition.add(Column::EventType.eq(event_type.as_str()));
    }
    if let Some(after) = filter.created_after {
        condition = condition.add(Column::CreatedAt.gte(after));
    }
    if let Some(before) = filter.created_before {
        condition = condition.add(Column::CreatedAt.lt(before));
    }
    let query = Entity::find().filter(condition);
    let query = if postgres { query.order_by_desc(Column::OrgId) } else { query };
    query.order_by_desc(Column::Id).limit(limit)
}

/// Claims up to `limit` pending deliveries of any org that are due at `now`
/// by moving their due time to `lease_until`: no other worker sees them
/// until then, and if this process dies they become due again by
/// themselves. `FOR UPDATE SKIP LOCKED` lets workers on one Postgres claim
/// concurrently without waiting on each other; SQLite has one writer.
pub async fn claim_due(
    db: &impl ConnectionTrait,
    now: DateTime<Utc>,
    lease_until: DateTime<Utc>,
    limit: u64,
) -> Result<Vec<Model>> {
    let due = Query::select()
        .column(Column::Id)
        .from(Entity)
        .and_where(Expr::col(Column::Status).eq(DeliveryStatus::Pending))
        .and_where(Expr::col(Column::NextAttemptAt).lte(now))
        .order_by(Column::NextAttemptAt, sea_orm::Order::Asc)
        .limit(limit)
        .lock_with_behavior(LockType::Update, LockBehavior::SkipLocked)
        .to_owned();
    Ok(Entity::update_many()
        .col_expr(Column::NextAttemptAt, Expr::val(lease_until))
        .filter(Column::Id.in_subquery(due))
        .exec_with_returning(db)
        .await?)
}

/// Makes those of `leased` (deliveries this process leased and did not
/// send) whose lease still holds due at once, for any dispatcher. A lease
/// is recognised by its exact end, so a delivery whose lease ran out and
/// that another worker claimed since is left alone.
pub async fn release(db: &impl ConnectionTrait, leased: &[Model]) -> Result<u64> {
    let now = super::now();
    let mut by_lease: std::collections::BTreeMap<DateTime<Utc>, Vec<&str>> = Default::default();
    for delivery in leased.iter().filter(|d| d.next_attempt_at > now) {
        by_lease.entry(delivery.next_attempt_at).or_default().push(&delivery.id);
    }
    let mut released = 0;
    for (lease_until, ids) in by_lease {
        released += Entity::update_many()
            .col_expr(Column::NextAttemptAt, Expr::val(now))
            .filter(Column::Id.is_in(ids))
            .filter(Column::Status.eq(DeliveryStatus::Pending))
            .filter(Column::NextAttemptAt.eq(lease_until))
            .exec(db)
            .await?
            .rows_affected;
    }
    Ok(released)
}

/// When the earliest pending delivery of any org is due.
pub async fn next_due(db: &impl ConnectionTrait) -> Result<Option<DateTime<Utc>>> {
    Ok(Entity::find()
        .select_only()
        .column(Column::NextAttemptAt)
        .filter(Column::Status.eq(DeliveryStatus::Pending))
        .order_by_asc(Column::NextAttemptAt)
        .limit(1)
        .into_tuple()
        .one(db)
        .await?)
}

/// Puts a claimed delivery of `org` back without an attempt, due at `until`
/// (rate limit or per-endpoint concurrency reached).
pub async fn defer(db: &impl ConnectionTrait, org: &str, id: &str, until: DateTime<Utc>) -> Result<()> {
    Entity::update_many()
        .col_expr(Column::NextAttemptAt, Expr::val(until))
        .filter(Column::Id.eq(id))
        .filter(Column::OrgId.eq(org))
        .filter(Column::Status.eq(DeliveryStatus::Pending))
        .exec(db)
        .await?;
    Ok(())
}

/// Makes a finished delivery of the transaction's org, loaded with
/// [`find`], pending again and due now.
pub async fn retry(tx: &ChangeTx, delivery: Model) -> Result<Model> {
    tx.wrote_due_deliveries();
    let mut row: ActiveModel = delivery.into();
    row.status = Set(DeliveryStatus::Pending);
    row.next_attempt_at = Set(super::now());
    row.finished_at = Set(None);
    Ok(row.update(tx.conn()).await?)
}

/// Makes every failed delivery of a subscription of the transaction's org
/// created at or after `since` pending again, due now; returns how many.
pub async fn recover_failed(tx: &ChangeTx, subscription_id: &str, since: DateTime<Utc>) -> Result<u64> {
    tx.wrote_due_deliveries();
    let result = Entity::update_many()
        .col_expr(Column::Status, Expr::val(DeliveryStatus::Pending))
        .col_expr(Column::NextAttemptAt, Expr::val(super::now()))
        .col_expr(Column::FinishedAt, Expr::val(None::<DateTime<Utc>>))
        .filter(Column::OrgId.eq(tx.org()))
        .filter(Column::SubscriptionId.eq(subscription_id))
        .filter(Column::Status.eq(DeliveryStatus::Failed))
        .filter(Column::CreatedAt.gte(since))
        .exec(tx.conn())
        .await?;
    Ok(result.rows_affected)
}

/// Deletes up to `limit` deliveries (of any org) that succeeded before
/// `cutoff`, with their attempts; returns how many deliveries.
pub async fn purge_succeeded(db: &impl ConnectionTrait, cutoff: DateTime<Utc>, limit: u64) -> Result<u64> {
    let finished =
        Condition::all().add(Column::Status.eq(DeliveryStatus::Succeeded)).add(Column::FinishedAt.lt(cutoff));
    let victims = super::batch_keys::<Entity>(db, Column::Id, finished, limit).await?;
    if victims.is_empty() {
        return Ok(0);
    }
    attempt::Entity::delete_many()
        .filter(attempt::Column::DeliveryId.is_in(victims.iter().map(String::as_str)))
        .exec(db)
        .await?;
    super::delete_keys::<Entity>(db, Column::Id, victims).await
}

/// Deletes up to `limit` events older than `cutoff` that no delivery
/// refers to any more; returns how many.
pub async fn purge_unreferenced_events(db: &impl ConnectionTrait, cutoff: DateTime<Utc>, limit: u64) -> Result<u64> {
    use sea_orm::sea_query::Query;
    let referenced = Query::select()
        .column(Column::EventId)
        .from(Entity)
        .and_where(Expr::col((Entity, Column::EventId)).equals((events::Entity, events::Column::Id)))
        .to_owned();
    let unreferenced = Condition::all().add(events::Column::CreatedAt.lt(cutoff)).add(Expr::exists(referenced).not());
    super::delete_batch::<events::Entity>(db, events::Column::Id, unreferenced, limit).await
}
