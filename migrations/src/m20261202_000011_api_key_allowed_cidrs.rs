//! `api_keys.allowed_cidrs`: the client networks a key may be used from
//! (a JSON array of CIDR strings; NULL = anywhere).

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum ApiKeys {
    Table,
    AllowedCidrs,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let column = ColumnDef::new(ApiKeys::AllowedCidrs).json_binary().null().to_owned();
        manager.alter_table(Table::alter().table(ApiKeys::Table).add_column(column).to_owned()).await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.alter_table(Table::alter().table(ApiKeys::Table).drop_column(ApiKeys::AllowedCidrs).to_owned()).await
    }
}
