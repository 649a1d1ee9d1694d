//! The `orgs` table: an org's id and display name. An org is registered
//! when it is created (`CreateOrg`) or when a key, identity, role or
//! webhook subscription is first created in it ([`register`]).

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use sea_orm::ActiveValue::Set;
use sea_orm::entity::prelude::*;
use sea_orm::sea_query::{Func, LikeExpr, OnConflict};
use sea_orm::{Condition, ExprTrait, IntoActiveModel, QueryOrder, QuerySelect};

use super::{OrgTx, api_keys, connections, event_types, identities, portal_links, roles, webhooks};
use crate::error::Result;

/// An `orgs` row.
#[sea_orm::model]
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "orgs")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    /// How people see it; its id until named.
    pub display_name: String,
    /// PublishEvent refuses event types that are not in the org's catalog.
    pub require_cataloged_events: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl ActiveModelBehavior for ActiveModel {}

/// What an org holds, counted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Holdings {
    pub keys: u64,
    pub identities: u64,
    pub roles: u64,
    pub subscriptions: u64,
    /// OAuth connections (their tokens sealed).
    pub connections: u64,
}

impl Holdings {
    pub fn is_empty(&self) -> bool {
        *self == Holdings::default()
    }
}

/// Stores the transaction's org, named `display_name`; false if it exists.
pub async fn insert(tx: &OrgTx, display_name: &str) -> Result<bool> {
    let now = super::now();
    let row = ActiveModel {
        id: Set(tx.org().to_owned()),
        display_name: Set(display_name.to_owned()),
        require_cataloged_events: Set(false),
        created_at: Set(now),
        updated_at: Set(now),
    };
    let inserted = Entity::insert(row)
        .on_conflict(OnConflict::column(Column::Id).do_nothing().to_owned())
        .exec_without_returning(tx.conn())
        .await?;
    Ok(inserted == 1)
}

/// Registers the transaction's org if it is not yet (named by its id).
pub async fn register(tx: &OrgTx) -> Result<()> {
    let org = tx.org().to_owned();
    insert(tx, &org).await.map(drop)
}

/// Org `id`.
pub async fn find(db: &impl ConnectionTrait, id: &str) -> Result<Option<Model>> {
    Ok(Entity::find_by_id(id).one(db).await?)
}

/// Up to `limit` orgs after id `after`, in id order; `search` keeps those
/// whose id or display name contains it (ignoring case), `only` those named.
pub async fn list(
    db: &impl ConnectionTrait,
    search: Option<&str>,
    only: Option<&[String]>,
    after: Option<&str>,
    limit: u64,
) -> Result<Vec<Model>> {
    let mut condition = Condition::all();
    if let Some(only) = only {
        condition = condition.add(Column::Id.is_in(only.iter().cloned()));
    }
    if let Some(after) = after {
        condition = condition.add(Column::Id.gt(after));
    }
    if let Some(search) = search {
        let escaped = search.to_lowercase().replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_");
        let like = || LikeExpr::new(format!("%{escaped}%")).escape('\\');
        let lower = |column: Column| Expr::expr(Func::lower(Expr::col(column)));
        condition = condition
            .add(Condition::any().add(lower(Column::Id).like(like())).add(lower(Column::DisplayName).like(like())));
    }
    Ok(Entity::find().filter(condition).order_by_asc(Column::Id).limit(limit).all(db).await?)
}

/// Renames org `org`, loaded in the transaction.
pub async fn rename(tx: &OrgTx, org: Model, display_name: &str) -> Result<Model> {
    let mut row = org.into_active_model();
    row.display_name = Set(display_name.to_owned());
    row.updated_at = Set(super::now());
    Ok(row.update(tx.conn()).await?)
}

/// Sets whether the transaction's org publishes only cataloged event
/// types; false when the org is not registered.
pub async fn set_require_cataloged_events(tx: &OrgTx, required: bool) -> Result<bool> {
    let result = Entity::update_many()
        .col_expr(Column::RequireCatalogedEvents, Expr::val(required))
        .col_expr(Column::UpdatedAt, Expr::val(super::now()))
        .filter(Column::Id.eq(tx.org()))
        .exec(tx.conn())
        .await?;
    Ok(result.rows_affected == 1)
}

