//! The `roles` table (named sets of permissions) and `role_grants` (which
//! key or identity holds which role). A holder id is a key id or an
//! identity id (`idn_…`); grants go with their holder when it is deleted.
//! A holder's `holds_roles` column is false only while no grant names it
//! ([`set_grants`] sets it with the grants; a detached role may leave it
//! true), so a verification of a key without roles skips [`held_by`].

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use sea_orm::ActiveValue::Set;
use sea_orm::entity::prelude::*;
use sea_orm::{ExprTrait, IntoActiveModel, QueryOrder, QuerySelect};

use super::{OrgTx, insert_chunked};
use crate::error::Result;

/// A `roles` row.
#[sea_orm::model]
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "roles")]
pub struct Model {
    /// `rol_…`.
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    pub org_id: String,
    /// Unique in the org.
    pub name: String,
    pub description: String,
    /// JSON array of permissions (or wildcards), sorted.
    #[sea_orm(column_type = "JsonBinary")]
    pub permissions: Json,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl ActiveModelBehavior for ActiveModel {}

impl Model {
    pub fn permission_list(&self) -> Vec<String> {
        serde_json::from_value(self.permissions.clone()).unwrap_or_default()
    }
}

/// Prefix of role ids; a key event naming one tells sidecars the role changed.
pub const ID_PREFIX: &str = "rol_";

/// Whether `id` names a role rather than a key or an identity.
pub fn is_role_id(id: &str) -> bool {
    id.starts_with(ID_PREFIX)
}

/// The `role_grants` table.
pub mod grant {
    use chrono::{DateTime, Utc};
    use sea_orm::entity::prelude::*;

    /// A `role_grants` row: `holder_id` holds `role_id`.
    #[sea_orm::model]
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "role_grants")]
    pub struct Model {
        pub org_id: String,
        #[sea_orm(primary_key, auto_increment = false)]
        pub role_id: String,
        /// A key id or an identity id.
        #[sea_orm(primary_key, auto_increment = false)]
        pub holder_id: String,
        pub created_at: DateTime<Utc>,
        #[sea_orm(belongs_to, from = "role_id", to = "id")]
        pub role: BelongsTo<super::Entity>,
    }

    impl ActiveModelBehavior for ActiveModel {}
}

/// A new role, checked.
#[derive(Clone, Debug)]
pub struct NewRole {
    pub name: String,
    pub description: String,
    /// Sorted, without repeats.
    pub permissions: Vec<String>,
}

/// Changes to a role; `None` leaves a field alone.
#[derive(Clone, Debug, Default)]
pub struct RoleChanges {
    pub name: Option<String>,
    pub description: Option<String>,
    pub permissions: Option<Vec<String>>,
}

/// Stores a new role in the transaction's org.
pub async fn insert(tx: &OrgTx, role: NewRole) -> Result<Model> {
    let now = super::now();
    let row = ActiveModel {
        id: Set(crate::crypto::new_id(ID_PREFIX)),
        org_id: Set(tx.org().to_owned()),
        name: Set(role.name),
        description: Set(role.description),
        permissions: Set(serde_json::json!(role.permissions)),
        created_at: Set(now),
        updated_at: Set(now),
    };
    Ok(row.insert(tx.conn()).await?)
}

/// The role `id` of `org`.
pub async fn find(db: &impl ConnectionTrait, org: &str, id: &str) -> Result<Option<Model>> {
    Ok(Entity::find().filter(Column::OrgId.eq(org)).filter(Column::Id.eq(id)).one(db).await?)
}

/// The role of `org` named `name`.
pub async fn find_by_name(db: &impl ConnectionTrait, org: &str, name: &str) -> Result<Option<Model>> {
    Ok(Entity::find().filter(Column::OrgId.eq(org)).filter(Column::Name.eq(name)).one(db).await?)
}

/// The roles of `org` named (by name or id) in `names`.
pub async fn find_named(db: &impl ConnectionTrait, org: &str, names: &[String]) -> Result<Vec<Model>> {
    if names.is_empty() {
        return Ok(Vec::new());
    }
    let by_name_or_id = Column::Name.is_in(names.iter().cloned()).or(Column::Id.is_in(names.iter().cloned()));
    Ok(Entity::find().filter(Column::OrgId.eq(org)).filter(by_name_or_id).all(db).await?)
}

/// Up to `limit` roles of `org` after the one named `after`, in name order.
pub async fn list(db: &impl ConnectionTrait, org: &str, after: Option<&str>, limit: u64) -> Result<Vec<Model>> {
    let mut query = Entity::find().filter(Column::OrgId.eq(org));
    if let Some(after) = after {
        query = query.filter(Column::Name.gt(after));
    }
    Ok(query.order_by_asc(Column::Name).limit(limit).all(db).await?)
}

/// Applies `changes` to `role`, loaded in the transaction's org.
pub async fn update(tx: &OrgTx, role: Model, changes: RoleChanges) -> Result<Model> {
    let mut row = role.into_active_model();
    if let Some(name) = changes.name {
        row.name = Set(name);
    }
    if let Some(description) = changes.description {
        row.description = Set(description);
    }
    if let Some(permissions) = changes.permissions {
        row.permissions = Set(serde_json::json!(permissions));
    }
    row.updated_at = Set(super::now());
    Ok(row.update(tx.conn()).await?)
}

