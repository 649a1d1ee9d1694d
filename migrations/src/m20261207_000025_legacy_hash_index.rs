//! A partial index on `api_keys (hash_format)` for imported keys only: the
//! expiry sweep counts the keys still on another system's hash every ten
//! seconds (a metric), which read every key of every org without it: 137 ms
//! a count at a million keys (BENCHMARKS.md, "Soak").

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared(
                "CREATE INDEX api_keys_hash_format ON api_keys (hash_format) WHERE hash_format IS NOT NULL",
            )
            .await
            .map(|_| ())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.get_connection().execute_unprepared("DROP INDEX api_keys_hash_format").await.map(|_| ())
    }
}
