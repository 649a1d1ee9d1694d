//! Indexes on `api_keys (status, expires_at)` and `(status, revoked_at)`:
//! the expiry sweep finds active keys past their expiry, and key retention
//! finds keys that ended long ago, without reading every key.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden, Clone, Copy)]
enum ApiKeys {
    Table,
    Status,
    ExpiresAt,
    RevokedAt,
}

const INDEXES: [(&str, ApiKeys); 2] =
    [("api_keys_status_expires_at", ApiKeys::ExpiresAt), ("api_keys_status_revoked_at", ApiKeys::RevokedAt)];

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for (name, column) in INDEXES {
            let index = Index::create().name(name).table(ApiKeys::Table).col(ApiKeys::Status).col(column).to_owned();
            manager.create_index(index).await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for (name, _) in INDEXES {
            manager.drop_index(Index::drop().name(name).table(ApiKeys::Table).to_owned()).await?;
        }
        Ok(())
    }
}
