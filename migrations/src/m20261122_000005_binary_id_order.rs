//! Ids compare byte by byte on Postgres (`COLLATE "C"`).
//!
//! Ids are time-ordered base62 (`0-9A-Za-z`), and listings page by id:
//! keys and subscriptions in creation order, deliveries newest first. Under
//! a linguistic collation such as `en_US.UTF-8`, `Z` sorts after `a`, so id
//! order would no longer be creation order. SQLite already compares bytes.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::DbBackend;

#[derive(DeriveMigrationName)]
pub struct Migration;

/// Tables whose listings page by `id`.
const TABLES: [&str; 4] = ["api_keys", "webhook_subscriptions", "webhook_deliveries", "oauth_connections"];

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        collate_ids(manager, "COLLATE \"C\"").await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        collate_ids(manager, "").await
    }
}

async fn collate_ids(manager: &SchemaManager<'_>, collation: &str) -> Result<(), DbErr> {
    if manager.get_database_backend() != DbBackend::Postgres {
        return Ok(());
    }
    for table in TABLES {
        let statement = format!("ALTER TABLE {table} ALTER COLUMN id TYPE varchar {collation}");
        manager.get_connection().execute_unprepared(&statement).await?;
    }
    Ok(())
}