/// Deletes role `id` of the transaction's org with its grants; how many
/// holders it was taken from.
pub async fn delete(tx: &OrgTx, id: &str) -> Result<u64> {
    let grants = grant::Entity::delete_many()
        .filter(grant::Column::OrgId.eq(tx.org()))
        .filter(grant::Column::RoleId.eq(id))
        .exec(tx.conn())
        .await?;
    Entity::delete_many().filter(Column::Id.eq(id)).filter(Column::OrgId.eq(tx.org())).exec(tx.conn()).await?;
    Ok(grants.rows_affected)
}

/// How many keys and identities of `org` hold each of `role_ids`.
pub async fn holder_counts(db: &impl ConnectionTrait, org: &str, role_ids: &[String]) -> Result<HashMap<String, u64>> {
    if role_ids.is_empty() {
        return Ok(HashMap::new());
    }
    let counts: Vec<(String, i64)> = grant::Entity::find()
        .select_only()
        .column(grant::Column::RoleId)
        .column_as(grant::Column::HolderId.count(), "holders")
        .filter(grant::Column::OrgId.eq(org))
        .filter(grant::Column::RoleId.is_in(role_ids.iter().cloned()))
        .group_by(grant::Column::RoleId)
        .into_tuple()
        .all(db)
        .await?;
    Ok(counts.into_iter().map(|(id, count)| (id, u64::try_from(count).unwrap_or(0))).collect())
}

/// How many keys and identities of `org` hold role `id`.
pub async fn holder_count(db: &impl ConnectionTrait, org: &str, id: &str) -> Result<u64> {
    Ok(holder_counts(db, org, &[id.to_owned()]).await?.get(id).copied().unwrap_or(0))
}

/// The holders of role `id` of `org` (keys and identities), at most `limit`.
pub async fn holders(db: &impl ConnectionTrait, org: &str, id: &str, limit: u64) -> Result<Vec<String>> {
    Ok(grant::Entity::find()
        .select_only()
        .column(grant::Column::HolderId)
        .filter(grant::Column::OrgId.eq(org))
        .filter(grant::Column::RoleId.eq(id))
        .order_by_asc(grant::Column::HolderId)
        .limit(limit)
        .into_tuple()
        .all(db)
        .await?)
}

/// The roles each of `holders` (in `org`) holds: (holder id, role), in one query.
pub async fn held_by(db: &impl ConnectionTrait, org: &str, holders: &[&str]) -> Result<Vec<(String, Model)>> {
    let found = grant::Entity::find()
        .filter(grant::Column::OrgId.eq(org))
        .filter(grant::Column::HolderId.is_in(holders.iter().copied()))
        .find_also_related(Entity)
        .all(db)
        .await?;
    Ok(found.into_iter().filter_map(|(grant, role)| Some((grant.holder_id, role?))).collect())
}

/// Makes `holder` (a row of `E`) hold exactly `role_ids` (of the
/// transaction's org), and its `holds_roles` say whether it holds any.
pub async fn set_grants<E: RoleHolder>(tx: &OrgTx, holder: &str, role_ids: &[String]) -> Result<()> {
    forget_holder(tx, holder).await?;
    let now = super::now();
    let rows: Vec<grant::Model> = role_ids
        .iter()
        .map(|role_id| grant::Model {
            org_id: tx.org().to_owned(),
            role_id: role_id.clone(),
            holder_id: holder.to_owned(),
            created_at: now,
        })
        .collect();
    insert_chunked::<grant::Entity>(tx, rows, 500).await?;
    set_holds_roles::<E>(tx, holder, !role_ids.is_empty()).await
}

/// Gives `to` the roles `from` holds (rows of `E`: a rotation's new key).
pub async fn copy_grants<E: RoleHolder>(tx: &OrgTx, from: &str, to: &str) -> Result<()> {
    let role_ids: Vec<String> =
        held_by(tx.conn(), tx.org(), &[from]).await?.into_iter().map(|(_, role)| role.id).collect();
    set_grants::<E>(tx, to, &role_ids).await
}

/// A table whose rows hold roles (`api_keys`, `identities`): its id, org
/// and `holds_roles` columns.
pub trait RoleHolder: EntityTrait {
    const COLUMNS: [Self::Column; 3];
}

/// Records whether role grants may name row `id` of `E`.
async fn set_holds_roles<E: RoleHolder>(tx: &OrgTx, id: &str, holds: bool) -> Result<()> {
    let [id_column, org_column, holds_column] = E::COLUMNS;
    E::update_many()
        .col_expr(holds_column, Expr::value(holds))
        .filter(id_column.eq(id))
        .filter(org_column.eq(tx.org()))
        .exec(tx.conn())
        .await?;
    Ok(())
}

/// Removes every grant of `holder` (a key or identity being deleted).
pub async fn forget_holder(tx: &OrgTx, holder: &str) -> Result<()> {
    grant::Entity::delete_many()
        .filter(grant::Column::OrgId.eq(tx.org()))
        .filter(grant::Column::HolderId.eq(holder))
        .exec(tx.conn())
        .await?;
    Ok(())
}
