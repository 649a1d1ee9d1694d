//! Credits: a key's remaining uses and its refill (`api_keys.credits_*`),
//! and the blocks of credits sidecars lease (`credit_leases`).

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden, Clone, Copy)]
enum ApiKeys {
    Table,
    /// NULL = unlimited.
    CreditsRemaining,
    CreditRefillAmount,
    /// `every:<ms>`, `daily` or `monthly:<day>`.
    CreditRefillPeriod,
    CreditRefillNextAt,
}

#[derive(DeriveIden)]
enum CreditLeases {
    Table,
    Id,
    OrgId,
    KeyId,
    Granted,
    /// The key's `credit_refill_next_at` when granted: a return after a
    /// refill gives nothing back (the refill reset the count).
    Period,
    CreatedAt,
    ExpiresAt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // One column per statement: SQLite alters one thing at a time.
        let columns = [
            big_integer_null(ApiKeys::CreditsRemaining),
            big_integer_null(ApiKeys::CreditRefillAmount),
            string_null(ApiKeys::CreditRefillPeriod),
            timestamp_with_time_zone_null(ApiKeys::CreditRefillNextAt),
        ];
        for mut column in columns {
            manager.alter_table(Table::alter().table(ApiKeys::Table).add_column(&mut column).to_owned()).await?;
        }
        let refill_index = Index::create()
            .name("api_keys_credit_refill_next_at")
            .table(ApiKeys::Table)
            .col(ApiKeys::CreditRefillNextAt)
            .to_owned();
        manager.create_index(refill_index).await?;
        manager
            .create_table(
                Table::create()
                    .table(CreditLeases::Table)
                    .col(string(CreditLeases::Id).primary_key())
                    .col(string(CreditLeases::OrgId))
                    .col(string(CreditLeases::KeyId))
                    .col(big_integer(CreditLeases::Granted))
                    .col(timestamp_with_time_zone_null(CreditLeases::Period))
                    .col(timestamp_with_time_zone(CreditLeases::CreatedAt))
                    .col(timestamp_with_time_zone(CreditLeases::ExpiresAt))
                    .to_owned(),
            )
            .await?;
        let expiry_index = Index::create()
            .name("credit_leases_expires_at")
            .table(CreditLeases::Table)
            .col(CreditLeases::ExpiresAt)
            .to_owned();
        manager.create_index(expiry_index).await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.drop_table(Table::drop().table(CreditLeases::Table).to_owned()).await?;
        manager
            .drop_index(Index::drop().name("api_keys_credit_refill_next_at").table(ApiKeys::Table).to_owned())
            .await?;
        for column in [
            ApiKeys::CreditsRemaining,
            ApiKeys::CreditRefillAmount,
            ApiKeys::CreditRefillPeriod,
            ApiKeys::CreditRefillNextAt,
        ] {
            manager.alter_table(Table::alter().table(ApiKeys::Table).drop_column(column).to_owned()).await?;
        }
        Ok(())
    }
}
