//! Rows written straight into the database for the load generators: the
//! API would spend an hour of argon2 on 100k keys, which is not what they
//! measure.

use keyplane_control_plane::service::records::{Environment, KeyStatus};
use keyplane_control_plane::store::api_keys::{self, NewKeyRow};
use sea_orm::{ConnectionTrait, DatabaseConnection, EntityTrait};

/// A well-formed argon2id hash no secret matches.
pub const UNMATCHABLE_HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$c2VlZA$c2VlZA";

/// A key row: scope `orders:read`, no expiry.
pub fn key_row(
    org: &str,
    id: String,
    name: String,
    environment: Environment,
    status: KeyStatus,
    secret_hash: &str,
) -> api_keys::ActiveModel {
    let mut row = NewKeyRow {
        id,
        name,
        description: String::new(),
        environment,
        scopes: vec!["orders:read".into()],
        secret_hash: secret_hash.to_owned(),
        start: String::new(),
        expires_at: None,
        metadata: None,
        sealed_token: None,
        limits: Default::default(),
        created_by: "root".into(),
        rotated_from: None,
        identity_id: None,
    }
    .into_row(org)
    .expect("a key row");
    row.status = sea_orm::ActiveValue::Set(status);
    row
}

/// Inserts the `count` rows `row(i)` makes, 500 per statement (SQLite binds
/// at most 32,766 values in one, and a key row has 36 columns), then (on
/// Postgres) vacuums and analyzes the table as autovacuum would after a
/// bulk load.
pub async fn keys(db: &DatabaseConnection, count: usize, mut row: impl FnMut(usize) -> api_keys::ActiveModel) {
    let mut next = 0;
    while next < count {
        let end = (next + 500).min(count);
        api_keys::Entity::insert_many((next..end).map(&mut row)).exec(db).await.expect("seed keys");
        next = end;
    }
    analyze(db, "api_keys").await;
}

/// `VACUUM ANALYZE table` on Postgres; nothing on SQLite.
pub async fn analyze(db: &DatabaseConnection, table: &str) {
    if db.get_database_backend() == sea_orm::DatabaseBackend::Postgres {
        db.execute_unprepared(&format!("VACUUM ANALYZE {table}")).await.expect("analyze");
    }
}
