//! The `console_sessions` table: one row per signed-in browser, found by
//! the SHA-256 of the session id (the id itself is only in the cookie).

use chrono::{DateTime, Utc};
use sea_orm::ExprTrait;
use sea_orm::entity::prelude::*;

use crate::error::Result;

#[sea_orm::model]
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "console_sessions")]
pub struct Model {
    /// Lowercase hex SHA-256 of the session id.
    #[sea_orm(primary_key, auto_increment = false)]
    pub id_hash: String,
    pub kind: SessionKind,
    pub actor_type: SessionActor,
    /// The signed-in key, for `api_key` sessions (see [`SessionActor`]).
    pub key_id: Option<String>,
    /// The org the session acts in (empty until a platform credential picks one).
    pub org_id: String,
    /// Portal sessions: origins allowed to frame the pages, space-separated.
    pub frame_ancestors: String,
    pub created_at: DateTime<Utc>,
    pub last_seen_at: DateTime<Utc>,
    /// The absolute end, whatever the activity.
    pub expires_at: DateTime<Utc>,
    /// A secret waiting to be shown once (sealed, bound to the session),
    /// from a form's POST to the GET it redirects to.
    pub shown_once: Option<String>,
}

impl ActiveModelBehavior for ActiveModel {}

/// Where a session was opened.
#[derive(Clone, Copy, Debug, PartialEq, Eq, EnumIter, DeriveActiveEnum)]
#[sea_orm(rs_type = "String", db_type = "String(StringLen::None)")]
pub enum SessionKind {
    /// Signed in at `/login`.
    #[sea_orm(string_value = "console")]
    Console,
    /// Opened from a portal link: one org's webhooks.
    #[sea_orm(string_value = "portal")]
    Portal,
}

/// Who a session stands for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, EnumIter, DeriveActiveEnum)]
#[sea_orm(rs_type = "String", db_type = "String(StringLen::None)")]
pub enum SessionActor {
    /// The root token (`key_id` holds its fingerprint).
    #[sea_orm(string_value = "root")]
    Root,
    /// A Keyplane API key (`key_id`).
    #[sea_orm(string_value = "api_key")]
    ApiKey,
    /// A portal link's customer (`key_id` holds the link id).
    #[sea_orm(string_value = "portal")]
    Portal,
    /// A person signed in with the OpenID provider (`key_id` holds the user id).
    #[sea_orm(string_value = "user")]
    User,
}

/// Stores a new session.
pub async fn insert(db: &impl ConnectionTrait, session: Model) -> Result<()> {
    ActiveModel::from(session).insert(db).await?;
    Ok(())
}

/// The session whose id hashes to `id_hash`.
pub async fn find(db: &impl ConnectionTrait, id_hash: &str) -> Result<Option<Model>> {
    Ok(Entity::find_by_id(id_hash.to_owned()).one(db).await?)
}

/// Records activity at `now`.
pub async fn touch(db: &impl ConnectionTrait, id_hash: &str, now: DateTime<Utc>) -> Result<()> {
    Entity::update_many()
        .col_expr(Column::LastSeenAt, Expr::val(now))
        .filter(Column::IdHash.eq(id_hash))
        .exec(db)
        .await?;
    Ok(())
}

/// Sets the org a session acts in.
pub async fn set_org(db: &impl ConnectionTrait, id_hash: &str, org: &str) -> Result<()> {
    Entity::update_many().col_expr(Column::OrgId, Expr::val(org)).filter(Column::IdHash.eq(id_hash)).exec(db).await?;
    Ok(())
}

/// Keeps `sealed` for the session's next [`take_shown_once`] (replacing
/// one not taken).
pub async fn stash_shown_once(db: &impl ConnectionTrait, id_hash: &str, sealed: String) -> Result<()> {
    let stash = Entity::update_many().col_expr(Column::ShownOnce, Expr::val(sealed));
    stash.filter(Column::IdHash.eq(id_hash)).exec(db).await?;
    Ok(())
}

/// The value kept by [`stash_shown_once`], cleared as it is read: of
/// concurrent takers (a double reload) only one gets it.
pub async fn take_shown_once(db: &impl ConnectionTrait, id_hash: &str) -> Result<Option<String>> {
    let Some(sealed) = find(db, id_hash).await?.and_then(|session| session.shown_once) else { return Ok(None) };
    let taken = Entity::update_many()
        .col_expr(Column::ShownOnce, Expr::val(None::<String>))
        .filter(Column::IdHash.eq(id_hash))
        .filter(Column::ShownOnce.eq(sealed.as_str()))
        .exec(db)
        .await?;
    Ok((taken.rows_affected > 0).then_some(sealed))
}

/// Ends a session.
pub async fn delete(db: &impl ConnectionTrait, id_hash: &str) -> Result<()> {
    Entity::delete_many().filter(Column::IdHash.eq(id_hash)).exec(db).await?;
    Ok(())
}

/// Deletes up to `limit` sessions past their end (absolute, or idle since `idle_before`).
pub async fn purge_expired(
    db: &impl ConnectionTrait,
    now: DateTime<Utc>,
    idle_before: DateTime<Utc>,
    limit: u64,
) -> Result<u64> {
    let ended = Expr::col(Column::ExpiresAt).lte(now).or(Expr::col(Column::LastSeenAt).lt(idle_before));
    super::delete_batch::<Entity>(db, Column::IdHash, sea_orm::Condition::all().add(ended), limit).await
}
