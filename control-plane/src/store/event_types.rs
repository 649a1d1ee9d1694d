//! The `event_types` table: an org's event catalog. Schema versions and
//! examples are JSON text columns (read and written whole).

use chrono::{DateTime, Utc};
use sea_orm::ActiveValue::Set;
use sea_orm::entity::prelude::*;
use sea_orm::{IntoActiveModel, QueryOrder};

use super::OrgTx;
use crate::error::Result;

/// An `event_types` row.
#[sea_orm::model]
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "event_types")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub org_id: String,
    #[sea_orm(primary_key, auto_increment = false)]
    pub name: String,
    pub description: String,
    pub group_name: String,
    /// JSON: the schema versions, oldest first.
    pub schemas: String,
    /// JSON: example payloads.
    pub examples: String,
    pub deprecated: bool,
    pub archived: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl ActiveModelBehavior for ActiveModel {}

/// A new event type of the transaction's org.
pub struct NewEventType {
    pub name: String,
    pub description: String,
    pub group_name: String,
    pub schemas: String,
    pub examples: String,
}

/// Stores a new event type; `None` if the org has one of that name.
pub async fn insert(tx: &OrgTx, new: NewEventType) -> Result<Option<Model>> {
    if find(tx.conn(), tx.org(), &new.name).await?.is_some() {
        return Ok(None);
    }
    let now = super::now();
    let row = ActiveModel {
        org_id: Set(tx.org().to_owned()),
        name: Set(new.name),
        description: Set(new.description),
        group_name: Set(new.group_name),
        schemas: Set(new.schemas),
        examples: Set(new.examples),
        deprecated: Set(false),
        archived: Set(false),
        created_at: Set(now),
        updated_at: Set(now),
    };
    Ok(Some(row.insert(tx.conn()).await?))
}

/// Event type `name` of `org`.
pub async fn find(db: &impl ConnectionTrait, org: &str, name: &str) -> Result<Option<Model>> {
    Ok(Entity::find_by_id((org.to_owned(), name.to_owned())).one(db).await?)
}

/// The org's event types by group and name.
pub async fn list(db: &impl ConnectionTrait, org: &str, include_archived: bool) -> Result<Vec<Model>> {
    let mut query = Entity::find().filter(Column::OrgId.eq(org));
    if !include_archived {
        query = query.filter(Column::Archived.eq(false));
    }
    Ok(query.order_by_asc(Column::GroupName).order_by_asc(Column::Name).all(db).await?)
}

/// What an update changes (`None`: unchanged).
#[derive(Default)]
pub struct EventTypeChanges {
    pub description: Option<String>,
    pub group_name: Option<String>,
    pub schemas: Option<String>,
    pub examples: Option<String>,
    pub deprecated: Option<bool>,
    pub archived: Option<bool>,
}

/// Applies `changes` to `row`, loaded in the transaction.
pub async fn update(tx: &OrgTx, row: Model, changes: EventTypeChanges) -> Result<Model> {
    let mut active = row.into_active_model();
    if let Some(description) = changes.description {
        active.description = Set(description);
    }
    if let Some(group_name) = changes.group_name {
        active.group_name = Set(group_name);
    }
    if let Some(schemas) = changes.schemas {
        active.schemas = Set(schemas);
    }
    if let Some(examples) = changes.examples {
        active.examples = Set(examples);
    }
    if let Some(deprecated) = changes.deprecated {
        active.deprecated = Set(deprecated);
    }
    if let Some(archived) = changes.archived {
        active.archived = Set(archived);
    }
    active.updated_at = Set(super::now());
    Ok(active.update(tx.conn()).await?)
}
