//! People who sign in with the OpenID provider (`users`), and sign-ins
//! begun but not yet finished (`oidc_sign_ins`). Users belong to no org:
//! their rights, mapped from the provider's claims, name the orgs.

use chrono::{DateTime, Utc};
use sea_orm::ActiveValue::Set;
use sea_orm::QueryOrder;
use sea_orm::entity::prelude::*;

use crate::error::Result;

/// A `users` row.
#[sea_orm::model]
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "users")]
pub struct Model {
    /// `usr_…`.
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    /// The provider's issuer URL; with `subject`, who the person is.
    pub issuer: String,
    pub subject: String,
    /// As the last sign-in's ID token said (the subject when it said none).
    pub email: String,
    pub name: String,
    /// JSON: the rights the last sign-in's claims mapped to.
    pub rights: String,
    /// A disabled user cannot sign in, and their sessions end.
    pub disabled: bool,
    pub created_at: DateTime<Utc>,
    pub last_sign_in_at: DateTime<Utc>,
}

impl ActiveModelBehavior for ActiveModel {}

/// Who signed in, as the provider vouched for them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedIn {
    pub issuer: String,
    pub subject: String,
    pub email: String,
    pub name: String,
}

/// Records a sign-in by `person` holding `rights` (JSON) at `now`: the
/// first creates the user, later ones refresh email, name and rights.
pub async fn record_sign_in(
    db: &impl ConnectionTrait,
    person: &SignedIn,
    rights: &str,
    now: DateTime<Utc>,
) -> Result<Model> {
    let existing = Entity::find()
        .filter(Column::Issuer.eq(&person.issuer))
        .filter(Column::Subject.eq(&person.subject))
        .one(db)
        .await?;
    let row = match existing {
        Some(user) => {
            ActiveModel {
                id: Set(user.id),
                email: Set(person.email.clone()),
                name: Set(person.name.clone()),
                rights: Set(rights.to_owned()),
                last_sign_in_at: Set(now),
                ..Default::default()
            }
            .update(db)
            .await?
        }
        None => {
            ActiveModel {
                id: Set(crate::crypto::new_id("usr_")),
                issuer: Set(person.issuer.clone()),
                subject: Set(person.subject.clone()),
                email: Set(person.email.clone()),
                name: Set(person.name.clone()),
                rights: Set(rights.to_owned()),
                disabled: Set(false),
                created_at: Set(now),
                last_sign_in_at: Set(now),
            }
            .insert(db)
            .await?
        }
    };
    Ok(row)
}

/// User `id`.
pub async fn find(db: &impl ConnectionTrait, id: &str) -> Result<Option<Model>> {
    Ok(Entity::find_by_id(id).one(db).await?)
}

/// Every user, by email.
pub async fn list(db: &impl ConnectionTrait) -> Result<Vec<Model>> {
    Ok(Entity::find().order_by_asc(Column::Email).order_by_asc(Column::Id).all(db).await?)
}

/// The emails of users `ids`, for naming actors.
pub async fn emails(db: &impl ConnectionTrait, ids: &[String]) -> Result<Vec<(String, String)>> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let rows = Entity::find().filter(Column::Id.is_in(ids.iter().cloned())).all(db).await?;
    Ok(rows.into_iter().map(|user| (user.id, user.email)).collect())
}

/// Disables or enables user `id`; false when there is no such user.
pub async fn set_disabled(db: &impl ConnectionTrait, id: &str, disabled: bool) -> Result<bool> {
    let result = Entity::update_many()
        .col_expr(Column::Disabled, Expr::val(disabled))
        .filter(Column::Id.eq(id))
        .exec(db)
        .await?;
    Ok(result.rows_affected == 1)
}

/// A sign-in begun at the provider, waiting for its callback.
pub mod pending {
    use super::*;

    /// An `oidc_sign_ins` row.
    #[sea_orm::model]
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "oidc_sign_ins")]
    pub struct Model {
        /// Lowercase hex SHA-256 of the `state` sent to the provider.
        #[sea_orm(primary_key, auto_increment = false)]
        pub state_hash: String,
        pub nonce: String,
        pub pkce_verifier: String,
        /// The console path to return to.
        pub next: String,
        pub expires_at: DateTime<Utc>,
    }

    impl ActiveModelBehavior for ActiveModel {}

    /// Stores a begun sign-in.
    pub async fn insert(db: &impl ConnectionTrait, row: Model) -> Result<()> {
        ActiveModel::from(row).insert(db).await?;
        Ok(())
    }

    /// Takes the sign-in of `state_hash`: it is deleted as it is read, so a
    /// callback replayed (or racing) finds nothing. `None` when it is
    /// unknown, already taken or expired by `now`.
    pub async fn take(db: &impl ConnectionTrait, state_hash: &str, now: DateTime<Utc>) -> Result<Option<Model>> {
        let Some(row) = Entity::find_by_id(state_hash).one(db).await? else { return Ok(None) };
        let deleted = Entity::delete_by_id(state_hash).exec(db).await?.rows_affected == 1;
        Ok((deleted && row.expires_at > now).then_some(row))
    }

    /// Deletes sign-ins that were never finished.
    pub async fn purge_expired(db: &impl ConnectionTrait, now: DateTime<Utc>) -> Result<u64> {
        Ok(Entity::delete_many().filter(Column::ExpiresAt.lte(now)).exec(db).await?.rows_affected)
    }
}
