//! Finer planner statistics for API-key names (Postgres only).
//!
//! Name-prefix listings page in id order. With the default histogram (100
//! buckets) the estimate for a selective prefix is often off by 10×, and
//! then Postgres walks the org's keys in id order instead of using the name
//! index — measured at 18 ms p99 with 100k keys (BENCHMARKS.md). A
//! 1,000-bucket histogram keeps the estimates close.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::DbBackend;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        if manager.get_database_backend() == DbBackend::Postgres {
            manager
                .get_connection()
                .execute_unprepared("ALTER TABLE api_keys ALTER COLUMN name SET STATISTICS 1000")
                .await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        if manager.get_database_backend() == DbBackend::Postgres {
            manager
                .get_connection()
                .execute_unprepared("ALTER TABLE api_keys ALTER COLUMN name SET STATISTICS -1")
                .await?;
        }
        Ok(())
    }
}
