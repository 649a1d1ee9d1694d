//! Global rate limits: `api_keys.rate_limit_scope` (`global`, or NULL for
//! local) and `rate_limit_windows`, the requests granted per key and window.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum ApiKeys {
    Table,
    RateLimitScope,
}

#[derive(DeriveIden)]
enum RateLimitWindows {
    Table,
    KeyId,
    /// Milliseconds since the Unix epoch.
    WindowStart,
    OrgId,
    Granted,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let scope = string_null(ApiKeys::RateLimitScope);
        manager.alter_table(Table::alter().table(ApiKeys::Table).add_column(scope).to_owned()).await?;
        manager
            .create_table(
                Table::create()
                    .table(RateLimitWindows::Table)
                    .col(string(RateLimitWindows::KeyId))
                    .col(big_integer(RateLimitWindows::WindowStart))
                    .col(string(RateLimitWindows::OrgId))
                    .col(big_integer(RateLimitWindows::Granted))
                    .primary_key(Index::create().col(RateLimitWindows::KeyId).col(RateLimitWindows::WindowStart))
                    .to_owned(),
            )
            .await?;
        let by_start = Index::create()
            .name("rate_limit_windows_window_start")
            .table(RateLimitWindows::Table)
            .col(RateLimitWindows::WindowStart)
            .to_owned();
        manager.create_index(by_start).await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.drop_table(Table::drop().table(RateLimitWindows::Table).to_owned()).await?;
        manager.alter_table(Table::alter().table(ApiKeys::Table).drop_column(ApiKeys::RateLimitScope).to_owned()).await
    }
}
