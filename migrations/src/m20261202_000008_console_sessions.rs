//! The web console's sessions and the webhook portal's one-time links.
//! Only SHA-256 hashes of session ids and link tokens are stored.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum ConsoleSessions {
    Table,
    IdHash,
    Kind,
    ActorType,
    KeyId,
    OrgId,
    FrameAncestors,
    CreatedAt,
    LastSeenAt,
    ExpiresAt,
}

#[derive(DeriveIden)]
enum PortalLinks {
    Table,
    TokenHash,
    Id,
    OrgId,
    FrameAncestors,
    CreatedBy,
    CreatedAt,
    ExpiresAt,
    UsedAt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(ConsoleSessions::Table)
                    .col(string(ConsoleSessions::IdHash).primary_key())
                    .col(string(ConsoleSessions::Kind))
                    .col(string(ConsoleSessions::ActorType))
                    .col(string_null(ConsoleSessions::KeyId))
                    .col(string(ConsoleSessions::OrgId))
                    .col(text(ConsoleSessions::FrameAncestors))
                    .col(timestamp_with_time_zone(ConsoleSessions::CreatedAt))
                    .col(timestamp_with_time_zone(ConsoleSessions::LastSeenAt))
                    .col(timestamp_with_time_zone(ConsoleSessions::ExpiresAt))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("console_sessions_key")
                    .table(ConsoleSessions::Table)
                    .col(ConsoleSessions::KeyId)
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(PortalLinks::Table)
                    .col(string(PortalLinks::TokenHash).primary_key())
                    .col(string(PortalLinks::Id))
                    .col(string(PortalLinks::OrgId))
                    .col(text(PortalLinks::FrameAncestors))
                    .col(string(PortalLinks::CreatedBy))
                    .col(timestamp_with_time_zone(PortalLinks::CreatedAt))
                    .col(timestamp_with_time_zone(PortalLinks::ExpiresAt))
                    .col(timestamp_with_time_zone_null(PortalLinks::UsedAt))
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.drop_table(Table::drop().table(PortalLinks::Table).to_owned()).await?;
        manager.drop_table(Table::drop().table(ConsoleSessions::Table).to_owned()).await
    }
}
