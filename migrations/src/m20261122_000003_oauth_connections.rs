//! OAuth connections: tokens sealed at rest, with a version for compare-and-swap refreshes.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum OauthConnections {
    Table,
    Id,
    OrgId,
    Provider,
    AccountLabel,
    Scopes,
    SealedAccessToken,
    SealedRefreshToken,
    ExpiresAt,
    TokenVersion,
    CreatedAt,
    UpdatedAt,
    RefreshedAt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(OauthConnections::Table)
                    .col(string(OauthConnections::Id).primary_key())
                    .col(string(OauthConnections::OrgId))
                    .col(string(OauthConnections::Provider))
                    .col(string(OauthConnections::AccountLabel))
                    .col(json_binary(OauthConnections::Scopes))
                    .col(text(OauthConnections::SealedAccessToken))
                    .col(text_null(OauthConnections::SealedRefreshToken))
                    .col(timestamp_with_time_zone_null(OauthConnections::ExpiresAt))
                    .col(big_integer(OauthConnections::TokenVersion))
                    .col(timestamp_with_time_zone(OauthConnections::CreatedAt))
                    .col(timestamp_with_time_zone(OauthConnections::UpdatedAt))
                    .col(timestamp_with_time_zone_null(OauthConnections::RefreshedAt))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("oauth_connections_org_id_id")
                    .table(OauthConnections::Table)
                    .col(OauthConnections::OrgId)
                    .col(OauthConnections::Id)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.drop_table(Table::drop().table(OauthConnections::Table).to_owned()).await
    }
}
