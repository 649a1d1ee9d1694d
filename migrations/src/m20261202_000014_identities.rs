//! Identities: the platform's own customers or users inside an org, with
//! the credits, rate limit and allow-list all their keys share (the same
//! columns as on `api_keys`), and `api_keys.identity_id`.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Identities {
    Table,
    Id,
    OrgId,
    ExternalId,
    Metadata,
    RateLimitRequests,
    RateLimitWindowMs,
    RateLimitScope,
    AllowedCidrs,
    CreditsRemaining,
    CreditRefillAmount,
    CreditRefillPeriod,
    CreditRefillNextAt,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum ApiKeys {
    Table,
    OrgId,
    IdentityId,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Identities::Table)
                    .col(string(Identities::Id).primary_key())
                    .col(string(Identities::OrgId))
                    .col(string(Identities::ExternalId))
                    .col(json_binary_null(Identities::Metadata))
                    .col(integer_null(Identities::RateLimitRequests))
                    .col(big_integer_null(Identities::RateLimitWindowMs))
                    .col(string_null(Identities::RateLimitScope))
                    .col(json_binary_null(Identities::AllowedCidrs))
                    .col(big_integer_null(Identities::CreditsRemaining))
                    .col(big_integer_null(Identities::CreditRefillAmount))
                    .col(string_null(Identities::CreditRefillPeriod))
                    .col(timestamp_with_time_zone_null(Identities::CreditRefillNextAt))
                    .col(timestamp_with_time_zone(Identities::CreatedAt))
                    .col(timestamp_with_time_zone(Identities::UpdatedAt))
                    .to_owned(),
            )
            .await?;
        let external_ids = Index::create()
            .name("identities_org_external_id")
            .table(Identities::Table)
            .col(Identities::OrgId)
            .col(Identities::ExternalId)
            .unique()
            .to_owned();
        manager.create_index(external_ids).await?;
        let refills = Index::create()
            .name("identities_credit_refill_next_at")
            .table(Identities::Table)
            .col(Identities::CreditRefillNextAt)
            .to_owned();
        manager.create_index(refills).await?;
        let column = string_null(ApiKeys::IdentityId);
        manager.alter_table(Table::alter().table(ApiKeys::Table).add_column(column).to_owned()).await?;
        let keys_of_identity = Index::create()
            .name("api_keys_org_identity")
            .table(ApiKeys::Table)
            .col(ApiKeys::OrgId)
            .col(ApiKeys::IdentityId)
            .to_owned();
        manager.create_index(keys_of_identity).await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.drop_index(Index::drop().name("api_keys_org_identity").table(ApiKeys::Table).to_owned()).await?;
        manager.alter_table(Table::alter().table(ApiKeys::Table).drop_column(ApiKeys::IdentityId).to_owned()).await?;
        manager.drop_table(Table::drop().table(Identities::Table).to_owned()).await
    }
}