/// Deletes the transaction's org row and its event catalog (what it holds
/// is deleted first).
pub async fn delete(tx: &OrgTx) -> Result<bool> {
    event_types::Entity::delete_many().filter(event_types::Column::OrgId.eq(tx.org())).exec(tx.conn()).await?;
    Ok(Entity::delete_by_id(tx.org()).exec(tx.conn()).await?.rows_affected == 1)
}

/// What each of `orgs` holds.
pub async fn holdings(db: &impl ConnectionTrait, orgs: &[String]) -> Result<HashMap<String, Holdings>> {
    let mut counted: HashMap<String, Holdings> = orgs.iter().map(|org| (org.clone(), Holdings::default())).collect();
    if orgs.is_empty() {
        return Ok(counted);
    }
    for (org, count) in count_by_org::<api_keys::Entity>(db, api_keys::Column::OrgId, orgs).await? {
        counted.entry(org).or_default().keys = count;
    }
    for (org, count) in count_by_org::<identities::Entity>(db, identities::Column::OrgId, orgs).await? {
        counted.entry(org).or_default().identities = count;
    }
    for (org, count) in count_by_org::<roles::Entity>(db, roles::Column::OrgId, orgs).await? {
        counted.entry(org).or_default().roles = count;
    }
    for (org, count) in count_by_org::<webhooks::Entity>(db, webhooks::Column::OrgId, orgs).await? {
        counted.entry(org).or_default().subscriptions = count;
    }
    for (org, count) in count_by_org::<connections::Entity>(db, connections::Column::OrgId, orgs).await? {
        counted.entry(org).or_default().connections = count;
    }
    Ok(counted)
}

/// Rows of `E` per org of `orgs` (those with none are left out).
async fn count_by_org<E: EntityTrait>(
    db: &impl ConnectionTrait,
    org_column: E::Column,
    orgs: &[String],
) -> Result<Vec<(String, u64)>> {
    let counts: Vec<(String, i64)> = E::find()
        .select_only()
        .column(org_column)
        .column_as(org_column.count(), "n")
        .filter(org_column.is_in(orgs.iter().cloned()))
        .group_by(org_column)
        .into_tuple()
        .all(db)
        .await?;
    Ok(counts.into_iter().map(|(org, n)| (org, u64::try_from(n).unwrap_or(0))).collect())
}

/// Deletes what makes the transaction's org hold anything: its keys (with
/// their role grants), identities, roles, webhook subscriptions, OAuth
/// connections and portal links.
/// Returns the ids of the keys deleted (each needs its key event).
pub async fn delete_holdings(tx: &OrgTx) -> Result<Vec<String>> {
    let org = tx.org();
    let keys: Vec<String> = api_keys::Entity::find()
        .select_only()
        .column(api_keys::Column::Id)
        .filter(api_keys::Column::OrgId.eq(org))
        .into_tuple()
        .all(tx.conn())
        .await?;
    roles::grant::Entity::delete_many().filter(roles::grant::Column::OrgId.eq(org)).exec(tx.conn()).await?;
    roles::Entity::delete_many().filter(roles::Column::OrgId.eq(org)).exec(tx.conn()).await?;
    api_keys::Entity::delete_many().filter(api_keys::Column::OrgId.eq(org)).exec(tx.conn()).await?;
    identities::Entity::delete_many().filter(identities::Column::OrgId.eq(org)).exec(tx.conn()).await?;
    webhooks::Entity::delete_many().filter(webhooks::Column::OrgId.eq(org)).exec(tx.conn()).await?;
    connections::Entity::delete_many().filter(connections::Column::OrgId.eq(org)).exec(tx.conn()).await?;
    portal_links::Entity::delete_many().filter(portal_links::Column::OrgId.eq(org)).exec(tx.conn()).await?;
    Ok(keys)
}
