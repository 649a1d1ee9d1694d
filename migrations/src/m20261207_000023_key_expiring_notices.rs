//! `api_keys.expiring_notice_for`: the expiry an `api_key.expiring` notice
//! was published for (a changed expiry is announced again).

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum ApiKeys {
    Table,
    ExpiringNoticeFor,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let column = Table::alter()
            .table(ApiKeys::Table)
            .add_column(timestamp_with_time_zone_null(ApiKeys::ExpiringNoticeFor))
            .to_owned();
        manager.alter_table(column).await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let column = Table::alter().table(ApiKeys::Table).drop_column(ApiKeys::ExpiringNoticeFor).to_owned();
        manager.alter_table(column).await
    }
}
